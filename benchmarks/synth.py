"""Time of `occfeat synth` per key frame, split into camera rendering (6 images), LiDAR (10 sweeps),
JPEG encoding and the semantic label PNGs, plus the numba camera ray caster against a plain-numpy ray
cast of the same rays and boxes (depth only) measured in the same run.

    python benchmarks/synth.py [--samples 4] [--image-size 900x1600]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from occfeat.cli.common import parse_size
from occfeat.data.synth import SynthConfig, write_dataroot
from occfeat.data.synth.render import boxes_at, render_camera
from occfeat.data.synth.rig import CAMERA_MOUNTS
from occfeat.data.synth.world import make_layout, make_scene
from occfeat.geometry import make_transform, yaw_matrix


def numpy_depth(global_T_cam: np.ndarray, K: np.ndarray, boxes: np.ndarray, rows: range, width: int) -> np.ndarray:
    """Reference: nearest hit (ground plane or any box) of the pixel rays of ``rows``, vectorised numpy."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.asarray(rows) + 0.5)
    d = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ np.linalg.inv(K).T @ global_T_cam[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = global_T_cam[:3, 3]
    best = np.where(d[:, 2] < 0, -o[2] / np.minimum(d[:, 2], -1e-9), np.inf)
    for b in boxes:
        c, s = np.cos(b[6]), np.sin(b[6])
        R = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
        lo, ld = R @ (o - b[:3]), d @ R.T
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-b[3:6] - lo) / ld, (b[3:6] - lo) / ld
        tmin, tmax = np.nanmax(np.minimum(t1, t2), 1), np.nanmin(np.maximum(t1, t2), 1)
        hit = (tmax >= tmin) & (tmin > 0)
        best = np.where(hit & (tmin < best), tmin, best)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--image-size", default="900x1600", help="camera image HEIGHTxWIDTH")
    args = ap.parse_args()
    h, w = parse_size(args.image_size, "--image-size", "900x1600")
    cfg = SynthConfig(scenes=1, samples_per_scene=args.samples, image_size=(w, h))
    write_dataroot(Path(tempfile.mkdtemp()) / "warm", SynthConfig(scenes=1, samples_per_scene=1, image_size=(64, 36)))
    timings: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        write_dataroot(Path(tmp) / "root", cfg, timings=timings)
        wall = time.perf_counter() - tic
    n = cfg.samples_per_scene
    print(f"occfeat synth, 1 scene x {n} key frames at {w}x{h} (6 images + 10 LiDAR sweeps per key frame)")
    for k in ("render", "lidar", "jpeg", "semantics"):
        print(f"  {k:<9} {timings[k] / n:6.3f} s / key frame")
    print(f"  total     {wall / n:6.3f} s / key frame (tables, files, map included)")

    layout = make_layout(0, left_hand=True)
    scene = make_scene(layout, 0, 0, 1.0, 0.45)
    xy, yaw = scene.ego.state(0.0)
    g_T_cam = make_transform(yaw_matrix(float(yaw)), np.array([xy[0], xy[1], 0.0])) @ CAMERA_MOUNTS[0].ego_T_cam()
    K = CAMERA_MOUNTS[0].K(w, h)
    bs = boxes_at(layout, scene, 0.0)
    tic = time.perf_counter()
    culled = render_camera(layout, bs, g_T_cam, K, w, h).boxes
    numba_px = (time.perf_counter() - tic) / (w * h)
    rows = range(h // 2, h // 2 + 8)
    tic = time.perf_counter()
    numpy_depth(g_T_cam, K, culled.boxes, rows, w)
    numpy_px = (time.perf_counter() - tic) / (w * len(rows))
    print(f"camera ray cast, CAM_FRONT, {len(culled.boxes)} boxes in range: numba (shaded, full image) "
          f"{numba_px * 1e9:.0f} ns/pixel vs plain numpy (depth only, {len(rows)} rows) {numpy_px * 1e9:.0f} ns/pixel "
          f"-> numba {numpy_px / numba_px:.1f}x faster")


if __name__ == "__main__":
    main()
