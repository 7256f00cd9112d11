"""``occfeat finetune``: BEV segmentation finetuning at 1 / 10 / 100 % of the labels (paper §4.1, Table 1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from occfeat.cli.common import choices, console, device_option, one_line_errors, out as stdout, print_json, require, resume_advice
from occfeat.tasks import TASKS

Task = choices("Task", TASKS)

if TYPE_CHECKING:
    from occfeat.train.records import FinetuneMetrics


def print_metrics(m: FinetuneMetrics, as_json: bool = False) -> None:
    """The evaluation on stdout (a line, or ``--json``: metrics.json's record); the not-comparable note on stderr."""
    flags = [name for name in ("synthetic_data", "backbone_random_init", "teacher_random_init", "teacher_standin") if getattr(m.provenance, name)]
    if as_json:
        print_json(m.to_dict())
    else:
        ious = " ".join(f"{k}={100 * v:.1f}" for k, v in m.iou.items())
        stdout.print(f"{m.task} IoU on {m.split} ({m.fraction:g} of the labels, {m.labelled_samples} samples): mean {100 * m.mean_iou:.1f} | {ious}", highlight=False)
    if flags:
        console.print(f"note: {', '.join(flags)}: not comparable to the paper's numbers (recorded in metrics.json)", highlight=False)


@one_line_errors(on_interrupt=resume_advice)
def finetune(
    recipe: Path = typer.Option(..., help="Recipe: a YAML path, or a packaged recipe's name (e.g. simplebev-effb0); a delta over the FinetuneConfig defaults."),
    task: Task = typer.Option(..., help="vehicle | map (road, sidewalk, crosswalk, parking, divider)."),
    fraction: float = typer.Option(..., min=0.0, help="Share of the training split that is labelled, in (0, 1]: 0.01, 0.1 or 1.0 in the paper."),
    dataroot: Path = typer.Option(None, help="[required] nuScenes-format dataroot (the folder that holds VERSION/, samples/, maps/)."),
    version: str = typer.Option(None, help="[required] Dataroot version: v1.0-trainval, v1.0-mini."),
    out: Path = typer.Option(None, help="[required] Run directory (config.yaml, labelled_tokens.txt, metrics.jsonl, checkpoints/, tensorboard/, metrics.json)."),
    init: Path = typer.Option(None, help="Pretraining run dir (`occfeat pretrain --out`) whose network to start from, or one of its checkpoints/epoch_NNN.pt; none = ImageNet backbone."),
    epochs: int = typer.Option(None, min=1, help="Override train.epochs (paper: 100 / 50 / 30 at 1 / 10 / 100 %)."),
    seed: int = typer.Option(None, help="Override train.seed: picks the labelled subset, the head's init and the data order."),
    split: str = typer.Option("train", help="Training split (train, mini_train, ... or a name from splits.json)."),
    val_split: str = typer.Option("val", help="Evaluation split."),
    gt_cache: Path = typer.Option(None, help="Folder for the ground-truth caches (default: OUT/../gt-cache, shared by sibling runs)."),
    device: str = device_option(None),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out where its last checkpoint left off."),
    progress: bool = typer.Option(True, help="Show progress (a bar on a terminal, periodic lines in a log file)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config (paper defaults for the fraction ← recipe ← overrides) as YAML and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json's record on stdout instead of the summary line."),
    overrides: list[str] = typer.Argument(None, help="key=value config overrides, e.g. train.lr=3e-4 eval_every=5 network.backbone_weights=effb0.safetensors"),
) -> None:
    """Finetune a BEV network for vehicle or map segmentation on a seeded, nested subset of the labels, then evaluate IoU on the val split.

    Paper defaults per fraction (AdamW, OneCycle, wd 1e-7): 1 %: 100 epochs, lr 1e-4, batch 6; 10 %: 50, 1e-4, 6; 100 %: 30, 3e-4, 8 x 5 accumulation. The recipe and overrides go on top.
    """
    from occfeat.config import dump_config, parse_overrides
    from occfeat.train.finetune import resolve_config, run_finetune

    delta = parse_overrides(list(overrides or []))
    if epochs is not None:
        delta.setdefault("train", {})["epochs"] = epochs
    if seed is not None:
        delta.setdefault("train", {})["seed"] = seed
    if device is not None:
        delta.setdefault("train", {})["device"] = device
    cfg = resolve_config(recipe, task.value, fraction, delta)
    if print_config:
        print(dump_config(cfg), end="")
        return
    require(dataroot=dataroot, version=version, out=out)
    metrics = run_finetune(cfg, dataroot, version, out, init=init, split=split, val_split=val_split, resume=resume, gt_cache=gt_cache, progress=progress)
    if metrics:
        console.print(f"finetuned {metrics.step} steps on {metrics.labelled_samples} labelled samples; wrote {out / 'metrics.json'}", highlight=False)
        print_metrics(metrics, as_json)
