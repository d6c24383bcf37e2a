"""The temporal stabiliser: still areas stop flickering, moving objects are not ghosted, the
state resets on reconnects, alpha and size changes, and live and recorded paths agree."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from ultrares_stream.batcher import Batcher
from ultrares_stream.stages import DEVICE_STAGES, Route, enhance_frames
from ultrares_stream.colour import rgb_to_yuv420p
from ultrares_stream.config import StabiliseConfig, parse_config
from ultrares_stream.errors import UserError
from ultrares_stream.frame_queue import FrameQueue
from ultrares_stream.quality.flicker import FlickerMeter
from ultrares_stream.sources import Frame
from ultrares_stream.temporal import Stabiliser, StabiliserSettings, blend_, stabilise_batch
from ultrares_stream.upscaler import Upscaler


@pytest.fixture(scope="module")
def upscaler(tiny_model):
    return Upscaler(tiny_model, device="cpu", precision="fp32", engine="eager", tile=0)


def _scene(t: int, rng: np.random.Generator, moving: bool = True) -> np.ndarray:
    """A still textured background with +-1 level of sensor noise and, optionally, a bright
    textured box (a vehicle) moving 3 px a frame: LR uint8 HxWx3."""
    base = np.random.default_rng(7).integers(40, 200, (40, 64, 3)).astype(np.int16)
    img = base + rng.integers(-1, 2, base.shape)
    if moving:
        x = 4 + 3 * t
        img[12:28, x:x + 10] = 236 + np.random.default_rng(8).integers(0, 20, (16, 10, 3))
    return img.clip(0, 255).astype(np.uint8)


def _run(upscaler, frames, settings):
    stab = Stabiliser(settings) if settings else None
    outs = []
    with torch.inference_mode():
        for lr in frames:
            x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
            out = upscaler.upscale(x).float()
            outs.append(((stab(x, out) if stab else out)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return outs


def test_still_noisy_scene_flickers_less(upscaler):
    rng = np.random.default_rng(0)
    frames = [_scene(t, rng, moving=False) for t in range(12)]
    meters = {}
    for name, settings in {"plain": None, "stabilised": StabiliserSettings()}.items():
        m = meters[name] = FlickerMeter(upscaler.scale)
        for lr, out in zip(frames, _run(upscaler, frames, settings)):
            m.add(lr, out)
    assert meters["plain"].value > 0.1  # the net does turn the noise into flicker
    assert meters["stabilised"].value < 0.2 * meters["plain"].value, {k: m.value for k, m in meters.items()}


def test_moving_object_is_not_ghosted(upscaler):
    rng = np.random.default_rng(1)
    frames = [_scene(t, rng) for t in range(10)]
    plain, stab = _run(upscaler, frames, None), _run(upscaler, frames, StabiliserSettings())
    s = upscaler.scale
    for t in range(2, 10):
        row = 20 * s  # through the box
        for out in (plain[t], stab[t]):
            assert out.shape == plain[t].shape
        # the box's edges, where they are in the unstabilised output
        def edges(img):
            lum = img[row].astype(int).sum(1)
            inside = np.flatnonzero(lum > 3 * 235)
            return inside.min(), inside.max()
        (a0, a1), (b0, b1) = edges(plain[t]), edges(stab[t])
        assert abs(a0 - b0) <= 1 and abs(a1 - b1) <= 1, (t, (a0, a1), (b0, b1))
        x = (4 + 3 * t) * s
        box = (slice(13 * s, 27 * s), slice(x + s, x + 9 * s))
        assert np.abs(plain[t][box].astype(int) - stab[t][box]).max() <= 1  # the box itself is fresh


def test_resets_on_key_epoch_size_and_cut():
    stab = Stabiliser(StabiliserSettings())
    lr, out = torch.full((1, 3, 8, 8), 0.5), torch.rand(1, 3, 16, 16)

    def step(key=(), lr=lr, out=None):
        stab(lr, torch.rand(1, 3, 2 * lr.shape[-2], 2 * lr.shape[-1]) if out is None else out, key)
        return stab.resets

    first = torch.rand(1, 3, 16, 16)
    stab(lr, first.clone())
    assert torch.equal(stab(lr, torch.rand(1, 3, 16, 16)), first)  # still input: the held output comes back
    assert torch.equal(stab(lr + 0.5 / 255, torch.rand(1, 3, 16, 16)), first)  # noise below `still` too
    moved, changed = torch.rand(1, 3, 16, 16), lr.clone()
    changed[..., 4:, 4:] += 10 / 255  # a vehicle in one corner (3x3 neighbourhood: from LR pixel 3 on)
    got = stab(changed, moved.clone())
    assert torch.equal(got[..., 6:, 6:], moved[..., 6:, 6:]) and torch.equal(got[..., :6, :6], first[..., :6, :6])
    assert stab.resets == 0
    assert step(key=("alpha", 0.3)) == 1  # alpha or model change
    stabilise_batch([stab], lr, torch.rand(1, 3, 16, 16), ("alpha", 0.3), epochs=[2])  # a reconnect
    assert stab.resets == 2
    assert step(key=("alpha", 0.3, 2), lr=torch.full((1, 3, 10, 8), 0.5)) == 3  # new size
    assert step(key=("alpha", 0.3, 2), lr=torch.rand(1, 3, 10, 8)) == 4  # scene cut
    stab.reset()
    assert step(key=("alpha", 0.3, 2), lr=torch.rand(1, 3, 10, 8)) == 5  # asked for (thread-safe flag)


def test_blend_matches_nearest_weights_for_any_layout():
    out = torch.rand(1, 3, 8, 12).to(memory_format=torch.channels_last)
    prev, w = torch.rand(1, 3, 8, 12), torch.rand(1, 1, 2, 3)
    ref = torch.lerp(out, prev, torch.nn.functional.interpolate(w, size=(8, 12), mode="nearest"))
    assert torch.allclose(blend_(out, prev, w), ref)
    odd = torch.rand(1, 3, 9, 12)  # not a whole multiple: resampled weights
    assert blend_(odd.clone(), torch.rand(1, 3, 9, 12), w).shape == (1, 3, 9, 12)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_stillness_takes_the_largest_change_of_each_neighbourhood(window):
    """As max_pool2d over the window (what the shifted-view maximum replaces), edges included."""
    from ultrares_stream.temporal import stillness

    gen = torch.Generator().manual_seed(window)
    ref = torch.rand(2, 3, 17, 23, generator=gen)
    moving = (torch.rand(2, 1, 17, 23, generator=gen) > 0.97).float()  # a few pixels move, the rest is noise
    lr = ref + torch.randn(2, 3, 17, 23, generator=gen) * (0.001 + 0.03 * moving)
    change = (lr - ref).abs().amax(1, keepdim=True) * 255.0
    pooled = torch.nn.functional.max_pool2d(change, window, stride=1, padding=window // 2)
    expected = ((4.0 - pooled) / (4.0 - 2.0)).clamp(0.0, 1.0)
    got = stillness(lr, ref, 2.0, 4.0, window)
    assert got.shape == (2, 1, 17, 23) and torch.allclose(got, expected, atol=1e-6)
    assert 0.02 < float((got == 1).float().mean()) < 0.98  # held and moving pixels both present


def _yuv(lr: np.ndarray) -> np.ndarray:
    y, u, v = rgb_to_yuv420p(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)
    return torch.cat((y.reshape(1, -1), u.reshape(1, -1), v.reshape(1, -1)), 1).reshape(
        lr.shape[0] * 3 // 2, lr.shape[1]).numpy()


class _Client:
    stages = DEVICE_STAGES

    def __init__(self, upscaler, settings):
        self.name, self.queue = "cam", FrameQueue(4)
        self.up, self.stabiliser, self.out = upscaler, Stabiliser(settings), []

    def route(self):
        return Route(self.up)

    def deliver(self, out):
        self.out.append(out.data)


def test_live_batcher_and_recorded_path_give_the_same_frames(upscaler):
    rng = np.random.default_rng(2)
    frames = [_yuv(_scene(t, rng)) for t in range(6)]
    h, w = 40, 64
    recorded_stab = Stabiliser(StabiliserSettings())
    recorded = [enhance_frames(upscaler, [f], w, h, stabiliser=recorded_stab)[0] for f in frames]
    client = _Client(upscaler, StabiliserSettings())
    batcher = Batcher("cpu", max_batch=1)
    for i, f in enumerate(frames):
        batcher.run_batch([(client, Frame(f, w, h, i, i / 10), 0.0)])
    assert len(client.out) == len(frames)
    for a, b in zip(recorded, client.out):
        assert np.array_equal(a, b)
    plain = [enhance_frames(upscaler, [f], w, h)[0] for f in frames]
    assert any(not np.array_equal(a, b) for a, b in zip(recorded, plain))  # the stabiliser did act


def test_frame_parallel_workers_stabilise_frame_after_frame_like_the_recorded_path(upscaler):
    rng = np.random.default_rng(2)
    frames = [_yuv(_scene(t, rng)) for t in range(8)]
    h, w = 40, 64
    stab = Stabiliser(StabiliserSettings())
    sequential = [enhance_frames(upscaler, [f], w, h, stabiliser=stab)[0] for f in frames]
    client = _Client(upscaler, StabiliserSettings())
    client.queue = FrameQueue(16, "block")
    batcher = Batcher("cpu", max_batch=1, max_wait_ms=0, workers=3)
    batcher.attach(client)
    for i, f in enumerate(frames):
        client.queue.put(Frame(f, w, h, i, i / 10))
    batcher.start()
    try:
        deadline = time.monotonic() + 30
        while len(client.out) < len(frames) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        batcher.stop()
    assert len(client.out) == len(frames)
    for a, b in zip(sequential, client.out):
        assert np.array_equal(a, b)


def test_config_validates_and_defaults_on():
    cfg = parse_config({"cameras": [{"name": "a", "input": "x.mp4", "output": "y.mp4"},
                                    {"name": "b", "input": "x.mp4", "output": "z.mp4",
                                     "stabilise": {"enabled": False}}]})
    assert cfg.camera_stabilise(cfg.cameras[0]) == StabiliserSettings()
    assert cfg.camera_stabilise(cfg.cameras[1]) is None
    with pytest.raises(UserError, match=r"cameras\[0\]\.stabilise.*moving"):
        parse_config({"cameras": [{"name": "a", "input": "x", "output": "y",
                                   "stabilise": {"still": 5, "moving": 4}}]})
    assert StabiliseConfig(enabled=False).settings() is None
