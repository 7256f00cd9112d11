"""``occfeat finetune``: BEV segmentation (vehicle or map) from a pretrained or ImageNet-initialised
network on a fraction of the labels (paper §4.1 "Finetuning", Table 1).

- :class:`FinetuneConfig` holds every setting; :data:`FRACTION_DEFAULTS` is the paper's table of
  finetuning hyper-parameters per label fraction, applied before the recipe and the overrides.
- :func:`select_labelled` is the label-fraction rule: seeded, deterministic and nested.
- :class:`FinetuneTask` plugs the network + :class:`SegmentationHead` into the generic loop
  (:func:`occfeat.train.loop.fit`); :func:`run_finetune` trains and then evaluates.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from occfeat.config import merge, parse_overrides, read_recipe
from occfeat.data.gt import GtConfig, check_task
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.models import NetworkConfig
from occfeat.train.loop import TrainConfig

# Paper §4.1: epochs / starting lr / batch size / gradient accumulation per label fraction, with AdamW,
# OneCycle and weight decay 1e-7. A fraction between two rows takes the next larger row.
FRACTION_DEFAULTS: dict[float, dict] = {
    0.01: {"epochs": 100, "lr": 1e-4, "batch_size": 6, "grad_accum": 1},
    0.1: {"epochs": 50, "lr": 1e-4, "batch_size": 6, "grad_accum": 1},
    1.0: {"epochs": 30, "lr": 3e-4, "batch_size": 8, "grad_accum": 5},
}
FINETUNE_OPTIM = {"optimizer": "adamw", "schedule": "onecycle", "weight_decay": 1e-7}
LABELLED_TOKENS = "labelled_tokens.txt"


@dataclass
class FinetuneConfig:
    """One finetuning run. Defaults: the paper's SimpleBEV EN-B0 at 224x400 on the Simple-BEV grid."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    grid: BevGrid = field(default_factory=BevGrid)
    task: str = "vehicle"
    """"vehicle" (1 class) or "map" (road, sidewalk, crosswalk, parking, divider)."""
    fraction: float = 1.0
    """Share of the training split's key frames that are labelled, in (0, 1]."""
    input_size: tuple[int, int] = (224, 400)
    """(H, W) of the camera images fed to the network."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**FINETUNE_OPTIM, **FRACTION_DEFAULTS[1.0]))
    gt: GtConfig = field(default_factory=GtConfig)
    eval_every: int = 0
    """Also evaluate on the val split every this many epochs (0: only after training)."""
    eval_batch_size: int = 4
    n_vis_samples: int = 3
    """Val samples stored in samples.npz (cameras, GT, prediction) for the report's figure."""


def fraction_defaults(fraction: float) -> dict:
    """The :data:`FRACTION_DEFAULTS` row for ``fraction`` (the smallest tabulated fraction >= it)."""
    check_fraction(fraction)
    key = min(f for f in FRACTION_DEFAULTS if f >= fraction - 1e-12)
    return dict(FRACTION_DEFAULTS[key])


def check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise OccfeatError(f"--fraction must be in (0, 1] (e.g. 0.01, 0.1, 1.0), got {fraction}")
    return float(fraction)


def resolve_config(
    recipe: str | Path | None, task: str, fraction: float, overrides: list[str] | dict | None = None
) -> FinetuneConfig:
    """Defaults ← the paper's row for ``fraction`` ← recipe ← ``key=value`` overrides (flags last)."""
    check_task(task)
    cfg = FinetuneConfig(task=task, fraction=check_fraction(fraction))
    cfg = merge(cfg, {"train": {**FINETUNE_OPTIM, **fraction_defaults(fraction)}})
    if recipe is not None:
        delta = read_recipe(recipe)
        for key in ("task", "fraction"):
            if key in delta:
                raise OccfeatError(f"recipe {recipe} sets '{key}'; pass it as --{key} instead")
        cfg = merge(cfg, delta, where=str(recipe))
    if overrides:
        cfg = merge(cfg, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)), where="override")
    check_task(cfg.task)
    check_fraction(cfg.fraction)
    return cfg


def select_labelled(tokens: list[str], fraction: float, seed: int) -> list[str]:
    """The labelled subset: rank tokens by sha256("<seed>:<token>") and keep the first ceil(f·N) (>= 1).

    Deterministic (no RNG state, independent of the tokens' order) and nested: for one seed the 1 %
    subset is inside the 10 % one, which is inside the full split. Returned in ranking order.
    """
    check_fraction(fraction)
    if not tokens:
        raise OccfeatError("the training split has no samples; check --split")
    ranked = sorted(set(tokens), key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    n = max(1, math.ceil(fraction * len(ranked) - 1e-9))
    return ranked[:n]


def write_tokens(path: Path, tokens: list[str]) -> None:
    path.write_text("".join(t + "\n" for t in tokens))


def read_tokens(path: Path) -> list[str]:
    if not path.is_file():
        raise OccfeatError(f"{path} not found; the run dir is incomplete, start it again with occfeat finetune")
    return [t for t in path.read_text().split() if t]


def config_as_dict(cfg: FinetuneConfig) -> dict:
    """JSON-able resolved config (what config.yaml and checkpoints hold)."""
    from occfeat.config import to_dict

    return to_dict(cfg)


def config_from_dict(d: dict) -> FinetuneConfig:
    """Inverse of :func:`config_as_dict` (for ``occfeat evaluate``)."""
    return merge(FinetuneConfig(), d, where="run config")
