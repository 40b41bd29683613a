"""Per-key routes for market data: how parsers hand quotes and trades to the bus.

A parser publishes every quote of one (exchange, symbol) to the same place, and it knows
the key before it builds the quote. So instead of one callback that must look the key up
again on every call, a `MarketSink` hands out one publish callable per key, asked for once
when the parser first meets the key. The bus answers with the key's channel (view slot,
ring and subscribers resolved in advance: `daemon.market.bus`); the ring store with the key's
ring; `Callbacks` with the same two plain functions for every key (tests and tools).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from daemon.core.model import Quote, Trade

QuoteCallback = Callable[[Quote], None]
TradeCallback = Callable[[Trade], None]


class MarketSink(Protocol):
    """Hands out the callable that takes every quote (trade) of one (exchange, symbol)."""

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback: ...

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback: ...


def ignore(_event: Quote | Trade) -> None:
    """The route of events a sink does not want (the bus leaves it out of its fan-out)."""


@dataclass(frozen=True, slots=True)
class Callbacks:
    """A `MarketSink` of two plain callbacks, the same for every key."""

    on_quote: QuoteCallback = ignore
    on_trade: TradeCallback = ignore

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback:
        return self.on_quote

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback:
        return self.on_trade
