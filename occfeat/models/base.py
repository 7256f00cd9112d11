"""The network config and the uniform interface every BEV network keeps (timm-like: one feature method,
heads separate).

A batch is a dict with
- ``images`` (B, S, 3, H, W) float in [0, 1] (normalised inside the network with the backbone's mean/std),
- ``K`` (B, S, 3, 3) intrinsics of THESE (possibly resized/cropped) images,
- ``cam_T_ego`` (B, S, 4, 4) ego frame at the key-frame LiDAR time → camera.
Other keys are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.weights import Provenance


@dataclass
class NetworkConfig:
    """A BEV network (paper §3.1, §4.1). Grid numbers (X, Y, Z_B, bounds) come from the BevGrid."""

    arch: str = "simplebev"
    """"simplebev" (voxel-sampling lift) or "bevformer" (deformable attention), see NETWORKS."""
    backbone: str = "efficientnet_b0"
    """Any timm CNN with ``features_only``; the paper uses efficientnet_b0 and resnet50."""
    bev_channels: int = 128
    """N_B: channels of the BEV features F_B (and of the unsplat head's volume)."""
    backbone_weights: str | None = None
    """Local safetensors/.pth file with ImageNet weights for the backbone (else the HF cache)."""
    random_init: bool = False
    """Random backbone weights; only when asked for, and stamped via Provenance into every output."""
    image_channels: int = 128
    """C of the fused per-camera feature maps that are lifted / attended to (Simple-BEV's feat2d_dim)."""
    fuse_channels: int | None = None
    """Hidden width of the multi-scale fusion convs in the image encoder. None: the backbone's Simple-BEV
    width (128 for efficientnet_b0, 512 for resnet50; ``occfeat.models.encoder.BACKBONE_DEFAULTS``)."""
    drop_path_rate: float | None = None
    """Stochastic depth (drop-connect) of the backbone while training, scaled per block. None: the
    backbone's Simple-BEV value (0.2 for efficientnet_b0 as efficientnet_pytorch, 0 for ResNets)."""
    encoder_strides: tuple[int, ...] = (8, 16)
    """Backbone levels fused, finest first; the finest is the feature stride (Simple-BEV: 1/8)."""
    bevformer_layers: int = 6
    """BEVFormer: number of (self-attn, cross-attn, FFN) layers."""
    bevformer_heads: int = 4
    """BEVFormer: attention heads (N_B must be divisible by it)."""
    bevformer_self_points: int = 8
    """BEVFormer: sampling points per head of the deformable BEV self-attention."""
    bevformer_points_per_height: int = 1
    """BEVFormer: sampling points per head per pillar height in the spatial cross-attention; the pillar
    heights are the grid's Z_B bin centres (8 heights x 1 point = BEVFormer's 8 points)."""
    bevformer_ffn_dim: int = 1028
    """BEVFormer: hidden width of the feed-forward layers (1028, as in Simple-BEV's implementation)."""
    bevformer_dropout: float = 0.1
    """BEVFormer: dropout on the attention outputs."""


class BevNetwork(nn.Module):
    """Image encoder + projection + BEV decoder. ``forward_bev(batch) → F_B (B, N_B, X, Y)``."""

    provenance: Provenance
    bev_channels: int
    grid: BevGrid

    def forward_bev(self, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: dict) -> torch.Tensor:
        """Same as forward_bev, so DDP and hooks wrap the network like any module."""
        return self.forward_bev(batch)


def unpack_batch(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (B, S, 3, H, W), K (B, S, 3, 3), cam_T_ego (B, S, 4, 4)) with one-line shape errors."""
    try:
        images, K, cam_T_ego = batch["images"], batch["K"], batch["cam_T_ego"]
    except KeyError as e:
        raise OccfeatError(f"batch lacks key {e}; a BEV network needs 'images', 'K' and 'cam_T_ego'") from e
    if images.ndim != 5 or images.shape[2] != 3:
        raise OccfeatError(f"batch['images'] must be (B, S, 3, H, W), got {tuple(images.shape)}")
    B, S = images.shape[:2]
    if tuple(K.shape) != (B, S, 3, 3) or tuple(cam_T_ego.shape) != (B, S, 4, 4):
        raise OccfeatError(
            f"batch['K'] {tuple(K.shape)} / batch['cam_T_ego'] {tuple(cam_T_ego.shape)} do not fit images "
            f"{tuple(images.shape)}; need (B, S, 3, 3) and (B, S, 4, 4)"
        )
    return images, K, cam_T_ego
