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
    corruption: str = typer.Option(None, help="nuScenes-C corruption applied to each camera image as it is read: brightness, low_light, fog, snow, motion_blur, color_quant, camera_crash or frame_lost; writes metrics-SPLIT-NAME-sSEVERITY.json."),
    severity: int = typer.Option(None, help="The corruption's severity, 1 (easy) to 3 (hard); needed with --corruption."),
    image_root: Path = typer.Option(None, help="Read the camera images from this folder at the dataroot's relative paths (samples/CAM_*/..., or CAM_*/... as nuScenes-C ships them, e.g. nuScenes-C/Fog/hard); writes metrics-SPLIT-Fog-hard.json."),
) -> None:
    """IoU per class accumulated over the whole split (threshold 0.5), rewriting metrics.json and samples.npz
    (under --corruption or --image-root: its own metrics file, the clean record untouched)."""
    from occfeat.errors import OccfeatError
    from occfeat.train.finetune import run_evaluate

    if (corruption is None) != (severity is None):
        raise OccfeatError("--corruption and --severity go together; give both (e.g. --corruption fog --severity 2) or neither")
    spec = None
    if corruption is not None:
        from occfeat.data.corruptions import Corruption

        spec = Corruption(corruption, severity)
    metrics = run_evaluate(run_dir, split=split, dataroot=dataroot, progress=progress, device=device, corruption=spec, image_root=image_root)
    under = f" under {spec.name} severity {spec.severity}" if spec is not None else ""
    console.print(f"evaluated step {metrics.step} of {run_dir}{under}", highlight=False)
    print_metrics(metrics, as_json)
