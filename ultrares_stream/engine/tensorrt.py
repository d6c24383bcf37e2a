"""TensorRT backend through torch-tensorrt's dynamo frontend (an optional extra).

Build: ``torch.export`` the generator with dynamic batch / height / width, then
``torch_tensorrt.dynamo.compile`` it with min/opt/max shapes, in the engine's
precision (the network and its inputs are cast, so explicit typing builds an fp16
engine), with ``immutable_weights=False`` so its weights can be refitted later.
Built engines go to the engine cache (``torch_tensorrt.save`` as an exported program).

Alpha changes: :func:`refit_or_rebuild` refits the weights of a fresh copy of the cached
engine (:func:`separate_refit`) with ``torch_tensorrt.dynamo.refit_module_weights`` while
frames keep flowing through the live one, checks the refitted engine against eager fp32 on a probe
frame, and swaps it in; a refit that raises or disagrees falls back to a rebuild.

``import torch_tensorrt`` raises a plain ``Exception`` when the TensorRT libraries are
missing, so :func:`tensorrt_available` catches ``Exception``, not only ``ImportError``.
"""
from __future__ import annotations

import copy
import functools
import inspect
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..errors import UserError
from ..models.archs import input_sizes
from .base import Precision
from .cache import ARTEFACT, EngineCache, EngineKey, ShapeRange, settings_string

log = logging.getLogger(__name__)
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_TOLERANCE = 1e-2
M = TypeVar("M")


@functools.lru_cache(maxsize=1)
def tensorrt_available() -> tuple[bool, str]:
    """(usable, reason): torch-tensorrt imports with its TensorRT libraries, and CUDA is present."""
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as exc:  # plain Exception when the TensorRT libs are missing
        return False, f"torch_tensorrt cannot be imported ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]})"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    return True, f"torch-tensorrt {getattr(torch_tensorrt, '__version__', '?')}"


def _torch_tensorrt():
    ok, why = tensorrt_available()
    if not ok:
        raise UserError(f"the tensorrt engine is not available: {why} "
                        "(install the extra: pip install 'ultrares-stream[tensorrt]')")
    import torch_tensorrt

    return torch_tensorrt


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp32 (inf when ``out`` has NaN/Inf)."""
    out, ref = out.detach().float(), ref.detach().float().to(out.device)
    if out.shape != ref.shape:
        return float("inf")
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def dynamic_shapes_for(shapes: ShapeRange, multiple: int = 1) -> tuple[dict[int, Any]]:
    """``torch.export`` dynamic_shapes for one NCHW input: a Dim per varying dimension
    (height / width as ``multiple * Dim`` where the net needs a size multiple)."""
    from torch.export import Dim

    dims: dict[int, Any] = {}
    if shapes.batch[0] != shapes.batch[2]:
        dims[0] = Dim("batch", min=shapes.batch[0], max=shapes.batch[2])
    for axis, name, (lo, _, hi) in ((2, "height", shapes.height), (3, "width", shapes.width)):
        if lo == hi:
            continue
        if multiple > 1:
            dims[axis] = multiple * Dim(f"{name}_div{multiple}", min=-(-lo // multiple), max=hi // multiple)
        else:
            dims[axis] = Dim(name, min=lo, max=hi)
    return (dims,)


def export_program(net: nn.Module, shapes: ShapeRange, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.export.ExportedProgram:
    """``torch.export`` of the generator over ``shapes`` (traced at the opt shape)."""
    multiple = input_sizes(net).multiple
    # Trace at the opt shape, but never at size 1 on a dynamic dim (export would specialise it).
    example_shape = [lo if lo == hi else max(opt, 2) for lo, opt, hi in zip(shapes.min_shape, shapes.opt_shape,
                                                                             shapes.max_shape)]
    example = torch.rand(example_shape, dtype=dtype, device=device)
    with torch.no_grad():
        return torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes_for(shapes, multiple))


def build_options(compile_params: set[str] | frozenset[str], dtype: torch.dtype) -> dict[str, Any]:
    """The ``torch_tensorrt.dynamo.compile`` options that shape the engine (besides inputs and device),
    for the parameters this torch-tensorrt has; they are part of the engine cache key."""
    opts: dict[str, Any] = {"immutable_weights": False, "min_block_size": 1}
    if "use_explicit_typing" in compile_params:  # the network and inputs carry the dtype
        opts["use_explicit_typing"] = True
    elif "enabled_precisions" in compile_params:
        opts["enabled_precisions"] = {dtype}
    return opts


def separate_refit(artefact: Path | None, load: Callable[[Path], M], refit: Callable[[M], M]) -> Callable[[], M] | None:
    """A refit that never touches the running engine: it loads a fresh copy of the saved engine
    and refits that. ``refit_module_weights(in_place=False)`` deep-copies the module but, under the
    Python runtime, shares the TensorRT engine, so refitting the live module would change it while
    frames run; and the copy is always the engine as built, so it stays refittable on every
    TensorRT version (a refitted engine does only from 10.14). None (rebuild instead) when no
    saved copy exists; a copy gone from the cache makes the refit raise, which rebuilds too."""
    if artefact is None:
        return None
    return lambda: refit(load(artefact))


def refit_or_rebuild(refit: Callable[[], M] | None, rebuild: Callable[[], M], check: Callable[[M], float],
                     tolerance: float = DEFAULT_TOLERANCE) -> tuple[M, str, float]:
    """Return (engine, "refit" | "rebuild", relative error vs eager).

    Tries ``refit`` (None: the engine is not refittable), accepts it when ``check`` (relative error
    against eager on a probe frame) is below ``tolerance``; otherwise, or when the refit raises,
    rebuilds. A rebuilt engine that still disagrees raises :class:`EngineCheckError`.
    """
    if refit is not None:
        try:
            t0 = time.perf_counter()
            candidate = refit()
            err = check(candidate)
            if err < tolerance:
                log.info("refitted engine weights in %.2f s (probe rel. error %.2e)", time.perf_counter() - t0, err)
                return candidate, "refit", err
            log.warning("refitted engine differs from eager by %.3g (limit %g); rebuilding it", err, tolerance)
        except Exception as exc:  # torch-tensorrt raises assorted types on a failed refit
            log.warning("engine refit failed (%s: %s); rebuilding it", exc.__class__.__name__, exc)
    t0 = time.perf_counter()
    candidate = rebuild()
    err = check(candidate)
    if not err < tolerance:
        raise EngineCheckError(f"rebuilt engine differs from eager by {err:.3g} (limit {tolerance:g})")
    log.info("built engine in %.1f s (probe rel. error %.2e)", time.perf_counter() - t0, err)
    return candidate, "rebuild", err


class EngineCheckError(RuntimeError):
    """A built engine's output disagrees with eager fp32 on the probe frame."""


class TensorRTEngine:
    """A torch-tensorrt engine over a shape range; weights swap by refit while frames flow.

    The engine is built lazily, with the first weights it gets (``load_weights``, which the
    upscaler calls right after construction) or the network's own on the first call.
    """

    name = "tensorrt"
    slow_weights = True  # a weight change is a refit (seconds): prepared off the frame path
    concurrent_passes = False

    def __init__(self, net: nn.Module, device: torch.device, precision: Precision, *,
                 shapes: ShapeRange, cache: EngineCache | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 arch: str | None = None):
        self._trt = _torch_tensorrt()
        if torch.device(device).type != "cuda":
            raise UserError("the tensorrt engine needs a CUDA device")
        self.device = torch.device(device)
        self.precision: Precision = precision
        self.shapes = shapes
        self.cache = cache if cache is not None else EngineCache()
        self.tolerance = tolerance
        self.arch = arch or _describe(net)
        self._template = net.eval().cpu()
        for p in self._template.parameters():
            p.requires_grad_(False)
        self._reference = copy.deepcopy(self._template).to(self.device).float()  # eager fp32 for probe checks
        self._probe = torch.rand(shapes.min_shape, generator=torch.Generator().manual_seed(0)).to(self.device)
        self._module: Any = None
        # the cached engine that refits start from: a fresh copy each time, never the live engine
        self._artefact: Path | None = None
        self._swap_lock = threading.Lock()  # held only to swap / read the live module
        self._build_lock = threading.Lock()  # one build or refit at a time
        self._fallback_lock = threading.Lock()  # creating the eager engine for out-of-range frames
        self.last_weights_update: str | None = None  # "built", "hit", "refit" or "rebuild"
        self._fallback: Any = None  # eager engine for frame sizes outside the shape range
        self._warned_sizes: set[tuple[int, int]] = set()

    # -- running -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self._module
        if module is None:
            self.load_weights(self._template.state_dict())
            module = self._module
        n, _, h, w = x.shape
        lo, hi = self.shapes.min_shape, self.shapes.max_shape
        if not (lo[2] <= h <= hi[2] and lo[3] <= w <= hi[3]):
            return self._outside_range(x)
        dtype = _DTYPES[self.precision]
        outs = []
        for start in range(0, n, hi[0]):  # batches larger than the engine's max run in chunks
            chunk = x[start:start + hi[0]]
            if chunk.shape[0] < lo[0]:
                pad = chunk[-1:].expand(lo[0] - chunk.shape[0], *chunk.shape[1:])
                out = module(torch.cat([chunk, pad]).to(dtype).contiguous())[: chunk.shape[0]]
            else:
                out = module(chunk.to(dtype).contiguous())
            outs.append(out.float())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _outside_range(self, x: torch.Tensor) -> torch.Tensor:
        """Frames the engine was not built for run on eager (same weights), with one warning per size."""
        from .eager import EagerEngine

        size = (x.shape[3], x.shape[2])
        if size not in self._warned_sizes:
            self._warned_sizes.add(size)
            log.warning("frame %dx%d is outside the TensorRT engine's range (%s); running it on eager %s. "
                        "Widen inference.engine_shape in the config to cover %dx%d",
                        *size, self.shapes.describe(), self.precision, *size)
        fallback = self._fallback  # no lock once it exists: a refit holds the build lock for minutes
        if fallback is None:
            with self._fallback_lock:
                if self._fallback is None:
                    net = copy.deepcopy(self._template)
                    net.load_state_dict(self._reference.state_dict())
                    self._fallback = EagerEngine(net, self.device, self.precision)
                fallback = self._fallback
        return fallback(x)

    # -- weights -------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """New weights now: :meth:`prepare_weights`, then its commit."""
        self.prepare_weights(state_dict)()

    def prepare_weights(self, state_dict: dict[str, torch.Tensor]) -> Callable[[], None]:
        """The slow part of a weight change (alpha), which never touches the live engine: refit a
        fresh copy of the cached engine (or build one), check it against eager fp32 on the probe
        frame. Returns the commit that makes it live, an instant swap that can be called again
        later to go back to these weights. Frames keep running on the live engine meanwhile."""
        reference = self._eager_net(state_dict, torch.float32)
        check = functools.partial(self._check, reference=reference)
        with self._build_lock:
            weights_net = self._eager_net(state_dict, _DTYPES[self.precision])
            if self._module is None and self._artefact is None:
                module, how = self._initial(weights_net, state_dict, check)
            else:
                refit = separate_refit(self._artefact, self._load, lambda copy: self._refit(copy, weights_net))
                module, how, _ = refit_or_rebuild(refit, lambda: self._build(weights_net), check, self.tolerance)

        def commit() -> None:
            with self._fallback_lock:  # an eager engine for out-of-range frames follows the weights
                if self._fallback is not None:
                    self._fallback.load_weights(state_dict)
                with self._swap_lock:
                    self._module, self._reference = module, reference
            self.last_weights_update = how

        return commit

    def _initial(self, weights_net: nn.Module, state_dict: dict[str, torch.Tensor],
                 check: Callable[[Any], float]) -> tuple[Any, str]:
        """First engine: exact cache hit, else refit a cached engine of the same structure, else build."""
        from ..models.checkpoint import state_dict_hash

        key = EngineKey.for_device(model_hash=state_dict_hash(state_dict), arch=self.arch, backend=self.name,
                                   precision=self.precision, shapes=self.shapes, device=self.device,
                                   settings=settings_string(self._options()))
        cached = self.cache.load(key, self._load)
        if cached is not None and check(cached) < self.tolerance:
            self._artefact = self.cache.path_for(key) / ARTEFACT
            return cached, "hit"
        similar = self.cache.find_refittable(key)
        refit = separate_refit(similar / ARTEFACT if similar is not None else None, self._load,
                               lambda copy: self._refit(copy, weights_net))
        module, how, _ = refit_or_rebuild(refit, lambda: self._build(weights_net), check, self.tolerance)
        saved = self.cache.save(key, lambda path: self._save(module, path), refittable=True)
        self._artefact = saved / ARTEFACT if saved is not None else None
        return module, "built" if how == "rebuild" else "refit"

    def _eager_net(self, state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
        net = copy.deepcopy(self._template)
        net.load_state_dict(state_dict)
        return net.to(self.device, dtype).eval()

    def _check(self, module: Any, reference: nn.Module) -> float:
        with torch.no_grad():
            ref = reference(self._probe)
            out = module(self._probe.to(_DTYPES[self.precision]))
        return relative_error(out, ref)

    # -- torch-tensorrt calls ------------------------------------------------------------
    def _inputs(self) -> list[Any]:
        s = self.shapes
        return [self._trt.Input(min_shape=s.min_shape, opt_shape=s.opt_shape, max_shape=s.max_shape,
                                dtype=_DTYPES[self.precision])]

    def _build(self, weights_net: nn.Module) -> Any:
        dtype = _DTYPES[self.precision]
        log.info("building TensorRT %s engine for %s, %s (takes a while; cached afterwards)",
                 self.precision, self.arch, self.shapes.describe())
        program = export_program(weights_net, self.shapes, dtype, self.device)
        return self._trt.dynamo.compile(program, arg_inputs=self._inputs(), device=self.device, **self._options())

    def _options(self) -> dict[str, Any]:
        return build_options(frozenset(inspect.signature(self._trt.dynamo.compile).parameters),
                             _DTYPES[self.precision])

    def _refit(self, live: Any, weights_net: nn.Module) -> Any:
        program = export_program(weights_net, self.shapes, _DTYPES[self.precision], self.device)
        return self._trt.dynamo.refit_module_weights(compiled_module=live, new_weight_module=program,
                                                      arg_inputs=(self._probe.to(_DTYPES[self.precision]),),
                                                      in_place=False)

    def _save(self, module: Any, path: Path) -> None:
        self._trt.save(module, str(path), output_format="exported_program", arg_inputs=self._inputs())

    def _load(self, path: Path) -> Any:
        loaded = self._trt.load(str(path))
        return loaded.module() if hasattr(loaded, "module") else loaded


def _describe(net: nn.Module) -> str:
    """Architecture string for cache keys: class, layers with their settings (activations
    included: ReLU and LeakyReLU variants have equal parameter shapes) and parameter shapes (not values)."""
    import hashlib

    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    layers = ";".join(f"{name}:{m!r}" for name, m in net.named_modules() if not list(m.children()))
    return f"{type(net).__name__}-{hashlib.sha256((shapes + '|' + layers).encode()).hexdigest()[:12]}"
