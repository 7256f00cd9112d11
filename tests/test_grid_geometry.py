"""BevGrid and the a_T_b geometry helpers against hand-computed values."""

import numpy as np
import pytest
import torch

from occfeat.errors import OccfeatError
from occfeat.geometry import (
    apply_4x4,
    crop_intrinsics,
    in_image,
    invert_rigid,
    make_transform,
    pose_from_transform,
    project_points,
    scale_intrinsics,
    transform_from_pose,
    yaw_matrix,
)
from occfeat.data.synth.rig import CAMERA_MOUNTS
from occfeat.grid import BevGrid


def test_default_grid_is_the_papers_simplebev_grid():
    g = BevGrid()
    assert g.shape == (200, 200, 8)
    np.testing.assert_allclose(g.voxel_size, [0.5, 0.5, 1.25])
    assert g.bounds[0] == (-48.5, 51.5) and g.bounds[1] == (-50.0, 50.0)
    # Simple-BEV: y_cam in [-5, 5] + 1 m (down) in CAM_FRONT, mounted 1.70 m ahead and 1.51 m up (the rig's
    # numbers, nuScenes' calibration): z_ego = 1.51 - y_cam. Our bounds are that, to 1 cm in z, 0.2 m in x.
    front = next(m for m in CAMERA_MOUNTS if m.channel == "CAM_FRONT")
    sb_z = sorted(front.translation[2] - y for y in (-5.0 + 1.0, 5.0 + 1.0))
    np.testing.assert_allclose(g.bounds[2], sb_z, atol=0.011)
    assert abs((g.lower[0] + g.upper[0]) / 2 - front.translation[0]) <= 0.2
    # every cell edge sits on the 0.5 m (xy) / 0.25 m (z) lattice of the ego frame: exact in float
    assert np.all(np.mod(g.lower[:2], 0.5) == 0) and np.mod(g.lower[2], 0.25) == 0
    # the ground (z = 0) falls 60 % up the bin [-0.75, 0.5), not on an edge
    edges = g.lower[2] + np.arange(9) * g.voxel_size[2]
    k = np.searchsorted(edges, 0.0) - 1
    assert (edges[k], edges[k + 1]) == (-0.75, 0.5)


def test_voxel_centers_and_index_round_trip():
    g = BevGrid(bounds=((-2, 2), (-1, 1), (0, 1)), shape=(4, 2, 1))
    c = g.voxel_centers()
    assert c.shape == (4, 2, 1, 3)
    np.testing.assert_allclose(c[0, 0, 0], [-1.5, -0.5, 0.5])
    np.testing.assert_allclose(c[3, 1, 0], [1.5, 0.5, 0.5])
    idx, valid = g.points_to_index(c.reshape(-1, 3))
    assert valid.all()
    np.testing.assert_array_equal(idx, np.indices(g.shape).reshape(3, -1).T)


def test_points_to_index_half_open_and_nan():
    g = BevGrid(bounds=((0, 2), (0, 2), (0, 2)), shape=(2, 2, 2))
    pts = np.array([[0, 0, 0], [1.0, 1.0, 1.0], [2.0, 0.5, 0.5], [-1e-9, 0.5, 0.5], [np.nan, 0, 0], [1.999, 1.999, 1.999]])
    idx, valid = g.points_to_index(pts)
    assert valid.tolist() == [True, True, False, False, False, True]
    assert idx[1].tolist() == [1, 1, 1] and idx[5].tolist() == [1, 1, 1]


def test_grid_spec_round_trip_and_bad_specs(tmp_path):
    g = BevGrid(bounds=((-10, 10), (-5, 5), (-1, 3)), shape=(40, 20, 4))
    assert BevGrid.from_json(g.to_json()) == g
    p = tmp_path / "g.json"
    p.write_text(g.to_json())
    assert BevGrid.load(p) == g and BevGrid.load("default") == BevGrid()
    with pytest.raises(OccfeatError):
        BevGrid(bounds=((1, 0), (0, 1), (0, 1)), shape=(1, 1, 1))
    with pytest.raises(OccfeatError):
        BevGrid.load(tmp_path / "missing.json")
    with pytest.raises(OccfeatError):
        BevGrid.from_json('{"shape": [1, 2]}')


def test_pose_round_trip_and_inverse():
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        T = transform_from_pose(q, rng.normal(size=3))
        np.testing.assert_allclose(invert_rigid(T) @ T, np.eye(4), atol=1e-12)
        rot, trans = pose_from_transform(T)
        np.testing.assert_allclose(transform_from_pose(rot, trans), T, atol=1e-9)
    Tt = torch.tensor(T)[None].repeat(3, 1, 1)
    torch.testing.assert_close(invert_rigid(Tt) @ Tt, torch.eye(4, dtype=torch.float64).expand(3, 4, 4))


def test_apply_4x4_known_transform_numpy_and_torch():
    # ego_T_lidar: lidar at (1, 0, 2), rotated +90 deg about z (lidar x → ego y)
    ego_T_lidar = make_transform(yaw_matrix(np.pi / 2), [1.0, 0.0, 2.0])
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(apply_4x4(ego_T_lidar, p), [[1, 1, 2], [0, 0, 2]], atol=1e-12)
    pt = apply_4x4(torch.tensor(ego_T_lidar)[None], torch.tensor(p)[None])
    np.testing.assert_allclose(pt[0].numpy(), [[1, 1, 2], [0, 0, 2]], atol=1e-12)


def test_projection_scale_and_crop():
    K = np.array([[100.0, 0, 50], [0, 100.0, 25], [0, 0, 1]])
    pts = np.array([[0.0, 0, 10], [1.0, -0.5, 2], [0, 0, -1]])
    uv, front = project_points(K, pts)
    np.testing.assert_allclose(uv[:2], [[50, 25], [100, 0]])
    assert front.tolist() == [True, True, False]
    assert in_image(uv[:2], 100, 50).tolist() == [True, False]  # u=100 is outside [0, 100)
    uv2, _ = project_points(scale_intrinsics(K, 0.5, 2.0), pts)
    np.testing.assert_allclose(uv2[:2], uv[:2] * [0.5, 2.0])
    uv3, _ = project_points(crop_intrinsics(K, 10, 5), pts)
    np.testing.assert_allclose(uv3[:2], uv[:2] - [10, 5])
    uvt, frontt = project_points(torch.tensor(K), torch.tensor(pts))
    np.testing.assert_allclose(uvt[:2].numpy(), uv[:2])
