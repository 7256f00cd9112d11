"""BEV sample figures: cameras, ground truth, predicted probability and a TP / FP / FN view of one val sample.

The drawing follows the LSS / BEVFusion convention for bird's-eye views: the ego frame's x (forward) points
up the page, y (left) points left, the ego's footprint (:data:`occfeat.data.index.EGO_BOX`) and a forward
arrow mark where the car is, axes are in metres, and the grid's extent is framed and shaded so empty cells
never melt into the page. Arrays are ``(C, X, Y)`` as everywhere in occfeat (:mod:`occfeat.grid`); the one
flip from array axes to the page is :func:`to_page` with :func:`bev_extent`.

Map classes overlap (a crosswalk lies on the road, a divider too): a cell is filled with the colour of the
last of its classes in channel order (the finer layer) and hatched in the colour of each other class it is
in, so no class hides another.

:func:`bev_sample_figure` is the entry point for one sample (the report stacks several, TensorBoard
logs one); :class:`BevSample` is what it draws, :func:`load_samples` reads ``samples.npz``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrow, Patch, PathPatch, Rectangle  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

from occfeat.data.index import CAMERAS, EGO_BOX  # noqa: E402
from occfeat.errors import OccfeatError  # noqa: E402
from occfeat.grid import BevGrid  # noqa: E402
from occfeat.metrics import THRESHOLD  # noqa: E402

# Fixed class palette (by name, so "crosswalk" is the same colour in every figure and every map recipe);
# a class not listed takes a colour from its name's hash.
# None of them is a TP / FP / FN colour (:data:`OUTCOME_RGB`), so no panel reads as another.
CLASS_COLORS: dict[str, str] = {
    "vehicle": "#1f4e9c",
    "road": "#9fb6d3",
    "sidewalk": "#e6ab02",
    "crosswalk": "#e7298a",
    "parking": "#66a61e",
    "divider": "#6a3d9a",
}
HATCHES = ("////", "\\\\\\\\", "----", "||||", "xxxx")  # per class index: crossing classes stay apart
EMPTY_RGB = (0.95, 0.95, 0.95)  # cells of the grid in no class: light grey, so the grid's extent shows
EXCLUDED_RGB = (0.35, 0.35, 0.35)  # cells left out of the IoU (``valid`` False: low visibility)
# TP / FP / FN colours from Okabe-Ito's colour-blind-safe set; TN is the empty grid.
OUTCOME_NAMES = ("TN", "TP (hit)", "FP (false alarm)", "FN (miss)", "excluded from IoU")
OUTCOME_RGB = np.array([EMPTY_RGB, to_rgb("#009E73"), to_rgb("#D55E00"), to_rgb("#0072B2"), EXCLUDED_RGB])
PROB_CMAP = "viridis"  # perceptually uniform; p = 0 is dark, so the grid's extent shows against the page
ARROW_FRACTION = 0.08  # the forward arrow's length as a share of the grid's x extent


# Colours for names no palette lists: tab20b and tab20c without their palest shade (unreadable as a line)
# and without tab20c's greys (the "None" method's colour).
HASH_PALETTE = tuple([to_rgb(plt.cm.tab20b(i)) for i in range(20) if i % 4 != 3]
                     + [to_rgb(plt.cm.tab20c(i)) for i in range(16) if i % 4 != 3])


def stable_color(name: str) -> tuple[float, float, float]:
    """A colour for a name no palette lists, the same in every process and every figure: sha1 (not
    Python's salted ``hash``) of the name into :data:`HASH_PALETTE`."""
    return HASH_PALETTE[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(HASH_PALETTE)]


def class_color(name: str) -> tuple[float, float, float]:
    """The fixed colour of a class (:data:`CLASS_COLORS`), else :func:`stable_color`."""
    return to_rgb(CLASS_COLORS[name]) if name in CLASS_COLORS else stable_color(name)


# ---------------------------------------------------------------- geometry of the page


def bev_extent(grid: BevGrid) -> tuple[float, float, float, float]:
    """imshow's (left, right, bottom, top) for an array drawn by :func:`to_page`: y_max on the left (y is
    left), x_max on top (x is forward). The horizontal data axis is y, the vertical one x, in metres."""
    (xmin, xmax), (ymin, ymax), _ = grid.bounds
    return ymax, ymin, xmin, xmax


def to_page(a: np.ndarray) -> np.ndarray:
    """(X, Y, ...) → image rows/columns: row 0 = largest x (forward, top), column 0 = largest y (left)."""
    return np.flip(a, axis=(0, 1))


def page_xy(points: np.ndarray) -> np.ndarray:
    """Ego-frame points (N, >=2) (x forward, y left) → (N, 2) page data coordinates (horizontal y, vertical
    x, metres) of an axes set up by :func:`bev_axes`: the same place a cell drawn by :func:`to_page` with
    :func:`bev_extent` has."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([p[:, 1], p[:, 0]], axis=1)


def draw_bev_image(ax, image: np.ndarray, grid: BevGrid, **kwargs):
    """An (X, Y) or (X, Y, 3) array of cells on the page in metres (``kwargs`` to imshow: cmap, norm...)."""
    return ax.imshow(to_page(image), extent=bev_extent(grid), interpolation="nearest", **kwargs)


# ---------------------------------------------------------------- what each cell shows (pure)


def outcomes(target: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(X, Y) bool target and prediction → (X, Y) int8 codes into :data:`OUTCOME_NAMES`: 0 TN, 1 TP, 2 FP,
    3 FN, 4 excluded (``valid`` False: those cells count in neither intersection nor union)."""
    t, p = target.astype(bool), pred.astype(bool)
    code = np.zeros(t.shape, np.int8)
    code[t & p], code[~t & p], code[t & ~p] = 1, 2, 3
    if valid is not None:
        code[~valid.astype(bool)] = 4
    return code


def sample_iou(code: np.ndarray) -> float:
    """IoU of one sample from :func:`outcomes` codes; NaN when the class is in neither target nor prediction."""
    tp, fp, fn = ((code == k).sum() for k in (1, 2, 3))
    return float(tp / (tp + fp + fn)) if tp + fp + fn else float("nan")


def class_fill(masks: np.ndarray, valid: np.ndarray | None, colors: list) -> np.ndarray:
    """(C, X, Y) bool → (X, Y, 3) RGB: each cell takes the colour of the LAST class it is in (dividers and
    crosswalks lie on the road: the finer layer fills, :func:`overlap_masks` hatches the others);
    excluded cells are dark grey."""
    img = np.empty((*masks.shape[1:], 3))
    img[:] = EMPTY_RGB
    for c in range(masks.shape[0]):
        img[masks[c].astype(bool)] = colors[c]
    if valid is not None:
        img[~valid.astype(bool)] = EXCLUDED_RGB
    return img


def overlap_masks(masks: np.ndarray) -> np.ndarray:
    """(C, X, Y) bool → (C, X, Y) bool: the cells where class c is present but a later class fills the cell
    (:func:`class_fill`); those are drawn hatched in c's colour."""
    m = masks.astype(bool)
    later = np.zeros_like(m)
    for c in range(m.shape[0] - 2, -1, -1):
        later[c] = later[c + 1] | m[c + 1]
    return m & later


def cells_path(mask: np.ndarray, grid: BevGrid) -> MplPath | None:
    """The cells of an (X, Y) mask as one compound path in page data coordinates (horizontal y, vertical
    x, metres), one rectangle per run of cells along y; None when the mask is empty."""
    m = np.asarray(mask, bool)
    if not m.any():
        return None
    edges = np.diff(np.pad(m, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    (xs, y0s), (_, y1s) = np.nonzero(edges == 1), np.nonzero(edges == -1)  # both in row-major order
    (x_lo, _), (y_lo, _) = grid.bounds[:2]
    sx, sy = grid.voxel_size[:2]
    xa, xb, ya, yb = x_lo + xs * sx, x_lo + (xs + 1) * sx, y_lo + y0s * sy, y_lo + y1s * sy
    verts = np.stack([np.stack([ya, xa], 1), np.stack([yb, xa], 1), np.stack([yb, xb], 1), np.stack([ya, xb], 1),
                      np.stack([ya, xa], 1)], axis=1).reshape(-1, 2)
    codes = np.tile([MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO, MplPath.CLOSEPOLY], len(xs))
    return MplPath(verts, codes)


# ---------------------------------------------------------------- drawing one panel


def bev_axes(ax, grid: BevGrid, title: str = "", ylabel: bool = True, yticks: bool = True, xlabel: bool = True) -> None:
    """Metres on both axes, the grid's extent framed, the ego's footprint and its forward arrow."""
    left, right, bottom, top = bev_extent(grid)
    ax.set_xlim(left, right)  # y_max on the left: the horizontal axis reads left-positive, as the ego sees it
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    if xlabel:
        ax.set_xlabel("y (m, + left)", fontsize=8, labelpad=1)
    if ylabel:
        ax.set_ylabel("x (m, + forward)", fontsize=8, labelpad=1)
    ax.tick_params(labelsize=7, labelleft=yticks)
    for spine in ax.spines.values():
        spine.set_linewidth(1.2)
    (bx0, bx1), (by0, by1), _ = EGO_BOX
    # White with a black edge reads on the light class panels and on the dark probability map alike; thin,
    # so it hides few cells ahead of the car.
    ax.add_patch(Rectangle((by0, bx0), by1 - by0, bx1 - bx0, facecolor="white", edgecolor="black", linewidth=0.8, zorder=5,
                           label="ego"))
    length = ARROW_FRACTION * (top - bottom)
    ax.add_patch(FancyArrow(0.0, bx1, 0.0, length, width=0.08 * length, head_width=0.35 * length, head_length=0.35 * length,
                            length_includes_head=True, facecolor="white", edgecolor="black", linewidth=0.6, zorder=5))
    if title:
        ax.set_title(title, fontsize=9, pad=3)


def draw_classes(ax, masks: np.ndarray, valid: np.ndarray | None, classes: list[str], grid: BevGrid) -> None:
    """Classes in their fixed colours; a cell in several classes is filled by the last and hatched by the others."""
    colors = [class_color(c) for c in classes]
    ax.imshow(to_page(class_fill(masks, valid, colors)), extent=bev_extent(grid), interpolation="nearest")
    for c, over in enumerate(overlap_masks(masks)):
        path = cells_path(over, grid)
        if path is not None:  # hatch lines in the class colour (edgecolor), no outline (linewidth 0)
            ax.add_patch(PathPatch(path, facecolor="none", edgecolor=colors[c], linewidth=0, hatch=HATCHES[c % len(HATCHES)],
                                   zorder=3))


def draw_probability(ax, prob: np.ndarray, grid: BevGrid):
    """The predicted probability of one class, 0 → 1 on :data:`PROB_CMAP` (returns the image for a colorbar)."""
    return ax.imshow(to_page(prob.astype(np.float32)), extent=bev_extent(grid), cmap=PROB_CMAP, vmin=0.0, vmax=1.0,
                     interpolation="nearest")


def draw_outcomes(ax, code: np.ndarray, grid: BevGrid) -> None:
    """TP / FP / FN / excluded cells (:func:`outcomes`) in :data:`OUTCOME_RGB`."""
    ax.imshow(to_page(OUTCOME_RGB[code]), extent=bev_extent(grid), interpolation="nearest")


# ---------------------------------------------------------------- one sample


@dataclass
class BevSample:
    """One evaluated sample, as ``samples.npz`` stores it (:func:`occfeat.train.evaluate.evaluate`)."""

    target: np.ndarray
    """(C, X, Y) bool ground truth."""
    prob: np.ndarray
    """(C, X, Y) predicted probability (sigmoid of the logits)."""
    classes: list[str]
    grid: BevGrid
    valid: np.ndarray | None = None
    """(X, Y) bool: cells counted in the IoU; None = every cell."""
    cameras: np.ndarray | None = None
    """(S, H, W, 3) uint8 camera images in ``camera_names`` order; None draws the BEV panels only."""
    camera_names: tuple[str, ...] = CAMERAS
    token: str = ""


def _camera_layout(names: tuple[str, ...]) -> list[list[int]]:
    """Indices of the camera tiles in two rows as nuScenes shows them (front-left, front, front-right over
    back-left, back, back-right); cameras by other names fill the rows in their order."""
    want = [["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"], ["CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]]
    if sorted(names) == sorted(sum(want, [])):
        return [[names.index(n) for n in row] for row in want]
    per_row = (len(names) + 1) // 2
    return [list(range(len(names)))[:per_row], list(range(len(names)))[per_row:]]


# ---------------------------------------------------------------- layout of one sample, in inches
# Boxes are (left, top, width, height) in inches from the top-left corner of the sample's block: fixed
# margins for tick labels, titles and legends, so panels keep their size whatever the legends hold.

Box = tuple[float, float, float, float]
LABEL_H = 0.3  # the sample's label line (its token)
CAM_GAP = 0.04  # between camera tiles
AXIS_LEFT = 0.75  # y tick labels and the y label of the first BEV column
TITLE_H = 0.3  # a panel's title
TICKS_H = 0.3  # x tick labels
XLABEL_H = 0.2  # the x label under a row's first panel
LEGEND_H = 0.3  # one line of legend
PANEL_GAP = 0.25  # between BEV panels of one row (their y tick labels stay on the first panel)
SIDE = 1.6  # right of the last panel: the colour bar, or a legend


def sample_width(s: BevSample, dpi: float = 100) -> float:
    """Figure width in inches: three camera tiles side by side near their stored resolution, 11 to 16 in
    (14 at least for several classes, whose panels share one row)."""
    w = 3 * s.cameras.shape[2] / dpi if s.cameras is not None else 0.0
    return float(np.clip(w, 11.0 if len(s.classes) == 1 else 14.0, 16.0))


def sample_layout(s: BevSample, width: float) -> tuple[dict[str, list[Box]], float]:
    """Where each part of one sample goes: {"cameras": tiles in :func:`_camera_layout` order, "classes":
    the GT (and, for several classes, the thresholded prediction) panels, "prob", "outcomes": one panel
    per class, "colorbar", "class_legend", "outcome_legend": one box each}, and the block's height."""
    boxes: dict[str, list[Box]] = {"cameras": []}
    y = LABEL_H
    if s.cameras is not None:
        rows = _camera_layout(tuple(s.camera_names))
        ncol = max(len(r) for r in rows)
        tw = (width - 0.3 - (ncol - 1) * CAM_GAP) / ncol
        th = tw * s.cameras.shape[1] / s.cameras.shape[2]
        for r, row in enumerate(rows):
            boxes["cameras"] += [(0.15 + c * (tw + CAM_GAP), y + r * (th + CAM_GAP), tw, th) for c in range(len(row))]
        y += len(rows) * (th + CAM_GAP) + 0.15
    n = len(s.classes)
    if n == 1:  # ground truth | probability (+ colour bar) | TP/FP/FN, one row
        gap = 0.35 + SIDE / 2  # the colour bar and the next panel's y tick labels
        p = (width - AXIS_LEFT - 0.3 - 2 * gap) / 3
        top = y + TITLE_H
        xs = [AXIS_LEFT + i * (p + gap) for i in range(3)]
        boxes["classes"] = [(xs[0], top, p, p)]
        boxes["prob"] = [(xs[1], top, p, p)]
        boxes["outcomes"] = [(xs[2], top, p, p)]
        boxes["colorbar"] = [(xs[1] + p + 0.1, top, 0.12, p)]
        under = top + p + TICKS_H + XLABEL_H
        boxes["class_legend"] = [(xs[0], under, p, 3 * LEGEND_H)]
        boxes["outcome_legend"] = [(xs[2], under, p, 3 * LEGEND_H)]
        return boxes, under + 3 * LEGEND_H
    # Several classes: GT | prediction (+ class legend); p(class) for each (+ colour bar); TP/FP/FN for each.
    big = min((width - AXIS_LEFT - 0.45 - SIDE) / 2, 3.2)
    top = y + TITLE_H
    boxes["classes"] = [(AXIS_LEFT, top, big, big), (AXIS_LEFT + big + 0.45, top, big, big)]
    boxes["class_legend"] = [(AXIS_LEFT + 2 * big + 0.65, top, width - AXIS_LEFT - 2 * big - 0.65, big)]
    y = top + big + TICKS_H + XLABEL_H
    p = (width - AXIS_LEFT - SIDE - (n - 1) * PANEL_GAP) / n
    xs = [AXIS_LEFT + i * (p + PANEL_GAP) for i in range(n)]
    boxes["prob"] = [(x, y + TITLE_H, p, p) for x in xs]
    boxes["colorbar"] = [(xs[-1] + p + 0.15, y + TITLE_H, 0.12, p)]
    y += TITLE_H + p + TICKS_H
    boxes["outcomes"] = [(x, y + TITLE_H, p, p) for x in xs]
    boxes["outcome_legend"] = [(xs[-1] + p + 0.15, y + TITLE_H, SIDE - 0.15, p)]
    return boxes, y + TITLE_H + p + TICKS_H + XLABEL_H


def sample_height(s: BevSample, width: float | None = None) -> float:
    """Height in inches of one sample's block at ``width``."""
    return sample_layout(s, width or sample_width(s))[1]


def _axes(fig: Figure, box: Box, top: float):
    """An axes at ``box`` (inches, from the top-left of a block that starts ``top`` inches down the figure)."""
    fw, fh = fig.get_size_inches()
    x, y, w, h = box
    return fig.add_axes((x / fw, 1 - (top + y + h) / fh, w / fw, h / fh))


def _legend(fig: Figure, box: Box, top: float, handles: list, ncol: int = 1) -> None:
    ax = _axes(fig, box, top)
    ax.axis("off")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 1), borderaxespad=0, fontsize=7.5, frameon=False, ncol=ncol)


def draw_sample(fig: Figure, s: BevSample, top: float = 0.0, label: str = "", threshold: float = THRESHOLD) -> None:
    """One sample into ``fig``, its block starting ``top`` inches down: ``label``, the camera tiles (each
    named), then the BEV panels (:func:`sample_layout`)."""
    width = fig.get_figwidth()
    boxes, _ = sample_layout(s, width)
    if label:
        fig.text(0.15 / width, 1 - (top + 0.05) / fig.get_figheight(), label, va="top", ha="left", fontsize=9, weight="bold")
    if s.cameras is not None:
        order = sum(_camera_layout(tuple(s.camera_names)), [])
        for i, box in zip(order, boxes["cameras"]):
            ax = _axes(fig, box, top)
            ax.imshow(s.cameras[i], interpolation="antialiased")
            ax.axis("off")
            ax.text(0.01, 0.97, s.camera_names[i].removeprefix("CAM_"), transform=ax.transAxes, va="top", ha="left",
                    fontsize=8, color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0})
    n = len(s.classes)
    pred = s.prob >= threshold
    gt_ax = _axes(fig, boxes["classes"][0], top)
    draw_classes(gt_ax, s.target, s.valid, s.classes, s.grid)
    bev_axes(gt_ax, s.grid, "ground truth")
    if n > 1:
        ax = _axes(fig, boxes["classes"][1], top)
        draw_classes(ax, pred, None, s.classes, s.grid)
        bev_axes(ax, s.grid, f"prediction (p ≥ {threshold:g})", ylabel=False)
    for c, name in enumerate(s.classes):
        ax = _axes(fig, boxes["prob"][c], top)
        im = draw_probability(ax, s.prob[c], s.grid)
        bev_axes(ax, s.grid, f"p({name})", ylabel=False, yticks=n == 1 or c == 0, xlabel=False)
        code = outcomes(s.target[c], pred[c], s.valid)
        ax = _axes(fig, boxes["outcomes"][c], top)
        draw_outcomes(ax, code, s.grid)
        what = f"TP / FP / FN at p ≥ {threshold:g}," if n == 1 else f"{name}:"
        bev_axes(ax, s.grid, f"{what} sample IoU {100 * sample_iou(code):.1f}", ylabel=n > 1 and c == 0,
                 yticks=n == 1 or c == 0, xlabel=n > 1 and c == 0)
    cax = _axes(fig, boxes["colorbar"][0], top)
    fig.colorbar(im, cax=cax, label="predicted probability")
    cax.tick_params(labelsize=7)
    cax.yaxis.label.set_size(8)
    # "excluded" only where the sample has such cells: map ground truth never excludes any.
    excluded = s.valid is not None and not s.valid.all()
    handles = [Patch(facecolor=class_color(c), label=c) for c in s.classes]
    if excluded:
        handles.append(Patch(facecolor=EXCLUDED_RGB, label="excluded from IoU (low visibility)"))
    if n > 1:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="////",
                             label="hatching: the cell is also in\nthe class of that colour"))
    _legend(fig, boxes["class_legend"][0], top, handles)
    shown = range(1, 5 if excluded else 4)  # TP, FP, FN (, excluded); TN is the empty grid
    _legend(fig, boxes["outcome_legend"][0], top, [Patch(facecolor=OUTCOME_RGB[k], label=OUTCOME_NAMES[k]) for k in shown])


def bev_sample_figure(s: BevSample, title: str = "", threshold: float = THRESHOLD, width: float | None = None) -> Figure:
    """One sample as a matplotlib Figure: the cameras (when ``s.cameras`` is set) over ground truth,
    predicted probability and TP / FP / FN (one per class). The caller owns it (``plt.close(fig)``)."""
    width = width or sample_width(s)
    title_h = 0.3 + 0.2 * title.count("\n") if title else 0.0
    fig = plt.figure(figsize=(width, sample_height(s, width) + title_h))
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / fig.get_figheight(), va="top")
    draw_sample(fig, s, title_h, f"sample {s.token}" if s.token else "", threshold)
    return fig


# ---------------------------------------------------------------- samples.npz


def load_samples(npz_path: str | Path, grid: BevGrid | None = None) -> list[BevSample]:
    """The samples of a run's ``samples.npz``. Files written before the grid and camera names were stored
    take ``grid`` (the run's config.yaml has it) and :data:`CAMERAS`; without a grid: a one-line error."""
    npz_path = Path(npz_path)
    bad = f"{npz_path} is not a valid samples file"
    try:
        d = np.load(npz_path, allow_pickle=False)
        target, prob, valid = d["target"].astype(bool), d["prob"].astype(np.float32), d["valid"].astype(bool)
        classes = [str(c) for c in d["classes"]]
        cameras = d["cameras"] if "cameras" in d else None
        names = tuple(str(n) for n in d["camera_names"]) if "camera_names" in d else CAMERAS
        tokens = [str(t) for t in d["tokens"]] if "tokens" in d else [""] * len(target)
        if "grid" in d:
            grid = BevGrid.from_spec(json.loads(str(d["grid"])))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a torn or foreign file
        raise OccfeatError(f"{bad} ({type(e).__name__}); rerun occfeat evaluate on its run") from e
    if grid is None:
        raise OccfeatError(f"{npz_path} stores no grid and none was given; rerun occfeat evaluate on its run")
    if target.ndim != 4 or target.shape[2:] != grid.shape[:2] or prob.shape != target.shape:
        raise OccfeatError(f"{bad}: target {target.shape} / prob {prob.shape} do not match the grid {grid.shape[:2]}; "
                           "rerun occfeat evaluate on its run")
    if cameras is not None and cameras.shape[1] != len(names):
        names = tuple(f"camera {i}" for i in range(cameras.shape[1]))
    return [BevSample(target[i], prob[i], classes, grid, valid[i], None if cameras is None else cameras[i], names, tokens[i])
            for i in range(len(target))]
