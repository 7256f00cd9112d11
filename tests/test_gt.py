"""Ground truth: Simple-BEV's vehicle rule and instance targets on hand-made boxes, the centre rule, map
masks against the devkit's own geometry, targets in a rotated reference frame, the cache."""

import cv2
import numpy as np
import pytest
import shapely
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from occfeat.data.gt import GtConfig, centerness, footprint_ids, instance_offsets, rasterize_footprints, vehicle_targets
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid


def _footprint(center_xy, length, width, yaw):
    box = Box([center_xy[0], center_xy[1], 0.8], [width, length, 1.6], Quaternion(axis=[0, 0, 1], angle=yaw))
    return box.bottom_corners()[:2].T  # (4, 2)


def _cv2_reference(quads, grid):
    """Simple-BEV's rule written out: grid coords with cell centres at integers, truncated, cv2.fillPoly."""
    out = np.zeros(grid.shape[:2], np.uint8)
    for q in quads:
        u = ((q - grid.lower[:2]) / grid.voxel_size[:2] - 0.5).astype(np.int32)
        cv2.fillPoly(out, [u[:, [1, 0]].copy()], 1)  # cv2 points are (column, row) = (iy, ix)
    return out.astype(bool)


# ---------------------------------------------------------------- Simple-BEV's rule (default)


def test_fillpoly_axis_aligned_box_by_hand(test_grid):
    # 4 m x 2 m car at (10, 5): x in [8, 12] -> grid coords 32.5..36.5 -> 32..36; y in [4, 6] -> 28.5..30.5
    # -> 28..30. fillPoly sets the whole closed rectangle: 5 x 3 cells (the centre rule: 4 x 2).
    mask = rasterize_footprints(_footprint((10.0, 5.0), 4.0, 2.0, 0.0)[None], test_grid)
    expected = np.zeros((50, 50), bool)
    expected[32:37, 28:31] = True
    np.testing.assert_array_equal(mask, expected)
    assert rasterize_footprints(_footprint((10.0, 5.0), 4.0, 2.0, 0.0)[None], test_grid, "centre").sum() == 8


@pytest.mark.parametrize(
    "center,length,width,yaw",
    [
        ((10.0, 5.0), 4.0, 2.0, 0.0),  # axis-aligned
        ((-7.3, 3.1), 4.6, 1.9, 0.61),  # rotated
        ((3.2, -11.7), 12.0, 2.5, -2.3),  # rotated bus
        ((0.2, 0.3), 0.4, 0.3, 0.2),  # smaller than a cell: one cell, where the centre rule draws none
        ((24.5, 0.0), 4.0, 2.0, 0.3),  # over the +x edge
        ((-25.0, -24.6), 4.0, 2.0, 1.2),  # over the -x/-y corner (negative coordinates truncate toward 0)
    ],
)
def test_fillpoly_equals_cv2_on_truncated_corners(test_grid, center, length, width, yaw):
    quad = _footprint(center, length, width, yaw)[None]
    mask = rasterize_footprints(quad, test_grid)
    np.testing.assert_array_equal(mask, _cv2_reference(quad, test_grid))
    assert mask.any()
    if length < 1:
        assert mask.sum() == 1 and not rasterize_footprints(quad, test_grid, "centre").any()


def test_invisible_boxes_are_masked_out_of_valid_by_the_same_rule(test_grid):
    quads = np.stack([_footprint((10.0, 5.0), 4.0, 2.0, 0.0), _footprint((-6.2, -3.4), 4.4, 1.8, 0.9)])
    out = vehicle_targets(quads, np.array([[10.0, 5.0], [-6.2, -3.4]]), np.array([True, False]), test_grid)
    np.testing.assert_array_equal(out["valid"], ~_cv2_reference(quads[1:], test_grid))
    np.testing.assert_array_equal(out["target"][0], _cv2_reference(quads, test_grid))  # drawn, not counted
    assert out["target"].shape == (1, 50, 50) and out["valid"].shape == (50, 50)


def test_instance_ids_later_boxes_win(test_grid):
    a, b = _footprint((10.0, 5.0), 4.0, 2.0, 0.0), _footprint((12.0, 5.0), 4.0, 2.0, 0.0)
    ids = footprint_ids(np.stack([a, b]), test_grid)
    assert ids[32, 29] == 1 and ids[34, 29] == 2 and ids[38, 29] == 2 and ids[31, 29] == 0


def test_centerness_and_offset_on_a_hand_made_box(test_grid):
    # Centre (10.3, 5.6) -> grid coords (34.8, 30.1) -> rounded (35, 30).
    c = np.array([[10.3, 5.6]])
    ctr = centerness(c, test_grid)
    assert ctr[35, 30] == 1.0
    assert ctr[36, 30] == pytest.approx(np.exp(-1 / 18))  # sigma 3 cells
    assert ctr[37, 31] == pytest.approx(np.exp(-5 / 18))
    assert ctr[46, 30] == pytest.approx(np.exp(-121 / 18))  # 1.2e-3: kept
    assert ctr[47, 30] == 0.0  # exp(-144/18) = 3.4e-4 < 1e-3: zeroed
    # Two boxes: the max, not the sum.
    two = centerness(np.array([[10.3, 5.6], [11.3, 5.6]]), test_grid)
    assert two[35, 30] == 1.0 and two[36, 30] == 1.0

    ids = footprint_ids(_footprint((10.3, 5.6), 4.0, 2.0, 0.0)[None], test_grid)
    off = instance_offsets(ids, c, test_grid)
    assert off.shape == (2, 50, 50) and ids[33, 29] == 1
    np.testing.assert_allclose(off[:, 33, 29], [2 * (33 - 35), 2 * (29 - 30)])  # 2 x (cell - centre), cells
    np.testing.assert_allclose(off[:, 35, 30], [0.0, 0.0])
    assert np.all(off[:, ids == 0] == 0)


def test_config_rejects_unknown_rule_and_layers():
    with pytest.raises(OccfeatError, match="vehicle_rule"):
        GtConfig(vehicle_rule="any-overlap")
    with pytest.raises(OccfeatError, match="nuScenes map layers"):
        GtConfig(map_layers={"road": ["roads"]})
    cfg = GtConfig(map_layers={"divider": ["road_divider", "lane_divider"]})
    assert cfg.map_layers == {"divider": ("road_divider", "lane_divider")}
    assert tuple(GtConfig().map_layers) == ("road", "sidewalk", "crosswalk", "parking", "divider")
    assert GtConfig().map_layers["divider"] == ("road_divider",)  # the paper's "road dividers"


# ---------------------------------------------------------------- the centre rule (config value)


def test_centre_rule_box_turned_90_degrees_swaps_its_extent(test_grid):
    # Facing +y: length along y -> x in [9, 11] (ix 34, 35), y in [3, 7] (iy 28..31).
    mask = rasterize_footprints(_footprint((10.0, 5.0), 4.0, 2.0, np.pi / 2)[None], test_grid, "centre")
    expected = np.zeros((50, 50), bool)
    expected[34:36, 28:32] = True
    np.testing.assert_array_equal(mask, expected)


def test_centre_rule_rotated_boxes_match_a_shapely_reference():
    grid = BevGrid(bounds=((-10.0, 10.0), (-8.0, 8.0), (-1.0, 1.0)), shape=(80, 64, 1))
    rng = np.random.default_rng(0)
    quads = np.stack([_footprint(rng.uniform(-9, 9, 2), rng.uniform(2, 6), rng.uniform(1, 3), rng.uniform(-np.pi, np.pi)) for _ in range(6)])
    mask = rasterize_footprints(quads, grid, "centre")
    c = grid.bev_centers()
    ref = np.zeros(grid.shape[:2], bool)
    for q in quads:
        ref |= shapely.intersects_xy(shapely.Polygon(q), c[..., 0], c[..., 1])
    np.testing.assert_array_equal(mask, ref)
    assert mask.sum() > 50  # the boxes are really on the grid


def test_box_off_the_grid_sets_nothing(test_grid):
    for rule in ("fillpoly", "centre"):
        assert not rasterize_footprints(_footprint((40.0, 0.0), 4.0, 2.0, 0.3)[None], test_grid, rule).any()
        assert not rasterize_footprints(np.zeros((0, 4, 2)), test_grid, rule).any()


# ---------------------------------------------------------------- on the synthetic world, against the devkit


@pytest.fixture(scope="module")
def synth_index(synth_root):
    from occfeat.data.index import SampleIndex

    return SampleIndex(synth_root, "v1.0-mini", "all")


def _ref_T_ego(yaw_deg=110.0, shift=(1.3, -0.7)):
    """A reference frame like a side camera's: ego_T_ref = yaw about z + a shift on the ground."""
    a = np.deg2rad(yaw_deg)
    ego_T_ref = np.eye(4)
    ego_T_ref[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    ego_T_ref[:2, 3] = shift
    return np.linalg.inv(ego_T_ref)


def _global_xy(rec, grid, ref_T_ego=np.eye(4)):
    c = grid.bev_centers().reshape(-1, 2)
    pts = np.concatenate([c, np.zeros((len(c), 1)), np.ones((len(c), 1))], 1)
    return (rec.global_T_ego @ np.linalg.inv(ref_T_ego) @ pts.T).T[:, :2]


@pytest.mark.parametrize("ref", [None, "rotated"])
def test_map_masks_match_the_devkit_map_in_frame_r(synth_index, test_grid, ref):
    from nuscenes.map_expansion.map_api import NuScenesMap

    from occfeat.data.gt_map import MapGt

    cfg = GtConfig(map_layers={"road": ["drivable_area"], "sidewalk": ["walkway"], "divider": ["road_divider", "lane_divider"]})
    ref_T_ego = None if ref is None else _ref_T_ego()
    rec = synth_index[3]
    masks = MapGt.from_index(synth_index, test_grid, cfg)(rec.token, ref_T_ego)["target"].reshape(3, -1)
    assert masks[0].any() and masks[2].any()  # the world has roads and dividers
    nmap = NuScenesMap(dataroot=str(synth_index.dataroot), map_name=rec.location)
    gxy = _global_xy(rec, test_grid, np.eye(4) if ref is None else ref_T_ego)
    for i in range(0, len(gxy), 7):  # every 7th cell: the devkit's point query is slow
        on = nmap.layers_on_point(gxy[i, 0], gxy[i, 1], ["drivable_area", "walkway"])
        assert masks[0, i] == bool(on["drivable_area"]) and masks[1, i] == bool(on["walkway"]), i
    # Dividers: the cells within half the line width of the devkit's line geometry.
    lines = shapely.union_all([nmap.extract_line(r["line_token"]) for layer in cfg.map_layers["divider"] for r in getattr(nmap, layer)])
    dist = shapely.distance(lines, shapely.points(gxy))
    clear = np.abs(dist - 0.5) > 0.02  # the buffer polygon approximates the round caps to ~1 cm
    np.testing.assert_array_equal(masks[2][clear], (dist <= 0.5)[clear])


def test_vehicle_centre_rule_matches_devkit_points_in_box(synth_index, test_grid):
    from nuscenes.utils.geometry_utils import points_in_box

    from occfeat.data.gt_cache import gt_source

    nusc = synth_index.nusc
    source = gt_source(synth_index, test_grid, "vehicle", GtConfig(vehicle_rule="centre"))
    total_hidden = 0
    for rec in list(synth_index)[:4]:
        out = source(rec.token)
        gxy = _global_xy(rec, test_grid)
        shown = np.zeros(len(gxy), bool)
        hidden = np.zeros(len(gxy), bool)
        for ann_token in nusc.get("sample", rec.token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            if not ann["category_name"].startswith("vehicle."):
                continue
            box = nusc.get_box(ann_token)  # global frame
            inside = points_in_box(box, np.stack([gxy[:, 0], gxy[:, 1], np.full(len(gxy), box.center[2])]))
            hidden |= inside if ann["visibility_token"] == "1" else False
            shown |= inside
        np.testing.assert_array_equal(out["target"][0].reshape(-1), shown)
        np.testing.assert_array_equal(out["valid"].reshape(-1), ~hidden)
        total_hidden += hidden.sum()
    assert total_hidden > 0  # the world has low-visibility vehicles, so the exclusion is exercised


def test_vehicle_targets_in_a_rotated_frame_equal_the_boxes_moved_by_hand(synth_index, test_grid, tmp_path):
    from occfeat.data.gt import box_table, vehicle_boxes, VehicleGt

    ref_T_ego = _ref_T_ego()
    gt = VehicleGt(box_table(synth_index, tmp_path), test_grid)
    assert list(tmp_path.glob("boxes-*.npz"))  # saved once per split, reused on the next call
    n_cells = 0
    for rec in list(synth_index)[:4]:
        corners, centres, visible = [], [], []
        for box in vehicle_boxes(synth_index, rec):  # devkit Boxes in the ego frame, moved into R by hand
            box.rotate(Quaternion(matrix=ref_T_ego[:3, :3]))
            box.translate(ref_T_ego[:3, 3])
            corners.append(box.bottom_corners()[:2].T)
            centres.append(box.center[:2])
            visible.append(box.visibility != "1")
        quads = np.array(corners).reshape(-1, 4, 2)
        got = gt(rec.token, ref_T_ego)
        np.testing.assert_array_equal(got["target"][0], _cv2_reference(quads, test_grid))
        np.testing.assert_array_equal(got["valid"], ~_cv2_reference(quads[~np.array(visible, bool)], test_grid))
        np.testing.assert_allclose(got["center"][0], centerness(np.array(centres).reshape(-1, 2), test_grid))
        n_cells += got["target"].sum()
        # Not the identity-frame answer: the frame really moved the boxes.
        assert not np.array_equal(got["target"], gt(rec.token)["target"]) or not got["target"].any()
    assert n_cells > 0


def test_gt_cache_round_trips_and_refuses_another_grid(synth_index, test_grid, tmp_path):
    from occfeat.data.gt_cache import build_gt_cache, gt_source, segmentation_gt

    cache = build_gt_cache(synth_index, test_grid, "map", tmp_path / "gt.h5", progress=False)
    source = gt_source(synth_index, test_grid, "map")
    for token in synth_index.tokens[:3]:
        target, valid = cache[token]
        ref = source(token)
        np.testing.assert_array_equal(target, ref["target"])
        np.testing.assert_array_equal(valid, ref["valid"])
    other = BevGrid(bounds=test_grid.bounds, shape=(25, 25, 8))
    with pytest.raises(OccfeatError, match="another setting"):
        build_gt_cache(synth_index, other, "map", tmp_path / "gt.h5", progress=False)
    # The dataset's source: the cache in the identity frame, the map geometry in any other.
    gt = segmentation_gt(synth_index, test_grid, "map", GtConfig(), tmp_path / "gt-cache", progress=False)
    token = synth_index.tokens[2]
    np.testing.assert_array_equal(gt(token)["target"], source(token)["target"])
    np.testing.assert_array_equal(gt(token, _ref_T_ego())["target"], source(token, _ref_T_ego())["target"])


def test_gt_sources_pickle_without_loaded_maps(synth_index, test_grid):
    import pickle

    from occfeat.data.gt_cache import gt_source

    source = gt_source(synth_index, test_grid, "map")
    token = synth_index.tokens[0]
    before = source(token)["target"]
    assert source.raster._maps  # loaded
    clone = pickle.loads(pickle.dumps(source))
    assert not clone.raster._maps  # each worker loads its own
    np.testing.assert_array_equal(clone(token)["target"], before)
