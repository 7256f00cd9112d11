"""The procedural world: a Manhattan road network with lanes, sidewalks, crossings and car parks
(``Layout``), static boxes (buildings, trees, poles), and per scene an ego trajectory plus agents
(vehicles, pedestrians) moving at constant speed along lanes and sidewalks (``Scene``). The ego and
some of the traffic turn at an intersection (a quarter circle between two lane lines, ``path_state``),
so yaw varies over a scene; traffic on the road the ego turns into queues at its stop line.

Everything lives in the global frame (x east, y north, z up, ground at z = 0, map canvas
[0, extent]^2). Roads of axis 0 run along x (centred at y = c), roads of axis 1 run along y.
The same ``Layout`` arrays drive the map JSON and the numba ground shader, so map and pixels agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ---- materials of the ground shader and boxes (kinds) ----
GRASS, ASPHALT, SIDEWALK, ZEBRA, WHITE_PAINT, YELLOW_PAINT, CARPARK = range(7)
KIND_CAR, KIND_BIG, KIND_TWO_WHEEL, KIND_PED, KIND_BUILDING, KIND_TRUNK, KIND_CROWN, KIND_POLE = range(8)
# Annotated geometry sits inside its annotation box by this margin (metres) on every face, and the
# box floats that high above the ground, so LiDAR points on a surface are never on a box boundary
# and the devkit's points_in_box agrees with num_lidar_pts exactly.
BOX_MARGIN = 0.02


@dataclass(frozen=True)
class WorldSpec:
    """Road-network dimensions (metres)."""

    n_roads: int = 5  # per axis
    pitch: float = 100.0  # distance between parallel roads
    margin: float = 60.0  # from the outer roads to the map edge
    lane_width: float = 3.5
    sidewalk_width: float = 4.0
    crossing_gap: float = 1.0  # intersection edge -> zebra crossing
    crossing_width: float = 4.0
    stop_gap: float = 1.0  # zebra -> stop line
    stop_width: float = 0.4
    carpark_depth: float = 12.0
    bay_depth: float = 5.5
    bay_width: float = 2.6

    @property
    def extent(self) -> float:
        return 2 * self.margin + (self.n_roads - 1) * self.pitch


# name: (w, l, h) mean size, kind, share among moving vehicles; nuScenes-typical sizes.
VEHICLES: dict[str, tuple[tuple[float, float, float], int, float]] = {
    "vehicle.car": ((1.95, 4.6, 1.7), KIND_CAR, 0.66),
    "vehicle.truck": ((2.5, 7.0, 2.9), KIND_BIG, 0.08),
    "vehicle.bus.rigid": ((2.9, 11.0, 3.5), KIND_BIG, 0.07),
    "vehicle.trailer": ((2.9, 12.0, 3.9), KIND_BIG, 0.0),
    "vehicle.construction": ((2.8, 6.4, 3.2), KIND_BIG, 0.03),
    "vehicle.motorcycle": ((0.77, 2.1, 1.5), KIND_TWO_WHEEL, 0.10),
    "vehicle.bicycle": ((0.6, 1.7, 1.3), KIND_TWO_WHEEL, 0.06),
}
PEDESTRIAN = ("human.pedestrian.adult", (0.67, 0.73, 1.77))
VEHICLE_COLORS = np.array(
    [[0.85, 0.85, 0.85], [0.55, 0.57, 0.6], [0.12, 0.12, 0.14], [0.7, 0.1, 0.1], [0.1, 0.2, 0.55], [0.35, 0.35, 0.38],
     [0.93, 0.93, 0.9], [0.2, 0.35, 0.22], [0.75, 0.6, 0.3], [0.45, 0.05, 0.08], [0.3, 0.45, 0.65], [0.6, 0.62, 0.66]]
)
# Facade base colours (concrete, brick, sandstone, glass, white render, dark cladding); a block draws a few.
FACADE_COLORS = np.array(
    [[0.62, 0.62, 0.6], [0.58, 0.3, 0.22], [0.78, 0.7, 0.52], [0.35, 0.48, 0.58], [0.86, 0.85, 0.8], [0.3, 0.3, 0.33]]
)
BIG_COLORS = {"vehicle.truck": (0.9, 0.9, 0.88), "vehicle.bus.rigid": (0.15, 0.5, 0.3),
              "vehicle.trailer": (0.6, 0.6, 0.62), "vehicle.construction": (0.95, 0.75, 0.1)}


@dataclass
class Layout:
    """The static world. Road arrays are indexed [axis][k]; carparks rows are
    (xmin, xmax, ymin, ymax, axis of the adjacent road, near-edge coordinate, direction away from road)."""

    spec: WorldSpec
    left_hand: bool  # Singapore drives on the left
    centers: np.ndarray  # (n_roads,) road centre coordinates (same for both axes)
    lanes: np.ndarray  # (2, n_roads) lanes per direction
    carparks: np.ndarray  # (M, 7)
    static_boxes: np.ndarray  # (S, 7) cx, cy, cz, half l, half w, half h, yaw
    static_colors: np.ndarray  # (S, 3)
    static_kinds: np.ndarray  # (S,)

    @property
    def half_widths(self) -> np.ndarray:
        """(2, n_roads) road half widths."""
        return self.lanes * self.spec.lane_width

    def lane_across(self, axis: int, k: int, direction: int, lane: int) -> float:
        """Across-road coordinate of a lane centre. ``direction`` +1/-1 along the road axis, lane 0 = inner."""
        left = 1.0 if axis == 0 else -1.0  # left normal of +x is +y; of +y is -x
        hand = 1.0 if self.left_hand else -1.0
        return self.centers[k] + direction * left * hand * (lane + 0.5) * self.spec.lane_width

    def shader_params(self) -> np.ndarray:
        s = self.spec
        return np.array([s.lane_width, s.sidewalk_width, s.crossing_gap, s.crossing_width, s.stop_gap,
                         s.stop_width, s.bay_depth, s.bay_width, 1.0 if self.left_hand else -1.0])


def _box(cx, cy, z0, l, w, h, yaw) -> list[float]:
    return [cx, cy, z0 + h / 2, l / 2, w / 2, h / 2, yaw]


def make_layout(seed: int, left_hand: bool, spec: WorldSpec = WorldSpec()) -> Layout:
    rng = np.random.default_rng([seed, 0])
    centers = spec.margin + spec.pitch * np.arange(spec.n_roads)
    lanes = rng.choice([1, 2], size=(2, spec.n_roads), p=[0.35, 0.65])
    hw = lanes * spec.lane_width
    sw = spec.sidewalk_width
    # Blocks lie between consecutive boundaries: the map edges and the roads (plus their sidewalks).
    bounds = [(0.0, None)] + [(c, k) for k, c in enumerate(centers)] + [(spec.extent, None)]
    carparks, boxes, colors, kinds = [], [], [], []

    def add(b, color, kind):
        boxes.append(b), colors.append(color), kinds.append(kind)

    for bi in range(len(bounds) - 1):  # along y (between axis-0 roads)
        for bj in range(len(bounds) - 1):  # along x (between axis-1 roads)
            (y0c, ky0), (y1c, ky1) = bounds[bi], bounds[bi + 1]
            (x0c, kx0), (x1c, kx1) = bounds[bj], bounds[bj + 1]
            y0 = y0c + (hw[0, ky0] + sw if ky0 is not None else 0.0)
            y1 = y1c - (hw[0, ky1] + sw if ky1 is not None else 0.0)
            x0 = x0c + (hw[1, kx0] + sw if kx0 is not None else 0.0)
            x1 = x1c - (hw[1, kx1] + sw if kx1 is not None else 0.0)
            # sides: (axis of the adjacent road, near coordinate, direction into the block, has road)
            sides = [(0, y0, 1.0, ky0 is not None), (0, y1, -1.0, ky1 is not None),
                     (1, x0, 1.0, kx0 is not None), (1, x1, -1.0, kx1 is not None)]
            block_parks = []
            palette = FACADE_COLORS[rng.choice(len(FACADE_COLORS), size=2, replace=False)]
            road_sides = [s for s in sides if s[3]]
            if road_sides and rng.random() < 0.6:
                axis, near, d, _ = road_sides[rng.integers(len(road_sides))]
                a0, a1 = (x0, x1) if axis == 0 else (y0, y1)
                length = rng.uniform(30.0, min(60.0, a1 - a0 - 10.0))
                start = rng.uniform(a0 + 3.0, a1 - 3.0 - length)
                far = near + d * spec.carpark_depth
                lo, hi = min(near, far), max(near, far)
                rect = (start, start + length, lo, hi) if axis == 0 else (lo, hi, start, start + length)
                block_parks.append(rect)
                carparks.append([*rect, axis, near, d])
            for axis, near, d, _ in sides:
                a0, a1 = (x0, x1) if axis == 0 else (y0, y1)
                if axis == 1:  # x-sides span the block; y-sides leave the corners to them
                    a0, a1 = a0 + 22.0, a1 - 22.0
                pos = a0 + rng.uniform(0.0, 6.0)
                while True:
                    length, depth = rng.uniform(10.0, 28.0), rng.uniform(8.0, 18.0)
                    if pos + length > a1:
                        break
                    c_near = near + d * 2.5
                    c_far = c_near + d * depth
                    lo, hi = min(c_near, c_far), max(c_near, c_far)
                    rect = (pos, pos + length, lo, hi) if axis == 0 else (lo, hi, pos, pos + length)
                    if not any(rect[0] < p[1] + 2 and p[0] - 2 < rect[1] and rect[2] < p[3] + 2 and p[2] - 2 < rect[3]
                               for p in block_parks):
                        base = palette[rng.integers(len(palette))] * rng.uniform(0.8, 1.15)
                        tint = rng.uniform(-0.05, 0.05, 3)
                        add(_box((rect[0] + rect[1]) / 2, (rect[2] + rect[3]) / 2, 0.0, rect[1] - rect[0],
                                 rect[3] - rect[2], rng.uniform(6.0, 28.0), 0.0), np.clip(base + tint, 0, 1), KIND_BUILDING)
                    pos += length + rng.uniform(2.0, 8.0)

    # Trees and poles on the sidewalks, away from intersections.
    for axis in (0, 1):
        for k, c in enumerate(centers):
            for side in (-1.0, 1.0):
                p_tree = rng.uniform(0.35, 0.95)  # leafy and bare streets
                for what, across, step in (("tree", hw[axis, k] + sw - 0.7, (9.0, 16.0)), ("pole", hw[axis, k] + 0.4, (25.0, 40.0))):
                    u = rng.uniform(0.0, step[1])
                    while u < spec.extent:
                        near_cross = np.min(np.abs(u - centers) - hw[1 - axis]) < sw + 3.0
                        if not near_cross:
                            v = c + side * across
                            x, y = (u, v) if axis == 0 else (v, u)
                            if what == "pole":
                                add(_box(x, y, 0.0, 0.25, 0.25, 7.0, 0.0), np.array([0.5, 0.5, 0.52]), KIND_POLE)
                            elif rng.random() < p_tree:
                                trunk_h = rng.uniform(2.2, 3.0)
                                crown = rng.uniform(2.0, 3.0)
                                add(_box(x, y, 0.0, 0.3, 0.3, trunk_h, 0.0), np.array([0.4, 0.28, 0.15]), KIND_TRUNK)
                                add(_box(x, y, trunk_h, crown, crown, rng.uniform(2.0, 3.5), rng.uniform(0, np.pi / 2)),
                                    np.array([0.15, rng.uniform(0.35, 0.5), 0.12]), KIND_CROWN)
                        u += rng.uniform(*step)
    return Layout(
        spec=spec,
        left_hand=left_hand,
        centers=centers,
        lanes=lanes,
        carparks=np.asarray(carparks, dtype=np.float64).reshape(-1, 7),
        static_boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 7),
        static_colors=np.asarray(colors, dtype=np.float32).reshape(-1, 3),
        static_kinds=np.asarray(kinds, dtype=np.int32),
    )


# ------------------------------------------------------------------ scenes ----


def path_state(start: np.ndarray, yaw0: np.ndarray, s: np.ndarray, turn_at: np.ndarray, radius: np.ndarray,
               sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pose after arc length ``s`` along a path that goes straight from ``start`` (..., 2) at ``yaw0``
    for ``turn_at`` metres, turns by ``sign`` · 90° (+1 left, -1 right, 0 never) on a circle of
    ``radius``, then goes straight again. All arguments broadcast; returns (xy (..., 2), yaw (...))."""
    s, yaw0, turn_at = np.asarray(s, np.float64), np.asarray(yaw0, np.float64), np.asarray(turn_at, np.float64)
    radius, sign = np.asarray(radius, np.float64), np.asarray(sign, np.float64)
    arc = np.where(sign != 0, radius * np.pi / 2, 0.0)
    s1 = np.minimum(s, turn_at)  # first straight
    theta = np.where(sign != 0, np.clip(s - turn_at, 0.0, arc) / np.where(radius > 0, radius, 1.0), 0.0)
    s3 = np.maximum(s - turn_at - arc, 0.0)  # second straight
    h0 = np.stack([np.cos(yaw0), np.sin(yaw0)], -1)
    n0 = np.stack([-np.sin(yaw0), np.cos(yaw0)], -1)
    yaw = yaw0 + sign * theta
    # on the circle: forward R sin(theta), sideways (towards the turn) R (1 - cos(theta))
    fwd, side = radius * np.sin(theta), sign * radius * (1.0 - np.cos(theta))
    h = np.stack([np.cos(yaw), np.sin(yaw)], -1)
    xy = np.asarray(start, np.float64) + (s1 + fwd)[..., None] * h0 + side[..., None] * n0 + s3[..., None] * h
    return xy, yaw


@dataclass
class Agents:
    """Annotated objects of one scene, moving at constant speed: at time t (seconds after the first
    key frame) an agent is ``clip(speed * (t - t_start), 0, travel)`` metres along its path from
    ``start`` at ``yaw`` (straight, or turning at ``turn_at``: :func:`path_state`)."""

    category: list[str] = field(default_factory=list)
    wlh: list[tuple[float, float, float]] = field(default_factory=list)
    color: list[np.ndarray] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    start: list[tuple[float, float]] = field(default_factory=list)
    yaw: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    travel: list[float] = field(default_factory=list)
    t_start: list[float] = field(default_factory=list)
    in_traffic: list[bool] = field(default_factory=list)  # on a lane (stopped there, not parked, when still)
    turn_at: list[float] = field(default_factory=list)  # metres of path before the turn (inf: never)
    turn_radius: list[float] = field(default_factory=list)
    turn_sign: list[int] = field(default_factory=list)  # +1 left, -1 right, 0 straight

    def add(self, category, wlh, color, kind, start, yaw, speed=0.0, travel=np.inf, t_start=0.0, in_traffic=False,
            turn=(np.inf, 0.0, 0)):
        values = (category, wlh, color, kind, start, yaw, speed, travel, t_start, in_traffic, *turn)
        for name, v in zip(("category", "wlh", "color", "kind", "start", "yaw", "speed", "travel", "t_start", "in_traffic",
                            "turn_at", "turn_radius", "turn_sign"), values):
            getattr(self, name).append(v)

    def __len__(self) -> int:
        return len(self.category)

    def state(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xy (N, 2), yaw (N,), moving (N,) bool) at time t."""
        speed = np.asarray(self.speed, dtype=np.float64)
        run = speed * (t - np.asarray(self.t_start, dtype=np.float64))
        travel = np.asarray(self.travel, dtype=np.float64)
        xy, yaw = path_state(np.asarray(self.start, dtype=np.float64).reshape(-1, 2), self.yaw, np.clip(run, 0.0, travel),
                             self.turn_at, self.turn_radius, self.turn_sign)
        return xy.reshape(-1, 2), yaw.reshape(-1), (speed > 0) & (run > 0) & (run < travel)

    def keep(self, mask: np.ndarray) -> "Agents":
        out = Agents()
        for name in out.__dataclass_fields__:
            setattr(out, name, [v for v, m in zip(getattr(self, name), mask) if m])
        return out


@dataclass
class Ego:
    """The ego drives along road (axis, k) in ``direction`` at ``speed`` and either changes lanes once
    (maybe) or turns onto a cross road: ``turn_at`` metres after its t = 0 pose it follows a quarter
    circle of ``turn_radius`` to the left (``turn_sign`` +1) or right (-1), then drives on."""

    axis: int
    k: int
    direction: int
    speed: float
    u0: float  # along-road coordinate at t = 0
    across0: float
    across1: float
    t_change: float
    change_s: float = 4.0
    turn_at: float = np.inf
    turn_radius: float = 0.0
    turn_sign: int = 0

    @property
    def yaw0(self) -> float:
        return _road_yaw(self.axis, self.direction)

    def state(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(xy (..., 2), yaw (...)) of the rear axle at time(s) t."""
        t = np.asarray(t, dtype=np.float64)
        if self.turn_sign:
            start = _along_xy(self.axis, self.u0, self.across0)
            return path_state(np.asarray(start), self.yaw0, self.speed * t, self.turn_at, self.turn_radius, self.turn_sign)
        u = self.u0 + self.direction * self.speed * t
        s = np.clip((t - self.t_change) / self.change_s, 0.0, 1.0)
        across = self.across0 + (self.across1 - self.across0) * (3 * s**2 - 2 * s**3)
        d_across = (self.across1 - self.across0) * 6 * s * (1 - s) / self.change_s * ((t > self.t_change) & (s < 1))
        d_along = self.direction * self.speed
        if self.axis == 0:
            xy, yaw = np.stack([u, across], -1), np.arctan2(d_across, d_along)
        else:
            xy, yaw = np.stack([across, u], -1), np.arctan2(d_along, d_across)
        return xy, yaw


def _along_xy(axis: int, u: float, across: float) -> tuple[float, float]:
    """Global xy of a point at along-road coordinate u and across-road coordinate ``across``."""
    return (u, across) if axis == 0 else (across, u)


def _road_yaw(axis: int, direction: int) -> float:
    return (0.0 if direction > 0 else np.pi) if axis == 0 else (np.pi / 2 if direction > 0 else -np.pi / 2)


@dataclass(frozen=True)
class Turn:
    """A turn from lane (axis, k, direction, lane) onto lane (1 - axis, j, exit_direction, exit_lane):
    the two lane lines meet at ``corner`` along the first road and ``corner_exit`` along the second; the
    quarter circle starts ``radius`` before the corner and ends ``radius`` after it."""

    sign: int
    radius: float
    corner: float
    corner_exit: float


def plan_turn(layout: Layout, axis: int, k: int, direction: int, lane: int, j: int, exit_direction: int, exit_lane: int) -> Turn:
    """The quarter circle between two perpendicular lane lines that stays on the road: its radius keeps the
    arc off the kerb corner it turns around (R (1 - 1/sqrt 2) < the lane-to-kerb distances), 4.5-15 m."""
    cross = 1 - axis
    hw = layout.half_widths
    across = layout.lane_across(axis, k, direction, lane)
    exit_across = layout.lane_across(cross, j, exit_direction, exit_lane)
    h0 = np.array([np.cos(_road_yaw(axis, direction)), np.sin(_road_yaw(axis, direction))])
    h1 = np.array([np.cos(_road_yaw(cross, exit_direction)), np.sin(_road_yaw(cross, exit_direction))])
    sign = int(np.sign(h0[0] * h1[1] - h0[1] * h1[0]))
    kerb_k = layout.centers[k] + exit_direction * hw[axis, k]  # road k's kerb on the side the turn goes to
    kerb_j = layout.centers[j] - direction * hw[cross, j]  # road j's kerb on the side the ego comes from
    clearance = min(abs(kerb_k - across), abs(kerb_j - exit_across))
    radius = float(np.clip(0.85 * clearance / (1 - 1 / np.sqrt(2)), 4.5, 15.0))
    return Turn(sign, radius, float(exit_across), float(across))


@dataclass
class Scene:
    ego: Ego
    agents: Agents
    duration: float  # seconds from the first to the last key frame


def _vehicle(rng, name: str) -> tuple[tuple[float, float, float], np.ndarray, int]:
    (w, l, h), kind, _ = VEHICLES[name]
    scale = rng.uniform(0.92, 1.08, 3)
    color = BIG_COLORS.get(name) if name in BIG_COLORS else VEHICLE_COLORS[rng.integers(len(VEHICLE_COLORS))]
    return (w * scale[0], l * scale[1], h * scale[2]), np.asarray(color, dtype=np.float32), kind


def make_scene(layout: Layout, seed: int, index: int, duration: float, lead_in: float) -> Scene:
    """One scene's ego path and agents. ``lead_in``: seconds of LiDAR sweeps before the first key frame."""
    rng = np.random.default_rng([seed, 1, index])
    spec, hw = layout.spec, layout.half_widths
    axis, k = int(rng.integers(2)), int(rng.integers(spec.n_roads))
    cross_axis = 1 - axis
    direction = int(rng.choice([-1, 1]))
    n_lanes = int(layout.lanes[axis, k])
    speed = rng.uniform(4.0, 9.0)
    travel = speed * (duration + lead_in)
    lane0 = int(rng.integers(n_lanes))
    ego = _turning_ego(layout, rng, axis, k, direction, lane0, speed, duration, lead_in) if rng.random() < 0.65 else None
    if ego is None:
        lo, hi = spec.margin, spec.extent - spec.margin - travel
        u_first = rng.uniform(lo, hi)  # along-coordinate at the earliest sweep, smallest end
        u0 = (u_first + speed * lead_in) if direction > 0 else (u_first + travel - speed * lead_in)
        lane1 = 1 - lane0 if n_lanes == 2 and rng.random() < 0.5 else lane0
        ego = Ego(axis, k, direction, speed, u0, layout.lane_across(axis, k, direction, lane0),
                  layout.lane_across(axis, k, direction, lane1), t_change=rng.uniform(0.0, max(duration - 4.0, 0.0)))
        exit_road = None
    else:
        u_first = min(ego.u0 - direction * speed * lead_in, ego.u0 + direction * (ego.turn_at + ego.turn_radius))
        travel = abs(ego.turn_at + ego.turn_radius + speed * lead_in)  # the ego road's stretch it drives on
        exit_road = _exit_road(layout, ego)
    agents = Agents()
    u_lo, u_hi = u_first - 90.0, u_first + travel + 90.0
    path_xy, _ = ego.state(np.linspace(-lead_in, duration, 24))

    names = list(VEHICLES)
    shares = np.array([VEHICLES[n][2] for n in names])
    near_side = 1 if layout.left_hand else -1  # the turn that crosses no oncoming lane
    # Moving traffic on every lane of the ego road; one speed per lane so lane-mates never collide; some in
    # the kerb lane turn off at the next intersection ahead.
    for d in (-1, 1):
        for lane in range(n_lanes):
            v = speed if d == direction else rng.uniform(4.0, 12.0)
            span = abs(d * v - direction * speed) * (duration + lead_in)
            u = u_lo - span + rng.uniform(0.0, 15.0)
            while u < u_hi + span:
                name = names[rng.choice(len(names), p=shares / shares.sum())]
                wlh, color, kind = _vehicle(rng, name)
                # Positions are set at t_start, before the first sweep, so run >= 0 at every sensor time.
                t0 = -(lead_in + 1.0)
                u_start = u + wlh[1] / 2 + d * v * t0
                turn = (np.inf, 0.0, 0)
                if lane == n_lanes - 1 and rng.random() < 0.3:
                    ahead = [j for j in range(spec.n_roads) if d * (layout.centers[j] - u_start) > 25.0]
                    if ahead:
                        j = min(ahead, key=lambda j: d * (layout.centers[j] - u_start))
                        yaw1 = _road_yaw(axis, d) + near_side * np.pi / 2
                        exit_d = int(np.sign(np.cos(yaw1) if cross_axis == 0 else np.sin(yaw1)))
                        tr = plan_turn(layout, axis, k, d, lane, j, exit_d, int(layout.lanes[cross_axis, j]) - 1)
                        turn = (d * (tr.corner - u_start) - tr.radius, tr.radius, tr.sign)
                agents.add(name, wlh, color, kind, _along_xy(axis, u_start, layout.lane_across(axis, k, d, lane)),
                           _road_yaw(axis, d), speed=v, t_start=t0, in_traffic=True, turn=turn)
                u += wlh[1] + rng.uniform(5.0, 28.0)
    for j, c in enumerate(layout.centers):
        if not (u_lo < c < u_hi):
            continue
        # Cross traffic waits at the stop lines (the ego has green); on the road the ego turns into, more
        # of it arrives during the scene and queues up behind. Pedestrians use the crossings there.
        for d in (-1, 1):
            for lane in range(int(layout.lanes[cross_axis, j])):
                stop = layout.centers[k] - d * (hw[axis, k] + spec.crossing_gap + spec.crossing_width + spec.stop_gap + 0.5)
                across = layout.lane_across(cross_axis, j, d, lane)
                u = stop
                for _ in range(int(rng.integers(0, 4))):
                    name = "vehicle.car" if rng.random() < 0.8 else "vehicle.truck"
                    wlh, color, kind = _vehicle(rng, name)
                    u -= d * wlh[1] / 2
                    agents.add(name, wlh, color, kind, _along_xy(cross_axis, u, across), _road_yaw(cross_axis, d), in_traffic=True)
                    u -= d * (wlh[1] / 2 + rng.uniform(1.5, 4.0))
                if exit_road == (j, d):
                    v, back = rng.uniform(5.0, 10.0), rng.uniform(10.0, 40.0)
                    for _ in range(int(rng.integers(1, 5))):
                        name = "vehicle.car" if rng.random() < 0.85 else "vehicle.truck"
                        wlh, color, kind = _vehicle(rng, name)
                        slot = u - d * wlh[1] / 2  # where it will stand
                        start = slot - d * back
                        agents.add(name, wlh, color, kind, _along_xy(cross_axis, start, across), _road_yaw(cross_axis, d),
                                   speed=v, travel=back, t_start=-(lead_in + 1.0), in_traffic=True)
                        u = slot - d * (wlh[1] / 2 + rng.uniform(1.5, 4.0))
                        back += rng.uniform(8.0, 30.0)
        for side in (-1, 1):  # crossings over the cross road, on both sides of the ego road
            band = layout.centers[k] + side * (hw[axis, k] + spec.crossing_gap + spec.crossing_width / 2)
            for _ in range(int(rng.integers(0, 3))):
                d = int(rng.choice([-1, 1]))  # walking direction along the ego-road axis, across the cross road
                u_from = c - d * (hw[cross_axis, j] + 1.5)
                agents.add(PEDESTRIAN[0], PEDESTRIAN[1], rng.uniform(0.1, 0.9, 3).astype(np.float32), KIND_PED,
                           _along_xy(axis, u_from, band + rng.uniform(-1.2, 1.2)), _road_yaw(axis, d),
                           speed=rng.uniform(0.8, 1.6), travel=2 * hw[cross_axis, j] + 3.0,
                           t_start=rng.uniform(-2.0, duration))
    # Sidewalk pedestrians along the ego road: one walking line per side (one speed), and standers.
    for side in (-1.0, 1.0):
        d = int(rng.choice([-1, 1]))
        v = rng.uniform(0.9, 1.5)
        u = u_lo + rng.uniform(0, 10)
        while u < u_hi:
            walk = rng.uniform(15.0, 40.0)
            agents.add(PEDESTRIAN[0], PEDESTRIAN[1], rng.uniform(0.1, 0.9, 3).astype(np.float32), KIND_PED,
                       _along_xy(axis, u if d > 0 else u + walk, layout.centers[k] + side * (hw[axis, k] + 1.8)),
                       _road_yaw(axis, d),
                       speed=v, travel=walk, t_start=rng.uniform(-3.0, duration))
            u += walk + rng.uniform(3.0, 20.0)  # walkers on one line share speed and direction
        u = u_lo + rng.uniform(0, 20)
        while u < u_hi:
            agents.add(PEDESTRIAN[0], PEDESTRIAN[1], rng.uniform(0.1, 0.9, 3).astype(np.float32), KIND_PED,
                       _along_xy(axis, u, layout.centers[k] + side * (hw[axis, k] + 2.6)), rng.uniform(-np.pi, np.pi))
            u += rng.uniform(12.0, 45.0)
    _park(layout, rng, agents, path_xy)
    return Scene(ego=ego, agents=_drop_collisions(agents, ego, duration, lead_in), duration=duration)


def _turning_ego(layout: Layout, rng, axis: int, k: int, direction: int, lane: int, speed: float, duration: float,
                 lead_in: float) -> Ego | None:
    """An ego that turns left or right at an intersection part-way through the scene (yaw sweeps 90°), or
    None when that intersection would take it off the map's roads."""
    spec = layout.spec
    cross = 1 - axis
    j = int(rng.integers(spec.n_roads))
    exit_d = int(rng.choice([-1, 1]))
    exit_lane = int(rng.integers(layout.lanes[cross, j]))
    tr = plan_turn(layout, axis, k, direction, lane, j, exit_d, exit_lane)
    before = speed * duration * rng.uniform(0.15, 0.55)  # metres from the t = 0 pose to the arc
    u0 = tr.corner - direction * (tr.radius + before)
    u_back = u0 - direction * speed * lead_in
    beyond = max(speed * duration - before - tr.radius * np.pi / 2, 0.0) + tr.radius
    end_exit = tr.corner_exit + exit_d * beyond
    lo, hi = spec.margin - 20.0, spec.extent - spec.margin + 20.0
    if not (lo < u_back < hi and lo < end_exit < hi):
        return None
    across = layout.lane_across(axis, k, direction, lane)
    return Ego(axis, k, direction, speed, u0, across, across, t_change=np.inf, turn_at=before, turn_radius=tr.radius,
               turn_sign=tr.sign)


def _exit_road(layout: Layout, ego: Ego) -> tuple[int, int]:
    """(cross road index, direction of its lanes that come towards the ego's turn) of a turning ego."""
    xy, yaw = ego.state(1e3 / ego.speed)  # far along the exit road
    cross = 1 - ego.axis
    j = int(np.argmin(np.abs(layout.centers - xy[1 - cross])))
    heading = np.cos(yaw) if cross == 0 else np.sin(yaw)
    return j, -int(np.sign(heading))


def _park(layout: Layout, rng, agents: Agents, path_xy: np.ndarray) -> None:
    """Parked vehicles in the car parks near the ego path (within 90 m of it): cars in bays, big
    vehicles along the aisle."""
    spec = layout.spec
    for x0, x1, y0, y1, pax, near, d in layout.carparks:
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        if np.min(np.linalg.norm(path_xy - centre, axis=1)) > 90.0:
            continue
        pax = int(pax)
        a0, a1 = (x0, x1) if pax == 0 else (y0, y1)
        bay_yaw = (np.pi / 2 if pax == 0 else 0.0) + (np.pi if rng.random() < 0.5 else 0.0)
        n_bays = int((a1 - a0) // spec.bay_width)
        for b in range(n_bays):
            if rng.random() < 0.65:
                wlh, color, kind = _vehicle(rng, "vehicle.car")
                wlh = (min(wlh[0], 2.1), min(wlh[1], 4.9), wlh[2])
                a = a0 + (b + 0.5) * spec.bay_width
                across = near + d * (0.3 + spec.bay_depth / 2)
                agents.add("vehicle.car", wlh, color, kind, (a, across) if pax == 0 else (across, a), bay_yaw)
        a = a0 + 1.0
        aisle = near + d * (spec.bay_depth + (spec.carpark_depth - spec.bay_depth) / 2 + 0.2)
        while True:
            name = ["vehicle.trailer", "vehicle.construction", "vehicle.truck", "vehicle.bicycle"][rng.integers(4)]
            wlh, color, kind = _vehicle(rng, name)
            if a + wlh[1] > a1 - 1.0:
                break
            if rng.random() < 0.5:
                c = a + wlh[1] / 2
                agents.add(name, wlh, color, kind, (c, aisle) if pax == 0 else (aisle, c), 0.0 if pax == 0 else np.pi / 2)
            a += wlh[1] + rng.uniform(1.0, 6.0)


def _drop_collisions(agents: Agents, ego: Ego, duration: float, lead_in: float) -> Agents:
    """Remove agents that ever come near the ego body (circle test on 50 ms steps)."""
    if not len(agents):
        return agents
    times = np.arange(-lead_in, duration + 1e-9, 0.05)
    exy, eyaw = ego.state(times)
    ego_c = exy + 1.2 * np.stack([np.cos(eyaw), np.sin(eyaw)], -1)  # body centre ahead of the rear axle
    wlh = np.asarray(agents.wlh)
    radius = 0.5 * np.hypot(wlh[:, 0], wlh[:, 1]) + 2.6 + 0.5
    keep = np.ones(len(agents), dtype=bool)
    for t, c in zip(times, ego_c):
        xy, _, _ = agents.state(t)
        keep &= np.linalg.norm(xy - c, axis=1) > radius
    return agents.keep(keep)
