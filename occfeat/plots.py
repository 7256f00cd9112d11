"""PNG plots for ``occfeat report`` (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from occfeat.errors import OccfeatError  # noqa: E402
from occfeat.tasks import TASKS  # noqa: E402

# One colour per class channel (up to the 5 map classes) for the BEV overlays.
CLASS_COLORS = np.array([[0.55, 0.55, 0.55], [0.2, 0.6, 1.0], [1.0, 0.85, 0.1], [0.3, 0.8, 0.3], [1.0, 0.2, 0.2]])


def plot_iou_vs_fraction(summary: pd.DataFrame, path: Path) -> Path:
    """One panel per task; one line per (arch, backbone, input, pretraining) with std error bars. One
    legend under the panels (a row's colour is the same in every panel), so long row labels never hide
    the lines."""
    tasks = [t for t in TASKS if (summary["task"] == t).any()]
    row = [c for c in ("arch", "backbone", "input", "pretraining", "prior", "marks") if c in summary]
    keys = sorted({tuple(k) for k in summary[row].itertuples(index=False)})
    # up to 10 rows: tab10; more: tab20 and a marker per row, so no two rows look alike
    palette = plt.cm.tab10 if len(keys) <= 10 else plt.cm.tab20
    colors = {k: palette(i % palette.N) for i, k in enumerate(keys)}
    markers = {k: "o" if len(keys) <= 10 else "os^Dv<>PX*"[i % 10] for i, k in enumerate(keys)}
    legend_h = 0.21 * len(keys) + 0.4
    longest = max((len(_row_label(dict(zip(row, k)))) for k in keys), default=0)
    width = max(6 * len(tasks), 0.062 * longest + 1.5)  # the legend's longest label fits (8 pt)
    fig, axes = plt.subplots(1, len(tasks), figsize=(width, 4.2 + legend_h), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = summary[summary["task"] == task]
        for key, g in sub.groupby(row, sort=True):
            g = g.sort_values("fraction")
            ax.errorbar(
                g["fraction"] * 100, g["mean"] * 100, yerr=g["std"].fillna(0) * 100, marker=markers[tuple(key)], capsize=3,
                color=colors[tuple(key)], label=_row_label(dict(zip(row, key))),
            )
        ax.set_xscale("log")
        ax.set_xlabel("labelled training samples (%)")
        ax.set_ylabel("IoU (x100)" if task == "vehicle" else "mean IoU (x100)")
        ax.set_title(TASKS[task])
        ax.grid(True, alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", fontsize=8, frameon=False, ncol=1)
    fig.tight_layout(rect=(0, legend_h / (4.2 + legend_h), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _row_label(r: dict) -> str:
    """A legend entry: architecture, backbone, input, pretraining and marks, and what a distilled row's
    teacher was trained on (``prior``, the report's "Labels before finetuning")."""
    text = f"{r['arch']}/{r['backbone']} {r['input']}: {r['pretraining']}{r['marks']}"
    prior = r.get("prior", "0")
    return text if prior == "0" else f"{text} (teacher trained on {prior.split(' (')[0]} labels)"


def _overlay(masks: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(C, X, Y) bool/prob → (Y, X, 3) RGB with x (forward) up: later classes paint over earlier ones."""
    img = np.ones((*masks.shape[1:], 3))
    for c in range(masks.shape[0]):
        img[masks[c] >= 0.5] = CLASS_COLORS[c % len(CLASS_COLORS)]
    if valid is not None:
        img[~valid] = 0.15
    # Array row = x; show x forward as up and y (left) as left.
    return np.flip(img, axis=(0, 1))


def plot_samples(npz_path: Path, path: Path, title: str = "") -> Path:
    """A few val samples from a run's ``samples.npz``: camera mosaic | ground truth | prediction, under
    ``title`` (the report puts the run, its pretraining and its provenance marks there)."""
    try:
        d = np.load(npz_path, allow_pickle=False)
        cams, target, prob, valid = d["cameras"], d["target"], d["prob"], d["valid"]
        classes = [str(c) for c in d["classes"]]
    except (OSError, KeyError, ValueError) as e:
        raise OccfeatError(f"{npz_path} is not a valid samples file ({type(e).__name__}); rerun occfeat evaluate on its run") from e
    n = len(target)
    fig, axes = plt.subplots(n, 3, figsize=(13, 3.4 * n), squeeze=False, gridspec_kw={"width_ratios": [2.2, 1, 1]})
    for i in range(n):
        s = cams[i]  # (S, h, w, 3) uint8 in CAMERAS order: front row 5,0,1 ; back row 4,3,2
        top = np.concatenate([s[5], s[0], s[1]], axis=1)
        bottom = np.concatenate([s[4], s[3], s[2]], axis=1)
        axes[i, 0].imshow(np.concatenate([top, bottom], axis=0))
        axes[i, 1].imshow(_overlay(target[i], valid[i]))
        axes[i, 2].imshow(_overlay(prob[i].astype(np.float32)))
        for ax, column in zip(axes[i], ["cameras", "ground truth", "prediction (p >= 0.5)"]):
            ax.set_title(column if i == 0 else "")
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLORS[c % len(CLASS_COLORS)]) for c in range(len(classes))]
    handles.append(plt.Rectangle((0, 0), 1, 1, color=(0.15, 0.15, 0.15)))
    labels = [*classes, "excluded from IoU (low visibility)"]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels))
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=10, y=0.995, va="top")
        top = 1 - (0.35 + 0.22 * title.count("\n")) / fig.get_figheight()
    fig.tight_layout(rect=(0, 0.04, 1, top))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
