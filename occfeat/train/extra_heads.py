"""A second head trained beside the BEV segmentation loss while finetuning, dropped at test time:
BEVFormer v2's perspective supervision (its mechanism, on segmentation) and v2's own control, a second
BEV head with the same extra weight. ``FinetuneConfig.extra_head`` picks one (:class:`ExtraHeadConfig`).

- ``perspective``: :class:`occfeat.models.PerspectiveHead` on the image encoder's features (finest
  stride, the fused stride-8/16 map), targets from :class:`occfeat.perspective.PerspectiveTargets`
  drawn in the DataLoader worker: vehicles — the same boxes as the BEV ground truth projected into each
  camera (class focal, centerness, 2D box, depth of the projected centre); map — the map classes where
  each pixel's ray meets the ground, none where the LiDAR sees something nearer.
- ``second-bev``: a second :class:`occfeat.models.SegmentationHead` on F_B with the task's BEV
  segmentation loss: what the extra weight alone does, without new supervision.

The head returns ``loss_extra`` = weight · its loss (summed into the total by :class:`FinetuneTask`)
and its parts as ``log_*`` (logged only). It is not part of the :class:`SegmentationModel`: the
checkpoint keeps it under "extra", evaluation never builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from occfeat.errors import OccfeatError
from occfeat.losses import VehicleSegLoss, perspective_map_loss, perspective_vehicle_loss, segmentation_loss
from occfeat.models import PerspectiveHead, SegmentationHead

EXTRA_HEADS = ("none", "perspective", "second-bev")


@dataclass
class ExtraHeadConfig:
    """An auxiliary head trained beside the BEV loss, dropped at test time (BEVFormer v2, §3.2 / Table 5)."""

    kind: str = "none"
    """"perspective" (v2's perspective supervision), "second-bev" (v2's control: a second BEV head with the
    same extra weight) or "none"."""
    weight: float = 1.0
    """λ_pers in L = L_bev + λ_pers·L_pers (v2: ``mono_loss_weight=1.0``); the second BEV head gets the same."""
    min_lidar_points: int = 3
    """Vehicle boxes with fewer LiDAR points are not drawn into the cameras (v2's per-camera filter: ≥ 3)."""
    min_visibility: float = 0.2
    """Vehicle boxes with less of their projection inside a camera's image are not drawn into it (v2: ≥ 0.2)."""
    occlusion_tolerance: float = 0.5
    """Map targets: a pixel is occluded when its LiDAR depth is this many metres short of its ground depth."""
    occlusion_fill_rows: int = 1
    """Map targets: a pixel without a LiDAR return takes the nearest return up to this many rows above or
    below (at the encoder's resolution), so the gaps between LiDAR rings do not let the ground show through
    a vehicle (docs/perspective_targets.png); 0: only pixels with their own return."""

    def check(self) -> None:
        if self.kind not in EXTRA_HEADS:
            raise OccfeatError(f"extra_head.kind={self.kind!r} is not one of {', '.join(EXTRA_HEADS)}")
        if not self.weight > 0:
            raise OccfeatError(f"extra_head.weight={self.weight} must be > 0 (use extra_head.kind=none to drop the head)")
        if not 0 <= self.min_visibility <= 1:
            raise OccfeatError(f"extra_head.min_visibility={self.min_visibility} must be in [0, 1]")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def label(self) -> str:
        return {"perspective": "perspective head", "second-bev": "second BEV head"}.get(self.kind, "")


VEHICLE_OUTPUTS = {"class": 1, "centerness": 1, "ltrb": 4, "depth": 1}


class ExtraHead(nn.Module):
    """The head of ``cfg.kind`` for a network with ``image_channels`` encoder channels and ``bev_channels``.
    ``forward(bev, image_feats, batch)`` → {"loss_extra": weight · loss, "log_<part>": part, detached}."""

    def __init__(self, cfg: ExtraHeadConfig, task: str, n_classes: int, bev_channels: int, image_channels: int):
        super().__init__()
        self.cfg, self.task = cfg, task
        if cfg.kind == "perspective":
            self.head = PerspectiveHead(image_channels, VEHICLE_OUTPUTS if task == "vehicle" else {"class": n_classes})
        else:
            self.head = SegmentationHead(bev_channels, n_classes)

    @property
    def needs_images(self) -> bool:
        return self.cfg.kind == "perspective"

    def forward(self, bev: torch.Tensor, image_feats: torch.Tensor | None, batch: dict) -> dict[str, torch.Tensor]:
        if self.cfg.kind == "perspective":
            out = self.head(image_feats)
            parts = perspective_vehicle_loss(out, batch) if self.task == "vehicle" else perspective_map_loss(out, batch)
        else:
            pos_weight = VehicleSegLoss.POS_WEIGHT if self.task == "vehicle" else None
            parts = {"ce": segmentation_loss(self.head(bev), batch["target"], batch["valid"][:, None], pos_weight)}
        total = sum(parts.values())
        return {"loss_extra": self.cfg.weight * total, **{f"log_extra_{k}": v.detach() for k, v in parts.items()}}
