"""Perspective targets (BEVFormer v2's auxiliary head): a hand-placed box in a hand-made camera."""

import numpy as np

from occfeat.perspective import box_targets, clip_to_near

# A camera at the ego origin looking along ego +x: cam x = -ego y, cam y = -ego z, cam z = ego x.
CAM_T_EGO = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 50.0], [0.0, 0.0, 1.0]])


def cube(centre, half):
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    return np.asarray(centre, float) + half * signs


def test_a_box_ahead_lands_on_the_pixels_its_near_face_covers_with_its_centre_depth():
    out = box_targets(cube((10, 0, 0), 1)[None], np.array([[10.0, 0, 0]]), CAM_T_EGO, K, (100, 100))
    # the near face (depth 9) spans u, v in 50 ± 100/9 = [38.89, 61.11]: pixel centres 39.5 … 60.5
    rows, cols = np.nonzero(out["vehicle"])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (39, 60, 39, 60) and out["vehicle"].sum() == 22 * 22
    assert np.allclose(out["depth"][out["vehicle"]], 10.0) and (out["depth"][~out["vehicle"]] == 0).all()
    np.testing.assert_allclose(out["ltrb"][:, 49, 49], [49.5 - (50 - 100 / 9), 49.5 - (50 - 100 / 9),
                                                       50 + 100 / 9 - 49.5, 50 + 100 / 9 - 49.5], rtol=1e-5)
    assert out["centerness"][49, 49] > 0.9 and out["centerness"][39, 39] < 0.1
    assert set(np.unique(out["box_id"])) == {0, 1}


def test_the_nearer_box_wins_where_boxes_overlap_and_boxes_behind_are_skipped():
    corners = np.stack([cube((20, 0, 0), 1), cube((10, 0.5, 0), 1), cube((-10, 0, 0), 1)])
    centres = corners.mean(axis=1)
    out = box_targets(corners, centres, CAM_T_EGO, K, (100, 100))
    assert out["box_id"][50, 45] == 2 and out["depth"][50, 45] == 10.0  # the near box covers the far one
    assert (out["box_id"] != 3).all()  # the box behind the camera draws nothing


def test_a_box_reaching_behind_the_camera_is_cut_at_the_near_plane_not_dropped():
    pts = clip_to_near(cube((1, 0, 0), 2) @ CAM_T_EGO[:3, :3].T, 0.1)
    assert np.isclose(pts[:, 2].min(), 0.1) and (pts[:, 2] >= 0.1 - 1e-9).all()
    out = box_targets(cube((1, 0, 0), 2)[None], np.array([[1.0, 0, 0]]), CAM_T_EGO, K, (100, 100))
    assert out["vehicle"].all() and np.allclose(out["depth"], 1.0)  # it fills the view, at its centre's depth


def test_map_pixels_take_the_class_of_the_ground_cell_their_ray_meets_unless_lidar_sees_something_nearer():
    from occfeat.grid import BevGrid
    from occfeat.perspective import ground_targets

    grid = BevGrid(bounds=((-20.0, 20.0), (-20.0, 20.0), (-4.5, 5.5)), shape=(40, 40, 8))  # 1 m cells
    cam_T_ego = CAM_T_EGO.copy()
    cam_T_ego[:3, 3] = -CAM_T_EGO[:3, :3] @ np.array([0.0, 0.0, 1.5])  # the camera 1.5 m above the ground
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 29:31] = True  # a stripe across the road at x in [9, 11) m
    # column 50 looks straight ahead; row r meets the ground at depth 1.5 / ((r + 0.5 - 50) / 100)
    out = ground_targets(masks, grid, cam_T_ego, K, (100, 100))
    assert np.nonzero(out["map"][0, :, 50])[0].tolist() == [64, 65, 66]  # depths 10.34, 9.68, 9.09
    np.testing.assert_allclose(out["ground_depth"][65, 50], 1.5 / 0.155, rtol=1e-6)
    assert out["ground_depth"][40, 50] == 0 and out["valid"][40, 50]  # above the horizon: no ground, no class
    assert not out["valid"][51, 50]  # meets the ground 100 m ahead, outside the grid: unknown
    lidar = np.zeros((100, 100))
    lidar[65, 50] = 5.0  # a car 5 m ahead hides the stripe at row 65
    lidar[64, 50] = 10.0  # a return near the ground point (10.34 m): the ground itself, within the tolerance
    seen = ground_targets(masks, grid, cam_T_ego, K, (100, 100), lidar_depth=lidar)
    assert np.nonzero(seen["map"][0, :, 50])[0].tolist() == [64, 66] and seen["valid"][65, 50]
