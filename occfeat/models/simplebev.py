"""SimpleBEV (Harley et al., ICRA 2023; paper §3.1, §4.1): image encoder → parameter-free voxel lift →
BEV compressor over the height axis → ResNet-18 BEV decoder → F_B (B, N_B, X, Y).

Simple-BEV's flip augmentations (:mod:`occfeat.models.flips`) run here when the batch carries their
flags: images flipped around the encoder, the 3D volume flipped before the compressor (inside the lift, as
mirrored voxel centres) and F_B flipped back after the decoder (simple_bev segnet.py:401-407, 430-434,
137-140)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from occfeat.grid import BevGrid
from occfeat.models.base import BevNetwork, NetworkConfig, unpack_batch
from occfeat.models.decoder import BevDecoder
from occfeat.models.encoder import ImageEncoder
from occfeat.models.flips import encode_with_flips, flip_bev
from occfeat.models.lift import VoxelLift


@dataclass
class SimpleBevConfig(NetworkConfig):
    """SimpleBEV: only the fields every network shares (the lift is parameter-free)."""

    arch: str = "simplebev"
    """This network's name in recipes (``network: {arch: simplebev}``)."""


class SimpleBev(BevNetwork):
    config_class = SimpleBevConfig

    def __init__(self, cfg: SimpleBevConfig, grid: BevGrid):
        super().__init__()
        self.grid = grid
        self.bev_channels = cfg.bev_channels
        self.encoder = ImageEncoder(
            cfg.backbone, cfg.image_channels, cfg.fuse_channels, cfg.encoder_strides, cfg.backbone_weights, cfg.random_init,
            drop_path_rate=cfg.drop_path_rate,
        )
        self.provenance = self.encoder.provenance
        self.lift = VoxelLift(grid)
        Z = grid.shape[2]
        # (B, C, Z, X, Y) → (B, C·Z, X, Y) → 3x3 conv: the height axis folded into channels, as Simple-BEV
        self.compress = nn.Sequential(
            nn.Conv2d(cfg.image_channels * Z, cfg.bev_channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(cfg.bev_channels),
            nn.GELU(),
        )
        self.decoder = BevDecoder(cfg.bev_channels)

    def forward_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """batch (see occfeat.models.base) → (F_B (B, N_B, X, Y), image features (B, S, C, Hf, Wf))."""
        images, K, cam_T_ego = unpack_batch(batch)
        feats = encode_with_flips(self.encoder, images, batch.get("flip_image"))  # (B, S, C, Hf, Wf)
        flips = batch.get("flip_bev")
        # (B, C, Z, X, Y), already flipped: the lift takes the BEV flips into its geometry (VoxelLift)
        volume = self.lift(feats, K, cam_T_ego, tuple(images.shape[-2:]), flips)
        bev = self.compress(volume.flatten(1, 2))
        return flip_bev(self.decoder(bev), flips), feats  # F_B back in the grid's frame before any head
