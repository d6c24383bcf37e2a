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

import copy
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


#: where an engine goes when its probe check fails or its fp16 output has NaN/Inf: the next
#: backend, in a precision with fp32's range (bf16 where the device has it, else fp32)
FALLBACK = {"tensorrt": "compile", "compile": "eager", "eager": None}


def fallback_for(backend: str, precision: str, bf16: bool) -> tuple[str, str] | None:
    """The (backend, precision) to try after ``backend`` in ``precision`` failed; None: nothing left."""
    wide = precision if precision != "fp16" else ("bf16" if bf16 else "fp32")
    nxt = FALLBACK[backend]
    if nxt is None:
        return None if precision == "fp32" else ("eager", "fp32")
    return nxt, wide


class NonFiniteOutput(RuntimeError):
    """An engine's fp16 output has NaN/Inf (fp16 overflow in some layer)."""


def check_finite(out: torch.Tensor, precision: str) -> torch.Tensor:
    """``out``, or :class:`NonFiniteOutput` when an fp16 engine produced NaN/Inf (``clamp`` keeps
    NaN, and its uint8 cast is undefined). Wider precisions are not checked (no sync)."""
    if precision == "fp16" and not bool(torch.isfinite(out).all()):
        raise NonFiniteOutput("fp16 output has NaN/Inf")
    return out


class FallbackEngine:
    """An engine that moves to :func:`fallback_for` when its probe check fails (``load_weights``
    raises) or its fp16 output has NaN/Inf, instead of raising; logged once per move. The last
    weights given are loaded into the new engine and the batch runs again there.

    ``build(backend, precision)`` constructs an engine; it may raise :class:`UserError`
    (backend unavailable), which moves on down the chain."""

    def __init__(self, engine: Engine, build: Callable[[str, str], Engine], bf16: bool = False):
        self.engine, self._build, self._bf16 = engine, build, bf16
        self._weights: dict[str, torch.Tensor] | None = None
        self.moves: list[str] = []

    def __getattr__(self, attr: str):  # the backend's own attributes (shapes, last_weights_update ...)
        if attr == "engine":
            raise AttributeError(attr)
        return getattr(self.engine, attr)

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def precision(self) -> str:
        return self.engine.precision

    @property
    def slow_weights(self) -> bool:
        return self.engine.slow_weights

    @property
    def concurrent_passes(self) -> bool:
        return False  # a move to the next engine replaces self.engine: one pass at a time

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.prepare_weights(state_dict)()

    def prepare_weights(self, state_dict: dict[str, torch.Tensor]) -> Callable[[], None]:
        """The backend's preparation; a failed one moves down the chain (the live weights go with
        the move) and prepares there."""
        while True:
            engine = self.engine
            try:
                commit = engine.prepare_weights(state_dict)
                break
            except (UserError, RuntimeError) as exc:  # EngineCheckError, a failed build or refit
                self._move(f"{type(exc).__name__}: {exc}")

        def commit_here() -> None:
            self._weights = state_dict
            if self.engine is engine:
                commit()
            else:  # moved on since (NaN/Inf output): the new backend takes the weights directly
                self.engine.load_weights(state_dict)

        return commit_here

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                return check_finite(self.engine(x), self.engine.precision)
            except NonFiniteOutput as exc:
                self._move(str(exc))

    def _move(self, why: str) -> None:
        old = (self.engine.name, self.engine.precision)
        step = old
        while True:
            step = fallback_for(*step, self._bf16)
            if step is None:
                raise UserError(f"engine {old[0]} {old[1]} failed ({why}) and no fallback is left")
            try:
                engine = self._build(*step)
                if self._weights is not None:
                    engine.load_weights(self._weights)
            except (UserError, RuntimeError) as exc:
                log.warning("fallback engine %s %s unusable (%s); trying the next", *step, exc)
                continue
            break
        log.warning("engine %s %s failed (%s); running %s %s from now on", *old, why, *step)
        self.moves.append(f"{old[0]}/{old[1]} -> {step[0]}/{step[1]}")
        self.engine = engine


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
    template = copy.deepcopy(net)

    def build(backend: str, prec: str) -> Engine:
        from .compile import CompiledEngine

        choose_backend(backend, torch.device(device), probes)  # UserError when unavailable
        fresh = copy.deepcopy(template)
        if backend == "compile":
            return CompiledEngine(fresh, device, prec, max_batch=max_batch)  # type: ignore[arg-type]
        return EagerEngine(fresh, device, prec)  # type: ignore[arg-type]

    bf16 = torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported()
    return FallbackEngine(TensorRTEngine(net, device, precision, shapes=shapes, cache=cache),  # type: ignore[arg-type]
                          build, bf16)
