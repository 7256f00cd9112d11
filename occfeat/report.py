"""``occfeat report``: finetune runs → the paper's Table 1 (terminal, Markdown, CSV) and plots.

Each run dir holds the ``metrics.json`` written by ``occfeat finetune``/``evaluate`` (schema in
``occfeat/train/finetune.py``). Runs are grouped by (architecture, backbone, input size, pretraining,
provenance marks); the columns are task x label fraction. Several seeds of one setting become
mean ± sample std (ddof=1). Every pretrained row shows its delta against the "None" row of the same
architecture, backbone and input size and the same data/backbone provenance.

Provenance marks (one footnote legend under every table): rows whose numbers depend on random-init
weights or on synthetic data must never pass for paper-comparable results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from occfeat.errors import OccfeatError
from occfeat.files import writing
from occfeat.tasks import TASKS

FRACTIONS = (0.01, 0.1, 1.0)
NONE = "None"
MODE_LABELS = {"occ": "Occ", "feat": "Feat", "occfeat": "OccFeat"}
# Footnote markers: (provenance flag, marker, legend text).
MARKS = (
    ("synthetic_data", "§", "synthetic data (occfeat synth): not comparable to nuScenes numbers"),
    ("backbone_random_init", "*", "image backbone started from random weights, not ImageNet"),
    ("teacher_random_init", "‡", "pretrained with a random-init teacher (no DINOv2 weights)"),
)
# Marks that must match for a delta: comparing synthetic to real, or random to ImageNet backbones, is meaningless.
DELTA_MARKS = ("synthetic_data", "backbone_random_init")
ROW_KEYS = ["arch", "backbone", "input", "pretraining", "marks"]


def pretraining_label(p: dict | None) -> str:
    """Row label of a pretraining: "None", or e.g. "OccFeat (50 ep, λ=0.01)" / "Occ (100 ep)"."""
    if not p or p.get("mode") in (None, "none"):
        return NONE
    mode = p["mode"]
    label = MODE_LABELS.get(mode, mode)
    parts = [f"{p['epochs']} ep"] if p.get("epochs") is not None else []
    if mode == "occfeat" and p.get("lambda") is not None:
        parts.append(f"λ={p['lambda']:g}")
    return f"{label} ({', '.join(parts)})" if parts else label


def load_run(run_dir: str | Path) -> dict:
    """One flat record from a run dir's ``metrics.json``; one-line error naming the dir otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not run_dir.is_dir():
        raise OccfeatError(f"{run_dir} is not a directory; pass finetune run dirs")
    if not path.is_file():
        raise OccfeatError(f"{run_dir} has no metrics.json: not a finished finetune run (run occfeat finetune or occfeat evaluate on it)")
    try:
        m = json.loads(path.read_text())
        prov = m.get("provenance", {})
        rec = {
            "run": str(run_dir),
            "arch": m["arch"],
            "backbone": m["backbone"],
            "input": "×".join(str(v) for v in m["input_size"]),
            "pretraining": pretraining_label(m.get("pretraining")),
            "task": m["task"],
            "fraction": float(m["fraction"]),
            "seed": m.get("seed"),
            "iou": float(m["mean_iou"]),
            **{flag: bool(prov.get(flag, False)) for flag, _, _ in MARKS},
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise OccfeatError(f"{path} is not a valid finetune metrics.json ({type(e).__name__}: {e}); rerun occfeat evaluate on {run_dir}") from e
    if rec["task"] not in TASKS:
        raise OccfeatError(f"{path}: unknown task '{rec['task']}' (expected {', '.join(TASKS)})")
    rec["marks"] = "".join(mark for flag, mark, _ in MARKS if rec[flag])
    return rec


def collect(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Tidy frame, one row per run."""
    if not run_dirs:
        raise OccfeatError("no run dirs given; pass one or more finetune run dirs")
    return pd.DataFrame([load_run(d) for d in run_dirs])


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, task, fraction): mean, std (ddof=1, NaN for one seed), n, delta vs None."""
    keys = ROW_KEYS + ["task", "fraction"]
    flags = [flag for flag, _, _ in MARKS]
    g = runs.groupby(keys, sort=False, dropna=False)
    out = g["iou"].agg(mean="mean", std="std", n="count").reset_index()
    out = out.merge(g[flags].first().reset_index(), on=keys)
    none = out[out["pretraining"] == NONE][["arch", "backbone", "input", "task", "fraction", *DELTA_MARKS, "mean"]]
    out = out.merge(
        none.rename(columns={"mean": "none_mean"}), on=["arch", "backbone", "input", "task", "fraction", *DELTA_MARKS], how="left"
    )
    out["delta"] = np.where(out["pretraining"] == NONE, np.nan, out["mean"] - out["none_mean"])
    return out.drop(columns="none_mean")


def _cell(mean: float, std: float, n: int, delta: float) -> str:
    text = f"{100 * mean:.1f}"
    if n > 1:
        text += f" ± {100 * std:.1f}"
    if not math.isnan(delta):
        text += f" ({100 * delta:+.1f})"
    return text


def column_name(task: str, fraction: float) -> str:
    return f"{TASKS[task]} {100 * fraction:g}%"


def wide_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 layout: rows arch/backbone/input/pretraining(+marks), columns task x fraction,
    cells "IoU[ ± std] (delta)" in IoU points (x100); "-" where no run exists."""
    fractions = sorted(set(FRACTIONS) | set(summary["fraction"]))
    columns = [column_name(t, f) for t in TASKS for f in fractions if ((summary["task"] == t) & (summary["fraction"] == f)).any()]
    rows: dict[tuple, dict] = {}
    for r in summary.itertuples(index=False):
        key = (r.arch, r.backbone, r.input, r.pretraining + r.marks)
        rows.setdefault(key, {})[column_name(r.task, r.fraction)] = _cell(r.mean, r.std, r.n, r.delta)
    # None first within each architecture/backbone, then the pretrainings in name order.
    order = sorted(rows, key=lambda k: (k[0], k[1], k[2], not k[3].startswith(NONE), k[3]))
    table = pd.DataFrame([{c: rows[k].get(c, "-") for c in columns} for k in order], columns=columns)
    table.index = pd.MultiIndex.from_tuples(order, names=["Architecture", "Backbone", "Input", "BEV pretraining"])
    return table


def legend(summary: pd.DataFrame) -> list[str]:
    """Footnote lines for the marks present, plus how to read the cells."""
    lines = ["IoU x100 over the val split; several seeds: mean ± std; (±x): delta against the None row."]
    lines += [f"{mark} {text}" for flag, mark, text in MARKS if summary[flag].any()]
    return lines


def to_markdown(table: pd.DataFrame, notes: list[str]) -> str:
    head = list(table.index.names) + list(table.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in zip(table.index, table.itertuples(index=False)):
        lines.append("| " + " | ".join([*map(str, key), *row]) + " |")
    return "\n".join(lines + [""] + [f"{n}  " for n in notes]) + "\n"


def write_report(run_dirs: list[str | Path], out: str | Path, plots: bool = True) -> dict:
    """Write ``table.md``, ``table.csv`` (same cells), ``summary.csv`` (numbers), ``runs.csv`` and
    the PNG plots into ``out``. Returns {"runs", "summary", "table", "legend", "files"}."""
    runs = collect(run_dirs)
    summary = summarize(runs)
    table = wide_table(summary)
    notes = legend(summary)
    out = Path(out)
    files = [out / "table.md", out / "table.csv", out / "summary.csv", out / "runs.csv"]
    with writing(then="rerun occfeat report"):  # a read-only or full --out: one line naming the file
        out.mkdir(parents=True, exist_ok=True)
        files[0].write_text(to_markdown(table, notes))
        table.to_csv(files[1])
        summary.to_csv(files[2], index=False)
        runs.to_csv(files[3], index=False)
        if plots:
            from occfeat.plots import plot_iou_vs_fraction, plot_samples

            files.append(plot_iou_vs_fraction(summary, out / "iou_vs_fraction.png"))
            for run in runs["run"]:
                npz = Path(run) / "samples.npz"
                if npz.is_file():
                    files.append(plot_samples(npz, out / f"samples-{Path(run).name}.png"))
    return {"runs": runs, "summary": summary, "table": table, "legend": notes, "files": files}
