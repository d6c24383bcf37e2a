"""OpenVINO backend on the CPU: the PyTorch module converted at load, weights swapped by recompiling.

Conversion (:func:`convert`): OpenVINO's PyTorch frontend traces the module on a small example
frame (TorchScript) and the graph's input is made dynamic in batch, height and width, so every
frame size runs on one compiled model. Nothing is shipped: the graph comes from the module.

Weights are the graph's constants. Before conversion every weight of the module is set to a
distinct placeholder value, so that each state-dict entry can be found again as one constant of
the converted graph (:class:`Graph`: constant name -> state-dict key). ``convert_model``'s
offline fusions are not run at conversion, since they fold scalars into weights (RLFN's x255,
RRDB's x0.2); the CPU plugin applies its own fusions when it compiles. A weight change (alpha)
replaces those constants in a copy of the graph and compiles the copy: a fraction of a second
to two seconds, on the upscaler's worker thread (``slow_weights``), while frames keep running
on the live compiled model (:meth:`OpenVINOEngine.prepare_weights`). The last
:data:`KEEP_COMPILED` weight sets stay compiled, so going back to an alpha is a swap.

Conversion itself takes seconds (the compact nets) to a minute (RRDBNet): the converted graph,
with its placeholder weights, is kept in the engine cache per architecture and library versions
(:meth:`Graph.load` / :meth:`Graph.save`), so later starts only compile.

int8 (:mod:`.quantise`): each weight set's graph is quantised by NNCF on calibration frames
before its compile, in the same off-the-frame-path preparation, and checked on a calibration
frame instead of noise (its activation ranges fit frames). Quantised models are kept in the
engine cache (:func:`.quantise.cached_quantise`, :func:`save_ir`): a weight set seen before is
read, not quantised again; one that reads back wrong on the probe is quantised again.

Threads follow the pipeline's CPU plan (:class:`ThreadPlan`, ``batcher.cpu_inference_plan``):
one OpenVINO stream per frame-parallel batch, each on that batch's threads; every calling
thread has its own infer request, so the batcher's workers run side by side.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import threading
import time
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..models.archs import input_sizes
from .base import Precision, ThreadPlan
from .cache import EngineCache, EngineKey, ShapeRange, settings_string
from .quantise import (DEFAULT_SETTINGS, Calibration, IRStore, QuantiseSettings, _nncf, cached_quantise,
                       default_calibration, frames_digest, int8_key)

log = logging.getLogger(__name__)

#: OpenVINO's name of each precision (``INFERENCE_PRECISION_HINT``); fp16 is refused on the CPU.
#: int8: the quantised convolutions run in int8, the ops NNCF leaves in float in this precision
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: precisions whose graph is quantised by NNCF before the compile (:mod:`.quantise`)
QUANTISED = {"fp32": False, "bf16": False, "int8": True}
#: relative error against eager fp32 on the probe frame above which a compiled model is refused
#: (bf16: SPAN on a noise probe 4e-2; int8 on a calibration frame: compact 5e-3, traffic 2e-2; wrong weights ~1)
TOLERANCE = {"fp32": 1e-3, "bf16": 1e-1, "int8": 1e-1}
KEEP_COMPILED = 3  # weight sets kept compiled (the last alphas), most recently used last
GRAPH_FORMAT = 1  # bump when the cached graph's layout changes
EXAMPLE = (1, 3, 32, 32)  # the frame the module is traced on (any size: the input is made dynamic)
_TAG_SEED = 20260
PROBE = (48, 64)  # the corner of a calibration frame a quantised model is checked on


@functools.lru_cache(maxsize=1)
def openvino_available() -> tuple[bool, str]:
    """(usable, reason): the openvino package imports, with its PyTorch frontend and a CPU device."""
    try:
        import openvino as ov
        from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native library
        return False, f"openvino cannot be imported ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]})"
    if "CPU" not in ov.Core().available_devices:
        return False, "openvino has no CPU device here"
    return True, f"openvino {ov.__version__.split('-')[0]}"


def _ov():
    ok, why = openvino_available()
    if not ok:
        raise UserError(f"the openvino engine is not available: {why} (pip install openvino)")
    import openvino

    return openvino


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    """The process's OpenVINO runtime (compiles and reads from several threads at once)."""
    return _ov().Core()


def cpu_model_name() -> str:
    """The CPU's model name (``lscpu``'s), for cache keys and logs."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def stream_properties(plan: ThreadPlan) -> dict[str, int]:
    """OpenVINO's compile properties for ``plan``: one stream per pass at once, its threads each."""
    return {"NUM_STREAMS": plan.streams, "INFERENCE_NUM_THREADS": plan.streams * plan.threads}


def _tag_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """Give every floating-point weight of ``net`` a distinct placeholder value; returns them."""
    gen = torch.Generator().manual_seed(_TAG_SEED)
    tags = {}
    with torch.no_grad():
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=gen) * 0.1 + 0.01)
                tags[key] = value.clone()
    return tags


def _fingerprint(values: np.ndarray) -> tuple[int, str]:
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return flat.size, hashlib.sha1(flat.tobytes()).hexdigest()


@dataclass
class Graph:
    """The converted network with placeholder weights, and where each weight is in it."""

    model: Any  # openvino.Model, dynamic NCHW input
    weights: dict[str, str]  # constant's friendly name -> state-dict key

    def with_weights(self, state_dict: dict[str, torch.Tensor]) -> Any:
        """A copy of the graph holding ``state_dict``'s weights (the graph itself is not changed)."""
        ov = _ov()
        model = self.model.clone()
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        for name, key in self.weights.items():
            old = ops[name]
            data = state_dict[key].detach().float().cpu().numpy().reshape(tuple(old.get_output_shape(0)))
            old.output(0).replace(ov.opset13.constant(np.ascontiguousarray(data)).output(0))
        return model

    def save(self, path: Path) -> None:
        """One file: the graph's IR (xml + bin, fp32) and the weight map, in an uncompressed zip."""
        save_ir(self.model, path, {"weights.json": json.dumps(self.weights, sort_keys=True)})

    @classmethod
    def load(cls, path: Path, tags: dict[str, torch.Tensor]) -> Graph:
        """Read a saved graph; ``tags`` (the placeholder weights) check that it maps every weight."""
        model = read_ir(path)
        with zipfile.ZipFile(path) as zf:
            mapping = json.loads(zf.read("weights.json"))
        graph = cls(model, mapping)
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        for name, key in mapping.items():
            if name not in ops or _fingerprint(ops[name].get_data()) != _fingerprint(tags[key].numpy()):
                raise ValueError(f"weight {key} is not where the weight map says")
        return graph


def save_ir(model: Any, path: Path, extra: dict[str, str] | None = None) -> None:
    """``model``'s IR (``openvino.save_model``: xml + bin, weights as they are) and ``extra``
    files, in one uncompressed zip at ``path`` (the engine cache checksums it as one artefact)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ov-ir-") as tmp:
        xml = Path(tmp) / "model.xml"
        _ov().save_model(model, xml, compress_to_fp16=False)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            zf.write(xml, "model.xml")
            zf.write(xml.with_suffix(".bin"), "model.bin")
            for name, text in (extra or {}).items():
                zf.writestr(name, text)


def read_ir(path: Path) -> Any:
    """The model :func:`save_ir` wrote (raises on a damaged file: the zip's CRCs are checked)."""
    with zipfile.ZipFile(path) as zf:
        xml, weights = zf.read("model.xml"), zf.read("model.bin")
    return _core().read_model(xml.decode(), _ov().Tensor(np.frombuffer(weights, np.uint8).copy()))


IR_STORE = IRStore(save=save_ir, load=read_ir)  # how quantised models go into the engine cache


def convert(net: nn.Module) -> Graph:
    """Convert a copy of ``net`` (placeholder weights) with a dynamic NCHW input, and map its weights.

    Raises :class:`UserError` when a weight the network uses cannot be found in the graph (it
    would not follow a weight change)."""
    ov = _ov()
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    net = copy.deepcopy(net).float().eval()
    tags = _tag_weights(net)
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # a net's pad of frames under its minimum size: traced as "no pad", the engine pads
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        decoder = TorchScriptPythonDecoder(net, example_input=(torch.rand(EXAMPLE),))
    frontend = FrontEndManager().load_by_framework("pytorch")
    model = frontend.convert(frontend.load(decoder))  # the decoder must outlive the conversion
    model.reshape({model.inputs[0]: ov.PartialShape([-1, EXAMPLE[1], -1, -1])})
    where = {_fingerprint(v.numpy()): k for k, v in tags.items()}
    mapping = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f32:
            key = where.get(_fingerprint(op.get_data()))
            if key is not None:
                mapping[op.get_friendly_name()] = key
    missing = sorted(set(tags) - set(mapping.values()) - _unused(net))
    if missing:
        raise UserError(f"openvino: weights {', '.join(missing[:4])} are not constants of the converted graph")
    log.info("converted %s to OpenVINO in %.1f s (%d weights mapped)", type(net).__name__,
             time.perf_counter() - t0, len(mapping))
    return Graph(model, mapping)


def _unused(net: nn.Module) -> set[str]:
    """State-dict keys the forward pass does not read (none in the shipped architectures)."""
    return {k for k, v in net.state_dict().items() if not v.is_floating_point()}


class _Compiled:
    """One compiled model and an infer request per calling thread."""

    def __init__(self, compiled: Any):
        self.compiled = compiled
        self._local = threading.local()

    def request(self) -> Any:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.request().infer({0: x}, share_inputs=True)[0]


class OpenVINOEngine:
    """The network compiled by OpenVINO for the CPU, fp32 or bf16 (where the CPU has it).

    Built lazily: the graph is converted (or read from the cache) here, compiled with the first
    weights (``load_weights``, which the upscaler calls right after construction)."""

    name = "openvino"
    slow_weights = True  # a weight change is a compile (0.1-2 s): prepared off the frame path
    concurrent_passes = True  # one infer request per calling thread, one stream per batch of the plan

    def __init__(self, net: nn.Module, device: torch.device, precision: Precision, *,
                 plan: ThreadPlan | None = None, cache: EngineCache | None = None,
                 calibration: Calibration | None = None, quantisation: QuantiseSettings = DEFAULT_SETTINGS):
        _ov()  # UserError with the reason when openvino is not usable here
        if torch.device(device).type != "cpu":
            raise UserError("the openvino engine runs on the CPU")
        if precision not in OV_PRECISION:
            raise UserError(f"the openvino engine runs {', '.join(OV_PRECISION)}, not {precision}")
        if QUANTISED[precision]:
            _nncf()  # UserError with the reason when NNCF is not installed
        self.device, self.precision = torch.device("cpu"), precision
        self.calibration = calibration or default_calibration  # int8: the frames NNCF measures ranges on
        self.quantisation = quantisation  # int8: what NNCF quantises (:class:`.quantise.QuantiseSettings`)
        self.plan = plan or ThreadPlan.for_pipeline()
        self.min_size = input_sizes(net).minimum  # the traced graph lost the network's own pad to it
        self._template = copy.deepcopy(net).float().eval()
        for p in self._template.parameters():
            p.requires_grad_(False)
        self.graph = load_graph(self._template, cache)
        self.cache = cache  # int8: quantised models are kept there (None: the default engine cache)
        self._calibrated: tuple[list[np.ndarray], str] | None = None  # frames and their digest
        self._probe = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
        self._live: _Compiled | None = None
        self._compiled: OrderedDict[str, _Compiled] = OrderedDict()  # weights hash -> compiled model
        self._lock = threading.Lock()  # the compiled-model LRU
        self._first = threading.Lock()  # the first pass's compile, when no weights were given
        self.compiles = 0

    # -- running -------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        live = self._live
        if live is None:  # no weights given yet: the network's own
            with self._first:
                if self._live is None:
                    self.load_weights(self._template.state_dict())
            live = self._live
        h, w = x.shape[-2:]
        small = h < self.min_size or w < self.min_size
        if small:  # as the network pads itself; the traced graph has no such branch
            x = torch.nn.functional.pad(x, (0, max(0, self.min_size - w), 0, max(0, self.min_size - h)),
                                        mode="replicate")
        out = torch.from_numpy(live(x.float().contiguous().numpy()))
        if small:
            s = out.shape[-1] // x.shape[-1]
            out = out[..., : h * s, : w * s]
        return out

    # -- weights -------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """New weights now: :meth:`prepare_weights`, then its commit."""
        self.prepare_weights(state_dict)()

    def prepare_weights(self, state_dict: dict[str, torch.Tensor]) -> Callable[[], None]:
        """Compile ``state_dict``'s weights into a copy of the graph and check it against eager
        fp32 on a probe frame, without touching the live model; returns the commit (a reference
        swap). One of the last :data:`KEEP_COMPILED` weight sets is found, not compiled again."""
        from ..models.checkpoint import state_dict_hash

        digest = state_dict_hash(state_dict)
        with self._lock:
            compiled = self._compiled.get(digest)
            if compiled is not None:
                self._compiled.move_to_end(digest)
        if compiled is None:
            compiled = self._compile_checked(state_dict)
            with self._lock:
                self._compiled[digest] = compiled
                while len(self._compiled) > KEEP_COMPILED:
                    self._compiled.popitem(last=False)

        def commit() -> None:
            self._live = compiled

        return commit

    def _compile_checked(self, state_dict: dict[str, torch.Tensor]) -> _Compiled:
        from .tensorrt import EngineCheckError

        t0 = time.perf_counter()
        graph = self.graph.with_weights(state_dict)
        model, how = (self._quantised(graph, state_dict) if QUANTISED[self.precision]  # each alpha's own ranges
                      else (graph, "float"))
        compiled = _Compiled(self._compile(model))
        err = self._probe_error(compiled, state_dict)
        if not err < TOLERANCE[self.precision] and how == "hit":  # a cached int8 model that loads but is wrong
            log.warning("cached int8 model differs from eager fp32 (relative error %.2e); quantising again", err)
            compiled = _Compiled(self._compile(self._quantised(graph, state_dict, drop_cached=True)[0]))
            err = self._probe_error(compiled, state_dict)
        if not err < TOLERANCE[self.precision]:
            raise EngineCheckError(f"openvino {self.precision} output differs from eager fp32 on the probe "
                                   f"frame (relative error {err:.2e})")
        self.compiles += 1
        log.info("compiled OpenVINO %s model in %.2f s (%s, probe rel. error %.1e)", self.precision,
                 time.perf_counter() - t0, self.plan.describe(), err)
        return compiled

    def _probe_error(self, compiled: _Compiled, state_dict: dict[str, torch.Tensor]) -> float:
        """Relative error of ``compiled`` against eager fp32 with ``state_dict`` on the probe frame."""
        from .tensorrt import relative_error

        reference = copy.deepcopy(self._template)
        reference.load_state_dict(state_dict)
        probe = self._probe_frame()
        with torch.no_grad():
            return relative_error(torch.from_numpy(compiled(probe.numpy())), reference(probe))

    def _quantised(self, model: Any, state_dict: dict[str, torch.Tensor],
                   drop_cached: bool = False) -> tuple[Any, str]:
        """NNCF's int8 ``model`` of ``state_dict``'s weights, from the engine cache when it was
        quantised before with the same settings, calibration frames and library versions (unless
        ``drop_cached``: the entry is removed first). Returns (model, "hit" | "built")."""
        from ..models.checkpoint import state_dict_hash
        from .tensorrt import _describe

        frames = self.calibration()
        key = int8_key(weights=state_dict_hash(state_dict), arch=_describe(self._template),
                       calibration=self._frames_digest(frames), settings=self.quantisation,
                       graph_format=GRAPH_FORMAT)
        cache = self.cache or EngineCache()
        if drop_cached:
            cache.remove(cache.path_for(key))
        quantised, how = cached_quantise(model, frames, key, IR_STORE, cache=cache, settings=self.quantisation)
        if how == "hit":
            log.info("int8 model read from the engine cache (not quantised again)")
        return quantised, how

    def _frames_digest(self, frames: list[np.ndarray]) -> str:
        """:func:`.quantise.frames_digest`, hashed once for the same frame objects."""
        last = self._calibrated
        if last is not None and len(last[0]) == len(frames) and all(a is b for a, b in zip(last[0], frames)):
            return last[1]
        self._calibrated = (list(frames), frames_digest(frames))
        return self._calibrated[1]

    def _probe_frame(self) -> torch.Tensor:
        """Noise, or for a quantised model a corner of a calibration frame: its ranges fit frames, not noise."""
        if not QUANTISED[self.precision]:
            return self._probe
        return torch.from_numpy(np.ascontiguousarray(self.calibration()[0][..., :PROBE[0], :PROBE[1]]))

    def _compile(self, model: Any) -> Any:
        """The CPU plugin's compile (the slow step of a weight change; tests wrap it)."""
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[self.precision], **stream_properties(self.plan)}
        return _core().compile_model(model, "CPU", config)


_graphs: OrderedDict[str, Graph] = OrderedDict()  # in this process: architecture -> converted graph
_graphs_lock = threading.Lock()


def load_graph(net: nn.Module, cache: EngineCache | None = None) -> Graph:
    """``net``'s converted graph: from this process, else from the engine cache, else converted
    (and cached). The key is the architecture and the torch / OpenVINO versions, not the weights."""
    from .tensorrt import _describe

    arch = _describe(net)
    with _graphs_lock:
        graph = _graphs.get(arch)
        if graph is not None:
            _graphs.move_to_end(arch)
            return graph
        ov = _ov()
        key = EngineKey.for_device(model_hash="placeholder", arch=arch, backend="openvino-graph", precision="fp32",
                                   shapes=ShapeRange(), device="cpu",
                                   settings=settings_string({"openvino": ov.__version__, "format": GRAPH_FORMAT}))
        tags = _tag_weights(copy.deepcopy(net))
        graph, how = (cache or EngineCache()).get_or_build(
            key, lambda: convert(net), lambda g, path: g.save(path), lambda path: Graph.load(path, tags))
        log.info("OpenVINO graph of %s: %s", arch, "from the engine cache" if how == "hit" else "converted")
        _graphs[arch] = graph
        while len(_graphs) > 4:
            _graphs.popitem(last=False)
        return graph

