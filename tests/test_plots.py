"""Figures read as BEV figures: forward is up and left is left in metres, map classes never hide each other,
TP/FP/FN by hand, one colour per method whatever the report holds, 1/10/100 % ticks, samples files old and new."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from occfeat.bev_plots import (CLASS_COLORS, OUTCOME_RGB, BevSample, bev_axes, cells_path, class_fill, draw_classes,
                               load_samples, outcomes, overlap_masks, sample_iou)
from occfeat.data.index import CAMERAS
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.plots import bev_sample_figure, iou_vs_fraction_figure, method_color, method_name, plot_samples
from occfeat.train.evaluate import write_samples

GRID = BevGrid()  # the paper's grid: x in [-48.5, 51.5), y in [-50, 50), 0.5 m cells


def _box(grid: BevGrid, x: tuple[float, float], y: tuple[float, float]) -> np.ndarray:
    """(X, Y) mask of the cells whose centres lie in x × y metres (ego frame)."""
    c = grid.bev_centers()
    return (c[..., 0] >= x[0]) & (c[..., 0] <= x[1]) & (c[..., 1] >= y[0]) & (c[..., 1] <= y[1])


def _pixels(fig, ax, rgb, tol: int = 2) -> np.ndarray:
    """(N, 2) display coordinates (x right, y up) of the pixels of ``ax`` drawn in colour ``rgb`` (± ``tol``
    of 255 per channel: hatch lines are antialiased)."""
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    rows, cols = np.nonzero(np.abs(buf - np.round(np.array(rgb) * 255)).max(-1) <= tol)
    xy = np.stack([cols + 0.5, buf.shape[0] - rows - 0.5], axis=1)
    bb = ax.get_window_extent()
    return xy[(xy[:, 0] > bb.x0) & (xy[:, 0] < bb.x1) & (xy[:, 1] > bb.y0) & (xy[:, 1] < bb.y1)]


def test_forward_is_up_left_is_left_and_axes_are_metres():
    """A car 20 m ahead is drawn above the ego marker, one 20 m to the left left of it; the arrow points up."""
    ahead, left = _box(GRID, (18, 22), (-1, 1)), _box(GRID, (-1, 1), (18, 22))
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    draw_classes(ax, np.stack([ahead, left]), None, ["vehicle", "crosswalk"], GRID)
    bev_axes(ax, GRID)
    ahead_px = _pixels(fig, ax, to_rgb(CLASS_COLORS["vehicle"])).mean(0)
    left_px = _pixels(fig, ax, to_rgb(CLASS_COLORS["crosswalk"])).mean(0)
    ego = next(p for p in ax.patches if p.get_label() == "ego").get_window_extent()
    arrow = ax.patches[-1].get_window_extent()
    assert ahead_px[1] > ego.y1 and ego.x0 < ahead_px[0] < ego.x1  # ahead: straight up from the ego
    assert left_px[0] < ego.x0 and ego.y0 - 5 < left_px[1] < ego.y1 + 5  # left: to the left, level with it
    assert arrow.y1 > ego.y1 + 10 and abs((arrow.x0 + arrow.x1) / 2 - (ego.x0 + ego.x1) / 2) < 2  # forward = up
    # the axes read metres: the drawn blob sits at (y, x) = (0, 20) m in data coordinates
    y_m, x_m = ax.transData.inverted().transform(ahead_px)
    assert abs(x_m - 20) < 1.0 and abs(y_m) < 1.0
    assert ax.get_xlim() == (50.0, -50.0) and ax.get_ylim() == (-48.5, 51.5)  # the grid's extent, y left-positive
    plt.close(fig)


def test_map_classes_do_not_hide_each_other():
    """A cell in road and crosswalk is filled with the crosswalk (the later class) and hatched in the road's colour."""
    grid = BevGrid(((-10, 10), (-10, 10), (-1, 1)), (20, 20, 1))
    road = np.ones((20, 20), bool)
    crosswalk = _box(grid, (3, 9), (-9, -3))  # ahead and to the right, clear of the ego marker
    masks = np.stack([road, crosswalk])
    colors = [to_rgb(CLASS_COLORS[c]) for c in ("road", "crosswalk")]
    fill = class_fill(masks, None, colors)
    assert np.allclose(fill[crosswalk], colors[1]) and np.allclose(fill[~crosswalk], colors[0])
    over = overlap_masks(masks)
    assert (over[0] == crosswalk).all() and not over[1].any()  # road is hatched exactly where the crosswalk fills
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    draw_classes(ax, masks, None, ["road", "crosswalk"], grid)
    bev_axes(ax, grid)
    fig.canvas.draw()
    inner = ax.transData.transform([(-4, 4), (-8, 8)])  # the crosswalk's inner part, (y, x) m → display
    (x0, x1), (y0, y1) = sorted(inner[:, 0]), sorted(inner[:, 1])

    def share(rgb, tol):
        px = _pixels(fig, ax, rgb, tol)
        inside = (px[:, 0] > x0) & (px[:, 0] < x1) & (px[:, 1] > y0) & (px[:, 1] < y1)
        return inside.sum() / ((x1 - x0) * (y1 - y0))

    # both classes visible in the shared cells: the crosswalk's fill, the road's hatch lines
    assert share(colors[1], 2) > 0.4 and share(colors[0], 40) > 0.05
    assert share(colors[0], 40) < 0.5
    plt.close(fig)


def test_cells_path_covers_the_cells_in_metres():
    grid = BevGrid(((-10, 10), (-10, 10), (-1, 1)), (20, 20, 1))  # 1 m cells
    mask = np.zeros((20, 20), bool)
    mask[12:14, 3:6] = True  # x in [2, 4) m, y in [-7, -4) m
    box = cells_path(mask, grid).get_extents()  # page data coordinates: (y, x)
    assert (box.x0, box.x1, box.y0, box.y1) == (-7, -4, 2, 4)
    assert cells_path(np.zeros((20, 20), bool), grid) is None


def test_tp_fp_fn_by_hand():
    target = np.array([[1, 1, 0], [0, 1, 0]], bool)
    pred = np.array([[1, 0, 1], [0, 1, 1]], bool)
    valid = np.array([[1, 1, 1], [1, 1, 0]], bool)
    code = outcomes(target, pred, valid)
    assert code.tolist() == [[1, 3, 2], [0, 1, 4]]  # TP FN FP / TN TP excluded
    assert sample_iou(code) == pytest.approx(2 / 4)
    assert np.isnan(sample_iou(outcomes(np.zeros((2, 2)), np.zeros((2, 2)))))
    assert len({tuple(c) for c in OUTCOME_RGB}) == len(OUTCOME_RGB)  # TN, TP, FP, FN, excluded all differ


def _summary(methods: list[str], fractions=(0.01, 0.1, 1.0)) -> pd.DataFrame:
    rows = [{"arch": "simplebev", "backbone": "efficientnet_b0", "input": "224×400", "pretraining": m, "prior": "0", "marks": "",
             "task": "vehicle", "fraction": f, "labelled": 1, "mean": 0.1 + i / 10, "std": 0.01, "n": 3}
            for i, m in enumerate(methods) for f in fractions]
    return pd.DataFrame(rows)


def _colors(fig) -> dict[str, tuple]:
    handles, labels = fig.axes[0].get_legend_handles_labels()
    return {label.split(": ", 1)[1]: to_rgb(h.lines[0].get_color()) for h, label in zip(handles, labels)}


def test_method_colour_does_not_depend_on_the_other_rows():
    a = _colors(iou_vs_fraction_figure(_summary(["None", "Occ+Feat (50 ep, λ=0.01)"])))
    b = _colors(iou_vs_fraction_figure(_summary(["Zeta-Method (3 ep)", "Img-ALSO (50 ep)", "Occ+Feat (50 ep, λ=0.01)", "None"])))
    plt.close("all")
    assert a["None"] == b["None"] and a["Occ+Feat (50 ep, λ=0.01)"] == b["Occ+Feat (50 ep, λ=0.01)"]
    assert len(set(b.values())) == 4
    # the method, not its settings, picks the colour; a privileged teacher (†) a darker shade of it
    assert method_color("Occ+Feat (50 ep, λ=0.01)") == method_color("Occ+Feat (1 ep, λ=0.1)") == to_rgb("#d62728")
    assert method_name("Occ+Feat (4 ep, λ=0.01) (+ perspective head)", "§*") == "Occ+Feat (+ perspective head)"
    assert method_name("Occ+Feat (4 ep, λ=0.01) + BEVDistill", "§†") == "Occ+Feat + BEVDistill†"
    distill = np.array(method_color("Occ+Feat (50 ep, λ=0.01) + BEVDistill"))
    assert np.allclose(method_color("Occ+Feat (50 ep, λ=0.01) + BEVDistill", "§†"), 0.65 * distill)
    # an unknown method: a stable hash (sha1), so the same colour in every process and every report
    assert method_color("Zeta-Method (3 ep)") == method_color("Zeta-Method") == pytest.approx(to_rgb(plt.cm.tab20b(14)))


def test_fraction_axis_has_1_10_100_percent_ticks_and_says_the_bars_are_one_std():
    fig = iou_vs_fraction_figure(_summary(["None"], fractions=(0.1, 1.0)))
    ax = fig.axes[0]
    fig.canvas.draw()
    assert list(ax.get_xticks()) == [1, 10, 100]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 %", "10 %", "100 %"]
    assert len(ax.xaxis.get_minorticklocs()) == 0
    assert any("±1 std" in t.get_text() for t in fig.texts)
    fig = iou_vs_fraction_figure(_summary(["None"], fractions=(0.01, 0.5)))
    assert list(fig.axes[0].get_xticks()) == [1, 10, 50, 100]  # a fraction run off the decades gets its own tick
    plt.close("all")


def _sample_arrays(n=2, c=1, grid=GRID, hw=(16, 28)):
    rng = np.random.default_rng(0)
    X, Y = grid.shape[:2]
    return {"tokens": np.array([f"tok{i}" for i in range(n)]), "cameras": rng.integers(0, 255, (n, 6, *hw, 3), dtype=np.uint8),
            "target": rng.random((n, c, X, Y)) > 0.9, "prob": rng.random((n, c, X, Y)).astype(np.float16),
            "valid": np.ones((n, X, Y), bool), "classes": np.array(["road", "divider"][:c] if c > 1 else ["vehicle"])}


def test_samples_file_round_trips_and_old_files_still_load(tmp_path):
    grid = BevGrid(((-10, 10), (-10, 10), (-1, 1)), (20, 20, 1))
    arrays = _sample_arrays(grid=grid)
    write_samples(tmp_path, {**arrays, "camera_names": np.array(CAMERAS)}, grid)
    samples = load_samples(tmp_path / "samples.npz")  # the grid comes from the file
    assert samples[0].grid == grid and samples[0].camera_names == CAMERAS and samples[1].token == "tok1"
    assert samples[0].prob.dtype == np.float32 and not np.isin(samples[0].prob, [0, 1]).all()  # probabilities, not masks
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)  # before camera_names and grid: the caller's grid (the run's config.yaml)
    assert load_samples(old, grid)[0].camera_names == CAMERAS
    with pytest.raises(OccfeatError, match="stores no grid"):
        load_samples(old)
    with pytest.raises(OccfeatError, match="do not match the grid"):
        load_samples(old, GRID)
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(OccfeatError, match="not a valid samples file"):
        load_samples(tmp_path / "torn.npz")


@pytest.mark.parametrize("classes", [1, 2])
def test_sample_figure_names_the_cameras_and_shows_gt_probability_and_outcomes(tmp_path, classes):
    grid = BevGrid(((-10, 10), (-10, 10), (-1, 1)), (20, 20, 1))
    a = _sample_arrays(n=1, c=classes, grid=grid)
    s = BevSample(a["target"][0], a["prob"][0].astype(np.float32), list(a["classes"]), grid, a["valid"][0], a["cameras"][0])
    fig = bev_sample_figure(s, title="run: None")
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {n.removeprefix("CAM_") for n in CAMERAS} <= texts
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "ground truth" and sum(t.startswith("p(") for t in titles) == classes
    assert sum("sample IoU" in t for t in titles) == classes
    plt.close(fig)
    np.savez(tmp_path / "samples.npz", **a)
    path = plot_samples(tmp_path / "samples.npz", tmp_path / "s.png", "title", grid)
    assert path.stat().st_size > 10_000
