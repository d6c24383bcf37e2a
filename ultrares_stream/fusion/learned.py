"""The learned refinement of a fused crop: a small network that corrects the classical fusion.

Its input is the registered stack (each of up to :data:`FRAMES` frames' patch bicubic x4 and
warped onto the reference crop's HR grid; the reference first, then the others by their distance
in time; a frame that is missing or rejected is stood in for by the fusion itself) and the
classical robust fusion; its output is the fusion plus a correction. It was trained by
``scripts/train_fusion_net.py`` on synthetic passes over drawn plates (never the evaluation
photos), encoded with libx264 at camera bitrates, so it has seen what the codec does to
each frame; the weights ship with the package (``models/weights/ultrares-fusion-x4.safetensors``,
card: docs/models/ultrares-fusion-x4.md). The network is fully convolutional: any crop size.
"""
from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from ..quality.matlab_resize import imresize
from .evidence import FrameUse
from .synthetic import lr_to_hr
from .tracking import Tracked

FRAMES = 16
WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights" / "ultrares-fusion-x4.safetensors"


def fusion_net(features: int = 32, depth: int = 6):
    """The network: registered stack (3 x FRAMES) + classical fusion (3) -> the fusion corrected."""
    import torch
    from torch import nn

    class FusionNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Conv2d(3 * FRAMES + 3, features, 3, padding=1), nn.ReLU(inplace=True)]
            for _ in range(depth - 2):
                layers += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
            layers.append(nn.Conv2d(features, 3, 3, padding=1))
            self.body = nn.Sequential(*layers)

        def forward(self, stack: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
            return fused + self.body(torch.cat([stack, fused], 1))

    return FusionNet()


def stack_order(ref_index: int, times: list[float], uses: list[FrameUse]) -> list[int]:
    """The frames the network sees, at most :data:`FRAMES`: the reference first, then the used
    frames nearest to it in time."""
    others = [k for k, u in enumerate(uses) if k != ref_index and u.weight > 0]
    others.sort(key=lambda k: (abs(times[k] - times[ref_index]), k))
    return [ref_index] + others[: FRAMES - 1]


def registered_stack(tracked: list[Tracked], order: list[int], fused: np.ndarray, scale: int) -> np.ndarray:
    """(FRAMES x H x W x 3) float: each frame of ``order`` bicubic x``scale``, warped onto the HR grid of
    the reference crop (``fused``'s grid); the fusion stands in for frames beyond ``order``."""
    h, w = fused.shape[:2]
    c = lr_to_hr(scale)
    out = []
    for k in order:
        t = tracked[k]
        up = imresize(t.patch.astype(np.float32), scale=scale).astype(np.float32)
        out.append(cv2.warpPerspective(up, c @ t.registration.warp @ np.linalg.inv(c), (w, h),
                                       flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                       borderMode=cv2.BORDER_REPLICATE))
    out += [fused.astype(np.float32)] * (FRAMES - len(out))
    return np.stack(out)


class Refiner:
    """The shipped network, loaded once; :meth:`refine` is safe from several threads."""

    def __init__(self, path: Path = WEIGHTS):
        import torch
        from safetensors.torch import load_file

        self.net = fusion_net()
        self.net.load_state_dict(load_file(str(path)))
        self.net.eval()
        self._torch, self._lock = torch, threading.Lock()

    def refine(self, stack: np.ndarray, fused: np.ndarray) -> np.ndarray:
        """The corrected fusion (HxWx3 float, grey levels) from the stack and the classical fusion."""
        torch = self._torch
        s = torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 1, 2))).reshape(1, -1, *stack.shape[1:3])
        f = torch.from_numpy(np.ascontiguousarray(fused.transpose(2, 0, 1), dtype=np.float32))[None]
        with self._lock, torch.inference_mode():
            out = self.net(s / 255.0, f / 255.0)
        return out[0].numpy().transpose(1, 2, 0) * 255.0


@cache
def refiner() -> Refiner | None:
    """The shipped refiner, or None where its weights or torch are missing (the classical fusion stands)."""
    try:
        return Refiner() if WEIGHTS.is_file() else None
    except ImportError:
        return None
