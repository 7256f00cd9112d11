"""``occfeat finetune``: BEV segmentation (vehicle or map) from a pretrained or ImageNet-initialised
network on a fraction of the labels (paper §4.1 "Finetuning", Table 1).

- :class:`FinetuneConfig` (:mod:`occfeat.train.finetune_config`) holds every setting; the paper's finetuning hyper-parameters per label fraction
  (:data:`occfeat.train.labels.FRACTION_DEFAULTS`) apply before the recipe and the overrides.
- :mod:`occfeat.train.labels` holds the label-fraction rule; :mod:`occfeat.train.init` builds the
  segmentation model from ImageNet weights or a pretraining run.
- :class:`FinetuneTask` plugs the network + :class:`SegmentationHead` (+ for vehicles Simple-BEV's
  :class:`InstanceHeads`, trained only) and the task's loss module into the generic loop
  (:func:`occfeat.train.loop.fit`); :func:`run_finetune` trains and then evaluates the segmentation
  model alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from occfeat.data.gt import task_classes
from occfeat.data.gt_cache import segmentation_gt
from occfeat.data.index import SampleIndex, is_synthetic
from occfeat.data.voxelize import LidarGrid
from occfeat.errors import OccfeatError
from occfeat.losses import MapSegLoss, VehicleSegLoss
from occfeat.models import InstanceHeads, build_network, registered_networks
from occfeat.train.data import AugmentConfig, CameraDataset, CameraRig, camera_rig
from occfeat.train.distill import BoxMaps, Distiller, Teacher, load_teacher
from occfeat.train.evaluate import evaluate, log_evaluation, write_samples
from occfeat.train.extra_heads import ExtraHead
from occfeat.train.finetune_config import (  # noqa: F401 - re-exported: the finetune API
    FinetuneConfig, config_as_dict, config_from_dict, resolve_config, upgrade_config_dict,
)
from occfeat.train.init import SegmentationModel, build_model
from occfeat.train.labels import LABELLED_TOKENS, read_tokens, select_labelled, write_or_check_tokens
from occfeat.train.loop import fit, load_checkpoint
from occfeat.train.records import FinetuneMetrics, PretrainingStamp, Provenance
from occfeat.files import writing
from occfeat.perspective import PerspectiveTargets
from occfeat.train.rundir import read_jsonl, rewrite_jsonl, run_started

if TYPE_CHECKING:
    from occfeat.data.corruptions import Corruption


# ---------------------------------------------------------------- model, data, task

# The finetuning objective per task (see occfeat.losses): Simple-BEV's for vehicles, BCE per class for map.
TASK_LOSSES: dict[str, type[nn.Module]] = {"vehicle": VehicleSegLoss, "map": MapSegLoss}


class FinetuneModel(nn.Module):
    """What trains: the :class:`SegmentationModel`, the task's auxiliary heads (vehicles: Simple-BEV's
    :class:`InstanceHeads` on the same BEV features; map: none), the loss module, whose learned
    weights are parameters too, and with distillation the :class:`Distiller`'s adapters (the frozen
    teacher is held outside the parameters). batch → {"segmentation" (B, C, X, Y) logits, + "center",
    "offset", + the distillation terms}."""

    def __init__(self, segmentation: SegmentationModel, task: str, distiller: Distiller | None = None, extra: ExtraHead | None = None):
        super().__init__()
        self.segmentation = segmentation
        self.aux = InstanceHeads(segmentation.network.bev_channels) if task == "vehicle" else None
        self.objective = TASK_LOSSES[task]()
        self.distiller = distiller
        self.extra = extra

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """With a distiller, also its terms (``loss_distill``, ``loss_nce``), with an extra head its
        ``loss_extra`` (+ ``log_*`` parts): computed inside forward so that DDP sees every head used."""
        network = self.segmentation.network
        if self.extra is not None and self.extra.needs_images:
            bev, image_feats = network.forward_features(batch)
        else:
            bev, image_feats = network.forward_bev(batch), None
        out = {"segmentation": self.segmentation.head(bev)}
        if self.aux is not None:
            out.update(self.aux(bev))
        if self.distiller is not None:
            out.update(self.distiller(bev, batch)[1])
        if self.extra is not None:
            out.update(self.extra(bev, image_feats, batch))
        return out


class SegmentationDataset(CameraDataset):
    """The camera item (occfeat.train.data.CameraDataset) plus the ground truth in the sample's reference
    frame: ``target`` (C, X, Y) bool, ``valid`` (X, Y) bool and, for vehicles, ``center`` (1, X, Y) and
    ``offset`` (2, X, Y) float32 (see occfeat.data.gt). ``gt`` is a picklable
    :class:`occfeat.data.gt_cache.SegmentationGt`."""

    def __init__(self, rigs: list[CameraRig], gt, input_hw: tuple[int, int], augment: AugmentConfig, seed: int = 0,
                 lidar: LidarGrid | None = None, box_maps: BoxMaps | None = None,
                 perspective: PerspectiveTargets | None = None, stride: int = 8):  # fmt: skip
        super().__init__(rigs, input_hw, augment, seed)
        self.gt = gt
        self.lidar = lidar
        self.box_maps = box_maps
        self.perspective, self.stride = perspective, stride

    def __getitem__(self, i: int) -> dict:
        """The camera item and targets; with ``perspective`` also its per-camera ``pv_*`` targets at the
        encoder's resolution (input / ``stride``), drawn with this item's (augmented) intrinsics."""
        item = super().__getitem__(i)
        if self.perspective is not None:
            rig = self.rigs[i]
            pv = self.perspective(rig.token, rig.cam_T_ego, item["K"].numpy(), self.input_hw, self.stride)
            item.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pv.items()})
        return item

    def targets(self, rig: CameraRig, ref_T_ego: np.ndarray | None = None) -> dict:
        """Targets drawn exactly in frame R = ``ref_T_ego`` (4, 4) applied to the ego frame; None = ego.
        With ``lidar`` (a LiDAR network's or a LiDAR teacher's input) also ``lidar`` (X, Y, Z) bool, the
        occupancy in R; with ``box_maps`` (vehicle distillation) ``distill_fg`` and ``box_area`` (X, Y)."""
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.gt(rig.token, ref_T_ego).items()}
        if self.lidar is not None:
            out["lidar"] = torch.from_numpy(self.lidar(rig.token, ref_T_ego))
        if self.box_maps is not None:
            out.update({k: torch.from_numpy(v) for k, v in self.box_maps(rig.token, ref_T_ego).items()})
        return out


class NoLabels:
    """The ground truth of a frame used without its labels (semi-supervised distillation): zeros shaped
    like a labelled frame's (``template``: its targets and box maps), ``valid`` all False, so no loss term
    reads them and nothing is drawn from the frame's annotations. Picklable."""

    def __init__(self, template: dict[str, np.ndarray]):
        self.template = {k: np.zeros_like(v) for k, v in template.items()}

    def __call__(self, token: str, ref_T_ego: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.template.items()}


class SemiSupervisedSet(Dataset):
    """Labelled frames, each paired with an unlabelled one: item i = [labelled[i], unlabelled[j]] with
    ``labelled`` True / False, j = (epoch · L + i) mod U, so every epoch visits L new unlabelled frames
    and the whole pool is cycled through; an epoch is still one pass over the labelled frames (the
    paper's budget). :meth:`FinetuneTask.collate` flattens the pairs into one batch."""

    def __init__(self, labelled: SegmentationDataset, unlabelled: SegmentationDataset):
        self.labelled, self.unlabelled = labelled, unlabelled
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.labelled.set_epoch(epoch)
        self.unlabelled.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, i: int) -> list[dict]:
        j = (self.epoch * len(self.labelled) + i) % len(self.unlabelled)
        return [{**self.labelled[i], "labelled": True}, {**self.unlabelled[j], "labelled": False}]


def segmentation_set(
    index: SampleIndex, tokens: list[str], cfg: FinetuneConfig, gt_folder: Path, train: bool, progress: bool = True,
    teacher: Teacher | None = None, unlabelled: list[str] | None = None,
) -> SegmentationDataset | SemiSupervisedSet:
    """The dataset of ``tokens`` of ``index``'s split; what the ground truth needs is cached in ``gt_folder``.
    With ``teacher`` (distillation, training set) also the teacher's LiDAR input and the box maps; with
    ``unlabelled`` tokens too (semi-supervised) a :class:`SemiSupervisedSet` whose unlabelled frames carry
    :class:`NoLabels` instead of their ground truth."""
    gt = segmentation_gt(index, cfg.grid, cfg.task, cfg.gt, gt_folder, progress=progress)
    records = [index.record(t) for t in tokens]
    rigs = [camera_rig(rec) for rec in records]
    augment = cfg.augment if train else dataclasses.replace(cfg.augment, enabled=False)
    lidar, box_maps = None, None
    if "lidar" in registered_networks()[cfg.network.arch].inputs:
        lidar = LidarGrid(records, cfg.grid, cfg.network.sweeps)
    elif teacher is not None:
        lidar = LidarGrid(records, cfg.grid, teacher.sweeps)
    if teacher is not None and cfg.task == "vehicle":
        box_maps = BoxMaps(gt.source, cfg.distill.sigma)
    perspective = perspective_targets(cfg, gt, records) if train and cfg.extra_head.kind == "perspective" else None
    dataset = SegmentationDataset(rigs, gt, cfg.input_size, augment, seed=cfg.train.seed, lidar=lidar, box_maps=box_maps,
                                  perspective=perspective, stride=min(cfg.network.encoder_strides))
    if not unlabelled:
        return dataset
    first = records[0].token  # a labelled frame gives the shapes
    template = {**gt(first), **(box_maps(first) if box_maps is not None else {})}
    records = [index.record(t) for t in unlabelled]
    lidar = LidarGrid(records, cfg.grid, teacher.sweeps) if teacher is not None else None
    blind = SegmentationDataset([camera_rig(rec) for rec in records], NoLabels(template), cfg.input_size, augment,
                                seed=cfg.train.seed, lidar=lidar)
    return SemiSupervisedSet(dataset, blind)


def perspective_targets(cfg: FinetuneConfig, gt, records) -> PerspectiveTargets:
    """The perspective head's target builder for ``records``: the vehicle box table behind ``gt``, or
    the map masks with each sample's key-frame LiDAR sweep for the occlusion rule."""
    from occfeat.data.voxelize import sweep_job

    e = cfg.extra_head
    if cfg.task == "vehicle":
        return PerspectiveTargets(cfg.grid, boxes=gt.source.boxes, min_lidar_points=e.min_lidar_points, min_visible=e.min_visibility)
    return PerspectiveTargets(cfg.grid, map_gt=gt, lidar={rec.token: sweep_job(rec, 1) for rec in records},
                              tolerance=e.occlusion_tolerance, fill_rows=e.occlusion_fill_rows)


class FinetuneTask:
    """The finetuning task for :func:`occfeat.train.loop.fit`: trains a :class:`FinetuneModel` around
    ``model``; the checkpoint holds the segmentation model under "model" (all evaluation reads) and the
    training-only heads and loss weights under "aux" and "objective"."""

    def __init__(self, cfg: FinetuneConfig, model: SegmentationModel, train_set: SegmentationDataset, stamp: dict,
                 teacher: Teacher | None = None):  # fmt: skip
        """``stamp``: what the run stands on, kept in every checkpoint: {"init": the
        :class:`PretrainingStamp` as a dict, "provenance": the :class:`Provenance` as a dict, "data":
        dataroot, version, splits and ground-truth cache}. ``teacher``: the LiDAR teacher of ``cfg.distill``."""
        self.cfg, self.segmentation, self.train_set, self.stamp = cfg, model, train_set, stamp
        torch.manual_seed(cfg.train.seed + 1)  # the auxiliary heads: same recipe and seed, same weights
        aux_distiller = Distiller(cfg.distill, model.network, teacher, cfg.task) if teacher is not None else None
        extra = None
        if cfg.extra_head.enabled:
            extra = ExtraHead(cfg.extra_head, cfg.task, len(task_classes(cfg.task, cfg.gt)), model.network.bev_channels,
                              cfg.network.image_channels)
        self.model = FinetuneModel(model, cfg.task, aux_distiller, extra)

    def collate(self, items: list) -> dict:
        # a semi-supervised item is a [labelled, unlabelled] pair: one batch of both
        return default_collate([x for item in items for x in (item if isinstance(item, list) else [item])])

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch)
        pseudo = out.pop("pseudo_target", None)
        if pseudo is not None:  # the pseudo-label baseline: the teacher's predictions become the unlabelled frames' targets
            batch = with_pseudo_labels(batch, pseudo)
        total, terms = self.model.objective(out, batch)
        extra = {k: v for k, v in out.items() if k.startswith("loss_")}  # the distillation terms, the extra head's
        logged = {k[len("log_"):]: v for k, v in out.items() if k.startswith("log_")}
        if extra:
            total = total + sum(extra.values())
            terms = {**terms, **{k: v.detach() for k, v in extra.items()}, **logged, "loss": total.detach()}
        return total, terms

    def checkpoint_payload(self) -> dict:
        m = self.model
        distill = {"distill": m.distiller.state_dict()} if m.distiller is not None else {}
        extra = {"extra": m.extra.state_dict()} if m.extra is not None else {}
        return {"model": m.segmentation.state_dict(), "aux": m.aux.state_dict() if m.aux is not None else {},
                "objective": m.objective.state_dict(), **distill, **extra, **self.stamp}

    def load_checkpoint_payload(self, payload: dict) -> None:
        if "objective" not in payload:
            raise OccfeatError("the checkpoint predates the finetuning objective with learned weights; start a new --out")
        self.model.segmentation.load_state_dict(payload["model"])
        if self.model.aux is not None:
            self.model.aux.load_state_dict(payload["aux"])
        self.model.objective.load_state_dict(payload["objective"])
        if self.model.distiller is not None:
            self.model.distiller.load_state_dict(payload["distill"])
        if self.model.extra is not None:
            self.model.extra.load_state_dict(payload["extra"])

    def config_dict(self) -> dict:
        # What was loaded and from where is part of the run's identity: --resume refuses a change.
        return {**config_as_dict(self.cfg), "init": self.stamp["init"], "data": self.stamp["data"]}

    def resolve_saved(self, saved: dict) -> dict:
        """A saved config.yaml in today's schema, as :meth:`config_dict` writes it (--resume compares the two)."""
        init = saved.get("init")
        if isinstance(init, dict) and "label" not in init:  # a stamp of the old schema carried less: accept it
            old, now = PretrainingStamp.from_dict(init), PretrainingStamp.from_dict(self.stamp["init"])  # when all it has agrees
            weights = lambda st: {n: o.get("weight") for n, o in st.objectives.items()}  # noqa: E731
            # (its epochs were the configured ones, today's are those trained: the run path already names the pretraining)
            same = (old.label, old.run, weights(old)) == (now.label, now.run, weights(now))
            init = now.to_dict() if same else old.to_dict()
        extra = {k: v for k, v in (("init", init), ("data", saved.get("data"))) if k in saved}
        return {**config_as_dict(config_from_dict(saved)), **extra}


def with_pseudo_labels(batch: dict, pseudo: torch.Tensor) -> dict:
    """``batch`` with the frames whose ``labelled`` is False given ``pseudo`` (B, C, X, Y) bool as their
    target, every cell valid; labelled frames keep their ground truth. Centre and offset stay masked to
    the labelled frames (the loss reads ``labelled``)."""
    blind = ~batch["labelled"].bool()
    target = torch.where(blind[:, None, None, None], pseudo.to(batch["target"].dtype), batch["target"])
    valid = torch.where(blind[:, None, None], torch.ones_like(batch["valid"]), batch["valid"])
    return {**batch, "target": target, "valid": valid}


# ---------------------------------------------------------------- run + evaluate

def _device(cfg: FinetuneConfig) -> torch.device:
    """Where evaluation runs: ``train.device`` as training resolves it ("auto" = CUDA when there is one;
    a CUDA device on a machine without one is a one-line error). ``evaluate --device`` sets it."""
    from occfeat.train.dist import DistEnv, resolve_device

    return resolve_device(cfg.train.device, DistEnv())


def finetune_metrics(
    cfg: FinetuneConfig, pretraining: PretrainingStamp, provenance: Provenance, n_labelled: int, result: dict, **where
) -> FinetuneMetrics:
    """The run's record from its config, what it started from, and ``result`` (the IoU summary of
    :func:`occfeat.train.evaluate.evaluate`); ``where``: split, dataroot, version, step, epoch, checkpoint."""
    return FinetuneMetrics(
        task=cfg.task, fraction=cfg.fraction, seed=cfg.train.seed, labelled_samples=n_labelled, arch=cfg.network.arch,
        backbone=cfg.network.backbone if "images" in registered_networks()[cfg.network.arch].inputs else "none",
        input_size=tuple(cfg.input_size), classes=list(task_classes(cfg.task, cfg.gt)),
        pretraining=pretraining, provenance=provenance, **result, **where,
        extra_head={"kind": e.kind, "label": e.label, "weight": e.weight} if (e := cfg.extra_head).enabled else {},
    )


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_finetune(
    cfg: FinetuneConfig,
    dataroot: str | Path,
    version: str,
    out: str | Path,
    init: str | Path | None = None,
    split: str = "train",
    val_split: str = "val",
    resume: bool = False,
    gt_cache: str | Path | None = None,
    progress: bool = True,
) -> FinetuneMetrics | None:
    """Train on the labelled subset of ``split``, evaluate on ``val_split``; returns the run's record
    (None on the other ranks of a distributed run).

    Run dir: fit's files (config.yaml, metrics.jsonl, checkpoints/) plus ``labelled_tokens.txt``,
    ``metrics.json``, ``samples.npz`` and, with ``eval_every``, ``eval.jsonl`` (one row per evaluation).
    Ground truth is cached per split/grid/task in ``gt_cache`` (default: ``<out>/../gt-cache``), shared
    by every run beside this one.
    """
    out = Path(out)
    if not resume and run_started(out):  # before the slow setup; fit checks it again
        raise OccfeatError(f"run dir {out} already exists; pass --resume to continue it or choose another --out")
    train_index = SampleIndex(dataroot, version, split, progress=progress)
    val_index = SampleIndex(dataroot, version, val_split, nusc=train_index.nusc)
    chosen = set(select_labelled(train_index.tokens, cfg.fraction, cfg.train.seed))
    labelled = [t for t in train_index.tokens if t in chosen]  # the split's order, for readability
    gt_folder = Path(gt_cache) if gt_cache is not None else out.resolve().parent / "gt-cache"
    model, pretraining, provenance = build_model(cfg, init)
    provenance = dataclasses.replace(provenance, synthetic_data=is_synthetic(dataroot))
    data = {"dataroot": str(Path(dataroot).resolve()), "version": version, "split": split, "val_split": val_split, "gt_cache": str(gt_folder)}
    stamp = {"init": pretraining.to_dict(), "provenance": provenance.to_dict(), "data": data}
    teacher = load_teacher(cfg.distill.teacher, cfg.grid, cfg.task) if cfg.distill.enabled else None
    unlabelled = [t for t in train_index.tokens if t not in chosen] if cfg.distill.enabled and cfg.distill.unlabelled else []
    if cfg.distill.enabled and cfg.distill.unlabelled and not unlabelled:
        raise OccfeatError(f"distill.unlabelled: fraction {cfg.fraction:g} labels every frame of '{split}', none is left "
                           "unlabelled; drop distill.unlabelled (or use a smaller fraction)")
    distillation = teacher.stamp(labelled, cfg.distill, len(unlabelled)) if teacher is not None else {}
    train_set = segmentation_set(train_index, labelled, cfg, gt_folder, train=True, progress=progress, teacher=teacher,
                                 unlabelled=unlabelled)
    val_set = segmentation_set(val_index, val_index.tokens, cfg, gt_folder, train=False, progress=progress)
    task = FinetuneTask(cfg, model, train_set, {**stamp, "distillation": distillation}, teacher)

    # Evaluate every k epochs by running the loop in chunks (train.max_steps may change on resume).
    steps_per_epoch = max(1, len(train_set) // cfg.train.batch_size // cfg.train.grad_accum)
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps > 0:
        total = min(total, cfg.train.max_steps)
    stops = [e * steps_per_epoch for e in range(cfg.eval_every, cfg.train.epochs, cfg.eval_every) if e * steps_per_epoch < total] if cfg.eval_every > 0 else []
    eval_log = out / "eval.jsonl"
    done_evals = set()
    if resume and eval_log.is_file():  # a kill mid-append tears the last row: rewrite the log without it
        rows = read_jsonl(eval_log)
        rewrite_jsonl(eval_log, rows)
        done_evals = {row.get("step") for row in rows}
    first = True
    for stop in [*stops, total]:
        summary = fit(task, dataclasses.replace(cfg.train, max_steps=stop), out, resume=resume or not first, progress=progress)
        if first:
            write_or_check_tokens(out / LABELLED_TOKENS, labelled)
            first = False
        if stop == total or stop in done_evals or not _is_main_process():
            continue
        result, _ = evaluate(model, val_set, task_classes(cfg.task, cfg.gt), _device(cfg), cfg.eval_batch_size, 0, 0, progress)
        with writing(eval_log, then="rerun with --resume"), open(eval_log, "a") as f:
            f.write(json.dumps({"step": summary["step"], "epoch": summary["epoch"], "mean_iou": result["mean_iou"], "iou": result["iou"]}) + "\n")
        log_evaluation(out, summary["step"], result, val_split)
    if not _is_main_process():
        return None
    result, samples = evaluate(model, val_set, task_classes(cfg.task, cfg.gt), _device(cfg), cfg.eval_batch_size, 0, cfg.n_vis_samples, progress)
    metrics = finetune_metrics(cfg, pretraining, provenance, len(labelled), result, split=val_split, dataroot=data["dataroot"],
                               version=version, step=summary["step"], epoch=summary["epoch"], checkpoint=str(summary["checkpoint"]),
                               distillation=distillation)
    metrics.write(out)
    write_samples(out, samples, cfg.grid)
    log_evaluation(out, summary["step"], result, val_split, cfg.grid)
    return metrics


def run_evaluate(
    run_dir: str | Path, split: str | None = None, dataroot: str | Path | None = None, progress: bool = True, device: str | None = None,
    corruption: Corruption | None = None, image_root: str | Path | None = None,
) -> FinetuneMetrics:
    """Re-evaluate a finetune run's last checkpoint on ``split`` (default: its val split) on ``device``
    (default: the run's ``train.device``); rewrites ``metrics.json`` and ``samples.npz`` when that is the
    run's own val split, else writes ``metrics-<split>.json``. Under ``corruption`` (nuScenes-C, applied to
    each stored image as it is read) it writes ``metrics-<split>-<name>-s<severity>.json``; with
    ``image_root`` (a downloaded nuScenes-C copy, see :func:`images_under`) ``metrics-<split>-<label>.json``,
    the label made of the folder's last two names (``Fog/hard`` → ``Fog-hard``): neither touches the clean
    record. Returns the record."""
    run_dir = Path(run_dir)
    retrain = f"move it aside and rerun the finetune command with --out {run_dir} --resume to train it again"
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt", if_damaged=retrain)
    payload = ckpt.get("task", {})
    if "model" not in payload or "data" not in payload:
        raise OccfeatError(f"{run_dir} is not an occfeat finetune run (its checkpoint holds no segmentation model)")
    config = {k: v for k, v in ckpt["config"].items() if k not in ("init", "data")}
    cfg = config_from_dict(config)
    if device is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    data = payload["data"]
    root = Path(dataroot) if dataroot is not None else Path(data["dataroot"])
    split = split or data["val_split"]
    index = SampleIndex(root, data["version"], split, progress=progress)
    # The checkpoint replaces every weight: no ImageNet file needed to rebuild the network.
    network = build_network(dataclasses.replace(cfg.network, random_init=True, backbone_weights=None), cfg.grid)
    model = SegmentationModel(network, len(task_classes(cfg.task, cfg.gt))).to(_device(cfg))
    model.load_state_dict(payload["model"])
    dataset = segmentation_set(index, index.tokens, cfg, Path(data["gt_cache"]), train=False, progress=progress)
    if image_root is not None:
        dataset.rigs = images_under(dataset.rigs, index.dataroot, Path(image_root))
    dataset.corruption = corruption
    labelled = read_tokens(run_dir / LABELLED_TOKENS)
    # Checkpoints written before the typed records hold the old stamp: the records read it.
    pretraining = PretrainingStamp.from_dict(payload.get("init"))
    provenance = dataclasses.replace(Provenance.from_dict(payload.get("provenance")), synthetic_data=is_synthetic(root))
    result, samples = evaluate(model, dataset, task_classes(cfg.task, cfg.gt), _device(cfg), cfg.eval_batch_size, 0, cfg.n_vis_samples, progress)
    metrics = finetune_metrics(cfg, pretraining, provenance, len(labelled), result, split=split, dataroot=str(root.resolve()),
                               version=data["version"], step=ckpt["step"], epoch=ckpt["epoch"], checkpoint=str(run_dir / "checkpoints" / "last.pt"),
                               distillation=payload.get("distillation", {}))
    if corruption is not None or image_root is not None:
        labels = [] if image_root is None else ["-".join(Path(image_root).resolve().parts[-2:])]
        if corruption is not None:
            metrics.corruption, metrics.severity = corruption.name, corruption.severity
            labels.append(corruption.label)
        metrics.image_root = "" if image_root is None else str(Path(image_root).resolve())
        name = "-".join([split, *labels])
        metrics.write(run_dir, f"metrics-{name}.json")
        log_evaluation(run_dir, ckpt["step"], result, name)
    elif split == data["val_split"]:
        metrics.write(run_dir)
        write_samples(run_dir, samples, cfg.grid)
        log_evaluation(run_dir, ckpt["step"], result, split, cfg.grid)
    else:
        metrics.write(run_dir, f"metrics-{split}.json")
        log_evaluation(run_dir, ckpt["step"], result, split)
    return metrics


def images_under(rigs: list[CameraRig], dataroot: Path, image_root: Path) -> list[CameraRig]:
    """``rigs`` reading their images from ``image_root`` at the same paths relative to ``dataroot``
    (samples/CAM_*/...), or without the leading samples/ when ``image_root`` has no such folder: nuScenes-C
    ships ``<Corruption>/<easy|mid|hard>/CAM_*/<file>``. A one-line error if any image is missing there."""
    strip = 0 if (image_root / "samples").is_dir() else 1
    moved = [dataclasses.replace(r, paths=tuple(str(image_root.joinpath(*Path(os.path.relpath(p, dataroot)).parts[strip:])) for p in r.paths))
             for r in rigs]
    missing = [p for r in moved for p in r.paths if not Path(p).is_file()]
    if missing:
        raise OccfeatError(f"{len(missing)} camera image(s) missing under --image-root {image_root}, e.g. {missing[0]}; "
                           "give the folder that holds the corrupted samples/CAM_* images")
    return moved
