"""What every pretraining objective provides (see the package docstring for how they combine).

An objective is an ``nn.Module`` (its head's parameters train with the network and are thrown away
after pretraining) with:

- ``name`` (the key in a recipe's ``objectives:``), ``label`` (what the report prints), ``Config`` (its
  dataclass: ``weight`` plus its own knobs, each with its default and source);
- ``sources``: the caches it reads ("occupancy" = the ``occfeat voxelize`` LiDAR points, "features" =
  the ``occfeat extract`` teacher maps); :meth:`resolve` checks its config against them (e.g. the
  teacher width) before anything is built;
- :meth:`inputs`: the per-sample inputs it needs, computed in the DataLoader worker in the sample's
  reference frame (:class:`SampleInput`; shared inputs such as the occupancy grid are computed once);
- ``uses_volume``: whether it predicts on F_V, the output of the shared unsplat decoder D_V
  (:class:`occfeat.models.UnsplatDecoder`), or only on F_B; ``uses_images``: whether it predicts on the
  image encoder's features (``ctx.image_features``, perspective objectives);
- :meth:`forward` ``(ctx, batch) → {term: value}``: its loss terms as calls to pure functions, the first
  one being what its ``weight`` multiplies;
- :meth:`stamp`: what a finetune run and the report say about it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from occfeat.config import Variants
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid

if TYPE_CHECKING:
    from occfeat.data.extract import FeatureReader
    from occfeat.data.occupancy import OccupancyReader
    from occfeat.train.data import CameraRig


@dataclass
class ObjectiveConfig(Variants):
    """Settings every objective has; each objective's Config subclasses it with its own knobs."""

    weight: float = 1.0
    """Its weight in the total loss (OccFeat: 1 for occupancy, λ = 0.01 for features, paper eq. 1)."""

    @classmethod
    def variants(cls) -> dict[str, type]:
        from occfeat.objectives import registry

        return {name: obj.Config for name, obj in registry().items()}


@dataclass(frozen=True)
class Sources:
    """The caches a pretraining run reads (None: not given / not needed) on the run's grid."""

    grid: BevGrid
    occupancy: "OccupancyReader | None" = None
    features: "FeatureReader | None" = None


class SampleInput:
    """A per-sample input computed in the DataLoader worker: ``__call__(sources, rig, ref_T_ego, rng)`` →
    {key: tensor} in the sample's reference frame R (``ref_T_ego`` (4, 4)); ``rng`` is the sample's own
    generator for this input (seeded by seed, epoch, index). ``ragged`` keys have a per-sample first
    dimension: the collate pads them to (B, M_max, ...) and adds ``<key>_mask`` (B, M_max) bool.
    Instances must be picklable and compare equal when they compute the same thing (so an input two
    objectives share is computed once)."""

    ragged: ClassVar[tuple[str, ...]] = ()

    def __call__(self, sources: Sources, rig: "CameraRig", ref_T_ego: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))


class Context:
    """What the objectives see of one forward pass: F_B, F_V computed once when first asked for, and the
    image encoder's features (B, S, C, h, w) when an objective ``uses_images``."""

    def __init__(self, bev: torch.Tensor, decoder: nn.Module | None, image_features: torch.Tensor | None = None):
        self.bev, self._decoder, self.image_features = bev, decoder, image_features

    @cached_property
    def volume(self) -> torch.Tensor:
        """F_V (B, N_B, Z, X, Y) from the shared unsplat decoder."""
        if self._decoder is None:
            raise RuntimeError("an objective asked for F_V but declares uses_volume = False")
        return self._decoder(self.bev)


class Objective(nn.Module):
    """Base class; see the module docstring. Subclasses set ``name``, ``label``, ``Config``."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    sources: ClassVar[tuple[str, ...]] = ()
    uses_volume: ClassVar[bool] = False
    uses_images: ClassVar[bool] = False

    def __init__(self, cfg: ObjectiveConfig, grid: BevGrid, bev_channels: int, image_channels: int = 128):
        super().__init__()
        self.cfg, self.grid, self.bev_channels, self.image_channels = cfg, grid, bev_channels, image_channels

    @classmethod
    def resolve(cls, cfg: ObjectiveConfig, sources: Sources) -> ObjectiveConfig:
        """``cfg`` checked against the caches (one-line errors), with what they determine filled in."""
        if not cfg.weight >= 0:
            raise OccfeatError(f"objectives.{cls.name}.weight={cfg.weight} must be >= 0")
        for name in cls.sources:
            if getattr(sources, name) is None:
                made_by = {"occupancy": "--occupancy (a cache from `occfeat voxelize`)", "features": "--features (a cache from `occfeat extract`)"}[name]
                raise OccfeatError(f"objective '{cls.name}' needs {made_by}")
        return cfg

    def inputs(self) -> list[SampleInput]:
        """The per-sample inputs this objective reads from the batch."""
        return []

    def forward(self, ctx: Context, batch: dict) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def stamp(self) -> dict:
        """{"label", "weight", and its other settings}: what finetune runs and the report record."""
        return {"label": self.label, **dataclasses.asdict(self.cfg)}
