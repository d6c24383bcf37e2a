"""Choosing and constructing an engine backend by name.

``auto`` picks the fastest backend that is actually usable here, in the order
tensorrt > compile > eager, and logs which one and why. The availability checks
are plain functions gathered in :class:`Probes` so the decision table
(:func:`choose_backend`) can be tested on any machine.

On the CPU ``auto`` is eager: measured on a 2-core x86 machine (native bf16) with
the compact x4 net (64 feat / 16 conv) at 240x135, eager bf16 channels_last ran at
48-58 ms a frame, torch.compile bf16 at 49 ms after a 6 s compile per frame size,
eager fp32 at 257 ms and compiled fp32 at 106 ms after 17 s; see docs/gpu.md.
``--engine compile`` still works on the CPU when asked for.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import UserError
from .base import Engine
from .cache import EngineCache, ShapeRange
from .eager import EagerEngine

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "compile", "eager")
CHOICES = ("auto",) + BACKENDS


def _tensorrt_probe() -> tuple[bool, str]:
    from .tensorrt import tensorrt_available

    return tensorrt_available()


def _compile_probe(device: torch.device) -> tuple[bool, str]:
    """torch.compile needs Triton for CUDA kernels and a C++ compiler for CPU kernels."""
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return False, "this torch build has no Triton support"
        return (True, "Triton is available") if has_triton() else (False, "Triton is not installed")
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    return (True, f"C++ compiler {compiler}") if compiler else (False, "no C++ compiler (g++) on PATH")


@dataclass
class Probes:
    """What the backend choice depends on; each returns (usable, reason). Injectable for tests."""

    tensorrt: Callable[[], tuple[bool, str]] = _tensorrt_probe
    compile: Callable[[torch.device], tuple[bool, str]] = _compile_probe
    cache: dict = field(default_factory=dict)

    def check(self, backend: str, device: torch.device) -> tuple[bool, str]:
        if (backend, str(device)) not in self.cache:
            if backend == "tensorrt":
                result = self.tensorrt() if device.type == "cuda" else (False, "TensorRT runs on CUDA only")
            elif backend == "compile":
                result = self.compile(device)
            else:
                result = (True, "always available")
            self.cache[(backend, str(device))] = result
        return self.cache[(backend, str(device))]


DEFAULT_PROBES = Probes()
_made = {"engines": 0}


def engines_made() -> int:
    """Engines :func:`make_engine` constructed in this process (an alpha change must add none)."""
    return _made["engines"]


def choose_backend(requested: str, device: torch.device, probes: Probes | None = None) -> tuple[str, str]:
    """(backend, reason). ``auto``: tensorrt > compile on CUDA, eager on the CPU (faster there, see
    the module doc); a named backend that is not usable is a :class:`UserError` saying why."""
    probes = probes or DEFAULT_PROBES
    if requested not in CHOICES:
        raise UserError(f"engine must be one of {', '.join(CHOICES)}, not {requested!r}")
    if requested != "auto":
        ok, why = probes.check(requested, device)
        if not ok:
            hint = " (install the extra: pip install 'ultrares-stream[tensorrt]')" if requested == "tensorrt" else ""
            raise UserError(f"engine {requested!r} is not available on {device}: {why}{hint}")
        return requested, f"requested ({why})"
    if device.type != "cuda":
        return "eager", ("CPU: eager bf16/fp32 beats torch.compile here and needs no compile time; "
                         "TensorRT needs CUDA")
    skipped = []
    for backend in ("tensorrt", "compile"):
        ok, why = probes.check(backend, device)
        if ok:
            note = f"; skipped {'; '.join(skipped)}" if skipped else ""
            return backend, f"fastest available ({why}){note}"
        skipped.append(f"{backend}: {why}")
    return "eager", "no faster backend available (" + "; ".join(skipped) + ")"


def make_engine(name: str, net: torch.nn.Module, device: torch.device, precision: str, *,
                shapes: ShapeRange | None = None, cache: EngineCache | None = None,
                max_batch: int = 8, probes: Probes | None = None) -> Engine:
    """Construct the backend ``name`` (or the one ``auto`` picks) for ``net`` on ``device``.

    ``shapes``: the input range a TensorRT engine is built for (default: 1..``max_batch`` frames of
    270x480 to 540x960); ``cache``: where built engines are kept (default ``engines/cache``).
    Weights arrive later through ``load_weights`` (the upscaler sets alpha right after this).
    """
    backend, why = choose_backend(name, torch.device(device), probes)
    log.info("engine %s on %s, %s: %s", backend, device, precision, why)
    _made["engines"] += 1
    if backend == "eager":
        return EagerEngine(net, device, precision)  # type: ignore[arg-type]
    if backend == "compile":
        from .compile import CompiledEngine

        return CompiledEngine(net, device, precision, max_batch=max_batch)  # type: ignore[arg-type]
    from .tensorrt import TensorRTEngine

    if shapes is None:
        shapes = ShapeRange(batch=(1, min(4, max_batch), max_batch))
    return TensorRTEngine(net, device, precision, shapes=shapes, cache=cache)  # type: ignore[arg-type]
