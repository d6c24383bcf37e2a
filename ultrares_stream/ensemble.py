"""Geometric self-ensemble: the network run on the frame flipped and transposed, each output
turned back and the outputs averaged (EDSR's "+" models, Lim et al. 2017; RCAN and SwinIR
report it the same way).

A convolutional SR network is nearly, not exactly, equivariant to flips and transposes; its
errors in the eight orientations are partly independent, so their mean is closer to the truth.
It costs one forward pass per orientation, so it is for recorded footage, single images and GPU
hosts, not for live cameras on a CPU. ``passes`` takes the first 1, 2, 4 or 8 of
:data:`TRANSFORMS`: identity, then the horizontal flip, the vertical flips, the transposes.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import UserError

#: (flip left-right, flip top-bottom, transpose) of each pass, in the order passes are added
TRANSFORMS: tuple[tuple[bool, bool, bool], ...] = tuple(
    (bool(t & 1), bool(t & 2), bool(t & 4)) for t in range(8))
PASSES = (1, 2, 4, 8)


def check_passes(passes: int) -> int:
    if passes not in PASSES:
        raise UserError(f"self-ensemble takes {', '.join(map(str, PASSES))} passes, not {passes}")
    return passes


def orient(x: torch.Tensor, flip_w: bool, flip_h: bool, transpose: bool) -> torch.Tensor:
    """``x`` (...HW) flipped, then transposed."""
    dims = [d for d, on in ((-1, flip_w), (-2, flip_h)) if on]
    if dims:
        x = x.flip(dims)
    return x.transpose(-1, -2) if transpose else x


def unorient(y: torch.Tensor, flip_w: bool, flip_h: bool, transpose: bool) -> torch.Tensor:
    """The inverse of :func:`orient`: transposed back, then unflipped."""
    if transpose:
        y = y.transpose(-1, -2)
    dims = [d for d, on in ((-1, flip_w), (-2, flip_h)) if on]
    return y.flip(dims) if dims else y


def self_ensemble(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, passes: int) -> torch.Tensor:
    """The mean of ``run`` over the first ``passes`` orientations of ``x`` (NCHW), each output
    turned back. One pass returns ``run(x)`` itself."""
    if passes == 1:
        return run(x)
    total = None
    for how in TRANSFORMS[:check_passes(passes)]:
        y = unorient(run(orient(x, *how).contiguous()), *how).float()
        total = y.clone() if total is None else total.add_(y)
    return total.div_(passes)
