"""Voxel feature targets (paper §3.3) against hand-computed projections and a plain numpy reference."""

import numpy as np
import pytest
import torch

from occfeat.data.targets import occupied_voxel_centers, voxel_feature_targets
from occfeat.geometry import pixels_to_grid_sample

W, H = 160, 90  # stored image size
HP, WP = 4, 7  # teacher feature map


def cam_T_ego_looking(yaw_deg: float, position=(1.5, 0.0, 1.5)) -> np.ndarray:
    """A camera at ``position`` (ego frame) looking horizontally along yaw: cam z forward, x right, y down."""
    y = np.deg2rad(yaw_deg)
    fwd, right, down = np.array([np.cos(y), np.sin(y), 0.0]), np.array([np.sin(y), -np.cos(y), 0.0]), np.array([0, 0, -1.0])
    ego_T_cam = np.eye(4)
    ego_T_cam[:3, :3] = np.stack([right, down, fwd], axis=1)
    ego_T_cam[:3, 3] = position
    return np.linalg.inv(ego_T_cam)


def intrinsics(fov_deg: float = 90.0) -> np.ndarray:
    f = (W / 2) / np.tan(np.deg2rad(fov_deg) / 2)
    return np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])


def coordinate_maps(S: int) -> np.ndarray:
    """(S, HP, WP, 3): channel 0/1 = the patch centre's (u, v) in STORED pixels, channel 2 = camera index."""
    j, i = np.meshgrid(np.arange(WP), np.arange(HP))
    u, v = (j + 0.5) * W / WP, (i + 0.5) * H / HP
    return np.stack([np.stack([u, v, np.full_like(u, s)], -1) for s in range(S)]).astype(np.float32)


def project_np(K, cam_T_ego, p):
    """Analytic pinhole projection: (u, v, depth) of ego point p."""
    pc = cam_T_ego[:3, :3] @ p + cam_T_ego[:3, 3]
    return K[0, 0] * pc[0] / pc[2] + K[0, 2], K[1, 1] * pc[1] / pc[2] + K[1, 2], pc[2]


def bilinear_border_np(fmap, u, v):
    """Reference bilinear sample of (HP, WP, C) at stored pixel (u, v): cell centres at (j+0.5)*W/WP,
    coordinates clamped to the outermost centres (grid_sample border padding), written out by hand."""
    x = np.clip(u * WP / W - 0.5, 0, WP - 1)
    y = np.clip(v * HP / H - 0.5, 0, HP - 1)
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, WP - 1), min(y0 + 1, HP - 1)
    ax, ay = x - x0, y - y0
    return (
        fmap[y0, x0] * (1 - ax) * (1 - ay) + fmap[y0, x1] * ax * (1 - ay) + fmap[y1, x0] * (1 - ax) * ay + fmap[y1, x1] * ax * ay
    )


def reference_targets(occ, feats, Ks, Ts, grid):
    """Slow numpy §3.3: loop over occupied voxels and cameras."""
    centres = grid.voxel_centers()
    out, valid = [], []
    for b, x, y, z in np.argwhere(occ):
        acc, n = 0.0, 0
        for s in range(feats.shape[1]):
            u, v, d = project_np(Ks[b, s], Ts[b, s], centres[x, y, z])
            if d > 1e-3 and 0 <= u < W and 0 <= v < H:
                acc, n = acc + bilinear_border_np(feats[b, s], u, v), n + 1
        out.append(acc / n if n else np.zeros(feats.shape[-1]))
        valid.append(n > 0)
    return np.array(out, dtype=np.float64), np.array(valid)


def run(occ, feats, Ks, Ts, grid, image_hw=(H, W)):
    t = lambda a: torch.as_tensor(np.asarray(a))  # noqa: E731
    return [r.numpy() for r in voxel_feature_targets(t(occ), t(feats), t(Ks), t(Ts), image_hw, grid)]


def test_pixels_to_grid_maps_image_edges_to_minus_one_and_one():
    uv = torch.tensor([[0.0, 0.0], [W, H], [W / 2, H / 2], [W / (2 * WP), H / (2 * HP)]])
    g = pixels_to_grid_sample(uv, torch.tensor([W, H], dtype=torch.float32))
    # the image edges are grid_sample's -1/+1; the first patch centre is half a cell in: -1 + 1/WP
    np.testing.assert_allclose(g.numpy(), [[-1, -1], [1, 1], [0, 0], [-1 + 1 / WP, -1 + 1 / HP]], atol=1e-6)


def test_voxel_centers_come_from_the_grid(test_grid):
    idx = torch.tensor([[0, 0, 0, 0], [1, 49, 10, 7]])
    ref = test_grid.voxel_centers()
    np.testing.assert_allclose(occupied_voxel_centers(idx, test_grid).numpy(), [ref[0, 0, 0], ref[49, 10, 7]], atol=1e-5)


def test_coordinate_maps_give_the_analytic_projection(test_grid):
    """One forward camera; feature maps encode pixel coordinates, so the sampled target IS the projected
    voxel centre (clamped to the outermost patch centres, where bilinear interpolation stops)."""
    K, T = intrinsics(), cam_T_ego_looking(0.0)
    occ = np.zeros((1, *test_grid.shape), bool)
    occ[0, 30:50:3, 5:45:4, :] = True  # x in front of the camera, a spread of azimuths and heights
    idx, target, valid = run(occ, coordinate_maps(1)[None], K[None, None], T[None, None], test_grid)
    centres = test_grid.voxel_centers()
    assert valid.sum() > 20
    for (b, x, y, z), tgt, ok in zip(idx, target, valid):
        u, v, d = project_np(K, T, centres[x, y, z])
        assert ok == (d > 0 and 0 <= u < W and 0 <= v < H)
        if ok:
            expect_u = np.clip(u, W / (2 * WP), W - W / (2 * WP))
            expect_v = np.clip(v, H / (2 * HP), H - H / (2 * HP))
            np.testing.assert_allclose(tgt, [expect_u, expect_v, 0.0], atol=2e-3)
        else:
            assert (tgt == 0).all()


def test_voxel_seen_by_two_cameras_gets_the_mean_and_hidden_voxels_are_masked(test_grid):
    Ks = np.stack([intrinsics(), intrinsics()])[None]
    Ts = np.stack([cam_T_ego_looking(0.0), cam_T_ego_looking(30.0)])[None]  # overlap around yaw 15 deg
    centres = test_grid.voxel_centers()
    both = test_grid.points_to_index(np.array([[12.0, 3.0, 1.0]]))[0][0]  # ~14 deg: both cameras
    behind = test_grid.points_to_index(np.array([[-10.0, 0.5, 1.0]]))[0][0]  # behind both
    side = test_grid.points_to_index(np.array([[10.0, -20.0, 1.0]]))[0][0]  # in front of camera 0, far right of its image
    occ = np.zeros((1, *test_grid.shape), bool)
    for v in (both, behind, side):
        occ[(0, *v)] = True
    idx, target, valid = run(occ, coordinate_maps(2)[None], Ks, Ts, test_grid)
    row = {tuple(i[1:]): r for r, i in enumerate(idx)}
    r = row[tuple(both)]
    assert valid[r]
    uvs = [project_np(Ks[0, s], Ts[0, s], centres[tuple(both)]) for s in range(2)]
    assert all(d > 0 and 0 <= u < W and 0 <= v < H for u, v, d in uvs), "test setup: both cameras must see it"
    np.testing.assert_allclose(target[r, 2], 0.5, atol=1e-6)  # mean of camera indices 0 and 1
    np.testing.assert_allclose(target[r, 0], np.mean([u for u, _, _ in uvs]), atol=2e-3)
    u0, _, d0 = project_np(Ks[0, 0], Ts[0, 0], centres[tuple(side)])
    assert d0 > 0 and not 0 <= u0 < W, "test setup: in front of camera 0 but outside its image"
    assert not valid[row[tuple(behind)]] and not valid[row[tuple(side)]]
    assert (target[row[tuple(behind)]] == 0).all()


def test_matches_slow_reference_on_a_batch_with_random_features(test_grid):
    rng = np.random.default_rng(0)
    B, S, C = 2, 3, 5
    occ = rng.random((B, *test_grid.shape)) < 0.01
    feats = rng.normal(size=(B, S, HP, WP, C)).astype(np.float32)
    Ks = np.stack([[intrinsics(rng.uniform(60, 110)) for _ in range(S)] for _ in range(B)])
    Ts = np.stack([[cam_T_ego_looking(rng.uniform(0, 360), (rng.uniform(-2, 2), rng.uniform(-1, 1), 1.5)) for _ in range(S)] for _ in range(B)])
    idx, target, valid = run(occ, feats, Ks, Ts, test_grid)
    np.testing.assert_array_equal(idx, np.argwhere(occ))
    ref, ref_valid = reference_targets(occ, feats, Ks, Ts, test_grid)
    assert 0 < ref_valid.sum() < len(ref_valid)
    np.testing.assert_array_equal(valid, ref_valid)
    np.testing.assert_allclose(target, ref, atol=1e-4)
    # per-camera image sizes as a (B, S, 2) tensor give the same answer as one (H, W)
    hw = torch.tensor([H, W]).expand(B, S, 2)
    _, target2, _ = run(occ, feats, Ks, Ts, test_grid, image_hw=hw)
    np.testing.assert_allclose(target2, target, atol=1e-6)


def test_empty_occupancy(test_grid):
    occ = np.zeros((1, *test_grid.shape), bool)
    idx, target, valid = run(occ, coordinate_maps(1)[None], intrinsics()[None, None], cam_T_ego_looking(0)[None, None], test_grid)
    assert idx.shape == (0, 4) and target.shape == (0, 3) and valid.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_accepted(test_grid, dtype):
    occ = torch.zeros(1, *test_grid.shape, dtype=torch.bool)
    occ[0, 35, 25, 3] = True
    feats = torch.ones(1, 1, HP, WP, 4, dtype=dtype)
    _, target, valid = voxel_feature_targets(
        occ, feats, torch.as_tensor(intrinsics())[None, None], torch.as_tensor(cam_T_ego_looking(0))[None, None], (H, W), test_grid
    )
    assert valid.all() and target.dtype == torch.float32 and torch.allclose(target, torch.ones_like(target))
