"""What every command shares: one-line errors, the two consoles, option types.

Results (summary lines, tables, ``--json``) go to stdout through ``out``; progress, notes and errors go to
stderr through ``console``, so ``occfeat evaluate RUN > result.txt`` keeps the result and a log keeps the
rest. Piped or redirected, neither console wraps or truncates: a table keeps its columns and a path its
characters (rich would otherwise assume 80 columns).
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console

from occfeat.errors import OccfeatError



def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() else 10_000  # not a terminal: never wrap, never truncate
    return Console(stderr=stderr, width=wide, soft_wrap=wide is not None)


console = _console(stderr=True)
"""Progress, notes and warnings (stderr)."""
out = _console(stderr=False)
"""Results: summary lines and tables (stdout)."""

def choices(name: str, values) -> type[Enum]:
    """A str Enum of fixed option values, so that typer lists them in --help, completes them and refuses
    others; the command reads ``.value``."""
    return Enum(name, {v: v for v in values}, type=str)


DEVICES = ["auto", "cpu", "cuda"]
"""``--device`` choices besides ``cuda:N`` (see :func:`device_option`)."""


def device_option(default: str = "auto"):
    """``--device``, the same on every command that computes: auto (CUDA when there is one, else CPU),
    cpu, cuda or cuda:N."""
    return typer.Option(default, "--device", help="auto (CUDA when available), cpu, cuda or cuda:N.", callback=_check_device)


def _check_device(value: str | None) -> str | None:
    if value is None or value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise typer.BadParameter(f"'{value}' is not one of {', '.join(DEVICES)} or cuda:N")


def require(**options) -> None:
    """One-line error for the first option that is None: options that ``--print-config`` does not need are
    declared optional for typer and checked here."""
    for name, value in options.items():
        if value is None:
            raise OccfeatError(f"missing option --{name.replace('_', '-')} (see --help)")


def print_json(data) -> None:
    """``--json``: one JSON document on stdout, nothing else there. NaN (e.g. the std of one seed) and
    infinities become null, so strict parsers (jq, JSON.parse) read it."""
    import json
    import math

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    print(json.dumps(clean(data), indent=2, default=str, allow_nan=False))


def rerun_advice(kwargs: dict) -> str:
    """After Ctrl-C in a stage whose rerun picks up where it stopped (synth, voxelize, extract, demo, ...)."""
    return "rerun the same command to continue"


def resume_advice(kwargs: dict) -> str:
    """After Ctrl-C in a training run (pretrain, finetune): continuing needs --resume once the run dir is started."""
    from occfeat.train.rundir import run_started

    if kwargs.get("resume"):
        return "rerun the same command (it has --resume) to continue from the last checkpoint"
    if not run_started(Path(kwargs["out"])):
        return "nothing was trained yet; rerun the same command to start again"
    return "rerun the same command with --resume added to continue from the last checkpoint"


def close_progress_bars() -> None:
    """Close every live tqdm bar, so the line printed next stands alone: a bar left open ends its line
    without a newline, and would be drawn again below the message when it is garbage-collected."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def worker_message(text: str) -> str:
    """The error's own line. An OccfeatError raised in a DataLoader worker comes back re-raised as
    "Caught OccfeatError in DataLoader worker process N." plus the worker's whole traceback; its message
    is the traceback's last line."""
    if text.startswith("Caught OccfeatError in DataLoader worker"):
        last = text.rstrip().splitlines()[-1]
        return last.split("OccfeatError: ", 1)[-1]
    return text


def one_line_errors(fn=None, *, on_interrupt: Callable[[dict], str] = rerun_advice):
    """Turn an :class:`OccfeatError` into ``error: <message>`` on stderr and exit status 2.

    Keyboard interrupts exit 130 with how to continue: ``on_interrupt(kwargs)`` of the command
    (``@one_line_errors(on_interrupt=resume_advice)`` for training runs).
    """
    if fn is None:
        return functools.partial(one_line_errors, on_interrupt=on_interrupt)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OccfeatError as e:
            close_progress_bars()
            print(f"error: {worker_message(str(e))}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            close_progress_bars()
            print(f"interrupted: {on_interrupt(kwargs)}", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def parse_size(text: str, what: str, example: str) -> tuple[int, int]:
    """``"224x400"`` → (224, 400): every size on occfeat's command line is HEIGHTxWIDTH, the order of the
    paper ("224x400"), of torch and timm (``img_size``) and of every ``[height, width]`` list in a recipe.

    A size taller than wide is refused: camera images (and the inputs made from them) are landscape, so it
    is nearly always WIDTHxHEIGHT typed by habit; the message gives the swapped form."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise OccfeatError(f"{what} must look like HEIGHTxWIDTH with positive integers (e.g. {example}), got '{text}'") from None
    if h > w:
        raise OccfeatError(f"{what} is HEIGHTxWIDTH and camera images are wider than tall; did you mean {w}x{h}? (got '{text}')")
    return h, w
