"""Ground truth: box footprints of known pose, map masks against the devkit's own geometry, the cache."""

import numpy as np
import pytest
import shapely
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from occfeat.data.gt import rasterize_footprints
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
