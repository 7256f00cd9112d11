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
