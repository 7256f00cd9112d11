"""Self-supervised pretraining (paper §3, §4.1): a BEV network trained by a weighted sum of pretraining
objectives (:mod:`occfeat.objectives`; OccFeat = occupancy + λ·teacher features, eq. 1) on the
occupancy and teacher-feature caches, through the generic loop.

Checkpoint format (``RUN_DIR/checkpoints/last.pt`` and ``epoch_NNN.pt``, torch.save dicts, see
:mod:`occfeat.train.loop`): ``format``, ``step``, ``epoch``, ``config`` (the resolved config, also in
``RUN_DIR/config.yaml``), and ``task`` = {``network``: the BEV network's state_dict WITHOUT the heads,
``heads``: the unsplat decoder's and the objectives' state_dict, ``provenance``: backbone / teacher weight
sources}; ``last.pt`` adds ``optimizer``, ``scheduler`` and ``rng``. Finetuning reads a run through
:func:`read_pretrain_run`; the heads are thrown away, as in the paper.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from occfeat.config import resolve_saved, to_dict
from occfeat.data.extract import FeatureReader
from occfeat.data.index import SampleIndex
from occfeat.data.occupancy import OccupancyReader
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.models import NetworkConfig, SimpleBevConfig, UnsplatDecoder, build_network, camera_networks, upgrade_network_dict
from occfeat.objectives import ObjectiveConfig, Sources, registry
from occfeat.objectives.base import Context
from occfeat.objectives.features import FeaturesConfig
from occfeat.objectives.occupancy import OccupancyConfig
from occfeat.train.data import AugmentConfig, camera_rig
from occfeat.train.loop import TrainConfig, fit, load_checkpoint
from occfeat.train.pretrain_data import PretrainCollate, PretrainDataset
from occfeat.train.records import epochs_value, legacy_objectives


def _occfeat() -> dict[str, ObjectiveConfig]:
    return {"occupancy": OccupancyConfig(), "features": FeaturesConfig()}


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run; recipes in recipes/pretrain/ are deltas over these."""

    recipe_kind = "pretrain"  # not a field: the folder of shipped recipes a bare name is looked up in (config.find_recipe)
    network: NetworkConfig = field(default_factory=SimpleBevConfig)
    """The BEV network (SimpleBEV EN-B0 by default)."""
    grid: BevGrid = field(default_factory=BevGrid)
    """The BEV / occupancy grid (default: Simple-BEV's 200 x 200 x 8 at 0.5 m); the occupancy cache must match."""
    input_size: tuple[int, int] = (224, 400)
    """(H, W) of the camera images the network sees (paper: 224 x 400)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Simple-BEV's augmentations (resize + crop, image and BEV flips, random reference camera) and the
    resize mode; every objective's targets are exact in the drawn reference frame."""
    objectives: dict[str, ObjectiveConfig] = field(default_factory=_occfeat)
    """The pretraining objectives by name with their settings; the loss is the sum of their weighted
    terms. Default: OccFeat, L = L_occ + 0.01·L_feat (paper eq. 1). In a recipe, ``features: null``
    removes one (Table 3's occupancy-only row); ``occfeat.objectives.registry()`` lists them all."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation: the paper's Adam, lr 1e-3 constant, wd 1e-7, batch 16, 50 epochs."""


def upgrade_config_dict(saved: dict) -> dict:
    """A pretraining config saved by an earlier occfeat, in today's schema. Before the objectives layer
    the loss was a string mode ``loss`` ("both" = OccFeat, "occ", "feat") with ``lam`` and ``feature_dim``."""
    d = {k: v for k, v in saved.items() if k != "data"}
    if "loss" in d or "lam" in d or "feature_dim" in d:
        loss, lam, dim = d.pop("loss", "both"), d.pop("lam", 0.01), d.pop("feature_dim", None)
        d["objectives"] = legacy_objectives(loss, lam)  # an objective it lacks is removed: a saved config is whole
        if "features" in d["objectives"]:
            d["objectives"]["features"]["feature_dim"] = dim
    if isinstance(d.get("network"), dict):
        d["network"] = upgrade_network_dict(d["network"])
    return d


def config_from_saved(saved: dict, where: str) -> PretrainConfig:
    """A saved pretraining config (config.yaml, a checkpoint) re-resolved through today's dataclasses."""
    return resolve_saved(PretrainConfig, saved, where, upgrade=upgrade_config_dict)


def objectives_label(cfg: PretrainConfig) -> str:
    """The report's name of a pretraining: its objectives' labels joined by "+" ("Occ+Feat" is OccFeat)."""
    reg = registry()
    return "+".join(reg[name].label for name in cfg.objectives)


class PretrainModel(nn.Module):
    """The BEV network, the shared unsplat decoder (when an objective predicts on F_V) and the objectives,
    as one module (what DDP wraps). ``forward(batch)`` → (total loss, {"loss", "loss_<objective>": detached})."""

    def __init__(self, network: nn.Module, decoder: UnsplatDecoder | None, objectives: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.network, self.decoder = network, decoder
        self.objectives = nn.ModuleDict(objectives)
        self.weights = dict(weights)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if any(o.uses_images for o in self.objectives.values()):
            bev, image_features = self.network.forward_features(batch)
            ctx = Context(bev, self.decoder, image_features)
        else:
            ctx = Context(self.network(batch), self.decoder)
        total, terms = None, {}
        for name, objective in self.objectives.items():
            parts = objective(ctx, batch)
            main = next(iter(parts.values()))
            total = self.weights[name] * main if total is None else total + self.weights[name] * main
            terms.update({k: v.detach() for k, v in parts.items()})
        return total, {"loss": total.detach(), **terms}

    def heads_state(self) -> dict:
        """Everything but the network: the decoder's and the objectives' parameters."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("network.")}


def _check_source(name: str, path: Path, spec: dict, source: dict) -> None:
    """Refuse a cache made from another dataroot or version, or from another split than ``source``'s
    (a cache of split "all" serves every split): same tokens in another world are other samples."""
    have = {k: spec.get(k) for k in ("dataroot", "version", "split")}
    bad = [k for k in ("dataroot", "version") if have[k] is not None and have[k] != source[k]]
    if have["split"] not in (None, "all", source["split"]):
        bad.append("split")
    if bad:
        shown = ", ".join(f"{k} {have[k]!r} (this run: {source[k]!r})" for k in bad)
        raise OccfeatError(f"the {name} cache {path} was made from another source: {shown}; point to the cache made from this "
                           "dataroot, version and split, or rebuild it")


def _check_caches(sources: Sources, tokens: list[str], split: str, source: dict) -> None:
    """Refuse caches made from another source, or that miss samples of the split."""
    for name in ("occupancy", "features"):
        reader = getattr(sources, name)
        if reader is None:
            continue
        _check_source(name, reader.path, reader.spec, source)
        missing = [t for t in tokens if t not in reader]
        if missing:
            raise OccfeatError(
                f"{len(missing)} of {len(tokens)} samples of split '{split}' are missing from the {name} cache "
                f"{reader.path} (e.g. {missing[0]}); build it for this split"
            )


def _legacy_heads(head: dict, objectives) -> dict:
    """The heads of a checkpoint written before the objectives layer (one ``head``: the unsplat decoder
    with both predictors) under today's names."""
    out = {}
    for k, v in head.items():
        part, _, rest = k.partition(".")
        if part in ("bev", "volume"):
            out[f"decoder.{k}"] = v
        elif part == "occupancy" and "occupancy" in objectives:
            out[f"objectives.occupancy.predictor.{rest}"] = v
        elif part == "features" and "features" in objectives:
            out[f"objectives.features.predictor.{rest}"] = v
    return out


class PretrainTask:
    """A pretraining run for :func:`occfeat.train.loop.fit`."""

    def __init__(
        self, cfg: PretrainConfig, dataroot: str | Path, version: str, occupancy: str | Path | None, features: str | Path | None, split: str = "train",
        progress: bool = True,
    ):
        if not cfg.objectives:
            raise OccfeatError(f"the recipe lists no objectives; name at least one of {', '.join(registry())}")
        if cfg.network.arch not in camera_networks():
            raise OccfeatError(f"network arch '{cfg.network.arch}' reads no camera images; pretraining is for the camera "
                               f"student ({', '.join(sorted(camera_networks()))}): train a LiDAR teacher with `occfeat finetune`")
        reg = registry()
        needed = {s for name in cfg.objectives for s in reg[name].sources}
        index = SampleIndex(dataroot, version, split, progress=progress)
        # A cache no objective reads is neither needed nor opened (e.g. no teacher for occupancy-only runs).
        sources = Sources(
            cfg.grid,
            occupancy=OccupancyReader(occupancy, cfg.grid) if "occupancy" in needed and occupancy is not None else None,
            features=FeatureReader(features) if "features" in needed and features is not None else None,
        )
        resolved = {name: reg[name].resolve(c, sources) for name, c in cfg.objectives.items()}
        source = {"dataroot": str(Path(dataroot).resolve()), "version": version, "split": split or "all"}
        _check_caches(sources, index.tokens, split, source)
        self.cfg = replace(cfg, objectives=resolved)
        rigs = [camera_rig(index.record(t)) for t in index.tokens]

        torch.manual_seed(cfg.train.seed)  # the same recipe and seed build the same initial weights
        network = build_network(cfg.network, cfg.grid)
        objectives = {name: reg[name](c, cfg.grid, cfg.network.bev_channels, cfg.network.image_channels) for name, c in resolved.items()}
        uses_volume = any(o.uses_volume for o in objectives.values())
        decoder = UnsplatDecoder(cfg.network.bev_channels, cfg.grid.shape[2]) if uses_volume else None
        self.model = PretrainModel(network, decoder, objectives, {n: c.weight for n, c in resolved.items()})
        inputs = [inp for o in objectives.values() for inp in o.inputs()]
        self.train_set = PretrainDataset(rigs, sources, inputs, cfg.input_size, cfg.augment, seed=cfg.train.seed)
        self.collate = PretrainCollate(self.train_set.ragged)
        self.data = {"version": version, "split": split, "samples": len(rigs)}
        teacher = sources.features
        keys = ("teacher", "pretrained", "weights_source", "weights_sha256", "feature_dim", "standin")
        standin = teacher is not None and teacher.standin  # not pretrained, but not random: stamped on its own
        self.provenance = {
            "backbone": network.provenance.as_dict(),
            # Runs that never read the teacher are not stamped with its weights.
            "teacher": {k: teacher.spec.get(k) for k in keys if k in teacher.spec} if teacher is not None else {"used": False},
            "random_init": not network.provenance.pretrained or (teacher is not None and not teacher.pretrained and not standin),
            "teacher_standin": standin,
            "inputs": {"dataroot": str(Path(dataroot).resolve()),
                       "occupancy": str(Path(occupancy).resolve()) if sources.occupancy is not None else None,
                       "features": str(Path(features).resolve()) if teacher is not None else None},  # fmt: skip
            "objectives": {name: o.stamp() for name, o in objectives.items()},
        }

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return model(batch)

    def checkpoint_payload(self) -> dict:
        return {"network": self.model.network.state_dict(), "heads": self.model.heads_state(), "provenance": self.provenance}

    def load_checkpoint_payload(self, payload: dict) -> None:
        self.model.network.load_state_dict(payload["network"])
        heads = payload["heads"] if "heads" in payload else _legacy_heads(payload["head"], self.cfg.objectives)
        missing, unexpected = self.model.load_state_dict({**{f"network.{k}": v for k, v in payload["network"].items()}, **heads}, strict=False)
        if missing or unexpected:
            raise OccfeatError(f"the checkpoint's heads do not fit this run's objectives (missing {missing[:2]}, unexpected {unexpected[:2]}); start a new --out")

    def config_dict(self) -> dict:
        return {**to_dict(self.cfg), "data": self.data}

    def resolve_saved(self, saved: dict) -> dict:
        """A saved config.yaml in today's schema, as :meth:`config_dict` would write it (resume compares the two)."""
        data = saved.get("data")
        resolved = config_from_saved(saved, "the run's saved config")
        return {**to_dict(resolved), **({"data": data} if data is not None else {})}

    def run_files(self) -> dict[str, str]:
        """Files written beside config.yaml: provenance.json says whether any weights were random."""
        return {"provenance.json": json.dumps(self.provenance, indent=2)}


def pretrain(
    cfg: PretrainConfig,
    dataroot: str | Path,
    version: str,
    occupancy: str | Path,
    features: str | Path | None,
    out: str | Path,
    split: str = "train",
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Build the task and run it; returns :func:`fit`'s summary plus ``provenance``. ``progress``: the
    devkit load's and the training's bars (labelled with the run dir's name and the epoch)."""
    task = PretrainTask(cfg, dataroot, version, occupancy, features, split, progress=progress)
    summary = fit(task, task.cfg.train, out, resume=resume, progress=progress)
    return {**summary, "provenance": task.provenance}


@dataclass
class PretrainRun:
    """A finished (or stopped) pretraining run as ``finetune --init`` reads it: its resolved config, the
    network weights without the heads, where its weights came from, and which checkpoint."""

    source: Path
    """What ``--init`` named (the run dir, or one of its checkpoint files), resolved."""
    checkpoint: Path
    config: PretrainConfig
    network_state: dict
    provenance: dict
    epochs: float
    """Epochs the checkpoint's network was trained for (fractional when the run stopped mid-epoch)."""

    @property
    def label(self) -> str:
        return objectives_label(self.config)

    def stamp(self) -> dict:
        """What a finetune run records about its initialisation (metrics.json ``pretraining``)."""
        return {
            "label": self.label,
            "objectives": {n: dataclasses.asdict(c) for n, c in self.config.objectives.items()},
            "epochs": epochs_value(self.epochs),
            "run": str(self.source),
        }


def read_pretrain_run(init: str | Path) -> PretrainRun:
    """The pretraining run ``init`` names: a run dir (its ``checkpoints/last.pt``) or one of its checkpoint
    files (e.g. ``RUN/checkpoints/epoch_010.pt``). Configs written by earlier versions are re-resolved
    through today's dataclasses. Rebuild the network with ``build_network(run.config.network, run.config.grid)``."""
    init = Path(init)
    run_dir, name = (init.parent.parent, init.name) if init.is_file() else (init, "last.pt")
    path = run_dir / "checkpoints" / name
    if not path.is_file():
        raise OccfeatError(f"{run_dir} has no checkpoints/{name}; pass a run dir written by `occfeat pretrain`")
    ckpt = load_checkpoint(path, if_damaged=f"pass one of {run_dir / 'checkpoints'}/epoch_*.pt as --init instead")
    if "network" not in ckpt.get("task", {}):
        raise OccfeatError(f"{path} is not a pretraining checkpoint (no network weights); pass an `occfeat pretrain` run dir")
    config = config_from_saved(ckpt["config"], f"pretraining run {run_dir}")
    prov_file = run_dir / "provenance.json"
    try:
        provenance = json.loads(prov_file.read_text()) if prov_file.is_file() else ckpt["task"].get("provenance", {})
    except json.JSONDecodeError as e:
        raise OccfeatError(f"{prov_file} is not valid JSON ({e}); restore it from the pretraining run") from e
    epochs = int(ckpt["step"]) / ckpt["steps_per_epoch"] if ckpt.get("steps_per_epoch") else float(ckpt["epoch"])
    return PretrainRun(init.resolve(), path, config, ckpt["task"]["network"], provenance, epochs)
