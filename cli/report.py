"""``occfeat report RUN_DIR... --out DIR``: the paper's Table 1 (and Fig. 4) from finetune runs, and the
pictures of pretraining runs (Fig. 5-6, occupancy, loss curves)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from occfeat.cli.common import console, one_line_errors, out as stdout, print_json


@one_line_errors
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Finetune run dirs (each holds metrics.json) and pretraining runs (their pictures go to OUT/pretrain-RUN/); other folders (gt-cache/, unfinished runs) are skipped with a note, so `runs/*` works."),
    out: Path = typer.Option(..., "--out", help="Folder for table.md, table.csv, summary.csv and the PNG plots."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG plots (and the pretraining runs' pictures)."),
    progress: bool = typer.Option(True, help="Show progress while a pretraining run's data loads for its pictures."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (one record per row and column: mean, std, n, delta) as JSON on stdout."),
) -> None:
    """Group finetune runs by architecture, backbone, pretraining, task and label fraction; print and write the
    table (and the robustness table/chart when runs were evaluated under corruptions); draw each pretraining
    run's pictures."""
    from occfeat.report import write_report

    res = write_report(run_dirs, out, plots=plots, progress=progress)
    for line in res["skipped"]:
        console.print(f"skipped {line}", highlight=False)
    if as_json:
        print_json([] if res["summary"] is None else res["summary"].to_dict(orient="records"))
        console.print(f"wrote {', '.join(str(p) for p in res['files'])}", highlight=False)
        return
    print_report(res)


def print_report(res: dict) -> None:
    """The table of :func:`occfeat.report.write_report` on stdout, with its legend (and the robustness
    table when runs were evaluated under corruptions; each pretraining run's pictures); the files written
    on stderr."""
    if res["table"] is not None:
        stdout.print(_rich_table(res["table"], f"BEV segmentation IoU ({len(res['runs'])} runs)"))
        for line in res["legend"]:
            stdout.print(line, highlight=False)
    if res.get("robustness") is not None:
        stdout.print(_rich_table(res["robustness"], "IoU under nuScenes-C corruptions (mean over severities)"))
    for run, files in res.get("pictures", {}).items():
        if files:
            stdout.print(f"pictures of {run}: {files[0].parent}/ ({', '.join(p.name for p in files)})", highlight=False)
    console.print(f"wrote {', '.join(str(p) for p in res['files'])}", highlight=False)


def _rich_table(table, title: str) -> Table:
    """A pandas table with a row MultiIndex as a rich Table: the index levels as bold columns."""
    t = Table(title=title)
    for name in table.index.names:
        t.add_column(name, style="bold", no_wrap=True)
    for col in table.columns:
        t.add_column(col, justify="right", no_wrap=True)
    for key, row in zip(table.index, table.itertuples(index=False)):
        t.add_row(*map(str, key), *row)
    return t
