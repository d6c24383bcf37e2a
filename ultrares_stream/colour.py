"""Pixel formats and colour conversion as small pure tensor functions (run on the inference device).

Packed ``yuv420p`` is what decoders give and encoders take: ``(N, H*3/2, W)`` uint8, Y rows then
U then V. :func:`split_yuv420p` / :func:`pack_yuv420p` view it as planes; :func:`yuv420p_to_rgb` /
:func:`rgb_to_yuv420p` convert the planes.
"""
from __future__ import annotations

import functools

import torch

# ITU-R BT.601, limited ("TV") range: what H.264 camera streams and libx264 use by default.
_YUV_TO_RGB = torch.tensor([[1.164383, 0.0, 1.596027],
                            [1.164383, -0.391762, -0.812968],
                            [1.164383, 2.017232, 0.0]])
_RGB_TO_YUV = torch.tensor([[0.256788, 0.504129, 0.097906],
                            [-0.148223, -0.290993, 0.439216],
                            [0.439216, -0.367788, -0.071427]])


def uint8_to_float(frames: torch.Tensor) -> torch.Tensor:
    """NHWC uint8 (or HWC) -> NCHW float32 in [0, 1]."""
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    return frames.permute(0, 3, 1, 2).float().div_(255.0)


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """NCHW float in [0, 1] -> NHWC uint8, rounded and clamped."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def split_yuv420p(packed: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, ...]:
    """(N, H*3/2, W) packed uint8 -> Y (N,H,W), U (N,H/2,W/2), V (N,H/2,W/2) (views, no copy)."""
    n = packed.shape[0]
    flat = packed.reshape(n, -1)
    ys, cs = width * height, (width // 2) * (height // 2)
    y = flat[:, :ys].reshape(n, height, width)
    u = flat[:, ys:ys + cs].reshape(n, height // 2, width // 2)
    v = flat[:, ys + cs:ys + 2 * cs].reshape(n, height // 2, width // 2)
    return y, u, v


def pack_yuv420p(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_yuv420p`: planes -> (N, H*3/2, W) packed uint8."""
    n, h, w = y.shape
    return torch.cat((y.reshape(n, -1), u.reshape(n, -1), v.reshape(n, -1)), 1).reshape(n, h * 3 // 2, w)


def yuv420p_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Planes (N,H,W), (N,H/2,W/2) x2 as uint8 -> NCHW float RGB in [0, 1] (contiguous).

    Chroma terms are computed at quarter resolution and then repeated 2x2 (nearest), the
    same result as upsampling U/V first, for a quarter of the arithmetic.
    """
    n, h, w = y.shape[-3], y.shape[-2], y.shape[-1]
    m = _YUV_TO_RGB
    yf = (y.float() - 16.0).mul_(m[0, 0].item() / 255.0)
    uf = u.float() - 128.0
    vf = v.float() - 128.0
    chroma = torch.stack((vf * (m[0, 2].item() / 255.0),
                          uf * (m[1, 1].item() / 255.0) + vf * (m[1, 2].item() / 255.0),
                          uf * (m[2, 1].item() / 255.0)), 1)  # N,3,H/2,W/2
    hc, wc = chroma.shape[-2:]
    chroma = chroma[:, :, :, None, :, None].expand(n, 3, hc, 2, wc, 2).reshape(n, 3, hc * 2, wc * 2)
    rgb = chroma[..., :h, :w] + yf.unsqueeze(1)
    return rgb.clamp_(0.0, 1.0)


def rgb_to_yuv420p(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NCHW float RGB in [0, 1] (even H, W) -> uint8 planes Y (N,H,W), U and V (N,H/2,W/2).

    Chroma is the 2x2 average; as the conversion is linear, the 2x2 sums of RGB are converted at
    quarter resolution (same values, a quarter of the arithmetic). The channel mixing is one
    contraction per output (``einsum``) and the 2x2 sums are two strided adds: a third of the
    time of per-channel products and ``avg_pool2d`` on a CPU core (docs/benchmarks.md).
    """
    rgb = rgb.float()
    to_y, to_uv = _rgb_to_yuv_on(rgb.device)
    y = torch.einsum("c,nchw->nhw", to_y, rgb).add_(16.0)
    pairs = rgb[..., 0::2, :] + rgb[..., 1::2, :]
    sums = pairs[..., 0::2] + pairs[..., 1::2]
    uv = torch.einsum("kc,nchw->nkhw", to_uv, sums).add_(128.0)
    return _to_levels(y), _to_levels(uv[:, 0]), _to_levels(uv[:, 1])


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


@functools.cache
def _rgb_to_yuv_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """BT.601 RGB -> Y in 0..255 levels, and the 2x2 sum of RGB -> U, V (the mean's matrix / 4),
    once per device."""
    m = (_RGB_TO_YUV * 255.0).to(device)
    return m[0], m[1:] / 4.0
