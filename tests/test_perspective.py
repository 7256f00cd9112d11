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
