"""``occfeat inspect`` (issue 17): a pretraining run's Fig. 5-6 pictures for one sample, on the tiny synthetic
world, from a run dir in the loop's checkpoint format (untrained weights: the pictures, not their content)."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from occfeat.cli.main import app
from occfeat.errors import OccfeatError
from occfeat.feature_pictures import default_column, load_task, sample_features, seen_from
from occfeat.features_viz import top_occupied
from occfeat.train.rundir import CHECKPOINT_FORMAT, atomic_save
from tests.fixtures.pretrain import make_task

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "synthetic-tiny.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, test_grid, synth_root, occupancy_h5, features_h5) -> Path:
    task = make_task(RECIPE, test_grid, synth_root, occupancy_h5, features_h5)
    run = tmp_path_factory.mktemp("inspect") / "pretrain"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = {"format": CHECKPOINT_FORMAT, "step": 1, "epoch": 1, "config": task.config_dict(), "task": task.checkpoint_payload()}
    atomic_save(ckpt, run / "checkpoints" / "last.pt")
    return run


def test_sample_features_are_the_predictors_output_at_the_top_occupied_voxels(run_dir):
    task = load_task(run_dir)  # dataroot, version, caches and split: the ones the run recorded
    s = sample_features(task, 0)
    batch = task.collate([task.train_set[0]])
    occ = batch["occupancy"][0].numpy()
    assert len(s.occupied) == occ.sum() > 0 and s.occupied.shape[1] == s.teacher.shape[-1] == 384
    z_top, has = top_occupied(occ)
    assert np.array_equal(s.has, has) and not s.top[~has].any()
    # the dense predictor at one top voxel equals what sample_features kept for its column
    import torch

    with torch.no_grad():
        volume = task.model.decoder(task.model.network(batch))
        dense = task.model.objectives["features"].predictor(volume)[0]  # (N_y, Z, X, Y)
    x, y = np.argwhere(has)[0]
    assert np.allclose(s.top[x, y], dense[:, z_top[x, y], x, y].numpy(), atol=1e-5)
    with pytest.raises(OccfeatError, match="out of range"):
        sample_features(task, len(task.train_set))
    seen = [c for c in map(tuple, np.argwhere(has)) if seen_from(s, c) is not None]
    assert len(seen) > has.sum() / 2, f"{len(seen)} of {has.sum()} top voxels seen by a camera"  # 6 cameras see most around the car
    # the top voxel of the default column, projected into the camera that sees it, lands inside that image
    cam, (u, v) = seen_from(s, default_column(s))
    assert 0 <= u < s.image_hw[1] and 0 <= v < s.image_hw[0] and 0 <= cam < len(s.teacher)


def test_inspect_refuses_a_column_that_is_not_x_y(run_dir, tmp_path):
    # the pictures `occfeat inspect` writes: tests/test_feature_pictures.py
    bad = CliRunner().invoke(app, ["inspect", str(run_dir), "--out", str(tmp_path / "x"), "--column", "1"])
    assert bad.exit_code == 2 and "--column '1' is not X,Y" in bad.output
