"""The upscaler: a generator (or an alpha-interpolated PSNR/GAN pair) on an engine.

It takes batches of NCHW float frames in [0, 1], pads them to the network's
size multiple, runs them whole or in overlapping tiles, crops back, and
optionally resizes to a requested output size (on the tensor, once).
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .config import DEFAULT_ALPHA
from .engine import Engine, pick_device, pick_precision
from .engine.select import make_engine
from .ensemble import check_passes, self_ensemble
from .errors import UserError
from .models.checkpoint import infer_arch
from .models.interpolation import check_alpha, check_compatible, interpolate
from .models.registry import ResolvedModel, default_model, resolve
from .tiling import auto_tile_size, upscale_tiled

log = logging.getLogger(__name__)

TILE_PAD = 16
#: tiles run through the network together (the automatic tile size is chosen for a batch of them)
TILE_BATCH = 4
# with a cancel event, frames larger than this (input pixels) run in tiles of this size, so that
# the job can be stopped between tiles; a whole frame cannot be stopped mid-forward on a CPU
CANCEL_TILE = 256
#: interpolated weight sets an upscaler keeps ready (host memory), most recently used first
WEIGHT_SETS = 4


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


class _EngineSlot:
    """The engine of one model and which alpha's weights are in it, shared by every alpha view
    (:meth:`Upscaler.at`) of that model. Forward passes at the engine's alpha run together (the
    CPU batcher's frame-parallel workers); a pass at another alpha waits until they are done and
    swaps the weights first (:meth:`passing`). ``book`` guards the weight sets and, on engines
    with slow weight changes (TensorRT refits), the commits prepared or being prepared on the
    slot's one worker thread, per alpha."""

    def __init__(self) -> None:
        self._gate = threading.Condition()
        self.active = 0  # forward passes running now (all at ``alpha``)
        self._tickets = self._admit = 0  # arrival order of the passes, and the next one to admit
        self._turns_over: set[int] = set()  # tickets done with their turn, or given up waiting for it
        self.book = threading.RLock()
        self.alpha: float | None = None  # None: no weights loaded yet
        self.sets: OrderedDict[float, dict[str, torch.Tensor]] = OrderedDict()
        self.commits: OrderedDict[float, Callable[[], None]] = OrderedDict()
        self.pending: dict[float, Future] = {}
        self._worker: ThreadPoolExecutor | None = None
        self.swaps = 0
        self.last_swap_s = 0.0

    def worker(self) -> ThreadPoolExecutor:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="weights")
        return self._worker

    @contextmanager
    def passing(self, alpha: float, swap: Callable[[float], None], concurrent: bool = True):
        """Run one forward pass at ``alpha``: beside the others at that alpha (when the engine
        allows ``concurrent`` passes), or, once they are done, after ``swap(alpha)`` has put its
        weights in. Passes are admitted in arrival order, so a pass at another alpha is never
        starved by a stream of passes at the current one."""
        with self._gate:
            ticket = self._tickets
            self._tickets += 1
            try:
                while ticket != self._admit or (self.active and (self.alpha != alpha or not concurrent)):
                    self._gate.wait()
                swap(alpha)
                self.active += 1
            finally:  # admitted, failed or interrupted while waiting: this ticket's turn is over
                self._turns_over.add(ticket)
                self._next_ticket()
        try:
            yield
        finally:
            with self._gate:
                self.active -= 1
                self._gate.notify_all()

    def _next_ticket(self) -> None:
        """Move the turn past every ticket whose turn is over (under the gate)."""
        while self._admit in self._turns_over:
            self._turns_over.discard(self._admit)
            self._admit += 1
        self._gate.notify_all()

    @property
    def busy(self) -> bool:
        """A forward pass is running."""
        return self.active > 0


class Upscaler:
    """Upscale frames with one model at one alpha; alpha can change while frames flow.

    :meth:`at` gives another view of the same model at another alpha: the same engine and
    checkpoints (nothing is built or read again); before a forward pass at a view's alpha the
    engine's weights are swapped in place (``copy_`` into the live parameters, between two
    passes). See :class:`UpscalerPool` and docs/architecture.md ("One pool, one engine per model").

    ``tile``: None = automatic (whole frame when it fits in memory), 0 = never tile,
    N = tiles of N x N input pixels. ``tile_pad``: context pixels around each tile;
    None = the network's receptive-field radius for SRVGGNetCompact (tiles then
    reproduce the untiled result exactly), :data:`TILE_PAD` for RRDBNet. ``shapes`` (an
    :class:`~ultrares_stream.engine.cache.ShapeRange`) and ``max_batch``: the inputs a compiled
    engine is built for (TensorRT, torch.compile); frames outside run eagerly. ``ensemble``:
    forward passes per frame, 1 (default), or 2, 4 or 8 orientations averaged
    (:mod:`~ultrares_stream.ensemble`: more faithful, that many times the work).
    """

    def __init__(self, model: str | ResolvedModel | None = None, alpha: float = DEFAULT_ALPHA,
                 device: str | torch.device = "auto", precision: str = "auto",
                 tile: int | None = None, tile_pad: int | None = None,
                 engine: str = "auto", shapes=None, max_batch: int = 8, ensemble: int = 1):
        self.device = pick_device(device)
        self.ensemble = check_passes(ensemble)
        resolved = model if isinstance(model, ResolvedModel) else resolve(model, device_type=self.device.type)
        self.model_name = resolved.name
        self._psnr, self._gan = resolved.psnr, resolved.gan
        if self._gan is not None:
            check_compatible(self._psnr, self._gan)
        self.arch = infer_arch(self._psnr, resolved.name)
        self.scale = self.arch.scale
        net = self.arch.build()
        self.multiple = net.size_multiple
        self.engine: Engine = make_engine(engine, net, self.device, pick_precision(precision, self.device),
                                          shapes=shapes, max_batch=max_batch)
        if tile is not None and tile < 0:
            raise UserError(f"tile size must be 0 (never tile) or a positive number of pixels, not {tile}")
        self.tile, self.tile_batch = tile, TILE_BATCH
        self.tile_pad = default_tile_pad(self.arch) if tile_pad is None else tile_pad
        self._slot = _EngineSlot()
        self.alpha = check_alpha(alpha)
        self.set_alpha(self.alpha)
        self._bytes_per_pixel = _estimate_bytes_per_pixel(self.arch, self.engine.precision)
        log.info("model %s (%s) on %s, %s, engine %s", self.model_name, self.arch.describe(),
                 self.device, self.engine.precision, self.engine.name)

    @property
    def is_pair(self) -> bool:
        return self._gan is not None

    @property
    def precision(self) -> str:
        return self.engine.precision

    def set_alpha(self, alpha: float) -> None:
        """Use ``alpha`` from now on: ``(1 - alpha) * PSNR + alpha * GAN`` swapped into the engine."""
        self.alpha = check_alpha(alpha)
        with self._slot.passing(self.alpha, self._apply):
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
        return isinstance(other, Upscaler) and other._slot is self._slot

    @property
    def weight_swaps(self) -> int:
        """In-place weight swaps the shared engine made (alpha changes between passes)."""
        return self._slot.swaps

    @property
    def last_swap_s(self) -> float:
        """Seconds the last weight swap took (interpolation when not ready + copy into the engine)."""
        return self._slot.last_swap_s

    def weights_at(self, alpha: float) -> dict[str, torch.Tensor]:
        """The interpolated state dict for ``alpha`` (kept for the :data:`WEIGHT_SETS` last alphas)."""
        if self._gan is None:
            return self._psnr
        with self._slot.book:
            sets = self._slot.sets
            weights = sets.get(alpha)
            if weights is None:
                weights = sets[alpha] = interpolate(self._psnr, self._gan, alpha)
                while len(sets) > WEIGHT_SETS:
                    sets.popitem(last=False)
            sets.move_to_end(alpha)
            return weights

    def weights_ready(self) -> bool:
        """Whether a forward pass at this view's alpha starts at once. Always, except on an engine
        whose weight changes are slow (``engine.slow_weights``: a TensorRT refit): there the first
        call starts preparing this alpha's weights on the slot's worker thread, and it is True
        once they are prepared. A stream keeps its previous view until then, so its frames never
        wait for a refit (:meth:`~ultrares_stream.stream.Stream.set_alpha`). Raises what the
        preparation raised."""
        if not self._needs_prepare():
            return True
        return self._commit_for(self.alpha, wait=False) is not None

    def withdraw(self) -> None:
        """Drop this view's weight preparation if it has not started (an alpha change superseded
        before its refit began), so the next one does not queue behind it."""
        with self._slot.book:
            future = self._slot.pending.get(self.alpha)
            if future is not None and future.cancel():
                del self._slot.pending[self.alpha]

    def _needs_prepare(self) -> bool:
        """This view's weights must be prepared on the worker thread before its passes."""
        return self.engine.slow_weights and self._gan is not None and self._slot.alpha != self.alpha

    def _commit_for(self, alpha: float, wait: bool) -> Callable[[], None] | None:
        """The prepared commit of ``alpha``'s weights on a slow-weights engine: from the last
        :data:`WEIGHT_SETS` ones, else prepared on the worker thread (None while that runs and
        ``wait`` is false)."""
        slot = self._slot
        with slot.book:
            commit = slot.commits.get(alpha)
            if commit is not None:
                slot.commits.move_to_end(alpha)
                return commit
            future = slot.pending.get(alpha)
            if future is None:
                future = slot.pending[alpha] = slot.worker().submit(self.engine.prepare_weights,
                                                                    self.weights_at(alpha))
        if not wait and not future.done():
            return None
        if future.cancelled():  # withdrawn by a superseded alpha change that had asked for it first
            with slot.book:
                if slot.pending.get(alpha) is future:
                    del slot.pending[alpha]
            return self._commit_for(alpha, wait)
        try:
            commit = future.result()
        finally:
            with slot.book:
                if slot.pending.get(alpha) is future:
                    del slot.pending[alpha]
        with slot.book:
            slot.commits[alpha] = commit
            while len(slot.commits) > WEIGHT_SETS:
                slot.commits.popitem(last=False)
        return commit

    def _apply(self, alpha: float) -> None:
        """Swap ``alpha``'s weights into the engine (no pass is running: :meth:`_EngineSlot.passing`):
        a copy into the live parameters, or on a slow-weights engine the commit :meth:`run` waited for."""
        slot = self._slot
        if slot.alpha == alpha or (slot.alpha is not None and self._gan is None):
            return
        t0 = time.perf_counter()
        if self.engine.slow_weights:
            self._commit_for(alpha, wait=True)()
        else:
            self.engine.load_weights(self.weights_at(alpha))
        if slot.alpha is not None:
            slot.swaps += 1
            slot.last_swap_s = time.perf_counter() - t0
        slot.alpha = alpha

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass on the engine's device at this view's alpha, no tiling: pad, run, crop.
        On a slow-weights engine whose weights are another alpha's, waits for this alpha's to be
        prepared first, without holding up the other views' passes."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        x = x.to(self.device, non_blocking=True)
        if self._needs_prepare():
            self._commit_for(self.alpha, wait=True)
        if self.engine.slow_weights:
            # each weight change is a refit: the orientations of a self-ensemble take one turn, as
            # another alpha's pass between two of them would make the next one refit back
            with self._turn():
                out = self_ensemble(self.engine, x, self.ensemble)
        else:  # each orientation passes the gate on its own, so other cameras' batches interleave
            out = self_ensemble(self._pass, x, self.ensemble)
        return out[..., : h * self.scale, : w * self.scale]

    def _turn(self):
        """The engine gate's admission of this view (:meth:`_EngineSlot.passing`): its alpha's weights in."""
        # one network (no GAN twin): every alpha has its weights, so all views pass as one
        alpha = self.alpha if self._gan is not None else self._slot.alpha
        return self._slot.passing(alpha, self._apply, self.engine.concurrent_passes)

    def _pass(self, x: torch.Tensor) -> torch.Tensor:
        """One engine call at this view's alpha, admitted by the engine's gate."""
        with self._turn():
            return self.engine(x)

    def tile_size_for(self, height: int, width: int, frames: int = 1) -> int:
        """0 when ``frames`` frames of ``height x width`` fit whole, else the tile side (input pixels).

        Automatic (``tile=None``): the activations of a whole batch must fit in 40% of the
        device's free memory; otherwise the largest tile whose batch of ``tile_batch``
        padded tiles does (:func:`~ultrares_stream.tiling.auto_tile_size`).
        """
        if self.tile is not None:
            return 0 if self.tile <= 0 or (height <= self.tile and width <= self.tile) else self.tile
        free = _free_memory(self.device)
        if frames * height * width * self._bytes_per_pixel <= free * 0.4:
            return 0
        per_tile_pixel = self._bytes_per_pixel * frames * self.tile_batch
        side = auto_tile_size(per_tile_pixel, free) - 2 * self.tile_pad
        return max(side, 32)

    def upscale(self, x: torch.Tensor, size: tuple[int, int] | None = None,
                 cancel: threading.Event | None = None) -> torch.Tensor:
        """NCHW float [0, 1] -> upscaled NCHW float [0, 1] (clamped).

        The result is on the engine's device, except when tiling was needed: then
        it stays where ``x`` was (the whole frame never visits the device).
        ``size`` = (width, height) resizes the result, antialiased bicubic.
        ``cancel``: once set, the upscale stops between tiles with
        :class:`~ultrares_stream.tiling.Cancelled` (large frames are tiled for it).
        """
        h, w = x.shape[-2:]
        tile = self.tile_size_for(h, w, x.shape[0])
        if not tile and cancel is not None and self.tile != 0 and max(h, w) > CANCEL_TILE:
            tile = CANCEL_TILE
        if tile:
            out = upscale_tiled(x, self.run, self.scale, tile, self.tile_pad, self.tile_batch,
                                device=self.device, multiple=self.multiple, cancel=cancel)
        else:
            out = self.run(x)
        out = out.clamp_(0.0, 1.0)
        if size is not None and (out.shape[-1], out.shape[-2]) != tuple(size):
            out = resize(out, size)
        return out


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize NCHW float to (width, height): bicubic with antialiasing when shrinking."""
    w, h = size
    shrinking = w < x.shape[-1] or h < x.shape[-2]
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=shrinking).clamp_(0, 1)


def default_tile_pad(arch) -> int:
    """Context around a tile: the exact receptive-field radius (input pixels) of an
    SRVGGNetCompact (one per 3x3 conv), :data:`TILE_PAD` for RRDBNet, whose receptive
    field is far wider but whose far context contributes below 1/255 (tested)."""
    if arch.arch == "SRVGGNetCompact":
        return int(dict(arch.kwargs)["num_conv"]) + 2
    return TILE_PAD


def _estimate_bytes_per_pixel(arch, precision: str) -> float:
    """Rough peak activation memory per *input* pixel for a forward pass."""
    d = dict(arch.kwargs)
    elem = 2 if precision in ("fp16", "bf16") else 4
    s2 = arch.scale ** 2
    if arch.arch == "RRDBNet":
        lr = (d["num_feat"] + 4 * d["num_grow_ch"]) * 3
        hr = d["num_feat"] * 16 * 3 // (16 // s2 if s2 < 16 else 1)
        return (lr + hr) * elem + 3 * s2 * 4 * 2
    return d["num_feat"] * 3 * elem + 3 * s2 * 4 * 3


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


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
        return Upscaler(model, alpha=alpha, device=self.device, precision=self.precision, tile=self.tile,
                        engine=self.engine, shapes=self.shapes, max_batch=self.max_batch)

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
