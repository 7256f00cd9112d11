"""Progress bars that read well both in a terminal and in a log file.

Every stage that can run longer than a few seconds (synth, the devkit load, voxelize, extract, ground
truth, training, evaluation) draws its bar through :func:`progress_bar`. On a terminal it is a plain tqdm
bar, redrawn in place. When stderr is not a terminal (``occfeat demo > log 2>&1``, a batch job, CI), a
redrawn bar would fill the file with carriage returns; there it prints whole lines instead, one at the
start, one whenever another tenth of the work is done or :data:`LOG_INTERVAL_S` seconds have passed,
and one at the end. ``enabled=False`` (``--no-progress``) prints nothing at all.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
"""At most this long between two lines of a bar in a log file."""
LOG_STEPS = 10
"""A line in a log file whenever another 1/LOG_STEPS of the total is done."""
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
"""A log line without the drawn bar (``#####     ``), which says nothing a percentage does not."""


class LogLines(tqdm):
    """A tqdm bar that writes whole lines (no ``\\r`` redraws), rate-limited as the module says.

    tqdm calls :meth:`display` on every refresh (``mininterval=0``); this class decides whether the
    refresh deserves a line. :meth:`close` writes the final one unless the last line already said it."""

    monitor_interval = 0  # no monitor thread: lines are written from update() only

    def __init__(self, iterable=None, *args, **kwargs):
        kwargs.update(mininterval=0, miniters=1, dynamic_ncols=False)
        if kwargs.get("total") is not None or hasattr(iterable, "__len__"):
            kwargs.setdefault("bar_format", LOG_FORMAT)  # needs a total for the percentage
        self._line_t: float | None = None  # when the last line was written
        self._line_n: float | None = None  # the count it showed
        self._line_step = -1  # the tenth of the total it was in
        super().__init__(iterable, *args, **kwargs)

    def _tenth(self) -> int:
        return int(LOG_STEPS * self.n / self.total) if self.total else 0

    def _write_line(self) -> None:
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._line_t, self._line_n, self._line_step = time.monotonic(), self.n, self._tenth()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # tqdm clearing its line: nothing was drawn in place to clear
            return False
        if self._line_t is None and not past_delay(self):
            return False  # a refresh (e.g. set_description) before the delay: still nothing to show
        due = self._line_t is None or time.monotonic() - self._line_t >= LOG_INTERVAL_S or self._tenth() > self._line_step
        if due:
            self._write_line()
        return due

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.set_description_str(desc, refresh)  # LOG_FORMAT puts the colon after {desc} itself

    def close(self) -> None:
        if not self.disable and self._line_t is not None and self.n != self._line_n:
            self._ema_dt = lambda: None  # the final line shows the overall rate, as tqdm's own does
            self._write_line()
        self.leave = False  # tqdm's own close would redraw the bar and end it with another newline
        super().close()


def past_delay(bar: tqdm) -> bool:
    """Whether an enabled ``bar`` has outlived its ``delay`` (is, or may now be, on screen)."""
    return not bar.disable and bar.format_dict["elapsed"] >= bar.delay


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (default stderr, where bars go) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    enabled: bool = True,
    unit: str = "it",
    initial: int = 0,
    delay: float = 0.0,
    **kwargs,
) -> tqdm:
    """A tqdm bar for a stage: redrawn in place on a terminal, whole lines in a log file, silent when
    ``enabled`` is False. ``delay``: show nothing unless the work takes longer than this many seconds
    (e.g. the devkit load, instant on a small world, ~a minute on v1.0-trainval)."""
    common = dict(total=total, desc=desc, unit=unit, initial=initial, delay=delay, disable=not enabled, **kwargs)
    if not enabled or is_terminal():
        return tqdm(iterable, dynamic_ncols=True, mininterval=1.0, **common)
    return LogLines(iterable, **common)
