"""Choosing and constructing an engine backend by name."""
from __future__ import annotations

import torch

from ..errors import UserError
from .base import Engine
from .eager import EagerEngine

BACKENDS = ("eager",)


def make_engine(name: str, net: torch.nn.Module, device: torch.device, precision: str) -> Engine:
    if name in ("eager", "auto"):
        return EagerEngine(net, device, precision)  # type: ignore[arg-type]
    raise UserError(f"engine {name!r} is not available (choose from: auto, {', '.join(BACKENDS)})")
