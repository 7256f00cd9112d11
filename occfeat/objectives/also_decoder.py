"""Img-ALSO's implicit occupancy decoder on BEV features, and ALSO's loss terms.

ALSO (valeoai/ALSO, networks/decoder/decoder.py ``InterpNet``) decodes each (query, support) *pair*
on its own: the support's latent and the query's position relative to the support go through a small MLP
that predicts the query's occupancy (and the LiDAR intensity). The loss is the binary cross-entropy over
all pairs, plus an L1 intensity term over the near-surface queries; both weigh 1 in ALSO's SECOND configs.
A query with no support within the radius produces no pair and so no loss: here its mask row is all False.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from occfeat.grid import BevGrid
from occfeat.objectives.also_queries import RECONSTRUCTION_RADIUS, query_supports


class AlsoPrediction(NamedTuple):
    """Per-(query, support) predictions; padded pairs hold 0 and are False in ``mask``."""

    occupancy: torch.Tensor
    """(B, M, K) occupancy logits."""
    intensity: torch.Tensor
    """(B, M, K) predicted LiDAR intensity."""
    mask: torch.Tensor
    """(B, M, K) bool: a real query and a support within the radius."""


class AlsoDecoder(nn.Module):
    """ALSO's InterpNet on a BEV grid: Linear(C+3 → H), ReLU, Linear(H → H), ReLU, Linear(H → H), Linear(H → 2).

    The layer order (no activation before the output layer) is ALSO's. The first layer's feature half is
    applied once per BEV cell and gathered per pair, which equals applying it to every pair's concatenated
    (feature, relative position) input but costs X·Y instead of pairs·K products.

    bev_channels: N_B of F_B. hidden: the MLP width; ALSO's ``latent_size`` (128), which is also N_B here.
    radius: the reconstruction radius in metres (paper: 1 m).
    """

    def __init__(self, bev_channels: int, hidden: int | None = None, radius: float = RECONSTRUCTION_RADIUS):
        super().__init__()
        hidden = hidden or bev_channels
        self.radius = float(radius)
        self.fc_in = nn.Linear(bev_channels + 3, hidden)
        self.mlp = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(2)])
        self.fc_out = nn.Linear(hidden, 2)  # (occupancy logit, intensity), ALSO's out_channels = 2

    def forward(self, bev: torch.Tensor, queries: torch.Tensor, query_mask: torch.Tensor, grid: BevGrid) -> AlsoPrediction:
        """bev: F_B (B, C, X, Y) on ``grid``; queries: (B, M, 3) in the grid's frame, padded; query_mask: (B, M)."""
        b, c, x, y = bev.shape
        if (x, y) != grid.shape[:2]:
            raise ValueError(f"BEV features are {x}x{y} but the grid is {grid.shape[0]}x{grid.shape[1]}")
        cells, offsets, mask = query_supports(queries, grid, self.radius)
        mask = mask & query_mask[..., None]
        w_feat, w_pos = self.fc_in.weight[:, :c], self.fc_in.weight[:, c:]
        per_cell = torch.einsum("hc,bcn->bnh", w_feat, bev.reshape(b, c, x * y))  # (B, X*Y, H)
        bi, mi, ki = mask.nonzero(as_tuple=True)
        # index_select, not advanced indexing: its backward (index_add) sums the many pairs that share a cell in
        # a fixed order, so a run is bit-reproducible and --resume continues it exactly.
        flat = bi * (x * y) + cells[bi, mi, ki]
        h = per_cell.reshape(b * x * y, -1).index_select(0, flat) + offsets[bi, mi, ki] @ w_pos.T + self.fc_in.bias
        for layer in self.mlp:
            h = layer(F.relu(h))
        out = self.fc_out(h)
        dense = out.new_zeros(*mask.shape, 2)
        dense[bi, mi, ki] = out
        return AlsoPrediction(occupancy=dense[..., 0], intensity=dense[..., 1], mask=mask)


def also_loss(logits: torch.Tensor, occupied: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ALSO's reconstruction loss: binary cross-entropy with logits, mean over the valid pairs of the batch.

    logits: (B, M, K) per-pair occupancy logits; occupied: (B, M) the query's label (1 occupied, 0 empty),
    shared by its pairs; mask: (B, M, K) bool. With no valid pair the loss is 0 (still part of the graph).
    """
    target = occupied.to(logits.dtype)[..., None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return _masked_mean(bce, mask)


def also_intensity_loss(pred: torch.Tensor, intensity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ALSO's intensity term: L1 between predicted and LiDAR intensity over valid pairs whose query has one.

    pred: (B, M, K); intensity: (B, M), negative where the query has no target (far queries); mask: (B, M, K).
    """
    target = intensity.to(pred.dtype)[..., None].expand_as(pred)
    return _masked_mean((pred - target).abs(), mask & (target >= 0))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)
