"""The stabiliser on a shaking camera: a still scene seen by a camera that shakes by up to 1.5
pixels a frame (sensor noise, libx264 at a camera bitrate, decoded with PyAV) is held steady once
the shake is registered away (without registration every pixel looks like motion), the shift is
measured to a quarter of a pixel, and a vehicle crossing the shaking scene is not ghosted."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ultrares_stream.demo.scene import render_scene_frame
from ultrares_stream.quality.datasets import h264_roundtrip, parse_bitrate
from ultrares_stream.quality.evaluate import to_input
from ultrares_stream.quality.flicker import rgb_to_y, sensor_noise
from ultrares_stream.quality.matlab_resize import imresize
from ultrares_stream.temporal import StabiliserSettings, camera_shift
from ultrares_stream.upscaler import Upscaler

from test_stabiliser_noise import stabilised_outputs

S = 4
H, W, FRAMES, PAD = 120, 160, 24, 32  # LR frame; HR margin of the picture around it


@pytest.fixture(scope="module")
def upscaler():
    torch.set_num_threads(1)
    return Upscaler("ultrares-compact-x4", alpha=0, device="cpu", precision="fp32", engine="eager", tile=0)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A still street (the demo scene without its traffic moving), HR, with room to shake in."""
    return np.ascontiguousarray(render_scene_frame(40, W * S + 2 * PAD, H * S + 2 * PAD))


def shakes(seed: int = 1) -> list[tuple[int, int]]:
    """Per frame, the camera's offset (HR pixels, y and x) in the picture: a random walk held within 6."""
    rng, at, out = np.random.default_rng(seed), np.zeros(2), []
    for _ in range(FRAMES):
        at = np.clip(at + rng.integers(-5, 6, 2), -6, 6)
        out.append((int(at[0]), int(at[1])))
    return out


def camera(picture: np.ndarray, offsets, vehicle: bool = False) -> list[np.ndarray]:
    """The LR frames the shaking camera delivers (x1/4 MATLAB bicubic, sensor noise of 3 levels,
    H.264 at the camera bitrate); ``vehicle``: a textured box crossing at 2 LR pixels a frame."""
    frames = []
    for t, (oy, ox) in enumerate(offsets):
        scene = picture.copy()
        if vehicle:
            x = PAD + (6 + 2 * t) * S
            body = 165 + np.random.default_rng(4).normal(0, 12, (16 * S, 14 * S))
            scene[PAD + 40 * S: PAD + 56 * S, x: x + 14 * S] = body.clip(0, 255).astype(np.uint8)[..., None]
        crop = scene[PAD + oy: PAD + oy + H * S, PAD + ox: PAD + ox + W * S]
        frames.append(imresize(np.ascontiguousarray(crop), scale=1 / S))
    return h264_roundtrip(sensor_noise(frames, 3.0), parse_bitrate("auto", W, H))


def aligned_flicker(images, offsets, margin: int = 16) -> float:
    """Mean |change| of Y between consecutive outputs at the same point of the scene (each frame
    moved back by the shake), inside a margin."""
    total = []
    for t in range(1, len(images)):
        dy, dx = offsets[t][0] - offsets[t - 1][0], offsets[t][1] - offsets[t - 1][1]
        now, before = rgb_to_y(images[t]), rgb_to_y(images[t - 1])
        hh, ww = now.shape
        a = now[margin: hh - margin, margin: ww - margin]
        b = before[margin + dy: hh - margin + dy, margin + dx: ww - margin + dx]
        total.append(np.abs(a - b).mean())
    return float(np.mean(total))


def test_the_cameras_shift_is_measured_to_a_quarter_pixel(picture):
    offsets = shakes(2)
    frames = camera(picture, offsets)
    ref = to_input(frames[0], "cpu")
    errors = []
    for (oy, ox), lr in zip(offsets[1:], frames[1:]):
        # the picture moved by minus the camera's move
        got = camera_shift(to_input(lr, "cpu"), ref, S, 4.0)
        assert got is not None
        errors.append(max(abs(got[0] + oy - offsets[0][0]), abs(got[1] + ox - offsets[0][1])))
    assert max(errors) <= 2 and np.mean(errors) <= 1.0, errors  # HR pixels: 1/4 LR pixel


def test_a_shaking_still_scene_is_held_once_the_shake_is_registered(upscaler, picture):
    offsets = shakes()
    frames = camera(picture, offsets)
    unregistered = dataclasses.replace(StabiliserSettings(), shake=0.0)
    outs, stabs = stabilised_outputs(upscaler, frames, [StabiliserSettings(), unregistered])
    flicker = {name: aligned_flicker(images, offsets) for name, images in outs.items()}
    moved = sum(1 for a, b in zip(offsets, offsets[1:]) if max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 2)
    assert stabs[0].shakes >= 0.8 * moved, (stabs[0].shakes, moved)
    assert stabs[1].shakes == 0
    assert flicker[0] <= 0.7 * flicker["plain"], flicker  # held: steadier than the network frame by frame
    assert flicker[0] <= 0.7 * flicker[1], flicker  # without registration nothing looks still
    assert flicker[1] >= 0.8 * flicker["plain"], flicker


def test_a_vehicle_crossing_a_shaking_scene_is_not_ghosted(upscaler, picture):
    offsets = shakes(3)
    outs, stabs = stabilised_outputs(upscaler, camera(picture, offsets, vehicle=True), [StabiliserSettings()])
    road, _ = stabilised_outputs(upscaler, camera(picture, offsets), [])  # the same shaking street, no vehicle
    assert stabs[0].shakes > 0
    for t in range(8, FRAMES):
        oy, ox = offsets[t]
        x, y = (6 + 2 * t) * S - ox, 40 * S - oy  # the box in this frame's output pixels
        box = (slice(y + 2 * S, y + 14 * S), slice(x + 2 * S, x + 12 * S))  # 2 LR px inside it
        now, plain = outs[0][t][box].astype(int), outs["plain"][t][box].astype(int)
        behind = road["plain"][t][box].astype(int)  # what a ghost would show: the street
        closer = np.abs(now - plain).sum(2) < np.abs(now - behind).sum(2)
        assert closer.mean() > 0.99, (t, closer.mean())  # every pixel shows the vehicle, not the street
        assert np.abs(now - plain).mean() < 0.1 * np.abs(plain - behind).mean(), t  # and its detail is fresh
