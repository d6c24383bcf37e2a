"""Network interpolation (ESRGAN paper, section 3.4).

``G = (1 - alpha) * G_PSNR + alpha * G_GAN`` parameter by parameter, for two
networks of one architecture. alpha 0 reproduces the PSNR-oriented (faithful)
network, alpha 1 the GAN-oriented (detailed) one.
"""
from __future__ import annotations

import torch

from ..errors import ModelError

StateDict = dict[str, torch.Tensor]


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ModelError(f"alpha must be between 0 (faithful) and 1 (detailed), got {alpha}")
    return alpha


def check_compatible(psnr: StateDict, gan: StateDict) -> None:
    """Raise :class:`ModelError` naming the first key (in the PSNR network's order) or
    shape that differs."""
    for key, value in psnr.items():
        if key not in gan:
            raise ModelError(f"cannot interpolate: key {key!r} is only in the PSNR network")
        if value.shape != gan[key].shape:
            raise ModelError(f"cannot interpolate: {key!r} has shape {tuple(value.shape)} "
                             f"in the PSNR network and {tuple(gan[key].shape)} in the GAN network")
    for key in gan:
        if key not in psnr:
            raise ModelError(f"cannot interpolate: key {key!r} is only in the GAN network")


def interpolate(psnr: StateDict, gan: StateDict, alpha: float) -> StateDict:
    """Return ``(1 - alpha) * psnr + alpha * gan`` for every parameter (fp32 math).

    The endpoints return the original tensors' values exactly.
    """
    alpha = check_alpha(alpha)
    check_compatible(psnr, gan)
    out: StateDict = {}
    for key, a in psnr.items():
        b = gan[key]
        if alpha == 0.0 or not a.is_floating_point():
            out[key] = a.clone()
        elif alpha == 1.0:
            out[key] = b.clone()
        else:
            out[key] = ((1.0 - alpha) * a.float() + alpha * b.float()).to(a.dtype)
    return out
