"""The ``occfeat`` command (console script ``occfeat``, or ``python -m occfeat``).

Each command is a plain function in its own module (parse options, load the config, call the library,
print a summary); this module builds the Typer app and registers them in pipeline order. The command
modules never import this one, so there is no import circle.
"""

from __future__ import annotations

import typer

from occfeat.cli import demo, evaluate, export, extract, finetune, pretrain, report, synth, voxelize


def version() -> None:
    """Print the toolkit version."""
    from occfeat import __version__

    typer.echo(__version__)


app = typer.Typer(
    name="occfeat",
    help="Self-supervised OccFeat pretraining of camera-only BEV segmentation networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("version")(version)
app.command("synth")(synth.synth)
app.command("voxelize")(voxelize.voxelize)
app.command("extract")(extract.extract)
app.command("pretrain")(pretrain.pretrain)
app.command("finetune")(finetune.finetune)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("export")(export.export)
app.command("demo")(demo.demo)
# study passes its extra key=value arguments (recipe overrides) through ctx.args
app.command("study", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(demo.study)
