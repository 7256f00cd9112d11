"""``write_dataroot``: the synthetic world written as a nuScenes-format dataroot.

Timing follows nuScenes: key frames at 2 Hz; LiDAR sweeps at 20 Hz (9 before the first key frame,
so multi-sweep accumulation works there too; ``SynthConfig.sweeps`` < 10 writes only the sweeps just
before each key frame that ``voxelize --sweeps N`` reads, on the same 20 Hz clock); each camera fires a few to ~40 ms after the key-frame
sweep (``rig.CAMERA_MOUNTS``); every sample_data has its own ego pose at its own timestamp, and
moving agents are placed at that timestamp too.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from occfeat import __version__
from occfeat.data.index import CAMERAS, EGO_BOX, SYNTH_MARKER, VERSIONS
from occfeat.data.synth.maps import write_map
from occfeat.data.synth.render import annotation_boxes, boxes_at, cast_lidar, render_camera
from occfeat.data.synth.rig import CAMERA_MOUNTS, KEYFRAME_HZ, LIDAR_MOUNT
from occfeat.data.synth.semantics import SEMANTICS_DIR, semantics_path
from occfeat.data.synth.tables import Tokens, attribute_name, static_tables, visibility_token, write_tables
from occfeat.data.synth.world import Layout, Scene, make_layout, make_scene
from occfeat.errors import OccfeatError
from occfeat.files import write_error
from occfeat.lock import output_lock
from occfeat.progress import progress_bar
from occfeat.geometry import apply_4x4, invert_rigid, make_transform, pose_from_transform, yaw_matrix

BASE_TIMESTAMP_US = 1_533_201_470_000_000  # 2018-08-02, like the nuScenes logs; no wall clock anywhere
SCENE_SPACING_US = 120_000_000
JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1  # the label PNGs: zlib's fastest level; flat label regions compress well anyway
SWEEPS_PER_KEYFRAME = LIDAR_MOUNT.sweep_hz // KEYFRAME_HZ  # 10, as in nuScenes


@dataclass
class SynthConfig:
    """What ``occfeat synth`` writes."""

    scenes: int = 10
    """number of scenes; ~80/20 train/val, named after official nuScenes scenes"""
    samples_per_scene: int = 20
    """key frames per scene (2 Hz)"""
    seed: int = 0
    """same seed → byte-identical dataroot"""
    image_size: tuple[int, int] = (1600, 900)
    """(width, height) of the camera images; intrinsics scale with it"""
    version: str = "v1.0-mini"
    """name of the table folder"""
    map_name: str = "singapore-onenorth"
    """one of the devkit's four map names (the devkit accepts no other)"""
    sweeps: int = SWEEPS_PER_KEYFRAME
    """LiDAR sweeps written per key frame: its own and the sweeps-1 just before it, at 20 Hz. nuScenes
    (the default): 10, every sweep of its 20 Hz LiDAR. 1: key frames only, what ``voxelize --sweeps 1``
    (the paper) reads, and a tenth of the LiDAR files, the largest part of a small world on disk."""


def scene_names(n: int) -> tuple[list[str], list[str]]:
    """(train names, val names): ~80/20 with >= 1 val scene when n >= 2; official nuScenes scene names
    (mini_train then the rest of train; mini_val then the rest of val), so 10 scenes = v1.0-mini's."""
    from nuscenes.utils import splits

    n_val = 0 if n < 2 else max(1, round(0.2 * n))
    train_pool = list(splits.mini_train) + [s for s in splits.train if s not in splits.mini_train]
    val_pool = list(splits.mini_val) + [s for s in splits.val if s not in splits.mini_val and s not in train_pool]
    if n - n_val > len(train_pool) or n_val > len(val_pool):
        raise OccfeatError(f"--scenes {n} is more than the {len(train_pool) + len(val_pool)} official scene names "
                           "synth can reuse; ask for fewer scenes")
    return train_pool[: n - n_val], val_pool[:n_val]


def validate(out: Path, cfg: SynthConfig, overwrite: bool) -> None:
    """Every check before anything is written; raises OccfeatError."""
    from nuscenes.map_expansion.map_api import locations

    if cfg.scenes < 1:
        raise OccfeatError(f"--scenes must be >= 1, got {cfg.scenes}")
    if cfg.samples_per_scene < 1:
        raise OccfeatError(f"--samples-per-scene must be >= 1, got {cfg.samples_per_scene}")
    if not 1 <= cfg.sweeps <= SWEEPS_PER_KEYFRAME:
        raise OccfeatError(f"--sweeps must be in 1..{SWEEPS_PER_KEYFRAME} (LiDAR sweeps per key frame, the key frame's "
                           f"included), got {cfg.sweeps}")
    w, h = cfg.image_size
    if w < 16 or h < 16:
        raise OccfeatError(f"--image-size must be at least 16x16, got {w}x{h}")
    if cfg.version not in VERSIONS or cfg.version == "v1.0-test":
        raise OccfeatError(f"--version must be v1.0-mini or v1.0-trainval (synth writes annotations), got '{cfg.version}'")
    if cfg.map_name not in locations:
        raise OccfeatError(f"--map must be one of {', '.join(locations)} (the devkit accepts only these), got '{cfg.map_name}'")
    scene_names(cfg.scenes)
    if out.exists() and not out.is_dir():
        raise OccfeatError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OccfeatError(f"--out {out} is not empty; pass --overwrite to replace it or pick another folder")


def _global_T_ego(scene: Scene, t: float) -> np.ndarray:
    xy, yaw = scene.ego.state(t)
    return make_transform(yaw_matrix(float(yaw)), np.array([xy[0], xy[1], 0.0]))


def _points_in_boxes(points: np.ndarray, centres: np.ndarray, wlh: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(N,) count of points (M, 3) inside each box (closed boxes, like the devkit's points_in_box)."""
    out = np.zeros(len(centres), dtype=np.int64)
    for i, (c, s, y) in enumerate(zip(centres, wlh, yaw)):
        rel = points - c
        cy, sy = np.cos(y), np.sin(y)
        lx, ly = cy * rel[:, 0] + sy * rel[:, 1], -sy * rel[:, 0] + cy * rel[:, 1]
        out[i] = np.count_nonzero((np.abs(lx) <= s[1] / 2) & (np.abs(ly) <= s[0] / 2) & (np.abs(rel[:, 2]) <= s[2] / 2))
    return out


class _SceneWriter:
    """Writes one scene's files and returns its table records."""

    def __init__(self, root: Path, cfg: SynthConfig, layout: Layout, index: int, name: str, shared: dict, timings: dict,
                 bar=None):
        self.root, self.cfg, self.layout, self.index, self.name = root, cfg, layout, index, name
        self.shared, self.timings = shared, timings
        self.bar = bar  # a progress bar advanced once per key frame written (None: silent)
        self.tok = Tokens(cfg.seed, 2, index)
        self.tables: dict[str, list[dict]] = defaultdict(list)
        self.t0_us = BASE_TIMESTAMP_US + index * SCENE_SPACING_US
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(self.t0_us // 1_000_000))
        self.log_name = f"n015-{stamp}+0800"

    def us(self, t: float) -> int:
        return self.t0_us + int(round(t * 1e6))

    def ego_pose(self, scene: Scene, t: float) -> tuple[str, np.ndarray]:
        T = _global_T_ego(scene, t)
        rot, trans = pose_from_transform(T)
        tok = self.tok()
        self.tables["ego_pose"].append({"token": tok, "timestamp": self.us(t), "rotation": rot, "translation": trans})
        return tok, T

    def run(self) -> None:
        cfg, lay = self.cfg, self.layout
        n = cfg.samples_per_scene
        sweeps_per_kf = SWEEPS_PER_KEYFRAME
        lead_in = (sweeps_per_kf - 1) / LIDAR_MOUNT.sweep_hz
        scene = make_scene(lay, cfg.seed, self.index, (n - 1) / KEYFRAME_HZ, lead_in)
        width, height = cfg.image_size
        log_tok, scene_tok = self.tok(), self.tok()
        self.tables["log"].append({"token": log_tok, "logfile": self.log_name, "vehicle": "n015",
                                   "date_captured": self.log_name[5:15], "location": cfg.map_name})
        calib = {}
        for mount in CAMERA_MOUNTS:
            rot, trans = pose_from_transform(mount.ego_T_cam())
            calib[mount.channel] = self.tok()
            self.tables["calibrated_sensor"].append({
                "token": calib[mount.channel], "sensor_token": self.shared["sensor"][mount.channel], "translation": trans,
                "rotation": rot, "camera_intrinsic": mount.K(width, height).tolist()})
        ego_T_lidar = LIDAR_MOUNT.ego_T_lidar()
        calib[LIDAR_MOUNT.channel] = self.tok()
        rot, trans = pose_from_transform(ego_T_lidar)
        self.tables["calibrated_sensor"].append({"token": calib[LIDAR_MOUNT.channel], "translation": trans, "rotation": rot,
                                                 "sensor_token": self.shared["sensor"][LIDAR_MOUNT.channel], "camera_intrinsic": []})
        sample_toks = [self.tok() for _ in range(n)]
        for i, st in enumerate(sample_toks):
            self.tables["sample"].append({"token": st, "timestamp": self.us(i / KEYFRAME_HZ), "scene_token": scene_tok,
                                          "prev": sample_toks[i - 1] if i else "", "next": sample_toks[i + 1] if i < n - 1 else ""})
        n_agents = len(scene.agents)
        n_pts = np.zeros((n, n_agents), dtype=np.int64)
        visible = np.zeros((n, n_agents)), np.zeros((n, n_agents))
        dirs = LIDAR_MOUNT.ray_directions()
        rings = np.broadcast_to(np.arange(LIDAR_MOUNT.beams, dtype=np.float32)[:, None], dirs.shape[:2])
        sd_chain: dict[str, list[dict]] = defaultdict(list)
        for j in range(-(sweeps_per_kf - 1), (n - 1) * sweeps_per_kf + 1):
            t = j / LIDAR_MOUNT.sweep_hz
            key = j >= 0 and j % sweeps_per_kf == 0
            if not key and j % sweeps_per_kf < sweeps_per_kf - (cfg.sweeps - 1):
                continue  # not among the cfg.sweeps - 1 sweeps just before a key frame (the scene is the same)
            pose_tok, g_T_e = self.ego_pose(scene, t)
            tic = time.perf_counter()
            rng, inten = cast_lidar(lay, boxes_at(lay, scene, t), g_T_e @ ego_T_lidar, dirs, LIDAR_MOUNT.max_range)
            ok = np.isfinite(rng)
            pts = np.concatenate([(dirs * np.where(ok, rng, 0.0)[..., None])[ok], inten[ok, None], rings[ok, None]], 1)
            pts = pts.astype(np.float32)
            in_ego = apply_4x4(ego_T_lidar, pts[:, :3].astype(np.float64))
            body = np.all([(in_ego[:, a] >= lo) & (in_ego[:, a] <= hi) for a, (lo, hi) in enumerate(EGO_BOX)], axis=0)
            pts = pts[~body]
            self.timings["lidar"] += time.perf_counter() - tic
            folder = "samples" if key else "sweeps"
            filename = f"{folder}/{LIDAR_MOUNT.channel}/{self.log_name}__{LIDAR_MOUNT.channel}__{self.us(t)}.pcd.bin"
            (self.root / filename).parent.mkdir(parents=True, exist_ok=True)
            pts.tofile(self.root / filename)
            kf = min(max(-(-j // sweeps_per_kf), 0), n - 1)  # sweeps belong to the next key frame
            sd_chain[LIDAR_MOUNT.channel].append(self._sample_data(sample_toks[kf], pose_tok, calib[LIDAR_MOUNT.channel], t,
                                                                   "pcd", key, 0, 0, filename))
            if key:
                i = j // sweeps_per_kf
                centres, wlh, yaw = annotation_boxes(scene, t)
                pts_global = apply_4x4(g_T_e @ ego_T_lidar, pts[:, :3].astype(np.float64))
                n_pts[i] = _points_in_boxes(pts_global, centres, wlh, yaw)
                self._cameras(scene, i, sample_toks[i], calib, sd_chain, visible)
                if self.bar is not None:
                    self.bar.update(1)
        for chain in sd_chain.values():
            for a, b in zip(chain, chain[1:]):
                a["next"], b["prev"] = b["token"], a["token"]
            self.tables["sample_data"].extend(chain)
        self._annotations(scene, sample_toks, n_pts, visible)
        self.tables["scene"].append({"token": scene_tok, "log_token": log_tok, "nbr_samples": n, "name": self.name,
                                     "first_sample_token": sample_toks[0], "last_sample_token": sample_toks[-1],
                                     "description": f"synthetic {cfg.map_name} world, seed {cfg.seed}, "
                                                    f"ego at {scene.ego.speed:.1f} m/s, {n_agents} agents"})

    def _sample_data(self, sample_tok, pose_tok, calib_tok, t, fmt, key, width, height, filename) -> dict:
        return {"token": self.tok(), "sample_token": sample_tok, "ego_pose_token": pose_tok,
                "calibrated_sensor_token": calib_tok, "timestamp": self.us(t), "fileformat": fmt, "is_key_frame": key,
                "height": height, "width": width, "filename": filename, "prev": "", "next": ""}

    def _cameras(self, scene, i, sample_tok, calib, sd_chain, visible) -> None:
        width, height = self.cfg.image_size
        t_kf = i / KEYFRAME_HZ
        for mount in CAMERA_MOUNTS:
            t = t_kf + mount.time_offset_us / 1e6
            pose_tok, g_T_e = self.ego_pose(scene, t)
            tic = time.perf_counter()
            img = render_camera(self.layout, boxes_at(self.layout, scene, t), g_T_e @ mount.ego_T_cam(),
                                mount.K(width, height), width, height)
            hit, proj, bs = img.hit, img.projected, img.boxes
            self.timings["render"] += time.perf_counter() - tic
            agent_of_pixel = bs.agent[hit[hit >= 0]]
            n_agents = visible[0].shape[1]
            visible[0][i] += np.bincount(agent_of_pixel[agent_of_pixel >= 0], minlength=n_agents)
            visible[1][i] += np.bincount(bs.agent[bs.agent >= 0], weights=proj[bs.agent >= 0], minlength=n_agents)
            tic = time.perf_counter()
            buf = io.BytesIO()
            Image.fromarray(img.rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
            self.timings["jpeg"] += time.perf_counter() - tic
            filename = f"samples/{mount.channel}/{self.log_name}__{mount.channel}__{self.us(t)}.jpg"
            (self.root / filename).parent.mkdir(parents=True, exist_ok=True)
            (self.root / filename).write_bytes(buf.getvalue())
            tic = time.perf_counter()
            label_file = semantics_path(self.root, filename)
            label_file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.label).save(label_file, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            self.timings["semantics"] += time.perf_counter() - tic
            sd_chain[mount.channel].append(self._sample_data(sample_tok, pose_tok, calib[mount.channel], t, "jpg", True,
                                                             width, height, filename))

    def _annotations(self, scene: Scene, sample_toks: list[str], n_pts: np.ndarray, visible) -> None:
        """One instance per agent with LiDAR points in some key frame; annotated on every key frame
        from its first to its last such frame (a contiguous track, as in nuScenes)."""
        cat_tok, attr_tok = self.shared["category"], self.shared["attribute"]
        seen = n_pts > 0
        for a in range(len(scene.agents)):
            frames = np.flatnonzero(seen[:, a])
            if not len(frames):
                continue
            inst = self.tok()
            ann_toks = [self.tok() for _ in range(frames[0], frames[-1] + 1)]
            category = scene.agents.category[a]
            for n_ann, i in enumerate(range(frames[0], frames[-1] + 1)):
                t = i / KEYFRAME_HZ
                centres, wlh, yaw = annotation_boxes(scene, t)
                _, _, moving = scene.agents.state(t)
                frac = visible[0][i, a] / visible[1][i, a] if visible[1][i, a] > 0 else 0.0
                rot, _ = pose_from_transform(make_transform(yaw_matrix(float(yaw[a])), np.zeros(3)))
                self.tables["sample_annotation"].append({
                    "token": ann_toks[n_ann], "sample_token": sample_toks[i], "instance_token": inst,
                    "visibility_token": visibility_token(frac),
                    "attribute_tokens": [attr_tok[attribute_name(category, bool(moving[a]), scene.agents.in_traffic[a])]],
                    "translation": [float(v) for v in centres[a]], "size": [float(v) for v in wlh[a]], "rotation": rot,
                    "prev": ann_toks[n_ann - 1] if n_ann else "", "next": ann_toks[n_ann + 1] if n_ann + 1 < len(ann_toks) else "",
                    "num_lidar_pts": int(n_pts[i, a]), "num_radar_pts": 0})
            self.tables["instance"].append({"token": inst, "category_token": cat_tok[category], "nbr_annotations": len(ann_toks),
                                            "first_annotation_token": ann_toks[0], "last_annotation_token": ann_toks[-1]})


def is_complete(root: Path, cfg: SynthConfig) -> bool:
    """Whether ``root`` is a complete world written by synth under ``cfg`` (its marker is written last)."""
    try:
        have = json.loads((root / SYNTH_MARKER).read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return False
    if not isinstance(have, dict):
        return False
    # A field added since the world was written takes its default, which writes what synth wrote before it.
    have = {**dataclasses.asdict(SynthConfig()), **have}
    # a world from before the label sidecar existed is not what synth writes now
    return have == json.loads(json.dumps(dataclasses.asdict(cfg))) and (root / SEMANTICS_DIR).is_dir()


def write_dataroot(out: Path, cfg: SynthConfig, overwrite: bool = False, timings: dict | None = None,
                   progress: bool = True) -> Path:
    """Write a nuScenes-format dataroot at ``out`` (returned).

    A world synth already wrote at ``out`` under the same config is left as is (same seed, same bytes),
    with or without ``overwrite``. Otherwise validates first, writes into a temporary sibling folder and
    renames it at the end, so an interrupted run never leaves a half dataroot; ``overwrite`` moves the
    old one aside first and deletes it last, and a run killed anywhere in between is finished or undone
    by the next one. Holds the lock of ``out`` throughout. ``timings`` (optional) accumulates seconds
    spent in "render", "lidar", "jpeg" and "semantics" (encoding and writing the label PNGs). ``progress``:
    a bar over the key frames (:mod:`occfeat.progress`; a 1600x900 world takes seconds per frame)."""
    out = Path(out)
    with output_lock(out, "dataroot"):
        tmp = out.parent / f".{out.name}.synth-tmp"
        trash = out.parent / f".{out.name}.synth-old"
        try:
            if not out.exists() and trash.exists():  # killed between the two renames of an overwrite
                if is_complete(tmp, cfg):
                    tmp.rename(out)
                else:
                    trash.rename(out)  # the old world back in place; the overwrite starts again below
            if trash.exists():  # killed while deleting the old world of an overwrite
                shutil.rmtree(trash)
            if is_complete(out, cfg):
                return out
            validate(out, cfg, overwrite)
            timings = timings if timings is not None else {}
            for k in ("render", "lidar", "jpeg", "semantics"):
                timings.setdefault(k, 0.0)
            out.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)  # left by a killed run
            tmp.mkdir()
            try:
                with progress_bar(total=cfg.scenes * cfg.samples_per_scene, desc="synth", unit="frame", enabled=progress) as bar:
                    _write(tmp, cfg, timings, bar)
                if out.exists():
                    out.rename(trash)
                    tmp.rename(out)
                    shutil.rmtree(trash)
                else:
                    tmp.rename(out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        except OSError as e:
            raise write_error(Path(e.filename) if e.filename else Path(out), e, "rerun") from None
    return out


def _write(root: Path, cfg: SynthConfig, timings: dict, bar=None) -> None:
    layout = make_layout(cfg.seed, left_hand=cfg.map_name.startswith("singapore"))
    tok = Tokens(cfg.seed, 3)
    channels = [(m.channel, "camera") for m in CAMERA_MOUNTS] + [(LIDAR_MOUNT.channel, "lidar")]
    assert tuple(m.channel for m in CAMERA_MOUNTS) == CAMERAS, "rig cameras must follow occfeat's camera order"
    tables = static_tables(tok, channels)
    shared = {"sensor": {r["channel"]: r["token"] for r in tables["sensor"]},
              "category": {r["name"]: r["token"] for r in tables["category"]},
              "attribute": {r["name"]: r["token"] for r in tables["attribute"]}}
    train, val = scene_names(cfg.scenes)
    for name in ("log", "scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "instance", "sample_annotation"):
        tables[name] = []
    for index, name in enumerate(train + val):
        sw = _SceneWriter(root, cfg, layout, index, name, shared, timings, bar)
        sw.run()
        for k, v in sw.tables.items():
            tables[k].extend(v)
    mask_file = write_map(root, layout, cfg.map_name, tok)
    tables["map"] = [{"token": mask_file.split("/")[-1][:-4], "log_tokens": [r["token"] for r in tables["log"]],
                      "category": "semantic_prior", "filename": mask_file}]
    write_tables(root / cfg.version, tables)
    (root / cfg.version / "splits.json").write_text(json.dumps({"synth_train": train, "synth_val": val}, indent=1))
    # The marker that makes every downstream result say "synthetic data" (occfeat.data.index.is_synthetic).
    (root / SYNTH_MARKER).write_text(json.dumps({"generator": "occfeat synth", "occfeat_version": __version__,
                                                 "config": dataclasses.asdict(cfg)}, indent=1, sort_keys=True))
