"""Bybit v5 spot and linear public market data over the native WebSocket API.

Endpoint: the venue's `ws_url` as documented (`wss://stream.bybit.com/v5/public/spot`
or `.../linear`). Topics per symbol: `orderbook.<N>.<SYMBOL>` (N from the
`book_depth` setting, rounded up to a depth the market offers) and
`publicTrade.<SYMBOL>`.

Protocol duties:

- subscriptions: one `{"op": "subscribe", "args": [topic], "req_id": topic}` per topic,
  so the acknowledgement names the topic it answers. A refused one (`"success": false`)
  is a `SubscriptionRejected` naming the topic and Bybit's reason; it is not retried.
- keepalive: Bybit drops a connection that sends nothing, so `{"op": "ping"}` goes out
  every 20 s; the pong is a frame like any other, which also keeps the silence watchdog
  quiet on a quiet market.
- book continuity: every order-book message carries `u`. A snapshot (re)loads the book;
  a delta must follow the previous `u`. A delta before any snapshot, a gap, or a book
  left crossed by a delta makes the parser ask for a resync; we unsubscribe and
  resubscribe the topic, and Bybit answers with a fresh snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import orjson

from adapters.bybit.parser import BYBIT_VENUES, BybitParser
from adapters.common.errors import SubscriptionRejected
from adapters.common.session import VenueSession, wait_for_reply
from adapters.common.wsclient import FrameConnection
from config.settings import VenueSettings
from daemon.core.logs import get_logger
from daemon.core.model import venue_symbol
from daemon.market.bus import Bus

log = get_logger("bybit")


def book_depth_for(venue: str, wanted: int) -> int:
    """The smallest published depth >= `wanted` (the deepest one if none is)."""
    depths = BybitAdapter.BOOK_DEPTHS[venue]
    return next((depth for depth in depths if depth >= wanted), depths[-1])


def topics_for(symbols: Iterable[str], depth: int) -> list[str]:
    """Topic names for unified symbols: the order book (at `depth`) and trades per symbol."""
    return [topic.format(depth=depth, symbol=venue_symbol(symbol))
            for symbol in symbols for topic in BybitAdapter.TOPICS]


class BybitAdapter(VenueSession):
    """Bybit spot or linear market data for a set of symbols, supervised; `run()` until
    cancelled. Publishes the order book's top as Quotes, and Trades, to the bus."""

    VENUES = BYBIT_VENUES
    DATA_PREFIX = b'{"topic"'
    #: Topics of every symbol.
    TOPICS: ClassVar[tuple[str, ...]] = ("orderbook.{depth}.{symbol}", "publicTrade.{symbol}")
    #: Order-book depths Bybit v5 publishes, per market.
    BOOK_DEPTHS: ClassVar[Mapping[str, tuple[int, ...]]] = MappingProxyType(
        {"bybit_spot": (1, 50, 200, 1000), "bybit_linear": (1, 50, 200, 500, 1000)})
    #: Bybit's keepalive is its application-level `op: ping` (see `_keepalive`).
    PROTOCOL_PINGS = False

    def __init__(self, venue: str, settings: VenueSettings, symbols: Sequence[str], bus: Bus,
                 **options: Any) -> None:
        """`options`: see `WebSocketSession` (timings, listeners, frame_tap, stats)."""
        super().__init__(venue, settings, symbols, bus, **options)
        if self.depth != settings.book_depth:
            log.info("book_depth_rounded", venue=venue, wanted=settings.book_depth,
                     using=self.depth)
        self._ping_count = 0
        self._resyncing: set[str] = set()

    @property
    def depth(self) -> int:
        """The order-book depth subscribed: `book_depth` rounded up to a published one."""
        return book_depth_for(self.venue, self.settings.book_depth)

    # -- VenueSession ------------------------------------------------------------------------

    def url(self) -> str:
        return self.settings.ws_url

    async def on_open(self, ws: FrameConnection) -> None:
        self.spawn(self._keepalive(ws), "ping")
        await self._subscribe_all(ws, "subscribe", self.subscriptions)
        log.info("subscribed", venue=self.venue, topics=self.subscriptions)

    def on_close(self) -> None:
        super().on_close()
        self._resyncing.clear()

    def subscriptions_for(self, symbols: Sequence[str]) -> list[str]:
        return topics_for(symbols, self.depth)

    async def change_subscriptions(self, ws: FrameConnection, added: list[str],
                                   removed: list[str]) -> None:
        await self._subscribe_all(ws, "subscribe", added)
        await self._subscribe_all(ws, "unsubscribe", removed)

    def make_parser(self, symbols: dict[str, str]) -> BybitParser:
        return BybitParser(self.venue, self.bus, symbols, on_resync=self._on_resync)

    def on_control(self, message: dict[str, Any]) -> None:
        """Acks and pongs; pongs need nothing beyond the frame itself (it kept the
        silence watchdog quiet)."""
        op = message.get("op")
        if op in ("subscribe", "unsubscribe"):
            self._on_ack(op, message)

    # -- subscriptions -----------------------------------------------------------------------

    async def _subscribe_all(self, ws: FrameConnection, op: str, topics: list[str]) -> None:
        """Send one request per topic, then wait for every acknowledgement."""
        replies = []
        for topic in topics:
            replies.append((topic, self._replies.expect(f"{op}:{topic}")))
            await ws.send(orjson.dumps({"op": op, "args": [topic], "req_id": topic}).decode())
        for topic, reply in replies:
            message = await wait_for_reply(reply, self.timings.ack_timeout_s, self.venue,
                                           f"{op} {topic}")
            if message.get("success") is not True:
                raise SubscriptionRejected(self.venue, topic,
                                           str(message.get("ret_msg") or "no reason given"))

    async def _resubscribe(self, topic: str) -> None:
        """Unsubscribe + subscribe: Bybit answers a new subscription with a snapshot."""
        ws = self.ws
        if ws is None:
            return
        try:
            await self._subscribe_all(ws, "unsubscribe", [topic])
            await self._subscribe_all(ws, "subscribe", [topic])
        finally:
            self._resyncing.discard(topic)

    def _on_resync(self, topic: str) -> None:
        if topic in self._resyncing or self.ws is None:
            return
        self._resyncing.add(topic)
        reason = self.parser.resync_reasons.get(topic, "sequence_gap")
        self.supervisor.resync(topic, reason)
        self.spawn(self._resubscribe(topic), f"resubscribe:{topic}")

    async def _keepalive(self, ws: FrameConnection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            self._ping_count += 1
            await ws.send(orjson.dumps({"op": "ping", "req_id": f"ping-{self._ping_count}"})
                          .decode())

    def _on_ack(self, op: str, message: dict[str, Any]) -> None:
        request_id = message.get("req_id")
        if isinstance(request_id, str) and self._replies.resolve(f"{op}:{request_id}", message):
            return
        # No (known) req_id: answer the oldest waiting request of this kind.
        for key in self._replies.pending():
            if key.startswith(op + ":"):
                self._replies.resolve(key, message)
                return
        log.warning("unexpected_ack", venue=self.venue, reply=message)
