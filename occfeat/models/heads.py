"""Heads on top of F_B (B, N_B, X, Y): the OccFeat unsplat decoder shared by the voxel objectives
(thrown away after pretraining) and the downstream segmentation head with its finetuning-only
instance heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pointwise(conv: nn.Conv3d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 (Conv2d) or 1x1x1 (Conv3d) convolution ``conv`` on ``x`` (B, C, ...) in either memory layout.

    On a channels-last tensor (channels fastest in memory, as :class:`UnsplatDecoder` gives F_V) it is a
    matmul over the contiguous rows, returned channels-last again: ~2-3x faster than Conv3d on the CPU
    (mkldnn's 1x1x1 Conv3d runs at ~75 GFLOP/s on the benchmark machine, the matmul at 115-225), and no
    layout copy. Any other layout goes through ``conv`` itself. Same result to float tolerance
    (tests/test_models.py)."""
    order = _memory_order(x)
    if order is None:
        return conv(x)
    w = conv.weight.view(conv.out_channels, conv.in_channels)
    out = F.linear(x.permute(order), w, conv.bias)  # the rows in memory order, channels last
    return out.permute(sorted(range(x.ndim), key=order.__getitem__))


def _memory_order(x: torch.Tensor) -> list[int] | None:
    """The dims of ``x`` outermost first in memory when its channels (dim 1) are innermost and ``x`` is
    dense in that order (``x.permute(order)`` contiguous); None otherwise."""
    order = sorted(range(x.ndim), key=lambda d: -x.stride(d))
    return order if order[-1] == 1 and x.permute(order).is_contiguous() else None


class UnsplatDecoder(nn.Module):
    """The "unsplatting" decoder D_V of paper §3.2, shared by every objective that predicts per voxel
    (occupancy, teacher features): F_B (B, N_B, X, Y) → F_V (B, N_B, Z_B, X, Y).

    D_V: Conv2d 3x3 N_B→N_B + InstanceNorm + ReLU; Conv2d 1x1 N_B→N_B·Z_B; reshape the channels into Z_B
    groups of N_B channels → (B, N_B, Z_B, X, Y); Conv3d 1x1x1 N_B→2N_B + Softplus; Conv3d 1x1x1 2N_B→N_B.
    The predictors on F_V (occupancy: Conv3d 1x1x1 N_B→1; features: N_B→N_y) belong to their objectives
    (:mod:`occfeat.objectives`).

    The 1x1 and 1x1x1 convolutions run as matmuls on channels-last rows (:func:`pointwise`): F_V comes
    back as a (B, N_B, Z, X, Y) view of a (B, X, Y, Z, N_B) tensor, which :func:`pointwise` and
    :func:`predict_at` read without a copy. :class:`ReferenceUnsplatDecoder` is the same map with the
    convolutions themselves (the implementation before issue 19, kept for tests and benchmarks).
    """

    def __init__(self, bev_channels: int = 128, z_bins: int = 8):
        super().__init__()
        self.bev_channels, self.z_bins = bev_channels, z_bins
        nb = bev_channels
        self.bev = nn.Sequential(
            nn.Conv2d(nb, nb, kernel_size=3, padding=1),
            nn.InstanceNorm2d(nb),
            nn.ReLU(inplace=True),
            nn.Conv2d(nb, nb * z_bins, kernel_size=1),
        )
        self.volume = nn.Sequential(
            nn.Conv3d(nb, 2 * nb, kernel_size=1),
            nn.Softplus(),
            nn.Conv3d(2 * nb, nb, kernel_size=1),
        )

    def unsplat(self, bev: torch.Tensor) -> torch.Tensor:
        """(B, N_B, X, Y) → (B, N_B, Z_B, X, Y): channel group z (channels z·N_B ... (z+1)·N_B - 1) is height
        bin z. A view of a channels-last (B, X, Y, Z_B, N_B) tensor."""
        B, _, X, Y = bev.shape
        x = pointwise(self.bev[3], self.bev[:3](bev).contiguous(memory_format=torch.channels_last))  # (B, N_B·Z_B, X, Y)
        return x.movedim(1, -1).unflatten(-1, (self.z_bins, self.bev_channels)).permute(0, 4, 3, 1, 2)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        """bev F_B (B, N_B, X, Y) → F_V (B, N_B, Z, X, Y), channels-last in memory."""
        assert bev.ndim == 4 and bev.shape[1] == self.bev_channels, f"expected (B, {self.bev_channels}, X, Y), got {tuple(bev.shape)}"
        first, act, second = self.volume
        return pointwise(second, act(pointwise(first, self.unsplat(bev))))


class ReferenceUnsplatDecoder(UnsplatDecoder):
    """:class:`UnsplatDecoder` computed with its Conv2d/Conv3d modules on contiguous channels-first tensors,
    as before issue 19: the reference of the tests and of ``benchmarks/pretrain.py --compare-reference``
    (same parameters, so a state dict moves between the two)."""

    def unsplat(self, bev: torch.Tensor) -> torch.Tensor:
        B, _, X, Y = bev.shape
        return self.bev(bev).view(B, self.z_bins, self.bev_channels, X, Y).transpose(1, 2)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        assert bev.ndim == 4 and bev.shape[1] == self.bev_channels, f"expected (B, {self.bev_channels}, X, Y), got {tuple(bev.shape)}"
        return self.volume(self.unsplat(bev))


def predict_at(predictor: nn.Conv3d, volume: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 Conv3d predictor applied only at the voxels ``idx`` (M, 4) long [b, x, y, z] of ``volume``
    (B, C, Z, X, Y) → (M, out). Equal to the dense conv gathered at idx, without the dense output (the
    teacher-feature one would be (B, 384, 8, 200, 200): 2 GB per sample in float32)."""
    assert idx.ndim == 2 and idx.shape[1] == 4, f"idx must be (M, 4) [b, x, y, z], got {tuple(idx.shape)}"
    b, x, y, z = idx.unbind(1)
    if _memory_order(volume) == [0, 3, 4, 2, 1]:  # F_V as UnsplatDecoder gives it: (B, X, Y, Z, C) rows
        B, C, Z, X, Y = volume.shape
        # a row gather, so the gradient comes back in F_V's own layout (advanced indexing's would be
        # channels first, and adding it to the occupancy predictor's channels-last one costs ~1 s a step)
        picked = volume.permute(0, 3, 4, 2, 1).reshape(-1, C).index_select(0, ((b * X + x) * Y + y) * Z + z)
    else:
        picked = volume[b, :, z, x, y]  # advanced indices around a slice → (M, C)
    w = predictor.weight.view(predictor.out_channels, predictor.in_channels)
    return F.linear(picked, w, predictor.bias)


class ConvHead(nn.Module):
    """Simple-BEV's head (segnet.py ~76-100): conv3x3 (no bias) → InstanceNorm → ReLU → conv1x1.
    F_B (B, N_B, X, Y) → (B, out_channels, X, Y).

    InstanceNorm as in Simple-BEV (BatchNorm statistics are poor at its per-GPU batch of 1-4 samples).
    """

    def __init__(self, bev_channels: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(bev_channels, bev_channels, 3, padding=1, bias=False),
            nn.InstanceNorm2d(bev_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(bev_channels, out_channels, 1),
        )

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        return self.net(bev)


class SegmentationHead(ConvHead):
    """F_B (B, N_B, X, Y) → logits (B, n_classes, X, Y): the downstream segmentation head."""

    def __init__(self, bev_channels: int = 128, n_classes: int = 1):
        super().__init__(bev_channels, n_classes)


class InstanceHeads(nn.Module):
    """Simple-BEV's auxiliary vehicle heads on the shared decoder output, used only while finetuning:
    ``center`` (B, 1, X, Y) in [0, 1] (``instance_center_head``, a :class:`ConvHead` + sigmoid) and
    ``offset`` (B, 2, X, Y) in cells (``instance_offset_head``). Evaluation never builds them."""

    def __init__(self, bev_channels: int = 128):
        super().__init__()
        self.center = ConvHead(bev_channels, 1)
        self.offset = ConvHead(bev_channels, 2)

    def forward(self, bev: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"center": torch.sigmoid(self.center(bev)), "offset": self.offset(bev)}


class PerspectiveHead(nn.Module):
    """A light dense head on the image encoder's features (BEVFormer v2's perspective head, FCOS-style):
    a shared tower of two conv3x3 + InstanceNorm + ReLU, then one 1x1 conv per output.
    feats (B, S, C, h, w) → {name: (B, S, channels, h, w)} for ``outputs`` {name: channels}. Trained
    beside the BEV loss and thrown away after training."""

    def __init__(self, in_channels: int, outputs: dict[str, int], hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_channels
        self.tower = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.InstanceNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.InstanceNorm2d(hidden), nn.ReLU(inplace=True),
        )
        self.outputs = nn.ModuleDict({name: nn.Conv2d(hidden, c, 1) for name, c in outputs.items()})

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        B, S = feats.shape[:2]
        x = self.tower(feats.flatten(0, 1))
        return {name: conv(x).unflatten(0, (B, S)) for name, conv in self.outputs.items()}
