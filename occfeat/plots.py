"""PNG plots for ``occfeat report`` (matplotlib, Agg backend: no display needed): IoU against the labelled
fraction, and the val samples of each run (drawn by :mod:`occfeat.bev_plots`; :func:`bev_sample_figure`
is re-exported here for callers that log one sample, e.g. to TensorBoard)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator  # noqa: E402

from occfeat.bev_plots import (BevSample, bev_sample_figure, draw_sample, load_samples, sample_height,  # noqa: E402
                               sample_width, stable_color)
from occfeat.grid import BevGrid  # noqa: E402
from occfeat.tasks import TASKS  # noqa: E402

# BevSample and bev_sample_figure are re-exported: one sample's figure, e.g. for TensorBoard at evaluation.
__all__ = ["BevSample", "bev_sample_figure", "fraction_ticks", "iou_vs_fraction_figure", "method_color", "method_name",
           "plot_iou_vs_fraction", "plot_samples"]

# One colour per BEV pretraining method in every figure, whichever methods a report holds: a fixed palette
# for the methods occfeat ships (keys are :func:`method_name`s), a stable hash into tab20b for any other.
METHOD_COLORS: dict[str, str] = {
    "None": "#4d4d4d",
    "Occ+Feat": "#d62728",
    "OccFeat": "#d62728",  # the same method's label in reports written before objectives were composable
    "Occ": "#ff7f0e",
    "Feat": "#9467bd",
    "Img-ALSO": "#1f77b4",
    "Bal-OccFeat": "#8c564b",
    "2nd-Unsplat": "#e377c2",
    "Persp": "#17becf",
    "Occ+Feat+Persp": "#bcbd22",
}
PRIVILEGED = "†"  # the report's mark of a row distilled from a teacher that saw more labels
FRACTION_TICKS = (1.0, 10.0, 100.0)  # labelled-sample percentages every IoU-vs-fraction axis shows
# Within one colour, the rows that differ in anything else (network, λ, epochs, marks): marker and line style.
ROW_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1))), ("P", (0, (3, 1, 1, 1, 1, 1))))


def method_name(pretraining: str, marks: str = "") -> str:
    """The method of a report row: its pretraining label without the settings in parentheses ("Occ+Feat
    (50 ep, λ=0.01) + BEVDistill" → "Occ+Feat + BEVDistill"; an extra head, "(+ perspective head)", is part
    of the method), with † when its teacher was privileged."""
    name = re.sub(r"\s*\((?!\+)[^()]*\)", "", pretraining).strip()
    return name + (PRIVILEGED if PRIVILEGED in marks else "")


def method_color(pretraining: str, marks: str = "") -> tuple[float, float, float]:
    """The colour of a method in every figure: :data:`METHOD_COLORS`, else
    :func:`occfeat.bev_plots.stable_color` of its name; a privileged (†) variant is the same colour 35 %
    darker, so it reads as the method it varies."""
    name = method_name(pretraining, marks)
    base = name.removesuffix(PRIVILEGED)
    rgb = np.array(to_rgb(METHOD_COLORS[base]) if base in METHOD_COLORS else stable_color(base))
    return tuple(float(v) for v in (rgb * 0.65 if name.endswith(PRIVILEGED) else rgb))


def fraction_ticks(percents) -> list[float]:
    """Tick positions (%) of the fraction axis: 1, 10 and 100 always, plus every fraction a row was run at."""
    return sorted({*FRACTION_TICKS, *(float(p) for p in percents)})


def plot_iou_vs_fraction(summary: pd.DataFrame, path: Path) -> Path:
    """:func:`iou_vs_fraction_figure` as a PNG at ``path``."""
    fig = iou_vs_fraction_figure(summary)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def iou_vs_fraction_figure(summary: pd.DataFrame) -> Figure:
    """One panel per task; one line per (arch, backbone, input, pretraining) with ±1 std error bars. A
    row's colour is its method's (:func:`method_color`, the same in every report); rows of one method
    differ by marker and line style. One legend under the panels and a caption saying what the bars are."""
    tasks = [t for t in TASKS if (summary["task"] == t).any()]
    row = [c for c in ("arch", "backbone", "input", "pretraining", "prior", "marks") if c in summary]
    keys = sorted({tuple(k) for k in summary[row].itertuples(index=False)})
    colors = {k: method_color(dict(zip(row, k))["pretraining"], dict(zip(row, k)).get("marks", "")) for k in keys}
    per_color: dict[tuple, int] = {}
    styles = {}
    # The n-th row of a colour gets the n-th style; LiDAR teachers' rows (references) after the camera rows.
    for k in sorted(keys, key=lambda k: (dict(zip(row, k))["input"] == "LiDAR", k)):
        n = per_color.get(colors[k], 0)
        per_color[colors[k]] = n + 1
        styles[k] = ROW_STYLES[n % len(ROW_STYLES)]
    caption = ("Error bars: ±1 std over seeds (sample std); a point without a bar is one seed. Colour: the BEV "
               "pretraining method, the same in every occfeat report; marker/line: the row's other settings.")
    legend_h = 0.21 * len(keys) + 0.65
    longest = max((len(_row_label(dict(zip(row, k)))) for k in keys), default=0)
    width = max(6 * len(tasks), 0.062 * longest + 1.5, 7.5)  # the legend's longest label and the caption fit (8 pt)
    fig, axes = plt.subplots(1, len(tasks), figsize=(width, 4.2 + legend_h), squeeze=False)
    percents = summary["fraction"] * 100
    ticks = fraction_ticks(percents)
    for ax, task in zip(axes[0], tasks):
        sub = summary[summary["task"] == task]
        for key, g in sub.groupby(row, sort=True):
            g = g.sort_values("fraction")
            marker, line = styles[tuple(key)]
            ax.errorbar(
                g["fraction"] * 100, g["mean"] * 100, yerr=g["std"].fillna(0) * 100, marker=marker, linestyle=line, capsize=3,
                color=colors[tuple(key)], label=_row_label(dict(zip(row, key))),
            )
        ax.set_xscale("log")  # fractions span decades; the ticks say the percentages in plain numbers
        ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g} %" for t in ticks]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("labelled training samples (% of the split)")
        ax.set_ylabel("IoU (x100)" if task == "vehicle" else "mean IoU (x100)")
        ax.set_title(TASKS[task])
        ax.grid(True, alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", bbox_to_anchor=(0.5, 0.45 / (4.2 + legend_h)),
               fontsize=8, frameon=False, ncol=1)
    fig.text(0.5, 0.08 / (4.2 + legend_h), textwrap.fill(caption, int(width * 15)), ha="center", va="bottom", fontsize=8,
             style="italic")
    fig.tight_layout(rect=(0, legend_h / (4.2 + legend_h), 1, 1))
    return fig


def _row_label(r: dict) -> str:
    """A legend entry: architecture, backbone, input, pretraining and marks, and what a distilled row's
    teacher was trained on (``prior``, the report's "Labels before finetuning")."""
    text = f"{r['arch']}/{r['backbone']} {r['input']}: {r['pretraining']}{r['marks']}"
    prior = r.get("prior", "0")
    return text if prior == "0" else f"{text} (teacher trained on {prior.split(' (')[0]} labels)"


def plot_samples(npz_path: Path, path: Path, title: str = "", grid: BevGrid | None = None, dpi: float = 100) -> Path:
    """The val samples of a run's ``samples.npz`` stacked in one PNG, each laid out as
    :func:`bev_sample_figure` draws it, under ``title`` (the report puts the run, its pretraining and its
    provenance marks there). ``grid``: the run's grid, for samples files that do not store it."""
    samples = load_samples(npz_path, grid)
    width = sample_width(samples[0], dpi)
    heights = [sample_height(s, width) + 0.2 for s in samples]
    title_h = 0.3 + 0.2 * title.count("\n") if title else 0.0
    fig = plt.figure(figsize=(width, sum(heights) + title_h))
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / fig.get_figheight(), va="top")
    top = title_h
    for i, (s, h) in enumerate(zip(samples, heights)):
        draw_sample(fig, s, top, label=f"val sample {i + 1}" + (f" ({s.token})" if s.token else ""))
        top += h
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
