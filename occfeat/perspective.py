"""Perspective-view targets for BEVFormer v2's auxiliary head (perspective supervision): 3D boxes
projected into one camera → dense per-pixel targets. Pure numpy/cv2, no torch.

:func:`box_targets` draws, for the boxes of one sample and one camera:

- ``vehicle`` (H, W) bool: pixels whose centre lies inside (or on the edge of) the projection of a box
  (the convex hull of its projected corners, after clipping the box at the near plane, so a box that
  reaches behind the camera is cut there rather than dropped or flipped);
- ``box_id`` (H, W) int32: n + 1 of the box drawn at the pixel (0 outside); where boxes overlap the
  nearest one (smallest centre depth) wins, as in an image;
- ``depth`` (H, W) float32: that box's centre depth in the camera (m; 0 outside) — v2's depth target is
  the depth of the projected 3D centre;
- ``ltrb`` (4, H, W) float32: the pixel centre's distances to the left / top / right / bottom edges of
  that box's 2D bounding box (FCOS's regression target; 0 outside);
- ``centerness`` (H, W) float32: FCOS's sqrt(min(l, r) / max(l, r) · min(t, b) / max(t, b)).

:func:`ground_targets` draws the map task's: each pixel's ray meets the ground plane, and the BEV map
masks at that point become the pixel's classes — unless the LiDAR depth at the pixel says something
stands in front of the ground there (occluded: no map class).

Pixel convention: pixel (row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5), as in
:func:`occfeat.geometry.scale_intrinsics`.
"""

from __future__ import annotations

import cv2
import numpy as np

NEAR = 0.1  # m: boxes are clipped at this depth before projecting


def clip_to_near(corners_cam: np.ndarray, near: float = NEAR) -> np.ndarray:
    """(8, 3) box corners in the camera frame → the vertices (M, 3) of the box cut at z = ``near``: the
    corners in front plus where every segment between a front and a rear corner crosses the plane (their
    convex hull is the clipped box whatever the corner order). (0, 3) when the box is wholly behind."""
    front = corners_cam[:, 2] >= near
    crossings = [a + (near - a[2]) / (b[2] - a[2]) * (b - a) for a in corners_cam[front] for b in corners_cam[~front]]
    return np.concatenate([corners_cam[front], np.reshape(crossings, (-1, 3))])


def _inside_hull(hull: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixel centres (u, v) inside (or on) the convex polygon ``hull`` (K, 2), tested only
    inside its bounding rectangle (cv2's polygon fill would also take the pixels its outline touches)."""
    H, W = u.shape
    m = np.zeros((H, W), bool)
    a, b = hull, np.roll(hull, -1, axis=0)
    area2 = float(np.sum(a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1]))
    if len(hull) < 3 or abs(area2) < 1e-12:
        return m
    (left, top), (right, bottom) = hull.min(axis=0), hull.max(axis=0)
    r0, r1 = max(0, int(np.floor(top))), min(H, int(np.ceil(bottom)) + 1)
    c0, c1 = max(0, int(np.floor(left))), min(W, int(np.ceil(right)) + 1)
    if r0 >= r1 or c0 >= c1:
        return m
    pu, pv = u[r0:r1, c0:c1], v[r0:r1, c0:c1]
    cross = ((b[:, 0] - a[:, 0])[:, None, None] * (pv - a[:, 1, None, None])
             - (b[:, 1] - a[:, 1])[:, None, None] * (pu - a[:, 0, None, None]))
    m[r0:r1, c0:c1] = np.all(cross * np.sign(area2) >= 0, axis=0)
    return m


def box_corners(bottom: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners of boxes given their bottom face ``bottom`` (N, 4, 3) and centres (N, 3), in any
    frame: the top face is the bottom one moved by twice the bottom-centre → centre vector."""
    up = 2.0 * (centres - bottom.mean(axis=1))[:, None]
    return np.concatenate([bottom, bottom + up], axis=1)


def visible_fraction(hull: np.ndarray, hw: tuple[int, int]) -> float:
    """Share of the area of the convex polygon ``hull`` (K, 2) that lies inside the image [0, W] x [0, H]."""
    H, W = hw
    area = cv2.contourArea(hull.astype(np.float32))
    if area <= 0:
        return 0.0
    image = np.array([[0, 0], [W, 0], [W, H], [0, H]], np.float32)
    inside, _ = cv2.intersectConvexConvex(hull.astype(np.float32), image)
    return float(inside) / float(area)


def box_targets(corners_ego: np.ndarray, centres_ego: np.ndarray, cam_T_ego: np.ndarray, K: np.ndarray,
                hw: tuple[int, int], near: float = NEAR, min_visible: float = 0.0) -> dict[str, np.ndarray]:
    """Dense perspective targets of boxes ``corners_ego`` (N, 8, 3) with centres ``centres_ego`` (N, 3)
    (ego frame) in the camera ``cam_T_ego`` (4, 4) with intrinsics ``K`` (3, 3) and image size ``hw``.
    Boxes whose centre is behind ``near`` are skipped (v2 keeps boxes whose projected centre exists), so
    are boxes with less than ``min_visible`` of their projected area inside the image (v2's visibility
    ≥ 0.2, read per camera). A box too small to hold a pixel centre still marks the pixel its projected
    centre falls in (FCOS's centre sampling: every kept box gets a positive)."""
    H, W = hw
    out = {"vehicle": np.zeros((H, W), bool), "box_id": np.zeros((H, W), np.int32), "depth": np.zeros((H, W), np.float32),
           "ltrb": np.zeros((4, H, W), np.float32), "centerness": np.zeros((H, W), np.float32)}
    if len(corners_ego) == 0:
        return out
    R, t = cam_T_ego[:3, :3], cam_T_ego[:3, 3]
    corners = corners_ego @ R.T + t
    centres = centres_ego @ R.T + t
    v, u = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    for n in np.argsort(-centres[:, 2]):  # far to near: the nearest box is painted last
        if centres[n, 2] < near:
            continue
        pts = clip_to_near(corners[n], near)
        uv = pts[:, :2] @ K[:2, :2].T / pts[:, 2:3] + K[:2, 2]
        left, top = uv.min(axis=0)
        right, bottom = uv.max(axis=0)
        if right <= 0 or bottom <= 0 or left >= W or top >= H:
            continue
        hull = cv2.convexHull(uv.astype(np.float32))[:, 0].astype(np.float64)
        if min_visible > 0 and visible_fraction(hull, hw) < min_visible:
            continue
        m = _inside_hull(hull, u, v)
        if not m.any():
            c = centres[n, :2] @ K[:2, :2].T / centres[n, 2] + K[:2, 2]
            col, row = int(np.floor(c[0])), int(np.floor(c[1]))
            if not (0 <= row < H and 0 <= col < W):
                continue
            m[row, col] = True
        out["box_id"][m] = n + 1
        out["depth"][m] = centres[n, 2]
        pu, pv = u[m], v[m]  # only the box's pixels
        ltrb = np.stack([pu - left, pv - top, right - pu, bottom - pv])
        out["ltrb"][:, m] = ltrb
        lr, tb = ltrb[[0, 2]].clip(min=1e-6), ltrb[[1, 3]].clip(min=1e-6)
        out["centerness"][m] = np.sqrt(lr.min(0) / lr.max(0) * tb.min(0) / tb.max(0))
    out["vehicle"] = out["box_id"] > 0
    return out


def fill_scan_gaps(depth: np.ndarray, rows: int) -> np.ndarray:
    """A sparse depth image (H, W; 0 = no return) with each empty pixel given the nearest depth among the
    returns up to ``rows`` pixels above or below it in its column: a spinning LiDAR's rings are rows of
    returns with empty rows between them, so an object hit by the rings above and below fills the gap."""
    if rows <= 0:
        return depth
    from scipy import ndimage

    filled = ndimage.minimum_filter(np.where(depth > 0, depth, np.inf), size=(2 * rows + 1, 1), mode="constant", cval=np.inf)
    return np.where(depth > 0, depth, np.where(np.isfinite(filled), filled, 0.0)).astype(depth.dtype)


def ground_targets(masks: np.ndarray, grid, cam_T_ego: np.ndarray, K: np.ndarray, hw: tuple[int, int],
                   ground_z: float = 0.0, lidar_depth: np.ndarray | None = None, tolerance: float = 0.5,
                   fill_rows: int = 0) -> dict[str, np.ndarray]:
    """Per-camera map targets: ``masks`` (C, X, Y) bool on ``grid`` (ego frame) seen from the camera
    ``cam_T_ego`` / ``K`` at image size ``hw``. Returns ``map`` (C, H, W) bool — the classes of the cell
    where the pixel's ray meets the plane z = ``ground_z`` — ``ground_depth`` (H, W) the depth of that
    point (0 where the ray never meets the ground), and ``valid`` (H, W): False only where the ray meets
    the ground outside the grid (unknown). With ``lidar_depth`` (H, W; 0 = no return) a pixel whose LiDAR
    depth is more than ``tolerance`` m short of its ground depth is occluded: no map class (valid);
    ``fill_rows`` > 0 first fills empty pixels from returns up to that many rows away (:func:`fill_scan_gaps`)."""
    from occfeat.data.gt import grid_coords

    H, W = hw
    C = masks.shape[0]
    v, u = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)  # depth 1
    ego_T_cam = np.linalg.inv(cam_T_ego)
    origin, rays = ego_T_cam[:3, 3], rays_cam @ ego_T_cam[:3, :3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (ground_z - origin[2]) / rays[..., 2]  # the depth at which the ray meets the ground
    hits = np.isfinite(s) & (s > 0)
    xy = origin[:2] + np.where(hits, s, 0.0)[..., None] * rays[..., :2]
    cell = np.floor(grid_coords(xy, grid) + 0.5).astype(np.int64)  # cell centres at integers
    X, Y = masks.shape[1:]
    inside = hits & (cell[..., 0] >= 0) & (cell[..., 0] < X) & (cell[..., 1] >= 0) & (cell[..., 1] < Y)
    out_map = np.zeros((C, H, W), bool)
    ix, iy = cell[..., 0][inside], cell[..., 1][inside]
    out_map[:, inside] = masks[:, ix, iy]
    if lidar_depth is not None:
        lidar_depth = fill_scan_gaps(lidar_depth, fill_rows)
        occluded = inside & (lidar_depth > 0) & (lidar_depth < s - tolerance)
        out_map[:, occluded] = False
    return {"map": out_map, "ground_depth": np.where(hits, s, 0.0).astype(np.float32), "valid": ~(hits & ~inside)}


def lidar_depth_image(points_ego: np.ndarray, cam_T_ego: np.ndarray, K: np.ndarray, hw: tuple[int, int],
                      near: float = NEAR) -> np.ndarray:
    """(H, W) float32: the depth of the nearest of ``points_ego`` (N, 3) that projects into each pixel of
    the camera ``cam_T_ego`` / ``K`` (0 where none does): a sparse LiDAR depth map."""
    H, W = hw
    pts = points_ego @ cam_T_ego[:3, :3].T + cam_T_ego[:3, 3]
    pts = pts[pts[:, 2] > near]
    uv = pts[:, :2] @ K[:2, :2].T / pts[:, 2:3] + K[:2, 2]
    col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    keep = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    flat, depth = row[keep] * W + col[keep], pts[keep, 2]
    out = np.full(H * W, np.inf)
    np.minimum.at(out, flat, depth)
    out[~np.isfinite(out)] = 0.0
    return out.reshape(H, W).astype(np.float32)


class PerspectiveTargets:
    """One sample's perspective targets for all its cameras at the image encoder's resolution (what the
    finetuning head predicts), drawn in the DataLoader worker. Picklable.

    ``__call__(token, cam_T_ego (S, 4, 4) raw ego → camera, K (S, 3, 3) of the network's input images,
    input_hw, stride)`` → ``pv_target`` (S, C, h, w) float32, ``pv_valid`` (S, h, w) bool and, for
    vehicles (``boxes``: the split's :class:`occfeat.data.gt.BoxTable`), ``pv_centerness`` (S, h, w),
    ``pv_ltrb`` (S, 4, h, w) in feature pixels and ``pv_depth`` (S, h, w) in metres; h, w = input / stride.
    Vehicles: boxes with at least ``min_lidar_points`` LiDAR points (unknown counts are kept) and at least
    ``min_visible`` of their projection inside the image (v2's filter). Map (``map_gt``: token →
    {"target": (C, X, Y)} in the ego frame on ``grid``; ``lidar``: token → :class:`SweepJob`): the classes
    where each pixel's ray meets the ground, none where the LiDAR sees something nearer."""

    def __init__(self, grid, boxes=None, map_gt=None, lidar: dict | None = None, min_lidar_points: int = 3,
                 min_visible: float = 0.2, tolerance: float = 0.5, fill_rows: int = 1):
        if (boxes is None) == (map_gt is None):
            raise ValueError("PerspectiveTargets needs exactly one of boxes (vehicle) and map_gt (map)")
        self.grid, self.boxes, self.map_gt, self.lidar = grid, boxes, map_gt, lidar
        self.min_lidar_points, self.min_visible, self.tolerance, self.fill_rows = min_lidar_points, min_visible, tolerance, fill_rows

    def __call__(self, token: str, cam_T_ego: np.ndarray, K: np.ndarray, input_hw: tuple[int, int], stride: int) -> dict:
        from occfeat.geometry import scale_intrinsics

        hw = (input_hw[0] // stride, input_hw[1] // stride)
        Ks = scale_intrinsics(np.asarray(K, np.float64), 1.0 / stride, 1.0 / stride)
        if self.boxes is not None:
            bottom, centres, _ = self.boxes[token]
            pts = self.boxes.lidar_points(token)
            keep = (pts < 0) | (pts >= self.min_lidar_points)
            corners = box_corners(bottom[keep], centres[keep])
            per_cam = [box_targets(corners, centres[keep], cam_T_ego[s], Ks[s], hw, min_visible=self.min_visible)
                       for s in range(len(Ks))]
            out = {"pv_target": np.stack([t["vehicle"][None] for t in per_cam]).astype(np.float32),
                   "pv_valid": np.ones((len(Ks), *hw), bool)}
            for key, name in (("centerness", "pv_centerness"), ("ltrb", "pv_ltrb"), ("depth", "pv_depth")):
                out[name] = np.stack([t[key] for t in per_cam])
            return out
        masks = self.map_gt(token)["target"]
        points = None
        if self.lidar is not None:
            from occfeat.data.voxelize import job_points

            points = job_points(self.lidar[token]).astype(np.float64)
        per_cam = []
        for s in range(len(Ks)):
            depth = lidar_depth_image(points, cam_T_ego[s], Ks[s], hw) if points is not None else None
            per_cam.append(ground_targets(masks, self.grid, cam_T_ego[s], Ks[s], hw, lidar_depth=depth, tolerance=self.tolerance,
                                          fill_rows=self.fill_rows))
        return {"pv_target": np.stack([t["map"] for t in per_cam]).astype(np.float32), "pv_valid": np.stack([t["valid"] for t in per_cam])}
