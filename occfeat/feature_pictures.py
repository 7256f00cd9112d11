"""``occfeat inspect``'s library side: a pretraining run's predicted teacher features for one sample, and
the Fig. 5-6 pictures drawn from them with :mod:`occfeat.features_viz` (issue 17).

Only the voxels a picture shows are predicted (the occupied ones for the PCA fit, each column's top one for
the BEV view) through :func:`occfeat.models.predict_at`: the dense (N_y, Z, X, Y) volume is 2 GB per sample
at the paper's grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from occfeat.errors import OccfeatError
from occfeat.features_viz import PcaBasis, correlation_map, fit_pca, pca_rgb, pixel_to_patch, teacher_pca_image, top_occupied, upsample_hw
from occfeat.geometry import apply_4x4, project_points
from occfeat.models import predict_at
from occfeat.train.pretrain import PretrainTask, read_pretrain_run
from occfeat.train.rundir import load_checkpoint


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


def load_task(run: str | Path, dataroot: str | Path | None = None, version: str | None = None, occupancy: str | Path | None = None, features: str | Path | None = None,
              split: str | None = None) -> PretrainTask:
    """The pretraining run ``run`` rebuilt with its trained weights, augmentation off (R = ego), on the
    dataroot, caches and split it recorded unless others are named (a run moved with its data)."""
    pretrain = read_pretrain_run(run)
    cfg = pretrain.config
    if "features" not in cfg.objectives:
        raise OccfeatError(f"{run} was pretrained without the features objective, so it predicts no teacher features; pass an OccFeat run")
    ckpt = load_checkpoint(pretrain.checkpoint)
    data, inputs = ckpt["config"].get("data", {}), pretrain.provenance.get("inputs", {})
    dataroot, occupancy, features = dataroot or inputs.get("dataroot"), occupancy or inputs.get("occupancy"), features or inputs.get("features")
    version = version or data.get("version")
    for name, value in (("dataroot", dataroot), ("version", version), ("occupancy", occupancy), ("features", features)):
        if value is None:
            raise OccfeatError(f"{run} does not record its {name}; pass --{name}")
    # The checkpoint overwrites every weight, so the backbone is built random (no weights fetched), as export does.
    network = dataclasses.replace(cfg.network, random_init=True, backbone_weights=None)
    cfg = dataclasses.replace(cfg, network=network, augment=dataclasses.replace(cfg.augment, enabled=False))
    task = PretrainTask(cfg, dataroot, version, occupancy, features, split or data.get("split") or "train", progress=False)
    task.load_checkpoint_payload(ckpt["task"])
    task.model.eval()
    return task


@torch.no_grad()
def sample_features(task: PretrainTask, index: int) -> SampleFeatures:
    """The predicted teacher features of sample ``index`` of the task's split (see :class:`SampleFeatures`)."""
    n = len(task.train_set)
    if not 0 <= index < n:
        raise OccfeatError(f"sample {index} is out of range: split has {n} samples (0 to {n - 1})")
    batch = task.collate([task.train_set[index]])
    model = task.model
    volume = model.decoder(model.network(batch))  # (1, N_B, Z, X, Y)
    predictor = model.objectives["features"].predictor
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
                          top_xyz, batch["K_orig"][0].numpy(), batch["cam_T_ego"][0].numpy())


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
    """A BEV column to correlate against when none is named: the occupied one nearest the grid's centre that
    a camera sees (so the teacher's map has the same point), else the occupied one nearest the centre."""
    cells = np.argwhere(sample.has)
    if not len(cells):
        raise OccfeatError(f"sample {sample.token} has no occupied voxel to correlate against; pick another --sample")
    centre = (np.array(sample.has.shape) - 1) / 2
    by_distance = [tuple(int(v) for v in c) for c in cells[np.argsort(((cells - centre) ** 2).sum(axis=1), kind="stable")]]
    return next((c for c in by_distance if seen_from(sample, c) is not None), by_distance[0])


def bev_rgb(sample: SampleFeatures, basis: PcaBasis) -> np.ndarray:
    """(X, Y, 3) the top-down PCA colours of ``sample`` through ``basis``, white where nothing is occupied."""
    return np.where(sample.has[..., None], pca_rgb(sample.top, basis), 1.0)


def draw_pictures(a: SampleFeatures, b: SampleFeatures, column: tuple[int, int] | None, out_dir: Path, camera: int = 0) -> list[Path]:
    """Fig. 5-6 for sample ``a``, with ``b`` coloured by a's basis: ``pca.png`` (the predicted 3D features seen
    from above, a then b), ``correlation.png`` (correlation with the top voxel of BEV ``column`` (x, y) of a),
    ``teacher.png`` (the teacher's maps of ``camera`` in a and b through a basis fitted on a's maps) and, when a
    camera sees that voxel, ``teacher_correlation.png`` (the teacher's map correlated with its patch). BEV
    images are drawn with x (forward) up and y (left) left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not 0 <= camera < len(a.teacher):
        raise OccfeatError(f"camera {camera} is out of range: the samples have {len(a.teacher)} cameras (0 to {len(a.teacher) - 1})")
    out_dir.mkdir(parents=True, exist_ok=True)
    column = column or default_column(a)
    if not (0 <= column[0] < a.has.shape[0] and 0 <= column[1] < a.has.shape[1]) or not a.has[column]:
        raise OccfeatError(f"BEV column {column} of sample {a.token} holds no occupied voxel; pick one that does, or leave --column out")

    def bev(ax, img, title, **kwargs):  # (X, Y, ...) → x up, y left
        shown = ax.imshow(np.flip(img, axis=(0, 1)), interpolation="nearest", **kwargs)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        return shown

    basis = fit_pca(a.occupied)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    bev(axes[0], bev_rgb(a, basis), f"{a.token[:8]}: its own PCA")
    bev(axes[1], bev_rgb(b, basis), f"{b.token[:8]}: the same PCA")
    written.append(_save(fig, out_dir / "pca.png"))

    # Centred on the scene's mean feature (a Pearson correlation): a component all voxels share would otherwise
    # put every cosine near 1 (it does on an untrained head).
    corr = correlation_map(np.moveaxis(a.top - a.occupied.mean(axis=0), -1, 0), column, mask=a.has)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    fig.colorbar(bev(ax, np.ma.masked_invalid(corr), f"correlation with column {column}", cmap="viridis", vmin=-1, vmax=1), ax=ax, fraction=0.046)
    ax.plot(a.has.shape[1] - 1 - column[1], a.has.shape[0] - 1 - column[0], marker="x", color="red", markersize=10)  # in the flipped view
    written.append(_save(fig, out_dir / "correlation.png"))

    t_basis = fit_pca(a.teacher.reshape(-1, a.teacher.shape[-1]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for ax, s, title in ((axes[0], a, "its own PCA"), (axes[1], b, "the same PCA")):
        ax.imshow(teacher_pca_image(s.teacher[camera], t_basis, s.image_hw))
        ax.set_title(f"teacher, {s.token[:8]} camera {camera}: {title}", fontsize=9)
        ax.set_axis_off()
    written.append(_save(fig, out_dir / "teacher.png"))

    seen = seen_from(a, column)
    if seen is not None:  # the teacher's correlation map at the patch the same voxel projects to
        cam, uv = seen
        fmap = a.teacher[cam]
        patch = pixel_to_patch(uv, a.image_hw, fmap.shape[:2])
        t_corr = correlation_map(np.moveaxis(fmap - fmap.reshape(-1, fmap.shape[-1]).mean(axis=0), -1, 0), patch)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        shown = ax.imshow(upsample_hw(t_corr[..., None], a.image_hw, mode="nearest")[..., 0], cmap="viridis", vmin=-1, vmax=1)
        ax.plot(*uv, marker="x", color="red", markersize=10)
        ax.set_title(f"teacher, {a.token[:8]} camera {cam}: correlation with the patch of column {column}", fontsize=9)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, fraction=0.046)
        written.append(_save(fig, out_dir / "teacher_correlation.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
