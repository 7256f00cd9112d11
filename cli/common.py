"""What every command shares: one-line errors, and the console."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from occfeat.errors import OccfeatError

console = Console(stderr=True)


def one_line_errors(fn):
    """Turn an :class:`OccfeatError` into ``error: <message>`` on stderr and exit status 2.

    Keyboard interrupts exit 130 with a note that a rerun resumes (every stage is resumable).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OccfeatError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def parse_size(text: str, what: str = "--image-size") -> tuple[int, int]:
    """``"1600x900"`` → (width, height); one-line error otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise OccfeatError(f"{what} must look like WIDTHxHEIGHT with positive integers (e.g. 1600x900), got '{text}'") from None
    return w, h
