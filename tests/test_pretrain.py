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
from occfeat.train.data import AugmentConfig, CameraRig, load_camera, load_cameras, sample_augmentation, sample_rng

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


@pytest.mark.parametrize("resized,crop", [((200, 112), (0, 0)), ((240, 134), (30, 5)), ((170, 95), (-10, -12))])
def test_intrinsics_follow_the_pixels(tmp_path, resized, crop):
    path = tmp_path / "cam.jpg"
    _dot_image(path)
    K = np.array([[300.0, 0, 160], [0, 300.0, 90], [0, 0, 1]])
    # A camera-frame point that projects onto the dot's centre (200, 60) in the stored image.
    z = 10.0
    p = np.array([(200 - 160) * z / 300, (60 - 90) * z / 300, z])
    img, K_in = load_camera(str(path), K, (112, 200), resized, crop)
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
        load_cameras(rig, (112, 200), AugmentConfig(), sample_rng(0, 0, 0))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OccfeatError, match=r"bad\.jpg cannot be decoded"):
        load_camera(str(tmp_path / "bad.jpg"), np.eye(3), (112, 200), (200, 112), (0, 0))


def test_jpeg_draft_decoding_keeps_the_geometry(tmp_path):
    # 1280x720 → 200x112: PIL decodes at 1/4 scale in the DCT domain first; the intrinsics must not notice.
    path = tmp_path / "big.jpg"
    _dot_image(path, wh=(1280, 720), dot=(800, 240), r=16)
    K = np.array([[1200.0, 0, 640], [0, 1200.0, 360], [0, 0, 1]])
    z = 10.0
    p = np.array([(800 - 640) * z / 1200, (240 - 360) * z / 1200, z])
    img, K_in = load_camera(str(path), K, (112, 200), (200, 112), (0, 0))
    uv, _ = project_points(K_in, p[None])
    assert np.abs(uv[0] - _bright_centroid(img)).max() < 0.75
