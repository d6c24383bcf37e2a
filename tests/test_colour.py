"""Colour conversion against FFmpeg's (libswscale, through PyAV) BT.601 limited range."""
from __future__ import annotations

import av
import numpy as np
import torch

from ultrares_stream.colour import float_to_uint8, rgb_to_yuv420p, uint8_to_float, yuv420p_to_rgb


def _image(h=32, w=48):
    """Smooth colour ramps, 2x2-constant so chroma subsampling loses nothing."""
    yy, xx = np.mgrid[0:h // 2, 0:w // 2]
    rgb = np.stack([xx * 255 // (w // 2), yy * 255 // (h // 2), 255 - xx * 255 // (w // 2)], -1).astype(np.uint8)
    return rgb.repeat(2, 0).repeat(2, 1)


def test_uint8_float_round_trip_is_exact():
    u8 = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    f = uint8_to_float(u8)
    assert f.shape == (2, 3, 5, 7) and f.dtype == torch.float32
    assert torch.equal(float_to_uint8(f), u8)
    assert uint8_to_float(u8[0]).shape == (1, 3, 5, 7)


def test_rgb_to_yuv420p_matches_ffmpeg():
    rgb = _image()
    ref = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    y, u, v = rgb_to_yuv420p(uint8_to_float(torch.from_numpy(rgb)))
    h, w = rgb.shape[:2]
    ref_y = np.frombuffer(bytes(ref.planes[0]), np.uint8).reshape(h, -1)[:, :w]
    ref_u = np.frombuffer(bytes(ref.planes[1]), np.uint8).reshape(h // 2, -1)[:, : w // 2]
    ref_v = np.frombuffer(bytes(ref.planes[2]), np.uint8).reshape(h // 2, -1)[:, : w // 2]
    assert np.abs(y[0].numpy().astype(int) - ref_y).max() <= 1
    assert np.abs(u[0].numpy().astype(int) - ref_u).max() <= 1
    assert np.abs(v[0].numpy().astype(int) - ref_v).max() <= 1


def test_yuv420p_to_rgb_matches_ffmpeg_and_round_trips():
    rgb = _image()
    yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    h, w = rgb.shape[:2]
    planes = [np.frombuffer(bytes(p), np.uint8).reshape(ph, -1)[:, :pw]
              for p, ph, pw in zip(yuv.planes, (h, h // 2, h // 2), (w, w // 2, w // 2))]
    ours = yuv420p_to_rgb(*(torch.from_numpy(p.copy())[None] for p in planes))
    ffmpeg = yuv.reformat(format="rgb24").to_ndarray()
    assert np.abs(float_to_uint8(ours)[0].numpy().astype(int) - ffmpeg).max() <= 3
    assert np.abs(float_to_uint8(ours)[0].numpy().astype(int) - rgb).max() <= 3  # 8-bit YUV loses ~1 level


def test_rgb_to_yuv420p_averages_chroma_over_2x2_whatever_the_memory_layout():
    """Random pixels (no 2x2 block is constant) against a float64 reference written the long way:
    every pixel converted, then U and V averaged over each 2x2 block; the same for channels-last
    input (the CPU network's output layout)."""
    rgb = torch.rand(2, 3, 10, 14)
    m = torch.tensor([[0.256788, 0.504129, 0.097906], [-0.148223, -0.290993, 0.439216],
                      [0.439216, -0.367788, -0.071427]], dtype=torch.float64) * 255
    full = torch.einsum("kc,nchw->nkhw", m, rgb.double()) + torch.tensor([16.0, 128.0, 128.0]).view(1, 3, 1, 1).double()
    want_y = full[:, 0].round().clamp(0, 255)
    want_uv = torch.nn.functional.avg_pool2d(full[:, 1:], 2).round().clamp(0, 255)
    for layout in (torch.contiguous_format, torch.channels_last):
        y, u, v = rgb_to_yuv420p(rgb.contiguous(memory_format=layout))
        assert y.shape == (2, 10, 14) and u.shape == v.shape == (2, 5, 7) and y.dtype == torch.uint8
        for got, want in ((y, want_y), (u, want_uv[:, 0]), (v, want_uv[:, 1])):
            diff = (got.double() - want).abs()
            assert diff.max() <= 1 and (diff > 0).double().mean() < 0.01
