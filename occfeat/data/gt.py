"""BEV segmentation ground truth: what is drawn and how (:class:`GtConfig`), vehicle footprints with their
instance targets, and the split's vehicle boxes kept for drawing them in any reference frame.

Frame: the grid's frame R. At evaluation R is the ego frame at the key-frame LiDAR timestamp; with the
random reference camera (training) R = ``ref_T_ego`` applied to it, and every target is drawn from the
raw boxes / map geometry moved into R, never resampled from another grid. Layouts, per sample:
``target (C, X, Y)`` bool, ``valid (X, Y)`` bool; vehicles also ``center (1, X, Y)`` and ``offset
(2, X, Y)`` float32. Grid coordinates of a point: ``u = (p - lower) / voxel_size - 0.5`` per axis, so
cell ``[ix, iy]`` has its centre at ``u = (ix, iy)`` (Simple-BEV's "mem" coordinates,
``utils/vox.py`` ``get_mem_T_ref``).

Vehicles (task ``vehicle``, one class): every ``vehicle.*`` box of the key frame (Simple-BEV's
``'vehicle' in category_name``, ``nuscenesdataset.py`` ~943). Footprint = the box's bottom face projected
on the ground plane of R. Two rules (:attr:`GtConfig.vehicle_rule`):

- ``"fillpoly"`` (default, Simple-BEV's ``get_seg_bev``, ``nuscenesdataset.py`` ~844-874): the four
  footprint corners in grid coordinates are truncated to int (``.astype(np.int32)``, i.e. toward zero)
  and the quad is filled with ``cv2.fillPoly``, which sets every cell the polygon touches, edges
  included. Simple-BEV's grid is indexed (forward, camera-right) and ours (forward = X, left = Y), both
  from the minimum bound; truncation moves a corner toward the lower index, i.e. rearward in both and
  toward the right here but toward the left in Simple-BEV: the cells are Simple-BEV's for the same boxes
  on the same grid up to that lateral orientation of the truncation.
- ``"centre"``: a cell is set iff its centre lies inside the footprint (edges count); a box smaller than
  a cell can vanish. occfeat's rule before Simple-BEV parity.

Boxes are drawn in order with instance id n + 1 (a later box overwrites an earlier one, as
``cv2.fillPoly(seg, [pts], n+1.0)`` does). Boxes with a visibility token in :attr:`GtConfig.invisible`
(nuScenes ``'1'``: 0-40 % visible) are drawn too but ``valid`` is False on their footprint, drawn by the
same rule, so they count in neither the loss nor the IoU (Simple-BEV/LSS protocol, ~870-872).
``center`` and ``offset`` follow ``get_center_and_offset_bev`` (~877-925) and ``Vox_util.xyz2circles_bev``
(``utils/vox.py``); see :func:`centerness` and :func:`instance_offsets`.

Map classes: :attr:`GtConfig.map_layers`; drawing in ``occfeat/data/gt_map.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from occfeat.errors import OccfeatError
from occfeat.geometry import apply_4x4, invert_rigid
from occfeat.grid import BevGrid
from occfeat.progress import progress_bar
from occfeat.tasks import TASKS as TASK_LABELS

VEHICLE_PREFIX = "vehicle."
VEHICLE_RULES = ("fillpoly", "centre")
LINE_LAYERS = ("road_divider", "lane_divider")
POLYGON_LAYERS = ("drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway", "stop_line", "carpark_area")

# The paper (§4.1, "Second, we focus on the layout ...") names the map classes "road", "sidewalk",
# "crosswalk", "parking area" and "road dividers". Read literally against the nuScenes map expansion:
# road = drivable_area, sidewalk = walkway, crosswalk = ped_crossing, parking area = carpark_area and
# road dividers = road_divider (the lines between opposite traffic directions) only; lane_divider (lines
# between lanes of one direction) is another layer the paper does not name. BEVFusion's "divider"
# (road_divider + lane_divider) is the alternative: ``gt.map_layers.divider=[road_divider, lane_divider]``.
PAPER_MAP_LAYERS: dict[str, tuple[str, ...]] = {
    "road": ("drivable_area",),
    "sidewalk": ("walkway",),
    "crosswalk": ("ped_crossing",),
    "parking": ("carpark_area",),
    "divider": ("road_divider",),
}
TASKS = tuple(TASK_LABELS)
GT_FORMAT = 2  # 2: fillPoly vehicle rule, map classes from the config; bump when drawing changes

# Simple-BEV's instance targets (get_center_and_offset_bev, nuscenesdataset.py ~877-925).
CENTER_SIGMA = 3.0
"""Gaussian sigma in cells of the centerness target (``radius = 3``, read as sigma by xyz2circles_bev)."""
CENTER_FLOOR = 1e-3
"""Centerness values below this are set to 0 (``mask[mask < 0.001] = 0.0`` in xyz2circles_bev)."""
OFFSET_SCALE = 2.0
"""Simple-BEV's offset is ``min + max`` over its singleton height axis of ``cell - centre``: twice the
vector (``offset = min_offset + max_offset``); kept so the L1 term has Simple-BEV's magnitude."""


@dataclass(frozen=True)
class GtConfig:
    """How ground truth is drawn (stored in the cache spec; a change makes a new cache)."""

    vehicle_rule: str = "fillpoly"
    """"fillpoly": Simple-BEV's (corners truncated to int, ``cv2.fillPoly``, edges included);
    "centre": a cell is set iff its centre is inside the footprint."""
    map_layers: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(PAPER_MAP_LAYERS))
    """Map class name → nuScenes map-expansion layers united into it, in channel order. Default: the
    paper's five classes (see :data:`PAPER_MAP_LAYERS`). A recipe replaces the whole mapping."""
    divider_width: float = 1.0
    """Width in metres of line layers (road_divider, lane_divider): 2 cells of the paper's 0.5 m grid.
    The paper does not state it."""
    invisible: tuple[str, ...] = ("1",)
    """Visibility tokens of vehicle boxes excluded from loss and IoU (nuScenes '1' = 0-40 %)."""

    def __post_init__(self) -> None:
        if self.vehicle_rule not in VEHICLE_RULES:
            raise OccfeatError(f"gt.vehicle_rule={self.vehicle_rule!r} is unknown; choose one of {', '.join(VEHICLE_RULES)}")
        layers = {str(c): tuple(ls) if isinstance(ls, (list, tuple)) else (ls,) for c, ls in dict(self.map_layers).items()}
        known = LINE_LAYERS + POLYGON_LAYERS
        for cls, ls in layers.items():
            bad = [layer for layer in ls if layer not in known]
            if bad or not ls:
                raise OccfeatError(f"gt.map_layers.{cls}={list(ls)}: {bad or 'no layers'}; use nuScenes map layers ({', '.join(known)})")
        if not layers:
            raise OccfeatError("gt.map_layers is empty; give at least one class, e.g. {road: [drivable_area]}")
        object.__setattr__(self, "map_layers", layers)
        object.__setattr__(self, "invisible", tuple(str(v) for v in self.invisible))
        if not self.divider_width > 0:
            raise OccfeatError(f"gt.divider_width={self.divider_width} must be > 0 metres")


def check_task(task: str) -> str:
    """``task`` if known; one-line error otherwise."""
    if task not in TASKS:
        raise OccfeatError(f"unknown task '{task}'; pick one of {', '.join(TASKS)}")
    return task


def task_classes(task: str, cfg: GtConfig = GtConfig()) -> tuple[str, ...]:
    """The task's class names in channel order."""
    return ("vehicle",) if check_task(task) == "vehicle" else tuple(cfg.map_layers)


# ---------------------------------------------------------------- pure drawing functions


def grid_coords(xy: np.ndarray, grid: BevGrid) -> np.ndarray:
    """(..., 2) ground-plane points of R → continuous grid coordinates (cell centres at integers)."""
    return (np.asarray(xy, dtype=np.float64) - grid.lower[:2]) / grid.voxel_size[:2] - 0.5


def _fillpoly_masks(corners_xy: np.ndarray, grid: BevGrid, ids: np.ndarray) -> np.ndarray:
    """Simple-BEV's rule: each quad (N, 4, 2) truncated to int grid coordinates and filled with its id."""
    out = np.zeros(grid.shape[:2], dtype=np.int32)
    pts = grid_coords(corners_xy, grid).astype(np.int32)  # truncation toward zero, as Simple-BEV
    for quad, i in zip(pts, ids):
        # cv2 points are (column, row) = (iy, ix) on our (X, Y) array.
        cv2.fillPoly(out, [np.ascontiguousarray(quad[:, ::-1])], int(i))
    return out


def _centre_masks(corners_xy: np.ndarray, grid: BevGrid, ids: np.ndarray) -> np.ndarray:
    """Centre-inside rule: cells whose centre is inside the convex quad (edges count) get its id."""
    out = np.zeros(grid.shape[:2], dtype=np.int32)
    xs, ys = grid.axis_centers(0), grid.axis_centers(1)
    for quad, i in zip(corners_xy, ids):
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
        out[np.ix_(ix, iy)] = np.where(inside, int(i), out[np.ix_(ix, iy)])
    return out


RULES = {"fillpoly": _fillpoly_masks, "centre": _centre_masks}


def footprint_ids(corners_xy: np.ndarray, grid: BevGrid, rule: str = "fillpoly") -> np.ndarray:
    """(X, Y) int32 instance ids: box n (corners (N, 4, 2) in R, in order around the quad) drawn with id
    n + 1 under ``rule``, later boxes over earlier ones; 0 = no box."""
    quads = np.asarray(corners_xy, dtype=np.float64).reshape(-1, 4, 2)
    return RULES[rule](quads, grid, np.arange(1, len(quads) + 1))


def rasterize_footprints(corners_xy: np.ndarray, grid: BevGrid, rule: str = "fillpoly") -> np.ndarray:
    """(X, Y) bool: the cells of any of the quads ``corners_xy`` (N, 4, 2) under ``rule``."""
    return footprint_ids(corners_xy, grid, rule) > 0


def centerness(centres_xy: np.ndarray, grid: BevGrid, sigma: float = CENTER_SIGMA) -> np.ndarray:
    """(X, Y) float32: max over boxes of ``exp(-|cell - round(c)|^2 / (2 sigma^2))`` in cells, 0 where
    below :data:`CENTER_FLOOR`. ``c`` = box centre (N, 2) in grid coordinates, rounded so the centre cell
    reads exactly 1 (``Vox_util.xyz2circles_bev``; max over boxes as ``get_center_and_offset_bev``)."""
    out = np.zeros(grid.shape[:2], dtype=np.float32)
    X, Y = grid.shape[:2]
    reach = int(np.ceil(sigma * np.sqrt(-2.0 * np.log(CENTER_FLOOR)))) + 1  # beyond it the value is < floor
    for cx, cy in np.round(grid_coords(np.asarray(centres_xy).reshape(-1, 2), grid)):
        x0, x1 = int(max(cx - reach, 0)), int(min(cx + reach + 1, X))
        y0, y1 = int(max(cy - reach, 0)), int(min(cy + reach + 1, Y))
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = np.arange(x0, x1)[:, None] - cx, np.arange(y0, y1)[None, :] - cy
        g = np.exp(-(dx**2 + dy**2) / (2.0 * sigma**2))
        g[g < CENTER_FLOOR] = 0.0
        out[x0:x1, y0:y1] = np.maximum(out[x0:x1, y0:y1], g)
    return out


def instance_offsets(ids: np.ndarray, centres_xy: np.ndarray, grid: BevGrid) -> np.ndarray:
    """(2, X, Y) float32: on the cells of instance n (``ids == n + 1``) the vector
    ``OFFSET_SCALE * (cell - round(c_n))`` in cells along (X, Y), 0 elsewhere. Simple-BEV's sign
    (``off = grid - xz`` in xyz2circles_bev) and its factor 2 (see :data:`OFFSET_SCALE`)."""
    c = np.round(grid_coords(np.asarray(centres_xy).reshape(-1, 2), grid))
    ix, iy = np.meshgrid(np.arange(ids.shape[0]), np.arange(ids.shape[1]), indexing="ij")
    on = ids > 0
    k = np.where(on, ids - 1, 0)
    if len(c) == 0:
        return np.zeros((2, *ids.shape), dtype=np.float32)
    off = np.stack([ix - c[k, 0], iy - c[k, 1]]) * OFFSET_SCALE
    return np.where(on[None], off, 0.0).astype(np.float32)


def vehicle_targets(
    corners_xy: np.ndarray, centres_xy: np.ndarray, visible: np.ndarray, grid: BevGrid, rule: str = "fillpoly"
) -> dict[str, np.ndarray]:
    """Every vehicle target of one sample from its boxes in R: corners (N, 4, 2), centres (N, 2),
    visible (N,) bool → ``target`` (1, X, Y) bool, ``valid`` (X, Y) bool (False on the footprints of
    boxes not visible), ``center`` (1, X, Y) float32 and ``offset`` (2, X, Y) float32."""
    corners_xy = np.asarray(corners_xy, dtype=np.float64).reshape(-1, 4, 2)
    visible = np.asarray(visible, dtype=bool).reshape(-1)
    ids = footprint_ids(corners_xy, grid, rule)
    return {
        "target": (ids > 0)[None],
        "valid": ~rasterize_footprints(corners_xy[~visible], grid, rule),
        "center": centerness(centres_xy, grid)[None],
        "offset": instance_offsets(ids, centres_xy, grid),
    }


# ---------------------------------------------------------------- the split's vehicle boxes

BOX_FORMAT = 2  # 2: with each box's num_lidar_pts (perspective targets filter on it)


@dataclass
class BoxTable:
    """Every ``vehicle.*`` box of a split in its key frame's ego frame: ``corners`` (M, 4, 3) bottom face
    in order around it, ``centres`` (M, 3), ``visibility`` (M,) token strings, ``lidar_pts`` (M,) the
    annotation's ``num_lidar_pts`` (-1 when unknown); sample ``tokens[i]`` owns
    rows ``start[i]:start[i+1]``. A few MB for nuScenes trainval: cheap to send to every worker."""

    tokens: list[str]
    start: np.ndarray
    corners: np.ndarray
    centres: np.ndarray
    visibility: np.ndarray
    lidar_pts: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._row = {t: i for i, t in enumerate(self.tokens)}
        if self.lidar_pts is None:
            self.lidar_pts = np.full(len(self.centres), -1, np.int64)

    def __getitem__(self, token: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(corners (n, 4, 3), centres (n, 3), visibility (n,)) of one sample, ego frame."""
        i = self._row.get(token)
        if i is None:
            raise OccfeatError(f"sample {token} has no entry in the vehicle box table; rebuild it for this split")
        a, b = self.start[i], self.start[i + 1]
        return self.corners[a:b], self.centres[a:b], self.visibility[a:b]

    def lidar_points(self, token: str) -> np.ndarray:
        """(n,) the ``num_lidar_pts`` of one sample's boxes (-1: unknown), in the order of ``self[token]``."""
        i = self._row[token]
        return self.lidar_pts[self.start[i]:self.start[i + 1]]

    def save(self, path: Path, spec: dict) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")  # per process: side-by-side runs may both save
        np.savez(tmp, tokens=np.array(self.tokens), start=self.start, corners=self.corners, centres=self.centres,
                 visibility=self.visibility, lidar_pts=self.lidar_pts, spec=np.array(json.dumps(spec, sort_keys=True)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, spec: dict) -> "BoxTable | None":
        """The table in ``path`` if it was written for ``spec``, else None."""
        if not path.is_file():
            return None
        with np.load(path) as f:
            if json.loads(str(f["spec"])) != json.loads(json.dumps(spec)):
                return None
            return cls([str(t) for t in f["tokens"]], f["start"], f["corners"], f["centres"], f["visibility"], f["lidar_pts"])


def vehicle_boxes(index, rec) -> list:
    """The key frame's ``vehicle.*`` devkit Boxes in the ego frame, each with ``.visibility`` and
    ``.num_lidar_pts`` set."""
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
        ann = nusc.get("sample_annotation", box.token)
        box.visibility, box.num_lidar_pts = ann["visibility_token"], int(ann.get("num_lidar_pts", -1))
        out.append(box)
    return out


def box_table_spec(index) -> dict:
    return {"kind": "occfeat-boxes", "format": BOX_FORMAT, "dataroot": str(Path(index.dataroot).resolve()),
            "version": index.version, "split": index.split}


def box_table(index, folder: str | Path | None = None, progress: bool = False) -> BoxTable:
    """The split's vehicle boxes, read from ``<folder>/boxes-<version>-<split>-<hash>.npz`` when it was
    written for this dataroot, else gathered with the devkit (and saved there when ``folder`` is given)."""
    spec = box_table_spec(index)
    path = None
    if folder is not None:
        digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        path = Path(folder) / f"boxes-{index.version}-{index.split}-{digest}.npz"
        table = BoxTable.load(path, spec)
        if table is not None:
            return table
    starts, corners, centres, vis, pts = [0], [], [], [], []
    for token in progress_bar(index.tokens, desc=f"vehicle boxes ({index.split})", enabled=progress):
        for b in vehicle_boxes(index, index.record(token)):
            corners.append(b.bottom_corners().T)  # (4, 3), in order around the bottom face
            centres.append(b.center)
            vis.append(str(b.visibility))
            pts.append(b.num_lidar_pts)
        starts.append(len(corners))
    table = BoxTable(list(index.tokens), np.array(starts, dtype=np.int64), np.array(corners, dtype=np.float64).reshape(-1, 4, 3),
                     np.array(centres, dtype=np.float64).reshape(-1, 3), np.array(vis, dtype="U8"), np.array(pts, dtype=np.int64))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.save(path, spec)
    return table


class VehicleGt:
    """Vehicle targets of a sample in any reference frame, drawn from the split's :class:`BoxTable`:
    ``gt(token, ref_T_ego)`` → :func:`vehicle_targets` of the boxes moved by ``ref_T_ego`` (4, 4; None =
    identity). Plain arrays only: pickles cheaply into DataLoader workers."""

    def __init__(self, boxes: BoxTable, grid: BevGrid, cfg: GtConfig = GtConfig()):
        self.boxes, self.grid, self.cfg = boxes, grid, cfg

    def boxes_in(self, token: str, ref_T_ego: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(corners (n, 4, 3), centres (n, 3), visibility (n,)) of one sample's boxes in frame R."""
        corners, centres, vis = self.boxes[token]
        if ref_T_ego is not None:
            corners = apply_4x4(np.asarray(ref_T_ego, dtype=np.float64), corners.reshape(-1, 3)).reshape(-1, 4, 3)
            centres = apply_4x4(np.asarray(ref_T_ego, dtype=np.float64), centres)
        return corners, centres, vis

    def __call__(self, token: str, ref_T_ego: np.ndarray | None = None) -> dict[str, np.ndarray]:
        corners, centres, vis = self.boxes_in(token, ref_T_ego)
        visible = ~np.isin(vis, self.cfg.invisible)
        return vehicle_targets(corners[..., :2], centres[:, :2], visible, self.grid, self.cfg.vehicle_rule)
