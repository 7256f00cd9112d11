"""Distillation from a LiDAR teacher while finetuning (BEVDistill, DistillBEV): the per-sample box maps, the
frozen teacher, the label accounting, and both methods end to end through the CLI on the tiny world."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import occfeat.cli.main
from occfeat.errors import OccfeatError
from occfeat.train.finetune import resolve_config

LIDAR = "recipes/finetune/synthetic-lidar.yaml"
CAMERA = "recipes/finetune/synthetic-tiny.yaml"
STEPS = ["--no-progress", "train.max_steps=2", "train.batch_size=1", "train.num_workers=0", "train.device=cpu"]


def finetune(synth_root, out, recipe, fraction, *overrides, task="vehicle"):
    args = ["finetune", "--recipe", recipe, "--dataroot", str(synth_root), "--version", "v1.0-mini", "--task", task,
            "--fraction", str(fraction), "--seed", "3", "--out", str(out), "--split", "mini_train", "--val-split", "mini_val",
            *STEPS, *overrides]
    return CliRunner().invoke(occfeat.cli.main.app, args)


@pytest.fixture(scope="module")
def lidar_teacher(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "lidar-vehicle-f0.5-s3"
    res = finetune(synth_root, out, LIDAR, 0.5)
    assert res.exit_code == 0, res.output
    return out


def test_box_maps_put_a_gaussian_on_every_box_centre_and_the_box_area_on_its_cells(synth_root, tmp_path):
    from occfeat.data.index import SampleIndex
    from occfeat.train.distill import BoxMaps
    from occfeat.train.finetune import segmentation_set

    index = SampleIndex(synth_root, "v1.0-mini", "mini_train")
    cfg = resolve_config(CAMERA, "vehicle", 1.0)
    ds = segmentation_set(index, index.tokens[:1], cfg, tmp_path, train=False, progress=False)
    maps = BoxMaps(ds.gt.source, sigma=None)
    token = index.tokens[0]
    got, target = maps(token), ds.gt(token)["target"][0]
    assert got["distill_fg"].shape == got["box_area"].shape == target.shape
    assert np.array_equal(got["box_area"] > 0, target)  # the area sits exactly on the boxes' cells
    corners, _, _ = ds.gt.source.boxes[token]
    length = np.linalg.norm(corners[:, 1, :2] - corners[:, 0, :2], axis=-1)
    width = np.linalg.norm(corners[:, 2, :2] - corners[:, 1, :2], axis=-1)
    for area in np.unique(got["box_area"][target]):  # 1 m cells: the area in cells is a box's in m²
        assert np.abs(length * width - area).min() < 1e-3
    assert (got["distill_fg"] == 1).sum() >= 1 and got["distill_fg"].max() == 1 and (got["distill_fg"] >= 0).all()
    assert got["distill_fg"][target].mean() > got["distill_fg"][~target].mean()
    # the same boxes in a reference frame turned 90 degrees: the maps turn with them
    ref_T_ego = np.eye(4)
    ref_T_ego[:2, :2] = [[0.0, 1.0], [-1.0, 0.0]]
    turned = maps(token, ref_T_ego)
    np.testing.assert_allclose(turned["distill_fg"], np.rot90(got["distill_fg"], k=-1), atol=1e-6)


def test_gradients_reach_the_student_and_the_adapters_never_the_teacher(lidar_teacher, test_grid):
    from occfeat.train.distill import DistillConfig, Distiller, load_teacher
    from tests.test_models import tiny_batch, tiny_cfg
    from occfeat.models import build_network

    teacher = load_teacher(lidar_teacher, test_grid, "vehicle")
    student = build_network(tiny_cfg(bev_channels=32), test_grid)
    X, Y, Z = test_grid.shape
    for method in ("bevdistill", "distillbev"):
        distiller = Distiller(DistillConfig(method=method, teacher=str(lidar_teacher)), student, teacher, "vehicle")
        batch = {**tiny_batch(), "lidar": torch.rand(1, X, Y, Z) > 0.9, "target": torch.zeros(1, 1, X, Y),
                 "distill_fg": torch.rand(1, X, Y), "box_area": torch.zeros(1, X, Y)}
        batch["target"][0, 0, 10:14, 20:22] = 1
        batch["box_area"][0, 10:14, 20:22] = 8.0
        student.zero_grad()
        loss, terms = distiller(student.forward_bev(batch), batch)
        assert torch.isfinite(loss) and loss > 0 and set(terms) == {"loss_distill"}
        loss.backward()
        assert all(p.grad is None for p in teacher.model.parameters())
        assert all(p.grad is not None for p in distiller.adapters.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.encoder.parameters())
        assert not any(n.startswith("teacher") for n in distiller.state_dict())  # the checkpoint keeps only the adapters


def test_both_methods_finetune_through_the_cli_and_the_report_says_what_the_teacher_saw(synth_root, lidar_teacher, tmp_path):
    from occfeat.report import write_report
    from occfeat.train.records import FinetuneMetrics

    runs = {}
    for name, fraction, extra in [("bevdistill", 0.5, ["distill.nce_weight=0.2"]), ("distillbev", 0.2, [])]:
        out = tmp_path / "runs" / name
        res = finetune(synth_root, out, CAMERA, fraction, f"distill.method={name}", f"distill.teacher={lidar_teacher}", *extra)
        assert res.exit_code == 0, res.output
        runs[name] = out
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert row["loss_distill"] > 0 and row["loss"] > row["loss_distill"]
        assert ("loss_nce" in row) == (name == "bevdistill")
    same, fewer = FinetuneMetrics.read(runs["bevdistill"]), FinetuneMetrics.read(runs["distillbev"])
    teacher_tokens = (lidar_teacher / "labelled_tokens.txt").read_text().split()
    assert (runs["bevdistill"] / "labelled_tokens.txt").read_text().split() == teacher_tokens  # same (fraction, seed)
    assert same.distillation["teacher_labelled"] == len(teacher_tokens) == 3 and not same.distillation["privileged"]
    assert fewer.labelled_samples == 2 and fewer.distillation["privileged"]  # the teacher saw a frame the student did not
    assert same.distillation["weight"] == 0.01 and fewer.distillation["weight"] == 1.0  # each method's default
    summary = write_report(list(runs.values()), tmp_path / "report", plots=False)["summary"]
    labels = dict(zip(summary["pretraining"], summary["marks"]))
    assert labels == {"None + BEVDistill (LiDAR teacher, same labels)": "§*",
                      "None + DistillBEV (LiDAR teacher, 50 % labels)": "§*†"}
    # a resumed run keeps its teacher: another teacher is refused
    res = finetune(synth_root, runs["bevdistill"], CAMERA, 0.5, "--resume", "distill.method=bevdistill",
                   f"distill.teacher={runs['distillbev']}", "distill.nce_weight=0.2")
    assert res.exit_code == 2 and "distill.teacher" in res.output


def test_bad_teachers_are_one_line_errors(synth_root, lidar_teacher, tmp_path, test_grid):
    from occfeat.grid import BevGrid
    from occfeat.train.distill import load_teacher

    with pytest.raises(OccfeatError, match="needs distill.teacher"):
        resolve_config(CAMERA, "vehicle", 0.1, ["distill.method=bevdistill"])
    with pytest.raises(OccfeatError, match="is not one of"):
        resolve_config(CAMERA, "vehicle", 0.1, ["distill.method=fitnet"])
    other = BevGrid(bounds=((-20.0, 20.0), (-20.0, 20.0), (-4.5, 5.5)), shape=(40, 40, 8))
    with pytest.raises(OccfeatError, match="must share the grid"):
        load_teacher(lidar_teacher, other, "vehicle")
    with pytest.raises(OccfeatError, match="segments 'vehicle'"):
        load_teacher(lidar_teacher, test_grid, "map")
    with pytest.raises(OccfeatError, match="holds no checkpoints/last.pt; train the LiDAR teacher first"):
        load_teacher(tmp_path / "nowhere", test_grid, "vehicle")
    camera = tmp_path / "camera"
    assert finetune(synth_root, camera, CAMERA, 0.5).exit_code == 0
    res = finetune(synth_root, tmp_path / "student", CAMERA, 0.5, "distill.method=bevdistill", f"distill.teacher={camera}")
    assert res.exit_code == 2 and "camera network" in res.output and "\n" not in res.output.strip()


def test_the_stamp_names_a_weight_other_than_the_methods_default(lidar_teacher, test_grid):
    from occfeat.report import distillation_label
    from occfeat.train.distill import DistillConfig, load_teacher

    teacher = load_teacher(lidar_teacher, test_grid, "vehicle")
    tokens = (lidar_teacher / "labelled_tokens.txt").read_text().split()
    default = teacher.stamp(tokens, DistillConfig(method="distillbev", teacher=str(lidar_teacher)))
    scaled = teacher.stamp(tokens[:1], DistillConfig(method="distillbev", teacher=str(lidar_teacher), weight=0.1))
    assert distillation_label(default, 3) == " + DistillBEV (LiDAR teacher, same labels)" and not default["privileged"]
    assert distillation_label(scaled, 1) == " + DistillBEV ×0.1 (LiDAR teacher, 50 % labels)" and scaled["privileged"]
