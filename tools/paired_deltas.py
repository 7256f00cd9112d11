"""Paired differences between two rows of a study, seed by seed.

In an `occfeat study`, finetune seed s draws the same labelled subset, data order and augmentation for
every pretraining, so the difference A − B at one seed removes the variance the subsets add (the large
± of the report's cells at 1 %). For each pair A:B of row names (the run-dir names: "none", a recipe's
file stem, "<stem>-random-teacher", "<stem>+<distillation>") and each task × fraction, this prints the
mean and sample std of the per-seed differences (IoU × 100) and in how many seeds A beat B. Several
study folders (e.g. one per fraction) are read together; a run dir name seen twice counts once.
``--plot PNG`` draws the same numbers as bars.

    python tools/paired_deltas.py runs/study-synthetic synthetic-tiny:none synthetic-tiny:synthetic-occ
"""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

import pandas as pd


def read_runs(studies: list[Path]) -> pd.DataFrame:
    frames = []
    for study in studies:
        if not (study / "report/runs.csv").is_file():
            raise SystemExit(f"{study} holds no report/runs.csv: pass the --out folder of a finished `occfeat study`")
        frames.append(pd.read_csv(study / "report" / "runs.csv", keep_default_na=False))
    runs = pd.concat(frames, ignore_index=True)
    runs["dir"] = runs["run"].map(lambda r: Path(r).name)
    runs = runs.drop_duplicates("dir")  # a teacher copied into several slices is one run
    parsed = runs["dir"].map(lambda r: re.fullmatch(r"(vehicle|map)-(.+)-f([0-9.e-]+)-s(\d+)", r))
    if parsed.isna().any():
        raise SystemExit(f"runs.csv holds run dirs not named like an occfeat study's: {runs['run'][parsed.isna()].iloc[0]}")
    runs["name"] = parsed.map(lambda m: m.group(2))
    return runs


def paired(runs: pd.DataFrame, pairs: list[str]) -> pd.DataFrame:
    """One row per (pair, task, fraction) where both ran: mean, std (ddof=1), wins, n."""
    rows = []
    for pair in pairs:
        a, b = pair.split(":")
        found = False
        for (task, fraction), group in runs.groupby(["task", "fraction"], sort=True):
            ia = group[group["name"] == a].set_index("seed")["iou"]
            ib = group[group["name"] == b].set_index("seed")["iou"]
            diff = 100 * (ia - ib).dropna()
            if diff.empty:  # e.g. a teacher's 100 % column, where neither row ran
                continue
            found = True
            rows.append({"pair": f"{a} − {b}", "task": task, "fraction": fraction, "mean": diff.mean(),
                         "std": diff.std(ddof=1) if len(diff) > 1 else float("nan"), "wins": int((diff > 0).sum()), "n": len(diff)})
        if not found:
            raise SystemExit(f"no seed has both '{a}' and '{b}' for any task and fraction; names: {sorted(runs['name'].unique())}")
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = list(dict.fromkeys(table["pair"]))
    fractions = sorted(table["fraction"].unique())
    height = 0.8 / len(fractions)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(pairs) * max(1, len(fractions) / 2) + 1.4))
    for k, f in enumerate(fractions):
        sub = table[table["fraction"] == f].set_index("pair").reindex(pairs)
        y = np.arange(len(pairs)) + (k - (len(fractions) - 1) / 2) * height
        n = sub["n"].dropna()
        seeds = int(n.max()) if len(n) else 0
        label = f"{100 * f:g} % ({seeds} seed{'s' if seeds != 1 else ''})"
        ax.barh(y, sub["mean"], height, xerr=sub["std"].fillna(0), capsize=2, label=label, color=plt.cm.tab10(k))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(np.arange(len(pairs)), pairs, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("paired IoU difference A − B (x100), mean ± std over seeds")
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("items", nargs="+", help="study --out folders (their report/runs.csv), then A:B row names, e.g. synthetic-tiny:synthetic-occ")
    ap.add_argument("--plot", type=Path, help="also draw the differences as bars into this PNG")
    ap.add_argument("--title", default="", help="the plot's title (say what the runs stand on)")
    args = ap.parse_args()
    pairs = [i for i in args.items if ":" in i]
    studies = [Path(i) for i in args.items if ":" not in i]
    if not studies or not pairs:
        raise SystemExit("pass one or more study folders and one or more A:B pairs")
    table = paired(read_runs(studies), pairs)
    print(f"{'A − B':44s} {'task':8s} {'fraction':>8s} {'mean ± std':>14s}  A > B")
    for r in table.itertuples(index=False):
        std = "–" if pd.isna(r.std) else f"{r.std:.1f}"
        print(f"{r.pair:44s} {r.task:8s} {100 * r.fraction:7g}% {r.mean:+7.1f} ± {std:>4s}  {r.wins}/{r.n}")
    if args.plot:
        plot(table, args.plot, args.title)
        print(f"plot → {args.plot}")


if __name__ == "__main__":
    main()
