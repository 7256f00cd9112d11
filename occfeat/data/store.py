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
(tmp + rename) and removes the parts. A cache or parts folder made under another spec (grid, teacher,
sweeps, dataroot...) is refused with a one-line error rather than mixed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from occfeat.errors import OccfeatError

PARTS_SUFFIX = ".parts"
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
    version, split...). ``payloads`` maps dataset name to :class:`Payload`.
    """

    def __init__(self, out: str | Path, tokens: list[str], spec: dict, payloads: dict[str, Payload], block_size: int):
        self.out = Path(out)
        self.tokens = list(tokens)
        self.spec = dict(spec)
        self.payloads = payloads
        self.block_size = max(1, int(block_size))
        self.parts = self.out.with_name(self.out.name + PARTS_SUFFIX)
        self.complete = False
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
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.parts.mkdir()
            tmp = self.parts / "spec.json.tmp"
            tmp.write_text(json.dumps({"spec": json.loads(_spec_json(self.spec)), "tokens": self.tokens}))
            os.replace(tmp, self.parts / "spec.json")

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

    def write_block(self, start: int, stop: int, data: dict[str, np.ndarray], valid: np.ndarray | None = None) -> None:
        """Write rows [start, stop) atomically. ``valid`` (stop-start,) bool marks skipped samples."""
        n = stop - start
        valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
        path = self._part_path(start, stop)
        tmp = path.with_suffix(".tmp")
        with h5py.File(tmp, "w") as f:
            for name, p in self.payloads.items():
                arr = p.rows(data[name], n)
                if arr.shape != (n, *p.shape):
                    raise ValueError(f"block {start}-{stop}: {name} has shape {arr.shape}, expected {(n, *p.shape)}")
                f.create_dataset(name, data=arr, dtype=p.h5_dtype())
            f.create_dataset("valid", data=valid)
        os.replace(tmp, path)

    def finalize(self) -> list[str]:
        """Assemble the parts into ``out`` (atomic) and remove them. Returns the skipped tokens."""
        if self.complete:
            with h5py.File(self.out, "r") as f:
                return json.loads(f.attrs.get("skipped", "[]"))
        missing = self.pending()
        if missing:
            raise RuntimeError(f"finalize with {len(missing)} blocks missing")
        n = len(self.tokens)
        tmp = self.out.with_name(self.out.name + ".tmp")
        skipped: list[str] = []
        with h5py.File(tmp, "w") as f:
            f.create_dataset("tokens", data=np.array(self.tokens, dtype=h5py.string_dtype()))
            dsets = {
                name: f.create_dataset(name, shape=(n, *p.shape), dtype=p.h5_dtype(), chunks=(1, *p.shape))
                for name, p in self.payloads.items()
            }
            valid_all = f.create_dataset("valid", shape=(n,), dtype=bool)
            for start, stop in self._blocks():
                with h5py.File(self._part_path(start, stop), "r") as part:
                    for name, d in dsets.items():
                        if self.payloads[name].ragged:  # h5py broadcasts a block of equal-length rows wrongly
                            for i, row in enumerate(part[name][()]):
                                d[start + i] = row
                        else:
                            d[start:stop] = part[name][()]
                    valid = part["valid"][()]
                    valid_all[start:stop] = valid
                    skipped += [self.tokens[start + i] for i in np.flatnonzero(~valid)]
            for k, v in self.spec.items():
                f.attrs[k] = _encode(v)
            f.attrs["spec"] = _spec_json(self.spec)
            f.attrs["skipped"] = json.dumps(skipped)
        os.replace(tmp, self.out)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.complete = True
        return skipped


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
