"""``occfeat report RUN_DIR... --out DIR``: the paper's Table 1 from finetune runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from occfeat.cli.common import console, one_line_errors


@one_line_errors
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Finetune run dirs (each holds metrics.json)."),
    out: Path = typer.Option(..., "--out", help="Folder for table.md, table.csv, summary.csv and the PNG plots."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG plots."),
) -> None:
    """Group finetune runs by architecture, backbone, pretraining, task and label fraction; print and write the table."""
    from occfeat.report import write_report

    print_report(write_report(run_dirs, out, plots=plots))


def print_report(res: dict) -> None:
    """The table of :func:`occfeat.report.write_report` in the terminal, with its legend."""
    table = res["table"]
    t = Table(title=f"BEV segmentation IoU ({len(res['runs'])} runs)")
    for name in table.index.names:
        t.add_column(name, style="bold")
    for col in table.columns:
        t.add_column(col, justify="right")
    for key, row in zip(table.index, table.itertuples(index=False)):
        t.add_row(*map(str, key), *row)
    console.print(t)
    for line in res["legend"]:
        console.print(line, highlight=False)
    console.print(f"wrote {', '.join(str(p) for p in res['files'])}", highlight=False)
