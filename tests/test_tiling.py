"""Tiling: plans cover the frame, tiled output equals untiled (real weights and an
RRDBNet), tile size from free memory, only tiles visit the device, and a cancel event
stops the work between tile batches."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import need_data
from ultrares_stream import tiling as tiling_mod
from ultrares_stream.models.archs import RRDBNet
from ultrares_stream.models.checkpoint import read_checkpoint
from ultrares_stream.models.registry import ResolvedModel
from ultrares_stream.tiling import Cancelled, auto_tile_size, plan_tiles, upscale_tiled
from ultrares_stream.upscaler import Upscaler


@pytest.mark.parametrize("h,w,tile,pad,multiple", [(37, 53, 16, 5, 1), (64, 64, 32, 8, 4), (30, 7, 8, 3, 2)])
def test_plan_covers_every_pixel_once(h, w, tile, pad, multiple):
    cover = np.zeros((h, w), int)
    for t in plan_tiles(h, w, tile, pad, multiple):
        cover[t.y0:t.y1, t.x0:t.x1] += 1
        assert 0 <= t.py0 <= t.y0 and t.y1 <= t.py1 <= h and 0 <= t.px0 <= t.x0 and t.x1 <= t.px1 <= w
        assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
        if h >= tile + 2 * pad + multiple and w >= tile + 2 * pad + multiple:
            assert (t.py1 - t.py0) % multiple == 0 and (t.px1 - t.px0) % multiple == 0
    assert (cover == 1).all()
    with pytest.raises(ValueError):
        plan_tiles(h, w, 0, pad)


def test_tiled_pointwise_function_is_exact():
    x = torch.rand(2, 3, 23, 41)

    def run(t):
        return F.interpolate(t, scale_factor=2, mode="nearest") * 0.5

    assert torch.equal(upscale_tiled(x, run, 2, tile=8, pad=2, tile_batch=3), run(x))


def _bird():
    lr = need_data("sr", "Set5", "LR_bicubic", "X4", "birdx4.png")
    img = np.asarray(Image.open(lr).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def test_tiled_equals_untiled_with_real_animevideov3_weights():
    sd = read_checkpoint(need_data("weights", "realesr-animevideov3.pth"))
    x = _bird()[:, :, :48, :56]
    whole = Upscaler(ResolvedModel("anime", sd), device="cpu", precision="fp32", tile=0).upscale(x)
    tiled_up = Upscaler(ResolvedModel("anime", sd), device="cpu", precision="fp32", tile=24)
    assert tiled_up.tiling.pad == 18  # the net's receptive-field radius: tiles are exact
    tiled = tiled_up.upscale(x)
    assert tiled.shape == whole.shape == (1, 3, 192, 224)
    assert (tiled - whole).abs().mean().item() < 1 / 255
    assert (tiled - whole).abs().max().item() < 1e-4
    # too little context is visible, which shows the comparison can fail
    thin_up = Upscaler(ResolvedModel("anime", sd), device="cpu", precision="fp32", tile=24)
    thin_up.tiling.pad = 1
    thin = thin_up.upscale(x)
    assert (thin - whole).abs().max().item() > 1e-3


def test_tiled_equals_untiled_rrdbnet():
    torch.manual_seed(3)
    net = RRDBNet(num_feat=16, num_block=3, num_grow_ch=8)
    for p in net.parameters():  # BasicSR's init scale: keeps the random net's residuals realistic
        p.data.mul_(0.5)
    x = torch.rand(1, 3, 32, 36)
    sd = net.state_dict()
    whole = Upscaler(ResolvedModel("rrdb", sd), device="cpu", precision="fp32", tile=0).upscale(x)
    tiled = Upscaler(ResolvedModel("rrdb", sd), device="cpu", precision="fp32", tile=16).upscale(x)
    assert tiled.shape == whole.shape == (1, 3, 128, 144)
    assert (tiled - whole).abs().mean().item() < 1 / 255


def test_rrdbnet_x1_tiles_keep_the_size_multiple():
    torch.manual_seed(4)
    sd = RRDBNet(scale=1, num_feat=8, num_block=1, num_grow_ch=4).state_dict()
    up = Upscaler(ResolvedModel("x1", sd), device="cpu", precision="fp32", tile=12)
    up.tiling.pad = 4
    x = torch.rand(1, 3, 30, 26)
    out = up.upscale(x)
    assert out.shape == (1, 3, 30, 26)


def test_only_tiles_visit_the_device():
    torch.manual_seed(5)
    from ultrares_stream.models.archs import SRVGGNetCompact

    sd = SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()
    up = Upscaler(ResolvedModel("c", sd), device="cpu", precision="fp32", tile=16)
    seen = []
    engine = up.engine

    class Recorder:
        def __getattr__(self, name):
            return getattr(engine, name)

        def __call__(self, t):
            seen.append(tuple(t.shape))
            return engine(t)

    up._weights.engine = Recorder()
    x = torch.rand(2, 3, 50, 70)
    out = up.upscale(x)
    assert out.shape == (2, 3, 200, 280)
    assert seen and all(h <= 16 + 2 * up.tiling.pad and w <= 16 + 2 * up.tiling.pad for _, _, h, w in seen)
    assert all(n <= 2 * up.tiling.batch for n, *_ in seen)


def test_tile_size_automatic_from_free_memory(monkeypatch):
    assert auto_tile_size(100.0, int(100 * 256 * 256 / 0.4) + 1) == 256
    assert auto_tile_size(1e9, 1000) == 64  # never below the minimum
    from ultrares_stream.models.archs import SRVGGNetCompact

    up = Upscaler(ResolvedModel("c", SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()), device="cpu",
                  precision="fp32")
    tiling = up.tiling
    bpp = tiling.bytes_per_pixel
    monkeypatch.setattr(tiling_mod, "free_memory", lambda device: int(bpp * 1000 * 1000 / 0.4) + 1)
    assert tiling.tile_size_for(1000, 1000) == 0  # fits whole
    side = tiling.tile_size_for(1000, 1000, frames=4)  # four frames do not
    assert 32 <= side < 1000
    needed = (side + 2 * tiling.pad) ** 2 * bpp * 4 * tiling.batch
    assert needed <= bpp * 1000 * 1000 * 1.1
    tiling.tile = 0
    assert tiling.tile_size_for(10_000, 10_000) == 0  # 0 = never tile
    tiling.tile = 128
    assert tiling.tile_size_for(100, 100) == 0 and tiling.tile_size_for(100, 300) == 128


def test_cancel_stops_between_tile_batches():
    x = torch.rand(1, 3, 32, 32)
    cancel = threading.Event()
    calls = []

    def run(t):
        calls.append(t.shape[0])
        cancel.set()  # as a timed-out caller would, while the first batch runs
        return F.interpolate(t, scale_factor=2, mode="nearest")

    with pytest.raises(Cancelled):
        upscale_tiled(x, run, 2, tile=8, pad=2, tile_batch=4, cancel=cancel)
    assert calls == [4]  # 16 tiles planned, one batch of 4 ran
    cancel.clear()
    assert torch.equal(upscale_tiled(x, run, 2, tile=8, pad=2, cancel=threading.Event()), run(x))


def test_a_cancellable_upscale_tiles_large_frames_and_gives_the_same_result(monkeypatch):
    up = Upscaler("ultrares-compact-x4", device="cpu", precision="fp32", alpha=0.0)
    x = torch.rand(1, 3, 40, 52)
    whole = up.upscale(x)
    monkeypatch.setattr(tiling_mod, "CANCEL_TILE", 16)
    seen = []
    monkeypatch.setattr(up, "run", lambda t: seen.append(tuple(t.shape[-2:])) or Upscaler.run(up, t))
    tiled = up.upscale(x, cancel=threading.Event())
    assert max(max(s) for s in seen) < 40  # it ran in tiles, not whole
    assert (tiled - whole).abs().max().item() < 1e-4  # the pad covers the receptive field: same result
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(Cancelled):
        up.upscale(x, cancel=stopped)
