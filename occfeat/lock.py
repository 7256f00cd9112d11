"""One writer per output: an exclusive lock on a cache file, a dataroot or a run dir for the whole write.

The lock is ``fcntl.flock`` on a lock file beside the output (``OUT.lock``). The kernel releases a flock
when its holder dies, however it dies (kill -9 included), so a lock left by a killed run is never
mistaken for a live one: the next writer simply takes it. The lock file holds a small JSON body
(pid, host, command, since) that names the holder in the one-line error a second writer gets.

One case the kernel cannot see: child processes forked by the holder inherit its lock, so a holder
killed while its workers linger would keep the lock. A lock whose recorded holder is on this host and
no longer alive is therefore stale whatever flock says, and is taken over (its file replaced).

The lock is re-entrant within a process (a pipeline that locks a dataroot may call a stage that locks
it again), and the lock file is removed when the outermost holder leaves.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from occfeat.errors import OccfeatError

LOCK_SUFFIX = ".lock"
# path of the output (resolved) → (fd, depth) for the locks this process holds
_HELD: dict[str, list[int]] = {}


def lock_path(out: str | Path) -> Path:
    """The lock file of an output: ``OUT.lock`` beside it."""
    out = Path(out)
    return out.with_name(out.name + LOCK_SUFFIX)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_holder(path: str | Path) -> dict:
    """The JSON body of a lock file ({} when missing, empty or torn)."""
    try:
        body = json.loads(Path(path).read_text() or "{}")
        return body if isinstance(body, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    cmd = str(holder.get("command", "?"))
    cmd = cmd if len(cmd) <= 120 else cmd[:117] + "..."
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (`{cmd}`, since {holder.get('since', '?')})"


def _stale(holder: dict) -> bool:
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid)


def _open_locked(lock: Path, out: Path) -> int | None:
    """An fd holding the flock of ``lock`` (the file at that path right now), or None if someone holds it."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise OccfeatError(
            f"cannot create the lock file {lock} for {out} ({e.strerror}); make {lock.parent} writable or choose another output"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:  # the holder before us may have removed the file between our open and our flock: start over
        same = os.stat(lock).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return -1
    return fd


@contextmanager
def output_lock(out: str | Path, what: str = "output", wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the exclusive write lock of ``out`` (a file or folder) for the ``with`` block.

    A second writer gets one :class:`OccfeatError` line naming the holder (pid, host, command, since).
    A lock whose holder died is taken over. Yields the lock file's path; removes it on exit.
    ``what`` names the output in the error ("cache", "dataroot", "run dir"). ``wait_s``: wait up to this
    long for a live holder to finish instead of failing at once (for outputs runs share, like a GT cache).
    """
    out = Path(out)
    key = str(out.resolve())
    if key in _HELD:  # re-entrant within this process
        _HELD[key][1] += 1
        try:
            yield lock_path(out)
        finally:
            if key in _HELD:  # (the outer holder may have left first, e.g. garbage-collected out of order)
                _HELD[key][1] -= 1
        return
    lock = lock_path(out)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OccfeatError(f"cannot create {lock.parent} ({e.strerror}); make it writable or choose another output") from None
    fd = None
    deadline = time.monotonic() + wait_s
    for _ in range(20 + int(wait_s * 4)):
        fd = _open_locked(lock, out)
        if fd is not None and fd >= 0:
            break
        if fd is None:
            holder = read_holder(lock)
            if not _stale(holder) and time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            if not _stale(holder):
                raise OccfeatError(
                    f"{what} {out} is being written by {_describe(holder)}; wait for it to finish, stop it, "
                    f"or write to another output (if no such process runs, delete {lock})"
                )
            # Its holder is dead but a forked child still holds the flock: replace the file (if unchanged).
            try:
                if read_holder(lock) == holder:
                    lock.unlink()
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    else:
        raise OccfeatError(f"could not take the lock {lock} for {out}; delete it if no occfeat command writes {out}")
    body = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(body).encode())
    except OSError as e:
        os.close(fd)
        raise OccfeatError(f"cannot write the lock file {lock} ({e.strerror}); free space on {lock.parent} or choose another output") from None
    _HELD[key] = [fd, 1]
    try:
        yield lock
    finally:
        del _HELD[key]
        try:
            lock.unlink()  # while still holding the flock: a newcomer that opened the old file sees the inode change
        except OSError:
            pass
        os.close(fd)
