"""``occfeat inspect RUN --out DIR``: the pictures of a pretraining run (paper Fig. 5-6's features, the
occupancy target, the losses), the same files ``occfeat report`` writes for it."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import console, one_line_errors, out as stdout


@one_line_errors
def inspect(
    run: Path = typer.Argument(..., help="Run dir of `occfeat pretrain` (its checkpoints/last.pt), or a checkpoint file in one; without the features objective only occupancy.png and loss.png."),
    out: Path = typer.Option(..., help="Folder to write features_bev.png, features_3d.png, correlation.png, teacher.png, occupancy.png and loss.png to."),
    sample: int = typer.Option(0, help="Index in the split of the sample whose PCA colours every picture."),
    other: int = typer.Option(-1, help="Index of the second sample coloured with the first one's PCA (-1: the split's last)."),
    column: str = typer.Option(None, help="BEV column X,Y (cells) whose top occupied voxel the correlation map is against (default: the one nearest the ego whose top voxel stands above the ground and that a camera sees)."),
    camera: int = typer.Option(None, help="Camera index of the teacher picture (default: the camera that sees the chosen voxel)."),
    split: str = typer.Option(None, help="Split to take samples from (default: the run's)."),
    dataroot: Path = typer.Option(None, help="Dataroot, if it moved since pretraining (default: the one the run recorded)."),
    version: str = typer.Option(None, help="Dataroot version (default: the run's)."),
    occupancy: Path = typer.Option(None, help="Occupancy cache (default: the run's)."),
    features: Path = typer.Option(None, help="Teacher features cache (default: the run's)."),
) -> None:
    """Predicted 3D features as PCA colours from above and in 3D (a second sample with the same colours), their
    correlation with one voxel, the teacher's maps beside the camera image, the occupancy target beside the
    LiDAR, and the loss curves (paper Fig. 5-6)."""
    from occfeat.errors import OccfeatError
    from occfeat.feature_pictures import write_pretraining_pictures

    try:
        col = tuple(int(v) for v in column.split(",")) if column else None
    except ValueError:
        col = ()
    if col is not None and len(col) != 2:
        raise OccfeatError(f"--column {column!r} is not X,Y in cells; write e.g. --column 100,120")
    paths = write_pretraining_pictures(run, out, sample=sample, other=other, column=col, camera=camera, dataroot=dataroot, version=version,
                                       occupancy=occupancy, features=features, split=split)
    console.print(f"{len(paths)} pictures of {run}", highlight=False)
    for path in paths:
        stdout.print(str(path), highlight=False)
