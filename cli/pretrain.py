"""``occfeat pretrain``: self-supervised pretraining of a BEV network with the recipe's objectives (paper §3, §4.1)."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import console, one_line_errors, resume_advice


@one_line_errors(on_interrupt=resume_advice)
def pretrain(
    recipe: Path = typer.Option(..., help="Recipe YAML under recipes/pretrain/ (a delta over the PretrainConfig defaults)."),
    dataroot: Path = typer.Option(..., help="nuScenes-format dataroot (the folder that holds VERSION/ and samples/)."),
    version: str = typer.Option(..., help="Dataroot version: v1.0-trainval, v1.0-mini."),
    occupancy: Path = typer.Option(..., help="Occupancy cache from `occfeat voxelize --recipe RECIPE` (the LiDAR every objective reads), on the recipe's grid."),
    features: Path = typer.Option(None, help="Teacher feature cache from `occfeat extract` (only for objectives that distill the teacher, e.g. features)."),
    out: Path = typer.Option(..., help="Run directory (config.yaml, provenance.json, metrics.jsonl, checkpoints/); must not exist unless --resume."),
    split: str = typer.Option("train", help="Split to pretrain on (train, mini_train, ... or a name from splits.json)."),
    epochs: int = typer.Option(None, min=1, help="Override train.epochs (paper: 50; 100 = OccFeat†)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where its last checkpoint left off."),
    overrides: list[str] = typer.Argument(None, help="key=value config overrides, e.g. train.batch_size=8 train.grad_accum=2 network.backbone_weights=effb0.safetensors"),
) -> None:
    """Pretrain a BEV network with the recipe's objectives (default OccFeat: L = L_occ + 0.01·L_feat; img-also.yaml: Img-ALSO).

    Under `torchrun --nproc_per_node N` it trains with DDP (train.batch_size is split over the processes). A NaN loss stops the run and keeps the last good checkpoint.
    """
    from occfeat.config import load_config, parse_overrides
    from occfeat.train.pretrain import PretrainConfig, pretrain as run

    delta = parse_overrides(list(overrides or []))
    if epochs is not None:
        delta.setdefault("train", {})["epochs"] = epochs
    cfg = load_config(PretrainConfig, recipe, delta)
    summary = run(cfg, dataroot, version, occupancy, features, out, split=split, resume=resume)
    prov = summary["provenance"]
    if prov["random_init"]:
        console.print("note: random-init weights were used (backbone or teacher); recorded in provenance.json")
    if prov.get("teacher_standin"):
        console.print("note: semantic stand-in teacher (synthetic labels), not DINOv2; recorded in provenance.json")
    last = summary["last"]
    terms = " ".join(f"{k}={v:.4f}" for k, v in last.items() if k.startswith("loss"))
    console.print(
        f"pretrained {summary['step']} steps ({summary['epoch']:.2f} epochs) at {summary['samples_per_s']:.1f} samples/s; "
        f"{terms}; checkpoint {summary['checkpoint']}"
    )
