"""Cross-modal BEV distillation terms (BEVDistill, DistillBEV) as pure functions on BEV tensors.

A camera student's BEV features imitate a frozen teacher's on the same grid, cell for cell (the LiDAR
teacher of ``occfeat teacher`` shares the student's grid, so the student side needs only a 1x1 adapter
φ, applied by the caller). Layouts follow occfeat.grid: features (B, C, X, Y), per-cell maps (B, X, Y),
grid cell [ix, iy] covers ``lower + (ix, iy) * voxel`` .. ``+ voxel``.

BEVDistill (Chen et al., ICLR 2023, §3.2; official code ``bev_distiller.py: get_bev_fit_loss``):
    L_dense = Σ_{b,c,x,y} W·(F_T − φ(F_S))² / Σ_{b,x,y} W
with W Gaussians at the GT box centres merged by max. Two ways to size them: the code's
(:func:`centerpoint_radius` with min_overlap 0.1, radius ≥ 1 cell, σ = (2r + 1) / 6: the default) and the
paper's (σ = 2 cells). Optional: an InfoNCE critic between student and teacher features at sampled
foreground cells (:func:`info_nce`, T = 0.07, the paper's instance term without its query decoder).

DistillBEV (Wang et al., ICCV 2023, §3): over several BEV stages,
    L = Σ_{b,c,x,y} α_region · s · a · (F_T − φ(F_S))² / B
with three regions (:func:`region_masks`): foreground (cell inside a GT box), false positive (teacher
probability > 0.1 outside the boxes) and background; scale factors (:func:`scale_factors`)
s = sqrt(cell area / box area) inside a box, 1 / N_region elsewhere; and spatial attention
(:func:`spatial_attention`) a = H·W·softmax(mean_c |F| / 0.5), detached, from the teacher or the mean
of teacher and student. Implemented from the paper's equations, not from its (CC BY-NC-SA) code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# BEVDistill's official code: CenterPoint's radius at min_overlap 0.1, at least one cell.
MIN_OVERLAP = 0.1
MIN_RADIUS = 1
PAPER_SIGMA = 2.0  # BEVDistill §3.2: "σ ... set to 2" (cells)
NCE_TEMPERATURE = 0.07  # BEVDistill's instance term
FP_THRESHOLD = 0.1  # DistillBEV: teacher probability above which a cell outside the boxes is a false positive
ATTENTION_TEMPERATURE = 0.5  # DistillBEV's spatial attention


def centerpoint_radius(length: float, width: float, min_overlap: float = MIN_OVERLAP) -> float:
    """CenterPoint's ``gaussian_radius`` of a box ``length`` × ``width`` (grid cells): the smallest of the
    three corner-shift radii at which a shifted box still overlaps the GT by ``min_overlap`` (CornerNet's
    quadratics). Kept as CenterPoint computes it — each root divided by 2, not by 2a — because
    BEVDistill's masks are drawn with exactly that radius."""
    h, w, o = float(length), float(width), float(min_overlap)
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, centre: tuple[int, int], radius: int, sigma: float | None = None) -> None:
    """Max-merge a Gaussian into ``heatmap`` (X, Y) in place, peak 1 at cell ``centre`` (ix, iy), over the
    (2r + 1)² window clipped at the borders. ``sigma`` None: (2r + 1) / 6, CenterPoint's
    ``draw_heatmap_gaussian``."""
    r = int(radius)
    s = (2 * r + 1) / 6 if sigma is None else float(sigma)
    d = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * s * s))
    g[g < np.finfo(np.float64).eps * g.max()] = 0
    X, Y = heatmap.shape
    ix, iy = int(centre[0]), int(centre[1])
    x0, x1, y0, y1 = max(0, ix - r), min(X, ix + r + 1), max(0, iy - r), min(Y, iy + r + 1)
    if x0 >= x1 or y0 >= y1:
        return
    window = g[x0 - ix + r: x1 - ix + r, y0 - iy + r: y1 - iy + r]
    np.maximum(heatmap[x0:x1, y0:y1], window.astype(heatmap.dtype), out=heatmap[x0:x1, y0:y1])


def foreground_gaussians(boxes: np.ndarray, shape: tuple[int, int], sigma: float | None = None) -> np.ndarray:
    """BEVDistill's foreground weights W (X, Y) float32 from ``boxes`` (N, 4): centre (ix, iy) in
    continuous cell units (``(p - lower) / voxel``, so cell k spans [k, k + 1)), length and width in
    cells. ``sigma`` None: the official code's CenterPoint radius (:func:`centerpoint_radius`, ≥ 1 cell,
    σ = (2r + 1) / 6); a number: the paper's fixed σ (window radius ceil(3σ)). Boxes whose centre cell
    lies outside the grid are skipped, as the code does."""
    heat = np.zeros(shape, np.float32)
    for cx, cy, length, width in np.asarray(boxes, np.float64).reshape(-1, 4):
        if length <= 0 or width <= 0:
            continue
        ix, iy = math.floor(cx), math.floor(cy)
        if not (0 <= ix < shape[0] and 0 <= iy < shape[1]):
            continue
        if sigma is None:
            draw_gaussian(heat, (ix, iy), max(MIN_RADIUS, int(centerpoint_radius(length, width))))
        else:
            draw_gaussian(heat, (ix, iy), math.ceil(3 * sigma), sigma)
    return heat


def dense_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BEVDistill's L_dense: Σ W·‖F_T − F_S‖²₂ (summed over channels) / Σ W (over cells).

    student (B, C, X, Y) — already through the adapter φ; teacher (B, C, X, Y), no gradient flows into it;
    weight (B, X, Y) ≥ 0. Returns 0, still attached to the student's graph, when every weight is 0."""
    assert student.shape == teacher.shape, f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must match"
    assert weight.shape == student.shape[:1] + student.shape[2:], f"weight {tuple(weight.shape)} must be (B, X, Y)"
    se = ((student.float() - teacher.detach().float()) ** 2).sum(dim=1)
    w = weight.float()
    return (se * w).sum() / w.sum().clamp(min=1e-12)


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float = NCE_TEMPERATURE) -> torch.Tensor:
    """InfoNCE between M paired feature vectors: student (M, C) against teacher (M, C), positives on the
    diagonal, the other M − 1 teacher vectors as negatives, cosine similarity / T (BEVDistill's critic,
    T = 0.07). The teacher is detached."""
    assert student.shape == teacher.shape and student.ndim == 2, f"student {tuple(student.shape)} / teacher {tuple(teacher.shape)} must be equal (M, C)"
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.detach().float(), dim=1)
    logits = s @ t.T / temperature
    return F.cross_entropy(logits, torch.arange(len(s), device=s.device))


def region_masks(inside_box: torch.Tensor, teacher_prob: torch.Tensor, threshold: float = FP_THRESHOLD):
    """DistillBEV's three disjoint regions, each (B, X, Y) bool: foreground = cells inside a GT box;
    false positive = outside every box with teacher probability > ``threshold``; background = the rest."""
    fg = inside_box.bool()
    fp = ~fg & (teacher_prob > threshold)
    return fg, fp, ~fg & ~fp


def scale_factors(fg: torch.Tensor, fp: torch.Tensor, bg: torch.Tensor, box_area: torch.Tensor) -> torch.Tensor:
    """DistillBEV's scale-adaptive factor s (B, X, Y): sqrt(cell area / box area) = 1 / sqrt(box area in
    cells) on foreground cells (``box_area`` (B, X, Y) the area of the box covering the cell, the smallest
    where boxes overlap), 1 / N_fp on false-positive cells and 1 / N_bg on background cells (N counted per
    sample), so every region weighs by its own size and large boxes do not drown small ones."""
    s = torch.zeros(fg.shape, dtype=torch.float32, device=fg.device)
    area = box_area.float().clamp(min=1e-12)
    s = torch.where(fg, area.rsqrt(), s)
    for region in (fp, bg):
        n = region.flatten(1).sum(dim=1).clamp(min=1).float()[:, None, None]
        s = torch.where(region, 1.0 / n, s)
    return s


def spatial_attention(*features: torch.Tensor, temperature: float = ATTENTION_TEMPERATURE) -> torch.Tensor:
    """DistillBEV's spatial attention a (B, X, Y) = H·W·softmax over cells of mean_c |F| / T, detached.
    One tensor (B, C, X, Y): the teacher's; several: the mean of their per-cell magnitudes (teacher and
    student). Its mean over the cells of a sample is 1."""
    g = torch.stack([f.detach().float().abs().mean(dim=1) for f in features]).mean(dim=0)  # (B, X, Y)
    B, X, Y = g.shape
    return X * Y * torch.softmax((g / temperature).flatten(1), dim=1).view(B, X, Y)


def region_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, fg: torch.Tensor, fp: torch.Tensor,
                             bg: torch.Tensor, scale: torch.Tensor, attention: torch.Tensor,
                             alpha_fg: float, alpha_fp: float, alpha_bg: float) -> torch.Tensor:
    """DistillBEV's term at one stage: Σ_{b,c,x,y} α_region·s·a·(F_T − F_S)² / B.

    student (B, C, X, Y) after the adapter, teacher (B, C, X, Y) (detached here); fg/fp/bg (B, X, Y) bool
    from :func:`region_masks`; scale from :func:`scale_factors`; attention from :func:`spatial_attention`."""
    assert student.shape == teacher.shape, f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must match"
    se = ((student.float() - teacher.detach().float()) ** 2).sum(dim=1)  # (B, X, Y)
    alpha = fg.float() * alpha_fg + fp.float() * alpha_fp + bg.float() * alpha_bg
    return (alpha * scale.float() * attention.detach().float() * se).sum() / student.shape[0]


def component_sizes(mask: np.ndarray) -> np.ndarray:
    """A mask of one sample, any number of dimensions (BEV cells (X, Y), voxels (X, Y, Z)) → float32 of
    its shape: the size in cells of the face-connected region each cell belongs to (4-connected in 2D),
    0 outside. DistillBEV's "box area" where there are no boxes: map regions, occupied components."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask, bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float32)
    sizes[0] = 0.0
    return sizes[labels]


def balanced_occupancy_weights(occupied: torch.Tensor, predicted: torch.Tensor, alpha_fg: float, alpha_fp: float,
                               alpha_bg: float, threshold: float = 0.5, attention: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced OccFeat's per-voxel weights (DistillBEV's decomposition, label-free): regions from LiDAR
    — foreground = occupied voxels, false positive = voxels LiDAR says free that the student calls
    occupied (``predicted`` probability > ``threshold``), background = the rest — each summing to its α
    per sample. Inside the foreground DistillBEV's scale 1 / sqrt(size of the voxel's occupied component)
    times ``attention`` (B, X, Y, Z; 1 when None) sets the shares, so a small object weighs as much as a
    large one's sqrt; false-positive and background voxels share their α equally (1 / N).
    occupied (B, X, Y, Z) bool, predicted (B, X, Y, Z) in [0, 1] → (B, X, Y, Z) float32, no gradient."""
    occ = occupied.bool()
    fp = ~occ & (predicted.detach() > threshold)
    bg = ~occ & ~fp
    sizes = torch.from_numpy(np.stack([component_sizes(m) for m in occ.cpu().numpy()])).to(predicted.device)
    dims = tuple(range(1, occ.ndim))
    fg_share = torch.where(occ, sizes.clamp(min=1.0).rsqrt(), torch.zeros_like(sizes))
    if attention is not None:
        fg_share = fg_share * attention.detach().float()
    w = alpha_fg * fg_share / fg_share.sum(dim=dims, keepdim=True).clamp(min=1e-12)
    n_fp = fp.sum(dim=dims, keepdim=True).clamp(min=1).float()
    n_bg = bg.sum(dim=dims, keepdim=True).clamp(min=1).float()
    w = torch.where(fp, alpha_fp / n_fp, w)
    return torch.where(bg, alpha_bg / n_bg, w)
