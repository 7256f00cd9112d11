"""The ``occfeat`` console script. Each command lives in its own module and stays thin:
parse options, load the config, call the library, print a summary."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="occfeat",
    help="Self-supervised OccFeat pretraining of camera-only BEV segmentation networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("version")
def version() -> None:
    """Print the toolkit version."""
    from occfeat import __version__

    typer.echo(__version__)


# Commands register themselves on `app` when their module is imported: one import per stage, pipeline order.
# fmt: off
# (stage imports below)
import cli.synth  # noqa: E402,F401
import cli.voxelize  # noqa: E402,F401
import cli.extract  # noqa: E402,F401
import cli.pretrain  # noqa: E402,F401
import cli.finetune  # noqa: E402,F401
import cli.evaluate  # noqa: E402,F401
import cli.report  # noqa: E402,F401
import cli.demo  # noqa: E402,F401
# fmt: on

if __name__ == "__main__":
    app()
