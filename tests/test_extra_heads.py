"""Heads trained beside the BEV loss while finetuning (BEVFormer v2's perspective head and its control):
the dataset's per-camera targets, the losses, and that the evaluated network never holds the head."""

import json

import numpy as np
import pytest
import torch

from occfeat.errors import OccfeatError
from occfeat.train.finetune import resolve_config
from tests.test_distill_finetune import CAMERA, finetune


@pytest.mark.parametrize("task", ["vehicle", "map"])
def test_the_head_trains_through_the_cli_and_is_absent_from_the_evaluated_network(synth_root, tmp_path, task):
    from occfeat.report import write_report
    from occfeat.train.finetune import run_evaluate
    from occfeat.train.records import FinetuneMetrics

    plain = tmp_path / "plain"
    assert finetune(synth_root, plain, CAMERA, 0.5, task=task).exit_code == 0
    runs = {"plain": plain}
    for kind in ("perspective", "second-bev"):
        out = tmp_path / kind
        res = finetune(synth_root, out, CAMERA, 0.5, f"extra_head.kind={kind}", task=task)
        assert res.exit_code == 0, res.output
        runs[kind] = out
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert row["loss_extra"] > 0 and row["loss"] > row["loss_extra"]
        if kind == "perspective" and task == "vehicle":
            assert {"extra_focal", "extra_centerness", "extra_box", "extra_depth"} <= set(row)
        payload = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["task"]
        base = torch.load(plain / "checkpoints" / "last.pt", weights_only=False)["task"]
        assert set(payload["model"]) == set(base["model"])  # the evaluated network: same parameters as without the head
        assert payload["extra"]  # the head's own weights, kept beside the model for --resume only
        assert FinetuneMetrics.read(out).extra_head == {"kind": kind, "label": {"perspective": "perspective head",
                                                                                "second-bev": "second BEV head"}[kind], "weight": 1.0}
        res = finetune(synth_root, out, CAMERA, 0.5, "--resume", f"extra_head.kind={kind}", "train.max_steps=3", task=task)
        assert res.exit_code == 0, res.output  # resumes with the head's state
        # `occfeat evaluate` rebuilds the segmentation model alone and loads the checkpoint strictly
        assert run_evaluate(out, progress=False).mean_iou == pytest.approx(FinetuneMetrics.read(out).mean_iou)
    labels = set(write_report(list(runs.values()), tmp_path / "report", plots=False)["summary"]["pretraining"])
    assert labels == {"None", "None (+ perspective head)", "None (+ second BEV head)"}


def test_vehicle_targets_follow_the_boxes_the_lidar_saw_and_the_augmented_intrinsics(synth_root, tmp_path):
    from occfeat.data.index import SampleIndex
    from occfeat.train.finetune import segmentation_set

    cfg = resolve_config(CAMERA, "vehicle", 1.0, ["extra_head.kind=perspective"])
    index = SampleIndex(synth_root, "v1.0-mini", "mini_train")
    ds = segmentation_set(index, index.tokens, cfg, tmp_path / "gt", train=True, progress=False)
    H, W = cfg.input_size
    pts = ds.perspective.boxes.lidar_pts
    assert (pts >= 0).all() and (pts < 3).any() and (pts >= 3).any()  # the synthetic world records num_lidar_pts
    found = False
    for i in range(len(ds)):
        item = ds[i]
        assert item["pv_target"].shape == (6, 1, H // 8, W // 8) and item["pv_ltrb"].shape == (6, 4, H // 8, W // 8)
        on = item["pv_target"][:, 0].bool()
        assert (item["pv_depth"][on] > 0).all() and (item["pv_depth"][~on] == 0).all()
        found |= bool(on.any())
        # the targets move with the (augmented) image: drawn again with the unaugmented intrinsics they differ
        rig = ds.rigs[i]
        K = item["K"].numpy()
        again = ds.perspective(rig.token, rig.cam_T_ego, K, (H, W), 8)
        assert np.array_equal(again["pv_target"], item["pv_target"].numpy())
    assert found
    strict = ds.perspective
    strict.min_lidar_points = 10**9  # no box has that many points: nothing is drawn
    item = ds[0]
    assert not item["pv_target"].any()


def test_perspective_losses_by_hand():
    from occfeat.losses import iou_loss, sigmoid_focal_loss

    logits = torch.tensor([[[[0.0, 0.0]]]])  # (1, 1, 1, 2): p = 0.5 at both pixels
    target = torch.tensor([[[[1.0, 0.0]]]])
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    ln2 = float(np.log(2))
    # positive: α·(1-p)^γ·ln2 = 0.25·0.25·ln2; negative: (1-α)·p^γ·ln2 = 0.75·0.25·ln2; one positive
    assert torch.isclose(sigmoid_focal_loss(logits, target, valid), torch.tensor((0.0625 + 0.1875) * ln2))
    box = torch.tensor([1.0, 1.0, 1.0, 1.0]).view(4, 1, 1)
    half = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(4, 1, 1)  # a quarter of the box: IoU (1 + 1) / (4 + 1 - 1 + 1) = 0.4 (FCOS's +1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert torch.isclose(iou_loss(box, box, mask), torch.tensor(0.0), atol=1e-6)
    assert torch.isclose(iou_loss(half, box, mask), -torch.log(torch.tensor(2.0 / 5.0)))


def test_bad_extra_heads_are_one_line_errors():
    with pytest.raises(OccfeatError, match="is not one of none, perspective, second-bev"):
        resolve_config(CAMERA, "vehicle", 0.1, ["extra_head.kind=mono"])
    with pytest.raises(OccfeatError, match="must be > 0"):
        resolve_config(CAMERA, "vehicle", 0.1, ["extra_head.kind=perspective", "extra_head.weight=0"])
    with pytest.raises(OccfeatError, match="unlabelled frames"):
        resolve_config(CAMERA, "vehicle", 0.1, ["extra_head.kind=perspective", "distill.method=pseudo", "distill.teacher=x",
                                                "distill.unlabelled=true"])
