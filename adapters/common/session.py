"""`WebSocketSession`: the socket part every native venue adapter shares.

Connect (with the receive-optimised client of wsclient.py), hand each frame to `on_frame`
with its local receive time as the socket is read, keep the connection's side tasks
(subscription, keepalive, age limit) running beside it, and turn the ways a connection
dies into `FeedError`s. The `ConnectionSupervisor` runs it again and again.

`VenueSession` adds what every native market-data venue does the same way (Binance,
Bybit): frames routed to the parser or to control handling, subscriptions named per
symbol and changed live, pending requests failed and the parser reset when the
connection goes. The venue classes keep only their protocol.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from typing import Any, ClassVar

import orjson

from adapters.common.errors import ConnectionLost, ProtocolViolation
from adapters.common.events import FeedListener, FrameTap
from adapters.common.parsing import FrameParser
from adapters.common.stats import VenueStats
from adapters.common.supervisor import ConnectionSupervisor, Link
from adapters.common.timings import FeedTimings, timings_from_settings
from adapters.common.wsclient import (
    ConnectionDropped,
    FrameConnection,
    WebSocketError,
    open_connection,
)
from daemon.core.logs import get_logger
from daemon.core.model import venue_symbol
from daemon.market.bus import Bus

log = get_logger("feed")


class WebSocketSession(ABC):
    """A native venue connection: one socket, frames handed over as they arrive, and
    side tasks.

    Subclasses say where to connect (`url`), what to do once connected (`on_open`,
    e.g. subscribe and wait for acknowledgements), how to read a frame (`on_frame`,
    called synchronously with the raw bytes and the local receive time in ns), and what
    to forget when the connection is gone (`on_close`). Side tasks started with `spawn`
    run beside the connection; the first one to fail ends the connection with its
    error, one that returns `PLANNED_RECONNECT` ends it for an immediate reconnect.
    """

    MAX_MESSAGE_BYTES = 16 * 1024 * 1024
    #: Whether we send WebSocket pings (every `ping_interval_s`; a pong missing for as
    #: long again ends the connection: the way to tell a dead TCP connection from a quiet
    #: market). A venue with a ping message of its own sends that instead.
    PROTOCOL_PINGS: ClassVar[bool] = True

    def __init__(
        self,
        venue: str,
        settings: Any,
        symbols: Sequence[str],
        bus: Bus,
        *,
        timings: FeedTimings | None = None,
        listeners: Iterable[FeedListener] = (),
        frame_tap: FrameTap | None = None,
        stats: VenueStats | None = None,
    ) -> None:
        """`settings` is the venue's `VenueSettings`; `timings` (tests) replaces what they
        say about time limits and backoff."""
        timings = timings or timings_from_settings(settings)
        self.venue = venue
        self.settings = settings
        self.bus = bus
        self.frame_tap = frame_tap
        self.symbols: list[str] = list(symbols)
        self.supervisor = ConnectionSupervisor(venue, bus, symbols, timings, stats=stats,
                                               listeners=listeners)
        self.stats = self.supervisor.stats
        self.timings = timings
        # At least twice per silence timeout, so a quiet connection is kept alive.
        self.ping_interval_s: float = min(settings.ping_interval_s, timings.silence_timeout_s / 2)
        self.ws: FrameConnection | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._finished: list[asyncio.Task[Any]] = []
        self._wakeup = asyncio.Event()
        self._planned_reconnect: str | None = None

    async def run(self) -> None:
        """Stream until cancelled; raises only a `FeedError` that cannot be retried."""
        await self.supervisor.run(self)

    # -- to implement ------------------------------------------------------------------------

    @abstractmethod
    def url(self) -> str:
        """The URL to connect to now (may depend on the current subscriptions)."""

    @abstractmethod
    async def on_open(self, ws: FrameConnection) -> None:
        """Connected: subscribe (and wait for acks). Frames flow while this runs."""

    @abstractmethod
    def on_frame(self, frame: bytes, local_ts_ns: int) -> None:
        """One frame as received; must not raise on bad input."""

    def on_close(self) -> None:  # noqa: B027 - optional hook
        """The connection is gone: forget per-connection state (sequence numbers, acks)."""

    # -- helpers for subclasses --------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a side task for the life of this connection."""
        task = asyncio.create_task(coroutine, name=f"{self.venue}:{name}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)
        return task

    def _side_task_done(self, task: asyncio.Task[Any]) -> None:
        if task in self._side_tasks:
            self._finished.append(task)
            self._wakeup.set()

    def reconnect_soon(self, reason: str) -> None:
        """End the connection and reconnect at once (no backoff), e.g. server shutdown."""
        if self._planned_reconnect is None:
            self._planned_reconnect = reason
            self.supervisor.emit("planned_reconnect", reason=reason)
            self.spawn(_return_now(), "planned-reconnect")

    # -- the connection ----------------------------------------------------------------------

    async def serve(self, link: Link) -> None:
        url = self.url()
        self._planned_reconnect = None
        # Frames go straight from the socket to on_frame; the connection counts them
        # into the venue's stats (frames, last_frame_ns) once per socket read.
        connection = await open_connection(
            url, self.on_frame, open_timeout_s=self.timings.open_timeout_s,
            max_message_bytes=self.MAX_MESSAGE_BYTES, counters=self.stats)
        self.ws = connection
        try:
            link.connected(url=url)
            self.spawn(self.on_open(connection), "open")
            if self.timings.max_connection_age_s:
                self.spawn(_planned_after(self.timings.max_connection_age_s), "max-age")
            if self.PROTOCOL_PINGS:
                self.spawn(self._keepalive(connection, self.ping_interval_s), "ping")
            await self._until_first_ends(connection.closed)
        finally:
            self.ws = None
            await self._stop_side_tasks()
            await connection.close(timeout_s=1.0)
            self.on_close()

    async def _keepalive(self, connection: FrameConnection, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await connection.ping(timeout_s=interval_s)
            except TimeoutError:
                raise ConnectionLost(self.venue, f"no pong within {interval_s:g} s") from None

    async def _until_first_ends(self, closed: asyncio.Future[None]) -> None:
        """Wait until the connection closes or a side task ends; raise its error, if any."""
        while True:
            waiter = asyncio.create_task(self._wakeup.wait())
            try:
                await asyncio.wait({closed, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if closed.done():
                closed.result()  # raises ConnectionClosedByPeer, ConnectionDropped, ...
                raise ConnectionDropped("connection closed")
            self._wakeup.clear()
            finished, self._finished = self._finished, []
            for task in finished:
                self._side_tasks.discard(task)
                if task.cancelled():
                    continue
                error = task.exception()
                if error is not None:
                    raise error
                if task.result() is PLANNED_RECONNECT:
                    return

    async def _stop_side_tasks(self) -> None:
        tasks, self._side_tasks = self._side_tasks, set()
        self._finished.clear()
        self._wakeup.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


#: Returned by a side task to end the connection for an immediate, backoff-free reconnect.
PLANNED_RECONNECT = object()


async def _planned_after(seconds: float) -> object:
    await asyncio.sleep(seconds)
    log.info("connection_age_limit", age_s=seconds)
    return PLANNED_RECONNECT


async def _return_now() -> object:
    return PLANNED_RECONNECT


async def wait_for_reply(
    future: Awaitable[Any], timeout_s: float, venue: str, what: str
) -> Any:
    """Await a control reply; a missing one is a protocol problem worth a reconnect."""
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: see wsclient.open_connection
            return await future
    except TimeoutError:
        raise ProtocolViolation(venue, f"no reply to {what} within {timeout_s:g} s") from None


class PendingReplies:
    """Control requests waiting for the venue's reply, by request id."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}

    def expect(self, request_id: str) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        return future

    def resolve(self, request_id: str, reply: Any) -> bool:
        """Hand a reply to its waiter; False when nobody waits for this id."""
        future = self._futures.pop(request_id, None)
        if future is None or future.done():
            return False
        future.set_result(reply)
        return True

    def pending(self) -> list[str]:
        return list(self._futures)

    def fail_all(self, error: BaseException) -> None:
        """The connection is gone: nobody will answer these; their waiters get `error`."""
        futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: no "never retrieved" noise for no waiter


def venue_symbols(symbols: Sequence[str]) -> dict[str, str]:
    """Venue symbol -> unified symbol for a parser's `set_symbols`."""
    return {venue_symbol(symbol): symbol for symbol in symbols}


class VenueSession(WebSocketSession):
    """A native venue's public market data: one parser, named subscriptions changed live,
    control replies matched to their requests.

    A venue class declares as class data the venues it serves (`VENUES`) and how its
    market-data frames start (`DATA_PREFIX`: anything else is a control reply or a notice),
    and implements what is venue-specific: the names of a symbol set's subscriptions
    (`subscriptions_for`), sending a change of them (`change_subscriptions`), the parser
    (`make_parser`) and what to do with a control message (`on_control`).
    """

    #: Venue ids this class serves.
    VENUES: ClassVar[tuple[str, ...]]
    #: How every market-data frame starts (`{"stream"`, `{"topic"`).
    DATA_PREFIX: ClassVar[bytes]

    def __init__(self, venue: str, settings: Any, symbols: Sequence[str], bus: Bus,
                 **options: Any) -> None:
        """`options`: see `WebSocketSession` (timings, listeners, frame_tap, stats)."""
        if venue not in self.VENUES:
            raise ValueError(
                f"{type(self).__name__} venue must be one of {self.VENUES}, not {venue!r}")
        super().__init__(venue, settings, symbols, bus, **options)
        self._replies = PendingReplies()
        #: Stream or topic names of the current symbols (what the next connection asks for).
        self.subscriptions: list[str] = self.subscriptions_for(self.symbols)
        self.parser = self.make_parser(venue_symbols(self.symbols))
        self.stats.attach_drops(self.parser.dropped)
        self._feed = self.parser.feed

    # -- to implement ------------------------------------------------------------------------

    @abstractmethod
    def subscriptions_for(self, symbols: Sequence[str]) -> list[str]:
        """Stream / topic names that carry these unified symbols' market data."""

    @abstractmethod
    async def change_subscriptions(self, ws: FrameConnection, added: list[str],
                                   removed: list[str]) -> None:
        """Subscribe `added` and unsubscribe `removed` on a live connection, each checked
        against its reply (`SubscriptionRejected` when the venue refuses)."""

    @abstractmethod
    def make_parser(self, symbols: dict[str, str]) -> FrameParser:
        """The frame parser for venue symbol -> unified symbol `symbols`."""

    @abstractmethod
    def on_control(self, message: dict[str, Any]) -> None:
        """A decoded frame that is not market data: a reply, a pong, a notice."""

    # -- WebSocketSession --------------------------------------------------------------------

    def on_frame(self, frame: bytes, local_ts_ns: int) -> None:
        if self.frame_tap is not None:
            self.frame_tap(frame, local_ts_ns)
        if frame.startswith(self.DATA_PREFIX):
            self._feed(frame, local_ts_ns)
        else:
            self._on_other_frame(frame, local_ts_ns)

    def on_close(self) -> None:
        """Nobody will answer the pending requests; the next connection starts a new
        sequence (update ids, snapshots), so the parser forgets its state."""
        self._replies.fail_all(ConnectionLost(self.venue, "connection closed before the reply"))
        self.parser.reset()

    # -- live subscription changes -----------------------------------------------------------

    async def set_symbols(self, symbols: Sequence[str]) -> None:
        """Change the symbols streamed, live: subscribe the new, unsubscribe the old.

        While disconnected only the desired set changes (the next connection asks for
        it). Raises `SubscriptionRejected` when the venue refuses a request.
        """
        wanted = self.subscriptions_for(symbols)
        added = [name for name in wanted if name not in self.subscriptions]
        removed = [name for name in self.subscriptions if name not in wanted]
        self.symbols = list(symbols)
        self.subscriptions = wanted
        self.supervisor.symbols = list(symbols)
        self.parser.set_symbols(venue_symbols(symbols))
        ws = self.ws
        if ws is None:
            return
        try:
            await self.change_subscriptions(ws, added, removed)
        except (ConnectionLost, WebSocketError):
            # The next connection asks for the new set: nothing is lost.
            log.info("resubscribe_on_reconnect", venue=self.venue,
                     subscriptions=self.subscriptions)

    def _on_other_frame(self, frame: bytes, local_ts_ns: int) -> None:
        """Control replies and notices; the parser still sees (and counts) every frame."""
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict):
            self.on_control(message)
        self._feed(frame, local_ts_ns)
