"""Finetune: the label-fraction rule, config resolution, and a 2-step finetune + evaluate on the synthetic world."""

import pytest

from occfeat.errors import OccfeatError
from occfeat.train.finetune import config_as_dict, config_from_dict, resolve_config
from occfeat.train.labels import FRACTION_DEFAULTS, select_labelled

TOKENS = [f"tok{i:04d}" for i in range(1000)]


def test_subset_is_deterministic_nested_and_sized():
    one, ten, full = (select_labelled(TOKENS, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert (len(one), len(ten), len(full)) == (10, 100, 1000)
    assert set(one) <= set(ten) <= set(full) == set(TOKENS)
    assert select_labelled(TOKENS, 0.1, seed=3) == ten  # same seed, same subset
    assert select_labelled(list(reversed(TOKENS)), 0.1, seed=3) == ten  # the split's order does not matter
    assert set(select_labelled(TOKENS, 0.1, seed=4)) != set(ten)  # another seed, another subset


def test_subset_rounds_up_and_keeps_at_least_one():
    assert len(select_labelled(TOKENS[:12], 0.01, seed=0)) == 1
    assert len(select_labelled(TOKENS[:12], 0.1, seed=0)) == 2  # ceil(1.2)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_out_of_range_fraction_is_a_one_line_error(bad):
    with pytest.raises(OccfeatError, match="--fraction must be in"):
        select_labelled(TOKENS, bad, seed=0)
    with pytest.raises(OccfeatError, match="--fraction must be in"):
        resolve_config(None, "vehicle", bad)


def test_paper_defaults_per_fraction_then_overrides():
    for fraction, row in FRACTION_DEFAULTS.items():
        train = resolve_config(None, "vehicle", fraction).train
        assert (train.epochs, train.lr, train.batch_size, train.grad_accum) == tuple(row.values())
        assert (train.optimizer, train.schedule, train.weight_decay) == ("adamw", "onecycle", 1e-7)
    cfg = resolve_config(None, "map", 0.1, ["train.lr=5e-4", "grid.shape=[50,50,8]"])
    assert cfg.train.lr == 5e-4 and cfg.train.epochs == 50 and cfg.grid.shape == (50, 50, 8)
    assert config_from_dict(config_as_dict(cfg)) == cfg
    with pytest.raises(OccfeatError, match="unknown task"):
        resolve_config(None, "lanes", 0.1)


# ---------------------------------------------------------------- --init from a pretraining run

TINY = "recipes/finetune/synthetic-tiny.yaml"


def _fake_pretrain_run(tmp_path, objectives=None, **net_changes):
    """A pretraining run dir in the loop's checkpoint format (what `occfeat pretrain` writes), without training."""
    import dataclasses
    import json

    import torch

    from occfeat.config import load_config, to_dict
    from occfeat.models import build_network
    from occfeat.train.loop import CHECKPOINT_FORMAT, atomic_save
    from occfeat.train.pretrain import PretrainConfig

    cfg = load_config(PretrainConfig, "recipes/pretrain/synthetic-tiny.yaml", {"objectives": objectives or {}})
    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, **net_changes))
    torch.manual_seed(123)
    net = build_network(cfg.network, cfg.grid)
    run = tmp_path / "pretrain"
    (run / "checkpoints").mkdir(parents=True)
    prov = {"backbone": net.provenance.as_dict(), "teacher": {"pretrained": False}, "random_init": True}
    atomic_save({"format": CHECKPOINT_FORMAT, "step": 1, "epoch": 1, "config": to_dict(cfg),
                 "task": {"network": net.state_dict(), "heads": {}, "provenance": prov}}, run / "checkpoints" / "last.pt")
    (run / "provenance.json").write_text(json.dumps(prov))
    return run, net


def test_init_loads_the_pretrained_network_and_stamps_its_identity(tmp_path):
    import torch

    from occfeat.train.init import build_model

    run, net = _fake_pretrain_run(tmp_path, objectives={"features": None})
    cfg = resolve_config(TINY, "map", 0.01)
    model, stamp, provenance = build_model(cfg, run)
    for k, v in net.state_dict().items():
        assert torch.equal(model.network.state_dict()[k], v), k
    assert model.head.net[-1].out_channels == 5
    want = ("Occ", {"occupancy": {"weight": 1}}, 1, str(run.resolve()))  # the epochs its checkpoint was trained for
    assert (stamp.label, stamp.objectives, stamp.epochs, stamp.run) == want
    assert provenance.teacher_random_init is True and provenance.backbone_random_init is True
    _, stamp, _ = build_model(cfg, _fake_pretrain_run(tmp_path / "occfeat")[0])  # the default objectives: OccFeat, λ 0.01
    assert stamp.row_label() == "Occ+Feat (1 ep, λ=0.01)"


def test_init_refuses_another_grid_or_network(tmp_path):
    from occfeat.train.init import build_model

    run, _ = _fake_pretrain_run(tmp_path)
    with pytest.raises(OccfeatError, match="grid"):
        build_model(resolve_config(TINY, "vehicle", 0.1, ["grid.shape=[40,40,8]"]), run)
    with pytest.raises(OccfeatError, match="bev_channels"):
        build_model(resolve_config(TINY, "vehicle", 0.1, ["network.bev_channels=16"]), run)
    with pytest.raises(OccfeatError, match="no checkpoints"):
        build_model(resolve_config(TINY, "vehicle", 0.1), tmp_path)


# ---------------------------------------------------------------- finetune + evaluate on the synthetic world


def test_finetune_evaluate_and_report_on_the_synthetic_world(synth_root, tmp_path):
    import json

    from typer.testing import CliRunner

    import occfeat.cli.main
    from occfeat.report import write_report
    from occfeat.train.records import FinetuneMetrics, PretrainingStamp

    out = tmp_path / "runs" / "none-vehicle"
    args = ["finetune", "--recipe", TINY, "--dataroot", str(synth_root), "--version", "v1.0-mini", "--task", "vehicle",
            "--fraction", "0.5", "--out", str(out), "--split", "mini_train", "--val-split", "mini_val", "--no-progress",
            "train.max_steps=2", "train.batch_size=1", "train.num_workers=0", "train.device=cpu", "n_vis_samples=2"]
    res = CliRunner().invoke(occfeat.cli.main.app, args)
    assert res.exit_code == 0, res.output
    labelled = (out / "labelled_tokens.txt").read_text().split()
    assert len(labelled) == 3  # ceil(0.5 * 6 key frames of mini_train)
    m = FinetuneMetrics.read(out)
    assert m.step == 2 and m.task == "vehicle" and m.labelled_samples == 3 and m.split == "mini_val"
    assert 0.0 <= m.iou["vehicle"] <= 1.0 and m.union["vehicle"] > 0
    assert m.provenance.synthetic_data and m.provenance.backbone_random_init
    assert m.pretraining == PretrainingStamp() and json.loads((out / "metrics.json").read_text())["pretraining"]["label"] == "None"
    assert (tmp_path / "runs" / "gt-cache").is_dir()  # shared by sibling runs
    # Simple-BEV's objective: every term and learned weight logged; the weights (trained) and the
    # instance heads are in the checkpoint, outside the segmentation model that evaluation reads.
    import torch

    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "loss_ce", "loss_center", "loss_offset", "w_ce", "w_center", "w_offset"} <= set(row)
    payload = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["task"]
    assert set(payload["objective"]) == {"ce_weight", "center_weight", "offset_weight"}
    assert payload["objective"]["ce_weight"].item() != 0.0 and any(k.startswith("center.") for k in payload["aux"])
    assert all(k.startswith(("network.", "head.")) for k in payload["model"])
    samples = dict(__import__("numpy").load(out / "samples.npz"))
    assert samples["target"].shape == (2, 1, 50, 50) and samples["cameras"].shape[:2] == (2, 6)

    # evaluate re-reads the last checkpoint and reproduces the numbers
    res = CliRunner().invoke(occfeat.cli.main.app, ["evaluate", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    again = FinetuneMetrics.read(out)
    assert again.intersection == m.intersection and again.step == m.step and again.pretraining == m.pretraining

    # TensorBoard: the training scalars, the evaluation's IoU and its BEV figures (finetune's, then evaluate's)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "eval/mini_val/mean_iou", "eval/mini_val/iou/vehicle"} <= set(tags["scalars"])
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("eval/mini_val/mean_iou")] == [(2, round(m.mean_iou, 6))] * 2
    assert set(tags["images"]) == {"eval/mini_val/sample_0", "eval/mini_val/sample_1"}
    png = acc.Images("eval/mini_val/sample_0")[-1]
    assert png.width > 400 and png.height > 150 and png.encoded_image_string[:4] == b"\x89PNG"

    # an existing run dir without --resume, and a bad fraction: one-line errors
    res = CliRunner().invoke(occfeat.cli.main.app, args)
    assert res.exit_code == 2 and "already exists" in res.output
    res = CliRunner().invoke(occfeat.cli.main.app, [*args[:10], "1.5", *args[11:]])
    assert res.exit_code == 2 and "--fraction must be in" in res.output

    table = write_report([out], tmp_path / "report", plots=False)["table"]
    assert table.index[0][3] == "None§*" and table.iloc[0, 0] == f"{100 * m.mean_iou:.1f}"
    assert list(table.columns) == ["Vehicles 50% (3 labelled)"]


def test_segmentation_items_carry_targets_in_the_reference_frame(synth_root, tmp_path):
    import numpy as np

    from occfeat.data.index import SampleIndex
    from occfeat.train.finetune import segmentation_set

    index = SampleIndex(synth_root, "v1.0-mini", "mini_train")
    cfg = resolve_config(TINY, "vehicle", 1.0)
    ds = segmentation_set(index, index.tokens[:2], cfg, tmp_path, train=False, progress=False)
    ref_T_ego = np.eye(4)
    ref_T_ego[:2, :2] = [[0.0, 1.0], [-1.0, 0.0]]  # R turned 90 degrees left of the ego frame
    plain, turned = ds.targets(ds.rigs[0]), ds.targets(ds.rigs[0], ref_T_ego)
    assert plain["target"].shape == (1, 50, 50) and plain["center"].shape == (1, 50, 50) and plain["offset"].shape == (2, 50, 50)
    # A 90-degree turn about the grid centre: R[a, b] = ego[49 - b, a] (x_R = y_ego, y_R = -x_ego).
    np.testing.assert_array_equal(turned["center"][0].numpy(), np.rot90(plain["center"][0].numpy(), k=-1))
    assert plain["target"].any()
