"""The BEV / voxel grid: the one home of bounds, voxel size and shape.

Frame: the **ego frame at the LiDAR key-frame timestamp** (x forward, y left, z up; Occ3D/BEVFusion
convention) at evaluation. While training, Simple-BEV's random reference camera moves the grid into a frame
R drawn per sample (``ref_T_ego``, :func:`occfeat.geometry.reference_frame`); every target is computed
exactly in R, and the networks receive ``cam_T_ego`` already composed with it. Index ``[ix, iy, iz]`` counts from the minimum bound; cells are half-open
``[min + i*size, min + (i+1)*size)``.

Tensor layouts used everywhere in occfeat (stated once, here):

- occupancy grids on disk and in memory: ``(X, Y, Z)`` (batched ``(B, X, Y, Z)``)
- BEV feature maps: ``(B, C, X, Y)``
- 3D feature volumes inside networks: ``(B, C, Z, X, Y)`` (the unsplat head's reshape, paper §3.2)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from occfeat.errors import OccfeatError

Bounds = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]

# Simple-BEV's grid (paper §4.1): 100 m x 100 m at 0.5 m, 8 height bins over 10 m, in the ego frame.
# Simple-BEV (train_nuscenes.py) builds its grid in the CAM_FRONT optical frame (x right, y down,
# z forward): bounds x, z in [-50, 50], y in [-5, 5], shifted by `scene_centroid_y = 1.0  # down 1 meter`
# (utils/vox.py adds the centroid to the bounds), so y_cam in [-4, 6]. nuScenes' CAM_FRONT is mounted
# 1.70 m ahead of the ego origin and 1.51 m above it (calibrated_sensor; the synthetic rig uses the same,
# occfeat/data/synth/rig.py), looking level, so ego z = 1.51 - y_cam in [-4.49, 5.51]; we round to
# [-4.5, 5.5]. The ground (z = 0) then lies 60 % up the bin [-0.75, 0.5), as in Simple-BEV.
# XY: Simple-BEV's grid is centred on CAM_FRONT (x = 1.70 m); we centre it 1.5 m ahead of the ego origin,
# x in [-48.5, 51.5]: within 0.2 m (0.4 cell) of Simple-BEV, while every cell edge stays on the 0.5 m
# lattice of the ego frame, so edges are exact in floating point (CAM_FRONT's x also varies by a few cm
# between nuScenes logs). All numbers are in the ego frame at the LiDAR key-frame time.
DEFAULT_BOUNDS: Bounds = ((-48.5, 51.5), (-50.0, 50.0), (-4.5, 5.5))
DEFAULT_SHAPE: tuple[int, int, int] = (200, 200, 8)


@dataclass(frozen=True)
class BevGrid:
    """Axis-aligned voxel grid in the ego frame.

    ``bounds`` = ((xmin, xmax), (ymin, ymax), (zmin, zmax)) in metres, ``shape`` = (X, Y, Z) cells.
    """

    bounds: Bounds = DEFAULT_BOUNDS
    shape: tuple[int, int, int] = DEFAULT_SHAPE

    def __post_init__(self) -> None:
        bounds = tuple((float(lo), float(hi)) for lo, hi in self.bounds)
        shape = tuple(int(n) for n in self.shape)
        if len(bounds) != 3 or len(shape) != 3:
            raise OccfeatError(f"grid needs 3 bounds and 3 sizes, got bounds={self.bounds} shape={self.shape}")
        for (lo, hi), n in zip(bounds, shape):
            if not hi > lo or n < 1:
                raise OccfeatError(f"grid axis [{lo}, {hi}] with {n} cells is empty; need max > min and >= 1 cell")
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "shape", shape)

    # ---- derived values (computed, never repeated elsewhere) ----
    @property
    def lower(self) -> np.ndarray:
        """(3,) minimum corner."""
        return np.array([b[0] for b in self.bounds], dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        """(3,) maximum corner."""
        return np.array([b[1] for b in self.bounds], dtype=np.float64)

    @property
    def voxel_size(self) -> np.ndarray:
        """(3,) cell edge lengths in metres."""
        return (self.upper - self.lower) / np.array(self.shape, dtype=np.float64)

    def axis_centers(self, axis: int) -> np.ndarray:
        """Cell-centre coordinates along one axis, shape (shape[axis],)."""
        n = self.shape[axis]
        return self.lower[axis] + (np.arange(n) + 0.5) * self.voxel_size[axis]

    def voxel_centers(self) -> np.ndarray:
        """(X, Y, Z, 3) float64 centres of every voxel, ego frame."""
        xs, ys, zs = (self.axis_centers(a) for a in range(3))
        return np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1)

    def bev_centers(self) -> np.ndarray:
        """(X, Y, 2) centres of the BEV cells (x, y), ego frame."""
        xs, ys = self.axis_centers(0), self.axis_centers(1)
        return np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)

    def points_to_index(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel indices of ego-frame points.

        points: (N, >=3). Returns (idx (N, 3) int64, valid (N,) bool); NaN or out-of-bounds points are
        invalid (their idx is meaningless). Half-open cells: a point exactly on ``max`` is outside.
        """
        p = np.asarray(points, dtype=np.float64)[:, :3]
        rel = (p - self.lower) / self.voxel_size
        with np.errstate(invalid="ignore"):
            idx = np.floor(rel)
            valid = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)
        idx = np.where(valid[:, None], idx, 0).astype(np.int64)
        return idx, valid

    # ---- serialisation: caches store this and refuse to load under another grid ----
    def spec(self) -> dict:
        """JSON-able spec: {"bounds": [[xmin,xmax],...], "shape": [X,Y,Z]}."""
        return {"bounds": [list(b) for b in self.bounds], "shape": list(self.shape)}

    def to_json(self) -> str:
        return json.dumps(self.spec(), sort_keys=True)

    @classmethod
    def from_spec(cls, spec: dict) -> "BevGrid":
        try:
            return cls(bounds=tuple(tuple(b) for b in spec["bounds"]), shape=tuple(spec["shape"]))
        except (KeyError, TypeError, ValueError) as e:
            raise OccfeatError(f"bad grid spec {spec!r}: needs 'bounds' [[min,max]x3] and 'shape' [X,Y,Z]") from e

    @classmethod
    def from_json(cls, text: str) -> "BevGrid":
        try:
            return cls.from_spec(json.loads(text))
        except json.JSONDecodeError as e:
            raise OccfeatError(f"bad grid JSON: {e}") from e

    @classmethod
    def load(cls, what: str | Path | None) -> "BevGrid":
        """``None``/``"default"`` → the paper's grid; otherwise a path to a JSON spec file."""
        if what is None or str(what) == "default":
            return cls()
        path = Path(what)
        if not path.is_file():
            raise OccfeatError(f"grid file {path} not found; pass 'default' or a JSON file with bounds and shape")
        return cls.from_json(path.read_text())
