"""Time: the constants, the wall clock, and the two clocks a strategy can be given.

Every time in the daemon is integer nanoseconds since the epoch. A strategy never reads the
wall clock: it is handed a `Clock` — a `FeedClock` when trading on a feed (wall time live,
the newest event's receive time in a replay) or a `SimulatedClock` in a backtest (the
receive time of the event being processed) — so the same data gives the same decisions.
"""

from __future__ import annotations

import time
from typing import Protocol

NS_PER_MS = 1_000_000
NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND


def now_ns() -> int:
    """Wall-clock time in integer nanoseconds (the daemon's one clock source in live mode)."""
    return time.time_ns()


class Clock(Protocol):
    """Current time in ns; the feed's clock (wall time live, event time in a backtest)."""

    def __call__(self) -> int: ...


class FeedClock:
    """Wall time on a live feed; the newest event's receive time on a replay."""

    def __init__(self, replaying: bool) -> None:
        self.replaying = replaying
        self.latest_ns = 0

    def observe(self, ts_ns: int) -> None:
        if ts_ns > self.latest_ns:
            self.latest_ns = ts_ns

    #: A replay's clock also moves to a client fill's own time before it is delivered, as
    #: a backtest's simulated clock does (`advance_to`: never back).
    advance_to = observe

    def __call__(self) -> int:
        return self.latest_ns if self.replaying else now_ns()


class SimulatedClock:
    """A backtest's only clock: the receive time of the latest event (never goes back)."""

    __slots__ = ("now_ns",)

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns

    def advance_to(self, ts_ns: int) -> None:
        if ts_ns > self.now_ns:
            self.now_ns = ts_ns
