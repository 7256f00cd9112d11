"""The settings of cross-modal distillation while finetuning (:class:`DistillConfig`, ``distill.*`` in a
finetune recipe); the loss and the teacher live in :mod:`occfeat.train.distill`. Kept apart so that the
finetune config can hold it without importing the training stack."""

from __future__ import annotations

from dataclasses import dataclass

from occfeat.distillation import FP_THRESHOLD
from occfeat.errors import OccfeatError

METHODS = ("none", "bevdistill", "distillbev")
LABELS = {"bevdistill": "BEVDistill", "distillbev": "DistillBEV"}
STAGES = ("layer1", "layer2", "layer3", "bev")
DEFAULT_WEIGHT = {"bevdistill": 0.01, "distillbev": 1.0}  # BEVDistill's loss_weight; DistillBEV's α carry its scale


@dataclass
class DistillConfig:
    """Distillation from a LiDAR teacher during finetuning; ``method: none`` (the default) turns it off."""

    method: str = "none"
    """none | bevdistill | distillbev."""
    teacher: str | None = None
    """The LiDAR teacher: a finetune run dir of ``recipes/finetune/*lidar*.yaml`` (its checkpoints/last.pt)."""
    weight: float | None = None
    """Multiplier of the distillation term. None: BEVDistill's 0.01 (its official config), 1 for DistillBEV."""
    sigma: float | None = None
    """BEVDistill's Gaussians: None = the official code's CenterPoint radius (min_overlap 0.1, r ≥ 1 cell,
    σ = (2r + 1) / 6); a number = the paper's fixed σ in cells (2)."""
    nce_weight: float = 0.0
    """BEVDistill: weight of the InfoNCE critic on foreground cells (0 = off; the paper's instance term: 0.2)."""
    nce_samples: int = 64
    """Foreground cells per batch the critic contrasts."""
    alpha_fg: float = 6e-3
    """DistillBEV's foreground weight (released BEVDepth-student script)."""
    alpha_fp: float = 6e-2
    """DistillBEV's false-positive weight."""
    alpha_bg: float = 4e-2
    """DistillBEV's background weight."""
    fp_threshold: float = FP_THRESHOLD
    """Teacher probability above which a cell outside the foreground is a false positive."""
    attention: str = "teacher"
    """DistillBEV's spatial attention from the "teacher"'s features or the "mean" of teacher and student."""
    stages: tuple[str, ...] = STAGES
    """DistillBEV's stages (BEVDistill always uses F_B = "bev")."""

    def check(self) -> None:
        if self.method not in METHODS:
            raise OccfeatError(f"distill.method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.method == "none":
            return
        if not self.teacher:
            raise OccfeatError(f"distill.method={self.method} needs distill.teacher=RUN_DIR, a finetune run of a LiDAR recipe "
                               "(e.g. occfeat finetune --recipe finetune/synthetic-lidar.yaml ...)")
        if self.attention not in ("teacher", "mean"):
            raise OccfeatError(f"distill.attention={self.attention!r} must be teacher or mean")
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise OccfeatError(f"distill.stages {list(self.stages)}: each must be one of {', '.join(STAGES)}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def loss_weight(self) -> float:
        return DEFAULT_WEIGHT[self.method] if self.weight is None else float(self.weight)

    def used_stages(self) -> tuple[str, ...]:
        return ("bev",) if self.method == "bevdistill" else tuple(self.stages)
