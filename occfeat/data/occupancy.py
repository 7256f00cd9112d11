"""Occupancy grids: the numba kernels that make them and the reader every later stage uses.

A voxel of the :class:`~occfeat.grid.BevGrid` is occupied when at least one LiDAR point falls inside it
(paper §3.2, Fig. 3). Grids are ``(X, Y, Z)`` bool, index ``[x, y, z]`` from the minimum bound.

On disk (written by :func:`occfeat.data.voxelize.build_occupancy`, schema in data/README.md; format 2)
the cache keeps each sample's ego-frame LiDAR points (after the ego-body drop, float32, cropped to
what any camera's reference frame can put on the grid, :func:`crop_to_reference_grids`), not a grid:
Simple-BEV's random reference camera needs the occupancy EXACTLY in a frame drawn per sample, so
:meth:`OccupancyReader.get` moves the points into that frame and voxelizes them (in the DataLoader
worker; ~1 ms per sample with the numba kernel). Format 1 (bit-packed ego-frame grids) is refused.
"""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np

from occfeat.data.store import CacheReader
from occfeat.errors import OccfeatError
from occfeat.geometry import apply_4x4, reference_frame
from occfeat.grid import BevGrid

KIND = "occupancy"
# Format 2: ragged ego-frame points per sample (format 1 stored bit-packed grids in the ego frame).
FORMAT = 2
# Margin (m) around each reference frame's grid box kept by the crop: a point's coordinates in R are
# recomputed by the reader in float64 from float32 points, so none near an edge may be lost.
CROP_MARGIN = 0.01


# ---- kernels ----
@numba.njit(cache=True, nogil=True, inline="always")
def _cell(p, lo, size, inv):  # pragma: no cover - compiled
    # floor((p - lo) / size) exactly as BevGrid.points_to_index computes it in float64, but with a
    # multiply (float64 division is the kernel's bottleneck): the product differs from the quotient by
    # at most a couple of ulps (~1e-13 here), so only a value that close to an integer can floor
    # differently - redo those with the division.
    r = (p - lo) * inv
    f = np.floor(r)
    if r - f < 1e-9 or r - f > 1.0 - 1e-9:
        f = np.floor((p - lo) / size)
    return f


@numba.njit(cache=True, nogil=True)
def _mark_occupied(points, lower, size, nx, ny, nz, out, packed):  # pragma: no cover - compiled
    # The range test runs on the float before any int cast: NaN fails every comparison and +-inf
    # fails the range, so neither reaches the (undefined) cast. Cells are half-open.
    inv_x, inv_y, inv_z = 1.0 / size[0], 1.0 / size[1], 1.0 / size[2]
    for i in range(points.shape[0]):
        fx = _cell(np.float64(points[i, 0]), lower[0], size[0], inv_x)
        if not (fx >= 0.0 and fx < nx):
            continue
        fy = _cell(np.float64(points[i, 1]), lower[1], size[1], inv_y)
        if not (fy >= 0.0 and fy < ny):
            continue
        fz = _cell(np.float64(points[i, 2]), lower[2], size[2], inv_z)
        if not (fz >= 0.0 and fz < nz):
            continue
        iz = int(fz)
        if packed:  # (X, Y, ceil(Z/8)) uint8, big bit order: z = 0 is the top bit of byte 0
            out[int(fx), int(fy), iz >> 3] |= np.uint8(128 >> (iz & 7))
        else:  # (X, Y, Z) bool viewed as uint8
            out[int(fx), int(fy), iz] = 1


def voxelize_points(points: np.ndarray, grid: BevGrid, out: np.ndarray | None = None) -> np.ndarray:
    """Occupancy of ego-frame points on ``grid``.

    points: (N, >=3) float32/float64, ego frame (extra columns ignored). NaN, inf and out-of-bounds
    points are ignored; cells are half-open exactly as :meth:`BevGrid.points_to_index`.
    out: optional (X, Y, Z) bool array to OR into (e.g. to accumulate). Returns (X, Y, Z) bool.
    """
    if out is None:
        out = np.zeros(grid.shape, dtype=np.bool_)
    _run_kernel(points, grid, out.view(np.uint8), False)
    return out


def voxelize_points_packed(points: np.ndarray, grid: BevGrid) -> np.ndarray:
    """Same occupancy, written straight into the on-disk format: (X, Y, ceil(Z/8)) uint8, equal to
    ``pack_occupancy(voxelize_points(points, grid))`` without the 8x larger bool grid in between."""
    out = np.zeros((*grid.shape[:2], (grid.shape[2] + 7) // 8), dtype=np.uint8)
    _run_kernel(points, grid, out, True)
    return out


def _run_kernel(points: np.ndarray, grid: BevGrid, out: np.ndarray, packed: bool) -> None:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got {points.shape}")
    nx, ny, nz = grid.shape
    _mark_occupied(points, grid.lower, grid.voxel_size, nx, ny, nz, out, packed)


@numba.njit(cache=True, inline="always")
def _apply_in_box(T, x, y, z, box):  # pragma: no cover - compiled
    """(T @ [x, y, z, 1])[:3] and whether it lies in the half-open box."""
    px = T[0, 0] * x + T[0, 1] * y + T[0, 2] * z + T[0, 3]
    py = T[1, 0] * x + T[1, 1] * y + T[1, 2] * z + T[1, 3]
    pz = T[2, 0] * x + T[2, 1] * y + T[2, 2] * z + T[2, 3]
    inside = box[0, 0] <= px < box[0, 1] and box[1, 0] <= py < box[1, 1] and box[2, 0] <= pz < box[2, 1]
    return px, py, pz, inside


@numba.njit(cache=True, nogil=True)
def _transform_drop_box(raw, key_T_lidar, own_T_lidar, box, out, start):  # pragma: no cover - compiled
    # One pass over a sweep: move each point into the key-frame ego frame (key_T_lidar) and into the
    # ego frame of its own timestamp (own_T_lidar); drop it when it lies in the ego box in either frame
    # (the car now, and the car when the sweep was taken - its own roof/body returns). Returns the new
    # write position in ``out``.
    k = start
    for i in range(raw.shape[0]):
        x, y, z = np.float64(raw[i, 0]), np.float64(raw[i, 1]), np.float64(raw[i, 2])
        _, _, _, own_inside = _apply_in_box(own_T_lidar, x, y, z, box)
        if own_inside:
            continue
        ex, ey, ez, key_inside = _apply_in_box(key_T_lidar, x, y, z, box)
        if key_inside:
            continue
        out[k, 0] = ex
        out[k, 1] = ey
        out[k, 2] = ez
        k += 1
    return k


def transform_drop_box(
    raws: list[np.ndarray], key_T_lidars: list[np.ndarray], own_T_lidars: list[np.ndarray], box: np.ndarray
) -> np.ndarray:
    """Concatenate sweeps in the key-frame ego frame, without ego-body returns.

    raws: per sweep (N_i, >=3) float32 sensor-frame points; key_T_lidars / own_T_lidars: per sweep (4, 4)
    into the key-frame ego frame / the sweep's own ego frame; box: (3, 2) [[min, max] per axis], half-open.
    Returns (M, 3) float32, M <= sum N_i.
    """
    out = np.empty((sum(len(r) for r in raws), 3), dtype=np.float32)
    k = 0
    for raw, key_T, own_T in zip(raws, key_T_lidars, own_T_lidars):
        k = _transform_drop_box(raw, np.ascontiguousarray(key_T, np.float64), np.ascontiguousarray(own_T, np.float64), box, out, k)
    return out[:k]


# ---- reference frames ----
def points_in_frame(points: np.ndarray, ref_T_ego: np.ndarray | None) -> np.ndarray:
    """Ego-frame points (N, 3) in the frame R (``ref_T_ego`` (4, 4); None = identity, the points as they are)."""
    if ref_T_ego is None or np.array_equal(ref_T_ego, np.eye(4)):
        return points
    return apply_4x4(np.asarray(ref_T_ego, np.float64), points.astype(np.float64))


def crop_to_reference_grids(points: np.ndarray, grid: BevGrid, cam_T_ego: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """The points (N, 3) that lie in ``grid`` (plus ``margin`` m) in the reference frame of ANY camera
    (:func:`occfeat.geometry.reference_frame`, cam_T_ego (S, 4, 4) the key frame's cameras, CAMERAS order):
    everything a random reference camera can put on the grid, whichever camera the recipe draws."""
    lo, hi = grid.lower - margin, grid.upper + margin
    keep = np.zeros(len(points), bool)
    for s in range(len(cam_T_ego)):
        p = points_in_frame(points, reference_frame(cam_T_ego, s))
        keep |= np.all((p >= lo) & (p <= hi), axis=1)
    return points[keep]


# ---- storage format ----
def pack_occupancy(occ: np.ndarray) -> np.ndarray:
    """(..., Z) bool → (..., ceil(Z/8)) uint8, bit-packed along z (big bit order): ``np.packbits(occ, axis=-1)``."""
    z = occ.shape[-1]
    if z % 8 == 0 and occ.flags.c_contiguous:
        # Whole bytes per z column: packing the flat C-order array gives the same bytes ~40x faster
        # (np.packbits along a short last axis loops per column).
        return np.packbits(occ.reshape(-1), bitorder="big").reshape(*occ.shape[:-1], z // 8)
    return np.packbits(occ, axis=-1, bitorder="big")


def unpack_occupancy(packed: np.ndarray, z: int) -> np.ndarray:
    """Inverse of :func:`pack_occupancy`: (..., ceil(Z/8)) uint8 → (..., Z) bool."""
    if z % 8 == 0:
        packed = np.ascontiguousarray(packed)
        return np.unpackbits(packed.reshape(-1), bitorder="big").reshape(*packed.shape[:-1], z).view(np.bool_)
    return np.unpackbits(packed, axis=-1, count=z, bitorder="big").view(np.bool_)


class OccupancyReader:
    """Occupancy of a finished ``occfeat voxelize`` cache, by sample token, in any reference frame.

    Refuses a file that is not an occupancy cache, one of format 1 (packed grids) or one built on another
    grid (one-line errors). Safe to create before DataLoader workers fork (the HDF5 file opens lazily
    per process).
    """

    def __init__(self, path: str | Path, grid: BevGrid):
        self.path = Path(path)
        self._cache = CacheReader(self.path, expect={"kind": KIND}, keys=["kind"], made_by="occfeat voxelize")
        spec = self._cache.spec
        if spec.get("format") != FORMAT:
            raise OccfeatError(
                f"occupancy cache {self.path} has format {spec.get('format', 1)} (packed ego-frame grids), this version reads "
                f"format {FORMAT} (LiDAR points, for targets in a random reference frame); rerun `occfeat voxelize` to rebuild it"
            )
        have = BevGrid.from_spec(spec["grid"])
        if have != grid:
            raise OccfeatError(
                f"occupancy cache {self.path} was built on grid {have.to_json()} but this run uses grid "
                f"{grid.to_json()}; rebuild it with `occfeat voxelize --recipe RECIPE` (the recipe of this run) or pass the matching grid"
            )
        self.grid = grid
        self.sweeps: int = int(spec["sweeps"])
        self.spec = spec

    @property
    def tokens(self) -> list[str]:
        """Tokens with a grid (samples skipped as bad input left out), in the cache's order."""
        return [t for t, i in self._cache.row.items() if self._cache.valid[i]]

    def __contains__(self, token: str) -> bool:
        return token in self._cache

    def __len__(self) -> int:
        return int(self._cache.valid.sum())

    def points(self, token: str) -> np.ndarray:
        """(N, 3) float32 ego-frame LiDAR points of one sample (ego body dropped, cropped as stored)."""
        return self._cache.get("points", token).reshape(-1, 3)

    def get(self, token: str, ref_T_ego: np.ndarray | None = None) -> np.ndarray:
        """(X, Y, Z) bool occupancy of one sample on the grid placed in frame R (``ref_T_ego`` (4, 4),
        None = the ego frame): the stored points moved into R, then voxelized."""
        return voxelize_points(points_in_frame(self.points(token), ref_T_ego), self.grid)
