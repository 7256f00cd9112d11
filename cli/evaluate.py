"""``occfeat evaluate RUN_DIR``: re-evaluate a finetune run's last checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import console, one_line_errors
from occfeat.cli.finetune import print_metrics


@one_line_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="Finetune run dir (`occfeat finetune --out`)."),
    split: str = typer.Option(None, help="Split to evaluate on (default: the run's val split; another split writes metrics-SPLIT.json)."),
    dataroot: Path = typer.Option(None, help="Dataroot, if it moved since training (default: the one the run recorded)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """IoU per class accumulated over the whole split (threshold 0.5), rewriting metrics.json and samples.npz."""
    from occfeat.train.finetune import run_evaluate

    metrics = run_evaluate(run_dir, split=split, dataroot=dataroot, progress=progress)
    print_metrics(metrics)
    console.print(f"evaluated step {metrics.step} of {run_dir}", highlight=False)
