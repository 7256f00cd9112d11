"""The settings of cross-modal distillation while finetuning (:class:`DistillConfig`, ``distill.*`` in a
finetune recipe); the loss and the teacher live in :mod:`occfeat.train.distill`. Kept apart so that the
finetune config can hold it without importing the training stack."""

from __future__ import annotations

from dataclasses import dataclass

from occfeat.distillation import FP_THRESHOLD
from occfeat.errors import OccfeatError

METHODS = ("none", "bevdistill", "distillbev", "pseudo")
LABELS = {"bevdistill": "BEVDistill", "distillbev": "DistillBEV", "pseudo": "pseudo-labels"}
STAGES = ("layer1", "layer2", "layer3", "bev")
DEFAULT_WEIGHT = {"bevdistill": 0.01, "distillbev": 1.0, "pseudo": 1.0}  # BEVDistill's loss_weight; DistillBEV's α carry its scale


UNLABELLED = "distill.unlabelled=true"  # the override of study entries that use the unlabelled frames


def study_overrides(entry: str) -> list[str]:
    """The finetune overrides of a study's distillation entry: a method ("bevdistill", "distillbev"), the
    same on the unlabelled frames too ("bevdistill-semi", "distillbev-semi"), or "pseudo" (pseudo-labels
    on the unlabelled frames)."""
    method, _, variant = entry.partition("-")
    if method not in METHODS or method == "none" or variant not in ("", "semi") or (method == "pseudo" and variant):
        choices = ", ".join(m + s for m in METHODS[1:3] for s in ("", "-semi"))
        raise OccfeatError(f"distillations entry {entry!r}: each must be one of {choices}, pseudo")
    semi = variant == "semi" or method == "pseudo"
    return [f"distill.method={method}", *([UNLABELLED] if semi else [])]


@dataclass
class DistillConfig:
    """Distillation from a LiDAR teacher during finetuning; ``method: none`` (the default) turns it off."""

    method: str = "none"
    """none | bevdistill | distillbev | pseudo (no feature term: the teacher's thresholded predictions are
    the segmentation targets of the unlabelled frames, the baseline beside semi-supervised distillation)."""
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
    unlabelled: bool = False
    """Semi-supervised: also train on the split's frames outside the labelled subset, never reading their
    labels. Each step adds as many unlabelled frames as labelled ones (cycling through them over the
    epochs); on them only the distillation term applies, with masks from the teacher's predictions
    (foreground = probability > ``pseudo_threshold``), or with ``method: pseudo`` the segmentation loss
    against the teacher's thresholded predictions."""
    pseudo_threshold: float = 0.5
    """Teacher probability above which an unlabelled cell is foreground (the evaluation's threshold)."""

    def check(self) -> None:
        if self.method not in METHODS:
            raise OccfeatError(f"distill.method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.method == "none":
            return
        if self.method == "pseudo" and not self.unlabelled:
            raise OccfeatError("distill.method=pseudo labels the frames outside the labelled subset: add distill.unlabelled=true")
        if self.method == "pseudo" and self.weight is not None:
            raise OccfeatError("distill.weight has no effect with method=pseudo (the pseudo-labelled frames join the segmentation loss); drop it")
        if not 0 < self.pseudo_threshold < 1:
            raise OccfeatError(f"distill.pseudo_threshold={self.pseudo_threshold} must be between 0 and 1")
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
        """The stages with a feature term (pseudo-labels have none)."""
        if self.method == "pseudo":
            return ()
        return ("bev",) if self.method == "bevdistill" else tuple(self.stages)

    def label(self) -> str:
        """The row label of the method: its name, a weight other than its default, and the frames it uses."""
        weight = self.loss_weight()
        text = LABELS[self.method] + ("" if weight == DEFAULT_WEIGHT[self.method] else f" ×{weight:g}")
        if self.method == "pseudo":
            return text + " on unlabelled frames"
        return text + (" on all frames" if self.unlabelled else "")
