"""``occfeat pretrain``: self-supervised pretraining of a BEV network with the recipe's objectives (paper §3, §4.1)."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import console, device_option, one_line_errors, out as stdout, print_json, require, resume_advice


@one_line_errors(on_interrupt=resume_advice)
def pretrain(
    recipe: Path = typer.Option(..., help="Recipe: a YAML path, or a packaged recipe's name (e.g. synthetic-tiny); a delta over the PretrainConfig defaults."),
    dataroot: Path = typer.Option(None, help="[required] nuScenes-format dataroot (the folder that holds VERSION/ and samples/)."),
    version: str = typer.Option(None, help="[required] Dataroot version: v1.0-trainval, v1.0-mini."),
    occupancy: Path = typer.Option(None, help="[required] Occupancy cache from `occfeat voxelize --recipe RECIPE` (the LiDAR every objective reads), on the recipe's grid."),
    features: Path = typer.Option(None, help="Teacher feature cache from `occfeat extract` (only for objectives that distill the teacher, e.g. features)."),
    out: Path = typer.Option(None, help="[required] Run directory (config.yaml, provenance.json, metrics.jsonl, checkpoints/, tensorboard/); must not exist unless --resume."),
    split: str = typer.Option("train", help="Split to pretrain on (train, mini_train, ... or a name from splits.json)."),
    epochs: int = typer.Option(None, min=1, help="Override train.epochs (paper: 50; 100 = OccFeat†)."),
    device: str = device_option(None),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where its last checkpoint left off."),
    progress: bool = typer.Option(True, help="Show progress (a bar on a terminal, periodic lines in a log file)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config (defaults ← recipe ← overrides) as YAML and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON on stdout."),
    overrides: list[str] = typer.Argument(None, help="key=value config overrides, e.g. train.batch_size=8 train.grad_accum=2 network.backbone_weights=effb0.safetensors"),
) -> None:
    """Pretrain a BEV network with the recipe's objectives (default OccFeat: L = L_occ + 0.01·L_feat; img-also.yaml: Img-ALSO).

    Under `torchrun --nproc_per_node N` it trains with DDP (train.batch_size is split over the processes). A NaN loss stops the run and keeps the last good checkpoint.
    """
    from occfeat.config import dump_config, load_config, parse_overrides
    from occfeat.train.pretrain import PretrainConfig, pretrain as run

    delta = parse_overrides(list(overrides or []))
    if epochs is not None:
        delta.setdefault("train", {})["epochs"] = epochs
    if device is not None:
        delta.setdefault("train", {})["device"] = device
    cfg = load_config(PretrainConfig, recipe, delta)
    if print_config:
        print(dump_config(cfg), end="")
        return
    require(dataroot=dataroot, version=version, occupancy=occupancy, out=out)
    summary = run(cfg, dataroot, version, occupancy, features, out, split=split, resume=resume, progress=progress)
    prov = summary["provenance"]
    if prov["random_init"]:
        console.print("note: random-init weights were used (backbone or teacher); recorded in provenance.json")
    if prov.get("teacher_standin"):
        console.print("note: semantic stand-in teacher (synthetic labels), not DINOv2; recorded in provenance.json")
    if as_json:
        print_json(summary)
        return
    last = summary["last"]
    terms = " ".join(f"{k}={v:.4f}" for k, v in last.items() if k.startswith("loss"))
    stdout.print(
        f"pretrained {summary['step']} steps ({summary['epoch']:.2f} epochs) at {summary['samples_per_s']:.1f} samples/s; "
        f"{terms}; checkpoint {summary['checkpoint']}", highlight=False
    )
