"""The control of perspective pretraining (BEVFormer v2's own control, moved to pretraining): a second
unsplat decoder with its own occupancy and feature predictors on F_B, trained with OccFeat's loss
L_occ + λ·L_feat at the same extra weight as the perspective objective. It adds heads and loss weight
but no new supervision; a gain of the perspective objective over this row is the image-space signal's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from occfeat.data.targets import voxel_feature_targets
from occfeat.losses import feature_distillation_loss, occupancy_loss
from occfeat.models import UnsplatDecoder, pointwise, predict_at
from occfeat.objectives.base import Context, Objective, ObjectiveConfig, SampleInput
from occfeat.objectives.features import FeaturesConfig, TeacherMaps, teacher_width
from occfeat.objectives.occupancy import OccupancyGrid


@dataclass
class SecondUnsplatConfig(ObjectiveConfig):
    """The second unsplat head's settings."""

    weight: float = 1.0
    """Its weight (the perspective objective's, so the two rows add the same extra loss weight)."""
    lam: float = FeaturesConfig.weight
    """λ of its own L_occ + λ·L_feat (OccFeat's 0.01)."""
    feature_dim: int | None = None
    """N_y; None takes it from the features cache."""


class SecondUnsplat(Objective):
    """Its own :class:`UnsplatDecoder` + Conv3d predictors on F_B; loss = L_occ + λ·L_feat on its own F_V."""

    name = "second_unsplat"
    label = "2nd-Unsplat"
    Config = SecondUnsplatConfig
    sources = ("occupancy", "features")

    @classmethod
    def resolve(cls, cfg: SecondUnsplatConfig, sources) -> SecondUnsplatConfig:
        cfg = super().resolve(cfg, sources)
        return dataclasses.replace(cfg, feature_dim=teacher_width(cls.name, cfg.feature_dim, sources))

    def __init__(self, cfg: SecondUnsplatConfig, grid, bev_channels: int, image_channels: int = 128):
        super().__init__(cfg, grid, bev_channels, image_channels)
        self.decoder = UnsplatDecoder(bev_channels, grid.shape[2])
        self.occupancy = nn.Conv3d(bev_channels, 1, kernel_size=1)
        self.features = nn.Conv3d(bev_channels, cfg.feature_dim or 384, kernel_size=1)

    def inputs(self) -> list[SampleInput]:
        return [OccupancyGrid(), TeacherMaps()]

    def forward(self, ctx: Context, batch: dict) -> dict[str, torch.Tensor]:
        volume = self.decoder(ctx.bev)
        occ = occupancy_loss(pointwise(self.occupancy, volume)[:, 0], batch["occupancy"])
        with torch.no_grad(), torch.autocast(batch["images"].device.type, enabled=False):
            idx, target, valid = voxel_feature_targets(
                batch["occupancy"], batch["features"].float(), batch["K_orig"], batch["cam_T_ego"], batch["image_hw_orig"], self.grid
            )
        feat = feature_distillation_loss(predict_at(self.features, volume, idx), target, valid)
        return {"loss_second_unsplat": occ + self.cfg.lam * feat, "loss_second_occupancy": occ, "loss_second_features": feat}
