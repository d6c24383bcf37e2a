"""Flicker: how much the enhanced video changes from frame to frame where the scene stands still.

Protocol (``ultrares eval --task flicker CLIP...``): ``frames`` consecutive frames from the
held-out second half of each clip are the camera input, upscaled one after another as the live
pipeline would. A pixel is *static* between two frames when no channel of the input changed by
``levels`` or more anywhere in its 3x3 neighbourhood. Flicker is the mean absolute change of the
output's Y (BT.601, 0..255) on static pixels, pooled over the frames; the report divides it by
the flicker of MATLAB bicubic x``scale`` of the same frames (1.0 = as steady as bicubic).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter

from .scores import rgb_to_y

STATIC_LEVELS = 2


def static_mask(prev_lr: np.ndarray, lr: np.ndarray, levels: int = STATIC_LEVELS) -> np.ndarray:
    """HxW bool: no channel changed by ``levels`` or more in the pixel's 3x3 neighbourhood."""
    change = np.abs(lr.astype(np.int16) - prev_lr.astype(np.int16)).max(axis=2)
    return maximum_filter(change, size=3, mode="nearest") < levels


@dataclass
class FlickerMeter:
    """Accumulates one method's output changes on static pixels, frame after frame."""

    scale: int
    levels: int = STATIC_LEVELS
    total: float = 0.0
    pixels: int = 0
    _prev: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def add(self, lr: np.ndarray, sr: np.ndarray) -> None:
        y = rgb_to_y(sr)
        if self._prev is not None:
            prev_lr, prev_y = self._prev
            mask = np.kron(static_mask(prev_lr, lr, self.levels), np.ones((self.scale, self.scale), bool))
            mask = mask[: y.shape[0], : y.shape[1]]
            self.total += float(np.abs(y - prev_y)[mask].sum())
            self.pixels += int(mask.sum())
        self._prev = (lr, y)

    @property
    def value(self) -> float:
        """Mean |change| of Y on static pixels (nan when no pixel was static)."""
        return self.total / self.pixels if self.pixels else float("nan")


def clip_frames(path: Path, frames: int, start_fraction: float = 0.5) -> list[np.ndarray]:
    """``frames`` consecutive RGB frames of a clip, from ``start_fraction`` of its length (or as
    many as there are from there)."""
    import av

    from .datasets import frame_count

    start = int(frame_count(path) * start_fraction)
    out = []
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= start:
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == frames:
                    break
    return out


def measure(frames: Iterable[np.ndarray], methods: dict[str, Callable[[np.ndarray], np.ndarray]],
            scale: int, levels: int = STATIC_LEVELS) -> dict[str, float]:
    """Flicker of every method (LR uint8 -> SR uint8, called on the frames in order) on ``frames``."""
    meters = {name: FlickerMeter(scale, levels) for name in methods}
    for lr in frames:
        for name, fn in methods.items():
            meters[name].add(lr, fn(lr))
    return {name: m.value for name, m in meters.items()}


def upscaler_methods(upscaler, label: str, settings) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``{label: plain, label + " stabilised": stabilised}`` for one upscaler; the stabilised one
    reuses the network output the plain one just made (call them in that order on each frame)."""
    import torch

    from ..temporal import Stabiliser
    from .evaluate import to_image, to_input

    last: dict[str, torch.Tensor] = {}
    stab = Stabiliser(settings)

    def plain(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = to_input(lr, upscaler.device)
            last["lr"], last["out"] = x, upscaler.upscale(x).float()
            return to_image(last["out"])

    def stabilised(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return to_image(stab(last["lr"], last["out"]))

    return {label: plain, f"{label} stabilised": stabilised}
