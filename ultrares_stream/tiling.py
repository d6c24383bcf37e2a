"""Overlapping tiles: split a frame, upscale tiles in batches, stitch them back.

Each tile is cut with ``pad`` pixels of context on every side (clipped at the
frame border); after upscaling, only the tile's own core is kept, so the seams
carry no border artefacts and the result matches the untiled one as long as the
pad covers the network's effective receptive field. Between tile batches a caller's
``cancel`` event is checked, so a long job can be stopped part-way (:class:`Cancelled`).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


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
