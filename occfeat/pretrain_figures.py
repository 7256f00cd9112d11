"""The figures of a pretraining run (issue 17, paper Fig. 5-6): one function per picture, each taking plain
arrays and returning a matplotlib Figure (the caller saves and closes it, :func:`save`).

BEV panels follow :mod:`occfeat.bev_plots`: x (forward) up, y (left) left, metres, the grid's extent shaded,
the ego's footprint and forward arrow. Every figure's title carries a :class:`Caption`: the run, its
pretraining label and the provenance marks of :data:`occfeat.train.records.MARKS` (stand-in or random-init teacher,
random-init backbone, synthetic data), so no picture passes for a DINOv2 / nuScenes result; the same text
goes into the PNG's ``Title`` / ``Description`` metadata.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from occfeat.bev_plots import EMPTY_RGB, bev_axes, draw_bev_image, page_xy  # noqa: E402
from occfeat.features_viz import subsample  # noqa: E402
from occfeat.grid import BevGrid  # noqa: E402
from occfeat.train.records import MARKS, Provenance  # noqa: E402

HEIGHT_CMAP = "viridis"  # occupancy and LiDAR heights share it (and one colour bar)
# Heights (m, ego frame: z = 0 is the ground under the rear axle) the colours span: the road dark, cars mid,
# trucks and buses light, anything taller (buildings, poles) clipped to the top colour. The grid's full
# -4.5..5.5 m would give the road and a car's roof nearly the same colour.
HEIGHT_RANGE = (-0.5, 4.0)
CORR_CMAP = "RdBu_r"  # correlation is signed: diverging, white at 0
SCATTER_POINTS = 4000  # occupied voxels drawn in the 3D view at most (the PCA is fitted on all of them)
LIDAR_POINTS = 60000  # LiDAR points drawn at most (a paper-size multi-sweep cloud has ~10^6)
Z_STRETCH = 2.0  # the 3D view draws heights this many times taller: 10 m of height under 50 m of extent is flat
DPI = 100


# ---------------------------------------------------------------- what every title says


def pretrain_provenance(provenance: dict, synthetic: bool) -> Provenance:
    """A pretraining run's ``provenance.json`` → the report's :class:`Provenance` flags, as a finetune run
    started from it is stamped (:meth:`Provenance.of_pretraining`); ``synthetic``: the run's dataroot was
    written by ``occfeat synth``."""
    return Provenance.of_pretraining(provenance, synthetic_data=synthetic)


def provenance_marks(prov: Provenance) -> list[str]:
    """"<mark> <legend>" for each of the report's marks the run carries, in :data:`occfeat.train.records.MARKS` order."""

    return [f"{mark} {text}" for flag, mark, text in MARKS if getattr(prov, flag, False)]


@dataclass(frozen=True)
class Caption:
    """Who drew a figure: the run, its pretraining label, and the provenance marks every title carries."""

    run: str
    """The run dir's name."""
    label: str
    """The pretraining's row label, e.g. "Occ+Feat (4 ep, λ=0.01)"."""
    marks: tuple[str, ...] = ()
    """:func:`provenance_marks` of the run; () for a run on real data with pretrained weights."""

    @property
    def stamp(self) -> str:
        return "; ".join(self.marks) if self.marks else "real data, pretrained backbone and teacher"

    def title(self, what: str, width_in: float) -> str:
        """``what`` on the first line, then the run and its marks, wrapped to a figure ``width_in`` inches wide."""
        tail = textwrap.fill(f"{self.run}: {self.label} — {self.stamp}", max(40, int(width_in * 13)))
        return f"{what}\n{tail}"


def stamp(fig: Figure, caption: Caption, what: str, crop: bool = False) -> str:
    """Put :meth:`Caption.title` on top of ``fig`` and remember ``what`` and the stamp for :func:`save` (the PNG's
    metadata); ``crop``: save crops to what was drawn. Returns the title, for the caller's layout."""
    text = caption.title(what, fig.get_figwidth())
    fig.suptitle(text, fontsize=9, y=1 - 0.08 / fig.get_figheight(), va="top")
    fig._occfeat_caption = (what, caption.stamp, crop)
    return text


def titled(fig: Figure, caption: Caption, what: str) -> Figure:
    """``fig`` stamped by :func:`stamp`, its panels laid out below the title by tight_layout."""
    stamp(fig, caption, what)
    fig.tight_layout()  # makes room for the suptitle too
    return fig


def save(fig: Figure, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` with its caption in the PNG's Title / Description text chunks; closes it.
    A figure stamped with ``crop`` (the 3D view, whose axes keep empty margins) is cropped to what it drew:
    that draws it twice, so laid-out figures are not."""
    what, text, crop = getattr(fig, "_occfeat_caption", ("", "", False))
    kwargs = {"bbox_inches": "tight", "pad_inches": 0.1} if crop else {}
    fig.savefig(path, dpi=DPI, **kwargs, metadata={"Title": what, "Description": text, "Software": "occfeat"})
    plt.close(fig)
    return path


def title_height(text: str) -> float:
    """Inches a suptitle of ``text`` (9 pt) takes at the top of a figure."""
    return 0.18 * (text.count("\n") + 1) + 0.15


# BEV figures are laid out in inches (as occfeat.bev_plots lays out a sample): square panels of PANEL in,
# fixed margins for tick labels, axis labels and titles, so nothing is cut and nothing floats.
PANEL = 4.4
LEFT, GAP, BOTTOM, PANEL_TITLE, RIGHT = 0.75, 0.6, 0.6, 0.35, 0.25
COLORBAR = 1.1  # the colour bar and its label, right of the last panel


def bev_figure(caption: Caption, what: str, n: int, colorbar: bool = False) -> tuple[Figure, list, object]:
    """A figure of ``n`` BEV panels side by side under ``caption``'s title for ``what``; returns (fig, the
    panels' axes, the colour bar's axes or None). Set the panels up with :func:`occfeat.bev_plots.bev_axes`."""
    width = LEFT + n * PANEL + (n - 1) * GAP + (COLORBAR if colorbar else 0.0) + RIGHT
    height = title_height(caption.title(what, width)) + PANEL_TITLE + PANEL + BOTTOM
    fig = plt.figure(figsize=(width, height))
    stamp(fig, caption, what)
    axes = [fig.add_axes(((LEFT + i * (PANEL + GAP)) / width, BOTTOM / height, PANEL / width, PANEL / height)) for i in range(n)]
    cax = fig.add_axes(((LEFT + n * PANEL + (n - 1) * GAP + 0.15) / width, BOTTOM / height, 0.15 / width, PANEL / height)) if colorbar else None
    return fig, axes, cax


# ---------------------------------------------------------------- predicted features (Fig. 5-6)


def features_bev_figure(a_rgb: np.ndarray, b_rgb: np.ndarray, grid: BevGrid, names: tuple[str, str], caption: Caption) -> Figure:
    """Fig. 5 from above: each column's highest occupied voxel in PCA colours, ``a_rgb`` (X, Y, 3) through its
    own basis and ``b_rgb`` through the same one (NaN: nothing occupied)."""
    fig, axes, _ = bev_figure(caption, "Predicted voxel features, 3-component PCA as RGB (top occupied voxel per column)", 2)
    for i, (ax, rgb, name, how) in enumerate(zip(axes, (a_rgb, b_rgb), names, ("PCA fitted on this scene", "the same PCA basis"))):
        draw_bev_image(ax, np.where(np.isnan(rgb), EMPTY_RGB, rgb), grid)
        bev_axes(ax, grid, f"{name}: {how}", ylabel=i == 0)
    return fig


def features_3d_figure(xyz: np.ndarray, rgb: np.ndarray, grid: BevGrid, name: str, caption: Caption) -> Figure:
    """Fig. 5 in 3D: the occupied voxels' centres ``xyz`` (N, 3) (m, ego frame) in their PCA colours ``rgb``
    (N, 3), at most :data:`SCATTER_POINTS` of them, seen from behind and above the ego."""
    keep = subsample(len(xyz), SCATTER_POINTS)
    fig = plt.figure(figsize=(8.5, 7.0))
    stamp(fig, caption, "Predicted voxel features in 3D, PCA as RGB", crop=True)
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.86), projection="3d")
    p = xyz[keep]
    size = 900.0 / max(grid.shape[:2])  # marker area: about a voxel across on a 50- or 200-cell grid
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=rgb[keep], s=size, marker="s", depthshade=False, linewidths=0)
    (x0, x1), (y0, y1), (z0, z1) = grid.bounds
    ax.quiver(0, 0, 0, 0.12 * (x1 - x0), 0, 0, color="black", linewidth=2, arrow_length_ratio=0.3)
    ax.scatter([0], [0], [0], c="black", s=30, marker="o")
    ax.text(0, 0, 0.3 * (z1 - z0), "ego", fontsize=8)
    ax.set(xlim=(x0, x1), ylim=(y0, y1), zlim=(z0, z1))
    ax.set_box_aspect((x1 - x0, y1 - y0, Z_STRETCH * (z1 - z0)), zoom=1.2)
    ax.view_init(elev=30, azim=-150)  # behind the ego, a little to its right: +x away from the viewer, +y to the left
    ax.set_xlabel("x (m, + forward)", fontsize=8)
    ax.set_ylabel("y (m, + left)", fontsize=8)
    ax.set_zlabel(f"z (m, drawn {Z_STRETCH:g}x tall)", fontsize=8)
    ax.tick_params(labelsize=7)
    shown = f"{len(keep)} of {len(xyz)}" if len(keep) < len(xyz) else f"all {len(xyz)}"
    ax.text2D(0.5, 0.97, f"{name}: {shown} occupied voxels, seen from behind the ego", transform=ax.transAxes, ha="center", fontsize=9)
    return fig


def correlation_figure(corr: np.ndarray, grid: BevGrid, voxel_xyz: np.ndarray, name: str, caption: Caption) -> Figure:
    """Fig. 6 from above: ``corr`` (X, Y) correlation of each column's top occupied voxel with the one at
    ``voxel_xyz`` (3,) (m, marked), NaN where nothing is occupied."""
    fig, (ax,), cax = bev_figure(caption, "Correlation of predicted voxel features with one voxel (top occupied voxel per column)", 1, colorbar=True)
    cmap = plt.get_cmap(CORR_CMAP).with_extremes(bad=EMPTY_RGB)
    im = draw_bev_image(ax, np.ma.masked_invalid(corr), grid, cmap=cmap, vmin=-1, vmax=1)
    y, x = page_xy(np.asarray(voxel_xyz)[None])[0]
    ax.plot(y, x, marker="x", color="black", markersize=11, markeredgewidth=2.5, zorder=6)
    ax.plot(y, x, marker="x", color="yellow", markersize=9, markeredgewidth=1.2, zorder=7)
    bev_axes(ax, grid, f"{name}: against the voxel at x={voxel_xyz[0]:.1f}, y={voxel_xyz[1]:.1f}, z={voxel_xyz[2]:.1f} m")
    cbar = fig.colorbar(im, cax=cax)
    cbar.set_label("correlation (cosine, centred on the scene's mean)", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    return fig


@dataclass
class TeacherRow:
    """One row of the teacher figure: a camera image and the teacher's map of it, as pictures."""

    name: str
    """What the row shows, e.g. "sample 0 (d5e135f6) CAM_FRONT"."""
    image: np.ndarray
    """(H, W, 3) uint8 camera image."""
    pca: np.ndarray
    """(H, W, 3) the teacher's map in PCA colours, at the image size."""
    corr: np.ndarray
    """(H, W) the teacher's map's correlation with the reference patch, at the image size."""
    corr_title: str = "teacher correlation with the marked patch"
    """What the correlation panel is against."""
    patch_box: tuple[float, float, float, float] | None = None
    """(u0, v0, width, height) in pixels of the reference patch when it is in this image, else None."""


def teacher_figure(rows: list[TeacherRow], caption: Caption) -> Figure:
    """The camera image | the teacher's map in PCA colours | its correlation with the patch the chosen voxel
    projects to (marked), one row per sample; every row through the first row's basis and reference patch."""
    h, w = rows[0].image.shape[:2]
    width, left, gap, bar = 14.0, 0.1, 0.15, 0.75  # inches; bar: a colour bar and its tick labels
    pw = (width - 2 * left - 2 * gap - bar) / 3
    ph = pw * h / w
    what = "Teacher 2D features beside the camera image"
    title_h = title_height(caption.title(what, width)) + 0.05
    row_h = PANEL_TITLE + ph
    height = title_h + len(rows) * row_h + 0.15
    fig = plt.figure(figsize=(width, height))
    stamp(fig, caption, what)
    for r, row in enumerate(rows):
        bottom = height - title_h - (r + 1) * row_h
        axes = [fig.add_axes(((left + c * (pw + gap)) / width, bottom / height, pw / width, ph / height)) for c in range(3)]
        axes[0].imshow(row.image)
        axes[0].set_title(f"{row.name}: camera image", fontsize=8)
        axes[1].imshow(row.pca, interpolation="nearest")
        axes[1].set_title("teacher features, PCA as RGB" + (" (the first row's basis)" if r else ""), fontsize=8)
        im = axes[2].imshow(row.corr, cmap=CORR_CMAP, vmin=-1, vmax=1, interpolation="nearest")
        axes[2].set_title(row.corr_title, fontsize=8)
        if row.patch_box is not None:
            u0, v0, pw_, ph_ = row.patch_box
            for ax in axes:
                ax.add_patch(Rectangle((u0, v0), pw_, ph_, fill=False, edgecolor="yellow", linewidth=1.6))
                ax.add_patch(Rectangle((u0 - 1.5, v0 - 1.5), pw_ + 3, ph_ + 3, fill=False, edgecolor="black", linewidth=0.8))
        for ax in axes:
            ax.set_axis_off()
        cax = fig.add_axes(((left + 3 * pw + 2 * gap + 0.1) / width, bottom / height, 0.12 / width, ph / height))
        fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
    return fig


# ---------------------------------------------------------------- what the network was taught


def occupancy_figure(height: np.ndarray, points: np.ndarray, grid: BevGrid, name: str, sweeps: int, caption: Caption) -> Figure:
    """The occupancy target from above, ``height`` (X, Y) the height (m) of each column's highest occupied
    voxel (NaN: empty), beside the ego-frame LiDAR ``points`` (N, 3) it was voxelized from, both coloured by
    height on one scale; at most :data:`LIDAR_POINTS` points are drawn."""
    norm = Normalize(*HEIGHT_RANGE)
    cmap = plt.get_cmap(HEIGHT_CMAP).with_extremes(bad=EMPTY_RGB)
    fig, axes, cax = bev_figure(caption, "Occupancy target beside the LiDAR points it was voxelized from (ego frame)", 2, colorbar=True)
    im = draw_bev_image(axes[0], np.ma.masked_invalid(height), grid, cmap=cmap, norm=norm)
    bev_axes(axes[0], grid, f"{name}: occupancy target ({int(np.isfinite(height).sum())} occupied columns)")
    keep = subsample(len(points), LIDAR_POINTS)
    p = points[keep]
    order = np.argsort(p[:, 2], kind="stable")  # high points drawn last: objects over the ground
    axes[1].set_facecolor(EMPTY_RGB)
    xy = page_xy(p[order])
    size = 2.0 * 50 / max(grid.shape[:2])
    axes[1].scatter(xy[:, 0], xy[:, 1], c=p[order, 2], cmap=cmap, norm=norm, s=size, linewidths=0, rasterized=True)
    shown = f"{len(keep)} of {len(points)}" if len(keep) < len(points) else f"{len(points)}"
    bev_axes(axes[1], grid, f"LiDAR: {shown} points, {sweeps} sweep{'s' if sweeps != 1 else ''}", ylabel=False)
    cbar = fig.colorbar(im, cax=cax, extend="both")
    cbar.set_label("height z (m): top occupied voxel / point", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    return fig


def loss_curves(rows: list[dict]) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(x-axis name, {term: (x, values)}) from metrics rows: every ``loss*`` key, against ``epoch`` when the
    rows have it, else ``step``. A step logged twice (a resumed run) keeps its last row; no rows: no curves
    (a run that has not logged yet)."""
    by_step = {r["step"]: r for r in rows if "step" in r}
    ordered = [by_step[s] for s in sorted(by_step)]
    x_name = "epoch" if ordered and all("epoch" in r for r in ordered) else "step"
    terms = sorted({k for r in ordered for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))  # the total first
    curves = {}
    for k in terms:
        pts = [(r[x_name], r[k]) for r in ordered if isinstance(r.get(k), (int, float)) and np.isfinite(r[k])]
        if pts:
            xs, ys = np.array(pts, dtype=np.float64).T
            curves[k] = (xs, ys)
    return x_name, curves


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each value and up to ``window - 1`` before it (no lag at the start beyond what exists)."""
    c = np.cumsum(np.concatenate([[0.0], values]))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def wants_log(values: np.ndarray) -> bool:
    """Log y when every value is positive and they span more than a decade."""
    return bool(len(values)) and bool((values > 0).all()) and values.max() / values.min() > 10


def loss_figure(x_name: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], weights: dict[str, float], caption: Caption) -> Figure:
    """One panel per loss term (the total first): the logged values, thin, and their running mean; log y
    where :func:`wants_log`. ``weights``: objective name → its weight in the total, for the titles."""
    order = ["loss", *(f"loss_{o}" for o in weights)]  # the total, then the objectives as the recipe lists them
    curves = dict(sorted(curves.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    if "loss" in curves:  # a one-objective run logs its term and the total alike: one panel for both
        total = curves["loss"]
        curves = {k: v for k, v in curves.items() if k == "loss" or not (np.array_equal(v[0], total[0]) and np.array_equal(v[1], total[1]))}
    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(max(4.2 * n, 7), 4.0), squeeze=False)
    for ax, (term, (xs, ys)) in zip(axes[0], curves.items()):
        window = max(1, len(ys) // 40)
        ax.plot(xs, ys, color="0.6", linewidth=0.8, label="logged")
        ax.plot(xs, running_mean(ys, window), color="#d62728", linewidth=1.6, label=f"running mean of {window}")
        if wants_log(ys):
            ax.set_yscale("log")
        name = term.removeprefix("loss_")
        if term == "loss":
            title = "total: " + " + ".join(f"{w:g}·{o}" if w != 1 else o for o, w in weights.items()) if weights else "total loss"
        else:
            title = f"{name} (weight {weights[name]:g})" if name in weights else name
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(x_name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return titled(fig, caption, "Pretraining losses (metrics.jsonl)")
