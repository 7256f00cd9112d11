"""``occfeat inspect RUN --out DIR``: paper Fig. 5-6's feature pictures of a pretraining run for one sample."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import console, one_line_errors, out as stdout


@one_line_errors
def inspect(
    run: Path = typer.Argument(..., help="Run dir of `occfeat pretrain` with the features objective (its checkpoints/last.pt), or a checkpoint file in one."),
    out: Path = typer.Option(..., help="Folder to write pca.png, correlation.png and teacher.png to."),
    sample: int = typer.Option(0, help="Index in the split of the sample whose PCA colours every picture."),
    other: int = typer.Option(-1, help="Index of the second sample coloured with the first one's PCA (-1: the split's last)."),
    column: str = typer.Option(None, help="BEV column X,Y (cells) whose top occupied voxel the correlation map is against (default: the occupied one nearest the centre)."),
    camera: int = typer.Option(0, help="Camera index of the teacher pictures."),
    split: str = typer.Option(None, help="Split to take samples from (default: the run's)."),
    dataroot: Path = typer.Option(None, help="Dataroot, if it moved since pretraining (default: the one the run recorded)."),
    version: str = typer.Option(None, help="Dataroot version (default: the run's)."),
    occupancy: Path = typer.Option(None, help="Occupancy cache (default: the run's)."),
    features: Path = typer.Option(None, help="Teacher features cache (default: the run's)."),
) -> None:
    """Predicted 3D features as PCA colours seen from above (a second sample with the same colours), their
    correlation with one voxel, and the teacher's maps the same way (paper Fig. 5-6)."""
    from occfeat.errors import OccfeatError
    from occfeat.feature_pictures import draw_pictures, load_task, sample_features

    try:
        col = tuple(int(v) for v in column.split(",")) if column else None
    except ValueError:
        col = ()
    if col is not None and len(col) != 2:
        raise OccfeatError(f"--column {column!r} is not X,Y in cells; write e.g. --column 100,120")
    task = load_task(run, dataroot, version, occupancy, features, split)
    n = len(task.train_set)
    a = sample_features(task, sample)
    b = sample_features(task, other % n if other < 0 else other)
    console.print(f"sample {a.token}: {len(a.occupied)} occupied voxels; other sample {b.token}", highlight=False)
    for path in draw_pictures(a, b, col, out, camera=camera):
        stdout.print(str(path), highlight=False)
