"""Simple-BEV's augmentations in the dataset: deterministic draws, the reference frame R, and targets
that are EXACTLY what the raw data gives in R (occupancy from the raw LiDAR points, teacher-feature
targets from the raw cached 2D maps)."""

import numpy as np
import pytest
import torch

from occfeat.data.extract import FeatureReader
from occfeat.data.index import CAMERAS, SampleIndex
from occfeat.data.occupancy import OccupancyReader, voxelize_points
from occfeat.data.targets import voxel_feature_targets
from occfeat.data.voxelize import sample_points_ego
from occfeat.geometry import apply_4x4, invert_rigid, make_transform, reference_frame, yaw_matrix
from occfeat.objectives import Sources
from occfeat.objectives.features import TeacherMaps
from occfeat.objectives.occupancy import OccupancyGrid
from occfeat.train.data import SIMPLE_BEV_REF_CAMERAS, AugmentConfig, CameraRig, camera_rig, draw_augmentation, sample_rng
from occfeat.train.pretrain_data import PretrainDataset
from tests.fixtures.synth import TINY_VERSION

# camera axes (x right, y down, z forward) in ego axes (x forward, y left, z up), as ego_T_cam rotations
FWD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _cam_T_ego(yaw: float, centre) -> np.ndarray:
    return invert_rigid(make_transform(yaw_matrix(yaw) @ FWD, np.asarray(centre, float)))


def _rig(cam_T_ego: np.ndarray) -> CameraRig:
    S = len(cam_T_ego)
    return CameraRig("tok", ("x.jpg",) * S, np.eye(3)[None].repeat(S, 0), cam_T_ego, np.array([[900, 1600]] * S))


def test_reference_frame_puts_the_camera_where_cam_front_sits_in_ego():
    front = _cam_T_ego(0.0, (1.7, 0.0, 1.5))
    back = _cam_T_ego(np.pi, (-0.5, 0.1, 1.6))
    cams = np.stack([front, back])
    np.testing.assert_allclose(reference_frame(cams, 0), np.eye(4), atol=1e-12)
    ref_T_ego = reference_frame(cams, 1)
    # 10 m ahead of CAM_FRONT's ground point in R is 10 m behind CAM_BACK's ground point in ego (hand-computed)
    np.testing.assert_allclose(apply_4x4(invert_rigid(ref_T_ego), np.array([[11.7, 0.0, 0.3]])), [[-0.5 - 10.0, 0.1, 0.3]], atol=1e-12)
    # seen from R, CAM_BACK has CAM_FRONT's ground position and heading, its own height
    ref_T_cam = ref_T_ego @ invert_rigid(back)
    np.testing.assert_allclose(ref_T_cam[:3, 3], [1.7, 0.0, 1.6], atol=1e-12)
    np.testing.assert_allclose(ref_T_cam[:3, :3], FWD, atol=1e-12)


def test_draws_are_deterministic_per_seed_epoch_index_and_follow_the_config():
    cams = np.stack([_cam_T_ego(np.deg2rad(a), (np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a)), 1.5)) for a in (0, -55, -110, 180, 110, 55)])
    rig, aug = _rig(cams), AugmentConfig()
    draw = lambda seed, epoch, i: draw_augmentation(rig, (224, 400), aug, sample_rng(seed, epoch, i))  # noqa: E731
    same, again, other = draw(0, 3, 7), draw(0, 3, 7), draw(0, 4, 7)
    for f in ("flip_image", "flip_bev", "ref_T_ego"):
        np.testing.assert_array_equal(getattr(same, f), getattr(again, f))
    assert same.resized_wh == again.resized_wh
    draws = [draw(0, e, 7) for e in range(200)]
    assert any(not np.array_equal(d.ref_T_ego, same.ref_T_ego) for d in draws[:5])  # epochs differ
    # the yaw of R in ego is the drawn camera's yaw
    ego_T_refs = [invert_rigid(d.ref_T_ego) for d in draws]
    yaws = {round(float(np.degrees(np.arctan2(T[1, 0], T[0, 0])))) % 360 for T in ego_T_refs}
    assert yaws == {0, 305, 250, 180, 110}  # CAM_FRONT, FRONT_RIGHT, BACK_RIGHT, BACK, BACK_LEFT ...
    assert 55 not in yaws  # ... and never CAM_FRONT_LEFT, as Simple-BEV's randint(1, 6) over LSS's order
    assert "CAM_FRONT_LEFT" not in SIMPLE_BEV_REF_CAMERAS
    assert 0.4 < np.mean([d.flip_image for d in draws]) < 0.6 and 0.4 < np.mean([d.flip_bev for d in draws]) < 0.6
    off = draw_augmentation(rig, (224, 400), AugmentConfig(enabled=False), sample_rng(0, 0, 0))
    assert not off.flip_image.any() and not off.flip_bev.any() and np.array_equal(off.ref_T_ego, np.eye(4))
    no_ref = draw_augmentation(rig, (224, 400), AugmentConfig(ref_cameras=(), image_flip_prob=0.0), sample_rng(0, 0, 0))
    assert np.array_equal(no_ref.ref_T_ego, np.eye(4)) and not no_ref.flip_image.any()


@pytest.fixture(scope="module")
def back_item(synth_root, occupancy_h5, features_h5, test_grid):
    """A pretraining item whose reference camera is CAM_BACK (R ≠ ego), and its record."""
    index = SampleIndex(synth_root, TINY_VERSION, "all")
    rec = index.record(index.tokens[3])
    aug = AugmentConfig(ref_cameras=("CAM_BACK",))
    sources = Sources(test_grid, OccupancyReader(occupancy_h5, test_grid), FeatureReader(features_h5))
    ds = PretrainDataset([camera_rig(rec)], sources, [OccupancyGrid(), TeacherMaps(), OccupancyGrid()], (32, 56), aug, seed=0)
    assert len(ds.inputs) == 2  # an input two objectives share is computed once
    return ds[0], rec


def test_occupancy_in_the_reference_frame_equals_voxelizing_the_raw_points_moved_there(back_item, test_grid):
    item, rec = back_item
    ref_T_ego = item["ref_T_ego"].numpy()
    assert ref_T_ego.dtype == np.float64 and abs(ref_T_ego[0, 0] + 1) < 0.05  # CAM_BACK: about 180° of yaw
    raw = sample_points_ego(rec)  # read from the dataroot's LiDAR file, ego body dropped, nothing cropped
    expected = voxelize_points(apply_4x4(ref_T_ego, raw.astype(np.float64)), test_grid)
    occ = item["occupancy"].numpy()
    np.testing.assert_array_equal(occ, expected)
    assert occ.sum() > 50 and not np.array_equal(occ, voxelize_points(raw, test_grid))
    # the network sees the cameras from R
    raw_cams = np.stack([c.cam_T_ego for c in rec.cameras])
    np.testing.assert_allclose(item["cam_T_ego"].numpy(), raw_cams @ invert_rigid(ref_T_ego), atol=1e-5)


def test_the_cache_keeps_every_point_any_reference_camera_needs(synth_root, occupancy_h5, test_grid):
    index = SampleIndex(synth_root, TINY_VERSION, "all")
    reader = OccupancyReader(occupancy_h5, test_grid)
    rec = index.record(index.tokens[5])
    raw, cams = sample_points_ego(rec), np.stack([c.cam_T_ego for c in rec.cameras])
    assert len(reader.points(rec.token)) < len(raw)  # the crop did drop far points
    for s in range(len(CAMERAS)):
        ref_T_ego = reference_frame(cams, s)
        np.testing.assert_array_equal(reader.get(rec.token, ref_T_ego), voxelize_points(apply_4x4(ref_T_ego, raw.astype(np.float64)), test_grid))


def _bilinear_border(fmap: np.ndarray, u: float, v: float, W: int, H: int) -> np.ndarray:
    """Teacher map (Hp, Wp, C) at stored pixel (u, v): cell j's centre at stored pixel (j + 0.5) W / Wp,
    bilinear between cell centres, the edge cell's value beyond the outermost centres."""
    Hp, Wp, _ = fmap.shape
    x = np.clip(u * Wp / W - 0.5, 0, Wp - 1)
    y = np.clip(v * Hp / H - 0.5, 0, Hp - 1)
    x0, y0 = min(int(x), Wp - 2), min(int(y), Hp - 2)
    ax, ay = x - x0, y - y0
    top = (1 - ax) * fmap[y0, x0] + ax * fmap[y0, x0 + 1]
    bottom = (1 - ax) * fmap[y0 + 1, x0] + ax * fmap[y0 + 1, x0 + 1]
    return (1 - ay) * top + ay * bottom


def test_teacher_targets_in_the_reference_frame_equal_sampling_the_raw_maps_by_hand(back_item, test_grid):
    item, rec = back_item
    batch = {k: v[None] for k, v in item.items() if isinstance(v, torch.Tensor)}
    idx, target, valid = voxel_feature_targets(
        batch["occupancy"], batch["features"].float(), batch["K_orig"], batch["cam_T_ego"], batch["image_hw_orig"], test_grid
    )
    ego_T_ref = invert_rigid(item["ref_T_ego"].numpy())
    feats = item["features"].numpy().astype(np.float64)
    centres_ref = np.stack([test_grid.axis_centers(a)[idx[:, a + 1].numpy()] for a in range(3)], -1)
    centres_ego = apply_4x4(ego_T_ref, centres_ref)  # moved to ego by hand, then the RAW cameras
    checked = 0
    for m in range(0, len(idx), max(1, len(idx) // 60)):
        acc, n = 0.0, 0
        for cam, fmap in zip(rec.cameras, feats):
            p = apply_4x4(cam.cam_T_ego, centres_ego[m][None])[0]
            if p[2] <= 1e-3:
                continue
            u, v = (cam.K @ p)[:2] / p[2]
            if 0 <= u < cam.width and 0 <= v < cam.height:
                acc, n = acc + _bilinear_border(fmap, u, v, cam.width, cam.height), n + 1
        assert bool(valid[m]) == (n > 0)
        if n:
            np.testing.assert_allclose(target[m].numpy(), acc / n, rtol=1e-3, atol=1e-3)
            checked += 1
    assert checked > 20
