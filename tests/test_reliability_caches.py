"""Issue 15 (reliability), the cache / dataroot side: one writer per output, stale locks taken over,
a full disk or a read-only folder is one clean line with the previous good state untouched, kills at
each atomic step of a cache or a dataroot recover, caches from another dataroot are refused, and
worker processes die with their parent."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from occfeat.errors import OccfeatError
from occfeat.lock import lock_path, output_lock, read_holder

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _hold_lock_in_child(out: Path) -> subprocess.Popen:
    """A second process that holds the lock of ``out`` until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from occfeat.lock import output_lock
        with output_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, "voxelize", "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---- locks ----
def test_second_writer_gets_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "occ.h5"
    holder = _hold_lock_in_child(out)
    try:
        with pytest.raises(OccfeatError) as e:
            with output_lock(out, "cache"):
                pass
        msg = str(e.value)
        assert "\n" not in msg and f"pid {holder.pid} on {socket.gethostname()}" in msg and "voxelize --out" in msg
        assert "since 20" in msg
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed -9: its lock is free again and taken at once
    with output_lock(out) as lock:
        assert read_holder(lock)["pid"] == os.getpid()
    assert not lock.exists()


def test_stale_lock_of_a_dead_process_is_taken_over_and_removed_on_exit(tmp_path):
    out = tmp_path / "dataroot"
    lock = lock_path(out)
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "command": "synth", "since": "then"}))
    with output_lock(out) as held:
        assert held == lock and read_holder(lock)["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_inherited_by_an_orphan_of_a_dead_holder_is_taken_over(tmp_path):
    # A killed holder's forked worker still holds the flock; the recorded pid is dead on this host.
    out = tmp_path / "occ.h5"
    lock = lock_path(out)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "command": "voxelize", "since": "then"}).encode())
        with output_lock(out):
            assert read_holder(lock)["pid"] == os.getpid()
        # a live holder on another host is never taken over
        os.close(fd)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": 1, "host": "elsewhere", "command": "x", "since": "then"}).encode())
        with pytest.raises(OccfeatError, match="being written by pid 1 on elsewhere"):
            with output_lock(out):
                pass
    finally:
        os.close(fd)


def test_lock_is_reentrant_in_one_process_and_released_on_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            with output_lock(out):
                assert lock_path(out).exists()
            assert lock_path(out).exists()
            raise RuntimeError
    assert not lock_path(out).exists()


# ---- caches ----
def _payloads():
    from occfeat.data.store import Payload

    return {"a": Payload((64, 64, 4), "uint8")}


TOKENS = [f"t{i}" for i in range(8)]


def _write_parts(out: Path):
    """A CacheWriter on ``out`` with every block written (4 blocks of ~34 KB), not yet assembled."""
    import numpy as np

    from occfeat.data.store import CacheWriter

    w = CacheWriter(out, TOKENS, {"kind": "test"}, _payloads(), block_size=2)
    for s, e in w.pending():
        w.write_block(s, e, {"a": np.full((e - s, 64, 64, 4), s, np.uint8)})
    return w


def test_second_cache_writer_is_refused_with_the_holder(tmp_path):
    from occfeat.data.store import CacheWriter

    out = tmp_path / "occ.h5"
    holder = _hold_lock_in_child(out)
    try:
        with pytest.raises(OccfeatError, match=f"cache {out} is being written by pid {holder.pid}"):
            CacheWriter(out, TOKENS, {"kind": "test"}, _payloads(), block_size=2)
        assert not (tmp_path / "occ.h5.parts").exists()  # the refused writer touched nothing
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 400 KiB tmpfs (root only; skipped where mount is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_while_assembling_is_one_line_and_keeps_the_parts(tiny_disk, monkeypatch):
    import h5py
    import numpy as np

    from occfeat.data import store

    out = tiny_disk / "c.h5"
    w = _write_parts(out)
    parts = sorted(p.name for p in w.parts.iterdir())
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (shutil_free(tiny_disk) - 60_000))
    with pytest.raises(OccfeatError) as e:  # refused before HDF5 touches the full disk
        w.finalize()
    assert "not enough free space to assemble" in str(e.value) and "\n" not in str(e.value)
    # Even past the space check (another process filled the disk meanwhile), HDF5's crash on ENOSPC
    # stays in the helper process: one line, no tmp file, the parts as they were.
    monkeypatch.setattr(store.CacheWriter, "_check_space", lambda *a: None)
    with pytest.raises(OccfeatError) as e:
        w.finalize()
    assert str(out) in str(e.value) and "\n" not in str(e.value) and "kept" in str(e.value)
    assert not out.exists() and not (tiny_disk / "c.h5.tmp").exists()
    assert sorted(p.name for p in w.parts.iterdir()) == parts
    filler.unlink()
    w.finalize()
    w.close()
    with h5py.File(out) as f:
        assert [int(f["a"][i, 0, 0, 0]) for i in range(8)] == [0, 0, 2, 2, 4, 4, 6, 6]
    assert not w.parts.exists() and not (tiny_disk / "c.h5.lock").exists()


def shutil_free(path: Path) -> int:
    import shutil

    return shutil.disk_usage(path).free


def test_read_only_folder_is_one_line_naming_the_path(tiny_disk):
    from occfeat.data.store import CacheWriter

    out = tiny_disk / "c.h5"
    _write_parts(out).close()
    parts = sorted(p.name for p in (tiny_disk / "c.h5.parts").iterdir())
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    for target in (out, tiny_disk / "new" / "d.h5"):
        with pytest.raises(OccfeatError) as e:
            CacheWriter(target, TOKENS, {"kind": "test"}, _payloads(), block_size=2)
        msg = str(e.value)
        assert "\n" not in msg and "writable" in msg and str(target.parent) in msg
    assert sorted(p.name for p in (tiny_disk / "c.h5.parts").iterdir()) == parts


def test_kill_at_each_atomic_step_of_a_cache_recovers(tmp_path):
    """Fault injection at the states a kill -9 can leave: a torn block tmp, a torn assembled tmp, and the
    parts still there after the final rename (the last is removed by the next start)."""
    import h5py

    from occfeat.data.store import CacheWriter

    out = tmp_path / "c.h5"
    w = _write_parts(out)
    (w.parts / "00000000-00000002.tmp").write_bytes(b"torn")
    (tmp_path / "c.h5.tmp").write_bytes(b"torn assembled file")
    w.finalize()
    w.close()
    assert not (tmp_path / "c.h5.tmp").exists()
    # killed between the final rename and removing the parts:
    parts = tmp_path / "c.h5.parts"
    parts.mkdir()
    (parts / "spec.json").write_text("{}")
    (parts / "00000000-00000002.h5").write_bytes(b"x" * 1000)
    with CacheWriter(out, TOKENS, {"kind": "test"}, _payloads(), block_size=2) as again:
        assert again.complete and again.pending() == []
    assert not parts.exists()
    with h5py.File(out) as f:
        assert len(f["tokens"]) == 8


def test_voxelize_workers_die_with_their_parent(tmp_path):
    code = textwrap.dedent("""
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from occfeat.data.voxelize import _init_worker
        from tests.conftest import TEST_GRID
        pool = ProcessPoolExecutor(1, initializer=_init_worker, initargs=(TEST_GRID, os.getpid()))
        print(pool.submit(os.getpid).result(), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(100):
        if not _alive(worker):
            break
        time.sleep(0.05)
    assert not _alive(worker), "the worker outlived its killed parent"


def _alive(pid: int) -> bool:
    from occfeat.lock import pid_alive

    return pid_alive(pid)


def test_pretrain_refuses_caches_from_another_dataroot(occupancy_h5, synth_root, test_grid, tmp_path):
    from occfeat.data.occupancy import OccupancyReader
    from occfeat.data.index import SampleIndex
    from occfeat.objectives import Sources
    from occfeat.train.pretrain import _check_caches
    from tests.fixtures.synth import TINY_VERSION

    sources = Sources(test_grid, occupancy=OccupancyReader(occupancy_h5, test_grid))
    tokens = SampleIndex(synth_root, TINY_VERSION, "mini_train").tokens
    same = {"dataroot": str(synth_root.resolve()), "version": TINY_VERSION, "split": "mini_train"}
    _check_caches(sources, tokens, "mini_train", same)  # split "all" serves every split
    other = dict(same, dataroot=str(tmp_path / "another-world"))  # same tokens, another world
    with pytest.raises(OccfeatError, match="made from another source: dataroot"):
        _check_caches(sources, tokens, "mini_train", other)
    with pytest.raises(OccfeatError, match="version"):
        _check_caches(sources, tokens, "mini_train", dict(same, version="v1.0-trainval"))


# ---- synth ----
TINY_SYNTH = dict(scenes=1, samples_per_scene=1, image_size=(32, 18))


def test_synth_overwrite_after_a_kill_and_recognises_its_finished_output(tmp_path, monkeypatch):
    from occfeat.data.synth import SynthConfig, write_dataroot
    from occfeat.data.synth import writer as W

    out = tmp_path / "root"
    a, b = SynthConfig(**TINY_SYNTH, seed=1), SynthConfig(**TINY_SYNTH, seed=2)
    write_dataroot(out, a)
    # killed while deleting the old world of an --overwrite: a half-deleted .synth-old is left
    trash = tmp_path / ".root.synth-old"
    (trash / "samples").mkdir(parents=True)
    (trash / "samples" / "x.jpg").write_bytes(b"old")
    write_dataroot(out, b, overwrite=True)
    assert not trash.exists() and W.is_complete(out, b)
    # killed between the two renames: the old world aside, the new one complete in the tmp folder
    out.rename(trash)
    write_dataroot(tmp_path / ".root.synth-tmp", a)
    real_write = W._write
    monkeypatch.setattr(W, "_write", lambda *a, **k: pytest.fail("regenerated a finished world"))
    write_dataroot(out, a, overwrite=True)
    assert W.is_complete(out, a) and not trash.exists()
    write_dataroot(out, a, overwrite=True)  # the same command again: already complete, nothing regenerated
    write_dataroot(out, a)
    monkeypatch.setattr(W, "_write", real_write)
    with pytest.raises(OccfeatError, match="not empty"):
        write_dataroot(out, b)  # another config still needs --overwrite
