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
    # row 66 has no return (a gap between LiDAR rings): filled from the car's return one row above, it is hidden
    # too; row 64 keeps its own return (the ground), so the fill does not spread over it
    filled = ground_targets(masks, grid, cam_T_ego, K, (100, 100), lidar_depth=lidar, fill_rows=1)
    assert np.nonzero(filled["map"][0, :, 50])[0].tolist() == [64]


def test_a_box_mostly_outside_the_image_is_dropped_and_a_tiny_one_keeps_its_centre_pixel():
    # centred on the right image edge: half its projection is inside (kept at 0.2, dropped at 0.6)
    edge = cube((10, -0.0 - 10 * 50 / 100 + 0.0, 0), 1)  # u = 50 + 100·(−y)/x = 100 at y = −5
    centre = edge.mean(axis=0, keepdims=True)
    assert box_targets(edge[None], centre, CAM_T_EGO, K, (100, 100), min_visible=0.2)["vehicle"].any()
    assert not box_targets(edge[None], centre, CAM_T_EGO, K, (100, 100), min_visible=0.6)["vehicle"].any()
    # 2 cm wide at 50 m: its hull holds no pixel centre, the pixel of its projected centre is marked
    tiny = cube((50, 0.1, 0.1), 0.01)
    out = box_targets(tiny[None], tiny.mean(axis=0, keepdims=True), CAM_T_EGO, K, (100, 100))
    assert out["vehicle"].sum() == 1 and out["vehicle"][49, 49] and out["depth"][49, 49] == 50.0


def test_box_corners_rebuild_the_top_face_in_any_frame():
    from occfeat.perspective import box_corners

    full = cube((3, 2, 1), 1)  # z in {0, 2}: bottom face at z = 0
    bottom = full[full[:, 2] == 0][None]
    got = box_corners(bottom, np.array([[3.0, 2.0, 1.0]]))[0]
    assert sorted(map(tuple, got)) == sorted(map(tuple, full))


def test_pixel_depth_bins_keep_the_nearest_point_per_pixel():
    import torch

    from occfeat.data.targets import pixel_depth_bins

    # ego (x ahead) → camera; two points on the optical axis at 10 m and 12 m, one 70 m away (beyond the bins)
    pts = torch.tensor([[[10.0, 0, 0], [12.0, 0, 0], [70.0, 0.0, 0.0], [5.0, 0, 0]]])
    mask = torch.tensor([[True, True, True, False]])  # the 5 m point is padding
    bins = pixel_depth_bins(pts, mask, torch.tensor(CAM_T_EGO).float()[None, None], torch.tensor(K).float()[None, None], (100, 100),
                            (2.0, 58.0, 0.5))
    assert bins.shape == (1, 1, 100, 100)
    assert bins[0, 0, 50, 50] == (10.0 - 2.0) / 0.5  # the nearer of the two on the same pixel
    assert (bins >= 0).sum() == 1  # the far point is past 58 m, the padded one ignored


def test_pixel_feature_targets_map_a_cropped_resized_input_back_into_the_stored_image():
    import torch

    from occfeat.data.targets import pixel_feature_targets
    from occfeat.geometry import crop_intrinsics, scale_intrinsics

    H0, W0 = 20, 40  # the stored image; its teacher map holds feature = (u, v) of the stored pixel centre
    v, u = torch.meshgrid(torch.arange(H0) + 0.5, torch.arange(W0) + 0.5, indexing="ij")
    maps = torch.stack([u, v], dim=-1)[None, None]  # (1, 1, H0, W0, 2): one patch per pixel
    K0 = torch.tensor([[30.0, 0, 20], [0, 30.0, 10], [0, 0, 1]])
    K = crop_intrinsics(scale_intrinsics(K0, 0.5, 0.5), 2.0, 1.0)  # half size, then a crop 2 px in, 1 down
    target, valid = pixel_feature_targets(maps, K0[None, None], torch.tensor([[[H0, W0]]]), K[None, None], (8, 16))
    # feature pixel (i, j) has its centre at (j + 0.5 + 2, i + 0.5 + 1) in the half-size image, twice that in the stored one
    assert torch.allclose(target[0, 0, 3, 5], torch.tensor([2 * (5.5 + 2), 2 * (3.5 + 1)]))
    assert valid[0, 0, :, :].all()  # 16 + 2 < 20 columns, 8 + 1 < 10 rows: the crop stays inside


def test_voxel_attention_is_one_outside_and_averages_one_inside_each_sample():
    import torch

    from occfeat.objectives.balanced import voxel_attention

    mag = torch.tensor([1.0, 2.0, 3.0, 5.0])
    sample = torch.tensor([0, 0, 1, 1])
    valid = torch.tensor([True, True, True, False])
    a = voxel_attention(mag, sample, valid, B=2, temperature=0.5)
    assert torch.isclose(a[:2].mean(), torch.tensor(1.0)) and a[1] > a[0]  # the larger feature draws more weight
    assert a[2] == 1.0 and a[3] == 1.0  # alone in its sample → 1; unseen → 1
