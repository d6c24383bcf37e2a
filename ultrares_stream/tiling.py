"""Overlapping tiles: split a frame, upscale tiles in batches, stitch them back.

Each tile is cut with ``pad`` pixels of context on every side (clipped at the
frame border); after upscaling, only the tile's own core is kept, so the seams
carry no border artefacts and the result matches the untiled one as long as the
pad covers the network's effective receptive field. Between tile batches a caller's
``cancel`` event is checked, so a long job can be stopped part-way (:class:`Cancelled`).

:class:`Tiling` is an upscaler's policy: whether a batch runs whole or in tiles, and of what size.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .errors import UserError

#: tiles run through the network together (the automatic tile size is chosen for a batch of them)
TILE_BATCH = 4
# with a cancel event, frames larger than this (input pixels) run in tiles of this size, so that
# the job can be stopped between tiles; a whole frame cannot be stopped mid-forward on a CPU
CANCEL_TILE = 256

class Cancelled(Exception):
    """The caller's cancel event was set: the upscale stopped between two tile batches."""


@dataclass(frozen=True)
class Tile:
    """A core region ``[y0:y1, x0:x1]`` and the padded region cut around it (input pixels)."""

    y0: int
    y1: int
    x0: int
    x1: int
    py0: int
    py1: int
    px0: int
    px1: int


def plan_tiles(height: int, width: int, tile: int, pad: int, multiple: int = 1) -> list[Tile]:
    """Cover ``height x width`` with cores of at most ``tile`` pixels, each padded by ``pad``.

    Padded regions are widened to a multiple of ``multiple`` where the frame allows it.
    """
    if tile <= 0:
        raise ValueError("tile size must be positive")
    tiles = []
    ny, nx = math.ceil(height / tile), math.ceil(width / tile)
    for iy in range(ny):
        for ix in range(nx):
            y0, x0 = iy * tile, ix * tile
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            py0, py1 = _pad_span(y0, y1, pad, height, multiple)
            px0, px1 = _pad_span(x0, x1, pad, width, multiple)
            tiles.append(Tile(y0, y1, x0, x1, py0, py1, px0, px1))
    return tiles


def _pad_span(a: int, b: int, pad: int, limit: int, multiple: int) -> tuple[int, int]:
    lo, hi = max(a - pad, 0), min(b + pad, limit)
    extra = (-(hi - lo)) % multiple
    grow_hi = min(extra, limit - hi)
    hi += grow_hi
    lo = max(lo - (extra - grow_hi), 0)
    return lo, hi


def upscale_tiled(frames: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], scale: int,
                  tile: int, pad: int, tile_batch: int = 4, device: torch.device | None = None,
                  multiple: int = 1, cancel: threading.Event | None = None) -> torch.Tensor:
    """Upscale NCHW ``frames`` (kept where they are, e.g. on the CPU) tile by tile.

    Tiles of equal padded shape are sent to ``device`` ``tile_batch`` at a time and
    run through ``run``; only the tiles, never the whole frame, visit the device.
    Raises :class:`Cancelled` before the next batch once ``cancel`` is set.
    """
    n, c, h, w = frames.shape
    out = torch.empty((n, c, h * scale, w * scale), dtype=frames.dtype, device=frames.device)
    tiles = plan_tiles(h, w, tile, pad, multiple)
    for group in _same_shape_groups(tiles, tile_batch):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"stopped with {len(tiles)} tiles planned")
        crops = torch.cat([frames[:, :, t.py0:t.py1, t.px0:t.px1] for t in group])
        if device is not None:
            crops = crops.to(device, non_blocking=True)
        result = run(crops).to(frames.device)
        for i, t in enumerate(group):
            part = result[i * n:(i + 1) * n]
            cy, cx = (t.y0 - t.py0) * scale, (t.x0 - t.px0) * scale
            out[:, :, t.y0 * scale:t.y1 * scale, t.x0 * scale:t.x1 * scale] = \
                part[:, :, cy:cy + (t.y1 - t.y0) * scale, cx:cx + (t.x1 - t.x0) * scale]
    return out


def _same_shape_groups(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    by_shape: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        by_shape.setdefault((t.py1 - t.py0, t.px1 - t.px0), []).append(t)
    for group in by_shape.values():
        for i in range(0, len(group), max(size, 1)):
            yield group[i:i + size]


def auto_tile_size(bytes_per_pixel: float, free_bytes: int, fraction: float = 0.4,
                   minimum: int = 64, step: int = 16) -> int:
    """Largest square tile (input pixels) whose activations fit in ``fraction`` of free memory."""
    side = int(math.sqrt(max(free_bytes * fraction, 1) / max(bytes_per_pixel, 1)))
    return max(minimum, side - side % step)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's free memory, the host's available memory for the CPU."""
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


def check_tile(tile: int | None) -> None:
    """:class:`UserError` unless ``tile`` is None (automatic), 0 (never tile) or a positive size."""
    if tile is not None and tile < 0:
        raise UserError(f"tile size must be 0 (never tile) or a positive number of pixels, not {tile}")


@dataclass
class Tiling:
    """When a batch of frames runs whole and when in tiles, and how.

    ``tile``: None = automatic (whole frames when they fit in memory), 0 = never tile, N = tiles
    of N x N input pixels. ``pad``: context pixels around each tile (the architecture's
    ``tile_pad``). ``bytes_per_pixel``: the network's peak activation memory per input pixel.
    ``multiple``: the network's input size multiple. Tiles run ``batch`` at a time on ``device``.
    """

    tile: int | None
    pad: int
    bytes_per_pixel: float
    device: torch.device
    multiple: int = 1
    batch: int = TILE_BATCH

    def __post_init__(self) -> None:
        check_tile(self.tile)

    def tile_size_for(self, height: int, width: int, frames: int = 1) -> int:
        """0 when ``frames`` frames of ``height x width`` fit whole, else the tile side (input pixels).

        Automatic (``tile=None``): the activations of a whole batch must fit in 40% of the
        device's free memory; otherwise the largest tile whose batch of ``batch`` padded tiles
        does (:func:`auto_tile_size`).
        """
        if self.tile is not None:
            return 0 if self.tile <= 0 or (height <= self.tile and width <= self.tile) else self.tile
        free = free_memory(self.device)
        if frames * height * width * self.bytes_per_pixel <= free * 0.4:
            return 0
        per_tile_pixel = self.bytes_per_pixel * frames * self.batch
        return max(auto_tile_size(per_tile_pixel, free) - 2 * self.pad, 32)

    def upscale(self, frames: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], scale: int,
                cancel: threading.Event | None = None) -> torch.Tensor:
        """``run`` over NCHW ``frames`` whole, or tile by tile (:func:`upscale_tiled`) when they do not
        fit, or when a ``cancel`` event is given and they are larger than :data:`CANCEL_TILE` (so
        that the job can stop between tiles) unless tiling is off."""
        h, w = frames.shape[-2:]
        tile = self.tile_size_for(h, w, frames.shape[0])
        if not tile and cancel is not None and self.tile != 0 and max(h, w) > CANCEL_TILE:
            tile = CANCEL_TILE
        if not tile:
            return run(frames)
        return upscale_tiled(frames, run, scale, tile, self.pad, self.batch, device=self.device,
                             multiple=self.multiple, cancel=cancel)
