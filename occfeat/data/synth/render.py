"""Numba ray casting of the synthetic world: the cameras and the LiDAR see the same geometry —
the ground plane z = 0 painted by map layer (``Layout``), and oriented boxes (static world + agents).

Cameras: one ray per pixel centre, rows in parallel (``prange``); boxes are culled per row by their
projected screen rectangle, so the cost is ~ pixels covered. LiDAR: one ray per (beam, azimuth),
azimuth columns in parallel, boxes culled by their azimuth interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from occfeat.data.synth.semantics import GROUND_CLASS, KIND_CLASS, SKY
from occfeat.data.synth.world import (
    ASPHALT, BOX_MARGIN, CARPARK, GRASS, KIND_BIG, KIND_BUILDING, KIND_CAR, KIND_CROWN, KIND_PED,
    KIND_TWO_WHEEL, SIDEWALK, WHITE_PAINT, YELLOW_PAINT, ZEBRA, Layout, Scene,
)

GROUND_RGB = np.array(
    [[0.33, 0.42, 0.20], [0.30, 0.30, 0.31], [0.62, 0.60, 0.56], [0.90, 0.90, 0.88], [0.88, 0.88, 0.86],
     [0.85, 0.70, 0.15], [0.25, 0.25, 0.27]], dtype=np.float64)  # indexed by material
GROUND_INTENSITY = np.array([8.0, 4.0, 15.0, 80.0, 70.0, 60.0, 5.0])
KIND_INTENSITY = np.array([25.0, 25.0, 20.0, 10.0, 30.0, 12.0, 12.0, 40.0])
SKY_TOP, SKY_HORIZON = np.array([0.35, 0.55, 0.85]), np.array([0.78, 0.84, 0.9])
SUN = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])
CAMERA_RANGE = 160.0  # boxes farther than this are not drawn (the fog has eaten them)
FOG_M = 350.0


@dataclass
class BoxSet:
    """Everything the rays can hit besides the ground, at one instant.

    boxes (N, 7): cx, cy, cz, half length, half width, half height, yaw (geometry, global frame);
    colors (N, 3) float; kinds (N,) int32; agent (N,) int32 = index into the scene's agents or -1."""

    boxes: np.ndarray
    colors: np.ndarray
    kinds: np.ndarray
    agent: np.ndarray

    def near(self, xy: np.ndarray, radius: float) -> "BoxSet":
        r = np.hypot(self.boxes[:, 3], self.boxes[:, 4])
        keep = np.hypot(self.boxes[:, 0] - xy[0], self.boxes[:, 1] - xy[1]) - r < radius
        return BoxSet(self.boxes[keep], self.colors[keep], self.kinds[keep], self.agent[keep])


def annotation_boxes(scene: Scene, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Agents' annotation boxes at time t: (centres (N, 3), wlh (N, 3), yaw (N,)); the geometry drawn
    is BOX_MARGIN inside these on every face."""
    xy, yaw, _ = scene.agents.state(t)
    wlh = np.asarray(scene.agents.wlh, dtype=np.float64).reshape(-1, 3)
    centres = np.concatenate([xy, BOX_MARGIN + wlh[:, 2:3] / 2], axis=1)
    return centres, wlh, yaw


def boxes_at(layout: Layout, scene: Scene, t: float) -> BoxSet:
    centres, wlh, yaw = annotation_boxes(scene, t)
    m = BOX_MARGIN
    geo = np.stack([centres[:, 0], centres[:, 1], centres[:, 2] + m / 2, wlh[:, 1] / 2 - m, wlh[:, 0] / 2 - m,
                    (wlh[:, 2] - 2 * m) / 2 - m / 2, yaw], axis=1).reshape(-1, 7)
    n = len(scene.agents)
    return BoxSet(
        boxes=np.concatenate([layout.static_boxes, geo]),
        colors=np.concatenate([layout.static_colors, np.asarray(scene.agents.color, dtype=np.float32).reshape(-1, 3)]),
        kinds=np.concatenate([layout.static_kinds, np.asarray(scene.agents.kind, dtype=np.int32)]),
        agent=np.concatenate([np.full(len(layout.static_boxes), -1, np.int32), np.arange(n, dtype=np.int32)]),
    )


# ------------------------------------------------------------------ kernels ----


@njit(cache=True, inline="always")
def _frac(v, p):
    return v / p - math.floor(v / p)


@njit(cache=True, inline="always")
def _hash(ix, iy):
    h = (ix * 374761393 + iy * 668265263) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return (h & 0xFFFF) / 65535.0


@njit(cache=True)
def _road_material(along, across, hw, lanes, centers, cross_hw, left, P):
    lw, gap, cw, sg, sw_ = P[0], P[2], P[3], P[4], P[5]
    dmin, jn = 1e9, 0
    for j in range(centers.shape[0]):
        dd = abs(along - centers[j]) - cross_hw[j]
        if dd < dmin:
            dmin, jn = dd, j
    if gap <= dmin < gap + cw:
        if abs(across) < hw - 0.3 and _frac(across + hw, 1.0) < 0.5:
            return ZEBRA
        return ASPHALT
    stop0 = gap + cw + sg
    if dmin < stop0 + sw_:
        if dmin >= stop0:
            approach = -1.0 if along > centers[jn] else 1.0  # travel direction of incoming traffic
            if across * approach * left * P[8] > 0:
                return WHITE_PAINT
        return ASPHALT
    a = abs(across)
    if 0.06 < a < 0.2:
        return YELLOW_PAINT
    for k in range(1, lanes):
        if abs(a - k * lw) < 0.075 and _frac(along, 6.0) < 0.5:
            return WHITE_PAINT
    if abs(a - (hw - 0.3)) < 0.075:
        return WHITE_PAINT
    return ASPHALT


@njit(cache=True)
def ground_material(x, y, centers, hw0, hw1, lanes0, lanes1, carparks, P):
    """Material id of the ground at global (x, y); the same rules the map polygons encode."""
    i0, i1 = -1, -1
    for k in range(centers.shape[0]):
        if abs(y - centers[k]) < hw0[k]:
            i0 = k
        if abs(x - centers[k]) < hw1[k]:
            i1 = k
    if i0 >= 0 and i1 >= 0:
        return ASPHALT
    if i0 >= 0:
        return _road_material(x, y - centers[i0], hw0[i0], lanes0[i0], centers, hw1, 1.0, P)
    if i1 >= 0:
        return _road_material(y, x - centers[i1], hw1[i1], lanes1[i1], centers, hw0, -1.0, P)
    sw = P[1]
    for k in range(centers.shape[0]):
        if abs(y - centers[k]) < hw0[k] + sw or abs(x - centers[k]) < hw1[k] + sw:
            return SIDEWALK
    for m in range(carparks.shape[0]):
        if carparks[m, 0] <= x < carparks[m, 1] and carparks[m, 2] <= y < carparks[m, 3]:
            axis_along_x = carparks[m, 4] == 0
            along = x - carparks[m, 0] if axis_along_x else y - carparks[m, 2]
            dist = ((y if axis_along_x else x) - carparks[m, 5]) * carparks[m, 6]
            bay_end = 0.3 + P[6]
            if 0.3 < dist < bay_end and _frac(along, P[7]) < 0.12 / P[7] * 1.0:
                return WHITE_PAINT
            if abs(dist - bay_end) < 0.06:
                return WHITE_PAINT
            return CARPARK
    return GRASS


@njit(cache=True, inline="always")
def _hit_box(ox, oy, oz, dx, dy, dz, box):
    """Entry distance of a ray into an oriented box (inf if missed or origin inside), face axis, sign."""
    c, s = math.cos(box[6]), math.sin(box[6])
    px, py, pz = ox - box[0], oy - box[1], oz - box[2]
    lp = (c * px + s * py, -s * px + c * py, pz)
    ld = (c * dx + s * dy, -s * dx + c * dy, dz)
    h = (box[3], box[4], box[5])
    tmin, tmax, axis = -1e30, 1e30, -1
    for a in range(3):
        if abs(ld[a]) < 1e-12:
            if abs(lp[a]) > h[a]:
                return math.inf, -1, 0.0
        else:
            t1, t2 = (-h[a] - lp[a]) / ld[a], (h[a] - lp[a]) / ld[a]
            if t1 > t2:
                t1, t2 = t2, t1
            if t1 > tmin:
                tmin, axis = t1, a
            tmax = min(tmax, t2)
    if tmax < tmin or tmin <= 0.0:
        return math.inf, -1, 0.0
    return tmin, axis, -1.0 if ld[axis] > 0 else 1.0


@njit(cache=True)
def _box_color(ox, oy, oz, dx, dy, dz, t, axis, sign, box, color, kind, out):
    c, s = math.cos(box[6]), math.sin(box[6])
    hx, hy, hz = ox + t * dx - box[0], oy + t * dy - box[1], oz + t * dz - box[2]
    lx, ly, lz = c * hx + s * hy, -s * hx + c * hy, hz
    fz = (lz + box[5]) / (2 * box[5])
    r, g, b = color[0], color[1], color[2]
    side = axis != 2
    if kind == KIND_CAR or kind == KIND_BIG:
        wheel_x = abs(lx) > box[3] * 0.35 and _frac(lx + box[3], 1.3) < 0.6 if kind == KIND_BIG else abs(abs(lx) - box[3] * 0.62) < 0.38
        if side and 0.55 < fz < 0.87 and (kind == KIND_CAR or _frac(lx, 1.4) < 0.75):
            r, g, b = 0.12, 0.15, 0.2
        elif axis == 1 and fz < 0.3 and wheel_x:
            r, g, b = 0.05, 0.05, 0.05
        elif fz < 0.12:
            r, g, b = r * 0.4, g * 0.4, b * 0.4
    elif kind == KIND_TWO_WHEEL:
        if fz < 0.45:
            r, g, b = 0.1, 0.1, 0.11
    elif kind == KIND_PED:
        if fz > 0.88:
            r, g, b = 0.8, 0.65, 0.5
        elif fz < 0.48:
            r, g, b = 0.15, 0.15, 0.3
    elif kind == KIND_BUILDING:
        face = ly if axis == 0 else lx
        if side and 0.3 < _frac(lz + box[5], 3.2) < 0.75 and 0.2 < _frac(face + 100.0, 2.8) < 0.75:
            r, g, b = 0.2, 0.25, 0.32
        elif not side:
            r, g, b = r * 0.8, g * 0.8, b * 0.8
    elif kind == KIND_CROWN:
        n = 0.7 + 0.6 * _hash(int(math.floor(lx * 3 + 1000)), int(math.floor((ly + lz) * 3 + 1000)))
        r, g, b = r * n, g * n, b * n
    # face normal in the global frame for Lambert shading
    if axis == 0:
        nx, ny, nz = c * sign, s * sign, 0.0
    elif axis == 1:
        nx, ny, nz = -s * sign, c * sign, 0.0
    else:
        nx, ny, nz = 0.0, 0.0, sign
    shade = 0.5 + 0.5 * max(0.0, nx * SUN[0] + ny * SUN[1] + nz * SUN[2])
    out[0], out[1], out[2] = r * shade, g * shade, b * shade


@njit(cache=True)
def _ground_color(x, y, mat, out):
    n = 0.9 + 0.2 * _hash(int(math.floor(x * 5.0 + 1e5)), int(math.floor(y * 5.0 + 1e5)))
    if mat == SIDEWALK and (_frac(x, 1.5) < 0.03 or _frac(y, 1.5) < 0.03):
        n *= 0.8
    for k in range(3):
        out[k] = GROUND_RGB[mat, k] * n


@njit(parallel=True, cache=True)
def camera_kernel(H, W, K_inv, R, origin, boxes, colors, kinds, rect, t_low, need_proj, centers, hw0, hw1, lanes0,
                  lanes1, carparks, P, ground_class, kind_class, sky_class, rgb, hit, proj, label, distance):
    """rgb (H, W, 3) uint8, hit (H, W) int32 box index or -1, proj (H, N) int32 pixels each box covers
    ignoring occlusion (counted where need_proj, for visibility), label (H, W) uint8 semantic class
    (``ground_class[material]``, ``kind_class[kind]`` or ``sky_class``), distance (H, W) float32 along
    the ray to the hit (inf for sky). rect (N, 4) int: row0, row1, col0, col1
    (half-open). Boxes come sorted by t_low, a lower bound of their distance, so a box already hidden
    behind the nearest hit so far is skipped without a test."""
    N = boxes.shape[0]
    ox, oy, oz = origin[0], origin[1], origin[2]
    for r in prange(H):
        depth = np.full(W, np.inf)
        best = np.full(W, -1, np.int32)
        dirs = np.empty((W, 3))
        for col in range(W):
            u, v = col + 0.5, r + 0.5
            cx = K_inv[0, 0] * u + K_inv[0, 1] * v + K_inv[0, 2]
            cy = K_inv[1, 0] * u + K_inv[1, 1] * v + K_inv[1, 2]
            cz = K_inv[2, 0] * u + K_inv[2, 1] * v + K_inv[2, 2]
            gx = R[0, 0] * cx + R[0, 1] * cy + R[0, 2] * cz
            gy = R[1, 0] * cx + R[1, 1] * cy + R[1, 2] * cz
            gz = R[2, 0] * cx + R[2, 1] * cy + R[2, 2] * cz
            nrm = math.sqrt(gx * gx + gy * gy + gz * gz)
            dirs[col, 0], dirs[col, 1], dirs[col, 2] = gx / nrm, gy / nrm, gz / nrm
            if dirs[col, 2] < -1e-9:
                depth[col] = -oz / dirs[col, 2]  # the ground hides whatever lies beyond it
        for b in range(N):
            if rect[b, 0] <= r < rect[b, 1]:
                for col in range(rect[b, 2], rect[b, 3]):
                    if t_low[b] >= depth[col] and not need_proj[b]:
                        continue
                    t, _, _ = _hit_box(ox, oy, oz, dirs[col, 0], dirs[col, 1], dirs[col, 2], boxes[b])
                    if t < math.inf:
                        if need_proj[b]:
                            proj[r, b] += 1
                        if t < depth[col]:
                            depth[col], best[col] = t, b
        px = np.empty(3)
        for col in range(W):
            dx, dy, dz = dirs[col, 0], dirs[col, 1], dirs[col, 2]
            tg = -oz / dz if dz < -1e-9 else math.inf
            b = best[col]
            if b >= 0 and depth[col] < tg:
                t, axis, sign = _hit_box(ox, oy, oz, dx, dy, dz, boxes[b])
                _box_color(ox, oy, oz, dx, dy, dz, t, axis, sign, boxes[b], colors[b], kinds[b], px)
                hit[r, col] = b
                label[r, col] = kind_class[kinds[b]]
            elif tg < math.inf:
                t = tg
                x, y = ox + t * dx, oy + t * dy
                mat = ground_material(x, y, centers, hw0, hw1, lanes0, lanes1, carparks, P)
                _ground_color(x, y, mat, px)
                hit[r, col] = -1
                label[r, col] = ground_class[mat]
            else:
                t = math.inf
                a = min(1.0, max(0.0, dz * 4.0))
                for k in range(3):
                    px[k] = SKY_HORIZON[k] * (1 - a) + SKY_TOP[k] * a
                hit[r, col] = -1
                label[r, col] = sky_class
            distance[r, col] = t
            if t < math.inf:
                f = 1.0 - math.exp(-t / FOG_M)
                for k in range(3):
                    px[k] = px[k] * (1 - f) + SKY_HORIZON[k] * f
            for k in range(3):
                rgb[r, col, k] = np.uint8(min(255.0, max(0.0, px[k] * 255.0 + 0.5)))


@njit(parallel=True, cache=True)
def lidar_kernel(dirs, origin, boxes, kinds, box_az, box_half, max_range, centers, hw0, hw1, lanes0, lanes1, carparks, P,
                 rng_out, intensity):
    """dirs (B, A, 3) global unit rays from ``origin``; writes range (inf = no return) and intensity."""
    B, A, N = dirs.shape[0], dirs.shape[1], boxes.shape[0]
    ox, oy, oz = origin[0], origin[1], origin[2]
    for a in prange(A):
        az = math.atan2(dirs[0, a, 1], dirs[0, a, 0])
        cand = np.empty(N, np.int64)
        nc = 0
        for b in range(N):
            d = az - box_az[b]
            d = d - 2 * math.pi * math.floor((d + math.pi) / (2 * math.pi))
            if abs(d) <= box_half[b]:
                cand[nc] = b
                nc += 1
        for beam in range(B):
            dx, dy, dz = dirs[beam, a, 0], dirs[beam, a, 1], dirs[beam, a, 2]
            best, bi = -oz / dz if dz < -1e-9 else math.inf, -1
            for i in range(nc):
                t, _, _ = _hit_box(ox, oy, oz, dx, dy, dz, boxes[cand[i]])
                if t < best:
                    best, bi = t, cand[i]
            if best > max_range:
                rng_out[beam, a], intensity[beam, a] = math.inf, 0.0
                continue
            rng_out[beam, a] = best
            if bi >= 0:
                intensity[beam, a] = KIND_INTENSITY[kinds[bi]]
            else:
                x, y = ox + best * dx, oy + best * dy
                intensity[beam, a] = GROUND_INTENSITY[ground_material(x, y, centers, hw0, hw1, lanes0, lanes1, carparks, P)]


# ------------------------------------------------------------------ wrappers ----


def _ground_args(layout: Layout) -> tuple:
    hw = layout.half_widths.astype(np.float64)
    lanes = layout.lanes.astype(np.int64)
    return (layout.centers.astype(np.float64), hw[0], hw[1], lanes[0], lanes[1], layout.carparks, layout.shader_params())


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners of (N, 7) boxes."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs[None] * boxes[:, None, 3:6]
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = c * local[..., 0] - s * local[..., 1] + boxes[:, None, 0]
    y = s * local[..., 0] + c * local[..., 1] + boxes[:, None, 1]
    return np.stack([x, y, local[..., 2] + boxes[:, None, 2]], axis=-1)


class CameraRender(NamedTuple):
    """One ray-cast image and what the renderer knows per pixel."""

    rgb: np.ndarray
    """(H, W, 3) uint8"""
    hit: np.ndarray
    """(H, W) int32 index into ``boxes`` of the box seen, or -1 (ground or sky)"""
    projected: np.ndarray
    """(N,) pixels each agent box would cover unoccluded (0 for static boxes)"""
    boxes: BoxSet
    """the culled, distance-sorted boxes ``hit`` indexes"""
    label: np.ndarray
    """(H, W) uint8 semantic class id (``semantics.SEMANTIC_CLASSES``)"""
    distance: np.ndarray
    """(H, W) float32 metres along the pixel-centre ray to the surface seen; inf for sky"""


def render_camera(layout: Layout, boxset: BoxSet, global_T_cam: np.ndarray, K: np.ndarray, width: int, height: int
                  ) -> CameraRender:
    """Ray-cast one image through pixel centres (u + 0.5, v + 0.5) of pix_T_cam ``K``."""
    bs = boxset.near(global_T_cam[:2, 3], CAMERA_RANGE)
    t_low = np.maximum(np.linalg.norm(bs.boxes[:, :3] - global_T_cam[:3, 3], axis=1) - np.linalg.norm(bs.boxes[:, 3:6], axis=1), 0.0)
    order = np.argsort(t_low, kind="stable")
    bs, t_low = BoxSet(bs.boxes[order], bs.colors[order], bs.kinds[order], bs.agent[order]), t_low[order]
    cam_T_global = np.linalg.inv(global_T_cam)
    corners = box_corners(bs.boxes) @ cam_T_global[:3, :3].T + cam_T_global[:3, 3]
    z = corners[..., 2]
    front = z > 0.05
    uvw = corners @ K.T
    uv = uvw[..., :2] / np.where(front, z, 1.0)[..., None]
    rect = np.zeros((len(bs.boxes), 4), dtype=np.int64)
    all_front, any_front = front.all(1), front.any(1)
    big = 1 << 30
    u0 = np.where(all_front, np.floor(uv[..., 0].min(1)) - 1, -big)
    u1 = np.where(all_front, np.ceil(uv[..., 0].max(1)) + 1, big)
    v0 = np.where(all_front, np.floor(uv[..., 1].min(1)) - 1, -big)
    v1 = np.where(all_front, np.ceil(uv[..., 1].max(1)) + 1, big)
    rect[:, 0], rect[:, 1] = np.clip(v0, 0, height), np.clip(v1, 0, height)
    rect[:, 2], rect[:, 3] = np.clip(u0, 0, width), np.clip(u1, 0, width)
    rect[~any_front] = 0  # entirely behind the camera
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    hit = np.empty((height, width), dtype=np.int32)
    proj = np.zeros((height, len(bs.boxes)), dtype=np.int32)
    label = np.empty((height, width), dtype=np.uint8)
    distance = np.empty((height, width), dtype=np.float32)
    camera_kernel(height, width, np.linalg.inv(K), np.ascontiguousarray(global_T_cam[:3, :3]),
                  np.ascontiguousarray(global_T_cam[:3, 3]), bs.boxes, bs.colors.astype(np.float64), bs.kinds, rect,
                  t_low, bs.agent >= 0,
                  *_ground_args(layout), GROUND_CLASS, KIND_CLASS, SKY, rgb, hit, proj, label, distance)
    return CameraRender(rgb, hit, proj.sum(0), bs, label, distance)


def cast_lidar(layout: Layout, boxset: BoxSet, global_T_lidar: np.ndarray, dirs_sensor: np.ndarray, max_range: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """One sweep. dirs_sensor (B, A, 3) unit rays in the sensor frame.
    Returns (range (B, A) float64, inf where no return; intensity (B, A))."""
    origin = np.ascontiguousarray(global_T_lidar[:3, 3])
    bs = boxset.near(origin[:2], max_range)
    rel = bs.boxes[:, :2] - origin[:2]
    dist = np.hypot(rel[:, 0], rel[:, 1])
    radius = np.hypot(bs.boxes[:, 3], bs.boxes[:, 4]) + 0.05
    box_az = np.arctan2(rel[:, 1], rel[:, 0])
    box_half = np.where(dist > radius, np.arcsin(np.clip(radius / np.maximum(dist, 1e-9), 0, 1)), np.pi + 1)
    dirs = np.ascontiguousarray(dirs_sensor @ global_T_lidar[:3, :3].T)
    B, A = dirs.shape[:2]
    rng, inten = np.empty((B, A)), np.empty((B, A))
    # a ring's azimuth step is ~0.33 deg: pad the box interval by one step so no grazing column is missed
    lidar_kernel(dirs, origin, bs.boxes, bs.kinds, box_az, box_half + 2 * np.pi / A, max_range, *_ground_args(layout),
                 rng, inten)
    return rng, inten
