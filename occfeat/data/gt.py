"""BEV segmentation ground truth: vehicle footprints and map layers on the BEV grid, and their cache.

Frame: the ego frame at the key-frame LiDAR timestamp (the grid's frame, see ``occfeat/grid.py``).
Layout: ``target (C, X, Y)`` bool and ``valid (X, Y)`` bool per sample.

Rasterisation rule, the same for every class: **a cell is set iff its centre lies inside the shape**
(strictly inside, as the devkit's ``layers_on_point``; a line counts as its buffer by half the line
width, i.e. the cells within w/2 of it). No anti-aliasing and no "any overlap" rule, so a box or polygon smaller than a cell can vanish.

- ``vehicle`` (1 class): footprints of every ``vehicle.*`` box of the key frame, read with the devkit
  (``nusc.get_boxes`` → :class:`nuscenes.utils.data_classes.Box`, moved into the ego frame); the
  footprint is the box's bottom face projected on the ground. Boxes with visibility token ``'1'``
  (0-40 % visible in the cameras) are not targets, and ``valid`` is False on their footprint, so they
  count in neither the loss nor the IoU: the Simple-BEV/LSS protocol.
- ``map`` (5 classes, :data:`MAP_CLASSES` order): drivable_area, walkway, ped_crossing and
  carpark_area polygons, and road_divider + lane_divider lines drawn :data:`GtConfig.divider_width`
  metres wide, from the devkit map of the scene's log location. Cell centres are taken on the ego's
  ground plane (z = 0) and moved into the map frame through the full ego pose; the map is 2-D. Lines
  are rasterised from their geometry here because ``get_map_mask`` on line layers crashes with
  devkit 1.2.0 + Shapely 2 (DESIGN.md). ``valid`` is all True.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from tqdm import tqdm

from occfeat.data.index import SampleIndex, SampleRecord
from occfeat.data.store import CacheReader, CacheWriter, Payload
from occfeat.errors import OccfeatError
from occfeat.geometry import apply_4x4, invert_rigid
from occfeat.grid import BevGrid

# Class names per task, in channel order: the one home of these names.
MAP_LAYERS: dict[str, tuple[str, ...]] = {
    "road": ("drivable_area",),
    "sidewalk": ("walkway",),
    "crosswalk": ("ped_crossing",),
    "parking": ("carpark_area",),
    "divider": ("road_divider", "lane_divider"),
}
LINE_LAYERS = ("road_divider", "lane_divider")
MAP_CLASSES: tuple[str, ...] = tuple(MAP_LAYERS)
TASK_CLASSES: dict[str, tuple[str, ...]] = {"vehicle": ("vehicle",), "map": MAP_CLASSES}
VEHICLE_PREFIX = "vehicle."
GT_FORMAT = 1  # bump when the rasterisation changes, so old caches are refused


@dataclass(frozen=True)
class GtConfig:
    """How ground truth is drawn (stored in the cache spec)."""

    divider_width: float = 1.0
    """Width in metres of the divider lines (2 cells on the paper's 0.5 m grid)."""
    invisible: tuple[str, ...] = ("1",)
    """Visibility tokens of vehicle boxes excluded from loss and IoU (nuScenes '1' = 0-40 %)."""


def check_task(task: str) -> tuple[str, ...]:
    """The task's class names; one-line error for an unknown task."""
    if task not in TASK_CLASSES:
        raise OccfeatError(f"unknown task '{task}'; pick one of {', '.join(TASK_CLASSES)}")
    return TASK_CLASSES[task]


# ---------------------------------------------------------------- vehicle boxes


def rasterize_footprints(corners_xy: np.ndarray, grid: BevGrid) -> np.ndarray:
    """(X, Y) bool: cells whose centre lies inside any of the convex quads ``corners_xy`` (N, 4, 2).

    Corners go around the quad (either direction); a centre on an edge counts as inside.
    """
    out = np.zeros(grid.shape[:2], dtype=bool)
    xs, ys = grid.axis_centers(0), grid.axis_centers(1)
    for quad in np.asarray(corners_xy, dtype=np.float64).reshape(-1, 4, 2):
        # Only test the cells under the quad's bounding box.
        ix = np.flatnonzero((xs >= quad[:, 0].min()) & (xs <= quad[:, 0].max()))
        iy = np.flatnonzero((ys >= quad[:, 1].min()) & (ys <= quad[:, 1].max()))
        if ix.size == 0 or iy.size == 0:
            continue
        px, py = np.meshgrid(xs[ix], ys[iy], indexing="ij")
        # Inside a convex polygon = on the same side of every edge (cross products share a sign).
        a, b = quad, np.roll(quad, -1, axis=0)
        cross = (b[:, 0, None, None] - a[:, 0, None, None]) * (py - a[:, 1, None, None]) - (
            b[:, 1, None, None] - a[:, 1, None, None]
        ) * (px - a[:, 0, None, None])
        inside = np.all(cross >= -1e-9, axis=0) | np.all(cross <= 1e-9, axis=0)
        out[np.ix_(ix, iy)] |= inside
    return out


def vehicle_boxes(index: SampleIndex, rec: SampleRecord) -> list:
    """The key frame's ``vehicle.*`` devkit Boxes in the ego frame, each with ``.visibility`` set."""
    from pyquaternion import Quaternion

    nusc = index.nusc
    ego_T_global = invert_rigid(rec.global_T_ego)
    rot = Quaternion(matrix=ego_T_global[:3, :3], atol=1e-6)
    out = []
    for box in nusc.get_boxes(rec.lidar.token):
        if not box.name.startswith(VEHICLE_PREFIX):
            continue
        box.rotate(rot)
        box.translate(ego_T_global[:3, 3])
        box.visibility = nusc.get("sample_annotation", box.token)["visibility_token"]
        out.append(box)
    return out


def vehicle_target(index: SampleIndex, rec: SampleRecord, grid: BevGrid, cfg: GtConfig) -> tuple[np.ndarray, np.ndarray]:
    """(target (1, X, Y) bool, valid (X, Y) bool) for one key frame."""
    boxes = vehicle_boxes(index, rec)
    # bottom_corners() is (3, 4): the ground face, in order around it.
    shown = [b.bottom_corners()[:2].T for b in boxes if b.visibility not in cfg.invisible]
    hidden = [b.bottom_corners()[:2].T for b in boxes if b.visibility in cfg.invisible]
    target = rasterize_footprints(np.array(shown).reshape(-1, 4, 2), grid)
    valid = ~rasterize_footprints(np.array(hidden).reshape(-1, 4, 2), grid)
    return target[None], valid


# ---------------------------------------------------------------- map layers


class MapRasterizer:
    """Map-layer masks around ego poses. Loads each location's devkit map once and keeps its
    geometries (built with the devkit's ``extract_polygon``/``extract_line``) in an STRtree, so a
    sample costs a tree query and a vectorised point-in-polygon test, not a pass over every record."""

    def __init__(self, dataroot: str | Path, cfg: GtConfig = GtConfig()):
        self.dataroot = Path(dataroot)
        self.cfg = cfg
        self._maps: dict[str, dict[str, tuple[shapely.STRtree, list]]] = {}

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
            for cls, layers in MAP_LAYERS.items():
                geoms = []
                for layer in layers:
                    for record in getattr(nmap, layer):
                        if layer in LINE_LAYERS:
                            # A line drawn w wide = its buffer by w/2: one point-in-polygon test per cell.
                            g = nmap.extract_line(record["line_token"]).buffer(self.cfg.divider_width / 2)
                        else:
                            tokens = record["polygon_tokens"] if layer == "drivable_area" else [record["polygon_token"]]
                            for t in tokens:
                                g = nmap.extract_polygon(t)
                                geoms.append(g if g.is_valid else shapely.make_valid(g))
                            continue
                        if not g.is_empty:
                            geoms.append(g)
                shapely.prepare(geoms)
                per_class[cls] = (shapely.STRtree(geoms), geoms)
            self._maps[location] = per_class
        return self._maps[location]

    def __call__(self, rec: SampleRecord, grid: BevGrid) -> np.ndarray:
        """(len(MAP_CLASSES), X, Y) bool masks in :data:`MAP_CLASSES` order."""
        layers = self._layers(rec.location)
        centers = grid.bev_centers().reshape(-1, 2)
        ground = np.concatenate([centers, np.zeros((len(centers), 1))], axis=1)
        g = apply_4x4(rec.global_T_ego, ground)[:, :2]
        gx, gy = g[:, 0], g[:, 1]
        area = shapely.box(gx.min(), gy.min(), gx.max(), gy.max())
        out = np.zeros((len(MAP_CLASSES), len(centers)), dtype=bool)
        for c, cls in enumerate(MAP_CLASSES):
            tree, geoms = layers[cls]
            for i in tree.query(area):
                out[c] |= shapely.contains_xy(geoms[i], gx, gy)
        return out.reshape(len(MAP_CLASSES), *grid.shape[:2])


# ---------------------------------------------------------------- per-sample and cached access


class GtBuilder:
    """Computes one sample's ground truth for a task: ``builder(rec) -> (target, valid)``."""

    def __init__(self, index: SampleIndex, grid: BevGrid, task: str, cfg: GtConfig = GtConfig()):
        check_task(task)
        self.index, self.grid, self.task, self.cfg = index, grid, task, cfg
        self._map = MapRasterizer(index.dataroot, cfg) if task == "map" else None

    def __call__(self, rec: SampleRecord) -> tuple[np.ndarray, np.ndarray]:
        """(target (C, X, Y) bool, valid (X, Y) bool)."""
        if self._map is None:
            return vehicle_target(self.index, rec, self.grid, self.cfg)
        return self._map(rec, self.grid), np.ones(self.grid.shape[:2], dtype=bool)


def gt_spec(index: SampleIndex, grid: BevGrid, task: str, cfg: GtConfig) -> dict:
    """What makes two GT caches incompatible."""
    return {
        "kind": "occfeat-gt",
        "format": GT_FORMAT,
        "task": task,
        "classes": list(check_task(task)),
        "grid": grid.spec(),
        "dataroot": str(Path(index.dataroot).resolve()),
        "version": index.version,
        "split": index.split,
        "divider_width": cfg.divider_width,
        "invisible": list(cfg.invisible),
        "packed_axis": -1,
    }


def default_gt_path(folder: str | Path, index: SampleIndex, grid: BevGrid, task: str, cfg: GtConfig) -> Path:
    """``<folder>/gt-<version>-<split>-<task>-<hash of the spec>.h5``: one file per setting."""
    digest = hashlib.sha1(json.dumps(gt_spec(index, grid, task, cfg), sort_keys=True).encode()).hexdigest()[:10]
    return Path(folder) / f"gt-{index.version}-{index.split}-{task}-{digest}.h5"


class GtCache:
    """Ground truth read from a finished cache: ``cache[token] -> (target (C,X,Y) bool, valid (X,Y) bool)``.

    Rows are bit-packed along Y (``np.packbits``); a 200x200 map sample takes 25 KB instead of 200 KB.
    """

    def __init__(self, path: str | Path, expect: dict):
        self.reader = CacheReader(path, expect=expect)
        self.shape = tuple(expect["grid"]["shape"][:2])

    def __getitem__(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        y = self.shape[1]
        target = np.unpackbits(self.reader.get("target", token), axis=-1, count=y).astype(bool)
        valid = np.unpackbits(self.reader.get("mask", token), axis=-1, count=y).astype(bool)
        return target, valid


GT_LOCK_WAIT_S = 3600.0  # another finetune run building the same split's ground truth


def build_gt_cache(
    index: SampleIndex,
    grid: BevGrid,
    task: str,
    path: str | Path,
    cfg: GtConfig = GtConfig(),
    block_size: int = 64,
    progress: bool = True,
) -> GtCache:
    """Compute the split's ground truth once into ``path`` (resumable; a finished cache is reused)."""
    classes = check_task(task)
    spec = gt_spec(index, grid, task, cfg)
    X, Y = grid.shape[:2]
    packed_y = (Y + 7) // 8
    payloads = {"target": Payload((len(classes), X, packed_y), "uint8"), "mask": Payload((X, packed_y), "uint8")}
    # Finetune runs side by side share this cache: wait for the one building it, then reuse its file.
    with CacheWriter(path, index.tokens, spec, payloads, block_size, lock_wait_s=GT_LOCK_WAIT_S) as writer:
        pending = writer.pending()
        if pending:
            builder = GtBuilder(index, grid, task, cfg)
            with tqdm(total=sum(b - a for a, b in pending), desc=f"ground truth ({task}, {index.split})", disable=not progress) as bar:
                for start, stop in pending:
                    targets, masks = [], []
                    for token in index.tokens[start:stop]:
                        target, valid = builder(index.record(token))
                        targets.append(np.packbits(target, axis=-1))
                        masks.append(np.packbits(valid, axis=-1))
                        bar.update(1)
                    writer.write_block(start, stop, {"target": np.stack(targets), "mask": np.stack(masks)})
        writer.finalize()
    return GtCache(path, spec)


def time_gt(index: SampleIndex, grid: BevGrid, task: str, n: int = 5, cfg: GtConfig = GtConfig()) -> float:
    """Mean seconds per sample to compute ground truth on the fly (the first, map-loading call excluded)."""
    builder = GtBuilder(index, grid, task, cfg)
    builder(index[0])
    t0 = time.perf_counter()
    for i in range(min(n, len(index))):
        builder(index[i])
    return (time.perf_counter() - t0) / max(1, min(n, len(index)))
