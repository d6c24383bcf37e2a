"""The stabiliser on a noisy camera: a still scene with sensor noise, encoded with libx264 at a
camera bitrate and decoded with PyAV, stays as steady as bicubic (the fixed thresholds see the
noise as motion and let it through), and a vehicle moving over it is not ghosted."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ultrares_stream.quality.datasets import h264_roundtrip, parse_bitrate
from ultrares_stream.quality.evaluate import bicubic_upscale, to_image, to_input
from ultrares_stream.quality.flicker import FlickerMeter, sensor_noise
from ultrares_stream.temporal import Stabiliser, StabiliserSettings, frame_noise, noise_thresholds
from ultrares_stream.upscaler import Upscaler

H, W, FRAMES = 64, 96, 30


@pytest.fixture(scope="module")
def upscaler():
    torch.set_num_threads(1)
    return Upscaler("ultrares-compact-x4", alpha=0, device="cpu", precision="fp32", engine="eager", tile=0)


def _background() -> np.ndarray:
    """A still, smoothly textured scene (road, kerb, markings): LR uint8 HxWx3."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:H, 0:W]
    base = 90 + 40 * np.sin(x / 7.0) * np.cos(y / 9.0) + rng.normal(0, 6, (H, W))
    base[:, 40:44] += 80  # a lane marking
    return np.repeat(base[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)


def _with_box(img: np.ndarray, t: int) -> np.ndarray:
    """A light grey, textured box (a vehicle, its own detail moving with it) moving 2 LR pixels a frame."""
    out = img.copy()
    x = 6 + 2 * t
    body = 165 + np.random.default_rng(4).normal(0, 12, (16, 14))
    out[20:36, x:x + 14] = body.clip(0, 255).astype(np.uint8)[..., None]
    return out


def _camera(frames: list[np.ndarray]) -> list[np.ndarray]:
    """What a camera with a real sensor delivers: noise of 3 levels, H.264 at 0.1 bit per pixel."""
    return h264_roundtrip(sensor_noise(frames, 3.0), parse_bitrate("auto", W, H))


def stabilised_outputs(upscaler, frames: list[np.ndarray], settings: list[StabiliserSettings]) -> tuple[dict, list]:
    """Per frame: the plain output and each stabiliser's, uint8 HR images; and the stabilisers."""
    stabs = [Stabiliser(s) for s in settings]
    out = {"plain": [], **{i: [] for i in range(len(stabs))}}
    with torch.inference_mode():
        for lr in frames:
            x = to_input(lr, "cpu")
            y = upscaler.upscale(x).float()
            out["plain"].append(to_image(y))
            for i, stab in enumerate(stabs):
                out[i].append(to_image(stab(x, y.clone())))
    return out, stabs


def test_noisy_still_scene_is_as_steady_as_bicubic(upscaler):
    scene = [_background()] * FRAMES
    camera = _camera(scene)
    assert any(not np.array_equal(camera[0], f) for f in camera[1:])  # the noise does reach the input
    fixed = dataclasses.replace(StabiliserSettings(), noise=0.0)
    outs, _ = stabilised_outputs(upscaler, camera, [StabiliserSettings(), fixed])
    outs["bicubic"] = [bicubic_upscale(f, upscaler.scale) for f in camera]
    flicker = {}
    for name, images in outs.items():
        meter = FlickerMeter(upscaler.scale)
        for still, img in zip(scene, images):
            meter.add(still, img)  # every pixel of the scene is static
        flicker[name] = meter.value
    assert flicker["bicubic"] > 0.05, flicker
    assert flicker[0] <= 0.75 * flicker["bicubic"], flicker  # the default: steadier than bicubic
    assert flicker[0] < 0.75 * flicker[1], flicker  # and than the fixed thresholds (noise=0)


def test_vehicle_over_noisy_scene_is_not_ghosted(upscaler):
    scene = [_with_box(_background(), t) for t in range(FRAMES)]
    camera = _camera(scene)
    outs, _ = stabilised_outputs(upscaler, camera, [StabiliserSettings()])
    s = upscaler.scale
    for t in range(8, FRAMES):
        x = (6 + 2 * t) * s
        box = (slice(22 * s, 34 * s), slice(x + 2 * s, x + 12 * s))  # inside the box, 2 LR px in
        now, plain = outs[0][t][box].astype(int), outs["plain"][t][box].astype(int)
        road = outs[0][t - 7][box].astype(int)  # the same place before the box came: the history
        closer = np.abs(now - plain).sum(2) < np.abs(now - road).sum(2)
        assert closer.mean() > 0.99, (t, closer.mean())  # every pixel shows the box, not the road
        assert np.abs(now - plain).mean() < 0.1 * np.abs(plain - road).mean(), t  # and its detail is fresh


def test_noise_level_and_thresholds():
    lr = torch.full((1, 3, 40, 40), 0.5)
    noisy = lr.clone()
    noisy[..., :20, :] += torch.randint(-3, 4, (1, 3, 20, 40)) / 255  # a coded half; the other half skipped
    level = frame_noise(noisy, lr, None)
    assert 1.5 <= level <= 3.0  # the coded half's change, not diluted by the skipped half
    held = torch.zeros(1, 1, 40, 40, dtype=torch.bool)
    assert frame_noise(noisy, lr, held) is None  # nothing held still: nothing to measure
    assert noise_thresholds(2.0, 4.0, 3.0, 0.5) == (2.0, 4.0)  # a clean camera keeps its thresholds
    assert noise_thresholds(2.0, 4.0, 3.0, 2.0) == (6.0, 12.0)
    assert noise_thresholds(2.0, 4.0, 0.0, 5.0) == (2.0, 4.0)
