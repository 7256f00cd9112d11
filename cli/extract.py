"""``occfeat extract``: teacher (DINOv2) patch features of every key-frame camera image → HDF5."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import console, device_option, one_line_errors, out as stdout, parse_size
from occfeat.data.extract import DEFAULTS
from occfeat.data.standin import STANDIN_LEGEND, STANDIN_TEACHER, StandinConfig
from occfeat.errors import OccfeatError


@one_line_errors
def extract(
    dataroot: Path = typer.Option(..., help="nuScenes-format dataroot (the folder holding VERSION/)."),
    version: str = typer.Option(..., help="Dataset version folder, e.g. v1.0-trainval."),
    out: Path = typer.Option(..., help="Output HDF5 file (parts are kept in OUT.parts/ until it is complete)."),
    split: str = typer.Option("train", help="Split name (official, custom from splits.json, or 'all')."),
    teacher: str = typer.Option(
        DEFAULTS.teacher,
        help=f"timm ViT name of the frozen teacher. '{STANDIN_TEACHER}': the semantic stand-in teacher, an instrument for occfeat "
        "synth worlds (features from their per-pixel labels, no weights; stamped 'not DINOv2').",
    ),
    weights: Path = typer.Option(None, help="Teacher weights file (safetensors/.pth, original DINOv2 checkpoints too)."),
    random_teacher: bool = typer.Option(False, "--random-teacher", help="Random-init teacher (tests/demos only; stamped into the file)."),
    input_size: str = typer.Option("x".join(map(str, DEFAULTS.input_size)), help="Teacher input HEIGHTxWIDTH, multiples of the patch size."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Images per forward pass."),
    device: str = device_option(DEFAULTS.device),
    workers: int = typer.Option(DEFAULTS.workers, help="DataLoader workers decoding JPEGs."),
    progress: bool = typer.Option(True, help="Show progress (a bar on a terminal, periodic lines in a log file)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Mark samples with a missing/corrupt image invalid instead of stopping."),
    standin_noise: float = typer.Option(StandinConfig.noise, help=f"{STANDIN_TEACHER} only: Gaussian noise norm per token, relative to a class vector's (0: exact)."),
    standin_dim: int = typer.Option(StandinConfig.feature_dim, help=f"{STANDIN_TEACHER} only: feature width C (384: ViT-S/14's)."),
) -> None:
    """DINOv2 teacher features of every key-frame camera image, (6, Hp, Wp, C) float16 per sample (or, with
    --teacher semantic-standin on an occfeat synth world, the semantic stand-in's)."""
    from occfeat.data.extract import extract_features

    if weights is not None and random_teacher:
        raise OccfeatError("--weights and --random-teacher contradict each other; pass one")
    s = extract_features(
        dataroot, version, split, out, teacher=teacher, weights=weights, random_teacher=random_teacher,
        input_size=parse_size(input_size, "--input-size", "224x406"), batch_size=batch_size, device=device, workers=workers, skip_bad=skip_bad, progress=progress,
        standin=StandinConfig(feature_dim=standin_dim, noise=standin_noise),
    )
    done = "already complete" if s.computed == 0 else f"{s.computed} samples in {s.seconds:.1f} s ({s.images_per_s:.1f} images/s)"
    stdout.print(f"{s.out}: {s.samples} samples x {s.feature_shape} float16, {done}", highlight=False)
    if s.skipped:
        console.print(f"[yellow]skipped {len(s.skipped)} samples with unreadable images[/yellow] (valid=False in the file)")
    if s.provenance.source == STANDIN_TEACHER:
        console.print(f"[yellow]{STANDIN_LEGEND}[/yellow]: stamped in the file (teacher={STANDIN_TEACHER})")
    elif not s.provenance.pretrained:
        console.print("[yellow]random-init teacher[/yellow]: pretrained=False is stamped in the file")
