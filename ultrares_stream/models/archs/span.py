"""SPAN: Swift Parameter-free Attention Network (Wan et al., CVPRW 2024; MIT), in its collapsed
(inference) form, as the NTIRE 2024 ESR slim files hold it: ``conv_1.eval_conv``,
``block_N.cK_r.eval_conv``, ``conv_cat``, ``conv_2.eval_conv``, ``upsampler.0``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import ArchDescriptor, PixelShuffleUpsampler, StateDict, lr_feature_bytes, shuffle_scale


class Conv3XC(nn.Module):
    """SPAN's re-parameterisable conv in its collapsed (inference) form: one 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.eval_conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_conv(x)


class SPAB(nn.Module):
    """Swift parameter-free attention block: three convs, SiLU, attention ``sigmoid(out3) - 0.5``."""

    def __init__(self, num_feat: int):
        super().__init__()
        self.c1_r = Conv3XC(num_feat, num_feat)
        self.c2_r = Conv3XC(num_feat, num_feat)
        self.c3_r = Conv3XC(num_feat, num_feat)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output and its first conv's activation (SPAN concatenates block 6's)."""
        act1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(act1)))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), act1


class SPAN(nn.Module):
    """Swift Parameter-free Attention Network, collapsed form.

    Inputs are mean-shifted and scaled to 0..255 inside the net, as the authors trained it.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 48, upscale: int = 4,
                 rgb_mean: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)):
        super().__init__()
        self.num_in_ch = num_in_ch
        self.scale = upscale
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.conv_1 = Conv3XC(num_in_ch, num_feat)
        for i in range(1, 7):
            self.add_module(f"block_{i}", SPAB(num_feat))
        self.conv_cat = nn.Conv2d(num_feat * 4, num_feat, 1)
        self.conv_2 = Conv3XC(num_feat, num_feat)
        self.upsampler = PixelShuffleUpsampler(num_feat, num_out_ch, upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_1((x - self.mean.to(x.dtype)) * 255.0)
        out_b1, _ = self.block_1(feat)
        out = out_b1
        for i in range(2, 6):
            out, _ = getattr(self, f"block_{i}")(out)
        out_b6, out_b5_2 = self.block_6(out)
        out = self.conv_cat(torch.cat([feat, self.conv_2(out_b6), out_b1, out_b5_2], 1))
        return self.upsampler(out)


def _detect(sd: StateDict) -> bool:
    return "conv_1.eval_conv.weight" in sd and "conv_cat.weight" in sd


def _hyperparameters(sd: StateDict, source: str) -> dict[str, object]:
    num_feat, num_in = sd["conv_1.eval_conv.weight"].shape[:2]
    return {"num_in_ch": int(num_in), "num_out_ch": int(num_in), "num_feat": int(num_feat),
            "upscale": shuffle_scale(sd["upsampler.0.weight"].shape[0], int(num_in), source)}


ARCH = ArchDescriptor(
    name="SPAN",
    network=SPAN,
    detect=_detect,
    hyperparameters=_hyperparameters,
    summary="feat {num_feat}",
    activation_bytes=lr_feature_bytes,
)
