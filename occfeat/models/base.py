"""The config every network shares, the uniform interface every BEV network keeps (timm-like: one feature
method, heads separate) and the registry of networks (arch → network class and its config).

A batch is a dict with
- ``images`` (B, S, 3, H, W) float in [0, 1] (normalised inside the network with the backbone's mean/std),
- ``K`` (B, S, 3, 3) intrinsics of THESE (possibly resized/cropped) images,
- ``cam_T_ego`` (B, S, 4, 4) ego frame at the key-frame LiDAR time → camera.
Other keys are ignored.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from occfeat.config import Variants
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.weights import Provenance


@dataclass
class NetworkConfig(Variants):
    """The fields every BEV network shares (paper §3.1, §4.1); each network's file subclasses it with its
    own knobs (``SimpleBevConfig``, ``BevFormerConfig``). ``arch`` picks the subclass: a recipe's
    ``network: {arch: bevformer}`` switches the config, carrying over the shared fields
    (:func:`occfeat.config.merge`). Grid numbers (X, Y, Z_B, bounds) come from the BevGrid."""

    variant_key: ClassVar[str] = "arch"

    arch: str = "simplebev"
    """Which network: the name of a registered network config ("simplebev", "bevformer"; see
    :func:`registered_networks`). Setting it switches the config class to that network's."""
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

    @classmethod
    def variants(cls) -> dict[str, type]:
        """arch → config class of every registered network."""
        return {arch: net.config_class for arch, net in registered_networks().items()}


# Network dicts saved before per-architecture configs: one flat NetworkConfig held every architecture's
# fields, BEVFormer's with a prefix. owner arch → {old key: its field in that arch's config today}.
_FLAT_SCHEMA_FIELDS = {
    "bevformer": {f"bevformer_{k}": k for k in ("layers", "heads", "self_points", "points_per_height", "ffn_dim", "dropout")},
}


def upgrade_network_dict(d: dict) -> dict:
    """A saved ``network`` dict in today's schema. Dicts written before per-architecture configs were flat:
    the ``bevformer_*`` fields sat in every network's config; they are renamed (prefix dropped) for
    ``arch: bevformer`` and dropped for any other arch. Today's dicts come back unchanged."""
    out = dict(d)
    arch = out.get("arch", NetworkConfig.arch)
    for owner, renames in _FLAT_SCHEMA_FIELDS.items():
        for old, new in renames.items():
            if old not in out:
                continue
            value = out.pop(old)
            if owner != arch:
                continue
            if new in d and d[new] != value:
                raise OccfeatError(f"saved network config sets both '{old}' ({value!r}) and '{new}' ({d[new]!r}); keep only '{new}'")
            out[new] = value
    return out


_NETWORKS: dict[str, type[BevNetwork]] = {}


def registered_networks() -> dict[str, type[BevNetwork]]:
    """arch → network class. Every file of ``occfeat/models/`` is imported first, so a network defined in
    any of them (a :class:`BevNetwork` subclass with its ``config_class``) is registered."""
    import occfeat.models as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(_NETWORKS)


def camera_networks() -> dict[str, type[BevNetwork]]:
    """The registered networks that read camera images (every one but the LiDAR teacher's): the
    students that pretraining and the camera recipes build."""
    return {arch: net for arch, net in registered_networks().items() if "images" in net.inputs}


class BevNetwork(nn.Module):
    """Image encoder + projection + BEV decoder. ``forward_bev(batch) → F_B (B, N_B, X, Y)``.

    A subclass that sets ``config_class`` (a :class:`NetworkConfig` subclass whose ``arch`` default names
    it) is registered under that arch: a new network is one file holding its config and its class."""

    config_class: ClassVar[type[NetworkConfig]]
    inputs: ClassVar[tuple[str, ...]] = ("images",)
    """The batch keys the network reads: ("images",) for camera networks (with "K" and "cam_T_ego"),
    ("lidar",) for the LiDAR teacher (:mod:`occfeat.models.lidar`); datasets add what it names."""
    provenance: Provenance
    bev_channels: int
    grid: BevGrid

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        config = cls.__dict__.get("config_class")
        if config is None:
            return
        if not (dataclasses.is_dataclass(config) and issubclass(config, NetworkConfig) and config is not NetworkConfig):
            raise TypeError(f"{cls.__qualname__}.config_class must be a NetworkConfig subclass (a dataclass), got {config!r}")
        arch = config.arch
        other = _NETWORKS.get(arch)
        if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"network arch '{arch}' of {cls.__qualname__} is already taken by {other.__module__}.{other.__qualname__}")
        _NETWORKS[arch] = cls

    def forward_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:  # pragma: no cover - abstract
        """(F_B (B, N_B, X, Y), the image encoder's features (B, S, C, Hf, Wf) at its finest stride, aligned
        with the unflipped input images; None for a network without images): what perspective heads read."""
        raise NotImplementedError

    def forward_bev(self, batch: dict) -> torch.Tensor:
        """batch → F_B (B, N_B, X, Y)."""
        return self.forward_features(batch)[0]

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
