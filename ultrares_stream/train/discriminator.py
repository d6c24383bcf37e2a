"""VGG-style discriminator for 128x128 HR crops (ESRGAN's VGG128, narrower for CPU training)."""
from __future__ import annotations

import torch
from torch import nn


class VGGDiscriminator(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_feat: int = 32, input_size: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        ch, size = num_in_ch, input_size
        for i, mult in enumerate((1, 2, 4, 8, 8)):
            out = num_feat * mult
            layers += [nn.Conv2d(ch, out, 3, 1, 1, bias=i == 0)]
            if i:
                layers.append(nn.BatchNorm2d(out))
            layers += [nn.LeakyReLU(0.2, True), nn.Conv2d(out, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2, True)]
            ch, size = out, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * size * size, 100), nn.LeakyReLU(0.2, True),
                                  nn.Linear(100, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
