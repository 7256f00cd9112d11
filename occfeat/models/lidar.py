"""A LiDAR BEV network on the camera student's grid: the teacher of cross-modal distillation (BEVDistill,
DistillBEV; see docs/distillation.md).

Input: the key frame's LiDAR occupancy on the grid in the sample's reference frame R, ``batch["lidar"]``
(B, X, Y, Z) bool — the points ``occfeat voxelize`` reads (key-frame sweep plus ``sweeps - 1`` earlier
ones, ego body dropped), voxelized on the fly by the dataset. The height bins become channels (as
Simple-BEV feeds rasterised LiDAR), then SimpleBEV's BEV compressor and ResNet-18 decoder give
F_B (B, N_B, X, Y), cell for cell on the camera student's grid: a 1x1 adapter is all distillation needs.
No sparse convolutions, no CUDA ops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.models.base import BevNetwork, NetworkConfig
from occfeat.models.decoder import BevDecoder
from occfeat.models.flips import flip_bev
from occfeat.weights import Provenance


@dataclass
class LidarBevConfig(NetworkConfig):
    """The LiDAR network: the shared fields that apply (bev_channels); no image backbone."""

    arch: str = "lidar"
    """This network's name in recipes (``network: {arch: lidar}``)."""
    backbone: str = "none"
    """No image backbone: the report's Backbone column says so."""
    sweeps: int = 1
    """LiDAR sweeps per key frame (the key-frame sweep and ``sweeps - 1`` earlier ones, each through its
    own ego pose): 10 densifies the grid as ``occfeat voxelize --sweeps 10`` does."""


class LidarBev(BevNetwork):
    config_class = LidarBevConfig
    inputs: ClassVar[tuple[str, ...]] = ("lidar",)

    def __init__(self, cfg: LidarBevConfig, grid: BevGrid):
        super().__init__()
        if cfg.sweeps < 1:
            raise OccfeatError(f"network.sweeps={cfg.sweeps} must be >= 1 (the key-frame sweep at least)")
        self.grid = grid
        self.bev_channels = cfg.bev_channels
        self.sweeps = cfg.sweeps
        self.provenance = Provenance(model="lidar-bev", pretrained=False, source="random-init")
        Z = grid.shape[2]
        self.compress = nn.Sequential(  # (B, Z, X, Y): the height bins as channels
            nn.Conv2d(Z, cfg.bev_channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(cfg.bev_channels),
            nn.GELU(),
        )
        self.decoder = BevDecoder(cfg.bev_channels)

    def forward_bev(self, batch: dict) -> torch.Tensor:
        """batch["lidar"] (B, X, Y, Z) → F_B (B, N_B, X, Y); ``flip_bev`` flags as the camera networks."""
        if "lidar" not in batch:
            raise OccfeatError("batch lacks key 'lidar'; the LiDAR network reads the occupancy grid its dataset adds")
        occ = batch["lidar"]
        if occ.ndim != 4 or tuple(occ.shape[1:]) != tuple(self.grid.shape):
            raise OccfeatError(f"batch['lidar'] must be (B, X, Y, Z) = (B, {', '.join(map(str, self.grid.shape))}), got {tuple(occ.shape)}")
        flips = batch.get("flip_bev")
        x = flip_bev(occ.permute(0, 3, 1, 2).float(), flips)
        return flip_bev(self.decoder(self.compress(x)), flips)

    def forward_features(self, batch: dict) -> tuple[torch.Tensor, None]:
        return self.forward_bev(batch), None  # no images
