"""The sample index: every stage reads nuScenes-format data through this, and this reads it through
the official nuscenes-devkit.

A :class:`SampleRecord` holds what one key frame needs, with all geometry already composed into the
**ego frame at the key-frame LiDAR timestamp** ("ego" below):

- ``lidar``: the key-frame sweep, ``ego_T_lidar``;
- ``sweeps(n)``: that sweep and the n-1 previous ones, each moved through its own ego pose into ego;
- ``cameras``: the six cameras in :data:`CAMERAS` order, each with ``cam_T_ego`` composed through the
  camera's own ego pose (camera and LiDAR timestamps differ by up to ~40 ms).

Splits are resolved by the devkit's ``get_scenes_of_split``: official names (train, val, mini_train,
...) and custom ones from ``<dataroot>/<version>/splits.json`` alike, keeping the scenes present in
the dataroot. Samples come in a stable order: scenes in split order, key frames in time order.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from occfeat.errors import OccfeatError
from occfeat.geometry import invert_rigid, transform_from_pose
from occfeat.progress import past_delay, progress_bar

# Canonical camera order (clockwise from the front). Stamped into every cache that stores per-camera data.
CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
LIDAR = "LIDAR_TOP"
VERSIONS = ("v1.0-mini", "v1.0-trainval", "v1.0-test")
# The ego vehicle's body in the ego frame (origin: rear axle on the ground; x forward, y left, z up),
# ((xmin, xmax), (ymin, ymax), (zmin, zmax)) in metres: a Renault Zoe (4.1 m x 1.8 m x 1.6 m, nuScenes'
# car) with a margin, up to the LiDAR mount. LiDAR returns inside it are the car itself: the synthetic
# world never produces them and voxelize drops them.
EGO_BOX: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = ((-1.2, 3.6), (-1.1, 1.1), (-0.5, 2.0))
# Written by `occfeat synth` at the top of every dataroot it makes: results computed on it are marked synthetic.
SYNTH_MARKER = "occfeat_synth.json"
# Bytes per LiDAR point in a nuScenes .pcd.bin: float32 x (x, y, z, intensity, ring).
POINT_BYTES = 20


@dataclass(frozen=True)
class LidarSweep:
    """One LiDAR sweep: its file and ``ego_T_lidar`` into the key-frame ego frame."""

    token: str
    path: Path
    timestamp: int
    ego_T_lidar: np.ndarray  # (4, 4)
    is_key_frame: bool


@dataclass(frozen=True)
class CameraFrame:
    """One camera image of a key frame. ``cam_T_ego`` maps key-frame ego points into this camera."""

    channel: str
    token: str
    path: Path
    timestamp: int
    width: int
    height: int
    K: np.ndarray  # (3, 3) pix_T_cam at the stored image size
    cam_T_ego: np.ndarray  # (4, 4)


@dataclass(frozen=True)
class SampleRecord:
    """One key frame, geometry composed into the key-frame ego frame."""

    token: str
    scene_token: str
    scene_name: str
    location: str
    timestamp: int
    global_T_ego: np.ndarray  # (4, 4) ego pose at the key-frame LiDAR timestamp
    lidar: LidarSweep
    cameras: tuple[CameraFrame, ...]
    _index: "SampleIndex" = field(repr=False, compare=False)

    def sweeps(self, n: int) -> list[LidarSweep]:
        """The key-frame sweep and up to ``n - 1`` previous sweeps (fewer at the start of a scene)."""
        return self._index.sweeps(self, n)


def is_synthetic(dataroot: str | Path) -> bool:
    """True for a dataroot written by ``occfeat synth`` (it holds :data:`SYNTH_MARKER`)."""
    return (Path(dataroot) / SYNTH_MARKER).is_file()


def synth_config(dataroot: str | Path) -> dict:
    """The SynthConfig (as a dict) a synthetic world was written with, from its marker; {} for any other
    dataroot. Fields added to SynthConfig since the world was written are missing (their defaults)."""
    try:
        config = json.loads((Path(dataroot) / SYNTH_MARKER).read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}


DEVKIT_BAR_DELAY_S = 2.0
"""The devkit load shows progress only when it takes longer than this: a small world loads in a fraction
of a second, v1.0-trainval's tables (hundreds of MB of JSON) take tens of seconds."""


def _with_progress(NuScenes: type, bar) -> type:
    """The devkit's NuScenes class, advancing ``bar`` by each table file's bytes as it is loaded (the
    devkit itself prints nothing useful with verbose=False, and its load is most of a short stage)."""

    class NuScenesWithProgress(NuScenes):
        def __load_table__(self, table_name: str) -> dict:
            table = super().__load_table__(table_name)
            bar.update(os.path.getsize(os.path.join(self.table_root, f"{table_name}.json")))
            return table

        def __make_reverse_index__(self, verbose: bool) -> None:
            # Redrawn only if the bar is showing already (a redraw before its delay would show it early).
            bar.set_description(f"nuScenes tables {self.version} (indexing)", refresh=past_delay(bar))
            super().__make_reverse_index__(verbose)

    return NuScenesWithProgress


def load_nuscenes(dataroot: str | Path, version: str, progress: bool = True):
    """``NuScenes(version, dataroot)`` with a one-line error for the usual mistakes; a progress bar
    (:mod:`occfeat.progress`) over the table bytes when the load takes longer than a couple of seconds."""
    from nuscenes.nuscenes import NuScenes  # before the bar starts: importing the devkit takes seconds itself

    root = Path(dataroot)
    if not root.is_dir():
        raise OccfeatError(f"dataroot {root} does not exist; pass the folder that holds '{version}/'")
    if not (root / version).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise OccfeatError(f"no '{version}' folder in {root} (found: {', '.join(found) or 'none'}); check --version")
    # The tables' bytes; splits.json holds the devkit's custom splits, read later by get_scenes_of_split.
    total = sum(p.stat().st_size for p in (root / version).glob("*.json") if p.name != "splits.json")
    try:
        with contextlib.redirect_stdout(io.StringIO()), progress_bar(
            total=total, desc=f"nuScenes tables {version}", enabled=progress, delay=DEVKIT_BAR_DELAY_S,
            unit="B", unit_scale=True, unit_divisor=1024,
        ) as bar:
            return _with_progress(NuScenes, bar)(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, FileNotFoundError, KeyError, ValueError) as e:
        # The devkit asserts on missing tables and raises on malformed JSON.
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OccfeatError(f"nuscenes-devkit cannot load {root}/{version}: {msg}") from e


class SampleIndex:
    """The key frames of one split of a nuScenes-format dataroot, read through the devkit."""

    def __init__(self, dataroot: str | Path, version: str, split: str | None = "train", nusc=None, progress: bool = True):
        self.dataroot = Path(dataroot)
        self.version = version
        self.split = split
        self.nusc = nusc if nusc is not None else load_nuscenes(dataroot, version, progress)
        self.scenes = self._resolve_split(split)
        self.tokens: list[str] = [t for scene in self.scenes for t in self._scene_sample_tokens(scene)]

    # ---- split resolution: one code path for official and custom splits ----
    def _resolve_split(self, split: str | None) -> list[dict]:
        from nuscenes.utils.splits import get_scenes_of_split

        by_name = {s["name"]: s for s in self.nusc.scene}
        if split is None or split == "all":
            return sorted(self.nusc.scene, key=lambda s: s["name"])
        try:
            names = get_scenes_of_split(split, self.nusc)
        except ValueError as e:
            raise OccfeatError(f"unknown split '{split}': {e}") from e
        scenes = [by_name[n] for n in names if n in by_name]
        if not scenes:
            raise OccfeatError(
                f"split '{split}' has no scenes in {self.dataroot}/{self.version} "
                f"(it holds {len(by_name)} scenes); pick another --split"
            )
        return scenes

    def _scene_sample_tokens(self, scene: dict) -> list[str]:
        out, token = [], scene["first_sample_token"]
        while token:
            out.append(token)
            token = self.nusc.get("sample", token)["next"]
        return out

    # ---- records ----
    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> SampleRecord:
        return self.record(self.tokens[i])

    def __iter__(self):
        return (self.record(t) for t in self.tokens)

    @cached_property
    def _scene_by_token(self) -> dict:
        return {s["token"]: s for s in self.nusc.scene}

    def location(self, scene_token: str) -> str:
        scene = self._scene_by_token[scene_token]
        return self.nusc.get("log", scene["log_token"])["location"]

    def _sensor_to_global(self, sd: dict) -> tuple[np.ndarray, np.ndarray]:
        """(global_T_ego at sd's timestamp, ego_T_sensor) for a sample_data record."""
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = self.nusc.get("ego_pose", sd["ego_pose_token"])
        return transform_from_pose(pose["rotation"], pose["translation"]), transform_from_pose(
            cs["rotation"], cs["translation"]
        )

    def record(self, token: str) -> SampleRecord:
        nusc = self.nusc
        sample = nusc.get("sample", token)
        lidar_sd = nusc.get("sample_data", sample["data"][LIDAR])
        global_T_ego, ego_T_lidar = self._sensor_to_global(lidar_sd)
        lidar = LidarSweep(
            token=lidar_sd["token"],
            path=self.dataroot / lidar_sd["filename"],
            timestamp=lidar_sd["timestamp"],
            ego_T_lidar=ego_T_lidar,
            is_key_frame=True,
        )
        cams = []
        for channel in CAMERAS:
            if channel not in sample["data"]:
                raise OccfeatError(f"sample {token} has no {channel}; occfeat needs all six cameras")
            sd = nusc.get("sample_data", sample["data"][channel])
            global_T_egocam, egocam_T_cam = self._sensor_to_global(sd)
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            cam_T_ego = invert_rigid(egocam_T_cam) @ invert_rigid(global_T_egocam) @ global_T_ego
            cams.append(
                CameraFrame(
                    channel=channel,
                    token=sd["token"],
                    path=self.dataroot / sd["filename"],
                    timestamp=sd["timestamp"],
                    width=int(sd["width"]),
                    height=int(sd["height"]),
                    K=np.asarray(cs["camera_intrinsic"], dtype=np.float64),
                    cam_T_ego=cam_T_ego,
                )
            )
        return SampleRecord(
            token=token,
            scene_token=sample["scene_token"],
            scene_name=self._scene_by_token[sample["scene_token"]]["name"],
            location=self.location(sample["scene_token"]),
            timestamp=sample["timestamp"],
            global_T_ego=global_T_ego,
            lidar=lidar,
            cameras=tuple(cams),
            _index=self,
        )

    def sweeps(self, rec: SampleRecord, n: int) -> list[LidarSweep]:
        if n < 1:
            raise OccfeatError(f"--sweeps must be >= 1, got {n}")
        out = [rec.lidar]
        ego_T_global = invert_rigid(rec.global_T_ego)
        sd = self.nusc.get("sample_data", rec.lidar.token)
        while len(out) < n and sd["prev"]:
            sd = self.nusc.get("sample_data", sd["prev"])
            global_T_egos, egos_T_lidar = self._sensor_to_global(sd)
            out.append(
                LidarSweep(
                    token=sd["token"],
                    path=self.dataroot / sd["filename"],
                    timestamp=sd["timestamp"],
                    ego_T_lidar=ego_T_global @ global_T_egos @ egos_T_lidar,
                    is_key_frame=bool(sd["is_key_frame"]),
                )
            )
        return out


def read_points(path: str | os.PathLike) -> np.ndarray:
    """(N, 5) float32 (x, y, z, intensity, ring) from a nuScenes ``.pcd.bin``, sensor frame.

    Raises OccfeatError naming the file if it is missing or its size is not a multiple of 20 bytes.
    """
    p = Path(path)
    try:
        size = os.stat(p).st_size  # the byte size: np.fromfile would silently drop a partial trailing float
    except FileNotFoundError as e:
        raise OccfeatError(f"LiDAR file {p} is missing; restore it or rerun with --skip-bad") from e
    if size % POINT_BYTES:
        raise OccfeatError(
            f"LiDAR file {p} is truncated ({size} bytes, not a multiple of {POINT_BYTES}); restore it or rerun with --skip-bad"
        )
    return np.fromfile(p, dtype=np.float32).reshape(-1, 5)
