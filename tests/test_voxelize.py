"""occfeat voxelize: the numba kernels against plain numpy references, the on-disk format and reader,
and the stage on the synthetic world (multi-sweep geometry, resume, bad input, grid mismatch)."""

from __future__ import annotations

import numpy as np
import pytest

from occfeat.data.index import EGO_BOX
from occfeat.data.occupancy import (
    OccupancyReader,
    pack_occupancy,
    transform_drop_box,
    unpack_occupancy,
    voxelize_points,
)
from occfeat.data.store import CacheWriter, Payload
from occfeat.data.voxelize import occupancy_spec
from occfeat.errors import OccfeatError
from occfeat.geometry import apply_4x4, make_transform, yaw_matrix
from occfeat.grid import BevGrid

# An awkward grid: non-dyadic voxel sizes (0.8, 0.7, 1.25) and an offset origin, so float rounding at
# cell edges differs from a nice grid.
ODD_GRID = BevGrid(bounds=((-7.3, 11.1), (-3.5, 3.5), (-2.0, 4.25)), shape=(23, 10, 5))


def reference_occupancy(points: np.ndarray, grid: BevGrid) -> np.ndarray:
    """Plain numpy: count points per voxel with np.add.at over BevGrid.points_to_index, then > 0."""
    idx, valid = grid.points_to_index(points)
    counts = np.zeros(grid.shape, np.int64)
    np.add.at(counts, tuple(idx[valid].T), 1)
    return counts > 0


@pytest.mark.parametrize("grid", [BevGrid(), ODD_GRID], ids=["paper", "odd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_numpy_reference_on_random_points(grid, dtype):
    rng = np.random.default_rng(0)
    span = grid.upper - grid.lower
    # 20 % of the points fall outside the grid on some axis; extra columns (intensity, ring) are ignored.
    n = int(np.prod(grid.shape)) // 16  # sparse enough that the grid is far from full
    pts = rng.uniform(grid.lower - 0.1 * span, grid.upper + 0.1 * span, size=(n, 3))
    pts = np.concatenate([pts, rng.normal(size=(len(pts), 2))], axis=1).astype(dtype)
    occ = voxelize_points(pts, grid)
    assert occ.dtype == np.bool_ and occ.shape == grid.shape
    np.testing.assert_array_equal(occ, reference_occupancy(pts, grid))
    assert 0 < occ.sum() < occ.size  # neither trivially empty nor full


@pytest.mark.parametrize("grid", [BevGrid(), ODD_GRID], ids=["paper", "odd"])
def test_kernel_matches_reference_on_cell_edges_bounds_nan_inf(grid):
    # Along each axis: every cell edge (min ... max), the floats just either side of each edge, points
    # outside, NaN and +-inf; all combinations on a sparse lattice.
    axes = []
    for a in range(3):
        edges = grid.lower[a] + np.arange(grid.shape[a] + 1) * grid.voxel_size[a]
        edges = np.concatenate([edges, [grid.upper[a]]])
        vals = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                               [grid.lower[a] - 1.0, grid.upper[a] + 1.0, np.nan, np.inf, -np.inf]])
        axes.append(vals)
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    for dtype in (np.float64, np.float32):
        p = pts.astype(dtype)
        np.testing.assert_array_equal(voxelize_points(p, grid), reference_occupancy(p, grid))

    # hand-checked cases
    lo, hi = grid.lower, grid.upper
    only = lambda p: np.argwhere(voxelize_points(np.array([p]), grid)).tolist()  # noqa: E731
    assert only(lo) == [[0, 0, 0]]  # the minimum corner belongs to cell 0
    assert only(hi) == []  # half-open: the maximum corner is outside
    assert only(hi - 1e-6 * grid.voxel_size) == [[n - 1 for n in grid.shape]]
    assert only([np.nan, 0, 0]) == [] and only([0, np.inf, 0]) == [] and only([0, 0, -np.inf]) == []
    if grid == BevGrid():  # dyadic cell sizes: edges are exact in float, so an edge point is in the upper cell
        assert only(lo + grid.voxel_size * [1, 2, 3]) == [[1, 2, 3]]


def test_kernel_accumulates_into_out_and_rejects_bad_shape(test_grid):
    a = np.array([[0.5, 0.5, 0.0]])
    b = np.array([[-0.5, 0.5, 0.0]])
    occ = voxelize_points(b, test_grid, out=voxelize_points(a, test_grid))
    np.testing.assert_array_equal(occ, reference_occupancy(np.concatenate([a, b]), test_grid))
    assert occ.sum() == 2
    assert voxelize_points(np.zeros((0, 3)), test_grid).sum() == 0
    with pytest.raises(ValueError, match=r"\(N, >=3\)"):
        voxelize_points(np.zeros((4, 2)), test_grid)


@pytest.mark.parametrize("z", [5, 8, 11])
def test_pack_unpack_roundtrip(z):
    occ = np.random.default_rng(z).random((7, 6, z)) < 0.3
    packed = pack_occupancy(occ)
    assert packed.dtype == np.uint8 and packed.shape == (7, 6, (z + 7) // 8)
    np.testing.assert_array_equal(unpack_occupancy(packed, z), occ)
    # big bit order: z = 0 is the most significant bit of byte 0 (what data/README.md documents)
    one = np.zeros((1, 1, z), bool)
    one[0, 0, 0] = True
    assert pack_occupancy(one)[0, 0, 0] == 0b1000_0000


def test_transform_drop_box_matches_numpy_reference():
    rng = np.random.default_rng(1)
    box = np.array(EGO_BOX)
    raws = [np.concatenate([rng.uniform(-6, 6, (3000, 3)), rng.normal(size=(3000, 2))], 1).astype(np.float32)
            for _ in range(3)]
    keys = [make_transform(yaw_matrix(y), [dx, dy, 1.8]) for y, dx, dy in [(0.0, 0.9, 0.0), (0.1, -2.0, 0.3), (0.2, -4.1, 0.7)]]
    own = make_transform(yaw_matrix(0.0), [0.9, 0.0, 1.8])
    got = transform_drop_box(raws, keys, [own] * 3, box)

    def in_box(p):
        return np.all((p >= box[:, 0]) & (p < box[:, 1]), axis=1)

    ref = []
    for raw, key in zip(raws, keys):
        p_key = apply_4x4(key, raw[:, :3].astype(np.float64))
        p_own = apply_4x4(own, raw[:, :3].astype(np.float64))
        ref.append(p_key[~in_box(p_key) & ~in_box(p_own)])
    ref = np.concatenate(ref)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert len(ref) < sum(map(len, raws))  # the box really removed points
    np.testing.assert_allclose(got, ref, atol=1e-5)


# ---- the cache format and reader, on a hand-written cache ----
def _write_cache(path, grid, occs, valid=None, sweeps=1):
    tokens = [f"tok{i}" for i in range(len(occs))]
    packed_shape = (*grid.shape[:2], (grid.shape[2] + 7) // 8)
    w = CacheWriter(path, tokens, occupancy_spec(grid, sweeps, "v1.0-mini", "all", path.parent),
                    {"occupancy": Payload(packed_shape, "uint8")}, block_size=2)
    for start, stop in w.pending():
        w.write_block(start, stop, {"occupancy": pack_occupancy(np.stack(occs[start:stop]))},
                      None if valid is None else valid[start:stop])
    w.finalize()
    return tokens


def test_reader_roundtrip_and_refuses_other_grid_or_kind(tmp_path):
    rng = np.random.default_rng(2)
    occs = [rng.random(ODD_GRID.shape) < 0.2 for _ in range(3)]
    tokens = _write_cache(tmp_path / "occ.h5", ODD_GRID, occs, valid=[True, False, True])
    r = OccupancyReader(tmp_path / "occ.h5", ODD_GRID)
    assert r.tokens == ["tok0", "tok2"] and "tok1" not in r and "tok0" in r and len(r) == 2
    np.testing.assert_array_equal(r.get(tokens[2]), occs[2])
    assert r.get("tok0").dtype == np.bool_ and r.sweeps == 1
    with pytest.raises(OccfeatError, match="tok1"):
        r.get("tok1")
    with pytest.raises(OccfeatError) as e:
        OccupancyReader(tmp_path / "occ.h5", BevGrid())
    msg = str(e.value)
    assert "\n" not in msg and ODD_GRID.to_json() in msg and BevGrid().to_json() in msg

    w = CacheWriter(tmp_path / "feat.h5", ["a"], {"kind": "features"}, {"x": Payload((1,), "uint8")}, 1)
    w.write_block(0, 1, {"x": np.zeros((1, 1))})
    w.finalize()
    with pytest.raises(OccfeatError, match="kind"):
        OccupancyReader(tmp_path / "feat.h5", ODD_GRID)
    with pytest.raises(OccfeatError, match="not found"):
        OccupancyReader(tmp_path / "nope.h5", ODD_GRID)
