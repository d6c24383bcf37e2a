"""What every engine backend provides, and the device/precision choice they share."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

log = logging.getLogger(__name__)
Precision = Literal["fp32", "fp16", "bf16", "int8"]  # int8: the OpenVINO engine only (engine.quantise)


class Engine(Protocol):
    """Runs one generator on one device.

    ``__call__`` takes an NCHW float tensor in [0, 1] on ``device`` whose height and
    width are multiples of the network's size multiple, and returns the upscaled
    NCHW float32 tensor. ``load_weights`` swaps in new weights of the same
    architecture (alpha changes) without interrupting callers for long.

    ``prepare_weights`` splits that in two: it does the slow part without touching the live
    engine and returns the commit, a fast swap that can be called again later to go back to
    those weights. ``slow_weights`` says the slow part is slow enough (a TensorRT refit: seconds)
    that callers should run it off the frame path; for the others ``prepare_weights`` is free.
    ``concurrent_passes``: passes may run at once from several threads (the CPU eager engine:
    inference only reads the module); the others run one pass at a time.
    """

    name: str
    device: torch.device
    precision: Precision
    slow_weights: bool
    concurrent_passes: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None: ...

    def prepare_weights(self, state_dict: dict[str, torch.Tensor]) -> Callable[[], None]: ...


@dataclass(frozen=True)
class ThreadPlan:
    """How the network's passes share the CPU: ``streams`` passes at once, ``threads`` each."""

    streams: int = 1
    threads: int = 1

    @classmethod
    def for_pipeline(cls, threads: int | None = None) -> ThreadPlan:
        """The batcher's plan (:func:`~ultrares_stream.batcher.cpu_inference_plan`): one
        single-threaded pass per core, or one pass at a time on ``threads`` threads."""
        from ..batcher import cpu_inference_plan

        streams, each = cpu_inference_plan(threads)
        return cls(streams, each)

    def describe(self) -> str:
        return f"{self.streams} pass(es) at once x {self.threads} thread(s)"


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..errors import UserError

        raise UserError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(precision: str, device: torch.device) -> Precision:
    """``auto``: fp16 on CUDA; bf16 on a CPU with native bf16, else fp32. fp16 on CPU is refused;
    int8 (NNCF-quantised, OpenVINO) is only ever asked for, and only on the CPU."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision not in ("fp32", "fp16", "bf16", "int8"):
        from ..errors import UserError

        raise UserError(f"precision must be auto, fp32, fp16, bf16 or int8, not {precision!r}")
    if precision == "int8" and device.type != "cpu":
        from ..errors import UserError

        raise UserError("int8 runs on the CPU (the OpenVINO engine); on CUDA use fp16")
    if precision == "fp16" and device.type == "cpu":
        from ..errors import UserError

        raise UserError("fp16 is not supported on the CPU (slow and inaccurate); use bf16 or fp32")
    return precision  # type: ignore[return-value]
