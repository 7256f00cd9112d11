"""OccFeat pretraining: camera loading + augmentation, every network x every recipe on the synthetic
world, cache checks, provenance and the checkpoint format finetune loads."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from occfeat.errors import OccfeatError
from occfeat.geometry import project_points
from occfeat.models import registered_networks
from occfeat.train.data import AugmentConfig, CameraRig, draw_augmentation, load_camera, load_cameras, sample_augmentation, sample_rng

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes" / "pretrain").glob("*.yaml"))


# ---- camera loading and augmentation ----
def _dot_image(path: Path, wh=(320, 180), dot=(200, 60), r=4) -> None:
    a = np.zeros((wh[1], wh[0], 3), np.uint8)
    a[dot[1] - r : dot[1] + r, dot[0] - r : dot[0] + r] = 255  # pixel centres dot-r+0.5 .. dot+r-0.5: centre at `dot`
    Image.fromarray(a).save(path, quality=98)


def _bright_centroid(img: torch.Tensor) -> np.ndarray:
    w = img.mean(0).numpy()
    w = np.where(w > 0.5, w, 0)
    v, u = np.nonzero(w)
    return np.array([(u + 0.5).mean(), (v + 0.5).mean()])  # continuous coords, pixel centres at i + 0.5


@pytest.mark.parametrize("mode", ["nearest", "draft-bilinear"])
@pytest.mark.parametrize("resized,crop", [((200, 112), (0, 0)), ((240, 134), (30, 5)), ((170, 95), (-10, -12))])
def test_intrinsics_follow_the_pixels(tmp_path, resized, crop, mode):
    path = tmp_path / "cam.jpg"
    _dot_image(path)
    K = np.array([[300.0, 0, 160], [0, 300.0, 90], [0, 0, 1]])
    # A camera-frame point that projects onto the dot's centre (200, 60) in the stored image.
    z = 10.0
    p = np.array([(200 - 160) * z / 300, (60 - 90) * z / 300, z])
    img, K_in = load_camera(str(path), K, (112, 200), resized, crop, mode)
    assert img.shape == (3, 112, 200) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    uv, _ = project_points(K_in, p[None])
    assert np.abs(uv[0] - _bright_centroid(img)).max() < 0.75
    # Hand-computed: u' = u * sx - left.
    assert uv[0, 0] == pytest.approx(200 * resized[0] / 320 - crop[0])


def test_augmentation_is_simple_bev_and_deterministic():
    aug = AugmentConfig()
    draws = [sample_augmentation((224, 400), aug, sample_rng(0, 3, i)) for i in range(200)]
    for (w, h), (left, top) in draws:
        assert 0.8 * 400 - 1 <= w <= 1.2 * 400 and 0.8 * 224 - 1 <= h <= 1.2 * 224
        jitter = int(224 * 0.2)
        assert abs(left - (w - 400) // 2) <= jitter and abs(top - (h - 224) // 2) <= jitter
    assert len({d[0] for d in draws}) > 100  # actually random
    assert draws[7] == sample_augmentation((224, 400), aug, sample_rng(0, 3, 7))
    assert draws[7] != sample_augmentation((224, 400), aug, sample_rng(0, 4, 7))  # a new epoch, a new draw
    assert sample_augmentation((224, 400), AugmentConfig(enabled=False), sample_rng(0, 0, 0)) == ((400, 224), (0, 0))


def test_missing_or_corrupt_jpeg_is_a_one_line_error(tmp_path):
    K = np.eye(3)[None].repeat(1, 0)
    rig = CameraRig("tok", (str(tmp_path / "nope.jpg"),), K, np.eye(4)[None], np.array([[180, 320]]))
    with pytest.raises(OccfeatError, match=r"camera image .*nope\.jpg is missing"):
        load_cameras(rig, (112, 200), draw_augmentation(rig, (112, 200), AugmentConfig(ref_cameras=()), sample_rng(0, 0, 0)))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OccfeatError, match=r"bad\.jpg cannot be decoded"):
        load_camera(str(tmp_path / "bad.jpg"), np.eye(3), (112, 200), (200, 112), (0, 0))


@pytest.mark.parametrize("mode", ["nearest", "draft-bilinear"])
def test_jpeg_decoding_keeps_the_geometry(tmp_path, mode):
    # 1280x720 → 200x112: draft decodes at 1/4 scale in the DCT domain first, nearest samples the full
    # image; the intrinsics must not notice either.
    path = tmp_path / "big.jpg"
    _dot_image(path, wh=(1280, 720), dot=(800, 240), r=16)
    K = np.array([[1200.0, 0, 640], [0, 1200.0, 360], [0, 0, 1]])
    z = 10.0
    p = np.array([(800 - 640) * z / 1200, (240 - 360) * z / 1200, z])
    img, K_in = load_camera(str(path), K, (112, 200), (200, 112), (0, 0), mode)
    uv, _ = project_points(K_in, p[None])
    assert np.abs(uv[0] - _bright_centroid(img)).max() < 0.75


# ---- the pretraining task on the synthetic world (every recipe, network and objective: tests/test_smoke.py) ----
from tests.fixtures.pretrain import make_task  # noqa: E402


def test_cache_mismatches_are_one_line_errors(test_grid, synth_root, occupancy_h5, features_h5):
    recipe = RECIPES[0]
    other = {"bounds": [[-20.0, 20.0], [-25.0, 25.0], [-3.5, 6.5]], "shape": [40, 50, 8]}
    with pytest.raises(OccfeatError, match="was built on grid") as e:
        make_task(recipe, test_grid, synth_root, occupancy_h5, features_h5, grid=other)
    assert "\n" not in str(e.value)
    with pytest.raises(OccfeatError, match="holds 384-dim teacher features but the recipe's predictor outputs objectives.features.feature_dim=768"):
        make_task(recipe, test_grid, synth_root, occupancy_h5, features_h5, objectives={"features": {"feature_dim": 768}})
    for name in ("perspective", "second_unsplat", "balanced"):  # each names its own key
        with pytest.raises(OccfeatError, match=f"objectives.{name}.feature_dim=768"):
            make_task(recipe, test_grid, synth_root, occupancy_h5, features_h5, objectives={name: {"feature_dim": 768}})
    with pytest.raises(OccfeatError, match=r"objectives.perspective.depth_bins=\[58.0, 2.0, 0.5\] must be"):
        make_task(recipe, test_grid, synth_root, occupancy_h5, features_h5, objectives={"perspective": {"depth_bins": [58.0, 2.0, 0.5]}})


def _cli(*args):
    from typer.testing import CliRunner

    from occfeat.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_pretrains_resumes_exactly_and_writes_what_finetune_loads(tmp_path, test_grid, synth_root, occupancy_h5, features_h5):
    from occfeat.models import build_network
    from occfeat.train.pretrain import read_pretrain_run
    from tests.fixtures.synth import TINY_VERSION

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "synthetic-tiny.yaml"
    common = ["pretrain", "--recipe", recipe, "--dataroot", synth_root, "--version", TINY_VERSION, "--occupancy", occupancy_h5,
              "--features", features_h5, "--split", "mini_train", "--epochs", "2", "input_size=[32,56]",
              "network.bev_channels=8", "network.image_channels=8", "network.fuse_channels=16", "train.num_workers=0"]  # fmt: skip
    full = _cli(*common, "--out", tmp_path / "full")
    assert full.exit_code == 0, full.output
    part = _cli(*common, "--out", tmp_path / "part", "train.max_steps=4")  # 6 samples / batch 2: stop mid-epoch 2
    assert part.exit_code == 0, part.output
    again = _cli(*common, "--out", tmp_path / "part")
    assert again.exit_code == 2 and again.output.count("\n") == 1 and "already exists; pass --resume" in again.output
    res = _cli(*common, "--out", tmp_path / "part", "--resume")
    assert res.exit_code == 0, res.output
    read = lambda d: [json.loads(r) for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    key = lambda r: (r["step"], r["loss"], r["loss_occupancy"], r["loss_features"])  # noqa: E731
    assert [key(r) for r in read("part")] == [key(r) for r in read("full")] and len(read("full")) == 6

    prov = json.loads((tmp_path / "full" / "provenance.json").read_text())
    assert prov["random_init"] and prov["backbone"]["source"] == "random-init" and prov["teacher"]["pretrained"] is False
    run = read_pretrain_run(tmp_path / "full")
    assert run.config.objectives["features"].feature_dim == 384 and run.config.train.epochs == 2 and run.label == "Occ+Feat"
    assert run.stamp()["objectives"] == {"occupancy": {"weight": 1.0}, "features": {"weight": 0.01, "feature_dim": 384}}
    net = build_network(run.config.network, run.config.grid)
    net.load_state_dict(run.network_state)  # strict: the checkpoint is exactly the network, heads left out
    bad = _cli(*common, "--out", tmp_path / "full", "--resume", "objectives.features.weight=0.5")
    assert bad.exit_code == 2 and "objectives.features.weight (0.01 → 0.5)" in bad.output


def test_occupancy_only_runs_are_not_stamped_by_the_teacher(test_grid, synth_root, occupancy_h5, features_h5):
    """The features fixture's teacher is random-init; an occ-only run never reads it, a feat run does."""
    occ = make_task(RECIPES[0].parent / "occ-only.yaml", test_grid, synth_root, occupancy_h5, features_h5)
    assert occ.provenance["teacher"] == {"used": False}
    # ... so it needs no features cache at all, and trains without one
    occ = make_task(RECIPES[0].parent / "occ-only.yaml", test_grid, synth_root, occupancy_h5, None)
    assert "features" not in occ.train_set[0] and occ.provenance["inputs"]["features"] is None
    batch = occ.collate([occ.train_set[0]])
    loss, _ = occ.loss(occ.model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(OccfeatError, match="needs --features"):
        make_task(RECIPES[0].parent / "feat-only.yaml", test_grid, synth_root, occupancy_h5, None)
    feat = make_task(RECIPES[0].parent / "feat-only.yaml", test_grid, synth_root, occupancy_h5, features_h5)
    assert feat.provenance["teacher"]["pretrained"] is False and feat.provenance["random_init"]


def test_pretrain_command_under_torchrun_on_two_gloo_processes(tmp_path, synth_root, occupancy_h5, features_h5):
    """The real task under DDP (the toy-task test in test_train_loop cannot see unused parameters of a
    real network, which DDP refuses): `torchrun -m occfeat pretrain`, as README shows, 2 CPU processes."""
    import os
    import subprocess
    import sys

    from tests.fixtures.synth import TINY_VERSION

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "occfeat", "pretrain",
           "--recipe", str(repo / "recipes" / "pretrain" / "synthetic-tiny.yaml"), "--dataroot", str(synth_root),
           "--version", TINY_VERSION, "--occupancy", str(occupancy_h5), "--features", str(features_h5), "--split", "all",
           "--out", str(tmp_path / "ddp"), "input_size=[32,56]", "network.bev_channels=8", "network.image_channels=8",
           "network.fuse_channels=16", "train.num_workers=0", "train.max_steps=2"]  # fmt: skip
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(r) for r in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)  # rank 0 alone wrote
    assert (tmp_path / "ddp" / "checkpoints" / "last.pt").is_file()
