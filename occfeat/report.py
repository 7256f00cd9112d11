"""``occfeat report``: finetune runs → the paper's Table 1 (terminal, Markdown, CSV) and plots.

Each run dir holds the ``metrics.json`` written by ``occfeat finetune``/``evaluate``, read only through
:class:`occfeat.train.records.FinetuneMetrics`. Runs are grouped by (architecture, backbone, input size,
pretraining, provenance marks); the columns are task x label fraction, and every column says how many
labelled samples its runs saw before finetuning. Several seeds of one setting become mean ± sample std
(ddof=1). Every pretrained row shows its delta against the "None" row of the same architecture, backbone
and input size, the same number of labelled samples and the same data/backbone provenance.

Provenance marks (one footnote legend under every table): rows whose numbers depend on random-init
weights, on the semantic stand-in teacher or on synthetic data must never pass for paper-comparable results.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from occfeat.errors import OccfeatError
from occfeat.files import writing
from occfeat.grid import BevGrid
from occfeat.tasks import TASKS
from occfeat.train.records import MARKS, METRICS_FILE, NONE_LABEL, FinetuneMetrics
from occfeat.train.rundir import read_config

NONE = NONE_LABEL
# Marks that must match for a delta: comparing synthetic to real, or random to ImageNet backbones, is meaningless.
DELTA_MARKS = ("synthetic_data", "backbone_random_init")
ROW_KEYS = ["arch", "backbone", "input", "pretraining", "prior", "marks"]


PRIOR = "Labels before finetuning"
PRIOR_NOTE = (f"{PRIOR}: what the row's starting point and teacher were trained on — 0: no labels (random init "
              "or self-supervised pretraining); p %: the column's own labelled frames (a LiDAR teacher trained on "
              "exactly them); a number: the teacher's fraction of the split, more than the column's (privileged, †).")


def distillation_label(d: dict) -> str:
    """The row-label suffix of a run distilled from a LiDAR teacher (``d`` = metrics.json's
    ``distillation``): the method, e.g. " + BEVDistill" or " + pseudo-labels on unlabelled frames"; ""
    without. What the teacher saw is :func:`prior_labels`' column."""
    return f" + {d.get('label', d.get('method'))}" if d else ""


def extra_head_label(d: dict) -> str:
    """The row-label suffix of a run finetuned with an extra head (``d`` = metrics.json's ``extra_head``),
    e.g. " (+ perspective head)"; "" without."""
    return f" (+ {d.get('label', d.get('kind'))})" if d else ""


def prior_labels(d: dict, labelled: int) -> str:
    """The labels a run saw before finetuning (``d`` = metrics.json's ``distillation``, ``labelled`` =
    the run's labelled frames): "0" without a teacher; "p % (LiDAR teacher)" when the teacher saw exactly
    the run's labelled frames; else the teacher's fraction, e.g. "100 % (LiDAR teacher)"."""
    if not d:
        return "0"
    if not d.get("privileged") and d.get("teacher_labelled") == labelled:
        return "p % (LiDAR teacher)"
    return f"{100 * float(d.get('teacher_fraction', float('nan'))):g} % (LiDAR teacher)"


def load_run(run_dir: str | Path) -> dict:
    """One flat row for the tables from a run dir's record; one-line error naming the dir otherwise."""
    m = FinetuneMetrics.read(run_dir)
    flags = {flag: bool(getattr(m.provenance, flag, False)) for flag, _, _ in MARKS}
    flags["privileged_teacher"] = bool(m.distillation.get("privileged"))
    return {
        "run": str(run_dir),
        "arch": m.arch,
        "backbone": m.backbone,
        "input": "×".join(str(v) for v in m.input_size) if m.backbone != "none" else "LiDAR",  # no image backbone: the LiDAR teacher
        "pretraining": m.pretraining.row_label() + distillation_label(m.distillation) + extra_head_label(m.extra_head),
        "prior": prior_labels(m.distillation, m.labelled_samples),
        "task": m.task,
        "fraction": m.fraction,
        "labelled": m.labelled_samples,
        "seed": m.seed,
        "iou": m.mean_iou,
        **flags,
        "marks": "".join(mark for flag, mark, _ in MARKS if flags[flag]),
    }


def finished_runs(paths: list[str | Path]) -> tuple[list[Path], list[Path], list[str]]:
    """(finished finetune runs, pretraining runs, "PATH: why" for each folder skipped). A shell glob such
    as ``runs/*`` also names folders that are no finetune run: pretraining runs (the report draws their
    pictures), the shared ``gt-cache/``, unfinished runs; the others are skipped with a reason rather than
    failing the report. A damaged metrics.json is still an error (:func:`load_run`), and so is a list
    with neither a finished finetune run nor a pretraining run."""
    if not paths:
        raise OccfeatError("no run dirs given; pass one or more finetune run dirs")
    runs, pretrainings, skipped = [], [], []
    for p in map(Path, paths):
        if p.is_dir() and not (p / METRICS_FILE).is_file():
            if (p / "provenance.json").is_file() and (p / "checkpoints" / "last.pt").is_file():
                pretrainings.append(p)
                continue
            why = ("a pretraining run without checkpoints/last.pt" if (p / "provenance.json").is_file()
                   else "the shared ground-truth cache" if p.name == "gt-cache" else "no metrics.json (not a finished finetune run)")
            skipped.append(f"{p}: {why}")
        else:
            runs.append(p)
    if not runs and not pretrainings:
        FinetuneMetrics.read(paths[0])  # the one-line error naming the first folder and what to do
        raise OccfeatError(f"none of the {len(paths)} folders is a finished finetune run; pass finetune run dirs (occfeat finetune --out)")
    return runs, pretrainings, skipped


def collect(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Tidy frame, one row per run."""
    if not run_dirs:
        raise OccfeatError("no run dirs given; pass one or more finetune run dirs")
    return pd.DataFrame([load_run(d) for d in run_dirs])


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, task, fraction, labelled samples): mean, std (ddof=1, NaN for one seed), n
    (runs), delta vs the None row that saw as many labelled samples."""
    keys = ROW_KEYS + ["task", "fraction", "labelled"]
    flags = [flag for flag, _, _ in MARKS]
    g = runs.groupby(keys, sort=False, dropna=False)
    out = g["iou"].agg(mean="mean", std="std", n="count").reset_index()
    out = out.merge(g[flags].first().reset_index(), on=keys)
    same = ["arch", "backbone", "input", "task", "fraction", "labelled", *DELTA_MARKS]
    none = out[out["pretraining"] == NONE][[*same, "mean"]]
    out = out.merge(none.rename(columns={"mean": "none_mean"}), on=same, how="left")
    out["delta"] = np.where(out["pretraining"] == NONE, np.nan, out["mean"] - out["none_mean"])
    return out.drop(columns="none_mean")


def _cell(mean: float, std: float, n: int, delta: float) -> str:
    text = f"{100 * mean:.1f}"
    if n > 1:
        text += f" ± {100 * std:.1f}"
    if not math.isnan(delta):
        text += f" ({100 * delta:+.1f})"
    return text


def column_name(task: str, fraction: float, labelled: int) -> str:
    """E.g. "Vehicles 1% (282 labelled)": the column says how many labelled samples its runs saw."""
    return f"{TASKS[task]} {100 * fraction:g}% ({labelled} labelled)"


def wide_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 layout: rows arch/backbone/input/pretraining(+marks), columns task x fraction
    x labelled samples (one column per count: runs on datasets of other sizes never share a column),
    cells "IoU[ ± std] (delta)" in IoU points (x100); "-" where no run exists."""
    cols = summary[["task", "fraction", "labelled"]].drop_duplicates()
    order = {t: i for i, t in enumerate(TASKS)}
    cols = sorted(cols.itertuples(index=False), key=lambda c: (order[c.task], c.fraction, c.labelled))
    columns = [column_name(c.task, c.fraction, c.labelled) for c in cols]
    rows: dict[tuple, dict] = {}
    for r in summary.itertuples(index=False):
        key = (r.arch, r.backbone, r.input, r.pretraining + r.marks, r.prior)
        rows.setdefault(key, {})[column_name(r.task, r.fraction, r.labelled)] = _cell(r.mean, r.std, r.n, r.delta)
    # None first within each architecture/backbone, then the pretrainings in name order, fewer prior labels first.
    order = sorted(rows, key=lambda k: (k[0], k[1], k[2], not k[3].startswith(NONE), k[3], k[4] != "0", k[4]))
    table = pd.DataFrame([{c: rows[k].get(c, "-") for c in columns} for k in order], columns=columns)
    table.index = pd.MultiIndex.from_tuples(order, names=["Architecture", "Backbone", "Input", "BEV pretraining", PRIOR])
    if all(k[4] == "0" for k in order):  # no teacher trained on labels: the legend says so in one line
        table.index = table.index.droplevel(PRIOR)
    return table


def legend(summary: pd.DataFrame) -> list[str]:
    """Footnote lines for the marks present, plus how to read the cells."""
    prior = PRIOR_NOTE if (summary["prior"] != "0").any() else \
        f"{PRIOR}: none in any row (random init or self-supervised pretraining; no teacher trained on labels)."
    lines = ["IoU x100 over the val split; (N labelled): labelled samples each run finetuned on; "
             "several seeds: mean ± std; (±x): delta against the None row.", prior]
    lines += [f"{mark} {text}" for flag, mark, text in MARKS if summary[flag].any()]
    return lines


def to_markdown(table: pd.DataFrame, notes: list[str]) -> str:
    head = list(table.index.names) + list(table.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in zip(table.index, table.itertuples(index=False)):
        lines.append("| " + " | ".join([*map(str, key), *row]) + " |")
    return "\n".join(lines + [""] + [f"{n}  " for n in notes]) + "\n"


def run_grid(run_dir: str | Path) -> BevGrid | None:
    """The BEV grid a run was trained on (its config.yaml), for samples files that do not store it; None
    when the config is missing or torn (the figure then needs the grid in samples.npz)."""
    cfg = read_config(Path(run_dir) / "config.yaml")
    try:
        return BevGrid.from_spec(cfg["grid"]) if cfg and "grid" in cfg else None
    except OccfeatError:
        return None


def write_report(run_dirs: list[str | Path], out: str | Path, plots: bool = True, progress: bool = False) -> dict:
    """Write ``table.md``, ``table.csv`` (same cells), ``summary.csv`` (numbers), ``runs.csv`` and
    the PNG plots into ``out``, plus the pictures of each pretraining run among ``run_dirs`` into
    ``out/pretrain-<run>/`` (:func:`occfeat.feature_pictures.write_pretraining_pictures`; with ``plots``).
    Returns {"runs", "summary", "table", "legend", "files", "skipped", "robustness", "pictures"}; "table"
    is None when only pretraining runs were given, "skipped" lists the folders that are neither (see
    :func:`finished_runs`) and pretraining runs whose pictures could not be drawn, with why."""
    run_dirs, pretrainings, skipped = finished_runs(run_dirs)
    out = Path(out)
    res = {"runs": None, "summary": None, "table": None, "legend": [], "files": [], "skipped": skipped,
           "robustness": None, "pictures": {}}
    with writing(then="rerun occfeat report"):  # a read-only or full --out: one line naming the file
        out.mkdir(parents=True, exist_ok=True)
        if run_dirs:
            res.update(write_tables(run_dirs, out, plots))
        for run in pretrainings:
            if not plots:
                skipped.append(f"{run}: a pretraining run (its pictures are plots: drop --no-plots)")
                continue
            res["pictures"][str(run)] = write_run_pictures(run, out / f"pretrain-{run.name}", skipped, progress)
            res["files"] += res["pictures"][str(run)]
    return res


def write_run_pictures(run: Path, out: Path, skipped: list[str], progress: bool = False) -> list[Path]:
    """The pictures of one pretraining run (loss curves, occupancy beside LiDAR, the Fig. 5-6 feature
    pictures); a run whose data moved or was deleted adds a "skipped" line instead of failing the report."""
    from occfeat.feature_pictures import write_pretraining_pictures

    try:
        return write_pretraining_pictures(run, out, progress=progress)
    except OccfeatError as e:
        skipped.append(f"{run}: pictures not drawn: {e}")
        return []


def write_tables(run_dirs: list[Path], out: Path, plots: bool) -> dict:
    """The finetune runs' tables and plots in ``out`` (:func:`write_report`'s keys but "skipped")."""
    runs = collect(run_dirs)
    summary = summarize(runs)
    table = wide_table(summary)
    notes = legend(summary)
    files = [out / "table.md", out / "table.csv", out / "summary.csv", out / "runs.csv"]
    files[0].write_text(to_markdown(table, notes))
    table.to_csv(files[1])
    summary.to_csv(files[2], index=False)
    runs.to_csv(files[3], index=False)
    if plots:
        from occfeat.plots import plot_iou_vs_fraction, plot_samples

        files.append(plot_iou_vs_fraction(summary, out / "iou_vs_fraction.png"))
        for r in runs.itertuples(index=False):
            npz = Path(r.run) / "samples.npz"
            if npz.is_file():
                # Every figure says what it stands on: the run, its pretraining and the marks of its weights/data.
                marks = [f"{mark} {text}" for flag, mark, text in MARKS if getattr(r, flag)]
                title = "\n".join([f"{Path(r.run).name}: BEV pretraining {r.pretraining}{r.marks}, {r.labelled} labelled", *marks])
                files.append(plot_samples(npz, out / f"samples-{Path(r.run).name}.png", title, run_grid(r.run)))
    robust = write_robustness(runs, notes, out, plots)
    return {"runs": runs, "summary": summary, "table": table, "legend": notes, "files": files + robust["files"],
            "robustness": robust["table"]}


def write_robustness(runs: pd.DataFrame, notes: list[str], out: Path, plots: bool = True) -> dict:
    """Fig. 4 of the paper when any run was evaluated under nuScenes-C corruptions
    (:mod:`occfeat.robustness`): ``robustness.md``, ``robustness.csv`` and ``robustness.png`` in ``out``.
    Returns {"table": the table or None, "files": the files written}."""
    from occfeat.robustness import robustness_figure, robustness_frame, robustness_table, summarize_robustness

    frame = robustness_frame(runs)
    if frame.empty:
        return {"table": None, "files": []}
    summary = summarize_robustness(frame, ROW_KEYS)
    table = robustness_table(summary)
    lines = ["IoU x100 over the val split per corruption, mean over its severities (s…: the only severities "
             "evaluated) and over seeds (± std); Clean: the same runs without corruption.",
             *[n for n in notes if n[:1] in {m for _, m, _ in MARKS}]]
    files = [out / "robustness.md", out / "robustness.csv"]
    files[0].write_text(to_markdown(table, lines))
    summary.to_csv(files[1], index=False)
    if plots:
        import matplotlib.pyplot as plt

        fig = robustness_figure(summary, lines[1:])
        fig.savefig(out / "robustness.png", dpi=110)
        plt.close(fig)
        files.append(out / "robustness.png")
    return {"table": table, "files": files}
