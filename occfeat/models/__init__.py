"""BEV networks (paper §3.1), the OccFeat unsplat head (§3.2-3.3) and the segmentation head.

Layering: encoder / lift / decoder / heads are blocks; simplebev / bevformer compose them into networks;
this module maps a name to a constructor.
"""

from __future__ import annotations

from typing import Callable

from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.models.base import BevNetwork, NetworkConfig
from occfeat.models.bevformer import BevFormer
from occfeat.models.heads import InstanceHeads, SegmentationHead, UnsplatDecoder, predict_at
from occfeat.models.simplebev import SimpleBev

NETWORKS: dict[str, Callable[[NetworkConfig, BevGrid], BevNetwork]] = {
    "simplebev": SimpleBev,
    "bevformer": BevFormer,
}


def build_network(cfg: NetworkConfig, grid: BevGrid) -> BevNetwork:
    """The BEV network named by ``cfg.arch`` on ``grid``; its ``provenance`` says where the backbone weights came from."""
    if cfg.arch not in NETWORKS:
        raise OccfeatError(f"unknown network arch '{cfg.arch}'; choose one of {', '.join(NETWORKS)}")
    if cfg.bev_channels < 1 or cfg.image_channels < 1:
        raise OccfeatError(f"bev_channels={cfg.bev_channels} and image_channels={cfg.image_channels} must be >= 1")
    return NETWORKS[cfg.arch](cfg, grid)


__all__ = ["BevNetwork", "NetworkConfig", "NETWORKS", "build_network", "UnsplatDecoder", "predict_at", "SegmentationHead", "InstanceHeads"]
