"""SimpleBEV (Harley et al., ICRA 2023; paper §3.1, §4.1): image encoder → parameter-free voxel lift →
BEV compressor over the height axis → ResNet-18 BEV decoder → F_B (B, N_B, X, Y).

Simple-BEV's flip augmentations (:mod:`occfeat.models.flips`) run here when the batch carries their
flags: images flipped around the encoder, the 3D volume flipped before the compressor (inside the lift, as
mirrored voxel centres) and F_B flipped back after the decoder (simple_bev segnet.py:401-407, 430-434,
137-140)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
        bev = self.compress_volume(volume)
        return flip_bev(self.decoder(bev), flips), feats  # F_B back in the grid's frame before any head

    def compress_volume(self, volume: torch.Tensor) -> torch.Tensor:
        """volume (B, C, Z, X, Y) → (B, N_B, X, Y): the height axis folded into channels (channel c·Z + z, as
        Simple-BEV) and compressed. A channels-last volume ((B, X, Y, Z, C) in memory, :class:`VoxelLift`'s)
        is folded in memory order instead (channel z·C + c) with the 3x3 conv's input channels permuted to
        match: the same sum, no copy of the 1024-channel volume, and mkldnn's channels-last conv is faster
        on it (benchmarks/pretrain.py). Any other layout folds as Simple-BEV does."""
        conv, rest = (self.compress[0], self.compress[1:]) if isinstance(self.compress, nn.Sequential) else (self.compress, None)
        rows = volume.permute(0, 3, 4, 2, 1)
        if not (rows.is_contiguous() and isinstance(conv, nn.Conv2d)):
            return self.compress(volume.flatten(1, 2))
        C, Z = volume.shape[1:3]
        weight = conv.weight.unflatten(1, (C, Z)).transpose(1, 2).flatten(1, 2)
        x = F.conv2d(rows.flatten(3).permute(0, 3, 1, 2), weight, conv.bias, conv.stride, conv.padding).contiguous()
        return x if rest is None else rest(x)
