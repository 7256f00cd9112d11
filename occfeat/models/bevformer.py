"""BEVFormer, segmentation variant of Simple-BEV's code base (paper §4.1, "implementation from [24]"),
in plain PyTorch: deformable attention is bilinear ``grid_sample`` at learned offsets plus a learned
softmax weighting (no custom CUDA ops, no mmcv).

- learned BEV queries (one per grid cell, X·Y of them) with a learned positional embedding;
- per layer: deformable BEV self-attention → LayerNorm → spatial cross-attention → LayerNorm → FFN →
  LayerNorm (the order of Simple-BEV's Bevformernet);
- spatial cross-attention: each query's pillar (its cell centre at the grid's Z_B bin-centre heights) is
  projected into every camera; learned offsets around each projected anchor, learned weights, averaged
  over the cameras that see any anchor of the pillar. Like BEVFormer, each camera only processes the
  queries it sees (gathered, then scattered back), which saves most of the memory;
- the same ResNet-18 BEV decoder as SimpleBEV → F_B (B, N_B, X, Y);
- Simple-BEV's flips (:mod:`occfeat.models.flips`) when the batch carries their flags: images flipped
  around the encoder; the BEV flipped after the transformer and back after the decoder
  (simple_bev bevformernet.py:489-495, 550-557).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.models.base import BevNetwork, NetworkConfig, unpack_batch
from occfeat.models.decoder import BevDecoder
from occfeat.models.encoder import ImageEncoder
from occfeat.models.flips import encode_with_flips, flip_bev
from occfeat.models.lift import project_to_feature_map


@dataclass
class BevFormerConfig(NetworkConfig):
    """BEVFormer's knobs (Simple-BEV's Bevformernet numbers) on top of the fields every network shares."""

    arch: str = "bevformer"
    """This network's name in recipes (``network: {arch: bevformer}``)."""
    layers: int = 6
    """Number of (self-attn, cross-attn, FFN) layers."""
    heads: int = 4
    """Attention heads (N_B must be divisible by it)."""
    self_points: int = 8
    """Sampling points per head of the deformable BEV self-attention."""
    points_per_height: int = 1
    """Sampling points per head per pillar height in the spatial cross-attention; the pillar heights are
    the grid's Z_B bin centres (8 heights x 1 point = BEVFormer's 8 points)."""
    ffn_dim: int = 1028
    """Hidden width of the feed-forward layers (1028, as in Simple-BEV's implementation)."""
    dropout: float = 0.1
    """Dropout on the attention outputs."""


def _weighted_samples(value: torch.Tensor, loc: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    s = F.grid_sample(value.float(), loc.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return (s * weights.float()[:, None]).sum(-1)


def deformable_sample(value: torch.Tensor, loc: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear samples: value (B·h, d, H, W), loc (B·h, N, P, 2) in grid_sample's [-1, 1]
    (x ↔ W, y ↔ H, align_corners=False), weights (B·h, N, P) → (B·h, d, N). Float32 inside.

    The (B·h, d, N, P) samples are recomputed in backward instead of stored (what the fused CUDA kernel
    of deformable attention does): at 200x200 queries and 8 points that is 164 MB per sample per call.
    """
    if torch.is_grad_enabled() and (value.requires_grad or loc.requires_grad or weights.requires_grad):
        return checkpoint(_weighted_samples, value, loc, weights, use_reentrant=False)
    return _weighted_samples(value, loc, weights)


def _init_offsets(linear: nn.Linear, heads: int, rings: int, repeat: int) -> None:
    """Deformable-DETR init: zero weights, bias = one direction per head, ring k at distance k+1 (in cells
    or feature pixels), the same for each of ``repeat`` anchors. Bias layout (heads, rings, repeat, 2)."""
    nn.init.zeros_(linear.weight)
    theta = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    d = torch.stack([theta.cos(), theta.sin()], -1)
    d = d / d.abs().max(-1, keepdim=True).values
    bias = d[:, None, None, :] * torch.arange(1, rings + 1, dtype=torch.float32)[None, :, None, None]
    with torch.no_grad():
        linear.bias.copy_(bias.expand(heads, rings, repeat, 2).reshape(-1))


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, h, ...) → (B·h, N, ...)."""
    return x.transpose(1, 2).flatten(0, 1)


class BevSelfAttention(nn.Module):
    """Deformable self-attention over the BEV plane: each query samples ``points`` learned offsets (in
    cells) around its own cell, per head. query/pos (B, N, C) with N = X·Y → (B, N, C), residual added."""

    def __init__(self, dim: int, heads: int, points: int, dropout: float):
        super().__init__()
        self.heads, self.points = heads, points
        self.offsets = nn.Linear(dim, heads * points * 2)
        self.weights = nn.Linear(dim, heads * points)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        _init_offsets(self.offsets, heads, points, 1)
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def forward(self, query: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, xy: tuple[int, int]) -> torch.Tensor:
        """ref (N, 2): each cell's own grid_sample coordinate; xy = (X, Y)."""
        B, N, C = query.shape
        X, Y = xy
        h, P = self.heads, self.points
        q = query + pos
        v = self.value(query).view(B, X, Y, h, C // h).permute(0, 3, 4, 1, 2).flatten(0, 1)  # (B·h, d, X, Y)
        cell = torch.tensor([2.0 / Y, 2.0 / X], device=query.device)  # one cell in [-1, 1] units (x ↔ Y)
        loc = ref[None, :, None, None, :] + self.offsets(q).view(B, N, h, P, 2).float() * cell
        w = self.weights(q).view(B, N, h, P).softmax(-1)
        out = deformable_sample(v, _heads_first(loc, h), _heads_first(w, h))  # (B·h, d, N)
        out = out.view(B, C, N).transpose(1, 2).to(query.dtype)
        return query + self.dropout(self.out(out))


@dataclass
class CameraView:
    """The queries one camera sees, gathered to the front: order (B, L) query indices, keep (B, L) bool
    (False = padding), anchors (B, L, D, 2) grid_sample coordinates, anchor_ok (B, L, D) bool."""

    order: torch.Tensor
    keep: torch.Tensor
    anchors: torch.Tensor
    anchor_ok: torch.Tensor


class SpatialCrossAttention(nn.Module):
    """Queries (B, N, C) attend to the image features of the cameras that see their pillar.

    Per head, ``points_per_height`` learned offsets (in feature pixels) around each of the D projected
    pillar anchors; anchors behind the camera or outside the feature map are left out of the softmax.
    """

    def __init__(self, dim: int, image_channels: int, heads: int, heights: int, points_per_height: int, dropout: float):
        super().__init__()
        self.heads, self.heights, self.pph = heads, heights, points_per_height
        P = heights * points_per_height
        self.offsets = nn.Linear(dim, heads * P * 2)
        self.weights = nn.Linear(dim, heads * P)
        self.value = nn.Linear(image_channels, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        _init_offsets(self.offsets, heads, points_per_height, heights)
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def forward(
        self, query: torch.Tensor, pos: torch.Tensor, feats: torch.Tensor, views: list[CameraView | None], count: torch.Tensor
    ) -> torch.Tensor:
        """feats (B, S, C_img, Hf, Wf); views[s] per camera (None = sees nothing); count (B, N) cameras per query."""
        B, N, C = query.shape
        Hf, Wf = feats.shape[-2:]
        h, D, K = self.heads, self.heights, self.pph
        q_all = query + pos
        slots = torch.zeros_like(query, dtype=torch.float32)
        pix = torch.tensor([2.0 / Wf, 2.0 / Hf], device=query.device)  # one feature pixel in [-1, 1] units
        for s, view in enumerate(views):
            if view is None:
                continue
            L = view.order.shape[1]
            q = torch.gather(q_all, 1, view.order[..., None].expand(B, L, C))
            v = self.value(feats[:, s].permute(0, 2, 3, 1))  # (B, Hf, Wf, C)
            v = v.view(B, Hf, Wf, h, C // h).permute(0, 3, 4, 1, 2).flatten(0, 1)  # (B·h, d, Hf, Wf)
            off = self.offsets(q).view(B, L, h, K, D, 2).float() * pix
            loc = (view.anchors[:, :, None, None] + off).flatten(3, 4)  # (B, L, h, K·D, 2)
            # softmax over the usable anchors only; a kept query has at least one, padding rows are zeroed below
            ok = view.anchor_ok[:, :, None, None, :].expand(B, L, 1, K, D).flatten(3, 4)
            w = self.weights(q).view(B, L, h, K * D).float().masked_fill(~ok, -1e9).softmax(-1)
            out = deformable_sample(v, _heads_first(loc, h), _heads_first(w, h))  # (B·h, d, L)
            out = out.view(B, C, L).transpose(1, 2) * view.keep[..., None]
            slots = slots.scatter_add(1, view.order[..., None].expand(B, L, C), out)
        slots = (slots / count.clamp(min=1)[..., None]).to(query.dtype)
        return query + self.dropout(self.out(slots))


class BevFormerLayer(nn.Module):
    def __init__(self, cfg: BevFormerConfig, heights: int):
        super().__init__()
        C = cfg.bev_channels
        self.self_attn = BevSelfAttention(C, cfg.heads, cfg.self_points, cfg.dropout)
        self.cross_attn = SpatialCrossAttention(C, cfg.image_channels, cfg.heads, heights, cfg.points_per_height, cfg.dropout)
        self.ffn = nn.Sequential(nn.Linear(C, cfg.ffn_dim), nn.ReLU(inplace=True), nn.Linear(cfg.ffn_dim, C))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(C), nn.LayerNorm(C), nn.LayerNorm(C)

    def forward(self, q, pos, ref, xy, feats, views, count):
        q = self.norm1(self.self_attn(q, pos, ref, xy))
        q = self.norm2(self.cross_attn(q, pos, feats, views, count))
        return self.norm3(q + self.ffn(q))


class BevFormer(BevNetwork):
    config_class = BevFormerConfig

    def __init__(self, cfg: BevFormerConfig, grid: BevGrid):
        super().__init__()
        if cfg.bev_channels % cfg.heads:
            raise OccfeatError(f"network.bev_channels={cfg.bev_channels} must be divisible by network.heads={cfg.heads}")
        self.grid = grid
        self.bev_channels = cfg.bev_channels
        X, Y, Z = grid.shape
        self.encoder = ImageEncoder(
            cfg.backbone, cfg.image_channels, cfg.fuse_channels, cfg.encoder_strides, cfg.backbone_weights, cfg.random_init,
            drop_path_rate=cfg.drop_path_rate,
        )
        self.provenance = self.encoder.provenance
        self.queries = nn.Parameter(0.1 * torch.randn(1, X * Y, cfg.bev_channels))
        self.pos = nn.Parameter(0.1 * torch.randn(1, X * Y, cfg.bev_channels))
        self.layers = nn.ModuleList(BevFormerLayer(cfg, Z) for _ in range(cfg.layers))
        self.decoder = BevDecoder(cfg.bev_channels)
        # pillars (X·Y·Z, 3), query-major: cell centre (x, y) at every Z bin-centre height
        self.register_buffer("pillars", torch.from_numpy(grid.voxel_centers()).float().reshape(-1, 3), persistent=False)
        # each cell's own grid_sample coordinate on the (X, Y) BEV map: x ↔ Y (width), y ↔ X (height)
        ix, iy = torch.meshgrid(torch.arange(X), torch.arange(Y), indexing="ij")
        ref = torch.stack([(iy + 0.5) / Y, (ix + 0.5) / X], -1).reshape(-1, 2) * 2 - 1
        self.register_buffer("ref", ref.float(), persistent=False)

    @torch.no_grad()
    def camera_views(self, K, cam_T_ego, image_hw, feat_hw) -> tuple[list[CameraView | None], torch.Tensor]:
        """Which queries each camera sees, and where their pillar anchors land; count (B, N) cameras per query."""
        B, S = K.shape[:2]
        X, Y, Z = self.grid.shape
        N = X * Y
        views, count = [], torch.zeros(B, N, device=K.device)
        for s in range(S):
            grid, valid = project_to_feature_map(self.pillars, cam_T_ego[:, s], K[:, s], image_hw, feat_hw)
            grid, valid = grid.view(B, N, Z, 2), valid.view(B, N, Z)
            seen = valid.any(-1)
            count += seen
            L = int(seen.sum(1).max())
            if L == 0:
                views.append(None)
                continue
            order = torch.argsort(seen.to(torch.int8), dim=1, descending=True, stable=True)[:, :L]
            views.append(CameraView(
                order=order,
                keep=torch.gather(seen, 1, order),
                anchors=torch.gather(grid, 1, order[..., None, None].expand(B, L, Z, 2)),
                anchor_ok=torch.gather(valid, 1, order[..., None].expand(B, L, Z)),
            ))
        return views, count

    def forward_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """batch (see occfeat.models.base) → (F_B (B, N_B, X, Y), image features (B, S, C_img, Hf, Wf))."""
        images, K, cam_T_ego = unpack_batch(batch)
        B = images.shape[0]
        X, Y, _ = self.grid.shape
        feats = encode_with_flips(self.encoder, images, batch.get("flip_image"))  # (B, S, C_img, Hf, Wf)
        views, count = self.camera_views(K, cam_T_ego, tuple(images.shape[-2:]), tuple(feats.shape[-2:]))
        q = self.queries.expand(B, -1, -1)
        for layer in self.layers:
            q = layer(q, self.pos, self.ref, (X, Y), feats, views, count)
        bev = q.transpose(1, 2).reshape(B, self.bev_channels, X, Y)
        flips = batch.get("flip_bev")
        return flip_bev(self.decoder(flip_bev(bev, flips)), flips), feats  # F_B back in the grid's frame before any head
