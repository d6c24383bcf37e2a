"""A fused crop as evidence: the picture, how it was made, and whether it can be read at all.

Every :class:`FusedCrop` says it is machine-fused, from which frames (timestamps), with what
registration residuals and which method. Where fusion cannot add information (too few frames
agree with the reference, the box is too small for characters to survive the camera's
resolution, or too small for the quantiser the camera's encoder used on it) its ``verdict`` is
``unreadable`` with the reason, so no one reads characters into it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import provenance

READABLE = "fused"
UNREADABLE = "unreadable"
#: fewest frames (the reference included) that must agree for a fused crop to be worth reading
MIN_FRAMES = 3
#: smallest box (LR pixels): below it a plate's characters are 1-2 pixels high in every frame
MIN_BOX = (12, 6)
#: per codec, (QP at least, smallest box height in LR pixels): how tall a box must be for its
#: characters to survive the camera's quantiser, calibrated on drawn plates
#: (``scripts/calibrate_verdict.py``; the table and its figures in docs/fusion.md)
MIN_HEIGHT_AT_QP: dict[str, tuple[tuple[float, int], ...]] = {
    "h264": ((25.0, 14), (31.0, 16), (40.0, 26)),
}


@dataclass(frozen=True)
class FrameUse:
    """One frame's part: its timestamp (s), registration residual (RMS grey levels), ECC
    correlation, the weight it was fused with (0 = rejected) and why it was rejected."""

    time: float
    residual: float
    correlation: float
    weight: float
    rejected: str = ""


@dataclass
class FusedCrop:
    """The x``scale`` fused crop (HxWx3 uint8) of ``box`` (LR pixels of the reference frame,
    ``crop`` = the box with its margin, what ``image`` shows) and its provenance, with how hard the
    camera's encoder quantised the box (:func:`.codec.box_quantiser`)."""

    image: np.ndarray
    box: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]
    scale: int
    method: str
    reference_time: float
    frames: list[FrameUse] = field(default_factory=list)
    verdict: str = READABLE
    reason: str = ""
    quantiser: tuple[str, float] | None = None  # (codec, median QP under the box), where the codec gives it
    classical: np.ndarray | None = None  # the classical fusion before the learned refinement (None: not refined)

    @property
    def used(self) -> list[FrameUse]:
        return [f for f in self.frames if f.weight > 0]

    def summary(self) -> str:
        """One line for people: what, from how many frames, and the verdict."""
        res = [f.residual for f in self.used]
        text = (f"x{self.scale} crop {self.image.shape[1]}x{self.image.shape[0]} of box "
                f"{','.join(map(str, self.box))} at {self.reference_time:.3f} s, machine-fused from "
                f"{len(self.used)} of {len(self.frames)} frames (median registration residual "
                f"{np.median(res) if res else float('nan'):.2f}"
                + (f"; {self.quantiser[0]} QP {self.quantiser[1]:.0f} under the box)" if self.quantiser else ")"))
        return text + (f"; verdict: {UNREADABLE} ({self.reason})" if self.verdict == UNREADABLE else "")


def min_height(quantiser: tuple[str, float] | None, table: dict = MIN_HEIGHT_AT_QP) -> int:
    """The smallest box height (LR pixels) whose characters survive ``quantiser`` ((codec, QP);
    None or a codec without a rule: :data:`MIN_BOX`'s height)."""
    if quantiser is None:
        return MIN_BOX[1]
    codec, qp = quantiser
    return max([MIN_BOX[1]] + [height for least, height in table.get(codec, ()) if qp >= least])


def judge(box: tuple[int, int, int, int], frames: list[FrameUse], quantiser: tuple[str, float] | None = None,
          min_frames: int = MIN_FRAMES, min_box: tuple[int, int] = MIN_BOX) -> tuple[str, str]:
    """(verdict, reason) for a fused crop of ``box`` (LR pixels) from ``frames``; ``quantiser``:
    (codec, QP under the box) where known."""
    if box[2] < min_box[0] or box[3] < min_box[1]:
        return UNREADABLE, (f"the box is {box[2]}x{box[3]} pixels in the video, under {min_box[0]}x{min_box[1]}: "
                            "characters are too small to recover")
    least = min_height(quantiser)
    if box[3] < least:
        codec, qp = quantiser
        return UNREADABLE, (f"the camera's encoder quantised the box at {codec} QP {qp:.0f}: characters in a box "
                            f"{box[3]} pixels high do not survive it (needs {least})")
    agreeing = sum(1 for f in frames if f.weight > 0)
    if agreeing < min_frames:
        return UNREADABLE, f"only {agreeing} of {len(frames)} frames agree with the reference (need {min_frames})"
    return READABLE, ""


@dataclass(frozen=True)
class Reading:
    """What an OCR read on a fused crop: each character with its confidence (0-1), and the reader."""

    chars: tuple[tuple[str, float], ...]
    reader: str

    @property
    def text(self) -> str:
        return "".join(c for c, _ in self.chars)

    def line(self) -> str:
        """One line for people: the text, then each character's confidence."""
        if not self.chars:
            return "read: nothing"
        return f"read: {self.text} (" + ", ".join(f"{c} {p:.2f}" for c, p in self.chars) + ")"


def read(crop: FusedCrop, reader, name: str) -> Reading | None:
    """The OCR's reading of ``crop`` (``reader``: RGB uint8 -> [(char, confidence)]); None where the
    verdict is unreadable: no characters are read into a crop that cannot hold them."""
    if crop.verdict == UNREADABLE:
        return None
    return Reading(tuple(reader(crop.image)), name)


def reading_tags(reading: Reading | None) -> dict[str, str]:
    """Provenance keys for a reading (none where nothing was read)."""
    if reading is None:
        return {}
    return {"ultrares:read": reading.text, "ultrares:reader": reading.reader,
            "ultrares:read-confidence": " ".join(f"{c}={p:.2f}" for c, p in reading.chars)}


def tags(crop: FusedCrop) -> dict[str, str]:
    """Provenance text for the PNG (the keys of :func:`ultrares_stream.provenance.tags`, plus the
    fusion's own ``ultrares:*`` keys)."""
    version = provenance.version()
    used = crop.used
    comment = (f"Machine-fused from {len(used)} frames by {provenance.SOFTWARE} {version}: x{crop.scale} "
               f"multi-frame super-resolution ({crop.method}) of box {','.join(map(str, crop.box))} "
               f"around {crop.reference_time:.3f} s. Not an original recording.")
    if crop.verdict == UNREADABLE:
        comment += f" Verdict: unreadable ({crop.reason}); do not read characters from this image."
    return {
        "Software": f"{provenance.SOFTWARE} {version}",
        "Comment": comment,
        "ultrares:model": "multi-frame fusion",
        "ultrares:alpha": "",
        "ultrares:ensemble": "1",
        "ultrares:method": crop.method,
        "ultrares:frames": f"{len(used)} of {len(crop.frames)}",
        "ultrares:timestamps": ",".join(f"{f.time:.3f}" for f in used),
        "ultrares:residuals": ",".join(f"{f.residual:.2f}" for f in used),
        "ultrares:rejected": "; ".join(f"{f.time:.3f} {f.rejected}" for f in crop.frames if f.weight <= 0),
        "ultrares:reference": f"{crop.reference_time:.3f}",
        "ultrares:box": ",".join(map(str, crop.box)),
        "ultrares:verdict": crop.verdict if crop.verdict != UNREADABLE else f"{UNREADABLE}: {crop.reason}",
        "ultrares:quantiser": (f"{crop.quantiser[0]} QP {crop.quantiser[1]:.1f} (median over the frames fused, under "
                               "the box)" if crop.quantiser else "not known (the codec does not give it)"),
    }
