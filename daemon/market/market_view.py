"""The market as strategies see it: the bus's latest quotes plus ring-buffer statistics.

Implements `strategies.base.MarketView` over the consolidated view and the ring store.
Windows end at the injected clock's now, so in a backtest they end at the simulated time.

Volatility is `QuoteRing.volatility` over the window, computed so that a window whose
first row has not changed since the last call resumes the kernel's pass over the rows
appended since, instead of starting over (`kernels.accumulate_log_returns`): the same
additions in the same order, so the same number. Strategies ask every second for a
window of minutes, so until the window has filled (the first minutes of a run or a
backtest) each call reads a second of rows instead of all of them; once it slides, each
call is a full pass, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from daemon.core.clock import Clock
from daemon.core.model import Quote
from daemon.market import kernels
from daemon.market.ringbuffer import QuoteRing, RingStore
from daemon.market.view import ConsolidatedView

#: The state of a kernel pass over no rows.
_EMPTY_PASS = (0.0, 0, math.nan, 0, 0)


@dataclass(slots=True)
class _VolatilityPass:
    """Where the last volatility pass over a key's window stopped, in absolute rows."""

    ring: QuoteRing
    first_row: int
    end_row: int
    state: tuple[float, int, float, int, int]


class RingMarketView:
    def __init__(self, view: ConsolidatedView, rings: RingStore, clock: Clock) -> None:
        self._view = view
        self._rings = rings
        self._clock = clock
        self._passes: dict[tuple[str, str, float], _VolatilityPass] = {}

    def quote(self, exchange: str, symbol: str) -> Quote | None:
        return self._view.quote(exchange, symbol)

    def volatility(self, exchange: str, symbol: str, window_s: float) -> float:
        ring = self._rings.quotes(exchange, symbol)
        if ring is None:
            return math.nan
        now = self._clock()
        window = ring.window(window_s, now)
        newest = ring.newest_ts_ns
        if newest is None or newest > now:
            # Rows after now: the window is not the ring's tail, rows cannot be counted.
            return ring.volatility(window_s, now).sigma_per_sqrt_second
        # The window is the ring's last len(window) rows; rows never change once written.
        end_row = ring.total_rows
        first_row = end_row - len(window)
        key = (exchange, symbol, window_s)
        last = self._passes.get(key)
        if (last is not None and last.ring is ring and last.first_row == first_row
                and last.end_row <= end_row):
            done = last.end_row - first_row
            state = kernels.accumulate_log_returns(
                window.local_ts_ns[done:], window.bid[done:], window.ask[done:], *last.state)
        else:
            state = kernels.accumulate_log_returns(
                window.local_ts_ns, window.bid, window.ask, *_EMPTY_PASS)
        self._passes[key] = _VolatilityPass(ring, first_row, end_row, state)
        total, count, _, first_ts_ns, last_ts_ns = state
        return kernels.volatility_of_returns(total, count, first_ts_ns, last_ts_ns)[1]

    def trade_rate(self, exchange: str, symbol: str, window_s: float) -> float:
        ring = self._rings.trades(exchange, symbol)
        if ring is None:
            return math.nan
        return ring.arrival_rate(window_s, self._clock())
