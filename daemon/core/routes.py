"""Per-key routes for market data: how parsers hand quotes and trades to the bus.

A parser publishes every quote of one (exchange, symbol) to the same place, and it knows
the key before it builds the quote. So instead of one callback that must look the key up
again on every call, a `MarketSink` hands out one publish callable per key, asked for once
when the parser first meets the key. The bus answers with the key's channel (view slot,
ring and subscribers resolved in advance: `daemon.market.bus`); the ring store with the key's
ring; `Callbacks` with the same two plain functions for every key (tests and tools).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from daemon.core.model import Quote, Trade

QuoteCallback = Callable[[Quote], None]
TradeCallback = Callable[[Trade], None]
#: (price, size) pairs of one book side: absolute sizes, size 0 removes the level.
Levels = Iterable[tuple[float, float]]
#: A change to the depth book of one key: (local_ts_ns, reset, bids, asks), the receive
#: time of the frame that carried it (0: not from a frame, a reconnect). `reset`: the
#: book is now exactly these levels (a snapshot; empty: the book was lost); else they
#: update it. The levels are only valid during the call (a parser may hand its own
#: book's views).
DepthCallback = Callable[[int, bool, Levels, Levels], None]
#: The same with the key first: (exchange, symbol, local_ts_ns, reset, bids, asks).
KeyedDepthCallback = Callable[[str, str, int, bool, Levels, Levels], None]


class MarketSink(Protocol):
    """Hands out the callable that takes every quote (trade) of one (exchange, symbol).

    A sink may also have `depth_route(exchange, symbol) -> DepthCallback | None`: where a
    parser that keeps depth books sends their changes (None: not wanted); `depth_route`
    below asks for it."""

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback: ...

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback: ...


def depth_route(sink: MarketSink, exchange: str, symbol: str) -> DepthCallback | None:
    """The sink's depth route of a key, None when it wants no depth (or has no such route)."""
    route = getattr(sink, "depth_route", None)
    return route(exchange, symbol) if route is not None else None


def ignore(_event: Quote | Trade) -> None:
    """The route of events a sink does not want (the bus leaves it out of its fan-out)."""


@dataclass(frozen=True, slots=True)
class Callbacks:
    """A `MarketSink` of two plain callbacks, the same for every key."""

    on_quote: QuoteCallback = ignore
    on_trade: TradeCallback = ignore
    #: Depth book changes of every key (None: depth not wanted).
    on_depth: KeyedDepthCallback | None = None

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback:
        return self.on_quote

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback:
        return self.on_trade

    def depth_route(self, exchange: str, symbol: str) -> DepthCallback | None:
        return None if self.on_depth is None else partial(self.on_depth, exchange, symbol)
