"""The pictures of a pretraining run (issue 17, paper Fig. 5-6), for ``occfeat report``, the demo and
``occfeat inspect``: :func:`write_pretraining_pictures` is the one entry. It rebuilds the run's task with its
trained weights (augmentation off: the ego frame), predicts the teacher features of two samples and draws
them with :mod:`occfeat.pretrain_figures` (pure numpy helpers in :mod:`occfeat.features_viz`).

Only the voxels a picture shows are predicted (the occupied ones for the PCA fit and the 3D view, each
column's top one for the BEV view) through :func:`occfeat.models.predict_at`: the dense (N_y, Z, X, Y)
volume is 2 GB per sample at the paper's grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from occfeat.errors import OccfeatError
from occfeat.features_viz import correlation_map, cosine_map, fit_pca, pca_rgb, pixel_to_patch, teacher_pca_image, top_height, top_occupied, upsample_hw
from occfeat.geometry import apply_4x4, project_points
from occfeat.models import predict_at
from occfeat.train.pretrain import PretrainRun, PretrainTask, read_pretrain_run
from occfeat.train.rundir import load_checkpoint, read_jsonl

if TYPE_CHECKING:  # the figures (matplotlib) load when pictures are drawn, not when features are read
    from occfeat.pretrain_figures import Caption, TeacherRow

# The objectives that predict the teacher's features on F_V, and their predictor's attribute: a pretraining with
# one of them gets the feature pictures (second_unsplat predicts on its own volume and is not listed).
FEATURE_PREDICTORS = {"features": "predictor", "balanced": "features"}


def feature_predictor(task: PretrainTask) -> torch.nn.Module | None:
    """The Conv3d that maps F_V to the teacher's features in ``task``'s model, None without one."""
    name = next((n for n in FEATURE_PREDICTORS if n in task.model.objectives), None)
    return None if name is None else getattr(task.model.objectives[name], FEATURE_PREDICTORS[name])


@dataclass
class SampleFeatures:
    """One sample's features as the pictures need them (ego frame, no augmentation)."""

    token: str
    occupied: np.ndarray
    """(N, C) predicted teacher features of the occupied voxels: what a scene's PCA is fitted on."""
    top: np.ndarray
    """(X, Y, C) predicted features of each column's highest occupied voxel (zeros where none)."""
    has: np.ndarray
    """(X, Y) bool: the columns with an occupied voxel."""
    teacher: np.ndarray
    """(S, Hp, Wp, C) the teacher's maps of the sample's cameras."""
    image_hw: tuple[int, int]
    """(H, W) of the stored camera images the teacher maps cover."""
    top_xyz: np.ndarray
    """(X, Y, 3) ego-frame centre (metres) of each column's highest occupied voxel."""
    K: np.ndarray
    """(S, 3, 3) intrinsics at the stored image size."""
    cam_T_ego: np.ndarray
    """(S, 4, 4) ego → camera."""
    voxels: np.ndarray
    """(N, 3) int (x, y, z) grid indices of the occupied voxels, in the order of ``occupied``."""


def load_task(run: str | Path, dataroot: str | Path | None = None, version: str | None = None, occupancy: str | Path | None = None, features: str | Path | None = None,
              split: str | None = None, need_features: bool = True, progress: bool = False) -> PretrainTask:
    """The pretraining run ``run`` rebuilt with its trained weights, augmentation off (R = ego), on the
    dataroot, caches and split it recorded unless others are named (a run moved with its data).
    ``need_features``: refuse a run without the features objective (it predicts no teacher features)."""
    return task_from_run(read_pretrain_run(run), dataroot, version, occupancy, features, split, need_features, progress)


def task_from_run(pretrain: PretrainRun, dataroot: str | Path | None = None, version: str | None = None, occupancy: str | Path | None = None,
                  features: str | Path | None = None, split: str | None = None, need_features: bool = True, progress: bool = False) -> PretrainTask:
    """:func:`load_task` for a run already read; only the caches its objectives read are required."""
    cfg = pretrain.config
    run = pretrain.checkpoint.parent.parent
    if need_features and not set(FEATURE_PREDICTORS) & set(cfg.objectives):
        raise OccfeatError(f"{run} was pretrained without the features objective, so it predicts no teacher features; pass an OccFeat run")
    ckpt = load_checkpoint(pretrain.checkpoint)
    data, inputs = ckpt["config"].get("data", {}), pretrain.provenance.get("inputs", {})
    dataroot, occupancy, features = dataroot or inputs.get("dataroot"), occupancy or inputs.get("occupancy"), features or inputs.get("features")
    version = version or data.get("version")
    from occfeat.objectives import registry

    needed = {s for name in cfg.objectives for s in registry()[name].sources}
    for name, value in (("dataroot", dataroot), ("version", version), ("occupancy", occupancy), ("features", features)):
        if value is None and (name in needed or name in ("dataroot", "version")):
            raise OccfeatError(f"{run} does not record its {name}; pass --{name}")
    # The checkpoint overwrites every weight, so the backbone is built random (no weights fetched), as export does.
    network = dataclasses.replace(cfg.network, random_init=True, backbone_weights=None)
    cfg = dataclasses.replace(cfg, network=network, augment=dataclasses.replace(cfg.augment, enabled=False))
    task = PretrainTask(cfg, dataroot, version, occupancy, features, split or data.get("split") or "train", progress=progress)
    task.load_checkpoint_payload(ckpt["task"])
    task.model.eval()
    return task


@torch.no_grad()
def sample_features(task: PretrainTask, index: int) -> SampleFeatures:
    """The predicted teacher features of sample ``index`` of the task's split (see :class:`SampleFeatures`)."""
    check_index(task, index)
    batch = task.collate([task.train_set[index]])
    model = task.model
    volume = model.decoder(model.network(batch))  # (1, N_B, Z, X, Y)
    predictor = feature_predictor(task)
    occ = batch["occupancy"][0].numpy()  # (X, Y, Z)
    xyz = np.argwhere(occ)
    idx = torch.from_numpy(np.concatenate([np.zeros((len(xyz), 1), dtype=np.int64), xyz], axis=1))
    occupied = predict_at(predictor, volume, idx).float().numpy()
    z_top, has = top_occupied(occ)
    xs, ys = np.nonzero(has)
    top_idx = torch.from_numpy(np.stack([np.zeros_like(xs), xs, ys, z_top[xs, ys]], axis=1).astype(np.int64))
    top = np.zeros((*has.shape, occupied.shape[1]), dtype=np.float32)
    top[xs, ys] = predict_at(predictor, volume, top_idx).float().numpy()
    hw = batch["image_hw_orig"][0, 0].tolist()
    grid = task.cfg.grid
    top_xyz = np.stack(np.broadcast_arrays(grid.axis_centers(0)[:, None], grid.axis_centers(1)[None, :], grid.axis_centers(2)[z_top]), axis=-1)
    return SampleFeatures(task.train_set.rigs[index].token, occupied, top, has, batch["features"][0].float().numpy(), (int(hw[0]), int(hw[1])),
                          top_xyz, batch["K_orig"][0].numpy(), batch["cam_T_ego"][0].numpy(), xyz)


def seen_from(sample: SampleFeatures, column: tuple[int, int]) -> tuple[int, tuple[float, float]] | None:
    """(camera, (u, v)) of the first camera whose stored image shows the top voxel of BEV ``column``, or None."""
    H, W = sample.image_hw
    cam = apply_4x4(sample.cam_T_ego, np.broadcast_to(sample.top_xyz[column], (len(sample.K), 1, 3)))  # (S, 1, 3)
    uv, in_front = project_points(sample.K, cam)
    for s in range(len(sample.K)):
        u, v = uv[s, 0]
        if in_front[s, 0] and 0 <= u < W and 0 <= v < H:
            return s, (float(u), float(v))
    return None


def default_column(sample: SampleFeatures) -> tuple[int, int]:
    """A BEV column to correlate against when none is named, nearest the grid's centre among: the occupied
    columns a camera sees whose top voxel stands above the ground (an object, as paper Fig. 6 picks a car;
    the ground is the commonest top height), else the seen ones, else any occupied one."""
    cells = np.argwhere(sample.has)
    if not len(cells):
        raise OccfeatError(f"sample {sample.token} has no occupied voxel to correlate against; pick another --sample")
    centre = (np.array(sample.has.shape) - 1) / 2
    by_distance = [tuple(int(v) for v in c) for c in cells[np.argsort(((cells - centre) ** 2).sum(axis=1), kind="stable")]]
    heights = sample.top_xyz[..., 2]
    levels, counts = np.unique(heights[sample.has], return_counts=True)
    ground = levels[counts.argmax()]
    seen = [c for c in by_distance if seen_from(sample, c) is not None]
    above = [c for c in seen if heights[c] > ground]
    return (above or seen or by_distance)[0]


def check_index(task: PretrainTask, index: int) -> None:
    n = len(task.train_set)
    if not 0 <= index < n:
        raise OccfeatError(f"sample {index} is out of range: split has {n} samples (0 to {n - 1})")


def sample_name(index: int, token: str) -> str:
    """How titles name a sample: its index in the split and its token's head, e.g. "sample 0 (d5e135f6)"."""
    return f"sample {index} ({token[:8]})"


def run_caption(pretrain: PretrainRun, dataroot: str | Path | None = None) -> Caption:
    """The :class:`~occfeat.pretrain_figures.Caption` of a run: its dir's name, its pretraining row label
    ("Occ+Feat (4 ep, λ=0.01)") and its provenance marks (``dataroot``: the one the pictures read, if moved)."""
    from occfeat.data.index import is_synthetic
    from occfeat.pretrain_figures import Caption, pretrain_provenance, provenance_marks
    from occfeat.train.records import PretrainingStamp

    root = dataroot or pretrain.provenance.get("inputs", {}).get("dataroot")
    prov = pretrain_provenance(pretrain.provenance, synthetic=root is not None and is_synthetic(root))
    label = PretrainingStamp.from_dict(pretrain.stamp()).row_label()
    return Caption(pretrain.checkpoint.parent.parent.name, label, tuple(provenance_marks(prov)))


def write_pretraining_pictures(run_dir: str | Path, out_dir: str | Path, *, sample: int = 0, other: int = -1, column: tuple[int, int] | None = None,
                               camera: int | None = None, progress: bool = False, dataroot: str | Path | None = None, version: str | None = None,
                               occupancy: str | Path | None = None, features: str | Path | None = None, split: str | None = None) -> list[Path]:
    """Every picture of the pretraining run ``run_dir`` into ``out_dir``; returns the files written.

    - ``loss.png``: the loss curves of its ``metrics.jsonl`` (when the run has logged any);
    - ``occupancy.png``: sample ``sample``'s occupancy target beside its LiDAR points (runs with an occupancy cache);
    - with the features (or balanced) objective: ``features_bev.png`` (Fig. 5 from above, ``sample`` and ``other`` through
      one PCA basis), ``features_3d.png``, ``correlation.png`` (Fig. 6, against the top voxel of BEV
      ``column`` (x, y cells); default: :func:`default_column`, an object a camera sees nearest the ego) and
      ``teacher.png`` (camera image | teacher PCA | teacher correlation at the patch that voxel projects to,
      for ``camera``; default: the camera that sees it).

    ``sample``/``other`` index the run's split (negative: from its end); ``dataroot`` ... ``split``: what the
    run recorded unless named (a run moved with its data). ``progress``: the devkit's loading bar.
    """
    from occfeat import pretrain_figures as figs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pretrain = read_pretrain_run(run_dir)
    caption = run_caption(pretrain, dataroot)
    weights = {name: c.weight for name, c in pretrain.config.objectives.items()}
    written = []
    metrics = pretrain.checkpoint.parent.parent / "metrics.jsonl"
    x_name, curves = figs.loss_curves(read_jsonl(metrics))  # no log yet: no curves
    if curves:  # first: it needs neither the data nor the caches
        written.append(figs.save(figs.loss_figure(x_name, curves, weights, caption), out_dir / "loss.png"))
    task = task_from_run(pretrain, dataroot, version, occupancy, features, split, need_features=False, progress=progress)
    n = len(task.train_set)
    a_i, b_i = (i % n if -n <= i < 0 else i for i in (sample, other))
    check_index(task, a_i)
    check_index(task, b_i)
    grid = task.cfg.grid
    reader = task.train_set.sources.occupancy
    if reader is not None:
        token = task.train_set.rigs[a_i].token
        height = top_height(reader.get(token), grid.axis_centers(2))
        fig = figs.occupancy_figure(height, reader.points(token), grid, sample_name(a_i, token), reader.sweeps, caption)
        written.append(figs.save(fig, out_dir / "occupancy.png"))
    if feature_predictor(task) is not None:
        written += feature_pictures(task, a_i, b_i, column, camera, caption, out_dir)
    return written


def feature_pictures(task: PretrainTask, a_i: int, b_i: int, column: tuple[int, int] | None, camera: int | None, caption: Caption, out_dir: Path) -> list[Path]:
    """features_bev.png, features_3d.png, correlation.png and teacher.png (see :func:`write_pretraining_pictures`)."""
    from occfeat import pretrain_figures as figs

    a, b = sample_features(task, a_i), sample_features(task, b_i)
    grid = task.cfg.grid
    column = tuple(column) if column is not None else default_column(a)
    if not (0 <= column[0] < a.has.shape[0] and 0 <= column[1] < a.has.shape[1]) or not a.has[column]:
        raise OccfeatError(f"BEV column {column} of sample {a.token} holds no occupied voxel; pick one that does, or leave --column out")
    names = (sample_name(a_i, a.token), sample_name(b_i, b.token))
    basis = fit_pca(a.occupied)
    rgb = [np.where(s.has[..., None], pca_rgb(s.top, basis), np.nan) for s in (a, b)]
    written = [figs.save(figs.features_bev_figure(rgb[0], rgb[1], grid, names, caption), out_dir / "features_bev.png")]
    xyz = np.stack([grid.axis_centers(k)[a.voxels[:, k]] for k in range(3)], axis=1)
    written.append(figs.save(figs.features_3d_figure(xyz, pca_rgb(a.occupied, basis), grid, names[0], caption), out_dir / "features_3d.png"))
    # Centred on the scene's mean feature (a Pearson correlation): a component all voxels share would otherwise
    # put every cosine near 1 (it does on an untrained head).
    corr = correlation_map(np.moveaxis(a.top - a.occupied.mean(axis=0), -1, 0), column, mask=a.has)
    written.append(figs.save(figs.correlation_figure(corr, grid, a.top_xyz[column], names[0], caption), out_dir / "correlation.png"))
    rigs = task.train_set.rigs
    rows = teacher_rows(a, b, column, camera, (rigs[a_i].paths, rigs[b_i].paths), names)
    written.append(figs.save(figs.teacher_figure(rows, caption), out_dir / "teacher.png"))
    return written


def teacher_rows(a: SampleFeatures, b: SampleFeatures, column: tuple[int, int], camera: int | None, paths: tuple[tuple[str, ...], tuple[str, ...]],
                 names: tuple[str, str]) -> list[TeacherRow]:
    """The teacher figure's rows for ``a`` and ``b``: both through a PCA basis fitted on all of a's maps and
    correlated with the teacher's feature at the patch where a's top voxel of ``column`` projects (centred
    on a's mean map feature). ``camera`` None: the camera that sees that voxel (else 0)."""
    from PIL import Image

    from occfeat.data.index import CAMERAS
    from occfeat.pretrain_figures import TeacherRow

    seen = seen_from(a, column)
    cam = camera if camera is not None else (seen[0] if seen is not None else 0)
    if not 0 <= cam < len(a.teacher):
        raise OccfeatError(f"camera {cam} is out of range: the samples have {len(a.teacher)} cameras (0 to {len(a.teacher) - 1})")
    basis = fit_pca(a.teacher.reshape(-1, a.teacher.shape[-1]))
    Hp, Wp = a.teacher.shape[1:3]
    if seen is not None:
        ref_cam, uv = seen
        patch = pixel_to_patch(uv, a.image_hw, (Hp, Wp))
    else:  # no camera sees the voxel: the patch at the centre of the shown image, said in its name
        ref_cam, patch = cam, (Hp // 2, Wp // 2)
    ref = a.teacher[ref_cam][patch] - basis.mean
    where = "" if seen is not None else " (no camera sees the chosen voxel: the centre patch)"
    rows = []
    for s, s_paths, name in zip((a, b), paths, names):
        H, W = s.image_hw
        image = np.asarray(Image.open(s_paths[cam]).convert("RGB"))
        corr = cosine_map(np.moveaxis(s.teacher[cam] - basis.mean, -1, 0), ref)
        box = (patch[1] * W / Wp, patch[0] * H / Hp, W / Wp, H / Hp) if s is a and ref_cam == cam else None
        against = "the marked patch" if box is not None else f"{names[0]}'s patch of the chosen voxel" + ("" if s is b else f" (camera {ref_cam})")
        cam_name = CAMERAS[cam].removeprefix("CAM_") if len(a.teacher) == len(CAMERAS) else f"camera {cam}"
        rows.append(TeacherRow(f"{name} {cam_name}", image, teacher_pca_image(s.teacher[cam], basis, (H, W)),
                               upsample_hw(corr[..., None], (H, W), mode="nearest")[..., 0], f"teacher correlation with {against}{where}", box))
    return rows
