"""What every command shares: one-line errors, and the console."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console

from occfeat.errors import OccfeatError

console = Console(stderr=True)


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


def parse_size(text: str, what: str = "--image-size", order: str = "WIDTHxHEIGHT", example: str = "1600x900") -> tuple[int, int]:
    """``"1600x900"`` → (1600, 900), in the ``order`` the option documents; one-line error otherwise.

    Image sizes of the synthetic world are WIDTHxHEIGHT (as camera specs are written); network and
    teacher input sizes are HEIGHTxWIDTH (as the paper writes 224x400 and timm takes img_size)."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
        if a <= 0 or b <= 0:
            raise ValueError
    except ValueError:
        raise OccfeatError(f"{what} must look like {order} with positive integers (e.g. {example}), got '{text}'") from None
    return a, b
