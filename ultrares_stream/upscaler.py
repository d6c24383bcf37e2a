"""The upscaler: a generator (or an alpha-interpolated PSNR/GAN pair) on an engine.

It takes batches of NCHW float frames in [0, 1], pads them to the network's
size multiple, runs them whole or in overlapping tiles, crops back, and
optionally resizes to a requested output size (on the tensor, once).

Its jobs live in their own modules: the checkpoints and their weights at any alpha
(:class:`~ultrares_stream.models.pair.ModelPair`), which alpha's weights are in the shared engine
and the commits prepared for others (:class:`~ultrares_stream.weight_swaps.EngineWeights`), the
admission of forward passes to it (:class:`~ultrares_stream.pass_gate.PassGate`) and whole frames
or tiles (:class:`~ultrares_stream.tiling.Tiling`); :class:`Upscaler` runs a frame through them.
"""
from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .config import DEFAULT_ALPHA
from .engine import Engine, ShapeRange, pick_device, pick_precision
from .engine.select import make_engine
from .ensemble import check_passes, self_ensemble
from .errors import UserError
from .models.archs import ArchSpec
from .models.interpolation import check_alpha
from .models.pair import ModelPair
from .models.registry import ResolvedModel, default_model
from .pass_gate import PassGate
from .tiling import Tiling, check_tile
from .weight_swaps import EngineWeights

log = logging.getLogger(__name__)

#: frames a compiled engine is built for at most, where no shape range is given
MAX_BATCH = 8


@runtime_checkable
class FrameUpscaler(Protocol):
    """What the pipeline needs from an upscaler: the ``Upscaler`` protocol of the cameras, the
    batcher, the pool and the provenance tags. :class:`Upscaler` and its alpha views
    (:meth:`Upscaler.at`, what :class:`UpscalerPool` hands out) satisfy it.

    ``upscale`` takes NCHW float frames in [0, 1] and returns them upscaled (resized to
    ``size`` = (width, height) when given); ``at`` gives the same model at another alpha.
    """

    model_name: str
    alpha: float
    scale: int
    ensemble: int  # forward passes averaged per frame (ensemble.self_ensemble)
    device: torch.device
    engine: Engine

    @property
    def is_pair(self) -> bool: ...

    def upscale(self, x: torch.Tensor, size: tuple[int, int] | None = None,
                cancel: threading.Event | None = None) -> torch.Tensor: ...

    def at(self, alpha: float) -> FrameUpscaler: ...

    def with_ensemble(self, passes: int) -> FrameUpscaler: ...

    def weights_ready(self) -> bool: ...

    def withdraw(self) -> None: ...


class Upscaler:
    """Upscale frames with one model at one alpha; alpha can change while frames flow.

    :meth:`at` gives another view of the same model at another alpha: the same engine and
    checkpoints (nothing is built or read again); before a forward pass at a view's alpha the
    engine's weights are swapped in place (``copy_`` into the live parameters, between two
    passes). See :class:`UpscalerPool` and docs/architecture.md ("One pool, one engine per model").

    ``tile``: None = automatic (whole frame when it fits in memory), 0 = never tile,
    N = tiles of N x N input pixels, each with the architecture's tile pad of context around it
    (:attr:`tiling`). ``shapes`` (an :class:`~ultrares_stream.engine.cache.ShapeRange`): the
    inputs a compiled engine is built for (TensorRT, torch.compile); frames outside run eagerly.
    ``ensemble``: forward passes per frame, 1 (default), or 2, 4 or 8 orientations averaged
    (:mod:`~ultrares_stream.ensemble`: more faithful, that many times the work).
    """

    def __init__(self, model: str | ResolvedModel | None = None, alpha: float = DEFAULT_ALPHA,
                 device: str | torch.device = "auto", precision: str = "auto", tile: int | None = None,
                 engine: str = "auto", shapes: ShapeRange | None = None, ensemble: int = 1):
        self.device = pick_device(device)
        self.ensemble = check_passes(ensemble)
        self.model = ModelPair.load(model, self.device.type)
        self.model_name = self.model.name
        self.arch: ArchSpec = self.model.spec
        self.scale = self.arch.scale
        self.multiple = self.arch.input_sizes.multiple
        built = make_engine(engine, self.arch.build(), self.device, choose_precision(self.arch, precision, self.device),
                            shapes=shapes, max_batch=shapes.batch[2] if shapes is not None else MAX_BATCH,
                            pair=self.model_name if precision == "auto" else None)  # int8 where it passed
        check_tile(tile)
        self._weights = EngineWeights(built, self.model)
        self._gate = PassGate()
        self.alpha = check_alpha(alpha)
        self.set_alpha(self.alpha)
        self.tiling = Tiling(tile, self.arch.tile_pad, self.arch.bytes_per_pixel(self.engine.precision), self.device,
                             self.multiple)
        log.info("model %s (%s) on %s, %s, engine %s", self.model_name, self.arch.describe(),
                 self.device, self.engine.precision, self.engine.name)

    @property
    def engine(self) -> Engine:
        """The engine every view of this model runs on."""
        return self._weights.engine

    @property
    def is_pair(self) -> bool:
        return self.model.is_pair

    @property
    def precision(self) -> str:
        return self.engine.precision

    def set_alpha(self, alpha: float) -> None:
        """Use ``alpha`` from now on: ``(1 - alpha) * PSNR + alpha * GAN`` swapped into the engine."""
        self.alpha = check_alpha(alpha)
        with self._gate.passing(self.alpha, self._weights.swap_in):
            pass

    def at(self, alpha: float) -> Upscaler:
        """This model at ``alpha``: a view sharing the engine, the checkpoints and the weight sets
        (no engine built, no checkpoint read); its weights are swapped in at its next forward pass."""
        view = copy.copy(self)
        view.alpha = check_alpha(alpha)
        return view

    def with_ensemble(self, passes: int) -> Upscaler:
        """This view with ``passes`` self-ensemble passes per frame (the same engine and alpha)."""
        if passes == self.ensemble:
            return self
        view = copy.copy(self)
        view.ensemble = check_passes(passes)
        return view

    def shares_engine_with(self, other: FrameUpscaler) -> bool:
        return isinstance(other, Upscaler) and other._weights is self._weights

    @property
    def weight_swaps(self) -> int:
        """In-place weight swaps the shared engine made (alpha changes between passes)."""
        return self._weights.swaps

    @property
    def last_swap_s(self) -> float:
        """Seconds the last weight swap took (interpolation when not ready + copy into the engine)."""
        return self._weights.last_swap_s

    def weights_ready(self) -> bool:
        """Whether a forward pass at this view's alpha starts at once. Always, except on an engine
        whose weight changes are slow (``engine.slow_weights``: a TensorRT refit): there the first
        call starts preparing this alpha's weights on a worker thread, and it is True once they are
        prepared. A stream keeps its previous view until then, so its frames never wait for a
        refit (:meth:`~ultrares_stream.stream.Stream.set_alpha`). Raises what the preparation raised."""
        return self._weights.ready(self.alpha)

    def withdraw(self) -> None:
        """Drop this view's weight preparation if it has not started (an alpha change superseded
        before its refit began), so the next one does not queue behind it."""
        self._weights.withdraw(self.alpha)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass on the engine's device at this view's alpha, no tiling: pad, run, crop.
        On a slow-weights engine whose weights are another alpha's, waits for this alpha's to be
        prepared first, without holding up the other views' passes."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        x = x.to(self.device, non_blocking=True)
        if self._weights.needs_prepare(self.alpha):
            self._weights.commit_for(self.alpha, wait=True)
        if self.engine.slow_weights:
            # each weight change is a refit: the orientations of a self-ensemble take one turn, as
            # another alpha's pass between two of them would make the next one refit back
            with self._turn():
                out = self_ensemble(self.engine, x, self.ensemble)
        else:  # each orientation passes the gate on its own, so other cameras' batches interleave
            out = self_ensemble(self._pass, x, self.ensemble)
        return out[..., : h * self.scale, : w * self.scale]

    def _turn(self):
        """The gate's admission of a pass of this view: its alpha's weights in."""
        return self._gate.passing(self._weights.key_for(self.alpha), self._weights.swap_in,
                                  self.engine.concurrent_passes)

    def _pass(self, x: torch.Tensor) -> torch.Tensor:
        """One engine call at this view's alpha, admitted by the engine's gate."""
        with self._turn():
            return self.engine(x)

    def upscale(self, x: torch.Tensor, size: tuple[int, int] | None = None,
                cancel: threading.Event | None = None) -> torch.Tensor:
        """NCHW float [0, 1] -> upscaled NCHW float [0, 1] (clamped).

        The result is on the engine's device, except when tiling was needed: then
        it stays where ``x`` was (the whole frame never visits the device).
        ``size`` = (width, height) resizes the result, antialiased bicubic.
        ``cancel``: once set, the upscale stops between tiles with
        :class:`~ultrares_stream.tiling.Cancelled` (large frames are tiled for it).
        """
        out = self.tiling.upscale(x, self.run, self.scale, cancel).clamp_(0.0, 1.0)
        if size is not None and (out.shape[-1], out.shape[-2]) != tuple(size):
            out = resize(out, size)
        return out


def choose_precision(arch: ArchSpec, precision: str, device: torch.device) -> str:
    """``precision`` (:func:`~ultrares_stream.engine.pick_precision`) where the architecture is safe in it;
    ``auto`` falls back to fp32 where it is not, a named precision is refused."""
    picked = pick_precision(precision, device)
    if arch.supports(picked):
        return picked
    if precision == "auto":
        log.info("%s is not safe in %s: running it in fp32", arch.arch, picked)
        return "fp32"
    safe = ", ".join(sorted(arch.descriptor.precisions))
    raise UserError(f"{arch.describe()} does not run in {picked}; use one of {safe}")


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize NCHW float to (width, height): bicubic with antialiasing when shrinking."""
    w, h = size
    shrinking = w < x.shape[-1] or h < x.shape[-2]
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=shrinking).clamp_(0, 1)


class UpscalerPool:
    """The process's upscalers: one per model (one engine, one copy of the checkpoints), shared
    by the cameras, the web page and the API.

    ``get(model, alpha)`` returns that model's view at ``alpha`` (:meth:`Upscaler.at`), the same
    object for every user of that (model, alpha), so cameras at one alpha batch together; a new
    alpha is a new view of the same engine, never a new engine. ``release`` gives a view back;
    a model nobody uses stays loaded while it is among the ``keep_idle`` most recently used idle
    ones (the web page's next request finds it). ``factory(model, alpha)`` builds a model's
    upscaler (default: :class:`Upscaler` with the pool's settings); ``built`` counts its calls.
    """

    def __init__(self, device: str = "auto", precision: str = "auto", engine: str = "auto",
                 tile: int | None = None, factory: Callable[[str | None, float], FrameUpscaler] | None = None,
                 shapes=None, max_batch: int = 8, keep_idle: int = 2):
        self.device, self.precision, self.engine, self.tile = device, precision, engine, tile
        self.shapes, self.max_batch, self.keep_idle = shapes, max_batch, keep_idle
        self._factory = factory
        self._models: OrderedDict[str | None, FrameUpscaler] = OrderedDict()  # model -> its upscaler (LRU order)
        self._views: dict[tuple[str | None, float, int], FrameUpscaler] = {}
        self._users: dict[tuple[str | None, float, int], int] = {}
        self._lock = threading.Lock()
        self._loading: dict[str | None, threading.Lock] = {}
        self.built = 0

    @classmethod
    def from_config(cls, inference, device) -> UpscalerPool:
        """The pool a service with this ``inference`` config uses on ``device`` (a torch.device)."""
        return cls(device=str(device), precision=inference.precision, engine=inference.engine,
                   tile=inference.tile, shapes=inference.engine_shapes(device.type),
                   max_batch=inference.batch_for(device.type))

    def _make(self, model: str | None, alpha: float) -> FrameUpscaler:
        if self._factory is not None:
            return self._factory(model, alpha)
        shapes = self.shapes or ShapeRange(batch=(1, min(4, self.max_batch), self.max_batch))
        return Upscaler(model, alpha=alpha, device=self.device, precision=self.precision, tile=self.tile,
                        engine=self.engine, shapes=shapes)

    def canonical(self, model: str | None) -> str:
        """The pool's key for ``model``: no model is the device's default pair by name, so a camera
        without a model and a web upload naming that default share one engine."""
        return (model or "").strip() or default_model(pick_device(self.device).type)

    def upscaler(self, model: str | None, alpha: float = DEFAULT_ALPHA) -> FrameUpscaler:
        """``model``'s upscaler, loaded on first use (one load at a time per model; others wait)."""
        model = self.canonical(model)
        with self._lock:
            up = self._models.get(model)
            if up is not None:
                self._models.move_to_end(model)
                return up
            loading = self._loading.setdefault(model, threading.Lock())
        with loading:
            with self._lock:
                up = self._models.get(model)
            if up is None:
                up = self._make(model, alpha)  # may raise ModelError (a UserError)
                with self._lock:
                    self.built += 1
                    self._models[model] = up  # pruned only by release(), never before its first user
            return up

    def get(self, model: str | None, alpha: float, ensemble: int = 1) -> FrameUpscaler:
        """The view of ``model`` at ``alpha`` with ``ensemble`` passes a frame (counted as one more
        user until :meth:`release`)."""
        model = self.canonical(model)
        key = (model, round(check_alpha(alpha), 4), check_passes(ensemble))
        with self._lock:
            view = self._views.get(key)
            if view is not None:
                self._users[key] += 1
                self._models.move_to_end(model)
                return view
        base = self.upscaler(model, key[1])
        with self._lock:
            self._models.setdefault(model, base)  # (a release in between may have unloaded it)
            view = self._views.get(key)
            if view is None:
                same = (base.alpha, base.ensemble) == key[1:]
                view = self._views[key] = base if same else base.at(key[1]).with_ensemble(key[2])
                self._users[key] = 0
            self._users[key] += 1
            return view

    def release(self, view: FrameUpscaler) -> None:
        with self._lock:
            for key, v in list(self._views.items()):
                if v is view:
                    self._users[key] -= 1
                    if self._users[key] <= 0:
                        del self._views[key], self._users[key]
                    break
            self._prune()

    def _in_use(self, model: str | None) -> bool:
        return any(key[0] == model for key in self._views)

    def models(self) -> list[str | None]:
        """The models loaded now (least recently used first)."""
        with self._lock:
            return list(self._models)

    def _prune(self) -> None:
        """Unload idle models beyond ``keep_idle`` (hold the lock)."""
        idle = [m for m in self._models if not self._in_use(m)]
        for model in idle[: max(0, len(idle) - self.keep_idle)]:
            del self._models[model]
            log.info("unloaded model %s", model)
