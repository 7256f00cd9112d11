"""The BEVDistill / DistillBEV terms on hand-made tensors, against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from occfeat.distillation import (
    centerpoint_radius, dense_distillation_loss, draw_gaussian, foreground_gaussians, info_nce,
    region_distillation_loss, region_masks, scale_factors, spatial_attention,
)


def test_centerpoint_radius_is_the_smallest_of_the_three_corner_shift_roots():
    # 2 x 2 cells, min_overlap 0.1: r1 = (4 + sqrt(16 - 4·3.6/1.1)) / 2 = 2.8528, r2 = (8 + sqrt(6.4)) / 2 = 5.2649,
    # r3 = (-0.8 + sqrt(0.64 + 4·0.4·3.6)) / 2 = (-0.8 + sqrt(6.4)) / 2 = 0.86491 → r3
    assert centerpoint_radius(2, 2) == pytest.approx(0.864911, abs=1e-5)
    # 4 x 2 cells: r3 = (-1.2 + sqrt(1.44 + 4·0.4·7.2)) / 2 = (-1.2 + 3.6) / 2 = 1.2
    assert centerpoint_radius(4, 2) == pytest.approx(1.2, abs=1e-9)
    assert centerpoint_radius(4, 2) == centerpoint_radius(2, 4)


def test_draw_gaussian_max_merges_and_clips_at_the_border():
    heat = np.zeros((5, 5), np.float32)
    heat[2, 3] = 0.5
    draw_gaussian(heat, (2, 2), 1)  # σ = (2·1 + 1) / 6 = 0.5: edge e^-2, corner e^-4
    assert heat[2, 2] == pytest.approx(1.0)
    assert heat[1, 2] == pytest.approx(math.exp(-2), rel=1e-6) and heat[3, 3] == pytest.approx(math.exp(-4), rel=1e-6)
    assert heat[2, 3] == pytest.approx(0.5)  # the larger value stays
    assert heat[0, 0] == 0 and heat[2, 4] == 0
    corner = np.zeros((3, 3), np.float32)
    draw_gaussian(corner, (0, 0), 1)
    assert corner[0, 0] == pytest.approx(1.0) and corner[1, 1] == pytest.approx(math.exp(-4), rel=1e-6) and corner[2, 2] == 0


def test_foreground_gaussians_code_radius_paper_sigma_and_out_of_grid_boxes():
    boxes = np.array([[3.5, 4.2, 2.0, 2.0],     # centre cell (3, 4), radius max(1, int(0.86)) = 1
                      [-0.5, 2.0, 4.0, 2.0],    # centre outside the grid: skipped
                      [8.9, 0.1, 0.5, 0.4]])    # tiny box: radius at least 1
    w = foreground_gaussians(boxes, (10, 8))
    assert w[3, 4] == 1 and w[4, 4] == pytest.approx(math.exp(-2), rel=1e-6) and w[4, 5] == pytest.approx(math.exp(-4), rel=1e-6)
    assert w[8, 0] == 1 and w[9, 1] == pytest.approx(math.exp(-4), rel=1e-6)
    assert w[0, 2] == 0 and w[5, 4] == 0 and (w > 0).sum() == 9 + 6
    paper = foreground_gaussians(boxes[:1], (10, 8), sigma=2.0)  # σ = 2 cells, window radius 6
    assert paper[4, 4] == pytest.approx(math.exp(-1 / 8), rel=1e-6) and paper[3, 0] == pytest.approx(math.exp(-16 / 8), rel=1e-6)


def test_dense_distillation_loss_is_the_weighted_channel_summed_squared_error():
    student = torch.zeros(1, 2, 2, 2, requires_grad=True)
    teacher = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[1.0, 0.0], [3.0, 0.0]]]], requires_grad=True)
    weight = torch.tensor([[[1.0, 0.5], [0.0, 0.25]]])
    # per cell Σ_c (T - S)²: [[2, 4], [9, 0]]; Σ W·se = 2 + 2 + 0 + 0 = 4; Σ W = 1.75
    loss = dense_distillation_loss(student, teacher, weight)
    assert loss.item() == pytest.approx(4 / 1.75)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0  # only the student learns
    zero = dense_distillation_loss(student, teacher, torch.zeros(1, 2, 2))
    assert zero.item() == 0 and zero.requires_grad


def test_info_nce_on_orthogonal_pairs():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    t = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    # cosine logits [[1/T, 0], [0, 1/T]]: each row's loss is log(1 + e^{-1/T})
    assert info_nce(s, t, temperature=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_region_masks_scale_factors_and_attention_by_hand():
    inside = torch.tensor([[[True, True, False], [False, False, False]]])
    prob = torch.tensor([[[0.9, 0.0, 0.5], [0.2, 0.05, 0.1]]])
    fg, fp, bg = region_masks(inside, prob)
    assert fg.tolist() == inside.tolist()
    assert fp.tolist() == [[[False, False, True], [True, False, False]]]  # > 0.1 outside the boxes
    assert bg.tolist() == [[[False, False, False], [False, True, True]]]
    area = torch.tensor([[[4.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    s = scale_factors(fg, fp, bg, area)
    assert s.tolist() == [[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]]  # 1/sqrt(4); 1/N_fp = 1/2; 1/N_bg = 1/2
    # attention: per-cell mean |F| of [0, 0.5·ln 3] at T = 0.5 → softmax [1/4, 3/4] → ×(H·W = 2)
    f = torch.tensor([[[[0.0, -0.5 * math.log(3)]], [[0.0, 0.5 * math.log(3)]]]])  # (1, 2, 1, 2)
    a = spatial_attention(f)
    assert a.flatten().tolist() == pytest.approx([0.5, 1.5])
    both = spatial_attention(f, torch.zeros_like(f))  # the mean magnitude halves: softmax of [0, ln 3 / 2]
    r = math.sqrt(3)
    assert both.flatten().tolist() == pytest.approx([2 / (1 + r), 2 * r / (1 + r)])
    big = spatial_attention(torch.randn(3, 4, 5, 6))
    assert torch.allclose(big.mean(dim=(1, 2)), torch.ones(3))


def test_region_distillation_loss_weights_each_region():
    fg = torch.tensor([[[True, False]]])
    fp = torch.tensor([[[False, True]]])
    bg = torch.zeros(1, 1, 2, dtype=torch.bool)
    student = torch.zeros(1, 1, 1, 2, requires_grad=True)
    teacher = torch.tensor([[[[1.0, 2.0]]]])
    scale = torch.tensor([[[0.5, 1.0]]])
    att = torch.tensor([[[2.0, 0.0]]])
    # fg: 6e-3 · 0.5 · 2 · 1 = 6e-3; fp: 6e-2 · 1 · 0 · 4 = 0
    loss = region_distillation_loss(student, teacher, fg, fp, bg, scale, att, 6e-3, 6e-2, 4e-2)
    assert loss.item() == pytest.approx(6e-3)
    loss.backward()
    assert student.grad[0, 0, 0, 0].item() == pytest.approx(-2 * 6e-3) and student.grad[0, 0, 0, 1].item() == 0


def test_balanced_occupancy_weights_on_a_hand_made_grid():
    from occfeat.distillation import balanced_occupancy_weights, component_sizes

    occ = torch.zeros(1, 4, 4, 2, dtype=torch.bool)
    occ[0, 0, 0:2, 0] = True  # a 2-voxel object
    occ[0, 3, 0:2, :] = True  # a 4-voxel object (two voxels stacked on two)
    pred = torch.zeros(1, 4, 4, 2)
    pred[0, 2, 3, 1] = 0.9  # the student calls a free voxel occupied: the one false positive
    pred[0, 0, 0, 0] = 0.9  # occupied and predicted: still foreground
    assert component_sizes(occ[0].numpy())[0, 1, 0] == 2 and component_sizes(occ[0].numpy())[3, 1, 1] == 4
    w = balanced_occupancy_weights(occ, pred, alpha_fg=1.0, alpha_fp=2.0, alpha_bg=3.0)
    fg_sum = 2 / 2**0.5 + 4 / 2  # each voxel's 1/sqrt(component size), over the foreground
    assert torch.isclose(w[0, 0, 0, 0], torch.tensor(1 / 2**0.5 / fg_sum)) and torch.isclose(w[0, 3, 1, 1], torch.tensor(0.5 / fg_sum))
    assert torch.isclose(w[0, 0, 0:2, 0].sum(), w[0, 3, 0:2, :].sum() / 2**0.5)  # the small object: 1/sqrt(2) of the large one's weight, not 1/2
    assert torch.isclose(w[0][occ[0]].sum(), torch.tensor(1.0))
    assert w[0, 2, 3, 1] == 2.0  # α_fp / N_fp with N_fp = 1
    n_bg = 32 - 6 - 1
    assert torch.isclose(w[0, 1, 1, 1], torch.tensor(3.0 / n_bg))
    assert torch.isclose(w[0][~occ[0]].sum(), torch.tensor(2.0 + 3.0))  # each non-foreground region sums to its α
    attention = torch.ones(1, 4, 4, 2)
    attention[0, 0, 0, 0] = 3.0  # attention moves foreground weight within the region, not between regions
    wa = balanced_occupancy_weights(occ, pred, alpha_fg=1.0, alpha_fp=2.0, alpha_bg=3.0, attention=attention)
    assert torch.isclose(wa[0, 0, 0, 0], 3 * wa[0, 0, 1, 0]) and torch.isclose(wa[0][occ[0]].sum(), torch.tensor(1.0))
