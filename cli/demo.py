"""``occfeat demo`` and ``occfeat study``: the whole pipeline, one command (a synthetic world, or a study's dataroot)."""

from __future__ import annotations

from pathlib import Path

import typer

from occfeat.cli.common import choices, console, one_line_errors
from occfeat.cli.report import print_report

PRESETS = {"demo": "studies/demo.yaml", "ci": "studies/ci.yaml"}  # shipped study recipes (occfeat.config.recipes_root)
Preset = choices("Preset", PRESETS)


@one_line_errors
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for every artefact (dataroot, caches, runs, report)."),
    preset: Preset = typer.Option("demo", "--preset", help="demo (≤15 min on a 2-core CPU) or ci (smaller, for the tests)."),
    progress: bool = typer.Option(True, help="Show each stage's progress (bars on a terminal, periodic lines in a log file)."),
) -> None:
    """synth → voxelize → extract (random teacher, stamped) → pretrain → finetune at 1/10/100 % with and
    without pretraining → report, on the CPU. Rerun to resume; finished stages are skipped."""
    from occfeat.config import recipes_root
    from occfeat.pipeline import load_study

    # the shipped file itself, never a same-named file under the current directory
    _run(load_study(recipes_root() / PRESETS[preset.value]), out, progress)


@one_line_errors
def study(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="A study recipe: a YAML path, or a shipped study's name (e.g. synthetic = recipes/studies/synthetic.yaml)."),
    out: Path = typer.Option(..., "--out", help="Folder for every artefact."),
    progress: bool = typer.Option(True, help="Show each stage's progress (bars on a terminal, periodic lines in a log file)."),
) -> None:
    """Run (or resume) a study recipe: pretrainings × tasks × label fractions × seeds (and nuScenes-C
    corruptions, when listed), then the report. Extra key=value arguments override the recipe (e.g.
    seeds=[0,1,2]); on nuScenes: occfeat study nuscenes-table1 --out runs/table1 dataroot=/data/nuscenes
    (the dataroot is only read; docs/studies.md)."""
    from occfeat.pipeline import load_study

    _run(load_study(recipe, ctx.args), out, progress)


def _run(cfg, out: Path, progress: bool) -> None:
    from occfeat.pipeline import run_study

    res = run_study(cfg, out, console=console, progress=progress)
    print_report(res)
    console.print(f"[bold green]done[/]: every artefact is under {out}; pipeline.json has the seconds per stage")
