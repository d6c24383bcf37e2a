"""Choosing and constructing an engine backend by name.

``auto`` picks the fastest backend that is actually usable here. On CUDA that is the order
tensorrt > compile > eager, from availability alone. On the CPU it is measured
(:func:`choose_cpu_engine`): the candidates of :data:`CPU_CANDIDATES` (OpenVINO where installed,
eager in NCHW and in channels_last) run a few passes on a small frame under the pipeline's
thread plan, side by side in interleaved rounds, and the fastest is used; the decision is kept
per CPU model, network, precision and thread plan in the engine cache folder, so the
measurement runs once. The availability checks and the timing are plain functions gathered in
:class:`Probes`, so the decisions can be tested on any machine. torch.compile is not a CPU
candidate: on the 2-core machine it gained nothing over eager bf16 and costs a compile per frame
size (docs/gpu.md); ``--engine compile`` still works on the CPU when asked for. With the precision
left to ``auto`` too, int8 on OpenVINO is a further candidate for the pairs whose int8 passed the
quality rule (:data:`.quantise.INT8_VERDICTS`: the traffic-protocol loss, the plate score, the speed).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from .base import Engine, ThreadPlan
from .cache import EngineCache, ShapeRange
from .eager import EagerEngine

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "compile", "openvino", "eager")
CHOICES = ("auto",) + BACKENDS
#: the device type each backend needs (None: any)
DEVICE_OF = {"tensorrt": "cuda", "openvino": "cpu", "compile": None, "eager": None}
#: networks with fewer parameters run eager on the CPU without a measurement: a conversion and a
#: timing would cost more than such a net's whole run saves (test nets, toy checkpoints)
MEASURE_MIN_PARAMS = 20_000
CHOICE_FILE = "cpu-engine-choice.json"  # in the engine cache folder
#: precisions only some backends run (the others refuse them); ``auto`` is the first of them
PRECISION_BACKENDS = {"int8": ("openvino",)}


def _tensorrt_probe() -> tuple[bool, str]:
    from .tensorrt import tensorrt_available

    return tensorrt_available()


def _openvino_probe() -> tuple[bool, str]:
    from .openvino import openvino_available

    return openvino_available()


def _timing_probe(engines: dict[str, Engine], plan: ThreadPlan, size: tuple[int, int]) -> dict[str, float]:
    from .timing import time_cpu_engines

    return time_cpu_engines(engines, plan, size)


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
    """What the backend choice depends on, injectable for tests: the availability checks return
    (usable, reason); ``timing(engines, plan, (height, width))`` returns seconds a frame per engine
    name; ``min_params``: smaller networks are not measured (:data:`MEASURE_MIN_PARAMS`)."""

    tensorrt: Callable[[], tuple[bool, str]] = _tensorrt_probe
    compile: Callable[[torch.device], tuple[bool, str]] = _compile_probe
    openvino: Callable[[], tuple[bool, str]] = _openvino_probe
    timing: Callable[[dict[str, Engine], ThreadPlan, tuple[int, int]], dict[str, float]] = _timing_probe
    min_params: int = MEASURE_MIN_PARAMS
    cache: dict = field(default_factory=dict)

    def check(self, backend: str, device: torch.device) -> tuple[bool, str]:
        if (backend, str(device)) not in self.cache:
            needs = DEVICE_OF.get(backend)
            if needs is not None and device.type != needs:
                result = (False, {"cuda": "TensorRT runs on CUDA only", "cpu": "OpenVINO runs on the CPU here"}[needs])
            else:
                checks = {"tensorrt": lambda d: self.tensorrt(), "compile": self.compile,
                          "openvino": lambda d: self.openvino()}
                result = checks.get(backend, lambda d: (True, "always available"))(device)
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
            hint = {"tensorrt": " (install the extra: pip install 'ultrares-stream[tensorrt]')",
                    "openvino": " (pip install openvino)"}.get(requested, "") if device.type == DEVICE_OF[requested] else ""
            raise UserError(f"engine {requested!r} is not available on {device}: {why}{hint}")
        return requested, f"requested ({why})"
    if device.type != "cuda":  # make_engine measures the CPU candidates (choose_cpu_engine)
        return "eager", ("CPU: eager (or OpenVINO where it measures faster: choose_cpu_engine); torch.compile "
                         "gains nothing over eager here and TensorRT needs CUDA")
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
FALLBACK = {"tensorrt": "compile", "compile": "eager", "openvino": "eager", "eager": None}


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


def _openvino_engine(net: nn.Module, precision: str, plan: ThreadPlan, cache: EngineCache | None) -> Engine:
    from .openvino import OpenVINOEngine

    return OpenVINOEngine(net, torch.device("cpu"), precision, plan=plan, cache=cache)  # type: ignore[arg-type]


#: the CPU engines ``auto`` times against each other: name -> (backend, builder(net, precision, plan, cache))
CPU_CANDIDATES: dict[str, tuple[str, Callable[..., Engine]]] = {
    "openvino": ("openvino", _openvino_engine),
    "eager-channels-last": ("eager", lambda net, prec, plan, cache: EagerEngine(net, CPU, prec, channels_last=True)),
    "eager-nchw": ("eager", lambda net, prec, plan, cache: EagerEngine(net, CPU, prec, channels_last=False)),
}
CPU = torch.device("cpu")
#: the candidate ``auto`` adds for a pair whose int8 passed the quality rule (:func:`.quantise.int8_passed`)
INT8_CANDIDATE = "openvino-int8"


def _int8_candidate(net: nn.Module, precision: str, plan: ThreadPlan, cache: EngineCache | None) -> Engine:
    return _openvino_engine(net, "int8", plan, cache)  # its own precision, whatever the others run


def cpu_candidates(pair: str | None = None) -> dict[str, tuple[str, Callable[..., Engine]]]:
    """:data:`CPU_CANDIDATES`, and int8 on OpenVINO where ``pair`` (the model pair, given when the
    precision was left to ``auto``) passed the int8 quality rule and NNCF is installed."""
    from .quantise import int8_passed, nncf_available

    if pair is None or not int8_passed(pair) or not nncf_available()[0]:
        return dict(CPU_CANDIDATES)
    return {**CPU_CANDIDATES, INT8_CANDIDATE: ("openvino", _int8_candidate)}


def probe_size(net: nn.Module) -> tuple[int, int]:
    """The frame the CPU candidates are timed on: about 4 GFLOP a pass (2 x parameters a pixel,
    the networks here run their convolutions at the input's resolution), 32x32 to 128x128."""
    params = sum(p.numel() for p in net.parameters())
    side = int(min(128, max(32, (4e9 / max(1, 2 * params)) ** 0.5))) // 8 * 8
    return side, side


def choice_key(net: nn.Module, precision: str, plan: ThreadPlan, candidates: list[str]) -> dict[str, str]:
    """What a measured CPU choice depends on (it is reused only where all of it is the same)."""
    from .cache import _version
    from .openvino import cpu_model_name
    from .tensorrt import _describe

    return {"cpu": cpu_model_name(), "cores": str(os.cpu_count()), "arch": _describe(net), "precision": precision,
            "plan": plan.describe(), "candidates": ",".join(candidates), "torch": torch.__version__,
            "openvino": _version("openvino")}


class ChoiceFile:
    """Measured CPU choices, one JSON file in the engine cache folder: key digest -> choice."""

    def __init__(self, root: Path):
        self.path = Path(root) / CHOICE_FILE

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def digest(key: dict[str, str]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def get(self, key: dict[str, str]) -> dict | None:
        entry = self._read().get(self.digest(key))
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, key: dict[str, str], choice: str, timings: dict[str, float]) -> None:
        """Failures are logged, not raised: an unwritable cache costs a measurement next start."""
        data = self._read()
        data[self.digest(key)] = {"key": key, "choice": choice, "ms_per_frame": timings, "measured": time.time()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not record the CPU engine choice in %s (%s)", self.path, exc)


def choose_cpu_engine(net: nn.Module, precision: str, *, probes: Probes | None = None,
                      cache: EngineCache | None = None, plan: ThreadPlan | None = None,
                      pair: str | None = None) -> tuple[Engine, str]:
    """The fastest CPU engine for ``net`` (an engine built from a copy of it) and why, measured
    once per CPU model, network, precision and thread plan (:class:`ChoiceFile`). ``pair``: the
    model pair when the precision was left to ``auto`` (int8 is a candidate where it passed:
    :func:`cpu_candidates`)."""
    probes, plan = probes or DEFAULT_PROBES, plan or ThreadPlan.for_pipeline()
    params = sum(p.numel() for p in net.parameters())
    if params < probes.min_params:
        return EagerEngine(net, CPU, precision), f"eager: {params} parameters, too small to measure"  # type: ignore[arg-type]
    candidates = cpu_candidates(pair)
    names = [n for n, (backend, _) in candidates.items() if probes.check(backend, CPU)[0]]
    skipped = [f"{n}: {probes.check(b, CPU)[1]}" for n, (b, _) in candidates.items() if n not in names]
    key = choice_key(net, precision, plan, names)
    record = ChoiceFile((cache or EngineCache()).root)
    known = record.get(key)
    if known is not None and known["choice"] in names:
        engine = _build_candidate(known["choice"], candidates, net, precision, plan, cache)
        if engine is not None:
            return engine, f"{known['choice']}, as measured earlier ({_timings_text(known['ms_per_frame'])}; {record.path})"
    engines = {n: e for n in names
               if (e := _build_candidate(n, candidates, net, precision, plan, cache)) is not None}
    if len(engines) < 2:
        engine = next(iter(engines.values()), None) or EagerEngine(net, CPU, precision)  # type: ignore[arg-type]
        return engine, f"{engine.name}: the only usable CPU engine"
    size = probe_size(net)
    timings = {n: 1000 * t for n, t in probes.timing(engines, plan, size).items()}
    best = min(timings, key=timings.get)
    record.put(key, best, {n: round(t, 2) for n, t in timings.items()})
    note = f"; not available: {'; '.join(skipped)}" if skipped else ""
    return engines[best], (f"{best}, fastest measured on {key['cpu']} ({plan.describe()}, {size[1]}x{size[0]} "
                           f"frames: {_timings_text(timings)}){note}")


def _build_candidate(name: str, candidates: dict, net: nn.Module, precision: str, plan: ThreadPlan,
                     cache: EngineCache | None) -> Engine | None:
    try:
        return candidates[name][1](copy.deepcopy(net), precision, plan, cache)
    except (UserError, RuntimeError) as exc:
        log.warning("CPU engine %s unusable for this network (%s)", name, exc)
        return None


def _timings_text(ms: dict[str, float]) -> str:
    return ", ".join(f"{n} {t:.1f} ms" for n, t in sorted(ms.items(), key=lambda kv: kv[1])) + " a frame"


def make_engine(name: str, net: torch.nn.Module, device: torch.device, precision: str, *,
                shapes: ShapeRange | None = None, cache: EngineCache | None = None,
                max_batch: int = 8, probes: Probes | None = None, threads: int | None = None,
                pair: str | None = None) -> Engine:
    """Construct the backend ``name`` (or the one ``auto`` picks) for ``net`` on ``device``.

    ``shapes``: the input range a TensorRT engine is built for (default: 1..``max_batch`` frames of
    270x480 to 540x960); ``cache``: where built engines are kept (default ``engines/cache``);
    ``threads``: the CPU plan's threads (:meth:`ThreadPlan.for_pipeline`: the OpenVINO streams);
    ``pair``: the model pair, given when the precision was left to ``auto``: ``auto`` on the CPU
    also times int8 where that pair's int8 passed the quality rule (:func:`cpu_candidates`).
    Weights arrive later through ``load_weights`` (the upscaler sets alpha right after this).
    """
    device = torch.device(device)
    name = backend_for_precision(name, precision)
    backend, why = choose_backend(name, device, probes)
    _made["engines"] += 1
    plan = ThreadPlan.for_pipeline(threads)
    if name == "auto" and device.type == "cpu":
        engine, why = choose_cpu_engine(net, precision, probes=probes, cache=cache, plan=plan, pair=pair)
        log.info("engine %s on cpu, %s: %s", engine.name, engine.precision, why)
        return engine
    log.info("engine %s on %s, %s: %s", backend, device, precision, why)
    if backend == "eager":
        return EagerEngine(net, device, precision)  # type: ignore[arg-type]
    if backend == "openvino":
        return _openvino_engine(net, precision, plan, cache)
    if backend == "compile":
        from .compile import CompiledEngine

        return CompiledEngine(net, device, precision, max_batch=max_batch)  # type: ignore[arg-type]
    return _tensorrt_engine(net, device, precision, shapes=shapes, cache=cache, max_batch=max_batch, probes=probes)


def backend_for_precision(name: str, precision: str) -> str:
    """``name``, or for a precision only some backends run (:data:`PRECISION_BACKENDS`) the first
    of them when ``name`` is ``auto``; a backend that does not run ``precision`` is a :class:`UserError`."""
    only = PRECISION_BACKENDS.get(precision)
    if only is None or name in only:
        return name
    if name == "auto":
        return only[0]
    raise UserError(f"precision {precision} runs on the {' or '.join(only)} engine, not {name}")


def _tensorrt_engine(net: torch.nn.Module, device: torch.device, precision: str, *, shapes: ShapeRange | None,
                     cache: EngineCache | None, max_batch: int, probes: Probes | None) -> Engine:
    """TensorRT, moving down :data:`FALLBACK` when it cannot build or its output has NaN/Inf."""
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
