"""ESRGAN-family generator architectures, written in the project.

Parameter names follow BasicSR / Real-ESRGAN (the canonical layout of this
package); :mod:`ultrares_stream.models.checkpoint` converts the other layouts
users have into it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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
    """ESRGAN generator.

    x4 upsamples with two (nearest x2 + conv) stages. For x2 and x1 the input is
    first pixel-unshuffled (by 2 or 4), as Real-ESRGAN does, so the body always
    runs at 1/4 of the output resolution.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4,
                 num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        self.scale = scale
        self.num_in_ch = num_in_ch
        in_ch = num_in_ch * {4: 1, 2: 4, 1: 16}[scale]
        self.conv_first = nn.Conv2d(in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def size_multiple(self) -> int:
        """Input height/width must be a multiple of this."""
        return {4: 1, 2: 2, 1: 4}[self.scale]

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

    size_multiple = 1

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


# -- efficient PSNR-oriented x4 nets (written from the papers; key names match the authors'
#    checkpoints so that those load strictly) ---------------------------------------------------

class PixelShuffleUpsampler(nn.Sequential):
    """One 3x3 conv to ``out_ch * scale**2`` channels, then pixel shuffle (ESPCN)."""

    def __init__(self, in_ch: int, out_ch: int, scale: int):
        super().__init__(nn.Conv2d(in_ch, out_ch * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))


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
    """Residual Local Feature Network (Kong et al., CVPRW 2022): RLFN 52 features, RLFN-S 48.

    The authors trained it on 0..255 pixel values; ``forward`` takes and returns 0..1 like every
    net here, scaling around the body.

    The ESA branch pools a stride-2 conv with a 7x7 window, so inputs must be at least
    ``min_size`` pixels a side; :func:`forward` pads smaller ones (replicate) and crops back.
    """

    min_size = 17

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

    size_multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = _pad_to(x, self.min_size) * 255.0
        feat = self.conv_1(x)
        out = feat
        for i in range(1, self.num_block + 1):
            out = getattr(self, f"block_{i}")(out)
        out = self.upsampler(self.conv_2(out) + feat) / 255.0
        return out[..., : h * self.scale, : w * self.scale]


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
    """Swift Parameter-free Attention Network (Wan et al., CVPRW 2024), collapsed form.

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

    size_multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_1((x - self.mean.to(x.dtype)) * 255.0)
        out_b1, _ = self.block_1(feat)
        out = out_b1
        for i in range(2, 6):
            out, _ = getattr(self, f"block_{i}")(out)
        out_b6, out_b5_2 = self.block_6(out)
        out = self.conv_cat(torch.cat([feat, self.conv_2(out_b6), out_b1, out_b5_2], 1))
        return self.upsampler(out)


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Replicate-pad the bottom/right of an NCHW batch so both sides are at least ``size``."""
    h, w = x.shape[-2:]
    if h >= size and w >= size:
        return x
    return F.pad(x, (0, max(0, size - w), 0, max(0, size - h)), mode="replicate")
