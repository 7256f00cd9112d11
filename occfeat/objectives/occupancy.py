"""Occupancy reconstruction, L_occ (paper §3.2, eq. 2): predict from F_V whether each voxel of the grid
holds at least one LiDAR point, BCE over all voxels."""

from __future__ import annotations

from dataclasses import dataclass


import torch
from torch import nn

from occfeat.losses import occupancy_loss
from occfeat.models import pointwise
from occfeat.objectives.base import Context, Objective, ObjectiveConfig, SampleInput


class OccupancyGrid(SampleInput):
    """``occupancy`` (X, Y, Z) bool: the cached LiDAR points moved into R and voxelized on the grid."""

    def __call__(self, sources, rig, ref_T_ego, rng) -> dict[str, torch.Tensor]:
        return {"occupancy": torch.from_numpy(sources.occupancy.get(rig.token, ref_T_ego))}


@dataclass
class OccupancyConfig(ObjectiveConfig):
    """L_occ's settings: only its weight (1 in OccFeat, eq. 1)."""


class Occupancy(Objective):
    """Conv3d 1x1x1 N_B→1 on F_V (the occupancy predictor of §3.2); L_occ = mean BCE over all voxels."""

    name = "occupancy"
    label = "Occ"
    Config = OccupancyConfig
    sources = ("occupancy",)
    uses_volume = True

    def __init__(self, cfg: OccupancyConfig, grid, bev_channels: int, image_channels: int = 128):
        super().__init__(cfg, grid, bev_channels, image_channels)
        self.predictor = nn.Conv3d(bev_channels, 1, kernel_size=1)

    def inputs(self) -> list[SampleInput]:
        return [OccupancyGrid()]

    def forward(self, ctx: Context, batch: dict) -> dict[str, torch.Tensor]:
        logits = pointwise(self.predictor, ctx.volume)[:, 0]  # (B, Z, X, Y)
        return {"loss_occupancy": occupancy_loss(logits, batch["occupancy"])}



