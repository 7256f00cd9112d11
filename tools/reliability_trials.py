"""Reliability trials of issue 15 on a tiny synthetic world (not run by the tests; a few minutes on 2 cores).

    python tools/reliability_trials.py [--kills 2] [--seed 0] [--work DIR]

1. kill -9 trials: each stage (synth, voxelize, extract, pretrain, finetune) is run once uninterrupted
   as the reference, then N times killed at a random moment and rerun to the end (pretrain/finetune with
   --resume when the killed run left a run dir); the output is compared with the reference.
2. concurrent writers: two voxelize / synth / pretrain on the same output at once; each pair should end
   with one success and one clean "is being written by" line, and a correct output.
3. bad inputs through the CLI: each should give exactly one "error:" line on stderr and exit status 2.

Prints a summary table. Every command is ``python -m occfeat ...`` from the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VERSION = "v1.0-mini"
SPLIT = "all"
PRE = REPO / "recipes/pretrain/synthetic-tiny.yaml"
FT = REPO / "recipes/finetune/synthetic-tiny.yaml"
TINY = ["train.epochs=1", "train.num_workers=0"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "occfeat", *map(str, args)]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def stage_commands(w: Path) -> dict[str, callable]:
    """stage → (out path, command for an output path, resume flag when rerunning)."""
    root = w / "ref-root"
    return {
        "synth": lambda out: cli("synth", "--out", out, "--scenes", 2, "--samples-per-scene", 3, "--image-size", "54x96"),
        "voxelize": lambda out: cli("voxelize", "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--out", out,
                                    "--recipe", PRE, "--block-size", 1, "--no-progress"),
        "extract": lambda out: cli("extract", "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--out", out,
                                   "--teacher", "vit_small_patch14_dinov2.lvd142m", "--random-teacher", "--input-size", "28x56",
                                   "--batch-size", 6, "--device", "cpu"),
        "pretrain": lambda out: cli("pretrain", "--recipe", PRE, "--dataroot", root, "--version", VERSION, "--split", SPLIT,
                                    "--occupancy", w / "ref-occ.h5", "--features", w / "ref-feat.h5", "--out", out, *TINY),
        "finetune": lambda out: cli("finetune", "--recipe", FT, "--dataroot", root, "--version", VERSION, "--task", "vehicle",
                                    "--fraction", 1.0, "--split", SPLIT, "--val-split", SPLIT, "--init", w / "ref-pre",
                                    "--out", out, "--no-progress", *TINY),
    }


REF_NAME = {"synth": "ref-root", "voxelize": "ref-occ.h5", "extract": "ref-feat.h5", "pretrain": "ref-pre", "finetune": "ref-ft"}


# ---- comparing outputs ----
def fingerprint(path: Path) -> str:
    """A digest of what an output means: file bytes for a dataroot, datasets + spec for a cache,
    checkpoint weights + logged losses for a run dir (wall-clock fields left out)."""
    h = hashlib.sha256()
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            for k in sorted(f):
                data = f[k][()]
                if data.dtype == object:  # variable-length rows (the occupancy points): hash each row's bytes
                    h.update(k.encode() + b"".join(np.asarray(r).tobytes() for r in data))
                else:
                    h.update(k.encode() + data.tobytes())
            h.update(str(f.attrs["spec"]).encode())
    elif (path / "checkpoints").is_dir():
        import torch

        ck = torch.load(path / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)

        def walk(x, key=""):
            if isinstance(x, torch.Tensor):
                h.update(key.encode() + x.numpy().tobytes())
            elif isinstance(x, dict):
                for k in sorted(x, key=str):
                    walk(x[k], f"{key}/{k}")

        walk(ck.get("task", {}))
        for row in (path / "metrics.jsonl").read_text().splitlines():
            r = json.loads(row)
            h.update(json.dumps({k: v for k, v in r.items() if k.startswith(("loss", "step", "epoch"))}, sort_keys=True).encode())
    else:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


def clear(out: Path) -> None:
    for p in (out, out.with_name(out.name + ".parts"), out.with_name(out.name + ".tmp"), out.with_name(out.name + ".lock")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ---- 1. kill -9 trials ----
def kill_trial(cmd_of, out: Path, ref_seconds: float, rng: random.Random, resumable_run: bool) -> tuple[bool, str]:
    clear(out)
    proc = subprocess.Popen(cmd_of(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    at = rng.uniform(0.05, 0.95) * ref_seconds
    time.sleep(at)
    killed = proc.poll() is None
    if killed:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cmd = cmd_of(out)
    if resumable_run and out.is_dir() and any(out.iterdir()):
        cmd = [*cmd[:4], "--resume", *cmd[4:]]
    r = run(cmd)
    if r.returncode:
        return False, f"rerun exit {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1][:100]}"
    return True, f"killed at {at:.1f}s" if killed else f"finished before {at:.1f}s"


def kill_trials(w: Path, n: int, rng: random.Random) -> list[tuple]:
    cmds, rows = stage_commands(w), []
    for stage, cmd_of in cmds.items():
        ref = w / REF_NAME[stage]
        clear(ref)
        t0 = time.perf_counter()
        r = run(cmd_of(ref))
        secs = time.perf_counter() - t0
        if r.returncode:
            rows.append((stage, n, 0, f"reference run failed: {r.stderr.strip().splitlines()[-1][:100]}"))
            continue
        want, equal, notes = fingerprint(ref), 0, []
        for i in range(n):
            out = w / f"trial-{stage}-{i}{ref.suffix}"
            ok, note = kill_trial(cmd_of, out, secs, rng, stage in ("pretrain", "finetune"))
            same = ok and fingerprint(out) == want
            equal += same
            notes.append(note)
            clear(out)
        rows.append((stage, n, equal, f"ref {secs:.0f}s; " + "; ".join(notes)))
    return rows


# ---- 2. concurrent writers ----
def concurrent_trials(w: Path) -> list[tuple]:
    cmds, rows = stage_commands(w), []
    for stage in ("voxelize", "synth", "pretrain"):
        out = w / f"both-{stage}{'.h5' if stage == 'voxelize' else ''}"
        clear(out)
        procs = [subprocess.Popen(cmds[stage](out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
        time.sleep(2.5 if stage != "synth" else 1.0)  # let the first one take the lock (imports take ~2 s)
        procs.append(subprocess.Popen(cmds[stage](out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        res = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
        codes = [r[2] for r in res]
        refused = sum(r[2] == 2 and "is being written by" in r[1] for r in res)
        correct = 0 in codes and fingerprint(out) == fingerprint(w / REF_NAME[stage])
        rows.append((stage, codes, refused, correct))
        clear(out)
    return rows


# ---- 3. bad inputs ----
def bad_inputs(w: Path) -> list[tuple[str, list[str]]]:
    root, ro = w / "ref-root", w / "ro"
    ro.mkdir(exist_ok=True)
    (w / "not-h5.h5").write_text("nope")
    cmds = stage_commands(w)
    vox = cmds["voxelize"]
    return [
        ("voxelize: missing dataroot", cli("voxelize", "--dataroot", w / "nowhere", "--version", VERSION, "--out", w / "x.h5")),
        ("voxelize: bad version", cli("voxelize", "--dataroot", root, "--version", "v9", "--out", w / "x.h5")),
        ("voxelize: unknown split", cli("voxelize", "--dataroot", root, "--version", VERSION, "--split", "nope", "--out", w / "x.h5")),
        ("voxelize: grid file missing", cli("voxelize", "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--grid", w / "g.json", "--out", w / "x.h5")),
        ("voxelize: other grid on a finished cache", cli("voxelize", "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--out", w / "ref-occ.h5")),
        ("voxelize: out is not a cache", vox(w / "not-h5.h5")),
        ("voxelize: out under a file", vox(w / "not-h5.h5" / "x.h5")),
        ("synth: out is a file", cli("synth", "--out", w / "not-h5.h5")),
        ("synth: scenes 0", cli("synth", "--out", w / "s0", "--scenes", 0)),
        ("synth: bad image size", cli("synth", "--out", w / "s0", "--image-size", "abc")),
        ("synth: non-empty out", cli("synth", "--out", root, "--seed", 7)),
        ("synth: unknown map", cli("synth", "--out", w / "s0", "--map", "mars")),
        ("extract: bad input size", cli("extract", "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--out", w / "f.h5", "--random-teacher", "--input-size", "30x30")),
        ("extract: no weights, no --random-teacher", cli("extract", "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--out", w / "f.h5", "--input-size", "28x56")),
        ("extract: bad device", cli("extract", "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--out", w / "f.h5", "--random-teacher", "--device", "tpu")),
        ("pretrain: occupancy cache missing", cli("pretrain", "--recipe", PRE, "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--occupancy", w / "none.h5", "--features", w / "ref-feat.h5", "--out", w / "p1")),
        ("pretrain: cache of another dataroot", cli("pretrain", "--recipe", PRE, "--dataroot", w / "trial-root", "--version", VERSION, "--split", SPLIT, "--occupancy", w / "ref-occ.h5", "--features", w / "ref-feat.h5", "--out", w / "p2")),
        ("pretrain: existing run without --resume", cli("pretrain", "--recipe", PRE, "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--occupancy", w / "ref-occ.h5", "--features", w / "ref-feat.h5", "--out", w / "ref-pre")),
        ("pretrain: unknown override key", cli("pretrain", "--recipe", PRE, "--dataroot", root, "--version", VERSION, "--split", SPLIT, "--occupancy", w / "ref-occ.h5", "--features", w / "ref-feat.h5", "--out", w / "p3", "train.nope=1")),
        ("finetune: bad fraction", cli("finetune", "--recipe", FT, "--dataroot", root, "--version", VERSION, "--task", "vehicle", "--fraction", 2, "--out", w / "f1")),
        ("finetune: unknown task", cli("finetune", "--recipe", FT, "--dataroot", root, "--version", VERSION, "--task", "boats", "--fraction", 1, "--out", w / "f2")),
        ("finetune: --init not a run", cli("finetune", "--recipe", FT, "--dataroot", root, "--version", VERSION, "--task", "vehicle", "--fraction", 1, "--split", SPLIT, "--val-split", SPLIT, "--init", w, "--out", w / "f3")),
    ]


def bad_input_trials(w: Path) -> list[tuple]:
    if (w / "ref-root").exists() and not (w / "trial-root").exists():
        run(cli("synth", "--out", w / "trial-root", "--scenes", 2, "--samples-per-scene", 3, "--image-size", "54x96", "--seed", 5))
    rows = []
    for name, cmd in bad_inputs(w):
        r = run(cmd)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        clean = r.returncode == 2 and sum(ln.startswith("error:") for ln in lines) == 1 and "Traceback" not in r.stderr
        rows.append((name, r.returncode, clean, (lines or ["(no stderr)"])[-1][:110]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=2, help="kill -9 trials per stage")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one, removed at the end)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["concurrent", "bad"], help="parts to skip")
    args = ap.parse_args()
    w = args.work or Path(tempfile.mkdtemp(prefix="occfeat-trials-"))
    w.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        print(f"work folder {w}")
        kills = kill_trials(w, args.kills, random.Random(args.seed))
        print("\n## kill -9 trials (rerun compared with an uninterrupted run)\n")
        print("| stage | trials | equal | notes |\n|---|---|---|---|")
        for stage, n, eq, note in kills:
            print(f"| {stage} | {n} | {eq} | {note} |")
        if "concurrent" not in args.skip:
            print("\n## concurrent writers (two commands on one output)\n")
            print("| stage | exit codes | refused with one line | output correct |\n|---|---|---|---|")
            for stage, codes, refused, correct in concurrent_trials(w):
                print(f"| {stage} | {codes} | {refused} | {correct} |")
        if "bad" not in args.skip:
            rows = bad_input_trials(w)
            print(f"\n## bad inputs: {sum(r[2] for r in rows)} of {len(rows)} gave exactly one `error:` line and exit 2\n")
            print("| input | exit | clean | last stderr line |\n|---|---|---|---|")
            for name, code, clean, last in rows:
                print(f"| {name} | {code} | {'yes' if clean else 'NO'} | {last.replace('|', '/')} |")
        print(f"\n{time.perf_counter() - t0:.0f} s in all")
    finally:
        if args.work is None:
            shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
