"""nuScenes-C corruptions (occfeat.data.corruptions): deterministic per frame, shape and dtype kept,
stronger with severity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from occfeat.data.corruptions import CORRUPTIONS, FRAME_LOST_PROB, Corruption, crashed_cameras
from occfeat.data.index import CAMERAS
from occfeat.errors import OccfeatError

IMAGE_CORRUPTIONS = [n for n in CORRUPTIONS if n not in ("camera_crash", "frame_lost")]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A small textured frame: smooth gradients plus detail, so blur, fog and quantisation all change it."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:160]
    base = np.stack([xx / 160, yy / 90, 0.5 + 0.3 * np.sin(xx / 7.0)], axis=2) * 200 + 20
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_and_keeps_shape_and_dtype(name, image):
    for severity in (1, 2, 3):
        c = Corruption(name, severity)
        a, b = c(image, "tok1", "CAM_FRONT"), c(image.copy(), "tok1", "CAM_FRONT")
        assert a.shape == image.shape and a.dtype == np.uint8
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", IMAGE_CORRUPTIONS)
def test_severity_increases_the_change(name, image):
    change = [np.abs(Corruption(name, s)(image, "tok1", "CAM_FRONT").astype(float) - image).mean() for s in (1, 2, 3)]
    assert 0 < change[0] < change[1] < change[2], change


@pytest.mark.parametrize("name", ["low_light", "fog", "snow"])
def test_cameras_and_samples_get_different_noise(name, image):
    c = Corruption(name, 2)
    a = c(image, "tok1", "CAM_FRONT")
    assert a.tobytes() != c(image, "tok1", "CAM_BACK").tobytes()
    assert a.tobytes() != c(image, "tok2", "CAM_FRONT").tobytes()


def test_camera_crash_blacks_out_a_fixed_growing_subset(image):
    shares = []
    for s in (1, 2, 3):
        c = Corruption("camera_crash", s)
        black = {cam for cam in CAMERAS if not c(image, "tok1", cam).any()}
        assert black == crashed_cameras(s - 1)
        assert black == {cam for cam in CAMERAS if not c(image, "other", cam).any()}  # the same for every frame
        assert all(np.array_equal(c(image, "tok1", cam), image) for cam in set(CAMERAS) - black)
        shares.append(len(black))
    assert 0 < shares[0] < shares[1] < shares[2] < len(CAMERAS)
    assert crashed_cameras(0) < crashed_cameras(1) < crashed_cameras(2)


def test_frame_lost_drops_frames_at_a_rate_that_grows_with_severity():
    tiny = np.full((2, 2, 3), 100, np.uint8)
    frames = [(f"tok{i}", cam) for i in range(60) for cam in CAMERAS]
    lost = [{f for f in frames if not Corruption("frame_lost", s)(tiny, *f).any()} for s in (1, 2, 3)]
    rates = [len(x) / len(frames) for x in lost]
    assert all(abs(r - p) < 0.08 for r, p in zip(rates, FRAME_LOST_PROB)), rates
    assert lost[0] < lost[1] < lost[2]  # a frame lost at one severity stays lost at harder ones


def test_bad_names_and_severities_are_one_line_errors():
    with pytest.raises(OccfeatError, match="unknown corruption 'rain'"):
        Corruption("rain", 1)
    with pytest.raises(OccfeatError, match="severity 4"):
        Corruption("fog", 4)


def test_evaluate_under_a_corruption_and_from_an_image_root(synth_root, tmp_path):
    import shutil

    from typer.testing import CliRunner

    import occfeat.cli.main
    from occfeat.train.records import FinetuneMetrics

    out = tmp_path / "run"
    args = ["finetune", "--recipe", "recipes/finetune/synthetic-tiny.yaml", "--dataroot", str(synth_root), "--version", "v1.0-mini",
            "--task", "vehicle", "--fraction", "0.2", "--out", str(out), "--split", "mini_train", "--val-split", "mini_val",
            "--no-progress", "train.max_steps=1", "train.batch_size=1", "train.num_workers=0", "train.device=cpu", "n_vis_samples=1"]
    res = CliRunner().invoke(occfeat.cli.main.app, args)
    assert res.exit_code == 0, res.output
    clean = (out / "metrics.json").read_bytes()
    samples = (out / "samples.npz").read_bytes()

    res = CliRunner().invoke(occfeat.cli.main.app, ["evaluate", str(out), "--no-progress", "--corruption", "fog", "--severity", "3"])
    assert res.exit_code == 0, res.output
    m = FinetuneMetrics.read(out / "metrics-mini_val-fog-s3.json")
    assert (m.corruption, m.severity, m.split) == ("fog", 3, "mini_val") and m.union["vehicle"] > 0
    assert (out / "metrics.json").read_bytes() == clean and (out / "samples.npz").read_bytes() == samples
    assert FinetuneMetrics.read(out).corruption == "" and FinetuneMetrics.read(out).severity == 0

    res = CliRunner().invoke(occfeat.cli.main.app, ["evaluate", str(out), "--no-progress", "--severity", "2"])
    assert res.exit_code == 2 and "--severity needs --corruption" in res.output
    res = CliRunner().invoke(occfeat.cli.main.app, ["evaluate", str(out), "--no-progress", "--corruption", "rain", "--severity", "1"])
    assert res.exit_code == 2 and "unknown corruption 'rain'; use one of brightness, low_light" in res.output

    # a copy of the images elsewhere, in nuScenes-C's layout (Fog/hard/CAM_*/...), reads the same pixels:
    # the same counts as the dataroot's, in a file of its own
    images = tmp_path / "Fog" / "hard"
    shutil.copytree(synth_root / "samples", images)
    res = CliRunner().invoke(occfeat.cli.main.app, ["evaluate", str(out), "--no-progress", "--image-root", str(images)])
    assert res.exit_code == 0, res.output
    again = FinetuneMetrics.read(out / "metrics-mini_val-Fog-hard.json")
    reference = FinetuneMetrics.from_dict(__import__("json").loads(clean))
    assert again.image_root == str(images.resolve()) and again.corruption == ""
    assert again.intersection == reference.intersection and again.union == reference.union
    assert (out / "metrics.json").read_bytes() == clean

    # the report's Fig. 4 chart: the on-the-fly fog s3 and the downloaded Fog/hard are both fog at severity 3
    rep = tmp_path / "report"
    res = CliRunner().invoke(occfeat.cli.main.app, ["report", str(out), "--out", str(rep)])
    assert res.exit_code == 0, res.output
    assert "IoU under nuScenes-C corruptions" in res.output
    summary = pd.read_csv(rep / "robustness.csv")
    fog = summary[summary.corruption == "fog"]
    assert len(fog) == 1 and str(fog.severities.iloc[0]) == "3"
    assert fog["mean"].iloc[0] == pytest.approx((m.mean_iou + again.mean_iou) / 2)
    assert summary[summary.corruption == "clean"]["mean"].iloc[0] == pytest.approx(reference.mean_iou)
    assert (rep / "robustness.png").is_file() and "(s3)" in (rep / "robustness.md").read_text()

    shutil.rmtree(images / "CAM_BACK")
    res = CliRunner().invoke(occfeat.cli.main.app, ["evaluate", str(out), "--no-progress", "--image-root", str(images)])
    assert res.exit_code == 2 and "missing under --image-root" in res.output and len(res.output.strip().splitlines()) == 1


def test_images_under_keeps_the_dataroot_layout_or_takes_nuscenes_c_s(tmp_path):
    from occfeat.train.data import CameraRig
    from occfeat.train.finetune import images_under

    root = tmp_path / "dataroot"
    rig = CameraRig("tok", (str(root / "samples" / "CAM_FRONT" / "a.jpg"),), np.eye(3)[None], np.eye(4)[None], np.array([[9, 16]]))
    for layout, rel in [("copy", ("samples", "CAM_FRONT", "a.jpg")), ("Fog/easy", ("CAM_FRONT", "a.jpg"))]:
        image = tmp_path.joinpath(layout, *rel)
        image.parent.mkdir(parents=True)
        image.write_bytes(b"x")
        assert images_under([rig], root, tmp_path / layout)[0].paths == (str(image),)
    with pytest.raises(OccfeatError, match=r"1 camera image\(s\) missing under --image-root"):
        images_under([rig], root, tmp_path / "elsewhere")
