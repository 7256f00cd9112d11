"""Robustness to nuScenes-C corruptions in ``occfeat report`` (paper Fig. 4): each finetune run's
evaluations under a corruption (``occfeat evaluate --corruption NAME --severity N`` on the fly, or
``--image-root`` on a downloaded nuScenes-C copy) → IoU per corruption, averaged over the severities, per
BEV pretraining, as a table and a grouped bar chart.

The records are the run's ``metrics-<split>-<...>.json`` files (:class:`FinetuneMetrics`, read like
metrics.json); a run's clean ``metrics.json`` is the "clean" bar every chart starts with. A corruption's
bar is the mean over the severities it was evaluated at (Fig. 4: easy, mid, hard), and over seeds; the
table says how many severities each cell averages, so a partly evaluated corruption shows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from occfeat.data.corruptions import CORRUPTIONS, SEVERITIES
from occfeat.train.records import METRICS_FILE, FinetuneMetrics

CLEAN = "clean"
# nuScenes-C (RoboBEV) folder names of a downloaded copy → occfeat's corruption names, and its level folders.
NUSCENES_C_FOLDERS = {"Brightness": "brightness", "LowLight": "low_light", "Fog": "fog", "Snow": "snow",
                      "MotionBlur": "motion_blur", "ColorQuant": "color_quant", "CameraCrash": "camera_crash",
                      "FrameLost": "frame_lost"}
NUSCENES_C_LEVELS = {"easy": 1, "mid": 2, "hard": 3}
assert set(NUSCENES_C_FOLDERS.values()) == set(CORRUPTIONS) and set(NUSCENES_C_LEVELS.values()) == set(SEVERITIES)
# The x-axis labels of the chart, in Fig. 4's order.
CORRUPTION_LABELS = {CLEAN: "Clean", "brightness": "Bright", "low_light": "Dark", "fog": "Fog", "snow": "Snow",
                     "motion_blur": "Motion\nblur", "color_quant": "Color\nquant", "camera_crash": "Camera\ncrash",
                     "frame_lost": "Frame\nlost"}


def corruption_of(m: FinetuneMetrics) -> tuple[str, int] | None:
    """(corruption, severity) a record was evaluated under: its own fields when corrupted on the fly, else
    the ``<Corruption>/<easy|mid|hard>`` folders of a downloaded nuScenes-C ``image_root``; None for a
    record of another kind (clean, or images from a folder that is no nuScenes-C corruption)."""
    if m.corruption:
        return m.corruption, m.severity
    if m.image_root:
        parts = Path(m.image_root).parts
        for folder, level in zip(parts[:-1], parts[1:]):
            if folder in NUSCENES_C_FOLDERS and level in NUSCENES_C_LEVELS:
                return NUSCENES_C_FOLDERS[folder], NUSCENES_C_LEVELS[level]
    return None


def corruption_records(run_dir: str | Path) -> list[tuple[str, int, float]]:
    """(corruption, severity, mean IoU) of every corrupted evaluation of a finetune run, clean excluded;
    evaluations on a split other than the run's own clean one are left out (another split is another
    dataset)."""
    run_dir = Path(run_dir)
    clean = FinetuneMetrics.read(run_dir)
    out = []
    for path in sorted(run_dir.glob("metrics-*.json")):
        if not re.fullmatch(r"metrics-.+\.json", path.name) or path.name == METRICS_FILE:
            continue
        m = FinetuneMetrics.read(path)
        which = corruption_of(m)
        if which is not None and m.split == clean.split:
            out.append((*which, m.mean_iou))
    return out


def robustness_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, corruption, severity) with the report's row keys of ``runs``
    (:func:`occfeat.report.collect`), including each run's clean IoU as corruption "clean", severity 0;
    empty when no run has a corrupted evaluation."""
    rows = []
    for r in runs.to_dict("records"):
        records = corruption_records(r["run"])
        if records:
            rows.append({**r, "corruption": CLEAN, "severity": 0})
            rows += [{**r, "corruption": name, "severity": sev, "iou": iou} for name, sev, iou in records]
    return pd.DataFrame(rows)


def summarize_robustness(frame: pd.DataFrame, row_keys: list[str]) -> pd.DataFrame:
    """Per row (``row_keys`` + task, fraction, labelled) and corruption: the mean IoU over its severities
    (each seed's severities first, then over seeds), the std over seeds (NaN for one), how many seeds and
    which severities. Corruptions in Fig. 4's order, clean first."""
    keys = [*row_keys, "task", "fraction", "labelled"]
    # one value per severity first (an on-the-fly and a downloaded evaluation of one severity average),
    # so every severity weighs the same in the corruption's mean
    per_severity = frame.groupby([*keys, "corruption", "seed", "severity"], sort=False, dropna=False)["iou"].mean().reset_index()
    per_seed = per_severity.groupby([*keys, "corruption", "seed"], sort=False, dropna=False).agg(
        iou=("iou", "mean"), severities=("severity", lambda s: ",".join(map(str, sorted(set(s)))))).reset_index()
    out = per_seed.groupby([*keys, "corruption"], sort=False, dropna=False).agg(
        mean=("iou", "mean"), std=("iou", "std"), n=("iou", "count"), severities=("severities", "first")).reset_index()
    order = {name: i for i, name in enumerate(CORRUPTION_LABELS)}
    return out.sort_values("corruption", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def robustness_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows = the report's rows (pretraining + marks) per task/fraction, columns = clean + corruptions,
    cells "IoU" ×100 (± std over seeds), "(s1,2)" when not every severity was evaluated."""
    rows: dict[tuple, dict] = {}
    columns = [c for c in CORRUPTION_LABELS if c in set(summary["corruption"])]
    for r in summary.itertuples(index=False):
        key = (r.arch, r.backbone, r.pretraining + r.marks, f"{r.task} {100 * r.fraction:g}% ({r.labelled} labelled)")
        cell = f"{100 * r.mean:.1f}" + (f" ± {100 * r.std:.1f}" if r.n > 1 else "")
        if r.corruption != CLEAN and r.severities != ",".join(map(str, SEVERITIES)):
            cell += f" (s{r.severities})"
        rows.setdefault(key, {})[r.corruption] = cell
    table = pd.DataFrame([{c: rows[k].get(c, "-") for c in columns} for k in rows],
                         columns=columns)
    table.columns = [CORRUPTION_LABELS[c].replace("\n", " ") for c in columns]
    table.index = pd.MultiIndex.from_tuples(list(rows), names=["Architecture", "Backbone", "BEV pretraining", "Task"])
    return table


def robustness_figure(summary: pd.DataFrame, notes: list[str] = ()):
    """Fig. 4: one panel per (architecture, backbone, task, fraction); x = clean + each corruption, one bar
    per BEV pretraining in its report colour (:func:`occfeat.plots.method_color`), height = IoU ×100
    averaged over severities (error bar: std over seeds when several), the bar's value on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from occfeat.plots import method_color

    panels = list(summary.groupby(["arch", "backbone", "task", "fraction", "labelled"], sort=False))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels) + 0.3 * len(notes)), squeeze=False)
    for ax, ((arch, backbone, task, fraction, labelled), part) in zip(axes[:, 0], panels):
        methods = list(dict.fromkeys(zip(part["pretraining"], part["marks"])))
        corruptions = [c for c in CORRUPTION_LABELS if c in set(part["corruption"])]
        width = 0.8 / len(methods)
        x = np.arange(len(corruptions))
        for i, (pretraining, marks) in enumerate(methods):
            rows = part[(part["pretraining"] == pretraining) & (part["marks"] == marks)].set_index("corruption")
            heights = np.array([100 * rows["mean"].get(c, np.nan) for c in corruptions])
            errors = np.array([100 * rows["std"].get(c, np.nan) for c in corruptions])
            pos = x - 0.4 + width * (i + 0.5)
            bars = ax.bar(pos, heights, width, color=method_color(pretraining, marks), label=pretraining + marks,
                          yerr=None if np.isnan(errors).all() else np.nan_to_num(errors), capsize=2)
            ax.bar_label(bars, labels=["" if np.isnan(h) else f"{h:.1f}" for h in heights], fontsize=7, padding=1)
        ax.set_xticks(x, [CORRUPTION_LABELS[c] for c in corruptions])
        ax.axvline(0.5, color="0.7", lw=0.8)  # clean | corrupted
        seeds = int(part["n"].max())
        ax.set_ylabel("IoU (mean over severities)" + (f"\nerror bar: ±1 std over {seeds} seeds" if seeds > 1 else ""))
        ax.set_title(f"{arch} {backbone}: {task} IoU under nuScenes-C corruptions, finetuned on "
                     f"{100 * fraction:g} % ({labelled} labelled samples)", fontsize=10)
        ax.set_ylim(0, max(1.0, float(np.nanmax(100 * part["mean"]))) * 1.18)
        ax.legend(fontsize=8, ncols=min(len(methods), 4), loc="upper right", title="BEV pretraining", title_fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=7, va="bottom", ha="left", wrap=True)
    fig.tight_layout(rect=(0, 0.025 * len(notes) / max(1, len(panels)), 1, 1))
    return fig
