"""A finetuning run's configuration: :class:`FinetuneConfig` (every setting, defaults from the paper
and Simple-BEV), how a run resolves it (:func:`resolve_config`: the paper's row for the label fraction ←
recipe ← overrides) and how a saved one is read back through today's dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from occfeat.config import merge, parse_overrides, read_recipe, resolve_saved, to_dict
from occfeat.data.gt import GtConfig, check_task
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.models import NetworkConfig, SimpleBevConfig, upgrade_network_dict
from occfeat.train.data import AugmentConfig
from occfeat.train.distill_config import DistillConfig
from occfeat.train.extra_heads import ExtraHeadConfig
from occfeat.train.labels import FINETUNE_OPTIM, FRACTION_DEFAULTS, check_fraction, fraction_defaults
from occfeat.train.loop import TrainConfig


@dataclass
class FinetuneConfig:
    """One finetuning run. Defaults: the paper's SimpleBEV EN-B0 at 224x400 on the Simple-BEV grid."""

    recipe_kind = "finetune"  # not a field: the folder of shipped recipes a bare name is looked up in (config.find_recipe)
    network: NetworkConfig = field(default_factory=SimpleBevConfig)
    grid: BevGrid = field(default_factory=BevGrid)
    task: str = "vehicle"
    """"vehicle" (1 class) or "map" (the classes of ``gt.map_layers``)."""
    fraction: float = 1.0
    """Share of the training split's key frames that are labelled, in (0, 1]."""
    input_size: tuple[int, int] = (224, 400)
    """(H, W) of the camera images fed to the network."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**FINETUNE_OPTIM, **FRACTION_DEFAULTS[1.0]))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Simple-BEV's augmentations on the training samples (never on evaluation): resize + crop, image / BEV
    flips and the random reference camera, whose ground truth is drawn exactly in the drawn frame R."""
    gt: GtConfig = field(default_factory=GtConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Cross-modal distillation from a LiDAR teacher while finetuning (BEVDistill / DistillBEV); off by default."""
    extra_head: ExtraHeadConfig = field(default_factory=ExtraHeadConfig)
    """A head trained beside the BEV loss and dropped at test time: BEVFormer v2's perspective head or its
    control, a second BEV head (:mod:`occfeat.train.extra_heads`); off by default."""
    eval_every: int = 0
    """Also evaluate on the val split every this many epochs (0: only after training)."""
    eval_batch_size: int = 4
    n_vis_samples: int = 3
    """Val samples stored in samples.npz (cameras, GT, prediction) for the report's figure."""


def resolve_config(
    recipe: str | Path | None, task: str, fraction: float, overrides: list[str] | dict | None = None
) -> FinetuneConfig:
    """Defaults ← the paper's row for ``fraction`` ← recipe ← ``key=value`` overrides (flags last)."""
    check_task(task)
    cfg = FinetuneConfig(task=task, fraction=check_fraction(fraction))
    cfg = merge(cfg, {"train": {**FINETUNE_OPTIM, **fraction_defaults(fraction)}})
    if recipe is not None:
        delta = read_recipe(recipe, FinetuneConfig.recipe_kind)
        for key in ("task", "fraction"):
            if key in delta:
                raise OccfeatError(f"recipe {recipe} sets '{key}'; pass it as --{key} instead")
        cfg = merge(cfg, delta, where=str(recipe))
    if overrides:
        cfg = merge(cfg, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)), where="override")
    check_task(cfg.task)
    check_fraction(cfg.fraction)
    cfg.distill.check()
    cfg.extra_head.check()
    if cfg.extra_head.enabled and cfg.distill.enabled and cfg.distill.unlabelled:
        raise OccfeatError(f"extra_head.kind={cfg.extra_head.kind} trains on labels, which the unlabelled frames of "
                           "distill.unlabelled do not have; drop one of the two")
    return cfg


def config_as_dict(cfg: FinetuneConfig) -> dict:
    """JSON-able resolved config (what config.yaml and checkpoints hold)."""
    return to_dict(cfg)


def upgrade_config_dict(saved: dict) -> dict:
    """A finetune config saved by an earlier occfeat, in today's schema (the network's flat fields)."""
    d = {k: v for k, v in saved.items() if k not in ("init", "data")}
    if isinstance(d.get("network"), dict):
        d["network"] = upgrade_network_dict(d["network"])
    return d


def config_from_dict(d: dict) -> FinetuneConfig:
    """Inverse of :func:`config_as_dict` (for ``occfeat evaluate``); configs saved by earlier versions
    are re-resolved through today's dataclasses."""
    return resolve_saved(FinetuneConfig, d, "run config", upgrade=upgrade_config_dict)
