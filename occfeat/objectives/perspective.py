"""Perspective pretraining (label-free; BEVFormer v2's perspective supervision without boxes): a dense
head on the image encoder's features predicts, per pixel, the LiDAR depth (BEVDepth-style depth bins of
the projected points) and the teacher's feature (cosine to the cached teacher map). It gives the image
backbone dense gradients the view transformer thins out, as v2's head does, from the same caches OccFeat
reads. Alone, or beside OccFeat's objectives; the head is thrown away after pretraining."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from occfeat.data.occupancy import points_in_frame
from occfeat.data.targets import pixel_depth_bins, pixel_feature_targets
from occfeat.errors import OccfeatError
from occfeat.geometry import scale_intrinsics
from occfeat.losses import feature_distillation_loss
from occfeat.models import PerspectiveHead
from occfeat.objectives.base import Context, Objective, ObjectiveConfig, SampleInput
from occfeat.objectives.features import TeacherMaps, teacher_width

# BEVDepth's depth bins (``dbound = [2.0, 58.0, 0.5]``: 112 bins), the distribution its depth net predicts.
DEPTH_BINS = (2.0, 58.0, 0.5)


class LidarPoints(SampleInput):
    """``pv_points`` (M, 3) float32: the cached LiDAR points of the sample moved into R (ragged)."""

    ragged = ("pv_points",)

    def __call__(self, sources, rig, ref_T_ego, rng) -> dict[str, torch.Tensor]:
        pts = points_in_frame(sources.occupancy.points(rig.token).astype(np.float64), ref_T_ego)
        return {"pv_points": torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32))}


@dataclass
class PerspectiveConfig(ObjectiveConfig):
    """The perspective pretraining objective's settings."""

    weight: float = 1.0
    """Its weight beside L_occ (BEVFormer v2's λ_pers = 1, ``mono_loss_weight``)."""
    depth_bins: tuple[float, float, float] = DEPTH_BINS
    """(min, max, step) of the depth bins in metres (BEVDepth: 2, 58, 0.5)."""
    feature_weight: float = 1.0
    """Weight of the per-pixel teacher-feature term (−cosine) beside the depth cross-entropy; 0: depth only."""
    feature_dim: int | None = None
    """N_y, the teacher width; None takes it from the features cache."""


class Perspective(Objective):
    """:class:`PerspectiveHead` on the encoder features → depth-bin logits and teacher features per pixel;
    loss = CE(depth bins) over pixels a LiDAR point falls in + feature_weight · (−mean cosine)."""

    name = "perspective"
    label = "Persp"
    Config = PerspectiveConfig
    sources = ("occupancy", "features")
    uses_images = True

    @classmethod
    def resolve(cls, cfg: PerspectiveConfig, sources) -> PerspectiveConfig:
        cfg = super().resolve(cfg, sources)
        lo, hi, step = cfg.depth_bins
        if not (0 < lo < hi and step > 0):
            raise OccfeatError(f"objectives.perspective.depth_bins={list(cfg.depth_bins)} must be (min, max, step) with 0 < min < max, step > 0")
        if cfg.feature_weight < 0:
            raise OccfeatError(f"objectives.perspective.feature_weight={cfg.feature_weight} must be >= 0")
        return dataclasses.replace(cfg, feature_dim=teacher_width(cls.name, cfg.feature_dim, sources))

    def __init__(self, cfg: PerspectiveConfig, grid, bev_channels: int, image_channels: int = 128):
        super().__init__(cfg, grid, bev_channels, image_channels)
        lo, hi, step = cfg.depth_bins
        self.n_bins = int(round((hi - lo) / step))
        self.head = PerspectiveHead(image_channels, {"depth": self.n_bins, "features": cfg.feature_dim or 384})

    def inputs(self) -> list[SampleInput]:
        return [LidarPoints(), TeacherMaps()]

    def forward(self, ctx: Context, batch: dict) -> dict[str, torch.Tensor]:
        feats = ctx.image_features
        out = self.head(feats)
        hw = tuple(feats.shape[-2:])
        stride = batch["images"].shape[-1] / hw[1]
        K = scale_intrinsics(batch["K"], 1.0 / stride, 1.0 / stride)
        with torch.no_grad(), torch.autocast(feats.device.type, enabled=False):
            bins = pixel_depth_bins(batch["pv_points"], batch["pv_points_mask"], batch["cam_T_ego"], K, hw, self.cfg.depth_bins)
            target, valid = pixel_feature_targets(batch["features"].float(), batch["K_orig"], batch["image_hw_orig"], K, hw)
        logits = out["depth"].movedim(2, -1)  # (B, S, h, w, D)
        hit = bins >= 0
        depth = F.cross_entropy(logits[hit].float(), bins[hit]) if bool(hit.any()) else logits.sum() * 0.0
        pred = out["features"].movedim(2, -1)
        feat = feature_distillation_loss(pred.flatten(0, 3), target.flatten(0, 3), valid.flatten())
        return {"loss_perspective": depth + self.cfg.feature_weight * feat, "loss_pv_depth": depth, "loss_pv_features": feat}
