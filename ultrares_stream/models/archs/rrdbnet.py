"""RRDBNet: the ESRGAN generator (Wang et al. 2018; ESRGAN and Real-ESRGAN's x4plus checkpoints).

Canonical keys are BasicSR's: ``conv_first``, ``body.N.rdbK.convJ``, ``conv_body``, ``conv_up1/2``,
``conv_hr``, ``conv_last``. Two older layouts are converted to them (:func:`canonical`): the
original ESRGAN repo's (``RRDB_trunk.N.RDBk.convj``, ``trunk_conv``, ``upconv1/2``, ``HRconv``)
and its oldest sequential one (``model.1.sub.N.RDBk.convj.0``).
"""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import ModelError
from .base import ArchDescriptor, HyperParameters, StateDict, indices

#: input pixels per side of a pixel-unshuffled body, by scale: the input must be a multiple of it
_UNSHUFFLE = {4: 1, 2: 2, 1: 4}


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense connections; output scaled by 0.2 and added (ESRGAN fig. 4)."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs with a scaled residual around them."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator (the defaults are ESRGAN x4's published size).

    x4 upsamples with two (nearest x2 + conv) stages. For x2 and x1 the input is
    first pixel-unshuffled (by 2 or 4), as Real-ESRGAN does, so the body always
    runs at 1/4 of the output resolution.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4,
                 num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in _UNSHUFFLE:
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        self.scale = scale
        self.num_in_ch = num_in_ch
        in_ch = num_in_ch * _UNSHUFFLE[scale] ** 2
        self.conv_first = nn.Conv2d(in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 2:
            x = F.pixel_unshuffle(x, 2)
        elif self.scale == 1:
            x = F.pixel_unshuffle(x, 4)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# -- the older ESRGAN layouts ---------------------------------------------------------------------

_ESRGAN_RENAMES = {"trunk_conv.": "conv_body.", "upconv1.": "conv_up1.", "upconv2.": "conv_up2.", "HRconv.": "conv_hr."}


def canonical(sd: StateDict) -> StateDict:
    """``sd`` in BasicSR keys when it is in one of the older ESRGAN layouts, else ``sd`` itself."""
    if "model.0.weight" in sd:
        return _from_old_esrgan(sd)
    if "RRDB_trunk.0.RDB1.conv1.weight" in sd or "trunk_conv.weight" in sd:
        return _from_esrgan(sd)
    return sd


def _from_esrgan(sd: StateDict) -> StateDict:
    out = {}
    for k, v in sd.items():
        m = re.match(r"RRDB_trunk\.(\d+)\.RDB(\d)\.(conv\d)\.(weight|bias)$", k)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.{m[3]}.{m[4]}"] = v
            continue
        for old, new in _ESRGAN_RENAMES.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def _from_old_esrgan(sd: StateDict) -> StateDict:
    blocks = indices(sd, r"model\.1\.sub\.(\d+)\.RDB")
    trunk = max(blocks) + 1 if blocks else 0
    top = {"model.0.": "conv_first.", f"model.1.sub.{trunk}.": "conv_body.", "model.3.": "conv_up1.",
           "model.6.": "conv_up2.", "model.8.": "conv_hr.", "model.10.": "conv_last."}
    out = {}
    for k, v in sd.items():
        m = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.(conv\d)\.0\.(weight|bias)$", k)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.{m[3]}.{m[4]}"] = v
            continue
        for old, new in top.items():
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            raise ModelError(f"unexpected key {k!r} in an old-layout ESRGAN checkpoint")
    return out


# -- the descriptor -------------------------------------------------------------------------------

def _detect(sd: StateDict) -> bool:
    return "conv_first.weight" in sd and "conv_last.weight" in sd


def _hyperparameters(sd: StateDict, source: str) -> dict[str, object]:
    in_ch = sd["conv_first.weight"].shape[1]
    out_ch = sd["conv_last.weight"].shape[0]
    scale = {1: 4, 4: 2, 16: 1}.get(in_ch // out_ch)
    if scale is None or in_ch % out_ch:
        raise ModelError(f"{source}: {ARCH.name} with {in_ch} input / {out_ch} output channels has no known scale")
    return {"num_in_ch": out_ch, "num_out_ch": out_ch, "scale": scale,
            "num_feat": int(sd["conv_first.weight"].shape[0]), "num_block": len(indices(sd, r"body\.(\d+)\.rdb1\.")),
            "num_grow_ch": int(sd["body.0.rdb1.conv1.weight"].shape[0])}


def _size_multiple(hp: HyperParameters) -> int:
    return _UNSHUFFLE[int(hp["scale"])]


def _activation_bytes(hp: HyperParameters, element_bytes: int) -> float:
    """The dense blocks' concatenations at LR, the two upsampling stages at up to HR."""
    num_feat, s2 = int(hp["num_feat"]), int(hp["scale"]) ** 2
    lr = (num_feat + 4 * int(hp["num_grow_ch"])) * 3
    hr = num_feat * 16 * 3 // (16 // s2 if s2 < 16 else 1)
    return (lr + hr) * element_bytes + 3 * s2 * 4 * 2


ARCH = ArchDescriptor(
    name="RRDBNet",
    network=RRDBNet,
    detect=_detect,
    hyperparameters=_hyperparameters,
    summary="nf {num_feat}, nb {num_block}, gc {num_grow_ch}",
    activation_bytes=_activation_bytes,
    scale_parameter="scale",
    size_multiple=_size_multiple,
    convert=canonical,
)
