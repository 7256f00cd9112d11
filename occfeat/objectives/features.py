"""Occupancy-guided feature distillation, L_feat (paper §3.3, eq. 3): at the occupied voxels, predict from
F_V the teacher's (DINOv2 ViT-S/14) image feature at the voxel's projection; loss = -mean cosine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from occfeat.data.targets import voxel_feature_targets
from occfeat.errors import OccfeatError
from occfeat.losses import feature_distillation_loss
from occfeat.models import predict_at
from occfeat.objectives.base import Context, Objective, ObjectiveConfig, SampleInput
from occfeat.objectives.occupancy import OccupancyGrid


class TeacherMaps(SampleInput):
    """``features`` (S, Hp, Wp, N_y) float16 teacher maps of the unaugmented images, with ``K_orig``
    (S, 3, 3) and ``image_hw_orig`` (S, 2) at the stored image size, to project voxels of R into them."""

    def __call__(self, sources, rig, ref_T_ego, rng) -> dict[str, torch.Tensor]:
        return {
            "features": torch.from_numpy(sources.features.get(rig.token)),
            "K_orig": torch.from_numpy(rig.K).float(),
            "image_hw_orig": torch.from_numpy(rig.image_hw),
        }


def teacher_width(objective: str, feature_dim: int | None, sources) -> int:
    """N_y of the features cache, checked against an objective's ``feature_dim`` (None: take the cache's)."""
    have = sources.features.feature_dim
    if feature_dim is not None and feature_dim != have:
        raise OccfeatError(
            f"features cache {sources.features.path} holds {have}-dim teacher features but the recipe's predictor outputs "
            f"objectives.{objective}.feature_dim={feature_dim}; extract with the matching teacher or set it to {have}"
        )
    return have


@dataclass
class FeaturesConfig(ObjectiveConfig):
    """L_feat's settings."""

    weight: float = 0.01
    """λ in L = L_occ + λ·L_feat (paper eq. 1, §4.1: 0.01; Table 4 sweeps it)."""
    feature_dim: int | None = None
    """N_y, the teacher width the predictor outputs; None takes it from the features cache, a number must match it."""


class Features(Objective):
    """Conv3d 1x1x1 N_B→N_y on F_V, evaluated only at the occupied voxels; targets from the teacher cache."""

    name = "features"
    label = "Feat"
    Config = FeaturesConfig
    sources = ("occupancy", "features")
    uses_volume = True

    @classmethod
    def resolve(cls, cfg: FeaturesConfig, sources) -> FeaturesConfig:
        cfg = super().resolve(cfg, sources)
        return dataclasses.replace(cfg, feature_dim=teacher_width(cls.name, cfg.feature_dim, sources))

    def __init__(self, cfg: FeaturesConfig, grid, bev_channels: int, image_channels: int = 128):
        super().__init__(cfg, grid, bev_channels, image_channels)
        self.predictor = nn.Conv3d(bev_channels, cfg.feature_dim or 384, kernel_size=1)

    def inputs(self) -> list[SampleInput]:
        return [OccupancyGrid(), TeacherMaps()]

    def forward(self, ctx: Context, batch: dict) -> dict[str, torch.Tensor]:
        # Targets in float32 whatever the autocast: bilinear sampling of fp16 maps in bf16 loses the direction.
        with torch.no_grad(), torch.autocast(batch["images"].device.type, enabled=False):
            idx, target, valid = voxel_feature_targets(
                batch["occupancy"], batch["features"].float(), batch["K_orig"], batch["cam_T_ego"], batch["image_hw_orig"], self.grid
            )
        pred = predict_at(self.predictor, ctx.volume, idx)
        return {"loss_features": feature_distillation_loss(pred, target, valid)}
