"""RLFN: Residual Local Feature Network (Kong et al., CVPRW 2022; bytedance/RLFN, Apache-2.0), the
shipped traffic pair's architecture. Written from the paper; key names match the authors'
checkpoints (``conv_1``, ``block_N.c1_r`` ... ``block_N.esa.*``, ``conv_2``, ``upsampler.0``), so
that those load strictly.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import ArchDescriptor, PixelShuffleUpsampler, StateDict, indices, lr_feature_bytes, shuffle_scale

#: the ESA branch pools a stride-2 conv with a 7x7 window: smaller inputs are padded to this side
MIN_SIZE = 17


class ESA(nn.Module):
    """Enhanced spatial attention (RFDN/RLFN): a strided, max-pooled branch gives a sigmoid mask."""

    def __init__(self, num_feat: int, esa_ch: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, esa_ch, 1)
        self.conv_f = nn.Conv2d(esa_ch, esa_ch, 1)
        self.conv2 = nn.Conv2d(esa_ch, esa_ch, 3, 2, 0)
        self.conv3 = nn.Conv2d(esa_ch, esa_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(esa_ch, num_feat, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.conv1(x)
        pooled = F.max_pool2d(self.conv2(c1), kernel_size=7, stride=3)
        c3 = F.interpolate(self.conv3(pooled), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(c3 + self.conv_f(c1)))


class RLFB(nn.Module):
    """Residual local feature block: three 3x3 conv + LeakyReLU(0.05), a residual, 1x1, ESA."""

    def __init__(self, num_feat: int, esa_ch: int = 16):
        super().__init__()
        self.c1_r = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.c2_r = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.c3_r = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.c5 = nn.Conv2d(num_feat, num_feat, 1)
        self.esa = ESA(num_feat, esa_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.c1_r(x), 0.05)
        out = F.leaky_relu(self.c2_r(out), 0.05)
        out = F.leaky_relu(self.c3_r(out), 0.05)
        return self.esa(self.c5(out + x))


class RLFN(nn.Module):
    """Residual Local Feature Network: RLFN 52 features, RLFN-S 48.

    The authors trained it on 0..255 pixel values; ``forward`` takes and returns 0..1 like every
    net here, scaling around the body. Inputs under :data:`MIN_SIZE` pixels a side are padded
    (replicate) and the output cropped back.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 52, num_block: int = 6,
                 esa_ch: int = 16, upscale: int = 4):
        super().__init__()
        self.num_in_ch = num_in_ch
        self.scale = upscale
        self.conv_1 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        for i in range(1, num_block + 1):
            self.add_module(f"block_{i}", RLFB(num_feat, esa_ch))
        self.num_block = num_block
        self.conv_2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsampler = PixelShuffleUpsampler(num_feat, num_out_ch, upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = _pad_to(x, MIN_SIZE) * 255.0
        feat = self.conv_1(x)
        out = feat
        for i in range(1, self.num_block + 1):
            out = getattr(self, f"block_{i}")(out)
        out = self.upsampler(self.conv_2(out) + feat) / 255.0
        return out[..., : h * self.scale, : w * self.scale]


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Replicate-pad the bottom/right of an NCHW batch so both sides are at least ``size``."""
    h, w = x.shape[-2:]
    if h >= size and w >= size:
        return x
    return F.pad(x, (0, max(0, size - w), 0, max(0, size - h)), mode="replicate")


def _detect(sd: StateDict) -> bool:
    return "block_1.esa.conv1.weight" in sd and "upsampler.0.weight" in sd


def _hyperparameters(sd: StateDict, source: str) -> dict[str, object]:
    num_feat, num_in = sd["conv_1.weight"].shape[:2]
    return {"num_in_ch": int(num_in), "num_out_ch": int(num_in), "num_feat": int(num_feat),
            "num_block": len(indices(sd, r"block_(\d+)\.c1_r\.")),
            "esa_ch": int(sd["block_1.esa.conv1.weight"].shape[0]),
            "upscale": shuffle_scale(sd["upsampler.0.weight"].shape[0], int(num_in), source)}


ARCH = ArchDescriptor(
    name="RLFN",
    network=RLFN,
    detect=_detect,
    hyperparameters=_hyperparameters,
    summary="feat {num_feat}, blocks {num_block}, esa {esa_ch}",
    activation_bytes=lr_feature_bytes,
    min_size=MIN_SIZE,
)
