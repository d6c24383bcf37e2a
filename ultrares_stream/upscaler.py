"""The upscaler: a generator (or an alpha-interpolated PSNR/GAN pair) on an engine.

It takes batches of NCHW float frames in [0, 1], pads them to the network's
size multiple, runs them whole or in overlapping tiles, crops back, and
optionally resizes to a requested output size (on the tensor, once).
"""
from __future__ import annotations

import logging
import threading

import torch
import torch.nn.functional as F

from .config import DEFAULT_ALPHA
from .engine import Engine, pick_device, pick_precision
from .errors import UserError
from .engine.select import make_engine
from .models.checkpoint import infer_arch
from .models.interpolation import check_alpha, check_compatible, interpolate
from .models.registry import ResolvedModel, resolve
from .tiling import auto_tile_size, upscale_tiled

log = logging.getLogger(__name__)

TILE_PAD = 16
# with a cancel event, frames larger than this (input pixels) run in tiles of this size, so that
# the job can be stopped between tiles; a whole frame cannot be stopped mid-forward on a CPU
CANCEL_TILE = 256


class Upscaler:
    """Upscale frames with one model at one alpha; alpha can change while frames flow.

    ``tile``: None = automatic (whole frame when it fits in memory), 0 = never tile,
    N = tiles of N x N input pixels. ``tile_pad``: context pixels around each tile;
    None = the network's receptive-field radius for SRVGGNetCompact (tiles then
    reproduce the untiled result exactly), :data:`TILE_PAD` for RRDBNet. ``shapes`` (an
    :class:`~ultrares_stream.engine.cache.ShapeRange`) and ``max_batch``: the inputs a compiled
    engine is built for (TensorRT, torch.compile); frames outside run eagerly.
    """

    def __init__(self, model: str | ResolvedModel | None = None, alpha: float = DEFAULT_ALPHA,
                 device: str | torch.device = "auto", precision: str = "auto",
                 tile: int | None = None, tile_pad: int | None = None, tile_batch: int = 4,
                 engine: str = "auto", shapes=None, max_batch: int = 8):
        self.device = pick_device(device)
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
        self.tile, self.tile_batch = tile, max(1, tile_batch)
        self.tile_pad = default_tile_pad(self.arch) if tile_pad is None else tile_pad
        self._alpha_lock = threading.Lock()
        self.alpha = -1.0
        self.set_alpha(alpha)
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
        """Interpolate ``(1 - alpha) * PSNR + alpha * GAN`` and swap it into the engine."""
        alpha = check_alpha(alpha)
        with self._alpha_lock:
            if alpha == self.alpha:
                return
            weights = interpolate(self._psnr, self._gan, alpha) if self._gan is not None else self._psnr
            self.engine.load_weights(weights)
            self.alpha = alpha

    def weights_at(self, alpha: float) -> dict[str, torch.Tensor]:
        return interpolate(self._psnr, self._gan, alpha) if self._gan is not None else self._psnr

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass on the engine's device, no tiling: pad, run, crop."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        out = self.engine(x.to(self.device, non_blocking=True))
        return out[..., : h * self.scale, : w * self.scale]

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
