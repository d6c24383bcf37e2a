"""Re-parameterisable training form of the compact generator (RepVGG / ECBSR idea).

During training every 3x3 conv of :class:`~ultrares_stream.models.archs.SRVGGNetCompact` is a
sum of linear branches: the 3x3 conv itself, a 1x1 conv, a 1x1 expansion followed by a 3x3
conv (no bias on the expansion, so zero padding commutes with it), and, where the conv keeps
its width, a learnable per-channel identity. Every branch is linear in its input, so the sum is
one 3x3 conv: :func:`collapse` folds them back and the shipped network is a plain
SRVGGNetCompact with the same speed. The extra branches only change how training moves
through weight space.

A compact state dict converts into this form without changing what the net computes
(:meth:`RepCompact.from_compact`): the 3x3 branch takes the trained weights and every other
branch starts at zero.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..models.archs import SRVGGNetCompact
from ..models.checkpoint import StateDict, infer_arch


class RepConv3x3(nn.Module):
    """3x3 + 1x1 + (1x1 -> 3x3) + identity; :meth:`fused` is the equivalent single 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int, expand: int = 2):
        super().__init__()
        self.conv3 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 1)
        self.expand = nn.Conv2d(in_ch, out_ch * expand, 1, bias=False)
        self.squeeze = nn.Conv2d(out_ch * expand, out_ch, 3, 1, 1)
        self.identity = nn.Parameter(torch.zeros(out_ch)) if in_ch == out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(x) + self.conv1(x) + self.squeeze(self.expand(x))
        if self.identity is not None:
            out = out + x * self.identity.view(1, -1, 1, 1)
        return out

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one 3x3 conv this module computes."""
        return collapse(self.conv3.weight, self.conv3.bias, self.conv1.weight, self.conv1.bias,
                        self.expand.weight, self.squeeze.weight, self.squeeze.bias, self.identity)

    def zero_extra(self) -> None:
        """Make every branch but the 3x3 contribute nothing (the expansion keeps its random init
        so that the squeeze conv, which starts at zero, gets gradients)."""
        with torch.no_grad():
            for p in (self.conv1.weight, self.conv1.bias, self.squeeze.weight, self.squeeze.bias):
                p.zero_()
            if self.identity is not None:
                self.identity.zero_()


def collapse(w3: torch.Tensor, b3: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, we: torch.Tensor,
             ws: torch.Tensor, bs: torch.Tensor, identity: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the branches of :class:`RepConv3x3` into one 3x3 kernel and bias (pure function)."""
    weight = w3 + F.pad(w1, (1, 1, 1, 1))
    weight = weight + torch.einsum("omhw,mi->oihw", ws, we[:, :, 0, 0])
    if identity is not None:
        dirac = torch.zeros_like(weight)
        idx = torch.arange(weight.shape[0])
        dirac[idx, idx, 1, 1] = identity
        weight = weight + dirac
    return weight, b3 + b1 + bs


class RepCompact(SRVGGNetCompact):
    """SRVGGNetCompact (PReLU) whose convs are :class:`RepConv3x3`; :meth:`compact_state_dict` is
    the shipped net."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 32, num_conv: int = 6,
                 upscale: int = 4):
        super().__init__(num_in_ch, num_out_ch, num_feat, num_conv, upscale, act_type="prelu")
        for i, layer in enumerate(self.body):
            if isinstance(layer, nn.Conv2d):
                self.body[i] = RepConv3x3(layer.in_channels, layer.out_channels)

    @classmethod
    def from_compact(cls, sd: StateDict, source: str = "init weights") -> "RepCompact":
        """The training form of a PReLU SRVGGNetCompact state dict, computing the same function."""
        spec = dict(infer_arch(sd, source).kwargs)
        net = cls(num_in_ch=spec["num_in_ch"], num_out_ch=spec["num_out_ch"], num_feat=spec["num_feat"],
                  num_conv=spec["num_conv"], upscale=spec["upscale"])
        with torch.no_grad():
            for i, layer in enumerate(net.body):
                if isinstance(layer, RepConv3x3):
                    layer.zero_extra()
                    layer.conv3.weight.copy_(sd[f"body.{i}.weight"])
                    layer.conv3.bias.copy_(sd[f"body.{i}.bias"])
                else:
                    layer.weight.copy_(sd[f"body.{i}.weight"])
        return net

    def compact_state_dict(self) -> StateDict:
        """The collapsed weights, keyed exactly as SRVGGNetCompact's."""
        out: StateDict = {}
        with torch.no_grad():
            for i, layer in enumerate(self.body):
                if isinstance(layer, RepConv3x3):
                    out[f"body.{i}.weight"], out[f"body.{i}.bias"] = (t.detach().clone() for t in layer.fused())
                else:
                    out[f"body.{i}.weight"] = layer.weight.detach().clone()
        return out

    def collapsed(self) -> SRVGGNetCompact:
        net = SRVGGNetCompact(self.num_in_ch, self.num_out_ch, self.num_feat, self.num_conv, self.scale)
        net.load_state_dict(self.compact_state_dict(), strict=True)
        return net
