"""The consolidated top-of-book view: latest quote per venue for each symbol.

Serialises to the JSON shape of crypto-pipe.txt:

    {"event_time": 1723161599999,
     "binance_spot": {"symbol": "BTC/USDT", "top_bid": "61685.99", "top_bid_quantity": "1.25869",
                      "top_ask": "61686.0", "top_ask_quantity": "2.44807"},
     "bybit_spot": {...}}

`event_time` is the local receive time (ms since the epoch, UTC) of the newest quote in the
view: one clock for every venue (Binance spot sends no event time of its own). Prices and
sizes are decimal strings, as in the seed, so no consumer loses precision to float parsing.
A venue whose quote is flagged stale carries `"stale": true`.
"""

from __future__ import annotations

from typing import Any

import orjson

from daemon.core.model import Quote


class ConsolidatedView:
    """Latest quote per (exchange, symbol), indexed by symbol for the cross-venue view."""

    __slots__ = ("_by_symbol",)

    def __init__(self) -> None:
        self._by_symbol: dict[str, dict[str, Quote]] = {}

    def update(self, quote: Quote) -> None:
        self.slot(quote.symbol)[quote.exchange] = quote

    def slot(self, symbol: str) -> dict[str, Quote]:
        """The live venue -> latest quote mapping of a symbol, created if new: the bus
        holds it per key and writes each quote straight into it."""
        venues = self._by_symbol.get(symbol)
        if venues is None:
            venues = self._by_symbol[symbol] = {}
        return venues

    def quote(self, exchange: str, symbol: str) -> Quote | None:
        venues = self._by_symbol.get(symbol)
        return venues.get(exchange) if venues else None

    def quotes(self, symbol: str) -> dict[str, Quote]:
        """Latest quote per venue for a symbol (a live mapping: do not mutate)."""
        return self._by_symbol.get(symbol, {})

    def symbols(self) -> list[str]:
        return list(self._by_symbol)

    def all_quotes(self) -> list[Quote]:
        return [q for venues in self._by_symbol.values() for q in venues.values()]

    def to_dict(self, symbol: str) -> dict[str, Any]:
        venues = self.quotes(symbol)
        newest = max((q.local_ts_ns for q in venues.values()), default=0)
        view: dict[str, Any] = {"event_time": newest // 1_000_000}
        for exchange, quote in venues.items():
            entry = {
                "symbol": quote.symbol,
                "top_bid": _decimal(quote.bid),
                "top_bid_quantity": _decimal(quote.bid_qty),
                "top_ask": _decimal(quote.ask),
                "top_ask_quantity": _decimal(quote.ask_qty),
            }
            if quote.stale:
                entry["stale"] = True
            view[exchange] = entry
        return view

    def to_json(self, symbol: str) -> bytes:
        return orjson.dumps(self.to_dict(symbol))


def _decimal(value: float) -> str:
    # repr of a float is the shortest string that round-trips: "61685.99", not 61685.98999...
    return repr(value)

