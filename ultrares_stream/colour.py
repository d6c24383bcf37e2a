"""Pixel formats and colour conversion as small pure tensor functions (run on the inference device)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def yuv420p_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Planes (N,H,W), (N,H/2,W/2) x2 as uint8 -> NCHW float RGB in [0, 1]."""
    h, w = y.shape[-2:]
    yf = y.float().unsqueeze(1) - 16.0
    uv = torch.stack((u, v), 1).float() - 128.0
    uv = F.interpolate(uv, size=(h, w), mode="nearest")
    yuv = torch.cat((yf, uv), 1)
    rgb = torch.einsum("ij,njhw->nihw", _YUV_TO_RGB.to(yuv.device), yuv)
    return rgb.div_(255.0).clamp_(0.0, 1.0)


def rgb_to_yuv420p(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NCHW float RGB in [0, 1] (even H, W) -> uint8 planes Y (N,H,W), U and V (N,H/2,W/2)."""
    yuv = torch.einsum("ij,njhw->nihw", _RGB_TO_YUV.to(rgb.device), rgb.float() * 255.0)
    y = (yuv[:, 0] + 16.0).round_().clamp_(0, 255).to(torch.uint8)
    uv = F.avg_pool2d(yuv[:, 1:], 2) + 128.0
    uv = uv.round_().clamp_(0, 255).to(torch.uint8)
    return y, uv[:, 0], uv[:, 1]
