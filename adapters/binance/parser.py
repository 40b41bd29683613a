"""Binance spot and USD-M WebSocket frames -> Quote / Trade, plus local depth books.

Fast path: the frame kind is read from the bytes near the start of the frame (the stream
name of a combined-stream frame, or the `"e"` of a raw one), then one msgspec decoder
typed for that kind builds the wire record (schemas.py) without an intermediate dict and
validates every value. Anything the fast path cannot take (other key order, a bad value,
garbage) goes to the slow path: orjson + explicit classification, which either handles
the frame or names the reason it is dropped. Both paths turn a record into a Quote or
Trade through the record's own `to_quote` / `to_trade`. Nothing raises out of `feed`
(exceptions raised by the callbacks themselves do propagate: they are consumer bugs).

Depth books follow Binance's documented sync procedure ("How to manage a local order
book correctly"), which differs per market:

- spot: drop diffs with u <= lastUpdateId; the first applied diff has
  U <= lastUpdateId + 1 <= u; afterwards each U == previous u + 1.
- both: once in sync, a diff with u <= the last applied u (a repeat) is dropped and
  counted as ``duplicate_seq``; only a hole (or an overlap) is a gap that resyncs.
- USD-M: drop diffs with u < lastUpdateId; the first applied diff has
  U <= lastUpdateId <= u; afterwards each pu == previous u.

A synced book's changes also go to the sink's depth route, when it has one
(`daemon.core.routes.depth_route`): the whole book with the first diff applied on a
snapshot, then each applied diff as is, and an empty reset when sync is lost. That is
what the paper executor walks.

Live adapters get bytes from the socket (`recv(decode=False)`): a str frame is encoded
once on entry, which costs a copy.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from adapters.binance.schemas import (
    AggTradeEvent,
    BookTicker,
    CombinedAggTrade,
    CombinedBookTicker,
    CombinedDepth,
    CombinedTrade,
    DepthDiff,
    DepthSnapshot,
    TradeEvent,
)
from adapters.common.parsing import (
    DepthRoutes,
    L2Book,
    ResyncCallback,
    Route,
    SymbolMapper,
    as_frame_bytes,
    forget_remapped,
    resolve_route,
    undecodable_reason,
    validation_reason,
)
from daemon.core.routes import MarketSink, QuoteCallback, TradeCallback

BINANCE_VENUES = ("binance_spot", "binance_usdm")

#: Diffs kept while a book waits for its REST snapshot (about 100 s of 100ms diffs, 5 s of
#: 0ms ones); older ones are useless anyway once the snapshot is newer than them.
MAX_PENDING_DIFFS = 1000


# Frame kinds; compared by identity on the hot path.
_TICKER = "bookTicker"
_TRADE = "trade"
_AGG_TRADE = "aggTrade"
_DEPTH = "depth"

_KIND_TYPES: dict[str, type[msgspec.Struct]] = {
    _TICKER: BookTicker,
    _TRADE: TradeEvent,
    _AGG_TRADE: AggTradeEvent,
    _DEPTH: DepthDiff,
}
_COMBINED_TYPES: dict[str, type[msgspec.Struct]] = {
    _TICKER: CombinedBookTicker,
    _TRADE: CombinedTrade,
    _AGG_TRADE: CombinedAggTrade,
    _DEPTH: CombinedDepth,
}
#: First three letters of the stream kind (after the "@") or raw event type -> kind.
_STREAM_TAGS = {b"boo": _TICKER, b"tra": _TRADE, b"agg": _AGG_TRADE, b"dep": _DEPTH}
#: Bytes of a combined frame used as its stream key: `{"stream":"` plus stream names of up
#: to ~20 characters, and short of the first value that changes from frame to frame.
_STREAM_KEY_BYTES = 32

#: Raw-endpoint event type ("e") -> kind.
_EVENT_KINDS = {
    "bookTicker": _TICKER,
    "trade": _TRADE,
    "aggTrade": _AGG_TRADE,
    "depthUpdate": _DEPTH,
}


def _stream_kind(stream: str) -> str | None:
    """`btcusdt@depth@100ms` -> "depth"; `btcusdt@bookTicker` -> "bookTicker"."""
    _, _, rest = stream.partition("@")
    name = rest.partition("@")[0]
    return name if name in _KIND_TYPES else None


def detect_binance_market(frame: bytes | str) -> str | None:
    """Tell a Binance spot frame from a USD-M one by its shape; None if it cannot tell.

    USD-M adds fields spot lacks: bookTicker `e`/`E`/`T`, trade `X`, depth diff `pu`,
    REST snapshot `E`/`T`. Control replies and unknown frames are undecided.
    """
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    data = message.get("data", message)
    if not isinstance(data, dict):
        return None
    if "lastUpdateId" in data:
        return "binance_usdm" if "T" in data or "E" in data else "binance_spot"
    event = data.get("e")
    if event == "depthUpdate":
        return "binance_usdm" if "pu" in data else "binance_spot"
    if event == "trade":
        return "binance_usdm" if "X" in data else "binance_spot"
    if event == "aggTrade":
        return None  # same shape on both markets
    if event == "bookTicker" or ("u" in data and "b" in data and "A" in data):
        return "binance_usdm" if "E" in data or "T" in data else "binance_spot"
    return None


class _TickerState:
    """bookTicker state of one known symbol: where its quotes go and the last update id."""

    __slots__ = ("last_update_id", "publish", "symbol")

    def __init__(self, symbol: str, publish: QuoteCallback) -> None:
        self.symbol = symbol
        self.publish = publish
        self.last_update_id = -1


class _DepthState:
    """Sync state of one symbol's depth book."""

    __slots__ = ("announced", "book", "last_u", "pending", "snapshot_id", "synced")

    def __init__(self) -> None:
        self.book = L2Book()
        self.synced = False
        #: The depth route has the whole synced book (diffs alone follow it from there).
        self.announced = False
        self.snapshot_id: int | None = None  # lastUpdateId of a snapshot not yet bridged
        self.last_u = 0
        #: Diffs waiting for a snapshot, with their local receive time.
        self.pending: deque[tuple[DepthDiff, int]] = deque(maxlen=MAX_PENDING_DIFFS)


class BinanceParser:
    """Parser for one Binance connection (spot or USD-M): frames in, callbacks out.

    `symbols` maps venue symbols (`BTCUSDT`) to unified ones; without it they are derived
    by quote-currency suffix. `books=True` maintains a depth book per symbol from
    `@depth` diffs and REST snapshots; with `books=False` (the default: top of book comes
    from bookTicker) depth frames are counted as "depth_skipped" without being decoded.
    `depth_quotes=True` additionally publishes the book's top as a Quote after every
    applied diff (seq = the diff's final update id).
    """

    # Slots: a fixed attribute set (a typo fails loudly) and slightly cheaper reads.
    __slots__ = (
        "_combined_decoders", "_decode_combined_ticker", "_decode_combined_trade",
        "_decode_snapshot", "_depth", "_depth_routes", "_handlers", "_n_depth", "_n_depth_skipped",
        "_n_other", "_n_quote", "_n_trade", "_orphan_snapshot", "_raw_decoders",
        "_stream_kinds", "_symbol", "_tickers", "_trade_routes", "_usdm", "depth_quotes",
        "depth_stats", "dropped", "keep_books", "on_resync", "sink", "venue",
    )

    def __init__(
        self,
        venue: str,
        sink: MarketSink,
        symbols: Mapping[str, str] | None = None,
        *,
        on_resync: ResyncCallback | None = None,
        books: bool = False,
        depth_quotes: bool = False,
    ) -> None:
        if venue not in BINANCE_VENUES:
            raise ValueError(f"BinanceParser venue must be one of {BINANCE_VENUES}, not {venue!r}")
        self.venue = venue
        self.sink = sink
        self.on_resync = on_resync
        self.keep_books = books or depth_quotes
        self.depth_quotes = depth_quotes
        self._usdm = venue == "binance_usdm"
        self._symbol = SymbolMapper(venue, symbols)
        self.dropped: Counter[str] = Counter()
        #: Depth sync bookkeeping: applied, stale (older than the snapshot), buffered,
        #: snapshot_requests (on_resync fired), crossed_book.
        self.depth_stats: Counter[str] = Counter()
        #: known venue symbols only (an entry is always publishable)
        self._tickers: dict[str, _TickerState] = {}
        self._trade_routes: dict[str, Route[TradeCallback]] = {}
        self._depth: dict[str, _DepthState] = {}
        self._depth_routes = DepthRoutes(venue, sink, self._symbol)
        self._orphan_snapshot: DepthSnapshot | None = None
        # Hot counters as plain ints (a Counter increment costs a method call per frame).
        self._n_quote = 0
        self._n_trade = 0
        self._n_depth = 0
        self._n_depth_skipped = 0
        self._n_other: Counter[str] = Counter()
        self._stream_kinds: dict[bytes, str] = {}
        self._combined_decoders = {
            kind: msgspec.json.Decoder(wrapper, strict=False).decode
            for kind, wrapper in _COMBINED_TYPES.items()
        }
        self._raw_decoders = {
            kind: msgspec.json.Decoder(record, strict=False).decode
            for kind, record in _KIND_TYPES.items()
        }
        self._decode_combined_ticker = self._combined_decoders[_TICKER]
        self._decode_combined_trade = self._combined_decoders[_TRADE]
        self._decode_snapshot = msgspec.json.Decoder(DepthSnapshot, strict=False).decode
        self._handlers = {
            _TICKER: self._on_book_ticker,
            _TRADE: self._on_trade,
            _AGG_TRADE: self._on_trade,
            _DEPTH: self._on_depth,
        }

    # --- public -----------------------------------------------------------------------------

    @property
    def counts(self) -> Counter[str]:
        """Parsed frames per kind: quote, trade, depth, snapshot, control, ..."""
        counts = Counter(self._n_other)
        for kind, value in (("quote", self._n_quote), ("trade", self._n_trade),
                            ("depth", self._n_depth), ("depth_skipped", self._n_depth_skipped)):
            if value:
                counts[kind] += value
        return counts

    def book(self, venue_symbol: str) -> L2Book | None:
        """The depth book of a symbol (None if no depth seen); check `in_sync` before use."""
        state = self._depth.get(venue_symbol)
        return state.book if state is not None else None

    def in_sync(self, venue_symbol: str) -> bool:
        state = self._depth.get(venue_symbol)
        return state is not None and state.synced

    def reset(self) -> None:
        """Forget sequence and book state (call on reconnect: a new session starts over)."""
        for venue_symbol, state in self._depth.items():
            if state.announced:
                self._depth_routes.lost(venue_symbol)
        self._tickers.clear()
        self._depth.clear()
        self._orphan_snapshot = None

    def set_symbols(self, symbols: Mapping[str, str]) -> None:
        """Publish exactly these venue -> unified symbols from now on, keeping the books
        and sequence state of the symbols that stay."""
        self._symbol.remap(symbols)
        self._depth_routes.forget()
        forget_remapped(self._tickers, symbols)
        forget_remapped(self._trade_routes, symbols)

    def feed(self, frame: bytes | str, local_ts_ns: int) -> None:
        """Parse one frame; publish what it carries, or count why it is dropped."""
        # A combined-stream frame's first bytes name its stream: one dict lookup on them
        # picks the decoder (learned on first sight), cheaper than searching for the "@".
        try:
            kind = self._stream_kinds.get(frame[:_STREAM_KEY_BYTES])
        except TypeError:  # a bytearray slice is unhashable; not a frame at all
            kind = None
        if kind is None:
            if type(frame) is not bytes:  # only str and other types pay for this check
                frame = as_frame_bytes(frame)
            kind = self._learn_stream(frame)
            if kind is None:
                self._feed_uncombined(frame, local_ts_ns)
                return
        if kind is _TICKER:
            try:
                ticker = self._decode_combined_ticker(frame).data
            except ValueError:  # msgspec.DecodeError, or bad UTF-8 inside a string
                self._feed_slow(as_frame_bytes(frame), local_ts_ns)
                return
            # bookTicker is most of the traffic, so its common case is inline: a known
            # symbol, not crossed, update id moving forward. Anything else (first sight of
            # a symbol, a drop) takes `_on_book_ticker`, which runs every check.
            state = self._tickers.get(ticker.s)
            update_id = ticker.u
            if state is None or update_id <= state.last_update_id or ticker.b >= ticker.a:
                self._on_book_ticker(ticker, local_ts_ns)
                return
            state.last_update_id = update_id
            self._n_quote += 1
            state.publish(ticker.to_quote(self.venue, state.symbol, local_ts_ns))
        elif kind is _TRADE:
            try:
                trade = self._decode_combined_trade(frame).data
            except ValueError:  # msgspec.DecodeError, or bad UTF-8 inside a string
                self._feed_slow(frame, local_ts_ns)
                return
            # Likewise inline for a known symbol and a non-zero size; `_on_trade` otherwise.
            route = self._trade_routes.get(trade.s)
            if route is None or trade.q == 0.0:
                self._on_trade(trade, local_ts_ns)
                return
            self._n_trade += 1
            route.publish(trade.to_trade(self.venue, route.symbol, local_ts_ns))
        elif not self.keep_books and kind is _DEPTH:
            self._n_depth_skipped += 1
        else:
            try:
                record = self._combined_decoders[kind](frame).data
            except ValueError:  # msgspec.DecodeError, or bad UTF-8 inside a string
                self._feed_slow(frame, local_ts_ns)
                return
            self._handlers[kind](record, local_ts_ns)

    def _learn_stream(self, frame: bytes) -> str | None:
        """Kind of a combined-stream frame from its stream name; remembers the frame prefix."""
        if not frame.startswith(b'{"stream":"'):
            return None
        at = frame.find(b"@", 11, 128)
        kind = _STREAM_TAGS.get(frame[at + 1 : at + 4]) if at > 0 else None
        if kind is None:
            return None
        # Cache only when the kind's tag lies inside the key, and bounded: a stream of
        # invented names must not grow the table.
        if at + 4 <= _STREAM_KEY_BYTES and len(self._stream_kinds) < 256:
            self._stream_kinds[frame[:_STREAM_KEY_BYTES]] = kind
        return kind

    def _feed_uncombined(self, frame: bytes, local_ts_ns: int) -> None:
        """Raw-endpoint events, REST snapshots, control replies and anything else."""
        if frame.startswith(b'{"e":"'):
            kind = _STREAM_TAGS.get(frame[6:9])
            if kind is not None:
                if kind is _DEPTH and not self.keep_books:
                    self._n_depth_skipped += 1
                    return
                try:
                    record = self._raw_decoders[kind](frame)
                except ValueError:  # msgspec.DecodeError, or bad UTF-8 inside a string
                    self._feed_slow(frame, local_ts_ns)
                    return
                self._handlers[kind](record, local_ts_ns)
                return
        elif frame.startswith(b'{"u":'):  # spot raw bookTicker: no "e" at all
            try:
                ticker = self._raw_decoders[_TICKER](frame)
            except ValueError:  # msgspec.DecodeError, or bad UTF-8 inside a string
                self._feed_slow(frame, local_ts_ns)
                return
            self._on_book_ticker(ticker, local_ts_ns)
            return
        elif frame.startswith(b'{"lastUpdateId":'):
            try:
                snapshot = self._decode_snapshot(frame)
            except ValueError:  # msgspec.DecodeError, or bad UTF-8 inside a string
                self._feed_slow(frame, local_ts_ns)
                return
            self._on_snapshot(snapshot, snapshot.symbol or None)
            return
        self._feed_slow(frame, local_ts_ns)

    def feed_snapshot(self, venue_symbol: str, body: bytes | str) -> None:
        """A REST depth snapshot fetched by a live adapter for a known symbol."""
        try:
            snapshot = self._decode_snapshot(body)
        except msgspec.ValidationError as error:
            self._drop(validation_reason(error))
            return
        except ValueError:
            self._drop(undecodable_reason(body))
            return
        self._on_snapshot(snapshot, venue_symbol)

    # --- slow path --------------------------------------------------------------------------

    def _feed_slow(self, frame: bytes, local_ts_ns: int) -> None:
        """Any frame the fast path did not take: classify it, then handle it or say why not."""
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            self._drop(undecodable_reason(frame))
            return
        if not isinstance(message, dict):
            self._drop("not_an_object")
            return
        kind, data = _classify(message)
        if kind is None or data is None:
            self._drop(data if isinstance(data, str) else "unknown_message")
            return
        if kind == "control":
            self._n_other["control"] += 1
            return
        if kind == "depth" and not self.keep_books:
            self._n_depth_skipped += 1
            return
        record_type = DepthSnapshot if kind == "snapshot" else _KIND_TYPES[kind]
        try:
            record: Any = msgspec.convert(data, record_type, strict=False)
        except msgspec.ValidationError as error:
            self._drop(validation_reason(error))
            return
        except Exception:  # convert on adversarial input: never let it escape
            self._drop("bad_value")
            return
        if kind == "snapshot":
            self._on_snapshot(record, record.symbol or None)
        elif kind == "bookTicker":
            self._on_book_ticker(record, local_ts_ns)
        elif kind in ("trade", "aggTrade"):
            self._on_trade(record, local_ts_ns)
        else:
            self._on_depth(record, local_ts_ns)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    # --- handlers ---------------------------------------------------------------------------

    def _on_book_ticker(self, ticker: BookTicker, local_ts_ns: int) -> None:
        """Every check, in order; `feed` inlines the common case of the same logic."""
        if ticker.b >= ticker.a:
            self.dropped["crossed"] += 1
            return
        # One dict lookup gives both the unified symbol and the last update id; only
        # known symbols get an entry, so an entry is always publishable.
        state = self._tickers.get(ticker.s)
        if state is None:
            symbol = self._symbol(ticker.s)
            if symbol is None:
                self.dropped["unknown_symbol"] += 1
                return
            state = self._tickers[ticker.s] = _TickerState(
                symbol, self.sink.quote_route(self.venue, symbol))
        update_id = ticker.u
        last = state.last_update_id
        if update_id <= last:
            self.dropped["backwards_seq" if update_id < last else "duplicate_seq"] += 1
            return
        state.last_update_id = update_id
        self._n_quote += 1
        state.publish(ticker.to_quote(self.venue, state.symbol, local_ts_ns))

    def _on_trade(self, trade: TradeEvent | AggTradeEvent, local_ts_ns: int) -> None:
        """Every check, in order; `feed` inlines the common case of a plain trade."""
        route = self._trade_routes.get(trade.s) or resolve_route(
            self._symbol, trade.s, self._trade_routes, self.sink.trade_route)
        if route is None:
            self.dropped["unknown_symbol"] += 1
            return
        if trade.q == 0.0:
            self.dropped["bad_value"] += 1
            return
        self._n_trade += 1
        route.publish(trade.to_trade(self.venue, route.symbol, local_ts_ns))

    # --- depth ------------------------------------------------------------------------------

    def _on_depth(self, diff: DepthDiff, local_ts_ns: int) -> None:
        first_id, final_id = diff.U, diff.u
        if first_id > final_id:
            self.dropped["bad_value"] += 1
            return
        self._n_depth += 1
        state = self._depth.get(diff.s)
        if state is None:
            state = self._depth[diff.s] = _DepthState()
            if self._orphan_snapshot is not None:  # snapshot came before any diff named it
                state.snapshot_id = self._orphan_snapshot.lastUpdateId
                state.book.load(self._orphan_snapshot.bids, self._orphan_snapshot.asks,
                                self._orphan_snapshot.lastUpdateId)
                self._orphan_snapshot = None
            else:
                self._request_snapshot(diff.s)
        if state.synced:
            if final_id <= state.last_u:
                # A repeated (or replayed) diff: the book already holds it. Binance's
                # rule drops it; treating it as a gap would cost a REST snapshot.
                self.dropped["duplicate_seq"] += 1
                return
            if not self._follows(diff, state.last_u):
                self.dropped["depth_gap"] += 1
                self._lose_sync(diff.s, state)
                state.pending.append((diff, local_ts_ns))
                return
            self._apply(diff, state, local_ts_ns)
            return
        state.pending.append((diff, local_ts_ns))
        self.depth_stats["buffered"] += 1
        if state.snapshot_id is not None:
            self._bridge(diff.s, state)

    def _on_snapshot(self, snapshot: DepthSnapshot, venue_symbol: str | None) -> None:
        self._n_other["snapshot"] += 1
        if venue_symbol is None:
            # Binance's REST body names no symbol: it belongs to the book waiting for one.
            waiting = [sym for sym, st in self._depth.items() if not st.synced]
            candidates = waiting or list(self._depth)
            if not candidates:
                self._orphan_snapshot = snapshot
                return
            if len(candidates) > 1:
                self.dropped["snapshot_ambiguous"] += 1
                return
            venue_symbol = candidates[0]
        state = self._depth.get(venue_symbol)
        if state is None:
            state = self._depth[venue_symbol] = _DepthState()
        if state.announced:  # a new snapshot over a synced book: resynced from scratch
            self._depth_routes.lost(venue_symbol)
            state.announced = False  # the depth route gets the whole book once synced
        state.book.load(snapshot.bids, snapshot.asks, snapshot.lastUpdateId)
        state.snapshot_id = snapshot.lastUpdateId
        state.synced = False
        state.last_u = snapshot.lastUpdateId
        self._bridge(venue_symbol, state)

    def _bridge(self, venue_symbol: str, state: _DepthState) -> None:
        """Apply buffered diffs on top of the snapshot once one straddles lastUpdateId."""
        snapshot_id = state.snapshot_id
        if snapshot_id is None:
            return
        # The first diff to apply must contain the snapshot's next update: spot counts from
        # lastUpdateId + 1, USD-M's snapshot id falls inside the diff that produced it.
        target = snapshot_id if self._usdm else snapshot_id + 1
        pending = state.pending
        while pending:
            diff, local_ts_ns = pending[0]
            first_id, final_id = diff.U, diff.u
            if state.synced:
                if final_id <= state.last_u:
                    self.dropped["duplicate_seq"] += 1  # a repeat buffered while bridging
                    pending.popleft()
                    continue
                if not self._follows(diff, state.last_u):
                    self.dropped["depth_gap"] += 1
                    self._lose_sync(venue_symbol, state)
                    return
            elif final_id < target:
                self.depth_stats["stale"] += 1  # already contained in the snapshot
                pending.popleft()
                continue
            elif first_id > target:
                # Every buffered diff is newer than the snapshot: it is too old to bridge.
                self.dropped["snapshot_too_old"] += 1
                state.snapshot_id = None
                state.book.clear()
                self._request_snapshot(venue_symbol)
                return
            pending.popleft()
            state.synced = True
            state.snapshot_id = None
            self._apply(diff, state, local_ts_ns)

    def _follows(self, diff: DepthDiff, last_u: int) -> bool:
        """Does `diff` continue the book right after update id `last_u`?"""
        if self._usdm:
            return diff.pu == last_u  # USD-M chains diffs explicitly
        first_id = diff.U
        return first_id == last_u + 1

    def _apply(self, diff: DepthDiff, state: _DepthState, local_ts_ns: int) -> None:
        book = state.book
        book.apply_bids(diff.b)
        book.apply_asks(diff.a)
        book.update_id = state.last_u = diff.u
        self.depth_stats["applied"] += 1
        if (depth := self._depth_routes.get(diff.s)) is not None:
            if state.announced:
                depth(local_ts_ns, False, diff.b, diff.a)
            else:  # first diff on a snapshot: the whole book
                depth(local_ts_ns, True, book.bids.items(), book.asks.items())
                state.announced = True
        if self.depth_quotes:
            self._publish_book_top(diff, book, local_ts_ns)

    def _publish_book_top(self, diff: DepthDiff, book: L2Book, local_ts_ns: int) -> None:
        top = book.top()
        if top is None:
            return
        if top[0] >= top[2]:
            self.depth_stats["crossed_book"] += 1
            return
        symbol = self._symbol(diff.s)
        if symbol is None:
            return
        publish = self.sink.quote_route(self.venue, symbol)
        publish(diff.to_quote(self.venue, symbol, top, local_ts_ns))

    def _lose_sync(self, venue_symbol: str, state: _DepthState) -> None:
        if state.announced:
            self._depth_routes.lost(venue_symbol)
            state.announced = False
        state.synced = False
        state.snapshot_id = None
        state.book.clear()
        state.pending.clear()
        self._request_snapshot(venue_symbol)

    def _request_snapshot(self, venue_symbol: str) -> None:
        self.depth_stats["snapshot_requests"] += 1
        if self.on_resync is not None:
            self.on_resync(venue_symbol)


def _classify(message: dict[str, Any]) -> tuple[str | None, Any]:
    """(kind, payload) of a decoded frame; (None, reason) when it is not handled."""
    if "stream" in message:
        stream, data = message.get("stream"), message.get("data")
        if not isinstance(stream, str) or not isinstance(data, dict):
            return None, "missing_key" if data is None else "bad_value"
        kind = _stream_kind(stream)
        return (kind, data) if kind is not None else (None, "unknown_stream")
    if "lastUpdateId" in message:
        return "snapshot", message
    if "e" in message:
        kind = _EVENT_KINDS.get(message["e"]) if isinstance(message["e"], str) else None
        return (kind, message) if kind is not None else (None, "unknown_stream")
    if "result" in message or "id" in message:
        return ("control", message) if "error" not in message else (None, "control_error")
    if "error" in message or "code" in message:
        return None, "control_error"
    if "u" in message and "b" in message and "a" in message:
        return "bookTicker", message
    return None, "unknown_message"
