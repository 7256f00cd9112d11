"""Image encoder E_I (paper §3.1): a timm ``features_only`` backbone whose multi-scale features are fused
to one map at the finest requested stride (Simple-BEV: 1/8 of the input), as in Simple-BEV's
``Encoder_eff`` / ``Encoder_res*``: upsample the deeper levels, concatenate, convolve.

Images come in as ``(B, S, 3, H, W)`` floats in [0, 1]; the encoder normalises them with its backbone's
own mean/std (timm ``pretrained_cfg``), kept as buffers so they follow ``.to(device)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occfeat.errors import OccfeatError
from occfeat.weights import create_timm_model


@dataclass(frozen=True)
class BackboneDefaults:
    """Simple-BEV's per-backbone encoder settings, used where NetworkConfig leaves a field at None."""

    fuse_channels: int
    """Hidden width of the fusion convs: Simple-BEV's ``UpsamplingConcat`` width (segnet.py:187, 221)."""
    drop_path_rate: float
    """Stochastic depth while training. efficientnet_pytorch's drop-connect 0.2 is scaled per block by
    block_idx / n_blocks (over all 16 EN-B0 blocks); timm's EfficientNet builder scales ``drop_path_rate``
    the same way, on the same residual blocks. torchvision's ResNets have none."""


# The one home of these numbers (keys: timm architecture names without the pretrained tag).
BACKBONE_DEFAULTS: dict[str, BackboneDefaults] = {
    "efficientnet_b0": BackboneDefaults(fuse_channels=128, drop_path_rate=0.2),
    "resnet50": BackboneDefaults(fuse_channels=512, drop_path_rate=0.0),
    "resnet101": BackboneDefaults(fuse_channels=512, drop_path_rate=0.0),
}


def backbone_defaults(backbone: str) -> BackboneDefaults:
    """Simple-BEV's settings for ``backbone`` (``efficientnet_b0.ra_in1k`` → ``efficientnet_b0``)."""
    arch = backbone.split(".")[0]
    if arch not in BACKBONE_DEFAULTS:
        raise OccfeatError(
            f"no Simple-BEV encoder defaults for backbone '{backbone}' (known: {', '.join(BACKBONE_DEFAULTS)}); "
            "set network.fuse_channels and network.drop_path_rate"
        )
    return BACKBONE_DEFAULTS[arch]


def _conv_in_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True)]


class FeatureFusion(nn.Module):
    """Upsample every level to the first (finest) level's size, concatenate, two 3x3 convs, 1x1 out.

    levels: list of (B, C_i, H_i, W_i), finest first → (B, out_channels, H_0, W_0).
    """

    def __init__(self, in_channels: list[int], hidden: int, out_channels: int):
        super().__init__()
        self.fuse = nn.Sequential(*_conv_in_relu(sum(in_channels), hidden), *_conv_in_relu(hidden, hidden))
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        # bilinear, align_corners=False: the same pixel-centre convention the lift's grid_sample uses
        up = [levels[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in levels[1:]]
        return self.out(self.fuse(torch.cat(up, dim=1)))


def _drop_unused_blocks(backbone: nn.Module) -> None:
    """Cut the blocks after the deepest requested level. timm's FeatureListNet (ResNets) already stops
    there, but its EfficientNet feature extractors build and *run* every block: the extra stride-32
    blocks cost time and receive no gradient, which DistributedDataParallel rejects."""
    blocks = getattr(backbone, "blocks", None)
    names = backbone.feature_info.module_name()
    if isinstance(blocks, nn.Sequential) and all(n.startswith("blocks.") for n in names):
        last = max(int(n.split(".")[1]) for n in names)
        backbone.blocks = blocks[: last + 1]


class ImageEncoder(nn.Module):
    """timm backbone + fusion: images (B, S, 3, H, W) in [0, 1] → features (B, S, C, H/s, W/s).

    ``strides`` are the backbone reductions to fuse, finest first (its first entry is the output stride).
    ``fuse_channels`` / ``drop_path_rate`` None: the backbone's Simple-BEV value (:data:`BACKBONE_DEFAULTS`).
    """

    def __init__(
        self,
        backbone: str,
        out_channels: int,
        fuse_channels: int | None = None,
        strides: tuple[int, ...] = (8, 16),
        weights: str | None = None,
        random_init: bool = False,
        drop_path_rate: float | None = None,
    ):
        super().__init__()
        if fuse_channels is None or drop_path_rate is None:
            defaults = backbone_defaults(backbone)
            fuse_channels = defaults.fuse_channels if fuse_channels is None else fuse_channels
            drop_path_rate = defaults.drop_path_rate if drop_path_rate is None else drop_path_rate
        if not 0.0 <= drop_path_rate < 1.0:
            raise OccfeatError(f"network.drop_path_rate {drop_path_rate} must be in [0, 1)")
        strides = tuple(sorted(int(s) for s in strides))
        if not strides or any(s < 2 or (s & (s - 1)) for s in strides):
            raise OccfeatError(f"encoder strides {strides} must be powers of two >= 2 (e.g. 8,16)")
        # timm CNNs number their feature levels by reduction 2, 4, 8, 16, 32 → index log2(s) - 1;
        # asking only for the needed levels lets timm drop the deeper stages.
        out_indices = tuple(int(math.log2(s)) - 1 for s in strides)
        self.backbone, self.provenance = create_timm_model(
            backbone,
            weights=weights,
            random_init=random_init,
            weights_flag="network.backbone_weights",
            random_flag="network.random_init=true",
            features_only=True,
            out_indices=out_indices,
            drop_path_rate=float(drop_path_rate),
        )
        _drop_unused_blocks(self.backbone)
        got = tuple(self.backbone.feature_info.reduction())
        if got != strides:
            raise OccfeatError(f"backbone '{backbone}' gives feature strides {got}, not {strides}; pick another backbone or strides")
        self.stride = strides[0]
        self.out_channels = out_channels
        self.fuse_channels, self.drop_path_rate = int(fuse_channels), float(drop_path_rate)
        self.fusion = FeatureFusion(list(self.backbone.feature_info.channels()), fuse_channels, out_channels)
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, S, 3, H, W) in [0, 1] → (B, S, C, Hf, Wf)."""
        assert images.ndim == 5 and images.shape[2] == 3, f"images must be (B, S, 3, H, W), got {tuple(images.shape)}"
        B, S = images.shape[:2]
        x = (images.flatten(0, 1) - self.mean) / self.std
        feats = self.fusion(self.backbone(x))
        return feats.unflatten(0, (B, S))
