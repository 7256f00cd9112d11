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
    labels = {p: (prior, marks) for p, prior, marks in zip(summary["pretraining"], summary["prior"], summary["marks"])}
    assert labels == {"None + BEVDistill": ("p % (LiDAR teacher)", "§*"),
                      "None + DistillBEV": ("50 % (LiDAR teacher)", "§*†")}
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| Labels before finetuning |" in table and "| None + DistillBEV§*† | 50 % (LiDAR teacher) |" in table
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
    from occfeat.report import distillation_label, prior_labels
    from occfeat.train.distill import DistillConfig, load_teacher

    teacher = load_teacher(lidar_teacher, test_grid, "vehicle")
    tokens = (lidar_teacher / "labelled_tokens.txt").read_text().split()
    default = teacher.stamp(tokens, DistillConfig(method="distillbev", teacher=str(lidar_teacher)))
    scaled = teacher.stamp(tokens[:1], DistillConfig(method="distillbev", teacher=str(lidar_teacher), weight=0.1))
    assert distillation_label(default) == " + DistillBEV" and prior_labels(default, 3) == "p % (LiDAR teacher)"
    assert distillation_label(scaled) == " + DistillBEV ×0.1" and prior_labels(scaled, 1) == "50 % (LiDAR teacher)"
    assert not default["privileged"] and scaled["privileged"] and prior_labels({}, 3) == "0"
    semi = teacher.stamp(tokens, DistillConfig(method="bevdistill", teacher=str(lidar_teacher), unlabelled=True), 5)
    pseudo = teacher.stamp(tokens, DistillConfig(method="pseudo", teacher=str(lidar_teacher), unlabelled=True), 5)
    assert distillation_label(semi) == " + BEVDistill on all frames" and semi["unlabelled"] == 5
    assert distillation_label(pseudo) == " + pseudo-labels on unlabelled frames"


# ---------------------------------------------------------------- semi-supervised: the unlabelled frames


def test_unlabelled_frames_carry_no_labels_and_every_one_is_visited(synth_root, lidar_teacher, tmp_path, test_grid):
    from occfeat.data.index import SampleIndex
    from occfeat.train.distill import load_teacher
    from occfeat.train.finetune import FinetuneTask, SemiSupervisedSet, segmentation_set
    from occfeat.train.labels import select_labelled

    index = SampleIndex(synth_root, "v1.0-mini", "mini_train")
    cfg = resolve_config(CAMERA, "vehicle", 0.2, ["distill.method=distillbev", f"distill.teacher={lidar_teacher}", "distill.unlabelled=true"])
    teacher = load_teacher(lidar_teacher, test_grid, "vehicle")
    labelled = select_labelled(index.tokens, 0.2, 3)
    unlabelled = [t for t in index.tokens if t not in labelled]
    ds = segmentation_set(index, labelled, cfg, tmp_path, train=True, progress=False, teacher=teacher, unlabelled=unlabelled)
    assert isinstance(ds, SemiSupervisedSet) and len(ds) == len(labelled)  # an epoch is still one pass over the labels
    assert any(ds.labelled.gt(t)["target"].any() for t in unlabelled)  # the real labels would not be empty
    seen = []
    for epoch in range(-(-len(unlabelled) // len(labelled))):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            known, blind = ds[i]
            assert known["labelled"] and not blind["labelled"] and known["token"] in labelled
            for key in ("target", "valid", "center", "offset", "distill_fg", "box_area"):
                assert known[key].shape == blind[key].shape and not blind[key].any(), key
            assert blind["lidar"].any()  # the teacher's input is real
            seen.append(blind["token"])
    assert sorted(set(seen)) == sorted(unlabelled)
    batch = FinetuneTask.collate(None, [ds[0]])
    assert batch["labelled"].tolist() == [True, False] and batch["images"].shape[0] == 2


def test_the_vehicle_loss_reads_nothing_an_unlabelled_frame_carries():
    from occfeat.losses import VehicleSegLoss

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    out = {"segmentation": r(2, 1, 8, 8), "center": r(2, 1, 8, 8), "offset": r(2, 2, 8, 8)}
    batch = {"target": r(2, 1, 8, 8) > 0.7, "valid": torch.tensor([True, False])[:, None, None].expand(2, 8, 8),
             "center": r(2, 1, 8, 8), "offset": r(2, 2, 8, 8), "labelled": torch.tensor([True, False])}
    loss = VehicleSegLoss()
    both, _ = loss(out, batch)
    alone, _ = loss({k: v[:1] for k, v in out.items()}, {k: v[:1] for k, v in batch.items() if k != "labelled"})
    torch.testing.assert_close(both, alone)  # frame 2's target, centre and offset change nothing


def test_unlabelled_frames_take_their_masks_from_the_teacher(lidar_teacher, test_grid):
    from occfeat.distillation import dense_distillation_loss
    from occfeat.models import build_network
    from occfeat.distillation import component_sizes
    from occfeat.train.distill import DistillConfig, Distiller, load_teacher
    from occfeat.train.finetune import with_pseudo_labels
    from tests.test_models import tiny_batch, tiny_cfg

    teacher = load_teacher(lidar_teacher, test_grid, "vehicle")
    student = build_network(tiny_cfg(bev_channels=32), test_grid)
    X, Y, Z = test_grid.shape
    torch.manual_seed(0)
    garbage = {"target": torch.rand(1, 1, X, Y) > 0.5, "distill_fg": torch.rand(1, X, Y), "box_area": torch.rand(1, X, Y) * 50}
    batch = {**tiny_batch(), "lidar": torch.rand(1, X, Y, Z) > 0.9, **garbage, "labelled": torch.tensor([False])}
    bev = student.forward_bev(batch)
    # BEVDistill: the weights are the teacher's predicted probability
    bd = Distiller(DistillConfig(method="bevdistill", teacher=str(lidar_teacher)), student, teacher, "vehicle")
    feats, probs = bd.teacher_outputs(batch)
    loss, _ = bd(bev, batch)
    torch.testing.assert_close(loss, 0.01 * dense_distillation_loss(bd.adapters["bev"](bev), feats["bev"], probs.amax(1)))
    # DistillBEV: an unlabelled frame = a labelled one whose boxes are the teacher's predicted blobs
    db = Distiller(DistillConfig(method="distillbev", teacher=str(lidar_teacher), stages=("bev",)), student, teacher, "vehicle")
    predicted = probs.amax(1) > 0.5
    as_if = {**batch, "labelled": torch.tensor([True]), "target": predicted[:, None],
             "box_area": torch.from_numpy(component_sizes(predicted[0].numpy()))[None]}
    torch.testing.assert_close(db(bev, batch)[0], db(bev, as_if)[0])
    assert not torch.equal(db(bev, batch)[0], db(bev, {**batch, "labelled": torch.tensor([True])})[0])
    # pseudo-labels: no feature term; the thresholded predictions replace the unlabelled frame's target only
    pl = Distiller(DistillConfig(method="pseudo", teacher=str(lidar_teacher), unlabelled=True), student, teacher, "vehicle")
    _, terms = pl(bev, batch)
    assert set(terms) == {"pseudo_target"} and torch.equal(terms["pseudo_target"], probs > 0.5) and not list(pl.parameters())
    two = {"target": torch.zeros(2, 1, 2, 2, dtype=torch.bool), "valid": torch.tensor([[[True, False], [True, True]]] * 2),
           "labelled": torch.tensor([True, False])}
    pseudo = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    got = with_pseudo_labels(two, pseudo)
    assert got["target"][0].sum() == 0 and got["target"][1].all() and got["valid"][1].all() and not got["valid"][0, 0, 1]


def test_semi_supervised_runs_through_the_cli_and_record_their_unlabelled_frames(synth_root, lidar_teacher, tmp_path):
    from occfeat.train.records import FinetuneMetrics

    for method in ("distillbev", "pseudo"):
        out = tmp_path / method
        res = finetune(synth_root, out, CAMERA, 0.5, f"distill.method={method}", f"distill.teacher={lidar_teacher}", "distill.unlabelled=true")
        assert res.exit_code == 0, res.output
        m = FinetuneMetrics.read(out)
        assert m.labelled_samples == 3 and m.distillation["unlabelled"] == 3 and not m.distillation["privileged"]
        assert (out / "labelled_tokens.txt").read_text() == (lidar_teacher / "labelled_tokens.txt").read_text()
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert ("loss_distill" in row) == (method == "distillbev")
    res = finetune(synth_root, tmp_path / "all", CAMERA, 1.0, "distill.method=bevdistill", f"distill.teacher={lidar_teacher}",
                   "distill.unlabelled=true")
    assert res.exit_code == 2 and "none is left unlabelled" in res.output and "\n" not in res.output.strip()
    with pytest.raises(OccfeatError, match="add distill.unlabelled=true"):
        resolve_config(CAMERA, "vehicle", 0.1, ["distill.method=pseudo", f"distill.teacher={lidar_teacher}"])
    pseudo = ["distill.method=pseudo", f"distill.teacher={lidar_teacher}", "distill.unlabelled=true"]
    with pytest.raises(OccfeatError, match="no effect with method=pseudo"):
        resolve_config(CAMERA, "vehicle", 0.1, [*pseudo, "distill.weight=2"])
    with pytest.raises(OccfeatError, match="pseudo_threshold=1.5 must be between 0 and 1"):
        resolve_config(CAMERA, "vehicle", 0.1, [*pseudo, "distill.pseudo_threshold=1.5"])
