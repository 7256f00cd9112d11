"""Paired differences between two rows of a study, seed by seed.

In an `occfeat study`, finetune seed s draws the same labelled subset, data order and augmentation for
every pretraining, so the difference A − B at one seed removes the variance the subsets add (the large
± of the report's cells at 1 %). For each pair A:B of pretraining names (the run-dir names: "none", a
recipe's file stem, "<stem>-random-teacher") and each task × fraction, this prints the mean and sample
std of the per-seed differences (IoU × 100) and in how many seeds A beat B.

    python tools/paired_deltas.py runs/study-synthetic synthetic-tiny:none synthetic-tiny:synthetic-occ
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="an `occfeat study` --out folder (its report/runs.csv)")
    ap.add_argument("pairs", nargs="+", help="A:B pretraining names, e.g. synthetic-tiny:synthetic-occ")
    args = ap.parse_args()

    if not (args.study / "report/runs.csv").is_file():
        raise SystemExit(f"{args.study} holds no report/runs.csv: pass the --out folder of a finished `occfeat study`")
    runs = pd.read_csv(args.study / "report" / "runs.csv", keep_default_na=False)
    parsed = runs["run"].map(lambda r: re.fullmatch(r"(vehicle|map)-(.+)-f([0-9.e-]+)-s(\d+)", Path(r).name))
    if parsed.isna().any():
        raise SystemExit(f"runs.csv holds run dirs not named like an occfeat study's: {runs['run'][parsed.isna()].iloc[0]}")
    runs["name"] = parsed.map(lambda m: m.group(2))
    print(f"{'A − B':44s} {'task':8s} {'fraction':>8s} {'mean ± std':>14s}  A > B")
    for pair in args.pairs:
        a, b = pair.split(":")
        found = False
        for (task, fraction), group in runs.groupby(["task", "fraction"], sort=False):
            ia = group[group["name"] == a].set_index("seed")["iou"]
            ib = group[group["name"] == b].set_index("seed")["iou"]
            diff = 100 * (ia - ib).dropna()
            if diff.empty:  # e.g. a teacher's 100 % column, where neither row ran
                continue
            found = True
            std = f"{diff.std(ddof=1):.1f}" if len(diff) > 1 else "–"
            print(f"{a + ' − ' + b:44s} {task:8s} {100 * fraction:7g}% {diff.mean():+7.1f} ± {std:>4s}  {int((diff > 0).sum())}/{len(diff)}")
        if not found:
            raise SystemExit(f"no seed has both '{a}' and '{b}' for any task and fraction; names: {sorted(runs['name'].unique())}")


if __name__ == "__main__":
    main()
