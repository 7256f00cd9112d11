"""``occfeat evaluate RUN_DIR``: re-evaluate a finetune run's last checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import console, device_option, one_line_errors
from occfeat.cli.finetune import print_metrics


@one_line_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="Finetune run dir (`occfeat finetune --out`)."),
    split: str = typer.Option(None, help="Split to evaluate on (default: the run's val split; another split writes metrics-SPLIT.json)."),
    dataroot: Path = typer.Option(None, help="Dataroot, if it moved since training (default: the one the run recorded)."),
    device: str = device_option(None),
    progress: bool = typer.Option(True, help="Show progress (a bar on a terminal, periodic lines in a log file)."),
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation record (metrics.json's fields) as JSON on stdout."),
) -> None:
    """IoU per class accumulated over the whole split (threshold 0.5), rewriting metrics.json and samples.npz."""
    from occfeat.train.finetune import run_evaluate

    metrics = run_evaluate(run_dir, split=split, dataroot=dataroot, progress=progress, device=device)
    console.print(f"evaluated step {metrics.step} of {run_dir}", highlight=False)
    print_metrics(metrics, as_json)
