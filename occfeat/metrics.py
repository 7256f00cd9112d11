"""Segmentation IoU accumulated over a whole split (Simple-BEV's protocol).

Intersection and union are summed over every cell of every sample first and divided once at the end,
so the result is the IoU of the split, not a mean of per-batch or per-sample IoUs (those weight
empty and crowded scenes alike and differ from the paper's numbers).
"""

from __future__ import annotations

import numpy as np
import torch

THRESHOLD = 0.5  # on the sigmoid probability, as in Simple-BEV


class IoUAccumulator:
    """Per-class intersection/union counts over batches of logits.

    ``update(logits (B, C, X, Y), target (B, C, X, Y) bool, valid (B, X, Y) bool | None)``; cells with
    ``valid`` False count in neither intersection nor union.
    """

    def __init__(self, class_names: tuple[str, ...] | list[str], threshold: float = THRESHOLD):
        self.class_names = tuple(class_names)
        self.threshold = threshold
        self.intersection = torch.zeros(len(self.class_names), dtype=torch.float64)
        self.union = torch.zeros(len(self.class_names), dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        assert logits.shape == target.shape, f"logits {tuple(logits.shape)} vs target {tuple(target.shape)}"
        assert logits.shape[1] == len(self.class_names), f"{logits.shape[1]} channels for {len(self.class_names)} classes"
        pred = torch.sigmoid(logits.float()) >= self.threshold
        tgt = target.bool()
        keep = torch.ones_like(tgt) if valid is None else valid.bool()[:, None].expand_as(tgt)
        dims = (0, 2, 3)
        self.intersection += (pred & tgt & keep).sum(dims).double().cpu()
        self.union += ((pred | tgt) & keep).sum(dims).double().cpu()

    def iou(self) -> dict[str, float]:
        """Per-class IoU; a class with an empty union over the split (never present, never predicted)
        gets NaN rather than a made-up 0 or 1."""
        vals = torch.where(self.union > 0, self.intersection / self.union.clamp(min=1), torch.nan)
        return {name: float(v) for name, v in zip(self.class_names, vals)}

    def mean(self) -> float:
        """Mean IoU over the classes with a defined IoU (NaN if none)."""
        vals = torch.tensor([v for v in self.iou().values()], dtype=torch.float64)
        vals = vals[~torch.isnan(vals)]
        return float(vals.mean()) if len(vals) else float("nan")

    def summary(self) -> dict:
        """JSON-able: per-class IoU, mean IoU, and the raw counts."""
        return {
            "iou": self.iou(),
            "mean_iou": self.mean(),
            "intersection": dict(zip(self.class_names, self.intersection.tolist())),
            "union": dict(zip(self.class_names, self.union.tolist())),
            "threshold": self.threshold,
        }


# Vehicle footprint bins (m², length x width) of :func:`iou_by_size`: two-wheelers (~1.3-1.6), cars (~9), trucks and buses (>= 15).
SIZE_BINS: tuple[tuple[str, float, float], ...] = (("small (< 4 m²)", 0.0, 4.0), ("medium (4-15 m²)", 4.0, 15.0),
                                                    ("large (≥ 15 m²)", 15.0, float("inf")))


def iou_by_size(pred: np.ndarray, target: np.ndarray, valid: np.ndarray, area_m2: np.ndarray,
                bins: tuple[tuple[str, float, float], ...] = SIZE_BINS) -> dict[str, tuple[int, int]]:
    """{bin name: (intersection, union) in cells} of one BEV map (X, Y), split by object size: every cell
    belongs to the size bin of its nearest ground-truth vehicle cell (``area_m2``: the footprint of the box
    covering a vehicle cell, m²), so a false positive counts against the size of the object it lies
    nearest to, and the IoU of small objects cannot be bought by marking vehicles everywhere (recall
    alone could). ``target`` / ``valid`` / ``pred`` bool; invalid cells are left out. A map without
    vehicles adds nothing. Sum over samples, divide once."""
    from scipy import ndimage

    gt, pred, valid = target.astype(bool), pred.astype(bool), valid.astype(bool)
    out = {name: (0, 0) for name, _, _ in bins}
    if not gt.any():
        return out
    _, nearest = ndimage.distance_transform_edt(~gt, return_indices=True)
    region_area = area_m2[nearest[0], nearest[1]]
    for name, lo, hi in bins:
        region = valid & (region_area >= lo) & (region_area < hi)
        out[name] = (int((pred & gt & region).sum()), int(((pred | gt) & region).sum()))
    return out
