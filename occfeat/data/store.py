"""Per-sample HDF5 caches that survive being killed: the one writer/reader every offline stage uses.

Layout of a finished cache (readable with plain h5py; exact schemas per cache in data/README.md):

- ``tokens`` (N,) sample tokens, in the index's stable order;
- ``valid`` (N,) bool, False for samples skipped as bad input (their rows are zeros);
- one dataset per payload, ``(N, *per_sample_shape)``, one chunk per sample;
- file attributes: the cache's *spec* (each key as its own attribute, JSON-encoded when not a plain
  scalar/string) plus ``spec`` (all of it as one JSON string) and ``skipped`` (JSON list of tokens).

Crash safety: rows are written in blocks to ``<out>.parts/<start>-<stop>.h5``, each first as a
``.tmp`` and then renamed (atomic on POSIX), so a killed run leaves only whole blocks behind and the
next run writes the missing ones. :meth:`CacheWriter.finalize` assembles ``<out>`` the same way
(tmp + rename) in a helper process (HDF5 crashes the interpreter when it hits a full disk; a crashed helper
is one error line and leaves the parts as they were), checks the result, renames it and removes the parts;
parts left by a kill after that rename are removed by the next run. A cache or parts folder made under
another spec (grid, teacher, sweeps, dataroot...) is refused with a one-line error rather than mixed.

One writer per cache: a :class:`CacheWriter` holds the lock of ``<out>`` (:mod:`occfeat.lock`) from its
creation until :meth:`CacheWriter.close` (use it as a context manager). Any OSError while writing (full
disk, read-only folder) is one line naming the path; finished blocks stay.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from occfeat.errors import OccfeatError
from occfeat.files import write_error
from occfeat.lock import output_lock

PARTS_SUFFIX = ".parts"
# Free space kept in reserve on top of a block's or cache's payload bytes (HDF5 metadata, chunk index:
# plus 1 %); writing is refused when the disk has less.
SPACE_MARGIN = 64 << 10
# Spec keys that describe a cache without defining it: stored, shown, never compared. Upgrading occfeat
# or moving a weights file (same sha256) must not invalidate a 73 GB feature cache.
DESCRIPTIVE_KEYS = frozenset({"occfeat_version", "weights_source"})


def _defining(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in DESCRIPTIVE_KEYS}


def _encode(v):
    return v if isinstance(v, (str, int, float, bool, np.integer, np.floating, np.bool_)) else json.dumps(v)


def _spec_json(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _spec_diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: cache has {old.get(k)!r}, this run wants {new.get(k)!r}" for k in keys[:3])


@dataclass(frozen=True)
class Payload:
    """One per-sample dataset: its shape without the sample axis and its dtype. ``ragged``: each row
    is a 1-D array of its own length (an HDF5 variable-length dataset; ``shape`` must be ())."""

    shape: tuple[int, ...]
    dtype: str
    ragged: bool = False

    def h5_dtype(self):
        return h5py.vlen_dtype(np.dtype(self.dtype)) if self.ragged else self.dtype

    def rows(self, data, n: int) -> np.ndarray:
        """``data`` as the (n, *shape) array h5py writes (an object array of 1-D rows when ragged)."""
        if not self.ragged:
            return np.asarray(data).astype(self.dtype, copy=False)
        out = np.empty(n, dtype=object)
        out[:] = [np.ascontiguousarray(r, dtype=self.dtype).reshape(-1) for r in data]
        return out


def read_spec(path: Path) -> dict:
    """The spec stored in a finished cache; one-line error if the file is not a readable cache."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["spec"])
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise OccfeatError(f"{path} is not a readable occfeat cache ({type(e).__name__}); delete it and rerun") from e


def check_spec(path: Path, want: dict, keys: list[str] | None = None) -> dict:
    """Refuse a cache whose spec differs from ``want`` on ``keys`` (default: all keys of ``want``)."""
    have = read_spec(path)
    keys = list(_defining(want)) if keys is None else keys
    bad = {k: want[k] for k in keys if json.loads(_spec_json({k: have.get(k)})) != json.loads(_spec_json({k: want[k]}))}
    if bad:
        raise OccfeatError(
            f"{path} was made under another setting ({_spec_diff({k: have.get(k) for k in bad}, bad)}); "
            "rebuild it or point to the matching cache"
        )
    return have


class CacheWriter:
    """Writes a per-sample cache in crash-safe blocks; rerunning resumes, a finished cache is left alone.

    ``spec`` must hold everything that makes two caches incompatible (grid, teacher, sweeps, dataroot
    version, split...). ``payloads`` maps dataset name to :class:`Payload`. Holds the write lock of
    ``out`` until :meth:`close`; use ``with CacheWriter(...) as writer:``.
    """

    def __init__(
        self, out: str | Path, tokens: list[str], spec: dict, payloads: dict[str, Payload], block_size: int, lock_wait_s: float = 0.0
    ):
        """``lock_wait_s``: how long to wait for another writer of ``out`` before the one-line refusal."""
        self.out = Path(out)
        self.tokens = list(tokens)
        self.spec = dict(spec)
        self.payloads = payloads
        self.block_size = max(1, int(block_size))
        self.parts = self.out.with_name(self.out.name + PARTS_SUFFIX)
        self.complete = False
        self._lock = ExitStack()
        self._lock.enter_context(output_lock(self.out, "cache", wait_s=lock_wait_s))
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the write lock (the cache stays as it is: finished, or resumable from its parts)."""
        self._lock.close()

    def _open(self) -> None:
        if self.out.exists():
            check_spec(self.out, self.spec)
            with h5py.File(self.out, "r") as f:
                have = [t.decode() if isinstance(t, bytes) else t for t in f["tokens"][()]]
            if have != self.tokens:
                raise OccfeatError(
                    f"{self.out} holds another sample list ({len(have)} samples, this run has {len(self.tokens)}); "
                    "use another --out or delete it"
                )
            self.complete = True
            # A kill between the final rename and the cleanup left the parts: the finished file is verified.
            shutil.rmtree(self.parts, ignore_errors=True)
            return
        if self.parts.exists():
            meta = self.parts / "spec.json"
            if not meta.is_file():
                raise OccfeatError(f"{self.parts} is not an occfeat parts folder; delete it and rerun")
            old = json.loads(meta.read_text())
            old_spec, new_spec = _defining(old.get("spec", {})), json.loads(_spec_json(_defining(self.spec)))
            if old_spec != new_spec or old.get("tokens") != self.tokens:
                diff = _spec_diff(old_spec, new_spec) or "another sample list"
                raise OccfeatError(f"{self.parts} holds an unfinished run under another setting ({diff}); delete it or use another --out")
        else:
            tmp = self.parts / "spec.json.tmp"
            try:
                self.out.parent.mkdir(parents=True, exist_ok=True)
                self.parts.mkdir()
                tmp.write_text(json.dumps({"spec": json.loads(_spec_json(self.spec)), "tokens": self.tokens}))
                os.replace(tmp, self.parts / "spec.json")
            except OSError as e:
                shutil.rmtree(self.parts, ignore_errors=True)
                raise write_error(Path(tmp), e, "rerun") from None

    # ---- blocks ----
    def _blocks(self) -> list[tuple[int, int]]:
        n = len(self.tokens)
        return [(s, min(s + self.block_size, n)) for s in range(0, n, self.block_size)]

    def _part_path(self, start: int, stop: int) -> Path:
        return self.parts / f"{start:08d}-{stop:08d}.h5"

    def pending(self) -> list[tuple[int, int]]:
        """Blocks (start, stop) not yet written; empty when the cache is complete."""
        if self.complete:
            return []
        return [b for b in self._blocks() if not self._part_path(*b).exists()]

    def _assembled_bytes(self) -> int:
        """About what the assembled file takes: the finished parts' sizes (ragged rows have no fixed size)."""
        return sum(self._part_path(a, b).stat().st_size for a, b in self._blocks())

    def _check_space(self, need: int, path: Path, doing: str) -> None:
        # HDF5 that hits a full disk can crash the interpreter (exit 139): refuse before writing instead.
        need += need // 100
        free = shutil.disk_usage(path.parent).free
        if free < need:
            raise OccfeatError(
                f"not enough free space to {doing} {path}: needs about {need / 2**20:,.1f} MiB, {free / 2**20:,.1f} MiB free "
                f"on the disk that holds {path.parent}; free space and rerun (finished blocks in {self.parts.name} are kept)"
            )

    def write_block(self, start: int, stop: int, data: dict[str, np.ndarray], valid: np.ndarray | None = None) -> None:
        """Write rows [start, stop) atomically. ``valid`` (stop-start,) bool marks skipped samples."""
        n = stop - start
        valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
        path = self._part_path(start, stop)
        tmp = path.with_suffix(".tmp")
        arrays = {}
        for name, p in self.payloads.items():
            arr = p.rows(data[name], n)
            if arr.shape != (n, *p.shape):
                raise ValueError(f"block {start}-{stop}: {name} has shape {arr.shape}, expected {(n, *p.shape)}")
            arrays[name] = arr
        nbytes = sum(sum(r.nbytes for r in a) if self.payloads[k].ragged else a.nbytes for k, a in arrays.items())
        self._check_space(nbytes + n + SPACE_MARGIN, path, "write")
        try:
            with h5py.File(tmp, "w") as f:
                for name, arr in arrays.items():
                    f.create_dataset(name, data=arr, dtype=self.payloads[name].h5_dtype())
                f.create_dataset("valid", data=valid)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise write_error(Path(path), e, f"rerun (finished blocks in {self.parts.name} are kept)") from None

    def finalize(self) -> list[str]:
        """Assemble the parts into ``out`` (atomic), check it, and remove the parts. Returns the skipped tokens."""
        if self.complete:
            with h5py.File(self.out, "r") as f:
                return json.loads(f.attrs.get("skipped", "[]"))
        missing = self.pending()
        if missing:
            raise RuntimeError(f"finalize with {len(missing)} blocks missing")
        n = len(self.tokens)
        tmp = self.out.with_name(self.out.name + ".tmp")
        skipped: list[str] = []
        for start, stop in self._blocks():
            with h5py.File(self._part_path(start, stop), "r") as part:
                skipped += [self.tokens[start + i] for i in np.flatnonzero(~part["valid"][()])]
        tokens_bytes = sum(len(t.encode()) + 16 for t in self.tokens)
        self._check_space(self._assembled_bytes() + tokens_bytes + 64 * n + SPACE_MARGIN, self.out, "assemble")
        job = {
            "tmp": str(tmp), "tokens": self.tokens, "parent": os.getpid(),
            "blocks": [[s, e, str(self._part_path(s, e))] for s, e in self._blocks()],
            "payloads": {k: [list(p.shape), p.dtype, p.ragged] for k, p in self.payloads.items()},
            "attrs": {k: _encode(v) for k, v in self.spec.items()} | {"spec": _spec_json(self.spec), "skipped": json.dumps(skipped)},
        }
        _assemble_in_helper(job, self.out)
        try:
            self._verify(tmp, skipped)
            os.replace(tmp, self.out)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise write_error(Path(self.out), e, f"rerun (finished blocks in {self.parts.name} are kept)") from None
        shutil.rmtree(self.parts, ignore_errors=True)
        self.complete = True
        return skipped

    def _verify(self, path: Path, skipped: list[str]) -> None:
        """The assembled file holds our tokens, spec and payload shapes, else one line (parts kept)."""
        try:
            with h5py.File(path, "r") as f:
                ok = (
                    [t.decode() if isinstance(t, bytes) else t for t in f["tokens"][()]] == self.tokens
                    and f.attrs["spec"] == _spec_json(self.spec)
                    and json.loads(f.attrs["skipped"]) == skipped
                    and all(f[k].shape == (len(self.tokens), *p.shape) for k, p in self.payloads.items())
                )
        except (OSError, KeyError) as e:
            ok = False
            why = type(e).__name__
        else:
            why = "contents differ from the parts"
        if not ok:
            path.unlink(missing_ok=True)
            raise OccfeatError(f"assembling {self.out} gave an unreadable file ({why}); rerun (finished blocks in {self.parts.name} are kept)")


def _assemble(job: dict) -> None:
    """Copy the parts named in ``job`` into one HDF5 file ``job["tmp"]`` (runs in the helper process)."""
    n = len(job["tokens"])
    with h5py.File(job["tmp"], "w") as f:
        f.create_dataset("tokens", data=np.array(job["tokens"], dtype=h5py.string_dtype()))
        payloads = {name: Payload(tuple(shape), dtype, ragged) for name, (shape, dtype, ragged) in job["payloads"].items()}
        dsets = {
            name: f.create_dataset(name, shape=(n, *p.shape), dtype=p.h5_dtype(), chunks=(1, *p.shape))
            for name, p in payloads.items()
        }
        valid_all = f.create_dataset("valid", shape=(n,), dtype=bool)
        for start, stop, part_path in job["blocks"]:
            with h5py.File(part_path, "r") as part:
                for name, d in dsets.items():
                    if payloads[name].ragged:  # h5py broadcasts a block of equal-length rows wrongly
                        for i, row in enumerate(part[name][()]):
                            d[start + i] = row
                    else:
                        d[start:stop] = part[name][()]
                valid_all[start:stop] = part["valid"][()]
        for k, v in job["attrs"].items():
            f.attrs[k] = v


def _assemble_main() -> None:
    """Entry of the helper process: the job as JSON on stdin; an OSError is reported as JSON on stdout."""
    from occfeat.procs import die_with_parent

    job = json.loads(sys.stdin.read())
    die_with_parent(job["parent"])  # an orphan must not keep writing a tmp file the next run rewrites
    try:
        _assemble(job)
    except OSError as e:
        print(json.dumps({"errno": e.errno, "strerror": e.strerror or str(e).splitlines()[0][:200]}), flush=True)
        os._exit(3)  # no interpreter teardown: HDF5 after a failed write can crash in its destructors


def _assemble_in_helper(job: dict, out: Path) -> None:
    """Run :func:`_assemble` in a child interpreter; any failure of it becomes one line and no tmp file."""
    root = str(Path(__file__).resolve().parents[2])
    code = f"import sys; sys.path.insert(0, {root!r}); from occfeat.data.store import _assemble_main; _assemble_main()"
    tmp = Path(job["tmp"])
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(job), capture_output=True, text=True)
    if proc.returncode == 0:
        return
    tmp.unlink(missing_ok=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 3 and lines:
        info = json.loads(lines[-1])
        raise write_error(Path(out), OSError(info["errno"], info["strerror"]), f"rerun (finished blocks in {out.name}{PARTS_SUFFIX} are kept)")
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:160]
    raise OccfeatError(
        f"assembling {out} failed ({how}: {last}); check free space and the disk, then rerun "
        f"(finished blocks in {out.name}{PARTS_SUFFIX} are kept)"
    )


class CacheReader:
    """Random access to a finished cache by sample token. Opens the file lazily, so it is safe to
    create before DataLoader workers fork (each worker opens its own handle)."""

    def __init__(self, path: str | Path, expect: dict | None = None, keys: list[str] | None = None, made_by: str = ""):
        """``made_by``: the command that builds this cache, named in the not-found message."""
        self.path = Path(path)
        if not self.path.is_file():
            parts = self.path.with_name(self.path.name + PARTS_SUFFIX)
            how = f"`{made_by}`" if made_by else "the command that makes it"
            hint = f"an unfinished run's parts exist: rerun {how} to finish it" if parts.exists() else f"build it with {how}"
            raise OccfeatError(f"cache {self.path} not found; {hint}")
        self.spec = check_spec(self.path, expect or {}, keys)
        with h5py.File(self.path, "r") as f:
            toks = [t.decode() if isinstance(t, bytes) else t for t in f["tokens"][()]]
            self.valid = f["valid"][()]
        self.row = {t: i for i, t in enumerate(toks)}
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _f(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __contains__(self, token: str) -> bool:
        i = self.row.get(token)
        return i is not None and bool(self.valid[i])

    def get(self, name: str, token: str) -> np.ndarray:
        i = self.row.get(token)
        if i is None or not self.valid[i]:
            raise OccfeatError(f"sample {token} is not in {self.path} (missing or skipped as bad input); rebuild the cache for this split")
        return self._f()[name][i]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state
