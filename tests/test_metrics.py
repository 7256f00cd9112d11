"""IoU accumulated over a split, on hand-made masks."""

import math

import torch

from occfeat.metrics import IoUAccumulator

BIG = 10.0  # a logit far from the 0.5 threshold


def _logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, BIG, -BIG)


def test_iou_accumulates_over_batches_not_mean_of_batches():
    acc = IoUAccumulator(["vehicle"])
    # batch 1: one target cell, predicted -> IoU 1 on its own
    t1 = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    t1[0, 0, 0, 0] = True
    acc.update(_logits(t1), t1)
    # batch 2: three target cells, nothing predicted -> IoU 0 on its own
    t2 = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    t2[0, 0, 1, :3] = True
    acc.update(_logits(torch.zeros_like(t2)), t2)
    # split IoU: I = 1, U = 1 + 3 = 4 -> 0.25 (the mean of per-batch IoUs would be 0.5)
    assert acc.iou()["vehicle"] == 0.25
    assert acc.summary()["intersection"]["vehicle"] == 1 and acc.summary()["union"]["vehicle"] == 4


def test_iou_per_class_threshold_and_valid_mask():
    acc = IoUAccumulator(["a", "b"])
    target = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    logits = torch.full((2, 2, 3, 3), -BIG)
    # class a: 2 targets, 3 predictions, 2 overlap -> I=2, U=3
    target[0, 0, 0, 0] = target[1, 0, 2, 2] = True
    logits[0, 0, 0, 0] = logits[1, 0, 2, 2] = BIG
    logits[0, 0, 1, 1] = BIG  # false positive
    # class b: a logit of exactly 0 is probability 0.5 -> counts as positive (>= threshold)
    target[0, 1, 2, 0] = True
    logits[0, 1, 2, 0] = 0.0
    logits[0, 1, 0, 2] = -0.01  # probability just under 0.5 -> negative
    # invalid cell hides a false positive of class a in sample 1
    logits[1, 0, 0, 1] = BIG
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    valid[1, 0, 1] = False
    acc.update(logits, target, valid)
    iou = acc.iou()
    assert math.isclose(iou["a"], 2 / 3)
    assert iou["b"] == 1.0
    assert math.isclose(acc.mean(), (2 / 3 + 1) / 2)


def test_iou_of_a_class_never_seen_is_nan_and_left_out_of_the_mean():
    acc = IoUAccumulator(["seen", "never"])
    target = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    target[0, 0, 0, 0] = True
    acc.update(_logits(target), target)
    assert math.isnan(acc.iou()["never"])
    assert acc.mean() == 1.0


def test_iou_by_size_charges_each_false_positive_to_the_nearest_objects_size():
    import numpy as np

    from occfeat.metrics import iou_by_size

    target = np.zeros((8, 8), bool)
    area = np.zeros((8, 8))
    target[0, 0:2], area[0, 0:2] = True, 1.5  # a motorcycle: 2 cells, top left
    target[6:8, 5:8], area[6:8, 5:8] = True, 9.0  # a car: 6 cells, bottom right
    valid = np.ones((8, 8), bool)
    valid[7, 7] = False  # one car cell excluded (low visibility): counted nowhere
    pred = np.zeros((8, 8), bool)
    pred[0, 0] = True  # half the motorcycle
    pred[1, 1] = True  # a false positive beside the motorcycle: charged to the small objects
    pred[6, 5] = pred[5, 7] = True  # one car cell found, a false positive beside the car
    out = iou_by_size(pred, target, valid, area)
    assert out == {"small (< 4 m²)": (1, 3), "medium (4-15 m²)": (1, 6), "large (≥ 15 m²)": (0, 0)}
    everywhere = iou_by_size(np.ones((8, 8), bool), target, valid, area)
    assert everywhere["small (< 4 m²)"][0] == 2 and everywhere["small (< 4 m²)"][1] > 10  # recall 1, IoU small
    assert iou_by_size(pred, np.zeros((8, 8), bool), valid, area)["small (< 4 m²)"] == (0, 0)
