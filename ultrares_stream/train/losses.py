"""Losses for the GAN stage: perceptual features and the relativistic average GAN (ESRGAN)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError

log = logging.getLogger(__name__)

# torchvision's VGG19 "features" layout: conv channel widths, "M" = max-pool
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


class VGG19Features(nn.Module):
    """VGG19 up to conv5_4 *before* its activation (ESRGAN's choice), weights from a
    torchvision-layout checkpoint (``features.N.weight``), ImageNet normalisation."""

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in _VGG19:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                ch = int(v)
        self.features = nn.Sequential(*layers[:-1])  # drop the last ReLU: conv5_4 pre-activation
        if state_dict is not None:
            sd = {k: v for k, v in state_dict.items() if k.startswith("features.")
                  and int(k.split(".")[1]) < len(self.features)}
            missing = self.load_state_dict(sd, strict=False).missing_keys
            if missing:
                raise UserError(f"VGG19 checkpoint lacks {missing[0]} (expected torchvision's vgg19 layout)")
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.features((x - self.mean) / self.std)]


class SRNetFeatures(nn.Module):
    """Fallback feature network: the first ``depth`` conv+PReLU layers (default 4, which keeps
    a CPU training step affordable) of a trained
    SRVGGNetCompact (e.g. Real-ESRGAN's realesr-animevideov3), used at HR resolution.
    Its filters are trained edge/texture detectors, so matching their responses
    rewards texture the way a classification net's features do."""

    def __init__(self, state_dict: dict[str, torch.Tensor], depth: int = 4):
        super().__init__()
        from ..models.checkpoint import build_model

        net = build_model(state_dict, "feature network")
        body = list(net.body)[: 2 * depth]
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i % 4 == 3 or i == len(self.body) - 1:
                feats.append(x)
        return feats


def feature_network(spec: str | None) -> nn.Module | None:
    """``vgg19:PATH`` (torchvision VGG19 weights), ``srnet:PATH`` (an SRVGGNetCompact
    checkpoint), or ``none``. Frozen, eval mode."""
    if not spec or spec == "none":
        return None
    kind, _, path = spec.partition(":")
    if not path or not Path(path).is_file():
        raise UserError(f"perceptual network {spec!r}: give vgg19:PATH or srnet:PATH to an existing file")
    if kind == "vgg19":
        raw = torch.load(path, map_location="cpu", weights_only=True)
        net: nn.Module = VGG19Features(raw)
    elif kind == "srnet":
        from ..models.checkpoint import read_checkpoint

        net = SRNetFeatures(read_checkpoint(path))
    else:
        raise UserError(f"perceptual network kind {kind!r}: use vgg19 or srnet")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def perceptual_loss(net: nn.Module, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = net(hr)
    return sum(F.l1_loss(a, b) for a, b in zip(net(sr), target)) / len(target)


def ragan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average discriminator loss (ESRGAN eq. 1-2)."""
    real = F.binary_cross_entropy_with_logits(real_logits - fake_logits.mean(), torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits - real_logits.mean(), torch.zeros_like(fake_logits))
    return (real + fake) / 2


def ragan_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side: symmetric, so it benefits from both real and fake gradients."""
    real = F.binary_cross_entropy_with_logits(real_logits - fake_logits.mean(), torch.zeros_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits - real_logits.mean(), torch.ones_like(fake_logits))
    return (real + fake) / 2
