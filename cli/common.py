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
