"""BEV decoder D_B (paper §3.1) as in Simple-BEV: a ResNet-18 trunk (stem conv + layer1-3, random init,
no ImageNet weights) down to 1/8 of the grid, then three upsample-and-add skips back to the grid size.
Channels in = channels out = N_B, so F_B keeps the grid's X x Y.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn


class UpsampleAdd(nn.Module):
    """Bilinear upsample to the skip's size, 1x1 conv + InstanceNorm, add the skip.

    Upsampling to the skip's exact size (not a fixed x2) keeps odd grid sizes (e.g. 50 → 25 → 13) working.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.InstanceNorm2d(out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj(x) + skip


class BevDecoder(nn.Module):
    """(B, C, X, Y) → (B, C, X, Y): ResNet-18 layers 1-3 with skip upsampling (Simple-BEV's Decoder)."""

    def __init__(self, channels: int):
        super().__init__()
        trunk = timm.create_model("resnet18", pretrained=False)  # blocks only; BEV features are not ImageNet
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False), trunk.bn1, trunk.act1)
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3  # 64@1/2, 128@1/4, 256@1/8
        self.up3 = UpsampleAdd(256, 128)
        self.up2 = UpsampleAdd(128, 64)
        self.up1 = UpsampleAdd(64, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = x
        skip2 = self.layer1(self.stem(x))
        skip3 = self.layer2(skip2)
        x = self.layer3(skip3)
        x = self.up3(x, skip3)
        x = self.up2(x, skip2)
        return self.up1(x, skip1)
