"""The pictures of a pretraining run (issue 17): ``write_pretraining_pictures`` on two tiny run dirs (an
Occ+Feat one and an occupancy-only one, on the tiny synthetic world), the BEV page conventions of the
pictures, and the pure helpers behind the loss curves and the provenance stamp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occfeat.bev_plots import EGO_BOX, bev_axes, draw_bev_image, page_xy
from occfeat.data.standin import STANDIN_LEGEND
from occfeat.grid import BevGrid
from occfeat.pretrain_figures import Caption, loss_curves, loss_figure, pretrain_provenance, provenance_marks, running_mean, wants_log

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "pretrain"
FEATURE_PICTURES = {"features_bev.png", "features_3d.png", "correlation.png", "teacher.png"}


def _run_dir(recipe: Path, out: Path, test_grid, synth_root, occupancy_h5, features_h5) -> Path:
    """A run dir as ``occfeat pretrain`` leaves it (checkpoints/last.pt, provenance.json, metrics.jsonl) with
    the recipe's untrained weights: the pictures, not their content, are under test, and two optimizer
    steps cost ~30 s on 2 shared cores. The log rows have the loop's keys."""
    from occfeat.train.rundir import CHECKPOINT_FORMAT, atomic_save
    from tests.fixtures.pretrain import make_task

    task = make_task(recipe, test_grid, synth_root, occupancy_h5, features_h5)
    (out / "checkpoints").mkdir(parents=True)
    ckpt = {"format": CHECKPOINT_FORMAT, "step": 4, "epoch": 1, "config": task.config_dict(), "task": task.checkpoint_payload()}
    atomic_save(ckpt, out / "checkpoints" / "last.pt")
    for name, text in task.run_files().items():
        (out / name).write_text(text)
    terms = [f"loss_{name}" for name in task.cfg.objectives]
    rows = [{"step": s, "epoch": s / 4, "lr": 1e-3, "loss": 1 / s, **{t: 1 / s - 0.1 for t in terms}, "samples_per_s": 3.0} for s in range(1, 9)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def occfeat_run(tmp_path_factory, test_grid, synth_root, occupancy_h5, features_h5) -> Path:
    return _run_dir(RECIPES / "synthetic-tiny.yaml", tmp_path_factory.mktemp("pics") / "occfeat", test_grid, synth_root, occupancy_h5, features_h5)


def _png(path: Path) -> tuple[np.ndarray, dict]:
    with Image.open(path) as im:
        assert im.format == "PNG", path
        return np.asarray(im.convert("RGB")), dict(im.text)


def test_an_occfeat_run_gets_every_picture_stamped_with_its_provenance(occfeat_run, tmp_path):
    from typer.testing import CliRunner

    from occfeat.cli.main import app

    # `occfeat inspect` is write_pretraining_pictures behind a CLI: the same files the report gets
    res = CliRunner().invoke(app, ["inspect", str(occfeat_run), "--out", str(tmp_path / "pics"), "--other", "2"])
    assert res.exit_code == 0, res.output
    paths = [Path(line) for line in res.output.splitlines() if line.endswith(".png")]
    assert {p.name for p in paths} == FEATURE_PICTURES | {"occupancy.png", "loss.png"}
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == sorted(p.name for p in paths)
    for path in paths:
        img, text = _png(path)
        assert img.shape[0] > 300 and img.shape[1] > 500, (path.name, img.shape)
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, path.name  # drawn, not blank
        # the fixture's teacher is a random-init DINOv2, the backbone random, the world synthetic: all three said
        assert "‡ pretrained with a random-init teacher" in text["Description"], path.name
        assert "* image backbone started from random weights" in text["Description"] and "§ synthetic data" in text["Description"]
        assert STANDIN_LEGEND not in text["Description"] and text["Title"], path.name


def test_an_occupancy_only_run_gets_the_occupancy_and_loss_pictures_only(tmp_path, test_grid, synth_root, occupancy_h5, features_h5):
    from occfeat.feature_pictures import write_pretraining_pictures

    run = _run_dir(RECIPES / "synthetic-occ.yaml", tmp_path / "occ", test_grid, synth_root, occupancy_h5, features_h5)
    paths = write_pretraining_pictures(run, tmp_path / "pics")
    assert [p.name for p in paths] == ["loss.png", "occupancy.png"]
    for path in paths:
        _, text = _png(path)
        assert "teacher" not in text["Description"] and "§ synthetic data" in text["Description"]  # it never read one
    (run / "metrics.jsonl").write_text("")  # a run that has not logged a step yet: no loss picture, the rest still drawn
    assert [p.name for p in write_pretraining_pictures(run, tmp_path / "again")] == ["occupancy.png"]


def test_a_point_ahead_is_drawn_above_the_ego_and_a_point_to_the_left_left_of_it():
    """The LiDAR scatter (page_xy) and the cell images (draw_bev_image) land on the same page position."""
    import matplotlib.pyplot as plt

    grid = BevGrid(bounds=((-25.0, 25.0), (-25.0, 25.0), (-4.5, 5.5)), shape=(50, 50, 8))
    fig, ax = plt.subplots(figsize=(5, 5))
    cells = np.zeros((50, 50))
    cells[45, 35] = 1.0  # x in [20, 21) m, y in [10, 11) m: ahead and to the left
    draw_bev_image(ax, cells, grid, cmap="gray_r", vmin=0, vmax=1)
    bev_axes(ax, grid)
    fig.canvas.draw()
    ahead, left, ego = ax.transData.transform(page_xy(np.array([[20.5, 0.0], [0.0, 10.5], [0.0, 0.0]])))
    assert ahead[1] > ego[1] + 100 and abs(ahead[0] - ego[0]) < 1  # display y grows upward
    assert left[0] < ego[0] - 50 and abs(left[1] - ego[1]) < 1
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    H = img.shape[0]
    u, v = ax.transData.transform(page_xy(np.array([[20.5, 10.5]])))[0]
    assert img[int(H - v), int(u)].sum() < 60  # the dark cell is where the point (20.5, 10.5) is drawn
    u, v = ax.transData.transform(page_xy(np.array([[20.5, -10.5]])))[0]
    assert img[int(H - v), int(u)].sum() > 600  # and not mirrored to the right
    (x0, x1), (y0, y1), _ = EGO_BOX
    assert x0 < 0 < x1 and y0 < 0 < y1  # the ego origin used above is inside the drawn footprint
    plt.close(fig)


def test_loss_curves_keep_the_last_row_of_a_step_and_put_the_total_first():
    rows = [{"step": 1, "epoch": 0.5, "loss": 2.0, "loss_occupancy": 1.0, "lr": 1e-3},
            {"step": 2, "epoch": 1.0, "loss": 9.0, "loss_occupancy": 9.0},
            {"step": 2, "epoch": 1.0, "loss": 1.0, "loss_occupancy": 0.5, "loss_features": -0.2},  # resumed: rewritten
            {"step": 3, "epoch": 1.5, "loss": float("nan"), "loss_occupancy": 0.25}]
    x_name, curves = loss_curves(rows)
    assert x_name == "epoch" and list(curves) == ["loss", "loss_features", "loss_occupancy"]
    assert curves["loss"][1].tolist() == [2.0, 1.0] and curves["loss"][0].tolist() == [0.5, 1.0]  # NaN dropped
    assert curves["loss_occupancy"][1].tolist() == [1.0, 0.5, 0.25] and curves["loss_features"][0].tolist() == [1.0]
    assert loss_curves([{"step": 1, "loss": 1.0}])[0] == "step" and loss_curves([]) == ("step", {})
    assert running_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    assert wants_log(np.array([5.0, 0.1])) and not wants_log(np.array([5.0, 1.0])) and not wants_log(np.array([-0.6, 0.1]))
    import matplotlib.pyplot as plt

    one = {"step": 1, "epoch": 1.0}
    x_name, curves = loss_curves([{**one, "loss": 2.0, "loss_balanced": 2.0, "loss_balanced_features": -0.5}])
    fig = loss_figure(x_name, curves, {"balanced": 1.0}, Caption("r", "Bal-OccFeat"))
    assert [ax.get_title() for ax in fig.axes] == ["total: balanced", "balanced_features"]  # the term equal to the total: no panel
    plt.close(fig)


def test_the_stamp_names_what_the_weights_and_data_were():
    standin = json.loads('{"backbone": {"pretrained": false}, "teacher": {"teacher": "semantic-standin", "pretrained": false}, '
                         '"teacher_standin": true}')
    marks = provenance_marks(pretrain_provenance(standin, synthetic=True))
    assert [m[0] for m in marks] == ["§", "*", "¶"] and marks[2] == f"¶ {STANDIN_LEGEND}"  # stand-in: not "random-init"
    real = {"backbone": {"pretrained": True}, "teacher": {"teacher": "dinov2_vits14", "pretrained": True}}
    assert provenance_marks(pretrain_provenance(real, synthetic=False)) == []
    assert Caption("r", "Occ (2 ep)").stamp == "real data, pretrained backbone and teacher"
    occ_only = {"backbone": {"pretrained": True}, "teacher": {"used": False}}
    assert pretrain_provenance(occ_only, synthetic=False).teacher_random_init is None
    title = Caption("run-a", "Occ+Feat (4 ep, λ=0.01)", tuple(marks)).title("What", 8.0)
    assert title.startswith("What\nrun-a: Occ+Feat (4 ep, λ=0.01) — § ") and STANDIN_LEGEND.replace(" ", "") in title.replace("\n", "").replace(" ", "")


def _sample_with_one_camera_ahead(heights: np.ndarray):
    """A 5 x 5-cell SampleFeatures (1 m cells around the ego) whose columns have the top heights ``heights``
    (NaN: empty) and one forward-looking camera 1 m up (f = 100 px, 200 x 400 image)."""
    from occfeat.feature_pictures import SampleFeatures

    c = np.arange(5) - 2.0
    has = np.isfinite(heights)
    top_xyz = np.stack(np.broadcast_arrays(c[:, None], c[None, :], np.nan_to_num(heights)), axis=-1)
    cam_T_ego = np.array([[0, -1, 0, 0], [0, 0, -1, 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # x fwd → depth, z up → -v
    K = np.array([[100.0, 0, 100], [0, 100, 200], [0, 0, 1]])
    return SampleFeatures("tok", np.zeros((has.sum(), 2)), np.zeros((5, 5, 2)), has, np.zeros((1, 2, 2, 2)), (400, 200), top_xyz,
                          K[None], cam_T_ego[None], np.zeros((has.sum(), 3), int))


def test_the_default_column_is_an_object_a_camera_sees_nearest_the_ego():
    from occfeat.feature_pictures import default_column, seen_from

    heights = np.full((5, 5), -0.1)  # the road everywhere
    heights[0, 2] = heights[4, 2] = 1.1  # a car 2 m behind (no camera looks back) and one 2 m ahead
    s = _sample_with_one_camera_ahead(heights)
    assert seen_from(s, (0, 2)) is None and seen_from(s, (4, 2))[0] == 0
    assert default_column(s) == (4, 2)  # not the road next to the ego, not the car nobody sees
    heights[4, 2] = -0.1
    assert default_column(_sample_with_one_camera_ahead(heights)) == (3, 2)  # no object seen: the nearest seen column
