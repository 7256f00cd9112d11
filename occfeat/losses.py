"""OccFeat losses (paper §3.2-3.3, eqs. 1-3) and the downstream segmentation losses.

The terms are pure functions you can test alone; the pretraining objectives (:mod:`occfeat.objectives`)
call them and weight them, :class:`VehicleSegLoss` (Simple-BEV's objective) and :class:`MapSegLoss`
combine the finetuning ones. Layouts follow occfeat.grid: occupancy targets (B, X, Y, Z), head logits (B, Z, X, Y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from occfeat.errors import OccfeatError

def occupancy_loss(occ_logits: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    """Eq. 2: L_occ = mean over ALL voxels of BCE(sigmoid(logit), O).

    occ_logits (B, Z, X, Y) from the unsplat head; occupancy (B, X, Y, Z) bool/0-1 from the cache.
    The (X, Y, Z) → (Z, X, Y) permute happens here, once.
    """
    target = occupancy.permute(0, 3, 1, 2)
    assert target.shape == occ_logits.shape, (
        f"occupancy (B, X, Y, Z) {tuple(occupancy.shape)} does not fit occ_logits (B, Z, X, Y) {tuple(occ_logits.shape)}"
    )
    return F.binary_cross_entropy_with_logits(occ_logits.float(), target.float())


def feature_distillation_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 3: L_feat = -mean cosine(Ŷ_v, Y_v) over the occupied voxels v that have a valid target.

    pred (M, C) predicted features, target (M, C) teacher features, valid (M,) bool (False = no camera
    sees the voxel). Returns 0, still attached to the graph, when nothing is valid.
    """
    assert pred.shape == target.shape and pred.ndim == 2, f"pred {tuple(pred.shape)} / target {tuple(target.shape)} must be equal (M, C)"
    assert valid.shape == pred.shape[:1], f"valid {tuple(valid.shape)} must be (M,) for M={pred.shape[0]}"
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8)
    v = valid.to(cos.dtype)
    return -(cos * v).sum() / v.sum().clamp(min=1.0)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, pos_weight: float | None = None
) -> torch.Tensor:
    """BCE-with-logits averaged over the valid BEV cells (finetuning, Simple-BEV's objective).

    logits (B, n, X, Y); target (B, n, X, Y) bool/0-1; valid (B, 1|n, X, Y) bool or None (all valid),
    False e.g. on vehicles excluded for low visibility; pos_weight up-weights positives (Simple-BEV: 2.13
    for vehicles). Returns 0, still attached to the graph, when no cell is valid.
    """
    assert logits.shape == target.shape, f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must match"
    pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device, dtype=torch.float32)
    per_cell = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none", pos_weight=pw)
    if valid is None:
        return per_cell.mean()
    v = valid.to(per_cell.dtype).expand_as(per_cell)
    return (per_cell * v).sum() / v.sum().clamp(min=1.0)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) / sum(mask); 0 (still attached to the graph) when the mask is empty."""
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def balanced_mse_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Simple-BEV's centerness loss (``balanced_mse_loss``, train_nuscenes.py ~63-72): the squared error
    averaged separately over the cells with target > 0.5 and those with target < 0.5, then the two
    means averaged, so the few centre cells weigh as much as the background. pred/target (B, 1, X, Y);
    valid None = every cell (Simple-BEV calls it without one)."""
    assert pred.shape == target.shape, f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match"
    se = (pred.float() - target.float()) ** 2
    v = torch.ones_like(se) if valid is None else valid.to(se.dtype).expand_as(se)
    return 0.5 * (_masked_mean(se, (target > 0.5) * v) + _masked_mean(se, (target < 0.5) * v))


def offset_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Simple-BEV's offset loss (train_nuscenes.py ~189-190): L1 summed over the (2) offset channels,
    averaged over the cells of ``mask`` (B, 1, X, Y) = vehicle cells that are valid. pred/target (B, 2, X, Y)."""
    assert pred.shape == target.shape, f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match"
    l1 = (pred.float() - target.float()).abs().sum(dim=1, keepdim=True)
    return _masked_mean(l1, mask)


def uncertainty_weighted(loss: torch.Tensor, log_weight: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * loss * exp(-w) + 0.5 * w``, Simple-BEV's learned task weighting (train_nuscenes.py
    ~192-203): scale 10 for the segmentation BCE, 1/2 for centerness and offset (their ``1 / (2 e^w)``)."""
    return scale * loss * torch.exp(-log_weight) + 0.5 * log_weight


class VehicleSegLoss(nn.Module):
    """Simple-BEV's vehicle finetuning objective (train_nuscenes.py ~186-208):

    ``10·BCE(pos_weight 2.13, mean over valid)·e^{-w_ce} + centerness/(2e^{w_c}) + offset/(2e^{w_o})
    + 0.5(w_ce + w_c + w_o)``, with ``w_ce, w_c, w_o`` learned, starting at 0 (segnet.py's ``ce_weight``,
    ``center_weight``, ``offset_weight``). They are this module's parameters: the model that trains
    holds the module, so the optimizer updates them and the checkpoint saves them.

    forward(out, batch): out {"segmentation" (B,1,X,Y) logits, "center" (B,1,X,Y) in [0,1], "offset"
    (B,2,X,Y)}; batch {"target" (B,1,X,Y), "valid" (B,X,Y), "center", "offset"}. Returns (total, terms):
    the raw terms ``loss_ce``/``loss_center``/``loss_offset``, the weights ``w_*`` and ``loss``, detached.
    """

    POS_WEIGHT = 2.13  # LSS's value, as Simple-BEV: SimpleLoss(2.13)
    CE_SCALE = 10.0

    def __init__(self):
        super().__init__()
        self.ce_weight = nn.Parameter(torch.tensor(0.0))
        self.center_weight = nn.Parameter(torch.tensor(0.0))
        self.offset_weight = nn.Parameter(torch.tensor(0.0))

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        valid = batch["valid"][:, None]
        ce = segmentation_loss(out["segmentation"], batch["target"], valid, self.POS_WEIGHT)
        # Semi-supervised batches (``labelled`` (B,) bool): centre and offset targets exist only on labelled frames.
        frames = batch["labelled"].bool()[:, None, None, None] if "labelled" in batch else None
        center = balanced_mse_loss(out["center"], batch["center"], frames)
        instances = batch["target"].bool() & valid.bool()
        offset = offset_loss(out["offset"], batch["offset"], instances if frames is None else instances & frames)
        total = (
            uncertainty_weighted(ce, self.ce_weight, self.CE_SCALE)
            + uncertainty_weighted(center, self.center_weight, 0.5)
            + uncertainty_weighted(offset, self.offset_weight, 0.5)
        )
        terms = {"loss": total, "loss_ce": ce, "loss_center": center, "loss_offset": offset,
                 "w_ce": self.ce_weight, "w_center": self.center_weight, "w_offset": self.offset_weight}
        return total, {k: v.detach() for k, v in terms.items()}


class MapSegLoss(nn.Module):
    """Map finetuning objective: BCE per class (no pos_weight), mean over classes and valid cells.

    Simple-BEV has no map objective. There are no instances, so no centerness or offset terms, and a
    learned uncertainty weight on a single term only rescales its gradient by e^{-w}, which Adam's
    per-parameter normalisation undoes (apart from the gradient clip), so neither it nor the ×10 is
    used. No per-class pos_weight either: the paper gives none, and an unweighted BCE keeps the
    map numbers comparable with occfeat's earlier runs (rare classes such as dividers and crosswalks
    will score low at the 0.5 threshold; a known limitation). Same forward contract as
    :class:`VehicleSegLoss`; terms {"loss", "loss_ce"}.
    """

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = segmentation_loss(out["segmentation"], batch["target"], batch["valid"][:, None])
        return ce, {"loss": ce.detach(), "loss_ce": ce.detach()}


# ---------------------------------------------------------------- perspective supervision (BEVFormer v2)

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # v2's FCOS3D-style class loss (focal, alpha 0.25, gamma 2)
DEPTH_BETA = 0.05  # v2's smooth-L1 beta


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, alpha: float = FOCAL_ALPHA,
                       gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) summed over the valid pixels and normalised by the number of positive
    pixels (at least 1), as FCOS does. logits / target (..., C, H, W); valid (..., H, W) bool."""
    x, t = logits.float(), target.float()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma * (alpha * t + (1 - alpha) * (1 - t))
    v = valid.unsqueeze(-3).to(loss.dtype)
    return (loss * v).sum() / ((t * v).sum()).clamp(min=1.0)


def iou_loss(pred_ltrb: torch.Tensor, target_ltrb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FCOS's box loss, -log IoU of the boxes (l, t, r, b) around each masked pixel, mean over the mask.
    pred / target (..., 4, H, W) non-negative distances; mask (..., H, W) bool. 0 (attached) when empty."""
    p, t = pred_ltrb.float().movedim(-3, -1)[mask], target_ltrb.float().movedim(-3, -1)[mask]  # (M, 4)
    if len(p) == 0:
        return pred_ltrb.sum() * 0.0
    area_p = (p[:, 0] + p[:, 2]) * (p[:, 1] + p[:, 3])
    area_t = (t[:, 0] + t[:, 2]) * (t[:, 1] + t[:, 3])
    inter = (torch.minimum(p[:, 0], t[:, 0]) + torch.minimum(p[:, 2], t[:, 2])) * (torch.minimum(p[:, 1], t[:, 1]) + torch.minimum(p[:, 3], t[:, 3]))
    iou = (inter + 1.0) / (area_p + area_t - inter + 1.0)  # FCOS's +1 smoothing
    return -torch.log(iou).mean()


def perspective_vehicle_loss(out: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
    """The perspective head's vehicle terms on (B, S, ·, h, w) maps (:class:`occfeat.models.PerspectiveHead`
    outputs ``class``, ``centerness``, ``ltrb`` (log-distances), ``depth`` (log-metres)) against the
    ``pv_*`` targets (:class:`occfeat.perspective.PerspectiveTargets`): focal class loss over all pixels,
    and on the positive pixels BCE centerness, IoU box loss and smooth-L1 (beta 0.05) log-depth. Returns
    {"focal", "centerness", "box", "depth"}, the sum being the head's loss (v2 / FCOS weight each 1)."""
    valid = batch["pv_valid"].bool()
    pos = batch["pv_target"][:, :, 0].bool() & valid
    focal = sigmoid_focal_loss(out["class"], batch["pv_target"], valid)
    ctr = _masked_mean(F.binary_cross_entropy_with_logits(out["centerness"][:, :, 0].float(), batch["pv_centerness"].float(),
                                                          reduction="none"), pos)
    box = iou_loss(out["ltrb"].float().exp(), batch["pv_ltrb"], pos)
    depth = _masked_mean(F.smooth_l1_loss(out["depth"][:, :, 0].float(), batch["pv_depth"].float().clamp(min=1e-3).log(),
                                          beta=DEPTH_BETA, reduction="none"), pos)
    return {"focal": focal, "centerness": ctr, "box": box, "depth": depth}


def perspective_map_loss(out: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
    """The perspective head's map term: BCE per class over the valid pixels, as the BEV map loss."""
    valid = batch["pv_valid"].bool().unsqueeze(2)
    return {"ce": segmentation_loss(out["class"].flatten(0, 1), batch["pv_target"].flatten(0, 1), valid.flatten(0, 1))}
