"""OccFeat pretraining (paper §3, §4.1): a BEV network plus the unsplat head, trained with
L = L_occ + λ·L_feat on the occupancy and teacher-feature caches, through the generic loop.

Checkpoint format (``RUN_DIR/checkpoints/last.pt`` and ``epoch_NNN.pt``, torch.save dicts, see
:mod:`occfeat.train.loop`): ``format``, ``step``, ``epoch``, ``config`` (the resolved config, also in
``RUN_DIR/config.yaml``), and ``task`` = {``network``: the BEV network's state_dict WITHOUT the head,
``head``: the unsplat head's state_dict, ``provenance``: backbone / teacher weight sources}; ``last.pt``
adds ``optimizer``, ``scheduler`` and ``rng``. Finetuning loads the network through
:func:`load_pretrained_network`; the head is thrown away, as in the paper.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import default_collate

from occfeat.config import to_dict
from occfeat.data.extract import FeatureReader
from occfeat.data.index import SampleIndex
from occfeat.data.occupancy import OccupancyReader
from occfeat.data.targets import voxel_feature_targets
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.losses import OccFeatLoss
from occfeat.models import NetworkConfig, SimpleBevConfig, UnsplatHead, build_network
from occfeat.train.data import AugmentConfig, PretrainDataset, camera_rig
from occfeat.train.loop import TrainConfig, fit, load_checkpoint


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run; recipes in recipes/pretrain/ are deltas over these."""

    network: NetworkConfig = field(default_factory=SimpleBevConfig)
    """The BEV network (SimpleBEV EN-B0 by default)."""
    grid: BevGrid = field(default_factory=BevGrid)
    """The BEV / occupancy grid (default: Simple-BEV's 200 x 200 x 8 at 0.5 m); the occupancy cache must match."""
    input_size: tuple[int, int] = (224, 400)
    """(H, W) of the camera images the network sees (paper: 224 x 400)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Simple-BEV's augmentations (resize + crop, image and BEV flips, random reference camera) and the
    resize mode; the occupancy and teacher-feature targets are exact in the drawn reference frame."""
    loss: str = "both"
    """"both" (OccFeat), "occ" (occupancy only) or "feat" (distillation only): Table 3."""
    lam: float = 0.01
    """λ in L = L_occ + λ·L_feat (eq. 1; Table 4 sweeps it)."""
    feature_dim: int | None = None
    """N_y, the teacher width the head predicts; None takes it from the features cache, a number must match it."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation: the paper's Adam, lr 1e-3 constant, wd 1e-7, batch 16, 50 epochs."""


class OccFeatModel(nn.Module):
    """The BEV network and the unsplat head as one module (what DDP wraps).

    ``forward(batch)`` → {"occ_logits" (B, Z, X, Y), and unless ``predict_features`` is off:
    "feat_pred" / "feat_target" (M, N_y), "feat_valid" (M,)} for the M occupied voxels. The targets are
    computed here, on the training device, from the stored teacher maps (paper §3.3).
    """

    def __init__(self, network: nn.Module, head: UnsplatHead, grid: BevGrid, predict_features: bool = True):
        super().__init__()
        self.network, self.head, self.grid, self.predict_features = network, head, grid, predict_features

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.head(self.network(batch))
        result = {"occ_logits": out["occ_logits"]}
        if self.predict_features:
            # Targets in float32 whatever the autocast: bilinear sampling of fp16 maps in bf16 loses the direction.
            with torch.no_grad(), torch.autocast(batch["images"].device.type, enabled=False):
                idx, target, valid = voxel_feature_targets(
                    batch["occupancy"], batch["features"].float(), batch["K_orig"], batch["cam_T_ego"], batch["image_hw_orig"], self.grid
                )
            result.update(feat_pred=self.head.predict_features(out["volume"], idx), feat_target=target, feat_valid=valid)
        return result


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


def _check_caches(occ: OccupancyReader, feats: FeatureReader | None, tokens: list[str], split: str, cfg: PretrainConfig,
                  source: dict | None = None) -> int | None:
    """The teacher width the head will predict, after checking the caches cover the split and come from
    ``source`` = {"dataroot" (resolved), "version", "split"} (when given).
    ``feats`` is None for occupancy-only pretraining, which never reads the teacher."""
    if source is not None:
        for name, reader in (("occupancy", occ), ("features", feats)):
            if reader is not None:
                _check_source(name, reader.path, reader.spec, source)
    if feats is None:
        missing = [t for t in tokens if t not in occ]
        if missing:
            raise OccfeatError(f"{len(missing)} of {len(tokens)} samples of split '{split}' are missing from the occupancy cache {occ.path} (e.g. {missing[0]}); build it for this split")
        return cfg.feature_dim
    if cfg.feature_dim is not None and cfg.feature_dim != feats.feature_dim:
        raise OccfeatError(
            f"features cache {feats.path} holds {feats.feature_dim}-dim teacher features but the recipe's head predicts "
            f"feature_dim={cfg.feature_dim}; extract with the matching teacher or set feature_dim={feats.feature_dim}"
        )
    for name, reader in (("occupancy", occ), ("features", feats)):
        missing = [t for t in tokens if t not in reader]
        if missing:
            raise OccfeatError(
                f"{len(missing)} of {len(tokens)} samples of split '{split}' are missing from the {name} cache "
                f"{reader.path} (e.g. {missing[0]}); build it for this split"
            )
    return feats.feature_dim


class PretrainTask:
    """The OccFeat pretraining task for :func:`occfeat.train.loop.fit`."""

    def __init__(
        self, cfg: PretrainConfig, dataroot: str | Path, version: str, occupancy: str | Path, features: str | Path | None, split: str = "train"
    ):
        if cfg.loss not in ("both", "occ", "feat"):
            raise OccfeatError(f"loss={cfg.loss!r} is not one of both, occ, feat")
        # Occupancy-only pretraining never reads the teacher: a features cache is neither needed nor read.
        teacher_used = cfg.loss != "occ"
        if teacher_used and features is None:
            raise OccfeatError(f"loss={cfg.loss} distills teacher features: pass --features (a cache from `occfeat extract`)")
        index = SampleIndex(dataroot, version, split)
        occ = OccupancyReader(occupancy, cfg.grid)  # refuses a cache built on another grid
        feats = FeatureReader(features) if teacher_used else None
        source = {"dataroot": str(Path(dataroot).resolve()), "version": version, "split": split or "all"}
        self.cfg = replace(cfg, feature_dim=_check_caches(occ, feats, index.tokens, split, cfg, source))
        rigs = [camera_rig(index.record(t)) for t in index.tokens]

        torch.manual_seed(cfg.train.seed)  # the same recipe and seed build the same initial weights
        network = build_network(cfg.network, cfg.grid)
        width = {} if self.cfg.feature_dim is None else {"feature_dim": self.cfg.feature_dim}  # occ-only: the head's default
        head = UnsplatHead(cfg.network.bev_channels, cfg.grid.shape[2], **width)
        self.model = OccFeatModel(network, head, cfg.grid, predict_features=cfg.loss != "occ")
        self.criterion = OccFeatLoss(mode=cfg.loss, lam=cfg.lam)
        # occ-only / feat-only leave one predictor without gradients; DDP must be told.
        self.find_unused_parameters = cfg.loss != "both"
        self.train_set = PretrainDataset(rigs, occ, feats, cfg.input_size, cfg.augment, seed=cfg.train.seed)
        self.collate = default_collate
        self.data = {"version": version, "split": split, "samples": len(rigs)}
        # Occupancy-only pretraining never reads the teacher: its weights do not stamp the run.
        keys = ("teacher", "pretrained", "weights_source", "weights_sha256", "feature_dim")
        self.provenance = {
            "backbone": network.provenance.as_dict(),
            "teacher": {k: feats.spec.get(k) for k in keys if k in feats.spec} if teacher_used else {"used": False},
            "random_init": not network.provenance.pretrained or (teacher_used and not feats.pretrained),
            "inputs": {"dataroot": str(Path(dataroot).resolve()), "occupancy": str(Path(occupancy).resolve()),
                       "features": str(Path(features).resolve()) if teacher_used else None},  # fmt: skip
        }

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch)
        return self.criterion(
            out["occ_logits"], batch["occupancy"], out.get("feat_pred"), out.get("feat_target"), out.get("feat_valid")
        )

    def checkpoint_payload(self) -> dict:
        return {
            "network": self.model.network.state_dict(),
            "head": self.model.head.state_dict(),
            "provenance": self.provenance,
        }

    def load_checkpoint_payload(self, payload: dict) -> None:
        self.model.network.load_state_dict(payload["network"])
        self.model.head.load_state_dict(payload["head"])

    def config_dict(self) -> dict:
        return {**to_dict(self.cfg), "data": self.data}

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
) -> dict:
    """Build the task and run it; returns :func:`fit`'s summary plus ``provenance``."""
    task = PretrainTask(cfg, dataroot, version, occupancy, features, split)
    summary = fit(task, task.cfg.train, out, resume=resume)
    return {**summary, "provenance": task.provenance}


def load_pretrained_network(run_dir: str | Path, checkpoint: str = "last.pt") -> tuple[dict, dict]:
    """(network state_dict without the head, resolved pretraining config) of a pretraining run.

    ``checkpoint``: "last.pt" or an "epoch_NNN.pt" under RUN_DIR/checkpoints (``finetune --init`` takes
    either the run dir or the path of one of them). Rebuild the network with
    ``build_network(merge(NetworkConfig(), config["network"]), BevGrid.from_spec(config["grid"]))``
    (``occfeat.config.merge``), then ``load_state_dict``.
    """
    path = Path(run_dir) / "checkpoints" / checkpoint
    if not path.is_file():
        raise OccfeatError(f"{run_dir} has no checkpoints/{checkpoint}; pass a run dir written by `occfeat pretrain`")
    ckpt = load_checkpoint(path, if_damaged=f"pass one of {Path(run_dir) / 'checkpoints'}/epoch_*.pt as --init instead")
    if "network" not in ckpt.get("task", {}):
        raise OccfeatError(f"{path} is not a pretraining checkpoint (no network weights); pass an `occfeat pretrain` run dir")
    return ckpt["task"]["network"], ckpt["config"]
