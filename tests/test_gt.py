"""Ground truth: box footprints of known pose, map masks against the devkit's own geometry, the cache."""

import numpy as np
import pytest
import shapely
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from occfeat.data.gt import rasterize_footprints
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid


def _footprint(center_xy, length, width, yaw):
    box = Box([center_xy[0], center_xy[1], 0.8], [width, length, 1.6], Quaternion(axis=[0, 0, 1], angle=yaw))
    return box.bottom_corners()[:2].T  # (4, 2)


def test_axis_aligned_box_sets_the_cells_whose_centres_it_covers(test_grid):
    # 4 m x 2 m car at (10, 5) facing +x: x in [8, 12], y in [4, 6]. Test grid: 1 m cells from -25,
    # centres at -24.5 + i -> x centres 8.5..11.5 are ix 33..36, y centres 4.5, 5.5 are iy 29, 30.
    mask = rasterize_footprints(_footprint((10.0, 5.0), 4.0, 2.0, 0.0)[None], test_grid)
    expected = np.zeros((50, 50), bool)
    expected[33:37, 29:31] = True
    np.testing.assert_array_equal(mask, expected)


def test_box_turned_90_degrees_swaps_its_extent(test_grid):
    # Facing +y: length along y -> x in [9, 11] (ix 34, 35), y in [3, 7] (iy 28..31).
    mask = rasterize_footprints(_footprint((10.0, 5.0), 4.0, 2.0, np.pi / 2)[None], test_grid)
    expected = np.zeros((50, 50), bool)
    expected[34:36, 28:32] = True
    np.testing.assert_array_equal(mask, expected)


def test_rotated_boxes_match_a_shapely_reference():
    grid = BevGrid(bounds=((-10.0, 10.0), (-8.0, 8.0), (-1.0, 1.0)), shape=(80, 64, 1))
    rng = np.random.default_rng(0)
    quads = np.stack([_footprint(rng.uniform(-9, 9, 2), rng.uniform(2, 6), rng.uniform(1, 3), rng.uniform(-np.pi, np.pi)) for _ in range(6)])
    mask = rasterize_footprints(quads, grid)
    c = grid.bev_centers()
    ref = np.zeros(grid.shape[:2], bool)
    for q in quads:
        ref |= shapely.intersects_xy(shapely.Polygon(q), c[..., 0], c[..., 1])
    np.testing.assert_array_equal(mask, ref)
    assert mask.sum() > 50  # the boxes are really on the grid


def test_box_off_the_grid_sets_nothing(test_grid):
    assert not rasterize_footprints(_footprint((40.0, 0.0), 4.0, 2.0, 0.3)[None], test_grid).any()
    assert not rasterize_footprints(np.zeros((0, 4, 2)), test_grid).any()


# ---------------------------------------------------------------- on the synthetic world, against the devkit


@pytest.fixture(scope="module")
def synth_index(synth_root):
    from occfeat.data.index import SampleIndex

    return SampleIndex(synth_root, "v1.0-mini", "all")


def _global_xy(rec, grid):
    from occfeat.geometry import apply_4x4

    c = grid.bev_centers().reshape(-1, 2)
    return apply_4x4(rec.global_T_ego, np.concatenate([c, np.zeros((len(c), 1))], 1))[:, :2]


def test_map_masks_match_the_devkit_map(synth_index, test_grid):
    from nuscenes.map_expansion.map_api import NuScenesMap

    from occfeat.data.gt import MAP_CLASSES, MAP_LAYERS, GtBuilder

    rec = synth_index[3]
    masks = GtBuilder(synth_index, test_grid, "map")(rec)[0].reshape(len(MAP_CLASSES), -1)
    assert masks.shape[0] == 5 and masks[0].any() and masks[4].any()  # the world has roads and dividers
    nmap = NuScenesMap(dataroot=str(synth_index.dataroot), map_name=rec.location)
    gxy = _global_xy(rec, test_grid)
    polygon_classes = [c for c in MAP_CLASSES if c != "divider"]
    for i in range(0, len(gxy), 7):  # every 7th cell: the devkit's point query is slow
        on = nmap.layers_on_point(gxy[i, 0], gxy[i, 1], [MAP_LAYERS[c][0] for c in polygon_classes])
        for c, cls in enumerate(polygon_classes):
            assert masks[c, i] == bool(on[MAP_LAYERS[cls][0]]), (cls, i)
    # Dividers: the cells within half the line width of the devkit's line geometry.
    lines = shapely.union_all([nmap.extract_line(r["line_token"]) for layer in MAP_LAYERS["divider"] for r in getattr(nmap, layer)])
    dist = shapely.distance(lines, shapely.points(gxy))
    clear = np.abs(dist - 0.5) > 0.02  # the buffer polygon approximates the round caps to ~1 cm
    np.testing.assert_array_equal(masks[4][clear], (dist <= 0.5)[clear])


def test_vehicle_mask_matches_devkit_points_in_box(synth_index, test_grid):
    from nuscenes.utils.geometry_utils import points_in_box

    from occfeat.data.gt import GtBuilder

    nusc = synth_index.nusc
    total_hidden = 0
    for rec in list(synth_index)[:4]:
        target, valid = GtBuilder(synth_index, test_grid, "vehicle")(rec)
        gxy = _global_xy(rec, test_grid)
        shown = np.zeros(len(gxy), bool)
        hidden = np.zeros(len(gxy), bool)
        for ann_token in nusc.get("sample", rec.token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            if not ann["category_name"].startswith("vehicle."):
                continue
            box = nusc.get_box(ann_token)  # global frame
            pts = np.stack([gxy[:, 0], gxy[:, 1], np.full(len(gxy), box.center[2])])
            inside = points_in_box(box, pts)
            if ann["visibility_token"] == "1":
                hidden |= inside
            else:
                shown |= inside
        np.testing.assert_array_equal(target[0].reshape(-1), shown)
        np.testing.assert_array_equal(valid.reshape(-1), ~hidden)
        total_hidden += hidden.sum()
    assert total_hidden > 0  # the world has low-visibility vehicles, so the exclusion is exercised


def test_gt_cache_round_trips_and_refuses_another_grid(synth_index, test_grid, tmp_path):
    from occfeat.data.gt import GtBuilder, build_gt_cache

    cache = build_gt_cache(synth_index, test_grid, "map", tmp_path / "gt.h5", progress=False)
    builder = GtBuilder(synth_index, test_grid, "map")
    for token in synth_index.tokens[:3]:
        target, valid = cache[token]
        ref_t, ref_v = builder(synth_index.record(token))
        np.testing.assert_array_equal(target, ref_t)
        np.testing.assert_array_equal(valid, ref_v)
    other = BevGrid(bounds=test_grid.bounds, shape=(25, 25, 8))
    with pytest.raises(OccfeatError, match="another setting"):
        build_gt_cache(synth_index, other, "map", tmp_path / "gt.h5", progress=False)
