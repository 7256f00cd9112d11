"""The LiDAR teacher of cross-modal distillation: its network, its input in the sample's reference frame,
and a finetune run of it on exactly the labelled tokens a camera run of the same (fraction, seed) sees."""

import numpy as np
import pytest
import torch
from torch import nn

from occfeat.errors import OccfeatError
from occfeat.models import build_network, camera_networks, registered_networks
from tests.test_models import tiny_cfg

LIDAR = "recipes/finetune/synthetic-lidar.yaml"
CAMERA = "recipes/finetune/synthetic-tiny.yaml"


def test_lidar_network_shape_gradients_flips_and_errors(test_grid):
    assert "lidar" in registered_networks() and "lidar" not in camera_networks()
    net = build_network(tiny_cfg(arch="lidar"), test_grid)
    X, Y, Z = test_grid.shape
    occ = torch.rand(2, X, Y, Z) > 0.9
    bev = net.forward_bev({"lidar": occ})
    assert bev.shape == (2, 16, X, Y) and torch.isfinite(bev).all()
    (bev**2).mean().backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]
    # with a pointwise compressor and decoder, the BEV flips are undone before the heads
    net.compress, net.decoder = nn.Conv2d(Z, 16, 1), nn.Conv2d(16, 16, 1)
    flips = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        assert torch.allclose(net.forward_bev({"lidar": occ, "flip_bev": flips}), net.forward_bev({"lidar": occ}), atol=1e-6)
    with pytest.raises(OccfeatError, match="lacks key 'lidar'"):
        net.forward_bev({"images": torch.zeros(1, 1, 3, 8, 8)})
    with pytest.raises(OccfeatError, match=r"must be \(B, X, Y, Z\)"):
        net.forward_bev({"lidar": occ[:, :10]})


def test_lidar_input_is_the_sweep_voxelized_in_the_reference_frame(synth_root, tmp_path):
    from occfeat.data.index import SampleIndex
    from occfeat.data.occupancy import voxelize_points
    from occfeat.data.voxelize import sample_points_ego
    from occfeat.train.finetune import resolve_config, segmentation_set

    index = SampleIndex(synth_root, "v1.0-mini", "mini_train")
    cfg = resolve_config(LIDAR, "vehicle", 1.0)
    ds = segmentation_set(index, index.tokens[:2], cfg, tmp_path, train=False, progress=False)
    item = ds[0]
    assert item["lidar"].shape == cfg.grid.shape and item["lidar"].dtype == torch.bool
    expected = voxelize_points(sample_points_ego(index.record(index.tokens[0])), cfg.grid)
    assert np.array_equal(item["lidar"].numpy(), expected) and expected.any()
    # R turned 90 degrees left of the ego frame: the input turns with the targets
    ref_T_ego = np.eye(4)
    ref_T_ego[:2, :2] = [[0.0, 1.0], [-1.0, 0.0]]
    plain, turned = ds.targets(ds.rigs[0]), ds.targets(ds.rigs[0], ref_T_ego)
    np.testing.assert_array_equal(turned["lidar"].numpy(), np.rot90(plain["lidar"].numpy(), k=-1, axes=(0, 1)))
    # the teacher sees what it must segment, where the targets are: returns above the ground bins (z > 0.5 m)
    # hit vehicle cells several times as often as other cells, and less often once the grid is mirrored
    above_ground = plain["lidar"][:, :, 4:].any(dim=-1)
    vehicle = plain["target"][0] & plain["valid"]
    hit = above_ground[vehicle].float().mean()  # 0.31 here: one sweep sees only the near side of a car
    assert vehicle.any() and hit > 3 * above_ground[~plain["target"][0]].float().mean()
    assert hit > above_ground.flip(0)[vehicle].float().mean()
    # the camera recipe's dataset carries no LiDAR
    assert "lidar" not in segmentation_set(index, index.tokens[:1], resolve_config(CAMERA, "vehicle", 1.0), tmp_path,
                                           train=False, progress=False)[0]


def test_lidar_teacher_finetunes_on_exactly_the_camera_runs_labelled_tokens(synth_root, tmp_path):
    from typer.testing import CliRunner

    import occfeat.cli.main
    from occfeat.report import write_report
    from occfeat.train.records import FinetuneMetrics

    runs = {}
    for name, recipe in (("lidar", LIDAR), ("camera", CAMERA)):
        out = tmp_path / "runs" / name
        args = ["finetune", "--recipe", recipe, "--dataroot", str(synth_root), "--version", "v1.0-mini", "--task", "vehicle",
                "--fraction", "0.5", "--seed", "3", "--out", str(out), "--split", "mini_train", "--val-split", "mini_val",
                "--no-progress", "train.max_steps=2", "train.batch_size=1", "train.num_workers=0", "train.device=cpu"]
        res = CliRunner().invoke(occfeat.cli.main.app, args)
        assert res.exit_code == 0, res.output
        runs[name] = out
    tokens = {name: (out / "labelled_tokens.txt").read_text().split() for name, out in runs.items()}
    assert tokens["lidar"] == tokens["camera"] and len(tokens["lidar"]) == 3
    m = FinetuneMetrics.read(runs["lidar"])
    assert m.arch == "lidar" and m.backbone == "none" and m.labelled_samples == 3 and 0 <= m.mean_iou <= 1
    assert m.provenance.synthetic_data and not m.provenance.backbone_random_init  # no image backbone, no * mark
    summary = write_report([runs["lidar"], runs["camera"]], tmp_path / "report", plots=False)["summary"]
    assert sorted(summary["input"]) == ["112×200", "LiDAR"]


def test_pretraining_refuses_the_lidar_network(test_grid, synth_root, occupancy_h5, features_h5):
    from tests.fixtures.pretrain import make_task

    with pytest.raises(OccfeatError, match="reads no camera images"):
        make_task(None, test_grid, synth_root, occupancy_h5, features_h5, network={"arch": "lidar"})


def test_a_missing_sweep_is_one_line_even_from_a_loader_worker(synth_root, tmp_path):
    import shutil

    from occfeat.cli.common import worker_message
    from occfeat.data.index import SampleIndex
    from occfeat.data.voxelize import LidarGrid
    from tests.conftest import TEST_GRID

    root = tmp_path / "root"
    shutil.copytree(synth_root, root)
    index = SampleIndex(root, "v1.0-mini", "mini_train")
    rec = index.record(index.tokens[0])
    lidar = LidarGrid([rec], TEST_GRID)
    rec.lidar.path.unlink()
    with pytest.raises(OccfeatError, match="is missing; restore it: the LiDAR network reads") as e:
        lidar(rec.token)
    assert "--skip-bad" not in str(e.value)
    wrapped = f"Caught OccfeatError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File x\noccfeat.errors.OccfeatError: {e.value}"
    assert worker_message(wrapped) == str(e.value) and worker_message("plain") == "plain"
