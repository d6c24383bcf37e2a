"""Plate-like regions in a clip, and tracks of them across frames, for ``ultrares zoom --auto``.

* :class:`TextDetector`: RapidOCR's text detection model (PP-OCRv4 DB, onnxruntime), which its
  wheel ships (nothing is downloaded); words on one line are merged into one region and only
  plate-like shapes kept (:func:`plate_like`). RapidOCR is in the ``[dev]`` extra: without it
  the detector is a one-line :class:`~ultrares_stream.errors.UserError`.
* :func:`update_tracks`: regions associated across frames by IoU against each track's
  constant-velocity prediction (optimal assignment, :func:`scipy.optimize.linear_sum_assignment`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

Box = tuple[int, int, int, int]
#: what a plate region looks like: width / height, and its smallest height (pixels)
ASPECT = (1.5, 12.0)
MIN_HEIGHT = 4


class TextDetector:
    """Text regions of an RGB frame (boxes x, y, w, h in its pixels). ``min_side``: the frame is
    enlarged until its short side is at least this (small plates need it); ``threads``: onnxruntime's."""

    def __init__(self, min_side: int = 320, threads: int = 1):
        try:
            import rapidocr_onnxruntime
            import yaml
            from rapidocr_onnxruntime.ch_ppocr_det import TextDetector as _Det
        except ImportError:
            raise UserError("--auto needs RapidOCR's text detector: pip install rapidocr-onnxruntime "
                            "(part of the [dev] extra)") from None
        root = Path(rapidocr_onnxruntime.__file__).parent
        config = yaml.safe_load((root / "config.yaml").read_text())["Det"]
        config.update(model_path=str(root / config["model_path"]), limit_side_len=min_side, limit_type="min",
                      intra_op_num_threads=threads, inter_op_num_threads=1)
        self._detect = _Det(config)

    def __call__(self, rgb: np.ndarray) -> list[Box]:
        quads, _ = self._detect(np.ascontiguousarray(rgb[:, :, ::-1]))
        boxes = []
        for quad in [] if quads is None else quads:
            (x0, y0), (x1, y1) = np.floor(quad.min(0)), np.ceil(quad.max(0))
            boxes.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
        return [b for b in merge_lines(boxes) if plate_like(b)]


def plate_like(box: Box) -> bool:
    return box[3] >= MIN_HEIGHT and ASPECT[0] <= box[2] / max(box[3], 1) <= ASPECT[1]


def merge_lines(boxes: list[Box], gap: float = 1.2) -> list[Box]:
    """Words on one line (vertical overlap over half the lower one, horizontal gap under ``gap``
    heights) merged into one box: a plate's groups of characters are one region."""
    out: list[Box] = []
    for box in sorted(boxes):
        for i, other in enumerate(out):
            if _same_line(other, box, gap):
                out[i] = union(other, box)
                break
        else:
            out.append(box)
    return out


def _same_line(a: Box, b: Box, gap: float) -> bool:
    overlap = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    h = min(a[3], b[3])
    space = max(a[0], b[0]) - min(a[0] + a[2], b[0] + b[2])
    return overlap > 0.5 * h and space < gap * max(a[3], b[3])


def union(a: Box, b: Box) -> Box:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    return x0, y0, max(a[0] + a[2], b[0] + b[2]) - x0, max(a[1] + a[3], b[1] + b[3]) - y0


def iou(a, b) -> float:
    """Intersection over union of two boxes (x, y, w, h; floats allowed)."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter) if inter > 0 else 0.0


@dataclass
class Track:
    """One region followed across frames: ``seen`` maps frame position -> box, ``velocity`` is
    its smoothed motion (pixels per frame, x and y)."""

    id: int
    seen: dict[int, Box] = field(default_factory=dict)
    velocity: tuple[float, float] = (0.0, 0.0)

    @property
    def last(self) -> int:
        return max(self.seen)

    def predict(self, pos: int) -> tuple[float, float, int, int]:
        """Where the region is expected at frame ``pos`` (constant velocity)."""
        x, y, w, h = self.seen[self.last]
        dt = pos - self.last
        return x + self.velocity[0] * dt, y + self.velocity[1] * dt, w, h

    def add(self, pos: int, box: Box, smoothing: float = 0.5) -> None:
        prev = self.last
        px, py, _, _ = self.seen[prev]
        measured = ((box[0] - px) / (pos - prev), (box[1] - py) / (pos - prev))
        first = len(self.seen) == 1
        self.velocity = measured if first else tuple(smoothing * v + (1 - smoothing) * m
                                                     for v, m in zip(self.velocity, measured))
        self.seen[pos] = box


def update_tracks(tracks: list[Track], boxes: list[Box], pos: int, min_iou: float = 0.2,
                  max_gap: int = 15) -> list[Track]:
    """Associate the regions found at frame ``pos`` with the live tracks (not seen for at most
    ``max_gap`` frames); the rest start tracks. Returns every track, new ones appended."""
    from scipy.optimize import linear_sum_assignment

    live = [t for t in tracks if pos - t.last <= max_gap]
    matched: set[int] = set()
    if live and boxes:
        cost = np.array([[-iou(t.predict(pos), b) for b in boxes] for t in live])
        for r, c in zip(*linear_sum_assignment(cost)):
            if -cost[r, c] >= min_iou:
                live[r].add(pos, boxes[c])
                matched.add(c)
    next_id = max((t.id for t in tracks), default=0) + 1
    new = [Track(next_id + k, {pos: b}) for k, b in enumerate(b for i, b in enumerate(boxes) if i not in matched)]
    return tracks + new
