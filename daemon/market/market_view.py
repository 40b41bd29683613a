"""The market as strategies see it: the bus's latest quotes plus ring-buffer statistics.

Implements `strategies.base.MarketView` over the consolidated view and the ring store.
Windows end at the injected clock's now, so in a backtest they end at the simulated time.

Volatility is `QuoteRing.volatility` over the window, computed from each row's squared log
return, taken once as the row arrives and kept while the row is within a window asked for
(`kernels.squared_log_returns`): a sliding window only sums the terms, the same additions
in the same order as the pass that takes the logs (`kernels.sum_squared_returns`), so the
same number. Strategies ask every second for a window of minutes (the inventory maker's
360 s: ~28 k rows of BTC/USDT quotes), and the logs were most of that pass's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from daemon.core.clock import Clock
from daemon.core.model import Quote
from daemon.market import kernels
from daemon.market.ringbuffer import QuoteRing, QuoteWindow, RingStore
from daemon.market.view import ConsolidatedView


@dataclass(slots=True)
class _Terms:
    """A key's rows' `kernels.squared_log_returns` terms, rows [first_row, end_row) of its
    ring (absolute), at `[start, start + end_row - first_row)` of the buffers."""

    ring: QuoteRing
    first_row: int
    end_row: int
    start: int
    local_ts_ns: np.ndarray
    squared: np.ndarray
    previous_mid: float


class RingMarketView:
    def __init__(self, view: ConsolidatedView, rings: RingStore, clock: Clock) -> None:
        self._view = view
        self._rings = rings
        self._clock = clock
        #: Per key and window length (each slides on its own).
        self._terms: dict[tuple[str, str, float], _Terms] = {}

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
        terms = self._terms_of((exchange, symbol, window_s), ring, window,
                               end_row - len(window))
        at = terms.start + (end_row - len(window) - terms.first_row)
        total, count, first_ts_ns, last_ts_ns = kernels.sum_squared_returns(
            terms.local_ts_ns[at:at + len(window)], terms.squared[at:at + len(window)])
        return kernels.volatility_of_returns(total, count, first_ts_ns, last_ts_ns)[1]

    def _terms_of(self, key: tuple[str, str, float], ring: QuoteRing, window: QuoteWindow,
                  first_row: int) -> _Terms:
        """The key's terms, covering the window (rows [first_row, first_row + len(window))
        of `ring`): the rows appended since the last call taken, those before the window
        let go. A window that does not follow on from the last (another ring, a first
        call, or rows not kept) starts over from its own first row."""
        end_row = first_row + len(window)
        terms = self._terms.get(key)
        if (terms is None or terms.ring is not ring or not terms.first_row <= first_row
                or terms.end_row < first_row or terms.end_row > end_row):
            terms = _Terms(ring, first_row, first_row, 0, np.empty(len(window) + 1, np.int64),
                           np.empty(len(window) + 1), math.nan)
            self._terms[key] = terms
        # Let go of the rows before the window.
        terms.start += first_row - terms.first_row
        terms.first_row = first_row
        new = end_row - terms.end_row
        if terms.start + (terms.end_row - first_row) + new > len(terms.squared):
            self._make_room(terms, end_row - first_row)
        at = terms.start + terms.end_row - first_row
        fresh = slice(len(window) - new, len(window))
        terms.local_ts_ns[at:at + new] = window.local_ts_ns[fresh]
        terms.previous_mid = kernels.squared_log_returns(
            window.bid[fresh], window.ask[fresh], terms.previous_mid,
            terms.squared[at:at + new])
        terms.end_row = end_row
        return terms

    @staticmethod
    def _make_room(terms: _Terms, rows: int) -> None:
        """Move the kept terms to the start of buffers with room for `rows` (twice that)."""
        kept = slice(terms.start, terms.start + terms.end_row - terms.first_row)
        size = max(2 * rows, len(terms.squared))
        local_ts_ns, squared = np.empty(size, np.int64), np.empty(size)
        count = kept.stop - kept.start
        local_ts_ns[:count], squared[:count] = terms.local_ts_ns[kept], terms.squared[kept]
        terms.local_ts_ns, terms.squared, terms.start = local_ts_ns, squared, 0

    def trade_rate(self, exchange: str, symbol: str, window_s: float) -> float:
        ring = self._rings.trades(exchange, symbol)
        if ring is None:
            return math.nan
        return ring.arrival_rate(window_s, self._clock())
