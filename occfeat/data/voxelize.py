"""``occfeat voxelize``: LiDAR key frames (+ previous sweeps) → the occupancy cache (crash-safe HDF5).

Points of the key-frame sweep, and with ``sweeps > 1`` the previous sweeps moved through their own ego
poses, are expressed in the **ego frame at the key-frame LiDAR timestamp**; returns on the ego body
(:data:`occfeat.data.index.EGO_BOX`) are dropped; the points any camera's reference frame can put on the
:class:`~occfeat.grid.BevGrid` are stored (format 2, :mod:`occfeat.data.occupancy`), and the numba
kernel marks the occupied voxels (paper §3.2) when a sample is read, in the frame the training sample
drew. The cache is written through :class:`occfeat.data.store.CacheWriter` (resumable, idempotent,
refuses another spec).

Parallelism: the main process walks the devkit index and turns each sample into a :class:`SweepJob`
(plain paths and 4x4 matrices - a :class:`SampleRecord` would drag the whole devkit index into every
pickle); worker processes read, transform, drop the ego body and crop.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from occfeat import __version__
from occfeat.data.index import EGO_BOX, LIDAR, POINT_BYTES, SampleIndex, SampleRecord, read_points, synth_config
from occfeat.data.occupancy import FORMAT, KIND, crop_to_reference_grids, points_in_frame, transform_drop_box, voxelize_points
from occfeat.data.store import CacheWriter, Payload
from occfeat.errors import OccfeatError
from occfeat.geometry import invert_rigid
from occfeat.grid import BevGrid
from occfeat.procs import die_with_parent
from occfeat.progress import progress_bar

__all__ = ["VoxelizeConfig", "VoxelizeSummary", "SweepJob", "LidarGrid", "sample_points_ego", "voxelize_points", "build_occupancy"]


@dataclass(frozen=True)
class VoxelizeConfig:
    """Defaults of ``occfeat voxelize`` (the CLI reads them from here)."""

    sweeps: int = 1
    """LiDAR sweeps per key frame: the key frame and sweeps-1 previous ones (1 = the paper)."""
    workers: int = 0
    """Worker processes that read, transform and voxelize; 0 = all in the main process."""
    block_size: int = 64
    """Samples per crash-safe block: a kill loses at most one block of work (64 x ~0.4 MB of points)."""
    skip_bad: bool = False
    """Skip samples with a missing/truncated LiDAR file or missing pose instead of stopping."""


@dataclass(frozen=True)
class SweepJob:
    """What a worker needs for one sample: sweep files and their transforms, as plain picklable data."""

    token: str
    paths: tuple[str, ...]
    key_T_lidar: tuple[np.ndarray, ...]  # (4, 4) each: sensor → key-frame ego
    own_T_lidar: tuple[np.ndarray, ...]  # (4, 4) each: sensor → the sweep's own ego frame
    cam_T_ego: np.ndarray  # (S, 4, 4) the key frame's cameras, CAMERAS order: their reference frames bound the crop


@dataclass
class VoxelizeSummary:
    """What a run did. ``skipped``: (token, reason) of samples skipped in this run."""

    out: Path
    samples: int
    written: int = 0
    points: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_total: list[str] = field(default_factory=list)
    seconds: float = 0.0
    already_complete: bool = False


_EGO_BOX = np.array(EGO_BOX, dtype=np.float64)


def sweep_job(rec: SampleRecord, sweeps: int = 1) -> SweepJob:
    """The key-frame sweep and up to ``sweeps - 1`` previous ones of ``rec`` as a :class:`SweepJob`.

    The sweep's own ego frame assumes the LiDAR calibration of the key frame (nuScenes calibrates each
    sensor once per log): own_T_lidar = the key frame's ego_T_lidar. Missing pose → OccfeatError.
    """
    try:
        sw = rec.sweeps(sweeps)
    except KeyError as e:  # nusc.get on a token absent from ego_pose / calibrated_sensor
        raise OccfeatError(
            f"sample {rec.token}: record {e} (ego pose or sample_data) of a LiDAR sweep before {rec.lidar.path} "
            "is missing from the devkit tables; restore it or rerun with --skip-bad"
        ) from None
    return SweepJob(
        token=rec.token,
        paths=tuple(str(s.path) for s in sw),
        key_T_lidar=tuple(s.ego_T_lidar for s in sw),
        own_T_lidar=tuple(rec.lidar.ego_T_lidar for _ in sw),
        cam_T_ego=np.stack([c.cam_T_ego for c in rec.cameras]),
    )


def _read_sweep(path: str) -> np.ndarray:
    # read_points judges truncation from the float32 count, which hides a partial trailing float (a 41-byte
    # file reads as 40 = 2 points); the byte size on disk is the real test.
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        size = 0  # read_points reports the missing file
    if size % POINT_BYTES:
        raise OccfeatError(
            f"LiDAR file {path} is truncated ({size} bytes, not a multiple of {POINT_BYTES}); restore it or rerun with --skip-bad"
        )
    return read_points(path)


def job_points(job: SweepJob) -> np.ndarray:
    """(N, 3) float32 key-frame ego points of a job: read + transform + ego-body drop, no voxelization."""
    raws = [_read_sweep(p) for p in job.paths]
    return transform_drop_box(raws, list(job.key_T_lidar), list(job.own_T_lidar), _EGO_BOX)


def sample_points_ego(rec: SampleRecord, sweeps: int = 1) -> np.ndarray:
    """(N, 3) float32 LiDAR points of key frame ``rec`` in its key-frame ego frame.

    The key-frame sweep plus up to ``sweeps - 1`` previous sweeps, each through its own ego pose
    (``LidarSweep.ego_T_lidar``); points on the ego body (EGO_BOX, now or at the sweep's time) dropped.
    """
    return job_points(sweep_job(rec, sweeps))


class LidarGrid:
    """The LiDAR network's input (:mod:`occfeat.models.lidar`): one sample's points moved into the
    reference frame R it drew and voxelized on the grid, (X, Y, Z) bool — what the occupancy cache gives
    pretraining, read straight from the dataroot so any split works. Picklable (plain
    :class:`SweepJob` per token) for DataLoader workers."""

    def __init__(self, records: list[SampleRecord], grid: BevGrid, sweeps: int = 1):
        self.jobs = {rec.token: sweep_job(rec, sweeps) for rec in records}
        self.grid = grid

    def __call__(self, token: str, ref_T_ego: np.ndarray | None = None) -> np.ndarray:
        try:
            points = job_points(self.jobs[token])
        except OccfeatError as e:  # voxelize's advice (--skip-bad) does not apply to a training run
            raise OccfeatError(f"{str(e).split('; ')[0]}; restore it: the LiDAR network reads every sample's sweeps") from None
        return voxelize_points(points_in_frame(points, ref_T_ego), self.grid)


# ---- worker side ----
_GRID: BevGrid | None = None


def _init_worker(grid: BevGrid, parent_pid: int) -> None:
    global _GRID
    die_with_parent(parent_pid)  # a killed voxelize leaves no workers behind
    _GRID = grid


def _voxelize_job(job: SweepJob, grid: BevGrid | None = None) -> tuple[np.ndarray, int] | OccfeatError:
    """(the points to store (M, 3) float32, number of points read) for one job, or the OccfeatError it
    raised (returned, not raised, so the main process decides between stopping and --skip-bad)."""
    try:
        pts = job_points(job)
    except OccfeatError as e:
        return OccfeatError(f"sample {job.token}: {e}")
    return crop_to_reference_grids(pts, grid or _GRID, job.cam_T_ego), len(pts)


# ---- the stage ----
def _lidar_file(index: SampleIndex, token: str) -> Path:
    sd = index.nusc.get("sample_data", index.nusc.get("sample", token)["data"][LIDAR])
    return index.dataroot / sd["filename"]


def occupancy_spec(grid: BevGrid, sweeps: int, version: str, split: str | None, dataroot: str | Path) -> dict:
    """Everything that makes two occupancy caches incompatible (stored as file attributes)."""
    return {
        "kind": KIND,
        "grid": grid.spec(),
        "sweeps": int(sweeps),
        "version": version,
        "split": split or "all",
        "dataroot": str(Path(dataroot).resolve()),
        "ego_box": [list(b) for b in EGO_BOX],
        "format": FORMAT,
        "payload": "points",
        "crop": "reference-grids",
        "occfeat_version": __version__,
    }


def build_occupancy(
    dataroot: str | Path,
    version: str,
    split: str | None,
    out: str | Path,
    grid: BevGrid,
    sweeps: int = VoxelizeConfig.sweeps,
    workers: int = VoxelizeConfig.workers,
    skip_bad: bool = VoxelizeConfig.skip_bad,
    block_size: int = VoxelizeConfig.block_size,
    index: SampleIndex | None = None,
    progress: bool = True,
) -> VoxelizeSummary:
    """Voxelize every key frame of ``split`` into ``out`` (resuming a killed run; a finished one is a no-op).

    Bad input (missing/truncated LiDAR file, missing pose) raises a one-line OccfeatError naming the
    sample and file, or with ``skip_bad`` is skipped: row left zero, ``valid`` False, token listed in
    the file's ``skipped`` attribute and in the returned summary. ``index``: an already loaded
    SampleIndex of the same dataroot/version/split to reuse (the devkit load is the slow part of a tiny run).
    """
    if sweeps < 1:
        raise OccfeatError(f"--sweeps must be >= 1, got {sweeps}")
    # A synthetic world may hold fewer sweeps than nuScenes' 10: the devkit's prev chain would then run
    # back through earlier key frames, seconds instead of 50 ms apart, and silently smear the grid.
    written = synth_config(dataroot).get("sweeps")
    if written is not None and sweeps > written:
        raise OccfeatError(f"--sweeps {sweeps}: the synthetic world {dataroot} holds {written} LiDAR sweep(s) per key frame; "
                           f"use --sweeps {written} or less, or write the world again with `occfeat synth --sweeps {sweeps}`")
    if workers < 0:
        raise OccfeatError(f"--workers must be >= 0, got {workers}")
    t0 = time.perf_counter()
    index = index or SampleIndex(dataroot, version, split, progress=progress)
    out = Path(out)
    writer = CacheWriter(
        out,
        index.tokens,
        occupancy_spec(grid, sweeps, version, split, dataroot),
        {"points": Payload((), "float32", ragged=True)},
        block_size,
    )
    summary = VoxelizeSummary(out=out, samples=len(index.tokens), already_complete=writer.complete)
    blocks = writer.pending()
    todo = sum(stop - start for start, stop in blocks)
    bar = progress_bar(total=todo, unit="sample", desc="voxelize", enabled=progress and todo > 0)

    def jobs_of(start: int, stop: int) -> list[SweepJob | OccfeatError]:
        jobs: list[SweepJob | OccfeatError] = []
        for tok in index.tokens[start:stop]:
            try:
                jobs.append(sweep_job(index.record(tok), sweeps))
            except OccfeatError as e:
                jobs.append(e)
            except KeyError as e:  # a pose or calibration record absent from the tables
                jobs.append(OccfeatError(
                    f"sample {tok}: record {e} (ego pose or calibration) of {_lidar_file(index, tok)} or its cameras is "
                    "missing from the devkit tables; restore it or rerun with --skip-bad"
                ))
        return jobs

    def finish_block(start: int, stop: int, results) -> None:
        rows = [np.zeros((0, 3), np.float32)] * (stop - start)
        valid = np.ones(stop - start, bool)
        for i, (tok, res) in enumerate(zip(index.tokens[start:stop], results)):
            if isinstance(res, OccfeatError):
                if not skip_bad:
                    raise res
                valid[i] = False
                summary.skipped.append((tok, str(res)))
            else:
                rows[i], n = res
                summary.points += n
        writer.write_block(start, stop, {"points": rows}, valid)
        summary.written += stop - start
        bar.update(stop - start)

    try:
        if workers == 0:
            for start, stop in blocks:
                results = [j if isinstance(j, OccfeatError) else _voxelize_job(j, grid) for j in jobs_of(start, stop)]
                finish_block(start, stop, results)
        elif blocks:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(grid, os.getpid())) as pool:
                # Keep two blocks in flight so workers never wait while the main process writes a block
                # or builds the next block's jobs from the devkit index.
                inflight: deque[tuple[int, int, list]] = deque()

                def submit(start: int, stop: int) -> None:
                    futs = [j if isinstance(j, OccfeatError) else pool.submit(_voxelize_job, j) for j in jobs_of(start, stop)]
                    inflight.append((start, stop, futs))

                queue = deque(blocks)
                try:
                    while queue or inflight:
                        while queue and len(inflight) < 2:
                            submit(*queue.popleft())
                        start, stop, futs = inflight.popleft()
                        finish_block(start, stop, [f.result() if isinstance(f, Future) else f for f in futs])
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        summary.skipped_total = writer.finalize()
    finally:
        bar.close()  # before an error propagates, so the CLI's error line stands alone below the bar
        writer.close()
    summary.seconds = time.perf_counter() - t0
    return summary
