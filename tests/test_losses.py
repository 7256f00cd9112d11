"""Losses of paper eqs. 1-3 and the segmentation loss, on hand-made inputs with hand-computed values."""

import math

import numpy as np
import pytest
import torch

from occfeat.errors import OccfeatError
from occfeat.losses import (
    MapSegLoss,
    VehicleSegLoss,
    balanced_mse_loss,
    feature_distillation_loss,
    occupancy_loss,
    offset_loss,
    segmentation_loss,
    uncertainty_weighted,
)


def test_occupancy_loss_by_hand():
    # one column (X=Y=1) with Z=2: bin 0 occupied with logit 0, bin 1 empty with logit ln 3 (p = 3/4)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    occ = torch.tensor([True, False]).view(1, 1, 1, 2)
    expected = (math.log(2.0) + math.log(4.0)) / 2  # -ln(1/2), -ln(1 - 3/4)
    assert occupancy_loss(logits, occ).item() == pytest.approx(expected, rel=1e-6)


def test_occupancy_loss_layout_against_numpy():
    # X, Y, Z all different so a wrong permute cannot pass
    rng = np.random.default_rng(0)
    B, X, Y, Z = 2, 3, 4, 5
    logits = rng.normal(size=(B, Z, X, Y))
    occ = rng.random((B, X, Y, Z)) < 0.3
    p = 1 / (1 + np.exp(-logits.transpose(0, 2, 3, 1)))  # back to (B, X, Y, Z)
    ref = -np.mean(np.where(occ, np.log(p), np.log(1 - p)))
    got = occupancy_loss(torch.tensor(logits), torch.tensor(occ))
    assert got.item() == pytest.approx(ref, rel=1e-5)
    with pytest.raises(AssertionError, match="does not fit"):
        occupancy_loss(torch.tensor(logits), torch.tensor(occ).permute(0, 3, 1, 2))


def test_feature_distillation_cosine_and_mask():
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[3.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    valid = torch.tensor([True, True, False])  # the third (cos 0) must not count
    loss = feature_distillation_loss(pred, target, valid)
    assert loss.item() == pytest.approx(-(1.0 + 1 / math.sqrt(2)) / 2, rel=1e-6)
    loss.backward()
    assert torch.all(pred.grad[2] == 0) and pred.grad[1].abs().sum() > 0


def test_feature_distillation_none_valid_is_zero_with_grad():
    pred = torch.randn(4, 3, requires_grad=True)
    loss = feature_distillation_loss(pred, torch.randn(4, 3), torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(pred.grad == 0)
    empty = feature_distillation_loss(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 3), torch.zeros(0, dtype=torch.bool))
    assert empty.item() == 0.0


def _inputs():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    occ = torch.tensor([True, False]).view(1, 1, 1, 2)
    pred, target = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    return logits, occ, pred, target, torch.tensor([True])


L_OCC = 1.5 * math.log(2.0)
L_FEAT = -1 / math.sqrt(2)


def test_segmentation_loss_mask_and_pos_weight():
    logits = torch.zeros(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    valid = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    ln2 = math.log(2.0)
    assert segmentation_loss(logits, target).item() == pytest.approx(ln2)
    assert segmentation_loss(logits, target, valid).item() == pytest.approx(ln2)
    # pos_weight 3 on the one valid positive: (3 ln2 + ln2) / 2
    assert segmentation_loss(logits, target, valid, pos_weight=3.0).item() == pytest.approx(2 * ln2)
    none = segmentation_loss(logits.requires_grad_(), target, torch.zeros_like(valid))
    assert none.item() == 0.0 and none.requires_grad


def test_balanced_mse_by_hand():
    # positives (target > 0.5): errors 0.5^2 and 0; negatives: 0.2^2, 0.4^2, 0 (target 0.5 is neither).
    target = torch.tensor([1.0, 0.8, 0.0, 0.1, 0.0, 0.5]).view(1, 1, 1, 6)
    pred = torch.tensor([0.5, 0.8, 0.2, 0.5, 0.0, 0.9]).view(1, 1, 1, 6)
    pos, neg = (0.25 + 0.0) / 2, (0.04 + 0.16 + 0.0) / 3
    assert balanced_mse_loss(pred, target).item() == pytest.approx(0.5 * (pos + neg), rel=1e-6)
    valid = torch.tensor([True, False, True, True, True, True]).view(1, 1, 1, 6)
    assert balanced_mse_loss(pred, target, valid).item() == pytest.approx(0.5 * (0.25 + neg), rel=1e-6)


def test_offset_loss_sums_channels_and_averages_over_the_mask():
    pred = torch.tensor([[1.0, 0.0, 5.0], [2.0, -1.0, 5.0]]).view(1, 2, 1, 3)
    target = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(1, 2, 1, 3)
    mask = torch.tensor([True, True, False]).view(1, 1, 1, 3)  # the third cell (error 10) is not a vehicle
    assert offset_loss(pred, target, mask).item() == pytest.approx((3.0 + 2.0) / 2)
    assert offset_loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_uncertainty_weighting_by_hand():
    w = torch.tensor(math.log(2.0), requires_grad=True)
    got = uncertainty_weighted(torch.tensor(3.0), w, 10.0)
    assert got.item() == pytest.approx(10 * 3 / 2 + 0.5 * math.log(2.0))
    got.backward()
    assert w.grad.item() == pytest.approx(-15.0 + 0.5)  # d/dw: -scale·L·e^-w + 1/2


def test_vehicle_seg_loss_combines_the_terms_like_simple_bev():
    loss = VehicleSegLoss()
    assert sorted(n for n, _ in loss.named_parameters()) == ["ce_weight", "center_weight", "offset_weight"]
    out = {"segmentation": torch.zeros(1, 1, 1, 2), "center": torch.tensor([0.5, 0.5]).view(1, 1, 1, 2),
           "offset": torch.tensor([[1.0, 7.0], [1.0, 7.0]]).view(1, 2, 1, 2)}
    batch = {"target": torch.tensor([1.0, 0.0]).view(1, 1, 1, 2), "valid": torch.ones(1, 1, 2, dtype=torch.bool),
             "center": torch.tensor([1.0, 0.0]).view(1, 1, 1, 2), "offset": torch.zeros(1, 2, 1, 2)}
    ce = (2.13 * math.log(2.0) + math.log(2.0)) / 2  # logit 0: -ln(1/2) per cell, the positive x 2.13
    center = 0.5 * (0.25 + 0.25)
    offset = 2.0  # only the vehicle cell: |1| + |1|
    with torch.no_grad():
        loss.ce_weight.fill_(math.log(4.0))
        loss.center_weight.fill_(0.0)
        loss.offset_weight.fill_(1.0)
    total, terms = loss(out, batch)
    expected = 10 * ce / 4 + 0.5 * math.log(4.0) + center / 2 + offset / (2 * math.e) + 0.5
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["loss_center"].item() == pytest.approx(center) and terms["loss_offset"].item() == pytest.approx(offset)
    assert terms["w_ce"].item() == pytest.approx(math.log(4.0)) and not terms["loss"].requires_grad
    # An invalid vehicle cell counts in neither the BCE nor the offset term.
    batch["valid"] = torch.tensor([False, True]).view(1, 1, 2)
    _, terms = loss(out, batch)
    assert terms["loss_ce"].item() == pytest.approx(math.log(2.0)) and terms["loss_offset"].item() == 0.0


def test_map_seg_loss_is_plain_bce_over_classes_and_valid_cells():
    out = {"segmentation": torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)}
    batch = {"target": torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), "valid": torch.ones(1, 1, 1, dtype=torch.bool)}
    total, terms = MapSegLoss()(out, batch)
    assert total.item() == pytest.approx((math.log(2.0) + math.log(4.0)) / 2, rel=1e-6)
    assert set(terms) == {"loss", "loss_ce"} and not list(MapSegLoss().parameters())
