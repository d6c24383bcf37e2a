"""Synthetic passes of a vehicle: one HR picture seen over several frames, each at a different
sub-pixel position and a slightly different scale, then shrunk x1/scale like a camera would.

Used by ``ultrares eval --task plates-clip``, the tests and the fusion network's training. Frame 0
is the reference: it is the picture itself (identity motion), so its LR frame is the plain
x1/scale down-scale and the ground truth lines up with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..quality.matlab_resize import imresize


@dataclass(frozen=True)
class PassSettings:
    """Motion of a synthetic pass: shifts uniform in +-``shift`` LR pixels, scale in 1 +- ``zoom``."""

    frames: int = 16
    shift: float = 1.0
    zoom: float = 0.03


def lr_to_hr(scale: int) -> np.ndarray:
    """3x3 map from LR pixel coordinates to HR ones (pixel centres): ``X = scale * x + (scale - 1) / 2``."""
    c = (scale - 1) / 2.0
    return np.array([[scale, 0.0, c], [0.0, scale, c], [0.0, 0.0, 1.0]])


def random_motions(rng: np.random.Generator, centre: tuple[float, float], scale: int,
                   settings: PassSettings = PassSettings()) -> list[np.ndarray]:
    """3x3 HR maps, frame pixels -> picture pixels, one per frame: a zoom about ``centre`` (HR x, y)
    and a shift; the first is the identity."""
    out = [np.eye(3)]
    cx, cy = centre
    for _ in range(settings.frames - 1):
        z = 1.0 + rng.uniform(-settings.zoom, settings.zoom)
        tx, ty = rng.uniform(-settings.shift, settings.shift, 2) * scale
        out.append(np.array([[z, 0.0, cx - z * cx + tx], [0.0, z, cy - z * cy + ty], [0.0, 0.0, 1.0]]))
    return out


def render(picture: np.ndarray, motion: np.ndarray, scale: int) -> np.ndarray:
    """The LR frame (uint8) of ``picture`` moved by ``motion``: warped (bicubic) on the HR grid,
    then MATLAB-bicubic x1/``scale``. The picture's size must be a multiple of ``scale``."""
    h, w = picture.shape[:2]
    if np.allclose(motion, np.eye(3)):
        moved = picture
    else:
        moved = cv2.warpAffine(picture, motion[:2], (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
    return imresize(moved, scale=1 / scale)


def true_warp(motion: np.ndarray, scale: int) -> np.ndarray:
    """The LR warp (reference frame pixels -> this frame's pixels) a perfect registration finds."""
    c = lr_to_hr(scale)
    return np.linalg.inv(c) @ np.linalg.inv(motion) @ c


def synthetic_pass(picture: np.ndarray, centre: tuple[float, float], rng: np.random.Generator, scale: int = 4,
                   settings: PassSettings = PassSettings()) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(LR frames, true LR warps) of a pass over ``picture`` (HxWx3 uint8, a multiple of ``scale``)."""
    motions = random_motions(rng, centre, scale, settings)
    return [render(picture, m, scale) for m in motions], [true_warp(m, scale) for m in motions]
