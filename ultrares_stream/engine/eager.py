"""Eager PyTorch backend: CUDA fp16 (falls back to fp32 on NaN/Inf), CPU bf16 autocast + channels_last.

On the CPU the memory layout is channels_last for bf16 by default and NCHW for fp32; ``auto``
times both (:func:`~ultrares_stream.engine.select.choose_cpu_engine`) and passes the faster."""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable

import torch
from torch import nn

from .base import Precision

log = logging.getLogger(__name__)
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class EagerEngine:
    name = "eager"
    slow_weights = False

    def __init__(self, net: nn.Module, device: torch.device, precision: Precision,
                 channels_last: bool | None = None):
        self.device = device
        self.precision: Precision = precision
        self.net = net.eval().to(device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        default = device.type == "cpu" and precision == "bf16"
        self.channels_last = default if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if precision == "fp16":  # CUDA only in practice: pick_precision refuses fp16 on the CPU
            self.net = self.net.half()
        self._lock = threading.Lock()
        self._fell_back = False

    @property
    def concurrent_passes(self) -> bool:
        """fp16 passes may replace the module (NaN/Inf fallback): those run one at a time."""
        return self.precision != "fp16"

    def prepare_weights(self, state_dict: dict[str, torch.Tensor]) -> Callable[[], None]:
        """Nothing slow to prepare: the commit copies the weights in (:meth:`load_weights`)."""
        return functools.partial(self.load_weights, state_dict)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy new weights into the live parameters (same shapes), between two batches."""
        with self._lock, torch.no_grad():
            params = dict(self.net.state_dict())
            for key, value in state_dict.items():
                params[key].copy_(value.to(params[key].device, params[key].dtype))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """One pass. Passes may run at once from several threads (the CPU batcher's frame-parallel
        workers: inference reads the module, never changes it), except fp16, whose NaN/Inf
        fallback replaces the module: those run one at a time."""
        if self.precision == "fp16":
            with self._lock:
                out = self.net(x.half())
                if bool(torch.isfinite(out).all()):
                    return out.float()
                self._fall_back_to_fp32()
                return self.net(x.float()).float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "bf16":
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                return self.net(x).float()
        return self.net(x.float()).float()

    def _fall_back_to_fp32(self) -> None:
        if not self._fell_back:
            log.warning("fp16 output has NaN/Inf for this model; running it in fp32 from now on")
            self._fell_back = True
        self.net = self.net.float()
        self.precision = "fp32"
