"""``occfeat synth``: write a nuScenes-format dataroot from the procedural world."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from occfeat.cli.common import console, one_line_errors, out as stdout, parse_size
from occfeat.data.synth import SynthConfig, is_complete, write_dataroot

_D = SynthConfig()


@one_line_errors
def synth(
    out: Path = typer.Option(..., "--out", help="dataroot folder to create (must be empty unless --overwrite)"),
    scenes: int = typer.Option(_D.scenes, help="number of scenes (~80/20 train/val, official nuScenes names)"),
    samples_per_scene: int = typer.Option(_D.samples_per_scene, help="key frames per scene (2 Hz)"),
    seed: int = typer.Option(_D.seed, help="same seed, same bytes"),
    sweeps: int = typer.Option(_D.sweeps, help="LiDAR sweeps per key frame, the key frame's included (nuScenes: 10; 1 = key frames only, enough unless you voxelize with --sweeps > 1)"),
    image_size: str = typer.Option("x".join(map(str, _D.image_size[::-1])), help="camera image HEIGHTxWIDTH (occfeat writes every size height first)"),
    version: str = typer.Option(_D.version, help="table folder name: v1.0-mini or v1.0-trainval"),
    map_name: str = typer.Option(_D.map_name, "--map", help="one of the devkit's four map names"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out (a world synth wrote with the same options is kept)"),
    progress: bool = typer.Option(True, help="show progress (a bar on a terminal, periodic lines in a log file)"),
) -> None:
    """Write a synthetic nuScenes-format dataroot (6 cameras, LIDAR_TOP + sweeps, boxes, map).

    Rerunning the same command leaves a finished world as is; a killed run (an --overwrite too) is finished or undone by the next."""
    cfg = SynthConfig(scenes=scenes, samples_per_scene=samples_per_scene, seed=seed, sweeps=sweeps, image_size=parse_size(image_size, "--image-size", "900x1600")[::-1],
                      version=version, map_name=map_name)
    if is_complete(out, cfg):  # rerunning the same command (with or without --overwrite) keeps the same bytes
        stdout.print(f"{out} is already complete (same synth config); nothing to do", highlight=False)
        return
    tic = time.perf_counter()
    timings: dict = {}
    write_dataroot(out, cfg, overwrite=overwrite, timings=timings, progress=progress)
    frames = cfg.scenes * cfg.samples_per_scene
    stdout.print(f"wrote {out}: {cfg.scenes} scenes x {cfg.samples_per_scene} key frames, {cfg.version}, map {cfg.map_name} "
                  f"in {time.perf_counter() - tic:.1f} s ({', '.join(f'{k} {v / frames:.2f}' for k, v in timings.items())} s/frame)")
