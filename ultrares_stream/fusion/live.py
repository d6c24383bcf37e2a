"""Zoom into what a live camera just saw: a box of its latest (or a recent) frame, fused from the
frames its :class:`~.history.FrameHistory` holds, or the single frame's bicubic x4 for comparison.

:func:`zoom` is what ``POST /api/v1/streams/{name}/zoom`` runs on a worker thread. The box is in
the camera's decoded (low-resolution) pixels of the reference frame. Errors are
:class:`ZoomError` with a ``kind``: ``box`` (the box is not inside the frame), ``frames``
(too few frames held yet, or the reference frame no longer held).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import provenance
from ..errors import UserError
from .crop import FusionSettings, fuse_box
from .evidence import FusedCrop, tags
from .history import FrameHistory, HeldFrame

SINGLE_METHOD = "bicubic x4 (MATLAB kernel) of one frame, no enhancement"


class ZoomError(UserError):
    """A zoom that cannot be made: ``kind`` is ``box`` or ``frames``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Zoom:
    """A zoomed crop (x``scale`` RGB uint8), its provenance text, the fused crop (None for the
    single frame), the reference frame and how long it took."""

    image: np.ndarray
    tags: dict[str, str]
    crop: FusedCrop | None
    reference: HeldFrame
    frames: list[HeldFrame]
    seconds: float

    @property
    def verdict(self) -> str:
        return self.crop.verdict if self.crop is not None else "single frame"


def frame_times(frames: list[HeldFrame], reference: HeldFrame) -> list[float]:
    """Each frame's source time (s); where the source gives none, seconds from the reference's decode."""
    if all(f.time_s is not None for f in frames):
        return [float(f.time_s) for f in frames]
    return [f.received - reference.received for f in frames]


def check_box(box: tuple[int, int, int, int], width: int, height: int) -> None:
    x, y, w, h = box
    if w < 2 or h < 2:
        raise ZoomError("box", f"box {x},{y},{w},{h}: width and height must be at least 2 pixels")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ZoomError("box", f"box {x},{y},{w},{h} is outside the camera's {width}x{height} frame "
                               "(the box is in the camera's decoded pixels)")


def held_window(history: FrameHistory, count: int, reference: int | None) -> tuple[list[HeldFrame], int]:
    """``count`` frames around ``reference`` (default the latest); ZoomError when they are not held."""
    try:
        frames, at = history.window(count, reference)
    except KeyError:
        raise ZoomError("frames", f"frame {reference} is no longer held (a camera keeps its last "
                                  f"{history.seconds:g} s); zoom on a newer frame") from None
    if len(frames) < count:
        raise ZoomError("frames", f"the camera holds {len(frames)} decoded frame(s) so far and a zoom of "
                                  f"{count} frames needs {count}; try again shortly or ask for fewer frames")
    return frames, at


def zoom(history: FrameHistory, box: tuple[int, int, int, int], count: int = 16, reference: int | None = None,
         single: bool = False, settings: FusionSettings = FusionSettings()) -> Zoom:
    """The x4 crop of ``box`` fused from ``count`` frames around ``reference`` (``single``: the
    reference frame's bicubic x4 instead)."""
    start = time.perf_counter()
    frames, at = held_window(history, 1 if single else count, reference)
    ref = frames[at]
    check_box(box, ref.width, ref.height)
    times = frame_times(frames, ref)
    if single:
        image, crop, prov = single_frame(ref.rgb(), box, settings.scale), None, None
    else:
        crop = fuse_box([f.rgb() for f in frames], times, at, box, settings, quantisers=[f.quantisers for f in frames])
        image, prov = crop.image, tags(crop)
    prov = live_tags(prov, box, ref, times[at], [f.index for f in frames], settings.scale)
    return Zoom(image, prov, crop, ref, frames, time.perf_counter() - start)


def single_frame(rgb: np.ndarray, box: tuple[int, int, int, int], scale: int = 4) -> np.ndarray:
    """The box of one frame, bicubic x``scale`` (MATLAB kernel): what one frame shows."""
    from ..quality.matlab_resize import imresize

    x, y, w, h = box
    return imresize(np.ascontiguousarray(rgb[y: y + h, x: x + w]), scale=scale)


def live_tags(fused: dict[str, str] | None, box, ref: HeldFrame, ref_time: float, indices: list[int],
              scale: int) -> dict[str, str]:
    """Provenance of a live zoom: the fused crop's (:func:`.evidence.tags`), or a single frame's,
    plus the frame indices in the camera's stream."""
    where = ",".join(map(str, box))
    if fused is None:
        fused = {
            "Software": f"{provenance.SOFTWARE} {provenance.version()}",
            "Comment": f"One frame of a camera, box {where} of frame {ref.index} ({ref_time:.3f} s) resized "
                       f"x{scale} by bicubic interpolation: no enhancement, no fusion.",
            "ultrares:model": "bicubic", "ultrares:alpha": "", "ultrares:ensemble": "1",
            "ultrares:method": SINGLE_METHOD, "ultrares:frames": "1 of 1",
            "ultrares:timestamps": f"{ref_time:.3f}", "ultrares:reference": f"{ref_time:.3f}",
            "ultrares:box": where, "ultrares:verdict": "single frame",
        }
    return {**fused, "ultrares:frame-indices": ",".join(map(str, indices)), "ultrares:reference-index": str(ref.index)}


def picture(image: np.ndarray):
    """An HxWx3 uint8 RGB array as an :class:`~ultrares_stream.images.Picture` (for writing it)."""
    import torch

    from ..images import Picture

    return Picture(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0)


def png(image: np.ndarray, prov: dict[str, str]) -> bytes:
    """``image`` (HxWx3 uint8) as PNG bytes with ``prov`` in its text chunks."""
    from ..images import encode_image

    return encode_image(picture(image), "PNG", name="the zoom", provenance=prov)
