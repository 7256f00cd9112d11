"""Projection module P_B of Simple-BEV (paper §3.1): lift per-camera feature maps into the voxel grid by
projecting every voxel centre into every camera and bilinearly sampling, then averaging over the cameras
that see the voxel. No depth estimation: every voxel along a ray gets the same feature.

Geometry runs in float32 with autocast off (bf16 pixel coordinates would be off by ~1 px at 200 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from occfeat.geometry import apply_4x4, in_image, pixels_to_grid_sample, project_points, scale_intrinsics
from occfeat.grid import BevGrid


def project_to_feature_map(
    points_ego: torch.Tensor,
    cam_T_ego: torch.Tensor,
    K: torch.Tensor,
    image_hw: tuple[int, int],
    feat_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ego-frame points into one camera's feature map.

    points_ego (N, 3) or (B, N, 3); cam_T_ego (B, 4, 4); K (B, 3, 3) intrinsics of the (H, W) image.
    Returns (grid (B, N, 2) in grid_sample's [-1, 1] convention for align_corners=False,
    valid (B, N) bool: in front of the camera and inside the feature map).
    """
    H, W = image_hw
    Hf, Wf = feat_hw
    with torch.autocast(device_type=points_ego.device.type, enabled=False):
        Kf = scale_intrinsics(K.float(), Wf / W, Hf / H)
        pts_cam = apply_4x4(cam_T_ego.float(), points_ego.float())
        uv, in_front = project_points(Kf, pts_cam)
        valid = in_front & in_image(uv, Wf, Hf)
        grid = pixels_to_grid_sample(uv, torch.tensor([Wf, Hf], dtype=uv.dtype, device=uv.device))
    return grid, valid


def sample_features(feats: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of feats (B, C, Hf, Wf) at grid (B, N, 2) → (B, C, N), in float32."""
    out = F.grid_sample(feats.float(), grid[:, None].float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :, 0]


class VoxelLift(nn.Module):
    """Image features → voxel volume, mean over the cameras that see each voxel centre.

    forward(feats (B, S, C, Hf, Wf), K (B, S, 3, 3) at the input image size, cam_T_ego (B, S, 4, 4),
    image_hw) → volume (B, C, Z, X, Y); voxels no camera sees are 0.
    """

    def __init__(self, grid: BevGrid):
        super().__init__()
        self.grid = grid
        X, Y, Z = grid.shape
        # (X, Y, Z, 3) → (Z, X, Y, 3) so the flat order matches the (B, C, Z, X, Y) output layout
        centers = torch.from_numpy(grid.voxel_centers()).float().permute(2, 0, 1, 3).reshape(-1, 3)
        self.register_buffer("centers", centers, persistent=False)

    def forward(
        self, feats: torch.Tensor, K: torch.Tensor, cam_T_ego: torch.Tensor, image_hw: tuple[int, int]
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
        return volume.view(B, C, Z, X, Y).to(feats.dtype)
