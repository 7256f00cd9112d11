"""occfeat voxelize: the numba kernels against plain numpy references, the on-disk format and reader,
and the stage on the synthetic world (multi-sweep geometry, resume, bad input, grid mismatch)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from occfeat.cli.main import app
from occfeat.data.index import EGO_BOX, SampleIndex, read_points
from occfeat.data.occupancy import (
    OccupancyReader,
    pack_occupancy,
    transform_drop_box,
    unpack_occupancy,
    voxelize_points,
    voxelize_points_packed,
)
from occfeat.data.store import CacheWriter, Payload
from occfeat.data.voxelize import build_occupancy, occupancy_spec, sample_points_ego
from occfeat.errors import OccfeatError
from occfeat.geometry import apply_4x4, invert_rigid, make_transform, yaw_matrix
from occfeat.grid import BevGrid
from tests.fixtures.synth import TINY_VERSION

# An awkward grid: non-dyadic voxel sizes (0.8, 0.7, 1.25) and an offset origin, so float rounding at
# cell edges differs from a nice grid.
ODD_GRID = BevGrid(bounds=((-7.3, 11.1), (-3.5, 3.5), (-2.0, 4.25)), shape=(23, 10, 5))


def reference_occupancy(points: np.ndarray, grid: BevGrid) -> np.ndarray:
    """Plain numpy: count points per voxel with np.add.at over BevGrid.points_to_index, then > 0."""
    idx, valid = grid.points_to_index(points)
    counts = np.zeros(grid.shape, np.int64)
    np.add.at(counts, tuple(idx[valid].T), 1)
    return counts > 0


@pytest.mark.parametrize("grid", [BevGrid(), ODD_GRID], ids=["paper", "odd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_numpy_reference_on_random_points(grid, dtype):
    rng = np.random.default_rng(0)
    span = grid.upper - grid.lower
    # 20 % of the points fall outside the grid on some axis; extra columns (intensity, ring) are ignored.
    n = int(np.prod(grid.shape)) // 16  # sparse enough that the grid is far from full
    pts = rng.uniform(grid.lower - 0.1 * span, grid.upper + 0.1 * span, size=(n, 3))
    pts = np.concatenate([pts, rng.normal(size=(len(pts), 2))], axis=1).astype(dtype)
    occ = voxelize_points(pts, grid)
    assert occ.dtype == np.bool_ and occ.shape == grid.shape
    np.testing.assert_array_equal(occ, reference_occupancy(pts, grid))
    np.testing.assert_array_equal(voxelize_points_packed(pts, grid), np.packbits(occ, axis=-1))
    assert 0 < occ.sum() < occ.size  # neither trivially empty nor full


@pytest.mark.parametrize("grid", [BevGrid(), ODD_GRID], ids=["paper", "odd"])
def test_kernel_matches_reference_on_cell_edges_bounds_nan_inf(grid):
    # Along each axis: every cell edge (min ... max), the floats just either side of each edge, points
    # outside, NaN and +-inf; all combinations on a sparse lattice.
    axes = []
    for a in range(3):
        n = grid.shape[a]
        k = np.unique(np.clip([0, 1, 2, n // 2, n - 2, n - 1, n], 0, n))  # first, middle and last edges
        edges = grid.lower[a] + k * grid.voxel_size[a]
        edges = np.concatenate([edges, [grid.upper[a]]])
        vals = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                               [grid.lower[a] - 1.0, grid.upper[a] + 1.0, np.nan, np.inf, -np.inf]])
        axes.append(vals)
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    for dtype in (np.float64, np.float32):
        p = pts.astype(dtype)
        ref = reference_occupancy(p, grid)
        np.testing.assert_array_equal(voxelize_points(p, grid), ref)
        np.testing.assert_array_equal(voxelize_points_packed(p, grid), np.packbits(ref, axis=-1))

    # hand-checked cases
    lo, hi = grid.lower, grid.upper
    only = lambda p: np.argwhere(voxelize_points(np.array([p]), grid)).tolist()  # noqa: E731
    assert only(lo) == [[0, 0, 0]]  # the minimum corner belongs to cell 0
    assert only(hi) == []  # half-open: the maximum corner is outside
    assert only(hi - 1e-6 * grid.voxel_size) == [[n - 1 for n in grid.shape]]
    assert only([np.nan, 0, 0]) == [] and only([0, np.inf, 0]) == [] and only([0, 0, -np.inf]) == []
    if grid == BevGrid():  # dyadic cell sizes: edges are exact in float, so an edge point is in the upper cell
        assert only(lo + grid.voxel_size * [1, 2, 3]) == [[1, 2, 3]]


def test_kernel_accumulates_into_out_and_rejects_bad_shape(test_grid):
    a = np.array([[0.5, 0.5, 0.0]])
    b = np.array([[-0.5, 0.5, 0.0]])
    occ = voxelize_points(b, test_grid, out=voxelize_points(a, test_grid))
    np.testing.assert_array_equal(occ, reference_occupancy(np.concatenate([a, b]), test_grid))
    assert occ.sum() == 2
    assert voxelize_points(np.zeros((0, 3)), test_grid).sum() == 0
    with pytest.raises(ValueError, match=r"\(N, >=3\)"):
        voxelize_points(np.zeros((4, 2)), test_grid)


@pytest.mark.parametrize("z", [5, 8, 11])
def test_pack_unpack_roundtrip(z):
    occ = np.random.default_rng(z).random((7, 6, z)) < 0.3
    packed = pack_occupancy(occ)
    assert packed.dtype == np.uint8 and packed.shape == (7, 6, (z + 7) // 8)
    np.testing.assert_array_equal(packed, np.packbits(occ, axis=-1))  # the documented format, whatever the path
    np.testing.assert_array_equal(pack_occupancy(occ[:, ::2]), np.packbits(occ[:, ::2], axis=-1))  # non-contiguous
    np.testing.assert_array_equal(unpack_occupancy(packed, z), occ)
    # big bit order: z = 0 is the most significant bit of byte 0 (what data/README.md documents)
    one = np.zeros((1, 1, z), bool)
    one[0, 0, 0] = True
    assert pack_occupancy(one)[0, 0, 0] == 0b1000_0000


def test_transform_drop_box_matches_numpy_reference():
    rng = np.random.default_rng(1)
    box = np.array(EGO_BOX)
    raws = [np.concatenate([rng.uniform(-6, 6, (3000, 3)), rng.normal(size=(3000, 2))], 1).astype(np.float32)
            for _ in range(3)]
    keys = [make_transform(yaw_matrix(y), [dx, dy, 1.8]) for y, dx, dy in [(0.0, 0.9, 0.0), (0.1, -2.0, 0.3), (0.2, -4.1, 0.7)]]
    own = make_transform(yaw_matrix(0.0), [0.9, 0.0, 1.8])
    got = transform_drop_box(raws, keys, [own] * 3, box)

    def in_box(p):
        return np.all((p >= box[:, 0]) & (p < box[:, 1]), axis=1)

    ref = []
    for raw, key in zip(raws, keys):
        p_key = apply_4x4(key, raw[:, :3].astype(np.float64))
        p_own = apply_4x4(own, raw[:, :3].astype(np.float64))
        ref.append(p_key[~in_box(p_key) & ~in_box(p_own)])
    ref = np.concatenate(ref)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert len(ref) < sum(map(len, raws))  # the box really removed points
    np.testing.assert_allclose(got, ref, atol=1e-5)


# ---- the cache format and reader, on a hand-written cache ----
def _write_cache(path, grid, clouds, valid=None, sweeps=1):
    tokens = [f"tok{i}" for i in range(len(clouds))]
    w = CacheWriter(path, tokens, occupancy_spec(grid, sweeps, "v1.0-mini", "all", path.parent),
                    {"points": Payload((), "float32", ragged=True)}, block_size=2)
    for start, stop in w.pending():
        w.write_block(start, stop, {"points": clouds[start:stop]}, None if valid is None else valid[start:stop])
    w.finalize()
    return tokens


def test_reader_roundtrip_and_refuses_other_grid_or_kind(tmp_path):
    rng = np.random.default_rng(2)
    lo, hi = ODD_GRID.lower, ODD_GRID.upper
    clouds = [rng.uniform(lo - 1, hi + 1, (n, 3)).astype(np.float32) for n in (300, 0, 500)]
    tokens = _write_cache(tmp_path / "occ.h5", ODD_GRID, clouds, valid=[True, False, True])
    r = OccupancyReader(tmp_path / "occ.h5", ODD_GRID)
    assert r.tokens == ["tok0", "tok2"] and "tok1" not in r and "tok0" in r and len(r) == 2
    np.testing.assert_array_equal(r.points(tokens[2]), clouds[2])
    np.testing.assert_array_equal(r.get(tokens[2]), voxelize_points(clouds[2], ODD_GRID))
    assert r.get(tokens[2]).sum() > 0
    assert r.get("tok0").dtype == np.bool_ and r.sweeps == 1
    with pytest.raises(OccfeatError, match="tok1"):
        r.get("tok1")
    with pytest.raises(OccfeatError) as e:
        OccupancyReader(tmp_path / "occ.h5", BevGrid())
    msg = str(e.value)
    assert "\n" not in msg and ODD_GRID.to_json() in msg and BevGrid().to_json() in msg

    w = CacheWriter(tmp_path / "feat.h5", ["a"], {"kind": "features"}, {"x": Payload((1,), "uint8")}, 1)
    w.write_block(0, 1, {"x": np.zeros((1, 1))})
    w.finalize()
    with pytest.raises(OccfeatError, match="kind"):
        OccupancyReader(tmp_path / "feat.h5", ODD_GRID)
    with pytest.raises(OccfeatError, match="not found; build it with `occfeat voxelize`"):
        OccupancyReader(tmp_path / "nope.h5", ODD_GRID)


def test_reader_refuses_a_format_1_cache_of_packed_grids(tmp_path):
    spec = {k: v for k, v in occupancy_spec(ODD_GRID, 1, "v1.0-mini", "all", tmp_path).items() if k not in ("format", "payload", "crop")}
    spec.update(packing="packbits", packed_axis="z", bitorder="big")  # what format 1 stamped
    packed = (*ODD_GRID.shape[:2], (ODD_GRID.shape[2] + 7) // 8)
    w = CacheWriter(tmp_path / "old.h5", ["a"], spec, {"occupancy": Payload(packed, "uint8")}, 1)
    w.write_block(0, 1, {"occupancy": np.zeros((1, *packed), np.uint8)})
    w.finalize()
    with pytest.raises(OccfeatError, match=r"format 1 .*rerun `occfeat voxelize`") as e:
        OccupancyReader(tmp_path / "old.h5", ODD_GRID)
    assert "\n" not in str(e.value)


# ---- the stage on the synthetic world ----


def _h5_arrays(path):
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in ("tokens", "valid")}
        data["points"] = np.concatenate([np.r_[len(r), r] for r in f["points"][()]])  # lengths and values
        return data, {k: f.attrs[k] for k in f.attrs}


def _assert_same_cache(a, b):
    (da, aa), (db, ab) = _h5_arrays(a), _h5_arrays(b)
    for k in da:
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)
    assert aa.keys() == ab.keys()
    for k in aa:
        assert aa[k] == ab[k], k


def _copy_world(src, dst):
    """A writable copy of the dataroot: tables copied, sensor files symlinked (cheap)."""
    shutil.copytree(src, dst, copy_function=os.symlink)
    tables = dst / TINY_VERSION
    for f in tables.iterdir():
        target = f.resolve()
        f.unlink()
        shutil.copy(target, f)
    return dst


def test_occupancy_fixture_equals_kernel_on_sample_points(occupancy_h5, synth_root, test_grid):
    reader = OccupancyReader(occupancy_h5, test_grid)
    index = SampleIndex(synth_root, TINY_VERSION, "all")
    assert reader.tokens == index.tokens and len(reader) == 12
    for rec in list(index)[:3]:
        pts = sample_points_ego(rec)
        np.testing.assert_array_equal(reader.get(rec.token), reference_occupancy(pts, test_grid))
        assert reader.get(rec.token).sum() > 50
        # the key-frame points are the sensor points moved by ego_T_lidar, minus the ego body
        raw = read_points(rec.lidar.path)[:, :3].astype(np.float64)
        assert len(pts) <= len(raw) and len(pts) > 0.5 * len(raw)


def test_build_resumes_after_interruption_byte_identical_and_is_idempotent(synth_root, test_grid, tmp_path, monkeypatch):
    kw = dict(sweeps=3, block_size=2, progress=False)
    ref = build_occupancy(synth_root, TINY_VERSION, "all", tmp_path / "ref.h5", test_grid, **kw)
    assert ref.written == 12 and not ref.skipped and ref.points > 0

    # "kill" after two blocks: the third write never happens
    real_write, calls = CacheWriter.write_block, []

    def dying_write(self, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(a[:2])
        return real_write(self, *a, **k)

    monkeypatch.setattr(CacheWriter, "write_block", dying_write)
    out = tmp_path / "occ.h5"
    with pytest.raises(KeyboardInterrupt):
        build_occupancy(synth_root, TINY_VERSION, "all", out, test_grid, **kw)
    monkeypatch.undo()
    assert not out.exists() and len(list((tmp_path / "occ.h5.parts").glob("*.h5"))) == 2
    again = build_occupancy(synth_root, TINY_VERSION, "all", out, test_grid, **kw)
    assert again.written == 8  # only the missing blocks
    _assert_same_cache(out, tmp_path / "ref.h5")

    mtime = out.stat().st_mtime_ns
    third = build_occupancy(synth_root, TINY_VERSION, "all", out, test_grid, **kw)
    assert third.already_complete and third.written == 0 and out.stat().st_mtime_ns == mtime
    with pytest.raises(OccfeatError, match="sweeps: cache has 3, this run wants 1"):
        build_occupancy(synth_root, TINY_VERSION, "all", out, test_grid, sweeps=1, progress=False)


def test_workers_give_the_same_cache(synth_root, test_grid, tmp_path):
    a = build_occupancy(synth_root, TINY_VERSION, "mini_train", tmp_path / "a.h5", test_grid, sweeps=2, progress=False)
    b = build_occupancy(synth_root, TINY_VERSION, "mini_train", tmp_path / "b.h5", test_grid, sweeps=2, workers=2,
                        block_size=2, progress=False)
    assert a.samples == b.samples == 6 and a.points == b.points
    _assert_same_cache(tmp_path / "a.h5", tmp_path / "b.h5")


def test_bad_lidar_files_and_missing_pose_name_sample_and_file_or_are_skipped(synth_root, test_grid, tmp_path):
    root = _copy_world(synth_root, tmp_path / "root")
    index = SampleIndex(root, TINY_VERSION, "mini_val")
    recs = list(index)
    # sample 1: key-frame file truncated mid-point; sample 3: a previous sweep's file missing
    trunc = recs[1].lidar.path
    data = trunc.read_bytes()
    trunc.unlink()
    trunc.write_bytes(data[: len(data) // 2 + 7])
    gone = recs[3].sweeps(2)[1].path
    gone.unlink()

    build = lambda out, **k: build_occupancy(root, TINY_VERSION, "mini_val", tmp_path / out, test_grid, sweeps=2,  # noqa: E731
                                             block_size=2, progress=False, **k)
    with pytest.raises(OccfeatError) as e:
        build("a.h5")
    msg = str(e.value)
    assert recs[1].token in msg and str(trunc) in msg and "truncated" in msg and "--skip-bad" in msg and "\n" not in msg

    s = build("b.h5", skip_bad=True)
    assert [t for t, _ in s.skipped] == [recs[1].token, recs[3].token]
    assert str(gone) in s.skipped[1][1] and "missing" in s.skipped[1][1]
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert json.loads(f.attrs["skipped"]) == [recs[1].token, recs[3].token]
        assert f["valid"][()].tolist() == [True, False, True, False, True, True]
        assert len(f["points"][1]) == 0
    r = OccupancyReader(tmp_path / "b.h5", test_grid)
    assert recs[1].token not in r and recs[0].token in r

    # missing ego pose of a key-frame LiDAR sweep
    pose_file = root / TINY_VERSION / "ego_pose.json"
    sd = index.nusc.get("sample_data", index.nusc.get("sample", recs[4].token)["data"]["LIDAR_TOP"])
    poses = [p for p in json.loads(pose_file.read_text()) if p["token"] != sd["ego_pose_token"]]
    pose_file.write_text(json.dumps(poses))
    with pytest.raises(OccfeatError) as e:
        build("c.h5", skip_bad=False)
    assert recs[1].token in str(e.value)  # still the first bad sample
    s = build("d.h5", skip_bad=True)
    assert [t for t, _ in s.skipped] == [recs[1].token, recs[3].token, recs[4].token]
    assert sd["ego_pose_token"] in s.skipped[2][1] and str(recs[4].lidar.path) in s.skipped[2][1]


def test_cli_one_line_errors_grid_mismatch_and_help(synth_root, test_grid, tmp_path):
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(test_grid.to_json())
    base = ["voxelize", "--dataroot", str(synth_root), "--version", TINY_VERSION, "--split", "mini_train",
            "--out", str(tmp_path / "occ.h5"), "--no-progress"]
    runner = CliRunner()
    res = runner.invoke(app, [*base, "--grid", str(grid_file)])
    assert res.exit_code == 0, res.output
    assert "6 samples" in res.output
    res = runner.invoke(app, [*base, "--grid", str(grid_file)])
    assert res.exit_code == 0 and "already complete" in res.output
    # same file, other grid: refused, naming what differs
    res = runner.invoke(app, [*base, "--grid", "default"])
    assert res.exit_code == 2
    err = res.output.strip()
    assert err.startswith("error:") and "grid" in err and "\n" not in err
    res = runner.invoke(app, [*base, "--grid", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and "nope.json not found" in res.output
    res = runner.invoke(app, [*base[:-3], "--out", str(tmp_path / "x.h5"), "--split", "no_such_split"])
    assert res.exit_code == 2 and "unknown split" in res.output
    res = runner.invoke(app, ["voxelize", "--help"])
    for opt in ("--dataroot", "--version", "--split", "--out", "--sweeps", "--recipe", "--grid", "--workers", "--skip-bad", "--block-size"):
        assert opt in res.output


def test_cli_recipe_declares_the_grid_that_pretrain_reads(synth_root, test_grid, tmp_path):
    """`voxelize --recipe R` builds the cache that `pretrain --recipe R` accepts (pretrain opens it with
    OccupancyReader on its config's grid); a cache on the default grid stays a one-line refusal."""
    from occfeat.config import load_config
    from occfeat.train.pretrain import PretrainConfig

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "synthetic-tiny.yaml"
    cfg = load_config(PretrainConfig, recipe)
    assert cfg.grid == test_grid
    base = ["voxelize", "--dataroot", str(synth_root), "--version", TINY_VERSION, "--split", "mini_val", "--no-progress"]
    runner = CliRunner()
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "tiny.h5"), "--recipe", str(recipe)])
    assert res.exit_code == 0, res.output
    reader = OccupancyReader(tmp_path / "tiny.h5", cfg.grid)
    assert reader.tokens and reader.get(reader.tokens[0]).shape == test_grid.shape

    res = runner.invoke(app, [*base, "--out", str(tmp_path / "default.h5")])  # neither option: the default grid
    assert res.exit_code == 0, res.output
    with pytest.raises(OccfeatError, match="--recipe") as e:
        OccupancyReader(tmp_path / "default.h5", cfg.grid)
    assert "\n" not in str(e.value)

    # a recipe given to --grid, and both options at once: one line each, saying what to do
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "x.h5"), "--grid", str(recipe)])
    assert res.exit_code == 2 and res.output.strip().startswith("error:") and f"use --recipe {recipe}" in res.output
    assert "\n" not in res.output.strip()
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "x.h5"), "--grid", "default", "--recipe", str(recipe)])
    assert res.exit_code == 2 and "not both" in res.output and "\n" not in res.output.strip()
    assert not (tmp_path / "x.h5").exists()


def test_kill9_of_the_cli_mid_run_then_rerun_completes(synth_root, test_grid, tmp_path):
    # Deterministic "mid-run": sample 6's LiDAR file is a FIFO, so the CLI blocks reading it after
    # writing blocks 0-5; kill -9 it there, put the real file back, rerun.
    root = _copy_world(synth_root, tmp_path / "root")
    lidar = SampleIndex(root, TINY_VERSION, "all").record(SampleIndex(root, TINY_VERSION, "all").tokens[6]).lidar.path
    real = lidar.resolve()
    lidar.unlink()
    os.mkfifo(lidar)
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(test_grid.to_json())
    out, parts = tmp_path / "occ.h5", tmp_path / "occ.h5.parts"
    cmd = [sys.executable, "-c", "from occfeat.cli.main import app; app()", "voxelize", "--dataroot", str(root), "--version", TINY_VERSION,
           "--split", "all", "--out", str(out), "--grid", str(grid_file), "--block-size", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline and len(list(parts.glob("*.h5"))) < 6:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)  # blocked on the FIFO by now
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # a killed run never leaves a half-written final file
    assert len(list(parts.glob("*.h5"))) == 6
    lidar.unlink()
    lidar.symlink_to(real)
    s = build_occupancy(root, TINY_VERSION, "all", out, test_grid, block_size=1, progress=False)
    assert s.written == 6 and not parts.exists()
    build_occupancy(root, TINY_VERSION, "all", tmp_path / "ref.h5", test_grid, block_size=1, progress=False)
    _assert_same_cache(out, tmp_path / "ref.h5")


def _static_vehicle(index: SampleIndex, token: str, within: float = 45.0) -> dict | None:
    """The sample's annotated vehicle that never moves over its scene's key frames, with the most points,
    among those whose centre is within ``within`` m of the ego in x and y (inside the test grid); or None."""
    nusc = index.nusc
    ego_T_global = invert_rigid(index.record(token).global_T_ego)
    best = None
    for ann in (nusc.get("sample_annotation", t) for t in nusc.get("sample", token)["anns"]):
        if not ann["category_name"].startswith("vehicle.") or ann["num_lidar_pts"] < 30:
            continue
        if np.abs(apply_4x4(ego_T_global, np.array([ann["translation"]]))[0, :2]).max() > within:
            continue
        inst = nusc.get("instance", ann["instance_token"])
        track, t = [], inst["first_annotation_token"]
        while t:
            track.append(np.array(nusc.get("sample_annotation", t)["translation"]))
            t = nusc.get("sample_annotation", t)["next"]
        if len(track) > 1 and np.ptp(np.stack(track), axis=0).max() < 1e-6:
            if best is None or ann["num_lidar_pts"] > best["num_lidar_pts"]:
                best = ann
    return best


def _in_box(points_ego: np.ndarray, global_T_ego: np.ndarray, ann: dict, margin: float) -> np.ndarray:
    from pyquaternion import Quaternion

    p = apply_4x4(global_T_ego, points_ego.astype(np.float64)) - np.array(ann["translation"])
    local = p @ Quaternion(ann["rotation"]).rotation_matrix  # = R^T p per row
    w, l, h = ann["size"]
    return np.all(np.abs(local) <= np.array([l, w, h]) / 2 + margin, axis=1)


def test_multi_sweep_static_object_lands_in_the_same_voxels(synth_root):
    from occfeat.data.voxelize import SweepJob, job_points
    from occfeat.grid import BevGrid

    test_grid = BevGrid(bounds=((-50.0, 50.0), (-50.0, 50.0), (-4.5, 5.5)), shape=(100, 100, 8))  # parked cars sit 20-40 m out

    index = SampleIndex(synth_root, TINY_VERSION, None)  # both scenes
    # the latest key frame (a full history of previous sweeps) with a parked vehicle near the ego
    token, ann = next((t, a) for t in reversed(index.tokens) if (a := _static_vehicle(index, t)) is not None)
    rec = index.record(token)
    sweeps = rec.sweeps(10)
    assert len(sweeps) == 10 and sweeps[0].is_key_frame and not sweeps[-1].is_key_frame

    def one_sweep(s, ego_T_lidar):
        pts = job_points(SweepJob(rec.token, (str(s.path),), (ego_T_lidar,), (rec.lidar.ego_T_lidar,), np.eye(4)[None]))
        above_ground = apply_4x4(rec.global_T_ego, pts.astype(np.float64))[:, 2] > 0.01
        return pts[above_ground]

    key_pts = one_sweep(sweeps[0], sweeps[0].ego_T_lidar)
    key_vox = voxelize_points(key_pts[_in_box(key_pts, rec.global_T_ego, ann, 0.0)], test_grid)
    assert key_vox.sum() >= 3
    # the voxels the annotated box covers: a dense lattice of points inside it (ego frame of the key frame)
    from pyquaternion import Quaternion

    w, l, h = ann["size"]
    lattice = np.stack(np.meshgrid(*(np.linspace(-0.5, 0.5, 25) * d for d in (l, w, h)), indexing="ij"), -1).reshape(-1, 3)
    box_global = lattice @ Quaternion(ann["rotation"]).rotation_matrix.T + np.array(ann["translation"])
    box_vox = voxelize_points(apply_4x4(invert_rigid(rec.global_T_ego), box_global).astype(np.float32), test_grid)
    assert not (key_vox & ~box_vox).any()
    for s in sweeps[1:]:
        pts = one_sweep(s, s.ego_T_lidar)
        near = _in_box(pts, rec.global_T_ego, ann, 0.25)
        inside = _in_box(pts, rec.global_T_ego, ann, 0.0)
        assert near.sum() >= 20
        assert inside.sum() == near.sum()  # every return near the parked car is on it
        vox = voxelize_points(pts[inside], test_grid)
        assert vox.any() and not (vox & ~box_vox).any()  # in the car's voxels, as the key frame's points are
    # the control: taking the oldest sweep as if it were shot at the key-frame pose misses the car
    pts = one_sweep(sweeps[-1], rec.lidar.ego_T_lidar)
    assert _in_box(pts, rec.global_T_ego, ann, 0.0).sum() < 0.5 * near.sum()

    # and the accumulated points are exactly the per-sweep ones
    acc = sample_points_ego(rec, 10)
    assert len(acc) == sum(len(job_points(SweepJob(rec.token, (str(s.path),), (s.ego_T_lidar,), (rec.lidar.ego_T_lidar,), np.eye(4)[None])))
                           for s in sweeps)
