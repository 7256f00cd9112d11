"""The ``occfeat`` command (console script ``occfeat``, or ``python -m occfeat``).

Each command is a plain function in its own module (parse options, load the config, call the library,
print a summary); this module builds the Typer app and registers them in pipeline order. The command
modules never import this one, so there is no import circle.
"""

from __future__ import annotations

import typer

from occfeat.cli import demo, evaluate, export, extract, finetune, inspect, pretrain, report, synth, voxelize


def version() -> None:
    """Print the toolkit version."""
    from occfeat import __version__

    typer.echo(__version__)


def _print_version(value: bool) -> None:
    if value:
        version()
        raise typer.Exit()


app = typer.Typer(
    name="occfeat",
    help="Self-supervised OccFeat pretraining of camera-only BEV segmentation networks.\n\n"
    "Pipeline: synth → voxelize → extract → pretrain → finetune → evaluate → report (demo / study: all of it). "
    "Results go to stdout, progress and notes to stderr.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(
    show_version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Self-supervised OccFeat pretraining of camera-only BEV segmentation networks."""


app.command("version")(version)
app.command("synth")(synth.synth)
app.command("voxelize")(voxelize.voxelize)
app.command("extract")(extract.extract)
app.command("pretrain")(pretrain.pretrain)
app.command("finetune")(finetune.finetune)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("export")(export.export)
app.command("inspect")(inspect.inspect)
app.command("demo")(demo.demo)
# study passes its extra key=value arguments (recipe overrides) through ctx.args
app.command("study", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(demo.study)
