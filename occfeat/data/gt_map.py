"""Map-layer ground truth in any reference frame R, from the devkit map of the scene's log location.

Rule: a cell is set iff its centre lies strictly inside a polygon of the class (as the devkit's
``layers_on_point``), or within ``divider_width / 2`` of a line of the class (the line's buffer). No
anti-aliasing, so a shape smaller than a cell can vanish. Cell centres of R are taken on R's ground plane
(z = 0) and moved to the map frame through ``global_T_ego @ inv(ref_T_ego)``; the map is 2-D. Lines are
rasterised from their geometry here because ``get_map_mask`` on line layers crashes with devkit 1.2.0 +
Shapely 2. ``valid`` is all True. Classes and layers: :attr:`occfeat.data.gt.GtConfig.map_layers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely

from occfeat.data.gt import LINE_LAYERS, GtConfig
from occfeat.errors import OccfeatError
from occfeat.geometry import apply_4x4, invert_rigid
from occfeat.grid import BevGrid


class MapRasterizer:
    """Class masks at map-frame points. Loads each location's devkit map once and keeps its geometries
    (built with the devkit's ``extract_polygon``/``extract_line``) in an STRtree, so a sample costs a
    tree query and vectorised point-in-polygon tests. The loaded maps are not pickled: each DataLoader
    worker loads them once, on its first sample of that location."""

    def __init__(self, dataroot: str | Path, cfg: GtConfig = GtConfig()):
        self.dataroot = Path(dataroot)
        self.cfg = cfg
        self._maps: dict[str, dict[str, tuple[shapely.STRtree, list]]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    def _layers(self, location: str) -> dict[str, tuple[shapely.STRtree, list]]:
        if location not in self._maps:
            from nuscenes.map_expansion.map_api import NuScenesMap

            path = self.dataroot / "maps" / "expansion" / f"{location}.json"
            if not path.is_file():
                raise OccfeatError(f"map {path} not found; install the nuScenes map expansion into {self.dataroot}/maps/expansion")
            try:
                nmap = NuScenesMap(dataroot=str(self.dataroot), map_name=location)
            except (AssertionError, KeyError, ValueError) as e:
                raise OccfeatError(f"nuscenes-devkit cannot load map {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
            per_class = {}
            for cls, layers in self.cfg.map_layers.items():
                geoms = []
                for layer in layers:
                    for record in getattr(nmap, layer):
                        if layer in LINE_LAYERS:
                            # A line drawn w wide = its buffer by w/2: one point-in-polygon test per cell.
                            geoms.append(nmap.extract_line(record["line_token"]).buffer(self.cfg.divider_width / 2))
                            continue
                        tokens = record["polygon_tokens"] if layer == "drivable_area" else [record["polygon_token"]]
                        for t in tokens:
                            g = nmap.extract_polygon(t)
                            geoms.append(g if g.is_valid else shapely.make_valid(g))
                geoms = [g for g in geoms if not g.is_empty]
                shapely.prepare(geoms)
                per_class[cls] = (shapely.STRtree(geoms), geoms)
            self._maps[location] = per_class
        return self._maps[location]

    def masks(self, location: str, gxy: np.ndarray) -> np.ndarray:
        """(C, N) bool class masks at map-frame points ``gxy`` (N, 2), classes in config order."""
        layers = self._layers(location)
        gx, gy = gxy[:, 0], gxy[:, 1]
        out = np.zeros((len(layers), len(gxy)), dtype=bool)
        area = shapely.box(gx.min(), gy.min(), gx.max(), gy.max())
        for c, (tree, geoms) in enumerate(layers.values()):
            for i in tree.query(area):
                # Test only the points inside this geometry's bounding box: most geometries cover a corner.
                x0, y0, x1, y1 = geoms[i].bounds
                sel = np.flatnonzero((gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1))
                if sel.size:
                    out[c, sel] |= shapely.contains_xy(geoms[i], gx[sel], gy[sel])
        return out


def map_points(grid: BevGrid, global_T_ego: np.ndarray, ref_T_ego: np.ndarray | None = None) -> np.ndarray:
    """(X*Y, 2) map-frame positions of the BEV cell centres of R (z = 0 in R), in (X, Y) C order."""
    c = grid.bev_centers().reshape(-1, 2)
    ground = np.concatenate([c, np.zeros((len(c), 1))], axis=1)
    global_T_ref = np.asarray(global_T_ego, dtype=np.float64)
    if ref_T_ego is not None:
        global_T_ref = global_T_ref @ invert_rigid(np.asarray(ref_T_ego, dtype=np.float64))
    return apply_4x4(global_T_ref, ground)[:, :2]


class MapGt:
    """Map targets of a sample in any reference frame: ``gt(token, ref_T_ego)`` → ``target (C, X, Y)``
    bool, ``valid (X, Y)`` bool (all True). Holds each sample's (location, global_T_ego) and a
    :class:`MapRasterizer`; picklable, each worker loads the maps once."""

    def __init__(self, poses: dict[str, tuple[str, np.ndarray]], dataroot: str | Path, grid: BevGrid, cfg: GtConfig = GtConfig()):
        self.poses, self.grid, self.cfg = poses, grid, cfg
        self.raster = MapRasterizer(dataroot, cfg)

    @classmethod
    def from_index(cls, index, grid: BevGrid, cfg: GtConfig = GtConfig()) -> "MapGt":
        poses = {}
        for token in index.tokens:
            rec = index.record(token)
            poses[token] = (rec.location, np.asarray(rec.global_T_ego, dtype=np.float64))
        return cls(poses, index.dataroot, grid, cfg)

    def __call__(self, token: str, ref_T_ego: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if token not in self.poses:
            raise OccfeatError(f"sample {token} is not in this split's map ground truth; check --split")
        location, global_T_ego = self.poses[token]
        masks = self.raster.masks(location, map_points(self.grid, global_T_ego, ref_T_ego))
        return {"target": masks.reshape(len(masks), *self.grid.shape[:2]), "valid": np.ones(self.grid.shape[:2], dtype=bool)}
