"""A training run's directory: what it holds, how it is written and how it is read back.

Every file is written so that a kill at any moment leaves a run dir that continues: ``config.yaml``,
``provenance.json`` and checkpoints go to a temporary file that is then renamed over the old one, and a
file whose content is unchanged is not rewritten at all. ``metrics.jsonl`` is appended to; on
``--resume`` a torn last line (a kill mid-append) is dropped, and rows logged after the checkpoint are
cut off — again through a temporary file, so the history is never half-written. A run dir holding only
what a kill before its config was written leaves is "not started": a fresh run and ``--resume`` both
start it. Every OSError (read-only folder, full disk) becomes one line naming the path and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
import yaml

from occfeat.errors import OccfeatError
from occfeat.files import tmp_path, write_text_atomic, writing

# /2: every value loads with torch.load(weights_only=True) (RNG states as ints, lists and tensors).
CHECKPOINT_FORMAT = "occfeat-checkpoint/2"
OLD_CHECKPOINT_FORMATS = ("occfeat-checkpoint/1",)
# Keys that may change on --resume: they say how long/loud/where to run and what to keep, not what is trained.
RESUME_FREE_KEYS = ("train.max_steps", "train.log_every", "train.num_workers", "train.device", "train.keep_snapshots")
DAMAGED_ADVICE = "copy it again from where it came from, or use an earlier run"


def atomic_save(obj: dict, path: Path, then: str = "") -> None:
    """torch.save to a temporary file, then rename: a killed run never leaves half a checkpoint, and a
    full disk leaves the previous ``path`` as it was. Saving through a Python file object makes a full
    disk an OSError; when torch's zip writer notices the short write first, it raises a RuntimeError
    ("unexpected pos ..."), which is turned into the same ENOSPC error (seen on a full disk, 2026-11)."""
    path = Path(path)
    tmp = tmp_path(path)
    with writing(path, then):
        try:
            with open(tmp, "wb") as f:
                try:
                    torch.save(obj, f)
                except RuntimeError as e:
                    if "unexpected pos" not in str(e):
                        raise
                    raise OSError(errno.ENOSPC, "No space left on device (the checkpoint was cut short)") from None
                f.flush()
                os.fsync(f.fileno())  # the rename must never point at data still in the page cache
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def prune_snapshots(ckpt_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` epoch snapshots (``epoch_NNN.pt``) in ``ckpt_dir``; returns the
    deleted paths. Called after the newest one is written, so a kill in between never leaves fewer."""
    snaps = sorted((p for p in Path(ckpt_dir).glob("epoch_*.pt") if p.stem[6:].isdigit()), key=lambda p: int(p.stem[6:]))
    old = snaps[: max(0, len(snaps) - keep)]
    for p in old:
        with writing(p):
            p.unlink(missing_ok=True)
    return old


def extendable(schedule: str) -> bool:
    """Whether a finished run can train on with more epochs (``--resume train.epochs=...``): a constant lr
    continues as if the run had been longer (OccFeat†: 50 → 100 epochs); onecycle's lr depends on the total."""
    return schedule == "constant"


# ---- reading: checkpoints, config, metrics ----
def _old_format(path: Path) -> str | None:
    """The format tag of an older occfeat checkpoint, read from the pickle's bytes without unpickling it."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            data = z.read(pkl) if pkl else b""
    except (OSError, zipfile.BadZipFile):
        return None
    return next((tag for tag in OLD_CHECKPOINT_FORMATS if tag.encode() in data), None)


def load_checkpoint(path: Path, if_damaged: str = DAMAGED_ADVICE) -> dict:
    """A checkpoint written by :func:`occfeat.train.loop.fit`; one-line error if it is missing, damaged or not ours.

    Loaded with ``weights_only=True``: a checkpoint is a file users download and share, and unpickling
    arbitrary objects would run whatever code the file names. ``if_damaged``: what the user can do
    instead when the file cannot be read (the caller knows what works in its context).
    """
    path = Path(path)
    if not path.is_file():
        raise OccfeatError(f"checkpoint {path} not found; point to a run dir written by occfeat")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the weights-only unpickler met an object it does not allow
        old = _old_format(path)
        if old:
            raise OccfeatError(
                f"checkpoint {path} is in an older occfeat format ({old}) that pickled Python objects and is not loaded, "
                f"since unpickling can run code; rerun the stage that wrote it with this version (a new --out)"
            ) from None
        raise OccfeatError(
            f"checkpoint {path} holds Python objects other than tensors and plain values and is not loaded, "
            f"since unpickling them could run code; use a checkpoint written by occfeat {CHECKPOINT_FORMAT}"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise OccfeatError(f"checkpoint {path} cannot be read ({type(e).__name__}): it is damaged; {if_damaged}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise OccfeatError(f"{path} is not an occfeat checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def read_config(path: Path) -> dict | None:
    """The run's resolved config, or None when ``config.yaml`` is missing, empty or torn."""
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) and data else None


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines log; a line that does not parse (a kill mid-append tears the last one) is dropped."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def rewrite_jsonl(path: Path, rows: list[dict], then: str = "") -> None:
    """Replace a JSON-lines log by ``rows`` atomically (a kill during it keeps the old file whole)."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows), then)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows logged up to ``step`` (the checkpoint we resume from) and drop a torn last line."""
    if path.exists():
        rewrite_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step], then="rerun with --resume")


# ---- the run dir's state ----
def run_started(run_dir: Path) -> bool:
    """Whether an earlier invocation got as far as writing the run's config. A dir holding only what a
    kill before that leaves (an empty ``checkpoints/``, an empty ``config.yaml``, ``*.tmp`` files,
    hidden files) has not started: a fresh run and ``--resume`` both start it."""
    if not run_dir.is_dir():
        return False
    for p in run_dir.iterdir():
        if p.name.startswith(".") or p.name.endswith(".tmp"):
            continue
        if p.name == "checkpoints" and p.is_dir() and all(q.name.endswith(".tmp") for q in p.iterdir()):
            continue
        if p.name == "config.yaml" and p.is_file() and not p.read_text().strip():
            continue
        return True
    return False


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (lists compared as lists)."""
    a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def prepare_run_dir(run_dir: Path, config: dict, resume: bool, resolve=None) -> dict | None:
    """Check the run dir against ``resume``; returns the last checkpoint to resume from (or None: start at step 0).

    ``resolve(saved) -> dict`` re-reads the saved config through today's dataclasses before the comparison,
    so a run written before a defaulted field (or a renamed one) existed still resumes."""
    if not run_started(run_dir):
        if resume and not run_dir.exists():
            raise OccfeatError(f"nothing to resume: {run_dir} does not exist; drop --resume to start a new run")
        return None  # new, or killed before its config was written: nothing of it to keep
    if not resume:
        raise OccfeatError(f"run dir {run_dir} already exists; pass --resume to continue it or choose another --out")
    last = run_dir / "checkpoints" / "last.pt"
    # epoch_*.pt hold no optimizer/RNG state: they cannot continue a run exactly, so they are not offered here.
    restart = f"move it aside and rerun with --resume to restart {run_dir} from step 0"
    ckpt = load_checkpoint(last, if_damaged=restart) if last.exists() else None
    cfg_path = run_dir / "config.yaml"
    old = read_config(cfg_path) or (ckpt or {}).get("config")  # a torn config.yaml: the checkpoint holds it too
    if old and resolve is not None:
        old = resolve(old)
    diff = [k for k in config_diff(old, config) if k not in RESUME_FREE_KEYS] if old else []
    if extendable(config["train"]["schedule"]):
        diff = [k for k in diff if k != "train.epochs"]
    if diff:
        shown = ", ".join(f"{k} ({_flatten(old).get(k)!r} → {_flatten(config).get(k)!r})" for k in diff[:4])
        raise OccfeatError(f"--resume with another config than {cfg_path}: {shown}; drop the changes or start a new --out")
    return ckpt
