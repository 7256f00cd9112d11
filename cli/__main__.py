"""``python -m cli`` / ``torchrun ... -m cli pretrain ...``: the occfeat command without the console
script (which may be a shell shim, e.g. under pyenv). Importing cli.main as a module — not running it
as ``__main__`` — keeps one Typer app that every command registers on."""

from cli.main import app

app(prog_name="occfeat")
