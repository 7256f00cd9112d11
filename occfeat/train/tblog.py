"""TensorBoard event files of a run, in ``RUN/tensorboard/`` (``tensorboard --logdir runs/`` shows every run
under ``runs/``). One home for the folder and the tag names, shared by the training loop (every scalar of
``metrics.jsonl``, tag ``train/<key>``) and evaluation (images and IoU at evaluation, tag ``eval/...``).

metrics.jsonl stays the run's record; the event files are a view of it for TensorBoard. Only the main
process of a DDP run writes them. On ``--resume`` the loop opens its writer with ``purge_step`` = the first
step it will log, so the steps logged after the checkpoint by the killed invocation (dropped from
metrics.jsonl too) are discarded by TensorBoard instead of being drawn twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from occfeat.errors import OccfeatError
from occfeat.files import writing

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

TB_DIR = "tensorboard"
"""The event files' folder inside a run dir."""
TRAIN_PREFIX = "train"
"""Tag prefix of the training loop's scalars (``train/loss``, ``train/lr``, ...)."""


def tb_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TB_DIR


def open_writer(run_dir: str | Path, purge_step: int | None = None, suffix: str = "") -> SummaryWriter:
    """A SummaryWriter on ``RUN/tensorboard/``. ``purge_step``: TensorBoard drops events at this step and
    later from the files written before (a resumed run). ``suffix`` ends the new event file's name (e.g.
    ``.eval``), so several writers of one run are told apart on disk. Close it when done (flushes)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard is a dependency; an environment installed without it
        raise OccfeatError(f"TensorBoard logging needs the tensorboard package ({e}); pip install tensorboard") from None
    path = tb_dir(run_dir)
    with writing(path, then="rerun with --resume"):
        return SummaryWriter(str(path), purge_step=purge_step, filename_suffix=suffix)


def log_scalars(writer: SummaryWriter, row: dict, step: int, prefix: str = TRAIN_PREFIX) -> None:
    """Every numeric value of ``row`` (a metrics.jsonl row; nested dicts as ``a/b``) as ``prefix/key`` at
    ``step``. The ``step`` key itself is the x axis, not a scalar."""
    for key, value in _flat(row).items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"{prefix}/{key}", value, step)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
