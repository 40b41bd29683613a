"""Binance spot and USD-M wire messages as typed records, each owning its conversion.

The msgspec decoders build these straight from the frame bytes (no intermediate dict) and
validate every value on the way (`Price`, `Size`, `Millis`: see adapters/common/parsing.py).
The parser's fast path and slow path both end in the same `to_quote` / `to_trade`, so a
message kind becomes a model record in exactly one place.

gc=False: these records hold no reference cycles, so the cyclic GC need not track them.
"""

from __future__ import annotations

import msgspec

from adapters.common.parsing import Level, Millis, Price, Size
from daemon.core.clock import NS_PER_MS
from daemon.core.model import Quote, Trade


class BookTicker(msgspec.Struct, gc=False):
    """`<sym>@bookTicker`. Spot sends no event time; USD-M adds e, E (event) and T."""

    u: int
    s: str
    b: Price
    B: Size
    a: Price
    A: Size
    E: Millis = 0
    T: Millis = 0

    def to_quote(self, venue: str, symbol: str, local_ts_ns: int) -> Quote:
        # USD-M: T is the matching-engine time of the top change, E when it was sent.
        return Quote(venue, symbol, self.b, self.B, self.a, self.A,
                     (self.T or self.E) * NS_PER_MS, local_ts_ns, self.u)


class TradeEvent(msgspec.Struct, gc=False):
    """`<sym>@trade`. m: the buyer is the maker, i.e. the taker sold."""

    s: str
    t: int
    p: Price
    q: Size
    T: Millis
    m: bool

    def to_trade(self, venue: str, symbol: str, local_ts_ns: int) -> Trade:
        return Trade(venue, symbol, self.p, self.q, "sell" if self.m else "buy",
                     self.T * NS_PER_MS, local_ts_ns, str(self.t))


class AggTradeEvent(msgspec.Struct, gc=False):
    """`<sym>@aggTrade`: one print per taker order and price; `a` is the aggregate id."""

    s: str
    a: int
    p: Price
    q: Size
    T: Millis
    m: bool

    def to_trade(self, venue: str, symbol: str, local_ts_ns: int) -> Trade:
        # "a" prefix: an aggregate id must never be mistaken for a plain trade id.
        return Trade(venue, symbol, self.p, self.q, "sell" if self.m else "buy",
                     self.T * NS_PER_MS, local_ts_ns, f"a{self.a}")


class DepthDiff(msgspec.Struct, gc=False):
    """`<sym>@depth[@100ms|@0ms|@250ms|@500ms]`: absolute sizes for changed levels."""

    s: str
    U: int
    u: int
    b: list[Level]
    a: list[Level]
    E: Millis = 0
    T: Millis = 0
    pu: int | None = None  # USD-M only: the previous diff's u

    def to_quote(self, venue: str, symbol: str, top: tuple[float, float, float, float],
                 local_ts_ns: int) -> Quote:
        """The book's `top` (bid, bid size, ask, ask size) once this diff is applied."""
        bid, bid_size, ask, ask_size = top
        return Quote(venue, symbol, bid, bid_size, ask, ask_size,
                     (self.T or self.E) * NS_PER_MS, local_ts_ns, self.u)


class DepthSnapshot(msgspec.Struct, gc=False):
    """Body of GET /api/v3/depth (spot) or /fapi/v1/depth (USD-M, adds E and T)."""

    lastUpdateId: int
    bids: list[Level]
    asks: list[Level]
    E: Millis = 0
    T: Millis = 0
    symbol: str = ""  # not sent by Binance; our recorder may add it


# Combined-stream envelopes (`{"stream": ..., "data": {...}}`): decoding one of these skips
# the stream name and builds only the payload record.


class CombinedBookTicker(msgspec.Struct, gc=False):
    data: BookTicker


class CombinedTrade(msgspec.Struct, gc=False):
    data: TradeEvent


class CombinedAggTrade(msgspec.Struct, gc=False):
    data: AggTradeEvent


class CombinedDepth(msgspec.Struct, gc=False):
    data: DepthDiff
