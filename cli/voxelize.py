"""``occfeat voxelize``: LiDAR → the occupancy cache (HDF5: the points that make the occupancy grids)."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import console, one_line_errors, out as stdout
from occfeat.data.voxelize import VoxelizeConfig
from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid

_D = VoxelizeConfig()


@one_line_errors
def voxelize(
    dataroot: Path = typer.Option(..., help="nuScenes-format dataroot (the folder that holds VERSION/, samples/, sweeps/)."),
    version: str = typer.Option(..., help="Dataroot version: v1.0-trainval, v1.0-mini (or v1.0-test)."),
    out: Path = typer.Option(..., help="Output HDF5 file; an unfinished run's blocks live in OUT.parts/ until done."),
    split: str = typer.Option(
        "train", help="Split resolved by the nuscenes-devkit (train, val, mini_train, ... or a name from splits.json); 'all' = every scene."
    ),
    sweeps: int = typer.Option(_D.sweeps, min=1, help="LiDAR sweeps per key frame: the key frame and SWEEPS-1 previous ones (1 = the paper)."),
    recipe: Path = typer.Option(
        None, help="Pretraining recipe whose grid to build on (e.g. recipes/pretrain/synthetic-tiny.yaml): the grid is declared once, in the recipe that will read this cache."
    ),
    grid: str = typer.Option(None, help="Instead of --recipe: 'default' (the paper's 200x200x8 grid, +-50 m at 0.5 m, also when neither is given) or a JSON file with bounds and shape."),
    workers: int = typer.Option(_D.workers, min=0, help="Worker processes that read, transform and voxelize in parallel; 0 = main process only."),
    skip_bad: bool = typer.Option(
        _D.skip_bad, "--skip-bad", help="Skip samples with a missing/truncated LiDAR file or missing ego pose (listed at the end, recorded in OUT)."
    ),
    block_size: int = typer.Option(_D.block_size, min=1, help="Samples per crash-safe block: a kill -9 loses at most one block of work."),
    progress: bool = typer.Option(True, help="Show a progress bar with samples/s and ETA."),
) -> None:
    """Cache the LiDAR of every key frame of a split for occupancy targets (resumable, idempotent).

    A voxel is occupied when at least one LiDAR point (ego frame at the key-frame LiDAR timestamp, ego-body returns dropped) falls inside it. The cache keeps those points (cropped to what any camera's reference frame can put on the grid), so training voxelizes them in the reference frame it draws.

    Rerunning the same command resumes a killed run; a finished file is left as is. A file made with another grid, sweep count, split or dataroot is refused.
    """
    from occfeat.data.voxelize import build_occupancy

    s = build_occupancy(
        dataroot, version, split, out, grid_from_options(recipe, grid),
        sweeps=sweeps, workers=workers, skip_bad=skip_bad, block_size=block_size, progress=progress,
    )
    if s.already_complete:
        stdout.print(f"{s.out} is already complete ({s.samples} samples); nothing to do", highlight=False)
    else:
        rate = s.written / s.seconds if s.seconds else 0.0
        stdout.print(
            f"wrote {s.out}: {s.samples} samples ({s.written} this run, {s.points:,} points, "
            f"{s.seconds:.1f} s, {rate:.1f} samples/s)",
            soft_wrap=True,
        )
    for token, reason in s.skipped:
        console.print(f"skipped {token}: {reason}", markup=False, highlight=False, soft_wrap=True)
    earlier = len(s.skipped_total) - len(s.skipped)
    if earlier > 0:
        console.print(f"{earlier} samples skipped as bad input by an earlier run are recorded in {s.out} (attribute 'skipped')", soft_wrap=True)
    elif s.skipped_total:
        console.print(f"{len(s.skipped_total)} samples skipped; recorded in {s.out} (attribute 'skipped', dataset 'valid')", soft_wrap=True)


def grid_from_options(recipe: Path | None, grid: str | None) -> BevGrid:
    """The grid of ``--recipe`` (a pretraining recipe), or of ``--grid`` ('default' or a JSON spec); one-line errors."""
    if recipe is not None and grid is not None:
        raise OccfeatError(f"give --recipe or --grid, not both (--recipe {recipe} already declares the grid)")
    if recipe is not None:
        from occfeat.config import load_config
        from occfeat.train.pretrain import PretrainConfig

        return load_config(PretrainConfig, recipe).grid
    if grid is not None and Path(grid).suffix.lower() in (".yaml", ".yml"):
        raise OccfeatError(f"--grid takes 'default' or a JSON grid spec, not a recipe; for the grid of {grid} use --recipe {grid}")
    return BevGrid.load(grid)
