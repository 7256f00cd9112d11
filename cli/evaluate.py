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
    corruption: str = typer.Option(None, help="nuScenes-C corruption applied to each camera image as it is read: brightness, low_light, fog, snow, motion_blur, color_quant, camera_crash, frame_lost, or all (each in turn); writes metrics-SPLIT-NAME-sSEVERITY.json per evaluation."),
    severity: int = typer.Option(None, help="The corruption's severity, 1 (easy) to 3 (hard); without it each of the three in turn."),
    image_root: Path = typer.Option(None, help="Read the camera images from this folder at the dataroot's relative paths (samples/CAM_*/..., or CAM_*/... as nuScenes-C ships them, e.g. nuScenes-C/Fog/hard); writes metrics-SPLIT-Fog-hard.json."),
) -> None:
    """IoU per class accumulated over the whole split (threshold 0.5), rewriting metrics.json and samples.npz
    (under --corruption or --image-root: its own metrics file, the clean record untouched)."""
    from occfeat.errors import OccfeatError
    from occfeat.train.finetune import run_evaluate

    if severity is not None and corruption is None:
        raise OccfeatError("--severity needs --corruption; give both (e.g. --corruption fog --severity 2), or --corruption all for every one")
    specs = [None] if corruption is None else corruption_specs(corruption, severity)
    for spec in specs:
        metrics = run_evaluate(run_dir, split=split, dataroot=dataroot, progress=progress, device=device, corruption=spec, image_root=image_root)
        under = f" under {spec.name} severity {spec.severity}" if spec is not None else ""
        console.print(f"evaluated step {metrics.step} of {run_dir}{under}", highlight=False)
        print_metrics(metrics, as_json)


def corruption_specs(name: str, severity: int | None) -> list:
    """The evaluations ``--corruption NAME [--severity N]`` asks for: NAME or every corruption ("all") at
    severity N or at each severity; an unknown name or severity is the one-line error of Corruption."""
    from occfeat.data.corruptions import CORRUPTIONS, SEVERITIES, Corruption

    names = list(CORRUPTIONS) if name == "all" else [name]
    return [Corruption(n, s) for n in names for s in ([severity] if severity is not None else SEVERITIES)]
