"""Img-ALSO's pretext geometry: LiDAR decimation, line-of-sight queries and their BEV supports.

ALSO (Boulch et al., CVPR 2023; valeoai/ALSO) learns an implicit occupancy function from one LiDAR
sweep: query points are drawn on the sensor's lines of sight, just *behind* a return (inside the surface:
occupied) or *in front of* it (empty space), and each query is decoded from the backbone's latents within a
reconstruction radius. The OccFeat paper's Img-ALSO baseline (§4.2) keeps ALSO's supervision and its
hyper-parameters (decimation grid 10 cm, maximal distance-to-LiDAR-point for a query 10 cm, reconstruction
radius 1 m) and swaps the LiDAR backbone for a camera BEV network. What was taken from ALSO and what was
adapted, with file:line references, is in docs/fidelity.md (section 4).

Split of the work: :func:`decimate` and :func:`line_of_sight_queries` are numpy and run per sample in the
Dataset worker (deterministic given a ``np.random.Generator``); the pretraining collate pads them (``occfeat.train.pretrain_data``);
:func:`query_supports` is torch and runs on the training device inside the decoder.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid

# ALSO's hyper-parameters as the OccFeat paper states them for Img-ALSO (§4.2); defaults of the functions
# below and of the objective's config, which should import them rather than restate the numbers.
DECIMATION_CELL = 0.10
"""Edge (m) of the decimation grid: one LiDAR point per 10 cm cell feeds the query sampling."""
MAX_QUERY_DIST = 0.10
"""Largest distance (m) along the line of sight between a near-surface query and its LiDAR point."""
RECONSTRUCTION_RADIUS = 1.0
"""Horizontal radius (m) within which a query is decoded from each BEV cell's feature."""
N_QUERIES = 4096
"""Queries per sample: ALSO's ``non_manifold_points`` for its SECOND (BEV) configs."""
NO_INTENSITY = -1.0
"""Intensity target of a query that has none (ALSO's marker for its far empty-space queries)."""


class LineOfSightQueries(NamedTuple):
    """One sample's queries, in the frame of the input points (ordered: behind, in front, far)."""

    points: np.ndarray
    """(M, 3) float32 query positions."""
    occupied: np.ndarray
    """(M,) uint8: 1 = behind its LiDAR return (inside the surface), 0 = empty space."""
    intensity: np.ndarray
    """(M,) float32 intensity target: the return's intensity for near-surface queries, ``NO_INTENSITY``
    for far empty-space queries or when no intensities were given."""


def decimate(points: np.ndarray, cell: float = DECIMATION_CELL) -> np.ndarray:
    """Indices of the points kept by a ``cell``-metre decimation grid: one point per occupied cell.

    points: (N, >=3). Cells are ``floor(p / cell)`` (half-open, anchored at the frame's origin); the
    point kept in a cell is the first one in input order (as ALSO's ``np.unique(..., return_index=True)``).
    Returns (K,) int64 indices in increasing order, so ``points[idx]`` keeps the input order.
    """
    if not cell > 0:
        raise OccfeatError(f"decimation cell must be > 0 m, got {cell}")
    p = np.asarray(points)[:, :3]
    if len(p) == 0:
        return np.zeros(0, dtype=np.int64)
    ijk = np.floor(p.astype(np.float64) / cell).astype(np.int64)
    ijk -= ijk.min(axis=0)
    span = ijk.max(axis=0) + 1
    key = (ijk[:, 0] * span[1] + ijk[:, 1]) * span[2] + ijk[:, 2]  # one int64 per cell: unique is a 1-D sort
    _, first = np.unique(key, return_index=True)
    return np.sort(first).astype(np.int64)


def line_of_sight_queries(
    points: np.ndarray,
    origin: np.ndarray,
    rng: np.random.Generator,
    n_queries: int = N_QUERIES,
    max_dist: float = MAX_QUERY_DIST,
    intensities: np.ndarray | None = None,
) -> LineOfSightQueries:
    """ALSO's query points on the LiDAR lines of sight (sensor ``origin`` → each return).

    points: (N, 3) LiDAR returns (already decimated, see :func:`decimate`), origin: (3,) the sensor in the
    same frame, intensities: optional (N,) per-return intensity in [0, 1] (ALSO divides nuScenes' 0-255
    by 255). The queries are three groups, each drawn from its own random subset of the returns (without
    replacement within a group; fewer when N is smaller):

    - ``n - 2 * (n // 3)`` *behind*: ``p + u * max_dist * d``, u ~ U[0, 1), d the unit ray → occupied (1);
    - ``n // 3`` *in front*: ``p - u * max_dist * d`` → empty (0);
    - ``n // 3`` *far*: ``origin + u * (p - origin)``, anywhere on the ray before the return → empty (0).

    Returns :class:`LineOfSightQueries` (float32 points, uint8 labels, float32 intensity targets).
    """
    pts = np.asarray(points, dtype=np.float64)[:, :3]
    o = np.asarray(origin, dtype=np.float64).reshape(3)
    if intensities is not None and len(intensities) != len(pts):
        raise OccfeatError(f"got {len(intensities)} intensities for {len(pts)} LiDAR points; pass one per point")
    ray = pts - o
    length = np.linalg.norm(ray, axis=1, keepdims=True)
    keep = length[:, 0] > 1e-6  # a return at the sensor has no direction
    n = len(pts)
    n_far = n_front = n_queries // 3
    n_behind = n_queries - n_front - n_far
    pick = [rng.permutation(n)[:k] for k in (n_behind, n_front, n_far)]
    pick = [i[keep[i]] for i in pick]
    direction = ray / np.where(length > 0, length, 1.0)
    u = [rng.random((len(i), 1)) for i in pick]
    behind = pts[pick[0]] + max_dist * u[0] * direction[pick[0]]
    front = pts[pick[1]] - max_dist * u[1] * direction[pick[1]]
    far = o + u[2] * ray[pick[2]]
    occupied = np.concatenate([np.ones(len(pick[0])), np.zeros(len(pick[1]) + len(pick[2]))])
    if intensities is None:
        intensity = np.full(len(occupied), NO_INTENSITY)
    else:
        inten = np.asarray(intensities, dtype=np.float64)
        intensity = np.concatenate([inten[pick[0]], inten[pick[1]], np.full(len(pick[2]), NO_INTENSITY)])
    return LineOfSightQueries(
        points=np.concatenate([behind, front, far]).astype(np.float32),
        occupied=occupied.astype(np.uint8),
        intensity=intensity.astype(np.float32),
    )


def support_window(grid: BevGrid, radius: float = RECONSTRUCTION_RADIUS) -> np.ndarray:
    """(K, 2) int64 cell offsets (dx, dy) around a query's own cell that can hold a support.

    A query lies within half a cell of its cell's centre, so a cell ``k`` cells away on an axis is farther
    than ``radius`` as soon as ``k * size > radius + size / 2``: the window is ``|k| <= floor(r/size + 1/2)``.
    """
    if not radius > 0:
        raise OccfeatError(f"reconstruction radius must be > 0 m, got {radius}")
    kx, ky = (int(math.floor(radius / float(grid.voxel_size[a]) + 0.5)) for a in (0, 1))
    dx, dy = np.meshgrid(np.arange(-kx, kx + 1), np.arange(-ky, ky + 1), indexing="ij")
    return np.stack([dx.ravel(), dy.ravel()], axis=1).astype(np.int64)


def query_supports(
    queries: torch.Tensor, grid: BevGrid, radius: float = RECONSTRUCTION_RADIUS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The BEV cells each query is decoded from: every cell whose centre is within ``radius`` in (x, y).

    This is ALSO's ``column_search`` for BEV backbones (latents on a plane, radius search in x, y only).
    queries: (B, M, 3) in the grid's frame. Returns

    - ``cells`` (B, M, K) int64 flat cell index ``ix * Y + iy`` (0 where not a support),
    - ``offsets`` (B, M, K, 3) float32 query − support position, the support at z = 0 of the grid's frame
      (SECOND's BEV latents sit at z = 0 of the LiDAR frame, pcdet_models.py), so the third value is the
      query's height,
    - ``mask`` (B, M, K) bool: the cell is inside the grid and its centre within ``radius`` (inclusive).

    K is the window of :func:`support_window` (25 on a 0.5 m grid, 9 on a 1 m grid with r = 1 m); a query
    farther than ``radius`` from every cell centre (outside the grid) has an all-False row.
    """
    dev = queries.device
    window = torch.as_tensor(support_window(grid, radius), device=dev)  # (K, 2)
    lower = torch.as_tensor(grid.lower[:2], dtype=torch.float64, device=dev)
    size = torch.as_tensor(grid.voxel_size[:2], dtype=torch.float64, device=dev)
    # The query's own cell and its offset from that cell's centre in float64 (coordinates can be large,
    # offsets are small); the per-support offsets then follow in float32 from the window.
    q = queries[..., :2].to(torch.float64)
    own = torch.floor((q - lower) / size).clamp(-(2**40), 2**40)  # (B, M, 2)
    from_own = (q - lower - (own + 0.5) * size).to(torch.float32)
    own = own.to(torch.int64)
    dxy = from_own[..., None, :] - (window * size).to(torch.float32)  # (B, M, K, 2)
    idx = own[..., None, :] + window  # (B, M, K, 2)
    shape = torch.as_tensor(grid.shape[:2], device=dev)
    inside = ((idx >= 0) & (idx < shape)).all(dim=-1)
    mask = inside & (dxy.square().sum(dim=-1) <= radius * radius)
    cells = torch.where(mask, idx[..., 0] * grid.shape[1] + idx[..., 1], torch.zeros_like(idx[..., 0]))
    dz = queries[..., None, 2:3].to(torch.float32).expand(*dxy.shape[:-1], 1)
    offsets = torch.cat([dxy, dz], dim=-1)
    return cells, offsets, mask
