"""Balanced OccFeat (label-free; DistillBEV's region decomposition applied to OccFeat's own terms):
L_occ and L_feat re-weighted by region from LiDAR — occupied voxels are the foreground, voxels LiDAR
says free but the student calls occupied the false positives, the other free voxels the background —
each region summing to its α per sample; inside the foreground, DistillBEV's scale 1/sqrt(size of the
voxel's connected occupied component) so a small object is not drowned by a large one, times spatial
attention from the teacher-feature magnitudes (a = M·softmax(mean_c |Y_v| / T) over the occupied voxels
a camera sees, detached). The feature term is the same foreground-weighted mean of −cos(Ŷ_v, Y_v).
Pure parts: :func:`occfeat.distillation.balanced_occupancy_weights`, :func:`voxel_attention`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occfeat.data.targets import voxel_feature_targets
from occfeat.distillation import ATTENTION_TEMPERATURE, balanced_occupancy_weights
from occfeat.models import pointwise, predict_at
from occfeat.objectives.base import Context, Objective, ObjectiveConfig, SampleInput
from occfeat.objectives.features import FeaturesConfig, TeacherMaps, teacher_width
from occfeat.objectives.occupancy import OccupancyGrid


def voxel_attention(magnitude: torch.Tensor, sample: torch.Tensor, valid: torch.Tensor, B: int,
                    temperature: float = ATTENTION_TEMPERATURE) -> torch.Tensor:
    """DistillBEV's spatial attention over voxels: ``magnitude`` (M,) mean |teacher feature| of the
    occupied voxels, ``sample`` (M,) their batch index, ``valid`` (M,) whether a camera sees them →
    (M,) a = M_b·softmax_b(magnitude / T) over each sample's valid voxels (mean 1 there), 1 elsewhere."""
    a = torch.ones_like(magnitude, dtype=torch.float32)
    for b in range(B):
        m = (sample == b) & valid
        n = int(m.sum())
        if n:
            a[m] = n * torch.softmax(magnitude[m].float() / temperature, dim=0)
    return a


@dataclass
class BalancedConfig(ObjectiveConfig):
    """Balanced OccFeat's settings (DistillBEV's regions, scales and attention on OccFeat's terms)."""

    lam: float = FeaturesConfig.weight
    """λ of the feature term (OccFeat's 0.01, paper eq. 1)."""
    alpha_fg: float = 1.0
    """Total weight of the occupied voxels per sample."""
    alpha_fp: float = 1.0
    """Total weight of the false positives (free by LiDAR, occupied by the student) per sample."""
    alpha_bg: float = 1.0
    """Total weight of the other free voxels per sample (equal α: every region weighs as much as any other)."""
    fp_threshold: float = 0.5
    """Student occupancy probability above which a free voxel is a false positive."""
    attention_temperature: float = ATTENTION_TEMPERATURE
    """T of the spatial attention (DistillBEV: 0.5); 0 turns the attention off."""
    feature_dim: int | None = None
    """N_y; None takes it from the features cache."""


class Balanced(Objective):
    """Occupancy and feature predictors on F_V (as OccFeat's), with region / scale / attention weights."""

    name = "balanced"
    label = "Bal-OccFeat"
    Config = BalancedConfig
    sources = ("occupancy", "features")
    uses_volume = True

    @classmethod
    def resolve(cls, cfg: BalancedConfig, sources) -> BalancedConfig:
        cfg = super().resolve(cfg, sources)
        return dataclasses.replace(cfg, feature_dim=teacher_width(cls.name, cfg.feature_dim, sources))

    def __init__(self, cfg: BalancedConfig, grid, bev_channels: int, image_channels: int = 128):
        super().__init__(cfg, grid, bev_channels, image_channels)
        self.occupancy = nn.Conv3d(bev_channels, 1, kernel_size=1)
        self.features = nn.Conv3d(bev_channels, cfg.feature_dim or 384, kernel_size=1)

    def inputs(self) -> list[SampleInput]:
        return [OccupancyGrid(), TeacherMaps()]

    def forward(self, ctx: Context, batch: dict) -> dict[str, torch.Tensor]:
        occupied = batch["occupancy"].bool()  # (B, X, Y, Z)
        B = occupied.shape[0]
        logits = pointwise(self.occupancy, ctx.volume)[:, 0].permute(0, 2, 3, 1).float()  # (B, Z, X, Y) → (B, X, Y, Z)
        with torch.no_grad(), torch.autocast(batch["images"].device.type, enabled=False):
            idx, target, valid = voxel_feature_targets(
                occupied, batch["features"].float(), batch["K_orig"], batch["cam_T_ego"], batch["image_hw_orig"], self.grid
            )
            attention = torch.ones_like(logits)
            if self.cfg.attention_temperature > 0:
                a = voxel_attention(target.abs().mean(dim=1), idx[:, 0], valid, B, self.cfg.attention_temperature)
                attention[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]] = a
            c = self.cfg
            w = balanced_occupancy_weights(occupied, torch.sigmoid(logits), c.alpha_fg, c.alpha_fp, c.alpha_bg,
                                           c.fp_threshold, attention)
        bce = F.binary_cross_entropy_with_logits(logits, occupied.float(), reduction="none")
        occ = (w * bce).sum() / B
        cos = F.cosine_similarity(predict_at(self.features, ctx.volume, idx).float(), target, dim=-1, eps=1e-8)
        w_fg = w[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]] * valid
        feat = -(w_fg * cos).sum() / w_fg.sum().clamp(min=1e-12)
        return {"loss_balanced": occ + c.lam * feat, "loss_balanced_occupancy": occ, "loss_balanced_features": feat}
