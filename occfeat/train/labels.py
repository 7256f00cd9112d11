"""The labelled subset of a finetuning run (paper §4.1): the paper's hyper-parameters per label fraction
(:data:`FRACTION_DEFAULTS`), the seeded, nested selection rule (:func:`select_labelled`) and the run dir's
``labelled_tokens.txt``."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from occfeat.errors import OccfeatError
from occfeat.files import write_text_atomic

# Paper §4.1: epochs / starting lr / batch size / gradient accumulation per label fraction, with AdamW,
# OneCycle and weight decay 1e-7. A fraction between two rows takes the next larger row.
FRACTION_DEFAULTS: dict[float, dict] = {
    0.01: {"epochs": 100, "lr": 1e-4, "batch_size": 6, "grad_accum": 1},
    0.1: {"epochs": 50, "lr": 1e-4, "batch_size": 6, "grad_accum": 1},
    1.0: {"epochs": 30, "lr": 3e-4, "batch_size": 8, "grad_accum": 5},
}
FINETUNE_OPTIM = {"optimizer": "adamw", "schedule": "onecycle", "weight_decay": 1e-7}
LABELLED_TOKENS = "labelled_tokens.txt"


def fraction_defaults(fraction: float) -> dict:
    """The :data:`FRACTION_DEFAULTS` row for ``fraction`` (the smallest tabulated fraction >= it)."""
    check_fraction(fraction)
    key = min(f for f in FRACTION_DEFAULTS if f >= fraction - 1e-12)
    return dict(FRACTION_DEFAULTS[key])


def check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise OccfeatError(f"--fraction must be in (0, 1] (e.g. 0.01, 0.1, 1.0), got {fraction}")
    return float(fraction)



def select_labelled(tokens: list[str], fraction: float, seed: int) -> list[str]:
    """The labelled subset: rank tokens by sha256("<seed>:<token>") and keep the first ceil(f·N) (>= 1).

    Deterministic (no RNG state, independent of the tokens' order) and nested: for one seed the 1 %
    subset is inside the 10 % one, which is inside the full split. Returned in ranking order.
    """
    check_fraction(fraction)
    if not tokens:
        raise OccfeatError("the training split has no samples; check --split")
    ranked = sorted(set(tokens), key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    n = max(1, math.ceil(fraction * len(ranked) - 1e-9))
    return ranked[:n]


def write_tokens(path: Path, tokens: list[str]) -> None:
    write_text_atomic(path, "".join(t + "\n" for t in tokens))


def read_tokens(path: Path) -> list[str]:
    if not path.is_file():
        raise OccfeatError(f"{path} not found; the run dir is incomplete, start it again with occfeat finetune")
    return [t for t in path.read_text().split() if t]


def write_or_check_tokens(path: Path, tokens: list[str]) -> None:
    if path.is_file() and read_tokens(path) != tokens:
        raise OccfeatError(f"{path} lists other labelled samples than this run selects; the dataroot changed, start a new --out")
    write_tokens(path, tokens)
