"""BEV networks (paper §3.1), the OccFeat unsplat head (§3.2-3.3) and the segmentation head.

Layering: encoder / lift / decoder / heads are blocks; simplebev / bevformer compose them into networks,
each file holding its network and its config (a :class:`NetworkConfig` subclass); a network registers
itself under its config's ``arch`` (:func:`registered_networks`), and :func:`build_network` builds the
one a config names.
"""

from __future__ import annotations

from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.models.base import BevNetwork, NetworkConfig, camera_networks, registered_networks, upgrade_network_dict
from occfeat.models.bevformer import BevFormer, BevFormerConfig
from occfeat.models.lidar import LidarBev, LidarBevConfig
from occfeat.models.heads import (
    InstanceHeads, PerspectiveHead, ReferenceUnsplatDecoder, SegmentationHead, UnsplatDecoder, pointwise, predict_at,
)
from occfeat.models.simplebev import SimpleBev, SimpleBevConfig


def build_network(cfg: NetworkConfig, grid: BevGrid) -> BevNetwork:
    """The BEV network of config ``cfg`` (its class is the arch's ``config_class``) on ``grid``; its
    ``provenance`` says where the backbone weights came from."""
    networks = registered_networks()
    if cfg.arch not in networks:
        raise OccfeatError(f"unknown network arch '{cfg.arch}' (known: {', '.join(sorted(networks))})")
    network = networks[cfg.arch]
    if not isinstance(cfg, network.config_class):
        raise OccfeatError(
            f"network arch '{cfg.arch}' needs a {network.config_class.__name__}, got a {type(cfg).__name__}; "
            f"build it with merge(NetworkConfig(), {{'arch': '{cfg.arch}', ...}}) or {network.config_class.__name__}(...)"
        )
    if cfg.bev_channels < 1 or cfg.image_channels < 1:
        raise OccfeatError(f"bev_channels={cfg.bev_channels} and image_channels={cfg.image_channels} must be >= 1")
    return network(cfg, grid)


__all__ = [
    "BevNetwork", "NetworkConfig", "SimpleBev", "SimpleBevConfig", "BevFormer", "BevFormerConfig", "LidarBev", "LidarBevConfig",
    "registered_networks", "camera_networks",
    "build_network", "upgrade_network_dict", "UnsplatDecoder", "ReferenceUnsplatDecoder", "pointwise", "predict_at", "SegmentationHead", "InstanceHeads", "PerspectiveHead",
]  # fmt: skip
