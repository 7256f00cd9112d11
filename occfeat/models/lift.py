"""Projection module P_B of Simple-BEV (paper §3.1): lift per-camera feature maps into the voxel grid by
projecting every voxel centre into every camera and bilinearly sampling, then averaging over the cameras
that see the voxel. No depth estimation: every voxel along a ray gets the same feature.

Two implementations of the same map, equal to float tolerance (tests/test_lift_sparse.py):

- :class:`VoxelLift` (the networks' lift): the lift is a fixed sparse linear map from the feature maps to
  the voxels, so it is built once per batch from the geometry (:func:`lift_taps`: the 4 bilinear corners
  of each (voxel, camera) pair whose projection lands in the feature map, weights divided by the number
  of cameras that see the voxel) and applied with ``embedding_bag`` over a channels-last (B·S·Hf·Wf, C)
  feature table. On nuScenes' rig only ~18 % of the pairs are valid (most voxels are seen by one camera),
  and ``embedding_bag``'s backward is a gather, not grid_sample's scatter: benchmarks/lift.py.
- :class:`DenseVoxelLift` (the reference): every voxel sampled in every camera with ``grid_sample`` and
  masked, as Simple-BEV's code does.

Geometry runs in float32 with autocast off (bf16 pixel coordinates would be off by ~1 px at 200 px).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from occfeat.geometry import apply_4x4, in_image, pixels_to_grid_sample, project_points, scale_intrinsics
from occfeat.grid import BevGrid
from occfeat.models.flips import flip_bev


def project_to_feature_pixels(
    points_ego: torch.Tensor,
    cam_T_ego: torch.Tensor,
    K: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ego-frame points into cameras' feature maps, in float32 with autocast off.

    points_ego (N, 3) or (B, N, 3); cam_T_ego (B, 4, 4); K (B, 3, 3) intrinsics of the (H, W) image.
    Returns (uv (B, N, 2) continuous feature-map pixel coordinates, pixel centres at i + 0.5,
    valid (B, N) bool: in front of the camera and inside the feature map).
    """
    H, W = image_hw
    Hf, Wf = feat_hw
    with torch.autocast(device_type=points_ego.device.type, enabled=False):
        Kf = scale_intrinsics(K.float(), Wf / W, Hf / H)
        uv, in_front = project_points(Kf, apply_4x4(cam_T_ego.float(), points_ego.float()))
        return uv, in_front & in_image(uv, Wf, Hf)


def project_to_feature_map(
    points_ego: torch.Tensor,
    cam_T_ego: torch.Tensor,
    K: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`project_to_feature_pixels` with uv as grid (B, N, 2) in grid_sample's [-1, 1] convention
    for align_corners=False."""
    uv, valid = project_to_feature_pixels(points_ego, cam_T_ego, K, image_hw, feat_hw)
    Hf, Wf = feat_hw
    return pixels_to_grid_sample(uv, torch.tensor([Wf, Hf], dtype=uv.dtype, device=uv.device)), valid


def sample_features(feats: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of feats (B, C, Hf, Wf) at grid (B, N, 2) → (B, C, N), in float32."""
    out = F.grid_sample(feats.float(), grid[:, None].float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :, 0]


@dataclass
class LiftTaps:
    """One batch's lift as a sparse linear map from a (B·S·Hp·Wp, C) table of feature-map pixels, each map
    zero-padded by one pixel (Hp, Wp = Hf + 2, Wf + 2; row ``((b·S + s)·Hp + y)·Wp + x``), to the (B·N, C)
    voxels. The padding puts all 4 bilinear corners of a valid projection inside the table (a corner off
    the map reads 0, as grid_sample's zero padding), so corner k of a pair is ``corner[p] + OFFSETS[k]``.
    No gradients: the geometry is fixed."""

    corner: torch.Tensor
    """(P,) long table row of the top-left corner of each valid (voxel, camera) pair, voxel-major."""
    voxel: torch.Tensor
    """(P,) long output row (b·N + n) of each pair."""
    weight: torch.Tensor
    """(P, 4) float32 bilinear weights (corners top-left, top-right, bottom-left, bottom-right) divided by
    the number of cameras that see the voxel."""
    offsets: torch.Tensor
    """(B·N,) long start of each voxel's taps (4 per pair; ``embedding_bag``'s bags, empty if unseen)."""
    corner_offsets: tuple[int, int, int, int]
    """Table-row offset of each corner from the top-left one: (0, 1, Wp, Wp + 1)."""
    table_rows: int
    """B·S·Hp·Wp."""


@torch.no_grad()
def lift_taps(
    centers: torch.Tensor, K: torch.Tensor, cam_T_ego: torch.Tensor, image_hw: tuple[int, int], feat_hw: tuple[int, int]
) -> LiftTaps:
    """The taps of lifting (B, S) feature maps of size feat_hw to the voxel centres (N, 3), or (B, N, 3)
    for centres that differ per sample (:func:`mirrored_voxels`: the BEV flips).

    K (B, S, 3, 3) at the input image size image_hw, cam_T_ego (B, S, 4, 4). Bilinear weights as
    ``grid_sample(align_corners=False, padding_mode="zeros")``: the sample point is x = u - 0.5 in pixel
    indices, so a valid u in [0, Wf) has corners in [-1, Wf], inside the padded map.
    """
    B, S = K.shape[:2]
    N = centers.shape[-2]
    Hp, Wp = feat_hw[0] + 2, feat_hw[1] + 2
    if centers.ndim == 3:  # per-sample centres, the same for each of a sample's cameras
        centers = centers[:, None].expand(B, S, N, 3).reshape(B * S, N, 3)
    uv, valid = project_to_feature_pixels(centers, cam_T_ego.flatten(0, 1), K.flatten(0, 1), image_hw, feat_hw)
    valid = valid.view(B, S, N)
    cameras = valid.sum(1)  # (B, N) how many cameras see each voxel
    b, n, s = valid.permute(0, 2, 1).nonzero(as_tuple=True)  # the valid pairs, sorted by voxel (b, n)
    xy = uv.view(B, S, N, 2)[b, s, n] + 0.5  # - 0.5 to pixel indices, + 1 for the padding
    top_left = xy.floor()
    fx, fy = (xy - top_left).unbind(1)
    corner = (b * S + s) * (Hp * Wp) + top_left[:, 1].long() * Wp + top_left[:, 0].long()
    share = 1.0 / cameras[b, n].float()
    gx, gy = 1.0 - fx, 1.0 - fy
    weight = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], 1) * share[:, None]
    taps_per_voxel = 4 * cameras.flatten()
    offsets = torch.cumsum(taps_per_voxel, 0) - taps_per_voxel
    return LiftTaps(corner, b * N + n, weight, offsets, (0, 1, Wp, Wp + 1), B * S * Hp * Wp)


def mirrored_voxels(shape: tuple[int, int, int], flips: torch.Tensor) -> torch.Tensor:
    """(B, X·Y·Z) long: for each voxel (x, y, z) of sample b (z fastest), the voxel whose centre it takes
    when the volume is flipped along X where flips[b, 0] and along Y where flips[b, 1] (flips (B, 2) bool).

    A BEV flip of the lifted volume (:func:`occfeat.models.flips.flip_bev`) is the lift of the mirrored
    centres, so the sparse lift takes the flips into its taps instead of flipping a 1024-channel volume
    (and its gradient) afterwards."""
    X, Y, Z = shape
    flips = flips.to(dtype=torch.bool)
    ix = torch.arange(X, device=flips.device)
    iy = torch.arange(Y, device=flips.device)
    xs = torch.where(flips[:, :1], X - 1 - ix, ix)  # (B, X)
    ys = torch.where(flips[:, 1:], Y - 1 - iy, iy)  # (B, Y)
    iz = torch.arange(Z, device=flips.device)
    return ((xs[:, :, None, None] * Y + ys[:, None, :, None]) * Z + iz).flatten(1)


def _padded_table(feats: torch.Tensor) -> torch.Tensor:
    """(B, S, C, Hf, Wf) → (B·S·(Hf+2)·(Wf+2), C) float32, channels-last with a zero border."""
    C = feats.shape[2]
    return F.pad(feats.float(), (1, 1, 1, 1)).permute(0, 1, 3, 4, 2).reshape(-1, C)


def _argsort(x: torch.Tensor) -> torch.Tensor:
    """argsort of a 1D integer tensor; on the CPU through numpy, whose sort is ~5-10x faster than torch's
    on the ~10^6 pair keys of a batch (benchmarks/lift.py's backward)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.argsort(x.numpy()))
    return torch.argsort(x)


class _ApplyTaps(torch.autograd.Function):
    """table (R, C) → (B·N, C) = the taps' weighted sums; backward the transposed map, also as
    ``embedding_bag``: pairs sorted by their top-left row once, then each corner's pairs are sorted by
    row too (row = top-left + a constant), so bags per table row come from ``searchsorted``. (Autograd's
    own embedding_bag backward is ~10x slower on CPU.)"""

    @staticmethod
    def forward(ctx, table: torch.Tensor, taps: LiftTaps) -> torch.Tensor:
        ctx.taps = taps
        index = (taps.corner[:, None] + torch.tensor(taps.corner_offsets, device=table.device)).flatten()
        return F.embedding_bag(index, table, taps.offsets, mode="sum", per_sample_weights=taps.weight.flatten())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        taps = ctx.taps
        with torch.no_grad():
            order = _argsort(taps.corner)
            corner, voxel, weight = taps.corner[order], taps.voxel[order], taps.weight[order]
            rows = torch.arange(taps.table_rows, device=grad.device)
            grad = grad.contiguous()
            out = None
            for k, off in enumerate(taps.corner_offsets):
                bags = torch.searchsorted(corner, rows - off)
                part = F.embedding_bag(voxel, grad, bags, mode="sum", per_sample_weights=weight[:, k].contiguous())
                out = part if out is None else out.add_(part)
        return out, None


def apply_taps(feats: torch.Tensor, taps: LiftTaps) -> torch.Tensor:
    """feats (B, S, C, Hf, Wf) → (B·N, C) float32 voxel features (rows as the taps' voxels)."""
    with torch.autocast(device_type=feats.device.type, enabled=False):
        return _ApplyTaps.apply(_padded_table(feats), taps)


class VoxelLift(nn.Module):
    """Image features → voxel volume, mean over the cameras that see each voxel centre (sparse taps).

    forward(feats (B, S, C, Hf, Wf), K (B, S, 3, 3) at the input image size, cam_T_ego (B, S, 4, 4),
    image_hw, flips (B, 2) bool or None) → volume (B, C, Z, X, Y); voxels no camera sees are 0. ``flips``
    returns ``flip_bev(volume, flips)`` by lifting mirrored voxel centres (:func:`mirrored_voxels`), with
    no flip of the volume or of its gradient. The volume is a view of embedding_bag's (B, X, Y, Z, C)
    rows, channels last in memory: SimpleBEV's compressor folds Z into channels in that order
    (:meth:`occfeat.models.simplebev.SimpleBev.compress_volume`) with no layout copy.
    """

    def __init__(self, grid: BevGrid):
        super().__init__()
        self.grid = grid
        centers = torch.from_numpy(grid.voxel_centers()).float().reshape(-1, 3)  # (X·Y·Z, 3), z fastest
        self.register_buffer("centers", centers, persistent=False)

    def forward(
        self,
        feats: torch.Tensor,
        K: torch.Tensor,
        cam_T_ego: torch.Tensor,
        image_hw: tuple[int, int],
        flips: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, S, C, Hf, Wf = feats.shape
        X, Y, Z = self.grid.shape
        centers = self.centers
        if flips is not None and bool(flips.any()):
            centers = centers[mirrored_voxels(self.grid.shape, flips.to(centers.device))]  # (B, N, 3)
        taps = lift_taps(centers, K, cam_T_ego, image_hw, (Hf, Wf))
        return apply_taps(feats, taps).view(B, X, Y, Z, C).permute(0, 4, 3, 1, 2).to(feats.dtype)


class DenseVoxelLift(nn.Module):
    """The reference lift: every voxel sampled in every camera with ``grid_sample``, masked, averaged.

    Same interface and result as :class:`VoxelLift` (the volume contiguous, channels first); kept for the tests
    and benchmarks/lift.py. ``flips`` flips the lifted volume with ``flip_bev`` (what SimpleBEV did
    before the sparse lift took the flips into its taps).
    """

    def __init__(self, grid: BevGrid):
        super().__init__()
        self.grid = grid
        # (X, Y, Z, 3) → (Z, X, Y, 3) so the flat order matches the (B, C, Z, X, Y) output layout
        centers = torch.from_numpy(grid.voxel_centers()).float().permute(2, 0, 1, 3).reshape(-1, 3)
        self.register_buffer("centers", centers, persistent=False)

    def forward(
        self,
        feats: torch.Tensor,
        K: torch.Tensor,
        cam_T_ego: torch.Tensor,
        image_hw: tuple[int, int],
        flips: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, S, C, Hf, Wf = feats.shape
        X, Y, Z = self.grid.shape
        total = feats.new_zeros((B, C, Z * X * Y), dtype=torch.float32)
        count = feats.new_zeros((B, 1, Z * X * Y), dtype=torch.float32)
        # loop over cameras and accumulate: a (B, S, C, N) tensor would cost S times the memory
        for s in range(S):
            grid, valid = project_to_feature_map(self.centers, cam_T_ego[:, s], K[:, s], image_hw, (Hf, Wf))
            v = valid[:, None].float()
            total = total + sample_features(feats[:, s], grid) * v
            count = count + v
        volume = total / count.clamp(min=1.0)
        return flip_bev(volume.view(B, C, Z, X, Y).to(feats.dtype), flips)
