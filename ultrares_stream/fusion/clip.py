"""A box of a video file at a time, x4: fused from the frames around it, or one frame's bicubic.

What ``ultrares zoom CLIP --at T --box X,Y,W,H`` writes and ``POST /api/v1/zoom`` answers; the
box and time are checked here, so both say the same about a bad one (:class:`FieldError` naming
``box`` or ``at``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import FieldError
from .crop import fuse_box
from .decode import frames_around
from .evidence import FusedCrop
from .live import single_frame


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``X,Y,W,H`` -> ints; UserError naming the option otherwise."""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise FieldError("box", f"must be X,Y,W,H in pixels, e.g. 412,280,40,16; got {text!r}") from None
    if w < 2 or h < 2:
        raise FieldError("box", f"{text}: W and H must be at least 2 pixels")
    return x, y, w, h


def check_inside(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> None:
    x, y, w, h = box
    fh, fw = shape[:2]
    if x < 0 or y < 0 or x + w > fw or y + h > fh:
        raise FieldError("box", f"{x},{y},{w},{h} is outside the {fw}x{fh} frame")


class ClipCrop(NamedTuple):
    """The x4 picture of a box of a clip (HxWx3 uint8), the fused crop it is (None: one frame's
    bicubic x4), the reference frame's time (s) and the seconds the fusion or resize took."""

    image: np.ndarray
    crop: FusedCrop | None
    time: float
    seconds: float


def clip_crop(clip: Path, at: float, box: tuple[int, int, int, int], count: int, single: bool = False) -> ClipCrop:
    """``box`` of ``clip``'s frame nearest ``at`` s, fused x4 from the ``count`` frames around it
    (``single``: that frame's bicubic x4, for comparison). What ``ultrares zoom`` writes and
    ``POST /api/v1/zoom`` answers; UserError for a bad clip, time or box."""
    frames = frames_around(clip, at, 1 if single else count)
    ref = frames.rgb[frames.reference]
    check_inside(box, ref.shape)
    start = time.perf_counter()
    if single:
        image, crop = single_frame(ref, box), None
    else:
        crop = fuse_box(frames.rgb, frames.times, frames.reference, box, keyframes=frames.keyframes,
                        quantisers=frames.quantisers)
        image = crop.image
    return ClipCrop(image, crop, frames.times[frames.reference], time.perf_counter() - start)
