"""``occfeat export RUN --format timm|safetensors --out FILE``: a run's weights for use outside occfeat."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import one_line_errors


@one_line_errors
def export(
    run: Path = typer.Argument(..., help="Run dir of `occfeat pretrain` or `occfeat finetune` (its checkpoints/last.pt), or a checkpoint file in one."),
    fmt: str = typer.Option(..., "--format", help="timm: the image backbone as a state dict of the timm model of the same name (strict=True); "
                            "safetensors: the whole BEV network (no heads) with its config, for occfeat.export.load_network."),
    out: Path = typer.Option(..., help="File to write: *.safetensors (metadata inside), or for --format timm any other name for a torch "
                             "file {'state_dict', 'meta'}."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Export a run's pretrained image backbone (timm) or BEV network (safetensors); the keys a run never trained are named in the file and here."""
    from occfeat.export import describe, export as run_export

    meta = run_export(run, fmt, out, overwrite=overwrite)
    typer.echo(describe(meta, out))
