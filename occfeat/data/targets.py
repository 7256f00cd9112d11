"""Voxel feature targets for the occupancy-guided distillation loss (paper §3.3).

For each OCCUPIED voxel: project its centre into every camera, bilinearly sample that camera's teacher
feature map where the projection is valid (in front of the camera and inside the image), and average
over the valid cameras. Voxels that no camera sees are marked invalid and left out of the loss.

Computed on the fly on the training device from the stored 2D maps (``occfeat extract``). The work is
sparse: only occupied voxels and only their valid (voxel, camera) pairs are sampled — a dense
(C, X, Y, Z) volume would be 384 x 200 x 200 x 8 = 123M floats per sample at the paper's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from occfeat.geometry import apply_4x4, in_image, pixels_to_grid_sample, project_points
from occfeat.grid import BevGrid


def occupied_voxel_centers(idx: torch.Tensor, grid: BevGrid, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ego-frame centres (M, 3) of voxels given as ``idx`` (M, 4) long ``[b, x, y, z]``.

    Looks the centres up in :meth:`BevGrid.axis_centers` per axis, so no dense (X, Y, Z, 3) array is built.
    """
    axes = [torch.as_tensor(grid.axis_centers(a), dtype=dtype, device=idx.device) for a in range(3)]
    return torch.stack([axes[a][idx[:, a + 1]] for a in range(3)], dim=-1)


# Why teacher maps are sampled at occfeat.geometry.pixels_to_grid_sample of the STORED pixel (2u/W - 1):
# extraction resized the WHOLE stored image (W x H, no crop, no pad) to the
# teacher input Wp*14 x Hp*14, and each patch token covers exactly 14 x 14 input pixels. So a stored
# pixel coordinate u lands at u * Wp / W in feature-map cells (cell j spans [j, j+1), centre j+0.5),
# and ``grid_sample(align_corners=False)`` maps -1 / +1 to the outer EDGES of the first / last cell,
# i.e. x_norm = 2 * (u * Wp / W) / Wp - 1 = 2u/W - 1. Neither the patch size nor the teacher input
# size appears; only the stored image size does. (This holds because extract never crops or pads.)


def _image_wh(image_hw, B: int, S: int, device, dtype) -> torch.Tensor:
    """(B, S, 2) as (W, H) from a (B, S, 2) (H, W) tensor or a single (H, W) tuple."""
    hw = torch.as_tensor(image_hw, dtype=dtype, device=device)
    if hw.ndim == 1:
        hw = hw.expand(B, S, 2)
    assert hw.shape == (B, S, 2), f"image_hw must be (H, W) or (B, S, 2), got {tuple(hw.shape)}"
    return hw.flip(-1)


def voxel_feature_targets(
    occupancy: torch.Tensor,
    features: torch.Tensor,
    K: torch.Tensor,
    cam_T_ego: torch.Tensor,
    image_hw: torch.Tensor | tuple[int, int],
    grid: BevGrid,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher feature targets of the occupied voxels (paper §3.3).

    Args:
        occupancy: (B, X, Y, Z) bool, the grid's layout.
        features: (B, S, Hp, Wp, C) teacher patch features per camera (any float dtype), cameras in
            ``occfeat.data.index.CAMERAS`` order, each computed from the whole stored image resized.
        K: (B, S, 3, 3) intrinsics at the STORED image size (``CameraFrame.K``), not an augmented input.
        cam_T_ego: (B, S, 4, 4) grid frame → camera: ``CameraFrame.cam_T_ego`` (key-frame ego → camera)
            composed with the sample's reference frame, ``cam_T_ego_raw @ inv(ref_T_ego)`` (the dataset
            item's ``cam_T_ego``), so the voxel centres of the frame R are projected.
        image_hw: stored image sizes, (B, S, 2) as (H, W), or one (H, W) for all cameras.
        grid: the occupancy's grid.

    Returns:
        idx (M, 4) long ``[b, x, y, z]`` of every occupied voxel (``occupancy.nonzero()`` order);
        target (M, C) float32, mean over valid cameras of the bilinearly sampled features (0 where invalid);
        valid (M,) bool, False where no camera has a valid projection (exclude from the loss).
    """
    B, X, Y, Z = occupancy.shape
    _, S, Hp, Wp, C = features.shape
    assert (X, Y, Z) == grid.shape, f"occupancy {(X, Y, Z)} does not match the grid {grid.shape}"
    assert features.shape[0] == B and K.shape == (B, S, 3, 3) and cam_T_ego.shape == (B, S, 4, 4), (
        f"batch/camera shapes disagree: features {tuple(features.shape)}, K {tuple(K.shape)}, "
        f"cam_T_ego {tuple(cam_T_ego.shape)}"
    )
    device = features.device
    idx = occupancy.nonzero()  # (M, 4), sorted by batch element
    M = idx.shape[0]
    target = torch.zeros(M, C, dtype=torch.float32, device=device)
    if M == 0:
        return idx, target, torch.zeros(0, dtype=torch.bool, device=device)

    # Pad the voxels per batch element to (B, Mmax, 3) so the projection is one batched matmul against
    # each sample's own cameras (gathering a 4x4 per voxel would cost M x S x 16 floats).
    b = idx[:, 0]
    counts = torch.bincount(b, minlength=B)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(M, device=device) - starts[b]
    Mmax = int(counts.max())
    pts = torch.zeros(B, Mmax, 3, dtype=torch.float32, device=device)
    pts[b, local] = occupied_voxel_centers(idx, grid)
    real = torch.zeros(B, Mmax, dtype=torch.bool, device=device)
    real[b, local] = True

    pts_cam = apply_4x4(cam_T_ego.float(), pts[:, None])  # (B, S, Mmax, 3)
    uv, in_front = project_points(K.float(), pts_cam)  # (B, S, Mmax, 2), (B, S, Mmax)
    wh = _image_wh(image_hw, B, S, device, torch.float32)  # (B, S, 2)
    seen = in_front & in_image(uv, wh[..., 0:1], wh[..., 1:2]) & real[:, None]  # (B, S, Mmax)

    # Sample only the valid (view, voxel) pairs: one grid_sample over all B*S views, each view's pairs
    # packed to the front of a row of length n_max (the busiest view's count).
    view, m = seen.flatten(0, 1).nonzero(as_tuple=True)  # view = b*S + s, sorted by view
    if view.numel():
        per_view = torch.bincount(view, minlength=B * S)
        rank = torch.arange(view.numel(), device=device) - (torch.cumsum(per_view, 0) - per_view)[view]
        n_max = int(per_view.max())
        coords = torch.zeros(B * S, 1, n_max, 2, dtype=torch.float32, device=device)
        coords[view, 0, rank] = pixels_to_grid_sample(uv.flatten(0, 1)[view, m], wh.flatten(0, 1)[view])
        maps = features.flatten(0, 1).permute(0, 3, 1, 2).float()  # (B*S, C, Hp, Wp)
        # border padding: a point inside the image but beyond the outermost patch centres takes the edge
        # patch's feature instead of fading towards zero (zeros padding would bias border voxels).
        sampled = F.grid_sample(maps, coords, mode="bilinear", padding_mode="border", align_corners=False)
        sampled = sampled[view, :, 0, rank]  # (P, C)
        voxel = starts[view // S] + m  # back to the row in idx
        target.index_add_(0, voxel, sampled)
    n_seen = seen.sum(1)  # (B, Mmax) cameras per voxel
    n_seen = n_seen[b, local]  # (M,)
    valid = n_seen > 0
    target = target / n_seen.clamp(min=1)[:, None].float()
    return idx, target, valid


def pixel_depth_bins(points: torch.Tensor, mask: torch.Tensor, cam_T_ego: torch.Tensor, K: torch.Tensor,
                     hw: tuple[int, int], bins: tuple[float, float, float], near: float = 0.1) -> torch.Tensor:
    """Per-pixel LiDAR depth bins of the perspective pretraining objective (BEVDepth's depth target).

    points (B, M, 3) LiDAR points in the grid's frame R, mask (B, M) bool (real rows of the padding);
    cam_T_ego (B, S, 4, 4) R → camera; K (B, S, 3, 3) of an image of size ``hw`` (H, W) (the encoder's
    feature map: the input's intrinsics scaled by 1 / stride); bins (min, max, step) in metres.
    Returns (B, S, H, W) long: the bin of the nearest point projecting into the pixel, -1 where no point
    does or it lies outside [min, max)."""
    B, S = cam_T_ego.shape[:2]
    H, W = hw
    pts = apply_4x4(cam_T_ego.float(), points.float()[:, None])  # (B, S, M, 3)
    uv, front = project_points(K.float(), pts, min_depth=near)
    col, row = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    ok = front & mask[:, None].bool() & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    view = torch.arange(B * S, device=pts.device).view(B, S, 1).expand_as(ok)
    flat = (view * H * W + row * W + col)[ok]
    depth = torch.full((B * S * H * W,), float("inf"), device=pts.device)
    depth.scatter_reduce_(0, flat, pts[..., 2][ok], reduce="amin")
    lo, hi, step = bins
    idx = torch.floor((depth - lo) / step)
    n = int(round((hi - lo) / step))
    out = torch.where(torch.isfinite(depth) & (idx >= 0) & (idx < n), idx, torch.full_like(idx, -1))
    return out.long().view(B, S, H, W)


def pixel_feature_targets(features: torch.Tensor, K_orig: torch.Tensor, image_hw_orig: torch.Tensor, K: torch.Tensor,
                          hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher feature under each pixel of an image of size ``hw`` with intrinsics K (B, S, 3, 3) (the
    encoder's feature map of an augmented input), taken from the cached teacher maps features
    (B, S, Hp, Wp, C) of the stored images (``K_orig``, ``image_hw_orig`` (B, S, 2) as (H, W)): the pixel
    centre is moved into the stored image by K_orig · K⁻¹ (same camera, resized and cropped) and the map
    sampled bilinearly there. Returns (target (B, S, H, W, C) float32, valid (B, S, H, W) bool: the pixel
    centre falls inside the stored image — a crop's zero padding has no teacher feature)."""
    B, S, Hp, Wp, C = features.shape
    H, W = hw
    v, u = torch.meshgrid(torch.arange(H, device=K.device) + 0.5, torch.arange(W, device=K.device) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).view(1, 1, H * W, 3).float()
    M = K_orig.float() @ torch.linalg.inv(K.float())  # (B, S, 3, 3)
    p = pix @ M.transpose(-1, -2)
    uv = p[..., :2] / p[..., 2:3]  # (B, S, H*W, 2) in the stored image
    wh = image_hw_orig.flip(-1).float()[:, :, None]  # (B, S, 1, 2) as (W, H)
    valid = in_image(uv, wh[..., 0], wh[..., 1])
    maps = features.flatten(0, 1).permute(0, 3, 1, 2).float()
    grid = pixels_to_grid_sample(uv, wh).flatten(0, 1)[:, None]  # (B*S, 1, H*W, 2)
    sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (B*S, C, 1, H*W)
    target = sampled[:, :, 0].transpose(1, 2).reshape(B, S, H, W, C)
    return target, valid.view(B, S, H, W)
