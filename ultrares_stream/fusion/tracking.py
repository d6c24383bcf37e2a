"""Track a marked box across frames by registration, and cut each frame's patch for fusion.

The box (x, y, w, h) is in the reference frame's pixels. The reference crop is the box plus a
``margin``; in every other frame it is searched for in a window ``search`` pixels around where
it was in the neighbouring frame (closer to the reference first, so the search follows the
vehicle), registered there (:func:`.registration.register`), and a patch ``pad`` pixels larger
than the warped crop is cut out, its warp expressed in the patch's pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .registration import Registration, register, translation

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Tracked:
    """One frame's view of the reference crop: ``patch`` (LR pixels), its ``registration`` (warp:
    reference crop -> patch pixels) and where the patch lies in the frame (``origin``, x, y);
    ``patch`` is None where the crop was lost (out of the frame)."""

    patch: np.ndarray | None
    registration: Registration | None
    origin: tuple[int, int]


def crop_box(box: Box, margin: int, frame_shape: tuple[int, ...]) -> Box:
    """``box`` grown by ``margin`` pixels each side, clipped to the frame."""
    h, w = frame_shape[:2]
    x, y, bw, bh = box
    x0, y0 = max(0, x - margin), max(0, y - margin)
    return x0, y0, min(w, x + bw + margin) - x0, min(h, y + bh + margin) - y0


def window(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """``frame[y0:y1, x0:x1]`` clipped to the frame, with its origin; None when nothing is left."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return None
    return frame[y0:y1, x0:x1], (x0, y0)


def locate(frame: np.ndarray, ref: np.ndarray, guess: tuple[float, float], search: int, pad: int,
           motion: str = "affine") -> Tracked:
    """Find ``ref`` in ``frame`` near ``guess`` (where its origin is expected, frame pixels)."""
    rh, rw = ref.shape[:2]
    gx, gy = int(round(guess[0])), int(round(guess[1]))
    found = window(frame, gx - search, gy - search, gx + rw + search, gy + rh + search)
    if found is None or found[0].shape[0] < rh or found[0].shape[1] < rw:
        return Tracked(None, None, (gx, gy))
    area, (ax, ay) = found
    reg = register(ref, area, motion)
    sx, sy = reg.shift
    tight = window(frame, int(np.floor(ax + sx)) - pad, int(np.floor(ay + sy)) - pad,
                   int(np.ceil(ax + sx)) + rw + pad, int(np.ceil(ay + sy)) + rh + pad)
    if tight is None:
        return Tracked(None, None, (gx, gy))
    patch, (px, py) = tight
    warp = translation(ax - px, ay - py) @ reg.warp
    return Tracked(patch, Registration(warp, reg.residual, reg.correlation), (px, py))


def track(frames: list[np.ndarray], ref_index: int, box: Box, margin: int = 8, search: int = 24,
          pad: int = 3) -> tuple[np.ndarray, Box, list[Tracked]]:
    """(reference crop, its box in the reference frame, one :class:`Tracked` per frame) for ``box``
    marked in ``frames[ref_index]``; the reference's own entry is the identity."""
    cx, cy, cw, ch = crop_box(box, margin, frames[ref_index].shape)
    ref = frames[ref_index][cy: cy + ch, cx: cx + cw]
    out: list[Tracked | None] = [None] * len(frames)
    out[ref_index] = Tracked(ref, Registration(np.eye(3), 0.0, 1.0), (cx, cy))
    for order in (range(ref_index + 1, len(frames)), range(ref_index - 1, -1, -1)):
        last, velocity = (float(cx), float(cy)), (0.0, 0.0)
        for k in order:
            t = locate(frames[k], ref, (last[0] + velocity[0], last[1] + velocity[1]), search, pad)
            out[k] = t
            if t.registration is not None:
                here = (t.origin[0] + t.registration.shift[0], t.origin[1] + t.registration.shift[1])
                velocity, last = (here[0] - last[0], here[1] - last[1]), here
    return ref, (cx, cy, cw, ch), out
