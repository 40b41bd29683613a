"""The progress of the modes that count work done against a total (evaluate, train,
backtest): a bar on a terminal; a backtest also prints plain lines when not on one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from daemon.core.logs import get_logger

log = get_logger("progress")

#: Off a terminal, a backtest logs its progress every this many seconds.
PROGRESS_LINE_EVERY_S = 10.0


def counted_bar(label: str, *fields: str, transient: bool) -> Any:
    """A started rich bar on stderr: `label`, the bar, done/total, one text column per
    format string in `fields` (e.g. "runs {task.fields[last]}"), elapsed and remaining."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                   *(TextColumn(field) for field in fields), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=transient)
    bar.start()
    return bar


class RunProgress:
    """Progress of one long run of counted events (a backtest): on a terminal a rich bar
    with the rate and the time left (ETA); elsewhere (a log file, a pipe, a CI job) a
    plain log line every `every_s` seconds with events done/total, rate and ETA.

    Used as a context manager that gives the engine's progress callback
    `(events, feed_ns)`. `total` is asked each time (the engine knows it only once its
    events are loaded: the cache's row count); None: not known (a bar without an end,
    lines without ETA)."""

    def __init__(self, label: str, total: Callable[[], int | None], *, terminal: bool,
                 every_s: float = PROGRESS_LINE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.terminal = terminal
        self.every_s = every_s
        self.clock = clock
        self._bar: Any = None
        self._task: Any = None
        self._started = 0.0
        self._next_line = 0.0

    def __enter__(self) -> Callable[[int, int], None]:
        self._started = self.clock()
        self._next_line = self._started + self.every_s
        if self.terminal:
            self._bar = counted_bar(self.label, "{task.fields[rate]:>10,.0f} events/s",
                                    "feed {task.fields[feed_time]}", transient=True)
            self._task = self._bar.add_task(self.label, total=None, rate=0.0, feed_time="")
        return self.update

    def update(self, events: int, feed_ns: int) -> None:
        now = self.clock()
        elapsed = now - self._started
        rate = events / elapsed if elapsed > 0 else 0.0
        total = self.total()
        feed_time = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(feed_ns / 1e9))
        if self._bar is not None:
            self._bar.update(self._task, completed=events, total=total, rate=rate,
                             feed_time=feed_time)
        elif now >= self._next_line:
            self._next_line = now + self.every_s
            left = (total - events) / rate if total is not None and rate > 0 else None
            log.info(f"{self.label}_progress", events=events, total=total,
                     percent=round(100 * events / total, 1) if total else None,
                     events_per_s=round(rate), eta_s=round(left, 1) if left is not None
                     else None, feed_time=feed_time)

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()
