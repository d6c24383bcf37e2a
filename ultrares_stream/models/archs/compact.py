"""SRVGGNetCompact: Real-ESRGAN's compact VGG-style generator (the shipped compact and wide pairs,
``realesr-animevideov3``, ``realesr-general-x4v3``).

Keys (BasicSR): ``body.N.weight`` / ``body.N.bias`` for the convs, ``body.N.weight`` (1-D) for the
PReLUs between them.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ModelError
from .base import ArchDescriptor, HyperParameters, StateDict, indices, lr_feature_bytes


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style net: convs at LR, pixel shuffle, plus the
    nearest-upsampled input as a residual."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_conv: int = 16, upscale: int = 4, act_type: str = "prelu"):
        super().__init__()
        self.num_in_ch = num_in_ch
        self.num_out_ch = num_out_ch
        self.num_feat = num_feat
        self.num_conv = num_conv
        self.scale = upscale
        self.act_type = act_type
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act_type, num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return shuffle_add_nearest(out, x, self.scale)


def shuffle_add_nearest(out: torch.Tensor, x: torch.Tensor, scale: int) -> torch.Tensor:
    """``pixel_shuffle(out, scale) + interpolate(x, scale, "nearest")`` in one pass.

    Each LR pixel of ``x`` is broadcast over its ``scale x scale`` output block while the
    shuffle is applied as a view, so neither the upsampled input nor the shuffled features
    are materialised at HR. Same values; at 320x240 x4 on the CPU the tail drops from about
    19 ms to 5 ms a frame (docs/benchmarks.md).
    """
    n, c, h, w = out.shape
    channels = c // (scale * scale)
    blocks = out.reshape(n, channels, scale, scale, h, w).permute(0, 1, 4, 2, 5, 3)
    return (blocks + x[:, :, :, None, :, None]).reshape(n, channels, h * scale, w * scale)


def _activation(kind: str, num_feat: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "lrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"unknown activation {kind!r} (use prelu, relu or lrelu)")


def _detect(sd: StateDict) -> bool:
    return "body.0.weight" in sd and sd["body.0.weight"].ndim == 4


def _hyperparameters(sd: StateDict, source: str) -> dict[str, object]:
    convs = [i for i in sorted(indices(sd, r"body\.(\d+)\.weight$")) if sd[f"body.{i}.weight"].ndim == 4]
    num_feat, num_in = sd["body.0.weight"].shape[:2]
    last_out = sd[f"body.{convs[-1]}.weight"].shape[0]
    scale = round((last_out / num_in) ** 0.5)
    if scale * scale * num_in != last_out:
        raise ModelError(f"{source}: {ARCH.name} last conv has {last_out} channels; no integer scale")
    act = "prelu" if "body.1.weight" in sd else "lrelu"  # ReLU and LeakyReLU have no weights: lrelu
    return {"num_in_ch": int(num_in), "num_out_ch": int(num_in), "num_feat": int(num_feat),
            "num_conv": len(convs) - 2, "upscale": scale, "act_type": act}


def _tile_pad(hp: HyperParameters) -> int:
    """The exact receptive-field radius (one input pixel per 3x3 conv): tiles reproduce the untiled result."""
    return int(hp["num_conv"]) + 2


ARCH = ArchDescriptor(
    name="SRVGGNetCompact",
    network=SRVGGNetCompact,
    detect=_detect,
    hyperparameters=_hyperparameters,
    summary="feat {num_feat}, conv {num_conv}, {act_type}",
    activation_bytes=lr_feature_bytes,
    tile_pad=_tile_pad,
)
