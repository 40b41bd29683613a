"""Shared pieces of the venue frame parsers: symbol mapping, value types, the L2 book.

Drop reasons (keys of a parser's `dropped` counter), one taxonomy for every venue:

- ``binary``            bytes that are not UTF-8 text (a binary WebSocket frame, garbage)
- ``malformed_json``    text that is not JSON (truncated frame, empty frame, ...)
- ``not_an_object``     valid JSON that is not an object (a list, a number, ...)
- ``missing_key``       a known message kind without a required field
- ``bad_value``         wrong type, unparsable number, NaN/inf, zero or negative price,
                        negative size, a bad side, ...
- ``crossed``           top of book with bid >= ask
- ``backwards_seq``     an update id lower than the last one seen for the symbol
- ``duplicate_seq``     the same update id again (a Binance depth diff whose u is not past
                        the last applied one: dropped, the book stays in sync)
- ``unknown_stream``    a Binance stream / event kind the parser does not handle
- ``unknown_topic``     a Bybit topic the parser does not handle
- ``unknown_message``   a JSON object of no known shape
- ``unknown_symbol``    a venue symbol that is not in the mapping (or not derivable)
- ``control_error``     a subscription/control reply reporting a failure
- ``depth_gap``         a depth diff that does not follow the previous one (book resyncs)
- ``delta_before_snapshot``  a Bybit delta with no snapshot to apply it to
- ``snapshot_ambiguous``     a Binance REST snapshot that names no symbol while several
                             symbols have depth books
- ``snapshot_too_old``  a REST snapshot older than every buffered diff (refetch needed)

Values are validated inside the msgspec decoders (the `Price`/`Size` annotations below),
so the hot path pays no Python-level check per field; anything they reject falls to the
parser's slow path, which names the reason.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Generic, Protocol, TypeVar

import msgspec

from daemon.core.routes import DepthCallback, MarketSink, depth_route

#: Called with the key of a book that lost sync (Binance: venue symbol, Bybit: topic), so
#: a live adapter can refetch the snapshot or resubscribe.
ResyncCallback = Callable[[str], None]


class FrameParser(Protocol):
    """What the replay feed and live adapters need from a parser."""

    venue: str
    #: Frames dropped, by reason (see the taxonomy above).
    dropped: Counter[str]

    def feed(self, frame: bytes | str, local_ts_ns: int) -> None: ...

    def reset(self) -> None: ...

    def set_symbols(self, symbols: Mapping[str, str]) -> None: ...

_FLOAT_MAX = sys.float_info.max

#: A price as the venues send it: a decimal string (coerced by `strict=False` decoders),
#: finite and strictly positive. NaN fails `gt`, inf fails `le`.
Price = Annotated[float, msgspec.Meta(gt=0.0, le=_FLOAT_MAX)]
#: A size: finite, zero allowed (zero deletes a depth level).
Size = Annotated[float, msgspec.Meta(ge=0.0, le=_FLOAT_MAX)]
#: A venue timestamp in milliseconds since the epoch.
Millis = Annotated[int, msgspec.Meta(ge=0)]
#: One depth level on the wire: ["price", "size"].
Level = tuple[Price, Size]


#: The sink callback a `Route` holds: a `QuoteCallback` or a `TradeCallback`.
Publish = TypeVar("Publish")

#: Quote currencies recognised when deriving a unified symbol from a concatenated venue
#: symbol, longest first so that "FDUSD" wins over a shorter suffix.
QUOTE_CURRENCIES: tuple[str, ...] = tuple(
    sorted(
        (
            "USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USDE", "DAI", "USD1",
            "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "JPY", "GBP", "AUD",
            "UAH", "RUB", "ZAR", "PLN", "RON", "ARS", "MXN", "COP", "IDR",
        ),
        key=len,
        reverse=True,
    )
)  # fmt: skip

#: Venues whose instruments are linear perpetuals settled in the quote currency.
PERP_VENUES = frozenset({"binance_usdm", "bybit_linear"})


def derive_unified_symbol(venue: str, venue_symbol: str) -> str | None:
    """`BTCUSDT` -> `BTC/USDT` (spot) or `BTC/USDT:USDT` (linear perp); None if unknown.

    Bybit's USDC perpetuals are named `BTCPERP`; dated futures (`BTCUSDT_240927`,
    `BTC-27DEC24`) are not derived: pass an explicit mapping for those.
    """
    symbol = venue_symbol.upper()
    perp = venue in PERP_VENUES
    if perp and symbol.endswith("PERP") and len(symbol) > 4:
        # Not `BTCUSD_PERP` (Binance COIN-M, an inverse contract): no base "BTCUSD_".
        return f"{symbol[:-4]}/USDC:USDC" if symbol[:-4].isalnum() else None
    for quote in QUOTE_CURRENCIES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            base = symbol[: -len(quote)]
            if not base.isalnum():
                return None
            return f"{base}/{quote}:{quote}" if perp else f"{base}/{quote}"
    return None


class SymbolMapper:
    """Venue symbol -> ccxt unified symbol, cached (the hot path does one dict lookup).

    With an explicit mapping only its symbols are accepted (a frame for another symbol is
    dropped as ``unknown_symbol``); without one, symbols are derived by quote suffix.
    """

    __slots__ = ("_explicit", "cache", "venue")

    def __init__(self, venue: str, symbols: Mapping[str, str] | None = None) -> None:
        self.venue = venue
        self._explicit = symbols is not None
        #: Resolved symbols (None: unknown); hot paths may `.get` it directly.
        self.cache: dict[str, str | None] = dict(symbols) if symbols else {}

    def __call__(self, venue_symbol: str) -> str | None:
        try:
            return self.cache[venue_symbol]
        except KeyError:
            pass
        unified = None if self._explicit else derive_unified_symbol(self.venue, venue_symbol)
        # Bounded: a hostile stream of invented symbols must not grow the cache forever.
        if len(self.cache) < 10_000:
            self.cache[venue_symbol] = unified
        return unified

    def remap(self, symbols: Mapping[str, str]) -> None:
        """Accept exactly these venue -> unified symbols from now on: every other name
        maps to None, so frames of a dropped symbol still in flight count as unknown."""
        self._explicit = True
        for name in self.cache:
            self.cache[name] = None
        self.cache.update(symbols)


class DepthRoutes:
    """Where the changes of each venue symbol's depth book go: the sink's depth route for
    its unified symbol, None when the sink wants no depth (resolved once per symbol)."""

    __slots__ = ("_routes", "_sink", "_symbol", "_venue")

    def __init__(self, venue: str, sink: MarketSink, symbol: SymbolMapper) -> None:
        self._venue = venue
        self._sink = sink
        self._symbol = symbol
        self._routes: dict[str, DepthCallback | None] = {}

    def get(self, venue_symbol: str) -> DepthCallback | None:
        try:
            return self._routes[venue_symbol]
        except KeyError:
            pass
        symbol = self._symbol(venue_symbol)
        route = depth_route(self._sink, self._venue, symbol) if symbol is not None else None
        if len(self._routes) < 10_000:  # bounded, as the symbol cache
            self._routes[venue_symbol] = route
        return route

    def lost(self, venue_symbol: str, local_ts_ns: int = 0) -> None:
        """The symbol's book can no longer be trusted: its depth is gone until resynced."""
        route = self.get(venue_symbol)
        if route is not None:
            route(local_ts_ns, True, (), ())

    def forget(self) -> None:
        """Ask the sink again (the symbol mapping changed)."""
        self._routes.clear()


class Route(Generic[Publish]):
    """Where a known venue symbol's records go: its unified symbol and the sink's callback
    for it (a quote route or a trade route)."""

    __slots__ = ("publish", "symbol")

    def __init__(self, symbol: str, publish: Publish) -> None:
        self.symbol = symbol
        self.publish = publish


def resolve_route(
    symbols: SymbolMapper, venue_symbol: str, routes: dict[str, Route[Publish]],
    route_of: Callable[[str, str], Publish],
) -> Route[Publish] | None:
    """The route of a known venue symbol, remembered in `routes` so the hot path finds it
    with one lookup; None for an unknown symbol."""
    symbol = symbols(venue_symbol)
    if symbol is None:
        return None
    route = routes[venue_symbol] = Route(symbol, route_of(symbols.venue, symbol))
    return route


def forget_remapped(routes: dict[str, Any], symbols: Mapping[str, str]) -> None:
    """Drop the remembered routes (a `Route`, or any state with the unified `symbol` it
    publishes under) of venue symbols that a `set_symbols` took out or renamed; they are
    resolved again if seen."""
    for name in [name for name, route in routes.items() if route.symbol != symbols.get(name)]:
        del routes[name]


def validation_reason(error: msgspec.ValidationError) -> str:
    """Map a msgspec validation error to a drop reason."""
    return "missing_key" if "missing required field" in str(error) else "bad_value"


def undecodable_reason(frame: bytes | str) -> str:
    """Why a frame that is not JSON was dropped: binary garbage or broken text."""
    if isinstance(frame, bytes | bytearray | memoryview):
        try:
            bytes(frame).decode("utf-8")
        except UnicodeDecodeError:
            return "binary"
    return "malformed_json"


def as_frame_bytes(frame: object) -> bytes:
    """A frame as bytes for the byte-level fast paths (str is encoded: one copy)."""
    if isinstance(frame, str):
        # surrogatepass: a str with lone surrogates must not raise; it becomes invalid
        # UTF-8 and is dropped as "binary" by the slow path.
        return frame.encode("utf-8", "surrogatepass")
    if isinstance(frame, bytes | bytearray | memoryview):
        return bytes(frame)
    return b""  # not a frame at all: the slow path drops it as malformed


class L2Book:
    """A price-level book: price -> size per side, with the touch tracked incrementally.

    Sides are plain dicts (an update is one dict store, no re-sort); the best price is
    kept up to date on every change and only recomputed (one `max`/`min` over the side)
    when the best level itself is removed. Sorted views are built on demand.
    """

    __slots__ = ("_best_ask", "_best_bid", "asks", "bids", "update_id")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self._best_bid = 0.0  # 0.0: side empty
        self._best_ask = math.inf  # inf: side empty
        #: The venue update id the book reflects (Binance `u`, Bybit `u`).
        self.update_id = 0

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self._best_bid = 0.0
        self._best_ask = math.inf
        self.update_id = 0

    def load(self, bids: Iterable[tuple[float, float]], asks: Iterable[tuple[float, float]],
             update_id: int) -> None:
        """Replace the whole book (a snapshot); zero sizes are skipped."""
        self.bids = {price: size for price, size in bids if size > 0.0}
        self.asks = {price: size for price, size in asks if size > 0.0}
        self._best_bid = max(self.bids, default=0.0)
        self._best_ask = min(self.asks, default=math.inf)
        self.update_id = update_id

    def apply_bids(self, levels: Iterable[tuple[float, float]]) -> None:
        """Absolute sizes per price; size 0 removes the level (absent levels are fine)."""
        side = self.bids
        best = self._best_bid
        best_removed = False
        for price, size in levels:
            if size == 0.0:
                if side.pop(price, None) is not None and price == best:
                    best_removed = True
            else:
                side[price] = size
                if price > best:
                    best = price
                    best_removed = False
        self._best_bid = max(side, default=0.0) if best_removed else best

    def apply_asks(self, levels: Iterable[tuple[float, float]]) -> None:
        side = self.asks
        best = self._best_ask
        best_removed = False
        for price, size in levels:
            if size == 0.0:
                if side.pop(price, None) is not None and price == best:
                    best_removed = True
            else:
                side[price] = size
                if price < best:
                    best = price
                    best_removed = False
        self._best_ask = min(side, default=math.inf) if best_removed else best

    @property
    def best_bid(self) -> tuple[float, float] | None:
        """(price, size) of the best bid, None when the side is empty."""
        price = self._best_bid
        return (price, self.bids[price]) if self.bids else None

    @property
    def best_ask(self) -> tuple[float, float] | None:
        price = self._best_ask
        return (price, self.asks[price]) if self.asks else None

    def top(self) -> tuple[float, float, float, float] | None:
        """(bid, bid_size, ask, ask_size), None unless both sides have a level."""
        if not self.bids or not self.asks:
            return None
        bid, ask = self._best_bid, self._best_ask
        return (bid, self.bids[bid], ask, self.asks[ask])

    @property
    def crossed(self) -> bool:
        return bool(self.bids and self.asks) and self._best_bid >= self._best_ask

    def levels(self, side: str, depth: int | None = None) -> list[tuple[float, float]]:
        """Best-first (price, size) levels of "bid" or "ask"; all of them when depth is None."""
        book = self.bids if side == "bid" else self.asks
        if depth is not None:
            pick = heapq.nlargest if side == "bid" else heapq.nsmallest
            return [(price, book[price]) for price in pick(depth, book)]
        return sorted(book.items(), reverse=(side == "bid"))

    def walk(self, side: str, qty: float) -> float | None:
        """Average price a taker pays/receives for `qty` against the visible book.

        `side` is the taker side: "buy" lifts the asks, "sell" hits the bids. Returns None
        when the visible depth cannot fill `qty` (or qty <= 0): slippage beyond the book
        is unknown, not zero.
        """
        if not qty > 0.0:
            return None
        book = self.asks if side == "buy" else self.bids
        prices = sorted(book, reverse=(side != "buy"))
        remaining = qty
        cost = 0.0
        for price in prices:
            take = min(remaining, book[price])
            cost += take * price
            remaining -= take
            if remaining <= qty * 1e-12:
                return cost / qty
        return None

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)

    def __repr__(self) -> str:
        return (f"L2Book(bid={self.best_bid}, ask={self.best_ask}, levels={len(self)}, "
                f"update_id={self.update_id})")
