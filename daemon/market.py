"""The market as strategies see it: the bus's latest quotes plus ring-buffer statistics.

Implements `strategies.base.MarketView` over the consolidated view and the ring store.
Windows end at the injected clock's now, so in a backtest they end at the simulated time.
"""

from __future__ import annotations

import math

from daemon.model import Quote
from daemon.ringbuffer import RingStore
from daemon.view import ConsolidatedView
from strategies.base import Clock


class RingMarketView:
    def __init__(self, view: ConsolidatedView, rings: RingStore, clock: Clock) -> None:
        self._view = view
        self._rings = rings
        self._clock = clock

    def quote(self, exchange: str, symbol: str) -> Quote | None:
        return self._view.quote(exchange, symbol)

    def volatility(self, exchange: str, symbol: str, window_s: float) -> float:
        ring = self._rings.quotes(exchange, symbol)
        if ring is None:
            return math.nan
        return ring.volatility(window_s, self._clock()).sigma_per_sqrt_second

    def trade_rate(self, exchange: str, symbol: str, window_s: float) -> float:
        ring = self._rings.trades(exchange, symbol)
        if ring is None:
            return math.nan
        return ring.arrival_rate(window_s, self._clock())
