"""Bybit v5 public wire messages as typed records, each owning its conversion.

The msgspec decoders build these straight from the frame bytes and validate every value
(`Price`, `Size`, `Millis`: see adapters/common/parsing.py); the parser's fast path
(typed decoder) and slow path (orjson + `msgspec.convert`) both end in the same
`to_quote` / `to_trade`.

gc=False: these records hold no reference cycles, so the cyclic GC need not track them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from adapters.common.parsing import Level, Millis, Price, Size
from daemon.core.clock import NS_PER_MS
from daemon.core.model import Quote, Trade

_TAKER_SIDE = {"Buy": "buy", "Sell": "sell"}


class BookData(msgspec.Struct, gc=False):
    s: str
    b: list[Level]
    a: list[Level]
    u: int
    seq: int = 0  # cross sequence: comparable across a symbol's topics and its trades


class BookMessage(msgspec.Struct, gc=False):
    """`orderbook.<depth>.<SYMBOL>`: a `snapshot` or a `delta` of absolute level sizes."""

    topic: str
    type: Literal["snapshot", "delta"]
    ts: Millis
    data: BookData
    cts: Millis = 0  # matching-engine time of the book state (absent on old spot feeds)

    def to_quote(self, venue: str, symbol: str, top: tuple[float, float, float, float],
                 local_ts_ns: int) -> Quote:
        """The book's `top` (bid, bid size, ask, ask size) once this message is applied."""
        data = self.data
        bid, bid_size, ask, ask_size = top
        return Quote(venue, symbol, bid, bid_size, ask, ask_size,
                     (self.cts or self.ts) * NS_PER_MS, local_ts_ns, data.seq or data.u)


class TradeData(msgspec.Struct, gc=False):
    """One print of a `publicTrade.<SYMBOL>` message; `S` is the taker side."""

    T: Millis
    s: str
    S: Literal["Buy", "Sell"]
    v: Size
    p: Price
    i: str

    def to_trade(self, venue: str, symbol: str, local_ts_ns: int) -> Trade:
        return Trade(venue, symbol, self.p, self.v, _TAKER_SIDE[self.S], self.T * NS_PER_MS,
                     local_ts_ns, self.i)


class TradeMessage(msgspec.Struct, gc=False):
    topic: str
    ts: Millis
    data: Annotated[list[TradeData], msgspec.Meta(min_length=1)]  # an empty batch is bogus
