"""``occfeat finetune``: BEV segmentation finetuning at 1 / 10 / 100 % of the labels (paper §4.1, Table 1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from occfeat.cli.common import console, one_line_errors, resume_advice

if TYPE_CHECKING:
    from occfeat.train.records import FinetuneMetrics


def print_metrics(m: FinetuneMetrics) -> None:
    ious = " ".join(f"{k}={100 * v:.1f}" for k, v in m.iou.items())
    flags = [name for name in ("synthetic_data", "backbone_random_init", "teacher_random_init", "teacher_standin") if getattr(m.provenance, name)]
    console.print(f"{m.task} IoU on {m.split} ({m.fraction:g} of the labels, {m.labelled_samples} samples): mean {100 * m.mean_iou:.1f} | {ious}", highlight=False)
    if flags:
        console.print(f"note: {', '.join(flags)}: not comparable to the paper's numbers (recorded in metrics.json)", highlight=False)


@one_line_errors(on_interrupt=resume_advice)
def finetune(
    recipe: Path = typer.Option(..., help="Recipe YAML under recipes/finetune/ (a delta over the FinetuneConfig defaults)."),
    dataroot: Path = typer.Option(..., help="nuScenes-format dataroot (the folder that holds VERSION/, samples/, maps/)."),
    version: str = typer.Option(..., help="Dataroot version: v1.0-trainval, v1.0-mini."),
    task: str = typer.Option(..., help="vehicle | map (road, sidewalk, crosswalk, parking, divider)."),
    fraction: float = typer.Option(..., help="Share of the training split that is labelled, in (0, 1]: 0.01, 0.1 or 1.0 in the paper."),
    out: Path = typer.Option(..., help="Run directory (config.yaml, labelled_tokens.txt, metrics.jsonl, checkpoints/, metrics.json)."),
    init: Path = typer.Option(None, help="Pretraining run dir (`occfeat pretrain --out`) whose network to start from, or one of its checkpoints/epoch_NNN.pt; none = ImageNet backbone."),
    epochs: int = typer.Option(None, min=1, help="Override train.epochs (paper: 100 / 50 / 30 at 1 / 10 / 100 %)."),
    seed: int = typer.Option(None, help="Override train.seed: picks the labelled subset, the head's init and the data order."),
    split: str = typer.Option("train", help="Training split (train, mini_train, ... or a name from splits.json)."),
    val_split: str = typer.Option("val", help="Evaluation split."),
    gt_cache: Path = typer.Option(None, help="Folder for the ground-truth caches (default: OUT/../gt-cache, shared by sibling runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out where its last checkpoint left off."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    overrides: list[str] = typer.Argument(None, help="key=value config overrides, e.g. train.lr=3e-4 eval_every=5 network.backbone_weights=effb0.safetensors"),
) -> None:
    """Finetune a BEV network for vehicle or map segmentation on a seeded, nested subset of the labels, then evaluate IoU on the val split.

    Paper defaults per fraction (AdamW, OneCycle, wd 1e-7): 1 %: 100 epochs, lr 1e-4, batch 6; 10 %: 50, 1e-4, 6; 100 %: 30, 3e-4, 8 x 5 accumulation. The recipe and overrides go on top.
    """
    from occfeat.config import parse_overrides
    from occfeat.train.finetune import resolve_config, run_finetune

    delta = parse_overrides(list(overrides or []))
    if epochs is not None:
        delta.setdefault("train", {})["epochs"] = epochs
    if seed is not None:
        delta.setdefault("train", {})["seed"] = seed
    cfg = resolve_config(recipe, task, fraction, delta)
    metrics = run_finetune(cfg, dataroot, version, out, init=init, split=split, val_split=val_split, resume=resume, gt_cache=gt_cache, progress=progress)
    if metrics:
        console.print(f"finetuned {metrics.step} steps on {metrics.labelled_samples} labelled samples; wrote {out / 'metrics.json'}", highlight=False)
        print_metrics(metrics)
