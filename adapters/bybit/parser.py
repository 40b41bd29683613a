"""Bybit v5 public WebSocket messages (spot and linear) -> Quote / Trade.

Order books: `orderbook.<depth>.<SYMBOL>` sends a `snapshot` then `delta`s. Each message
carries `u`, the topic's update id, which goes up by exactly one per message (the
recorded XRPUSDT ob500 file: 20254869, 20254870, ... with no hole); a service restart
sends a new snapshot with u=1, and level-1 books resend an unchanged snapshot with the
same u every 3 s. So: a snapshot always (re)loads the book; a delta must carry
previous u + 1, otherwise the book is out of sync (on_resync(topic): resubscribe for a
new snapshot) and deltas are dropped until the next snapshot. A book that comes out
crossed (bid >= ask) is out of sync too: it is cleared and resynced the same way, since
at depth > 1 a bad level would otherwise stay in it for good.

Every applied snapshot and delta also goes, as is, to the sink's depth route (when it
has one: `daemon.core.routes.depth_route`), before the quote it moves; a book that
loses sync goes there as an empty reset. That is what the paper executor walks.

A Quote is published whenever the best bid/ask price or size changes, and on every
snapshot (a repeated level-1 snapshot reaffirms an unchanged top, which keeps a staleness
watchdog quiet on a quiet market).

Trades: `publicTrade.<SYMBOL>`; `data` is a list of prints, `S` the taker side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgspec
import orjson

from adapters.bybit.schemas import BookMessage, TradeMessage
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

BYBIT_VENUES = ("bybit_spot", "bybit_linear")


class _TopicBook:
    """One order-book topic: the book, its sync state and the last published top."""

    __slots__ = ("book", "last_top", "last_u", "resync_requested", "synced", "venue_symbol")

    def __init__(self) -> None:
        self.book = L2Book()
        self.venue_symbol = ""  # of the last message applied (depth routes are per symbol)
        self.synced = False
        self.last_u = 0
        self.last_top: tuple[float, float, float, float] | None = None
        self.resync_requested = False


class BybitParser:
    """Parser for one Bybit public connection (spot or linear)."""

    def __init__(
        self,
        venue: str,
        sink: MarketSink,
        symbols: Mapping[str, str] | None = None,
        on_resync: ResyncCallback | None = None,
    ) -> None:
        if venue not in BYBIT_VENUES:
            raise ValueError(f"BybitParser venue must be one of {BYBIT_VENUES}, not {venue!r}")
        self.venue = venue
        self.sink = sink
        self.on_resync = on_resync
        self._symbol = SymbolMapper(venue, symbols)
        self.dropped: Counter[str] = Counter()
        #: Parsed messages per kind: snapshot, delta, trade (prints), quote (published),
        #: control.
        self.counts: Counter[str] = Counter()
        #: Book sync bookkeeping: snapshot_requests (on_resync fired).
        self.depth_stats: Counter[str] = Counter()
        self._books: dict[str, _TopicBook] = {}
        #: Why each topic last asked for a resync: delta_before_snapshot, sequence_gap,
        #: crossed.
        self.resync_reasons: dict[str, str] = {}
        #: known venue symbols only, for quotes and for trades
        self._quote_routes: dict[str, Route[QuoteCallback]] = {}
        self._trade_routes: dict[str, Route[TradeCallback]] = {}
        self._depth_routes = DepthRoutes(venue, sink, self._symbol)
        self._decode_book = msgspec.json.Decoder(BookMessage, strict=False).decode
        self._decode_trades = msgspec.json.Decoder(TradeMessage, strict=False).decode

    # --- public -----------------------------------------------------------------------------

    def book(self, topic: str) -> L2Book | None:
        """The book of a topic (`orderbook.50.BTCUSDT`); check `in_sync` before use."""
        state = self._books.get(topic)
        return state.book if state is not None else None

    def in_sync(self, topic: str) -> bool:
        state = self._books.get(topic)
        return state is not None and state.synced

    def reset(self) -> None:
        """Forget all books (call on reconnect: resubscribing sends fresh snapshots)."""
        for state in self._books.values():
            if state.venue_symbol:
                self._depth_routes.lost(state.venue_symbol)
        self._books.clear()

    def set_symbols(self, symbols: Mapping[str, str]) -> None:
        """Publish exactly these venue -> unified symbols from now on, keeping the books
        of the symbols that stay (a new parser would make every book resubscribe)."""
        self._symbol.remap(symbols)
        self._depth_routes.forget()
        forget_remapped(self._quote_routes, symbols)
        forget_remapped(self._trade_routes, symbols)

    def feed(self, frame: bytes | str, local_ts_ns: int) -> None:
        """Parse one message; publish what it carries, or count why it is dropped."""
        if type(frame) is not bytes:
            frame = as_frame_bytes(frame)
        if frame.startswith(b'{"topic":"orderbook.'):
            try:
                message = self._decode_book(frame)
            except ValueError:  # msgspec.DecodeError, or bad UTF-8 inside a string
                self._feed_slow(frame, local_ts_ns)
                return
            self._on_book(message, local_ts_ns)
        elif frame.startswith(b'{"topic":"publicTrade.'):
            try:
                trades = self._decode_trades(frame)
            except ValueError:  # msgspec.DecodeError, or bad UTF-8 inside a string
                self._feed_slow(frame, local_ts_ns)
                return
            self._on_trades(trades, local_ts_ns)
        else:
            self._feed_slow(frame, local_ts_ns)

    # --- slow path --------------------------------------------------------------------------

    def _feed_slow(self, frame: bytes, local_ts_ns: int) -> None:
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            self.dropped[undecodable_reason(frame)] += 1
            return
        if not isinstance(message, dict):
            self.dropped["not_an_object"] += 1
            return
        topic = message.get("topic")
        if topic is None:
            if "op" in message or "success" in message:
                # Replies to subscribe / ping; a refused subscription is worth seeing.
                if message.get("success") is False:
                    self.dropped["control_error"] += 1
                else:
                    self.counts["control"] += 1
            else:
                self.dropped["unknown_message"] += 1
            return
        if not isinstance(topic, str):
            self.dropped["bad_value"] += 1
            return
        if topic.startswith("orderbook."):
            record_type: type[msgspec.Struct] = BookMessage
        elif topic.startswith("publicTrade."):
            record_type = TradeMessage
        else:
            self.dropped["unknown_topic"] += 1
            return
        try:
            record: Any = msgspec.convert(message, record_type, strict=False)
        except msgspec.ValidationError as error:
            self.dropped[validation_reason(error)] += 1
            return
        except Exception:  # convert on adversarial input: never let it escape
            self.dropped["bad_value"] += 1
            return
        if record_type is BookMessage:
            self._on_book(record, local_ts_ns)
        else:
            self._on_trades(record, local_ts_ns)

    # --- handlers ---------------------------------------------------------------------------

    def _on_book(self, message: BookMessage, local_ts_ns: int) -> None:
        topic = message.topic
        data = message.data
        state = self._books.get(topic)
        if state is None:
            state = self._books[topic] = _TopicBook()
        if message.type == "snapshot":
            self.counts["snapshot"] += 1
            state.book.load(data.b, data.a, data.u)
            state.venue_symbol = data.s
            if (depth := self._depth_routes.get(data.s)) is not None:
                depth(local_ts_ns, True, data.b, data.a)
            state.synced = True
            state.resync_requested = False
            state.last_u = data.u
            state.last_top = None  # publish the reloaded top even if unchanged
        else:
            if not state.synced:
                self.dropped["delta_before_snapshot"] += 1
                self._request_resync(topic, state, "delta_before_snapshot")
                return
            if data.u != state.last_u + 1:
                if data.u <= state.last_u:
                    self.dropped["backwards_seq"] += 1  # a replayed/duplicate delta
                    return
                self.dropped["depth_gap"] += 1
                self._lose_sync(topic, state, "sequence_gap")
                return
            self.counts["delta"] += 1
            state.book.apply_bids(data.b)
            state.book.apply_asks(data.a)
            state.book.update_id = state.last_u = data.u
            if (depth := self._depth_routes.get(data.s)) is not None:
                depth(local_ts_ns, False, data.b, data.a)
        top = state.book.top()
        if top is None or top == state.last_top:
            return
        if top[0] >= top[2]:
            # A crossed book is a wrong book: on a book of depth > 1 the bad level stays
            # until a delta removes it, which the venue never sends (it does not have
            # it), so every later frame would be crossed too. Reset and take a fresh
            # snapshot instead of keeping it.
            self.dropped["crossed"] += 1
            self._lose_sync(topic, state, "crossed")
            return
        route = self._quote_routes.get(data.s) or resolve_route(
            self._symbol, data.s, self._quote_routes, self.sink.quote_route)
        if route is None:
            self.dropped["unknown_symbol"] += 1
            return
        state.last_top = top
        self.counts["quote"] += 1
        route.publish(message.to_quote(self.venue, route.symbol, top, local_ts_ns))

    def _on_trades(self, message: TradeMessage, local_ts_ns: int) -> None:
        for trade in message.data:
            route = self._trade_routes.get(trade.s) or resolve_route(
                self._symbol, trade.s, self._trade_routes, self.sink.trade_route)
            if route is None:
                self.dropped["unknown_symbol"] += 1
                continue
            if trade.v == 0.0:
                self.dropped["bad_value"] += 1
                continue
            self.counts["trade"] += 1
            route.publish(trade.to_trade(self.venue, route.symbol, local_ts_ns))

    def _lose_sync(self, topic: str, state: _TopicBook, reason: str) -> None:
        """The book cannot be trusted: forget it and ask for a fresh snapshot."""
        if state.synced and state.venue_symbol:
            self._depth_routes.lost(state.venue_symbol)
        state.synced = False
        state.book.clear()
        state.last_top = None
        self._request_resync(topic, state, reason)

    def _request_resync(self, topic: str, state: _TopicBook, reason: str) -> None:
        # Once per out-of-sync episode: one resubscribe answers every dropped delta.
        if state.resync_requested:
            return
        state.resync_requested = True
        self.depth_stats["snapshot_requests"] += 1
        self.resync_reasons[topic] = reason
        if self.on_resync is not None:
            self.on_resync(topic)
