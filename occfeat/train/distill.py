"""Cross-modal distillation while finetuning: a frozen LiDAR teacher (a finetune run of ``network.arch:
lidar``, see :mod:`occfeat.models.lidar`) on the student's grid, and the student's BEV features pulled
towards the teacher's through 1x1 adapters, beside the segmentation loss.

- ``bevdistill`` (BEVDistill, ICLR 2023): the dense foreground-guided term on F_B
  (:func:`occfeat.distillation.dense_distillation_loss`), weights W = Gaussians at the GT vehicle centres
  (official code's CenterPoint radius, or ``sigma`` = the paper's 2 cells); map task: W = the teacher's
  predicted class probability (BEVDistill's "predicted heatmap" mask). Optional InfoNCE critic on
  foreground cells (``nce_weight``). Official loss weight 0.01.
- ``distillbev`` (DistillBEV, ICCV 2023): region-decomposed, scale-adaptive, attention-weighted squared
  error (:func:`occfeat.distillation.region_distillation_loss`) at several stages of the SimpleBEV
  decoder (``stages``: layer1 / layer2 / layer3 at 1/2, 1/4, 1/8 of the grid, and F_B), each with its own
  adapter. Vehicles: foreground = cells of the GT boxes, scale from each box's area; map: foreground =
  cells of any map class, scale from the size of its connected region.

Only the labelled frames of the run's (fraction, seed) are used; the teacher must have been trained on
the same grid and task. A teacher that saw more labelled frames than the student is recorded as
privileged (the report marks the row)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from occfeat.distillation import (
    component_sizes, dense_distillation_loss, foreground_gaussians, info_nce, region_distillation_loss, region_masks, scale_factors,
    spatial_attention,
)
from occfeat.errors import OccfeatError
from occfeat.models.flips import flip_bev
from occfeat.train.distill_config import DEFAULT_WEIGHT, LABELS, METHODS, STAGES, DistillConfig  # noqa: F401 - re-exported

@dataclass
class Teacher:
    """A loaded LiDAR teacher: its frozen segmentation model and what the run record says about it."""

    model: nn.Module
    run: Path
    labelled: list[str]
    fraction: float
    seed: int
    sweeps: int

    def stamp(self, student_labelled: list[str], cfg: DistillConfig, n_unlabelled: int = 0) -> dict:
        """What the student's metrics.json records: the method (its label names a weight other than the
        method's default and the unlabelled frames), which teacher, on how many labels, whether it saw
        labelled frames the student did not (privileged: never part of a low-label claim), and how many
        unlabelled frames the student trained on."""
        extra = sorted(set(self.labelled) - set(student_labelled))
        return {"method": cfg.method, "label": cfg.label(), "weight": cfg.loss_weight(), "teacher_run": str(self.run),
                "teacher_fraction": self.fraction, "teacher_seed": self.seed, "teacher_labelled": len(self.labelled),
                "privileged": bool(extra), "unlabelled": n_unlabelled}


def load_teacher(run_dir: str | Path, grid, task: str) -> Teacher:
    """The frozen LiDAR teacher of finetune run ``run_dir``; one-line errors for anything that does not fit."""
    from occfeat.data.gt import task_classes
    from occfeat.models import build_network, registered_networks
    from occfeat.train.finetune_config import config_from_dict
    from occfeat.train.init import SegmentationModel
    from occfeat.train.labels import LABELLED_TOKENS, read_tokens
    from occfeat.train.rundir import load_checkpoint

    run = Path(run_dir).resolve()
    if not (run / "checkpoints" / "last.pt").is_file():
        raise OccfeatError(f"distill.teacher {run} holds no checkpoints/last.pt; train the LiDAR teacher first "
                           "(occfeat finetune --recipe recipes/finetune/synthetic-lidar.yaml ... --out that dir)")
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt", if_damaged="train the teacher again with occfeat finetune")
    payload = ckpt.get("task", {})
    if "model" not in payload:
        raise OccfeatError(f"distill.teacher {run} is not an occfeat finetune run (its checkpoint holds no segmentation model)")
    cfg = config_from_dict({k: v for k, v in ckpt["config"].items() if k not in ("init", "data")})
    if "lidar" not in registered_networks()[cfg.network.arch].inputs:
        raise OccfeatError(f"distill.teacher {run} is a '{cfg.network.arch}' camera network; train a LiDAR teacher "
                           "(network.arch: lidar, e.g. recipes/finetune/synthetic-lidar.yaml)")
    if cfg.grid != grid:
        raise OccfeatError(f"distill.teacher {run} was trained on grid {cfg.grid.spec()}, the student uses {grid.spec()}; "
                           "teacher and student must share the grid cell for cell")
    if cfg.task != task:
        raise OccfeatError(f"distill.teacher {run} segments '{cfg.task}', this run '{task}'; train a teacher for the same task")
    network = build_network(cfg.network, cfg.grid)
    model = SegmentationModel(network, len(task_classes(cfg.task, cfg.gt)))
    model.load_state_dict(payload["model"])
    model.eval().requires_grad_(False)
    return Teacher(model, run, read_tokens(run / LABELLED_TOKENS), cfg.fraction, cfg.train.seed, cfg.network.sweeps)


# ---------------------------------------------------------------- per-sample inputs (dataset side)


class BoxMaps:
    """The vehicle boxes' maps distillation needs, in the sample's reference frame R: ``distill_fg``
    (X, Y) BEVDistill's Gaussians and ``box_area`` (X, Y) the area in cells of the box covering each cell
    (the one drawn last where boxes overlap, as the target's instance ids; 0 outside). Picklable (plain arrays) for DataLoader workers."""

    def __init__(self, vehicle_gt, sigma: float | None):
        self.gt, self.sigma = vehicle_gt, sigma

    def __call__(self, token: str, ref_T_ego: np.ndarray | None = None) -> dict[str, np.ndarray]:
        from occfeat.data.gt import footprint_ids, grid_coords

        corners, centres, _ = self.gt.boxes_in(token, ref_T_ego)
        grid = self.gt.grid
        X, Y = grid.shape[:2]
        vx, vy = grid.voxel_size[:2]
        c = corners[..., :2]
        length = np.linalg.norm(c[:, 1] - c[:, 0], axis=-1)  # along two adjacent edges of the bottom face (m)
        width = np.linalg.norm(c[:, 2] - c[:, 1], axis=-1)
        centre_cells = grid_coords(centres[:, :2], grid) + 0.5  # continuous cell units: cell k spans [k, k + 1)
        boxes = np.column_stack([centre_cells, length / vx, width / vy]) if len(c) else np.zeros((0, 4))
        fg = foreground_gaussians(boxes, (X, Y), self.sigma)
        ids = footprint_ids(c, grid, self.gt.cfg.vehicle_rule)  # instance n + 1 per cell, 0 outside
        area = np.concatenate([[0.0], length * width / (vx * vy)]).astype(np.float32)
        return {"distill_fg": fg, "box_area": area[ids]}


# ---------------------------------------------------------------- the loss (model side)


class StageTap:
    """Forward hooks that keep the outputs of a BEV decoder's layer1-3 (the stages DistillBEV distils)."""

    def __init__(self, network: nn.Module, stages: tuple[str, ...]):
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        decoder = getattr(network, "decoder", None)
        for name in stages:
            if name == "bev":
                continue
            layer = getattr(decoder, name, None)
            if layer is None:
                raise OccfeatError(f"distill.stages names '{name}' but the {type(network).__name__} network has no "
                                   "SimpleBEV decoder stage of that name; use stages=[bev]")
            self.handles.append(layer.register_forward_hook(self._keep(name)))

    def _keep(self, name: str):
        def hook(_module, _inputs, output):
            self.out[name] = output
        return hook


def _stage_channels(network: nn.Module, name: str) -> int:
    if name == "bev":
        return network.bev_channels
    layer = getattr(network.decoder, name)
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class Distiller(nn.Module):
    """The adapters φ (one 1x1 conv per stage, student → teacher channels) and the distillation term.
    ``forward(student_feats, batch, target)`` → (loss, terms); the teacher runs inside, without gradient."""

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: Teacher, task: str):
        super().__init__()
        self.cfg, self.task = cfg, task
        self.stages = cfg.used_stages()
        self.teacher = [teacher.model]  # a list: not a submodule, so neither the optimizer nor the checkpoint sees it
        self.adapters = nn.ModuleDict({
            s: nn.Conv2d(_stage_channels(student, s), _stage_channels(teacher.model.network, s), 1) for s in self.stages
        })
        self.student_tap = StageTap(student, self.stages)
        self.teacher_tap = StageTap(teacher.model.network, self.stages)

    def teacher_outputs(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The teacher's features per stage and its class probabilities (B, C, X, Y), without gradient."""
        model = self.teacher[0]
        model.eval()
        with torch.no_grad():
            bev = model.network.forward_bev(batch)
            probs = torch.sigmoid(model.head(bev))
        return {**self.teacher_tap.out, "bev": bev}, probs

    def forward(self, student_bev: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, terms). Frames of the batch with ``labelled`` False (semi-supervised) take their masks
        from the teacher's predictions instead of the ground truth they do not carry; with ``method:
        pseudo`` the terms are {"pseudo_target": (B, C, X, Y) bool}, the teacher's thresholded predictions."""
        teacher, probs = self.teacher_outputs(batch)
        prob = probs.amax(dim=1)  # (B, X, Y): the teacher's predicted foreground
        if self.cfg.method == "pseudo":
            return student_bev.new_zeros(()), {"pseudo_target": probs > self.cfg.pseudo_threshold}
        unlabelled = ~batch["labelled"].bool() if "labelled" in batch else None  # (B,)
        predicted = prob > self.cfg.pseudo_threshold

        def known(gt: torch.Tensor, guess: torch.Tensor) -> torch.Tensor:  # gt on labelled frames, the teacher's guess elsewhere
            return gt if unlabelled is None else torch.where(unlabelled[:, None, None], guess, gt)

        student = {**self.student_tap.out, "bev": student_bev}
        flips = batch.get("flip_bev")
        weight = self.cfg.loss_weight()
        if self.cfg.method == "bevdistill":
            fs, ft = self.adapters["bev"](student["bev"]), teacher["bev"]
            w = known(batch["distill_fg"].float(), prob) if self.task == "vehicle" else prob
            loss = weight * dense_distillation_loss(fs, ft, w)
            terms = {"loss_distill": loss}
            if self.cfg.nce_weight > 0:
                nce = self._nce(fs, ft, w)
                terms["loss_nce"] = self.cfg.nce_weight * nce
                loss = loss + terms["loss_nce"]
            return loss, terms
        gt_fg = batch["target"].bool().any(dim=1) if self.task == "map" else batch["target"][:, 0].bool()
        fg_full = known(gt_fg, predicted)
        if self.task == "vehicle":
            area_full = batch["box_area"].float()
            if unlabelled is not None and bool(unlabelled.any()):  # predicted boxes: the size of each predicted blob
                area_full = known(area_full, self._map_areas(predicted))
        else:
            area_full = self._map_areas(fg_full)
        total = student_bev.new_zeros(())
        for s in self.stages:
            fs, ft = self.adapters[s](student[s]), teacher[s]
            size = ft.shape[-2:]
            # stages inside the decoder live in the flipped frame (the BEV flips are undone only after it): flip the masks in
            to_stage = (lambda m: m) if s == "bev" else (lambda m: flip_bev(m, flips))  # noqa: E731
            fg = to_stage(_resize(fg_full.float(), size) > 0.5)
            p = to_stage(_resize(prob, size)) if s != "bev" else prob
            shrink = (fg_full.shape[-2] / size[0]) * (fg_full.shape[-1] / size[1])
            area = to_stage(_resize(area_full, size)) / shrink
            fgm, fpm, bgm = region_masks(fg, p, self.cfg.fp_threshold)
            scale = scale_factors(fgm, fpm, bgm, area.clamp(min=1.0))
            att = spatial_attention(ft) if self.cfg.attention == "teacher" else spatial_attention(ft, fs)
            total = total + region_distillation_loss(fs, ft, fgm, fpm, bgm, scale, att,
                                                     self.cfg.alpha_fg, self.cfg.alpha_fp, self.cfg.alpha_bg)
        loss = weight * total
        return loss, {"loss_distill": loss}

    def _nce(self, fs: torch.Tensor, ft: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """InfoNCE on up to ``nce_samples`` cells drawn with probability ∝ W (foreground first)."""
        flat_w = w.flatten()
        if float(flat_w.sum()) <= 0:
            return fs.sum() * 0.0
        n = min(self.cfg.nce_samples, int((flat_w > 0).sum()))
        idx = torch.multinomial(flat_w, n, replacement=False)
        C = fs.shape[1]
        pick = lambda f: f.permute(0, 2, 3, 1).reshape(-1, C)[idx]  # noqa: E731
        return info_nce(pick(fs), pick(ft))

    @staticmethod
    def _map_areas(fg: torch.Tensor) -> torch.Tensor:
        """(B, X, Y) bool → the size in cells of each cell's connected region (:func:`component_sizes`)."""
        areas = [torch.from_numpy(component_sizes(m)) for m in fg.detach().cpu().numpy()]
        return torch.stack(areas).to(fg.device)


def _resize(m: torch.Tensor, size) -> torch.Tensor:
    """(B, X, Y) → (B, x, y) by nearest sampling (masks and per-cell maps to a decoder stage)."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[:, None].float(), size=tuple(size), mode="nearest")[:, 0]

