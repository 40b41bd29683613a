"""Binance spot and USD-M futures public market data over the native WebSocket API.

Endpoint: the venue's `ws_url` setting is the documented raw-stream base (`.../ws`);
we connect to the combined-stream endpoint next to it (`.../stream?streams=a/b/c`), so
every frame names its stream (`{"stream": "btcusdt@bookTicker", "data": {...}}`) and one
connection carries all symbols. The URL carries the subscriptions of the moment, which
makes a reconnect resubscribe by construction; symbols added or removed while connected
go through live `SUBSCRIBE` / `UNSUBSCRIBE` requests, each checked against its reply.

Streams per symbol: `<sym>@bookTicker` (top of book, every change) and `<sym>@trade`.
With `book_depth > 1` also `<sym>@depth@100ms`, plus the REST depth snapshot the parser
asks for (`on_resync`) to build a local book by Binance's documented procedure.

Protocol duties: the server pings every 20 s (spot) / 3 min (futures) and drops a
client that does not pong: our WebSocket client answers every ping as it reads it (and
pings the server itself every `ping_interval_s`, 20 s, to tell a dead TCP connection from
a quiet market). Binance closes every connection at 24 h, so we reconnect proactively
before that (`max_connection_age_s`, 23 h) and at once when the server announces a
shutdown (`serverShutdown`).
Control messages are limited (5/s spot, 10/s futures): ours are paced. Backwards or
repeated bookTicker update ids (`u`) are dropped by the parser.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import orjson

from adapters.binance.parser import BINANCE_VENUES, BinanceParser
from adapters.common.errors import ProtocolViolation, SubscriptionRejected
from adapters.common.session import VenueSession, wait_for_reply
from adapters.common.wsclient import FrameConnection
from config.settings import VenueSettings
from daemon.core.logs import get_logger
from daemon.core.model import venue_symbol
from daemon.market.bus import Bus

log = get_logger("binance")

#: Spot allows 5 incoming control messages per second per connection, futures 10.
CONTROL_MESSAGE_INTERVAL_S = 0.25
DEPTH_SNAPSHOT_LIMIT = 1000
_SNAPSHOT_RETRIES = 3


def combined_stream_url(ws_url: str, streams: Iterable[str]) -> str:
    """`wss://host/ws` -> `wss://host/stream?streams=a/b` (a `/stream` base is kept)."""
    parts = urlsplit(ws_url)
    path = parts.path.rstrip("/")
    if path.endswith("/ws"):
        path = path[: -len("/ws")] + "/stream"
    elif not path.endswith("/stream"):
        path = path + "/stream"
    return urlunsplit((parts.scheme, parts.netloc, path, "streams=" + "/".join(streams), ""))


def streams_for(symbols: Iterable[str], depth: bool = False) -> list[str]:
    """Stream names for unified symbols: bookTicker and trade (and depth) per symbol."""
    kinds = BinanceAdapter.STREAMS + ((BinanceAdapter.DEPTH_STREAM,) if depth else ())
    return [f"{venue_symbol(symbol).lower()}@{kind}" for symbol in symbols for kind in kinds]


class BinanceAdapter(VenueSession):
    """Binance spot or USD-M market data for a set of symbols, supervised; `run()` until
    cancelled. Publishes Quotes (bookTicker) and Trades to the bus."""

    VENUES = BINANCE_VENUES
    DATA_PREFIX = b'{"stream"'
    #: Streams of every symbol (`<symbol>@<stream>`); with depth books `DEPTH_STREAM` too.
    STREAMS: ClassVar[tuple[str, ...]] = ("bookTicker", "trade")
    DEPTH_STREAM: ClassVar[str] = "depth@100ms"
    #: REST depth snapshot endpoint per market, under the venue's `rest_url`.
    REST_DEPTH_PATH: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"binance_spot": "/api/v3/depth", "binance_usdm": "/fapi/v1/depth"})

    def __init__(self, venue: str, settings: VenueSettings, symbols: Sequence[str], bus: Bus,
                 **options: Any) -> None:
        """`options`: see `WebSocketSession` (timings, listeners, frame_tap, stats)."""
        super().__init__(venue, settings, symbols, bus, **options)
        self._next_request_id = 0
        self._last_control_send = 0.0
        self._control_lock = asyncio.Lock()
        self._snapshots_in_flight: set[str] = set()
        self._books_loaded: set[str] = set()

    @property
    def depth(self) -> bool:
        """Whether to keep depth books (`book_depth > 1`); top of book is bookTicker."""
        return self.settings.book_depth > 1

    # -- VenueSession ------------------------------------------------------------------------

    def url(self) -> str:
        return combined_stream_url(self.settings.ws_url, self.subscriptions)

    async def on_open(self, ws: FrameConnection) -> None:
        # The URL subscribed us; nothing to send. Frames are already flowing.
        return None

    def on_close(self) -> None:
        super().on_close()
        self._snapshots_in_flight.clear()
        self._books_loaded.clear()

    def subscriptions_for(self, symbols: Sequence[str]) -> list[str]:
        return streams_for(symbols, self.depth)

    async def change_subscriptions(self, ws: FrameConnection, added: list[str],
                                   removed: list[str]) -> None:
        if added:
            await self._request(ws, "SUBSCRIBE", added)
        if removed:
            await self._request(ws, "UNSUBSCRIBE", removed)

    def make_parser(self, symbols: dict[str, str]) -> BinanceParser:
        return BinanceParser(self.venue, self.bus, symbols, on_resync=self._on_resync,
                             books=self.depth)

    def on_control(self, message: dict[str, Any]) -> None:
        if "id" in message and message["id"] is not None:
            if not self._replies.resolve(str(message["id"]), message):
                log.warning("unexpected_reply", venue=self.venue, reply=message)
        elif message.get("e") == "serverShutdown":
            self.reconnect_soon("server_shutdown")

    async def _request(self, ws: FrameConnection, method: str, streams: list[str]) -> None:
        async with self._control_lock:
            # Pace control messages under Binance's per-connection limit.
            wait = self._last_control_send + CONTROL_MESSAGE_INTERVAL_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_request_id += 1
            request_id = self._next_request_id
            reply = self._replies.expect(str(request_id))
            await ws.send(orjson.dumps({"method": method, "params": streams, "id": request_id})
                          .decode())
            self._last_control_send = time.monotonic()
        self.supervisor.emit("subscribe" if method == "SUBSCRIBE" else "unsubscribe",
                             streams=streams, request_id=request_id)
        message = await wait_for_reply(reply, self.timings.ack_timeout_s, self.venue,
                                       f"{method} {streams}")
        error = _reply_error(message)
        if error is not None:
            raise SubscriptionRejected(self.venue, ",".join(streams), error)

    # -- depth snapshots ---------------------------------------------------------------------

    def _on_resync(self, symbol: str) -> None:
        """The parser needs a REST snapshot for `symbol` (first diff, or lost sync)."""
        # No check on self.ws: the first diffs may arrive before open_connection returns.
        if symbol in self._snapshots_in_flight:
            return
        self._snapshots_in_flight.add(symbol)
        if symbol in self._books_loaded:
            self.supervisor.resync(symbol, "depth_gap")
        self.spawn(self._fetch_snapshot(symbol), f"snapshot:{symbol}")

    async def _fetch_snapshot(self, symbol: str) -> None:
        import aiohttp  # only needed with depth books

        url = self.settings.rest_url.rstrip("/") + self.REST_DEPTH_PATH[self.venue]
        params = {"symbol": symbol, "limit": str(DEPTH_SNAPSHOT_LIMIT)}
        timeout = aiohttp.ClientTimeout(total=self.timings.ack_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                body = await _get_with_retries(http, url, params, self.venue)
        finally:
            self._snapshots_in_flight.discard(symbol)
        received_ns = time.time_ns()
        if self.frame_tap is not None:
            # Recorded with its symbol, so a replay knows whose book it is.
            self.frame_tap(body.rstrip()[:-1] + b',"symbol":"' + symbol.encode() + b'"}',
                           received_ns)
        self._books_loaded.add(symbol)
        self.parser.feed_snapshot(symbol, body)


def _reply_error(message: Any) -> str | None:
    """The error text of a SUBSCRIBE/UNSUBSCRIBE reply; None when it succeeded.

    Success is `{"result": null, "id": N}`; failures come as `{"error": {"code", "msg"},
    "id": N}` or, in older servers, `{"code": N, "msg": "...", "id": N}`.
    """
    if not isinstance(message, dict):
        return "reply is not an object"
    error = message.get("error")
    if isinstance(error, dict):
        return f"code {error.get('code')}: {error.get('msg')}"
    if error is not None:
        return str(error)
    if "code" in message:
        return f"code {message.get('code')}: {message.get('msg')}"
    if "result" in message and message["result"] is None:
        return None
    return f"unexpected reply {message!r}"


async def _get_with_retries(http: Any, url: str, params: dict[str, str], venue: str) -> bytes:
    import aiohttp

    delay = 0.5
    for attempt in range(_SNAPSHOT_RETRIES):
        try:
            async with http.get(url, params=params) as response:
                body = await response.read()
                if response.status == 200:
                    return body
                problem = f"HTTP {response.status}: {body[:200]!r}"
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            problem = f"{type(error).__name__}: {error}"
        log.warning("snapshot_failed", venue=venue, url=url, attempt=attempt + 1,
                    problem=problem)
        await asyncio.sleep(delay)
        delay *= 2
    raise ProtocolViolation(venue, f"depth snapshot {url} failed {_SNAPSHOT_RETRIES} times")
