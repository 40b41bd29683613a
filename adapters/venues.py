"""Venue frame parsers: pure (no I/O), stateful per connection, never raise on bad input.

Each parser turns the raw frames of one connection into `Quote`/`Trade` callbacks and
counts what it parsed (`counts`) and what it dropped and why (`dropped`). Live adapters
and the replay feed call the same parsers, which is what keeps backtests honest.
"""

from __future__ import annotations

from collections.abc import Mapping

from adapters.binance.parser import BINANCE_VENUES, BinanceParser, detect_binance_market
from adapters.bybit.parser import BYBIT_VENUES, BybitParser
from adapters.common.parsing import (
    FrameParser,
    L2Book,
    ResyncCallback,
    SymbolMapper,
    derive_unified_symbol,
)
from daemon.core.routes import MarketSink

__all__ = [
    "BINANCE_VENUES",
    "BYBIT_VENUES",
    "BinanceParser",
    "BybitParser",
    "FrameParser",
    "L2Book",
    "SymbolMapper",
    "derive_unified_symbol",
    "detect_binance_market",
    "make_parser",
]


def make_parser(
    venue: str,
    sink: MarketSink,
    symbols: Mapping[str, str] | None = None,
    *,
    on_resync: ResyncCallback | None = None,
    books: bool = False,
) -> BinanceParser | BybitParser:
    """The parser for a native venue id (`binance_spot`, ..., `bybit_linear`).

    `books` only matters for Binance, whose top of book comes from bookTicker and whose
    depth book is optional; Bybit's top of book *is* its order-book topic.
    """
    if venue in BINANCE_VENUES:
        return BinanceParser(venue, sink, symbols, on_resync=on_resync, books=books)
    if venue in BYBIT_VENUES:
        return BybitParser(venue, sink, symbols, on_resync=on_resync)
    raise ValueError(f"no frame parser for venue {venue!r}")
