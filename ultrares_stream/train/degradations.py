"""Degradations that turn HR crops into realistic LR inputs (on batches of NCHW float tensors).

Two modes:

* ``bicubic``: the paper protocol, MATLAB-compatible antialiased bicubic down-sampling.
* ``traffic``: what a traffic camera does to a scene, after Real-ESRGAN's recipe in a
  lighter, first-order form: optical blur, down-sampling (bicubic/area/bilinear),
  sensor noise (Gaussian or Poisson), then compression (JPEG or H.264 at a random quality).

All randomness comes from the ``numpy.random.Generator`` passed in, so a run is reproducible.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class DegradationConfig:
    mode: str = "mixed"  # bicubic | traffic | mixed (per-batch choice)
    p_bicubic: float = 0.5  # share of batches that use the plain bicubic protocol in "mixed"
    blur_prob: float = 0.6
    blur_sigma: tuple[float, float] = (0.2, 1.6)
    noise_prob: float = 0.5
    gaussian_sigma: tuple[float, float] = (1.0, 8.0)  # in 0..255 units
    poisson_scale: tuple[float, float] = (0.05, 1.0)
    jpeg_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (40, 95)
    h264_prob: float = 0.35
    h264_crf: tuple[int, int] = (20, 36)


def bicubic_down(x: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-compatible antialiased bicubic down-sampling of an NCHW batch, as two matrix
    products with the same weights :func:`~ultrares_stream.quality.matlab_resize.imresize` uses."""
    from ..quality.matlab_resize import resize_weights

    h, w = x.shape[-2:]
    mh = torch.from_numpy(resize_weights(h, h // scale, 1 / scale).toarray()).to(x)
    mw = torch.from_numpy(resize_weights(w, w // scale, 1 / scale).toarray()).to(x)
    return mh @ x @ mw.T


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def add_noise(x: torch.Tensor, rng: np.random.Generator, cfg: DegradationConfig) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    if rng.random() < 0.6:
        sigma = rng.uniform(*cfg.gaussian_sigma) / 255.0
        if rng.random() < 0.3:  # grey noise (same on all channels)
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], generator=gen).expand_as(x)
        else:
            noise = torch.randn(x.shape, generator=gen)
        return x + sigma * noise.to(x)
    scale = rng.uniform(*cfg.poisson_scale)
    vals = 10 ** (2 * scale + 1)  # photon count per unit intensity, 10..1000
    return torch.poisson(x.clamp(0, 1) * vals * 255, generator=gen) / (vals * 255)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in _to_uint8(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return _from_uint8(np.stack(out), x)


def h264(x: torch.Tensor, crf: int) -> torch.Tensor:
    """Encode the batch as a mosaic in one H.264 intra frame (libx264) and decode it back."""
    import av

    n, _, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    imgs = _to_uint8(x)
    mosaic = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, img in enumerate(imgs):
        r, c = divmod(i, cols)
        mosaic[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    ph, pw = (-mosaic.shape[0]) % 16, (-mosaic.shape[1]) % 16
    mosaic = np.pad(mosaic, ((0, ph), (0, pw), (0, 0)), mode="edge")
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = mosaic.shape[1], mosaic.shape[0], "yuv420p"
    codec.options = {"crf": str(int(crf)), "preset": "ultrafast", "tune": "zerolatency"}
    packets = list(codec.encode(av.VideoFrame.from_ndarray(mosaic, format="rgb24"))) + list(codec.encode(None))
    dec = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    back = frames[0].to_ndarray(format="rgb24")
    out = np.stack([back[r * h:(r + 1) * h, c * w:(c + 1) * w] for r, c in (divmod(i, cols) for i in range(n))])
    return _from_uint8(out, x)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _from_uint8(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).to(like.device, torch.float32) / 255.0


def degrade(hr: torch.Tensor, scale: int, rng: np.random.Generator, cfg: DegradationConfig) -> torch.Tensor:
    """HR batch (NCHW float [0,1]) -> LR batch (quantised to uint8 levels, like a decoded frame)."""
    mode = cfg.mode
    if mode == "mixed":
        mode = "bicubic" if rng.random() < cfg.p_bicubic else "traffic"
    if mode == "bicubic":
        return (bicubic_down(hr, scale).clamp(0, 1) * 255).round() / 255
    x = hr
    if rng.random() < cfg.blur_prob:
        x = gaussian_blur(x, rng.uniform(*cfg.blur_sigma))
    how = rng.choice(["bicubic", "area", "bilinear"])
    if how == "bicubic":
        x = bicubic_down(x, scale)
    else:
        x = F.interpolate(x, scale_factor=1 / scale, mode=how, antialias=how == "bilinear")
    if rng.random() < cfg.noise_prob:
        x = add_noise(x, rng, cfg)
    x = x.clamp(0, 1)
    r = rng.random()
    if r < cfg.h264_prob:
        x = h264(x, int(rng.integers(cfg.h264_crf[0], cfg.h264_crf[1] + 1)))
    elif r < cfg.h264_prob + cfg.jpeg_prob:
        x = jpeg(x, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
    return (x.clamp(0, 1) * 255).round() / 255
