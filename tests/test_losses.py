"""Losses of paper eqs. 1-3 and the segmentation loss, on hand-made inputs with hand-computed values."""

import math

import numpy as np
import pytest
import torch

from occfeat.errors import OccfeatError
from occfeat.losses import OccFeatLoss, feature_distillation_loss, occupancy_loss, segmentation_loss


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


@pytest.mark.parametrize(
    "mode,lam,expected",
    [("both", 0.01, L_OCC + 0.01 * L_FEAT), ("both", 0.5, L_OCC + 0.5 * L_FEAT), ("occ", 0.01, L_OCC), ("feat", 0.01, L_FEAT)],
)
def test_occfeat_loss_modes_and_lambda(mode, lam, expected):
    total, terms = OccFeatLoss(mode, lam)(*_inputs())
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["loss_occ"].item() == pytest.approx(L_OCC, rel=1e-6)
    assert terms["loss_feat"].item() == pytest.approx(L_FEAT, rel=1e-6)
    assert not terms["loss"].requires_grad


def test_occfeat_loss_occ_mode_without_features_and_errors():
    logits, occ, *_ = _inputs()
    total, terms = OccFeatLoss("occ")(logits, occ)
    assert total.item() == pytest.approx(L_OCC) and terms["loss_feat"].item() == 0.0
    with pytest.raises(OccfeatError, match="needs pred_feats"):
        OccFeatLoss("both")(logits, occ)
    with pytest.raises(OccfeatError, match="unknown"):
        OccFeatLoss("geometry")
    with pytest.raises(OccfeatError, match=">= 0"):
        OccFeatLoss("both", lam=-1.0)


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
