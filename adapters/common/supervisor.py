"""Connection supervision shared by every venue adapter.

One `ConnectionSupervisor` per venue runs that venue's `Session` again and again:

- a session that fails is retried after an exponential backoff with jitter and a cap;
  the backoff starts over once a connection has stayed up for `healthy_after_s`;
- a session that ends on its own (planned reconnect: Binance's 24 h limit, a server
  shutdown notice) is reconnected at once, without backoff;
- errors are classified into a small taxonomy (`FeedError` subclasses) whose
  `should_retry` decides between retrying and failing loudly (a rejected subscription
  names its topic and stops the venue: retrying a typo forever helps nobody);
- `asyncio.CancelledError` is always re-raised: cancelling the supervisor stops it.

Two watchdogs:

- per connection: no frame at all for `silence_timeout_s` -> the session is torn down
  and reconnected. This catches half-open sockets, which never error on their own;
- per (venue, symbol): the venue's latest quote older than `stale_after_s` ->
  `bus.mark_stale(venue, symbol)`, so strategies stop acting on it. The next good quote
  clears the flag (the bus does that by itself). Losing the connection marks every
  symbol of the venue stale at once: no update can arrive until it is back.

Every connect, disconnect, silence, stale and resync is a structured log event, a
counter in the venue's `VenueStats`, and a `FeedEvent` handed to the listeners (the
recorder writes them into recordings as meta lines).

`WebSocketSession` is the socket part every native adapter shares: connect (with the
receive-optimised client of adapters/common/wsclient.py), have each frame handed to `on_frame`
with its local receive time as the socket is read, keep the connection's side tasks
(subscription, keepalive, age limit) running beside it, and turn the ways a connection
dies into `FeedError`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from adapters.common.stats import VenueStats, stats_for
from adapters.common.wsclient import (
    ConnectionClosedByPeer,
    ConnectionDropped,
    FrameConnection,
    HandshakeFailed,
    InvalidURL,
    WebSocketError,
    open_connection,
)
from daemon.core.logs import get_logger
from daemon.core.model import venue_symbol
from daemon.market.bus import Bus

log = get_logger("feed")

NS_PER_SECOND = 1_000_000_000


# --- error taxonomy -------------------------------------------------------------------------


class FeedError(Exception):
    """A market-data connection problem. `should_retry` says whether reconnecting helps."""

    should_retry: ClassVar[bool] = True
    #: Short name used in logs, meta lines and counters.
    kind: ClassVar[str] = "feed_error"

    def __init__(self, venue: str, detail: str) -> None:
        super().__init__(f"{venue}: {detail}")
        self.venue = venue
        self.detail = detail

    @property
    def retry_after_s(self) -> float:
        """Minimum wait before the next attempt (the backoff may add more)."""
        return 0.0


class ConnectFailed(FeedError):
    """DNS, TCP, TLS or WebSocket handshake failure, or a handshake that timed out."""

    kind = "connect_failed"


class ConnectionLost(FeedError):
    """The venue closed the connection (cleanly or not) or the socket broke."""

    kind = "connection_lost"


class SilenceTimeout(FeedError):
    """No frame at all for longer than the silence timeout: a half-open socket."""

    kind = "silence"


class RateLimited(FeedError):
    """The venue refused us for sending too much (HTTP 429/418, close code 1008)."""

    kind = "rate_limited"

    def __init__(self, venue: str, detail: str, retry_after_s: float = 30.0) -> None:
        super().__init__(venue, detail)
        self._retry_after_s = retry_after_s

    @property
    def retry_after_s(self) -> float:
        return self._retry_after_s


class ProtocolViolation(FeedError):
    """The venue answered something we cannot work with (an unexpected control reply)."""

    kind = "protocol"


class SubscriptionRejected(FeedError):
    """The venue refused a subscription: a wrong symbol or topic. Never retried."""

    should_retry = False
    kind = "subscription_rejected"

    def __init__(self, venue: str, topic: str, reason: str) -> None:
        super().__init__(venue, f"subscription to {topic!r} rejected: {reason}")
        self.topic = topic
        self.reason = reason


class VenueRefused(FeedError):
    """The endpoint refuses us for good: wrong URL (404), region block (451), bad URI."""

    should_retry = False
    kind = "venue_refused"


def classify_error(venue: str, error: BaseException) -> FeedError:
    """Map any exception from a session to the taxonomy (unknown ones are retried)."""
    if isinstance(error, FeedError):
        return error
    if isinstance(error, HandshakeFailed):
        status = error.status
        if status in (418, 429):
            retry_after = _retry_after_header(error.headers.get("retry-after"))
            return RateLimited(venue, f"handshake refused with HTTP {status}", retry_after)
        if status in (400, 401, 403, 404, 410, 451):
            return VenueRefused(venue, f"handshake refused with HTTP {status}")
        return ConnectFailed(venue, f"handshake failed: {error}")
    if isinstance(error, InvalidURL):
        return VenueRefused(venue, str(error))
    if isinstance(error, ConnectionClosedByPeer):
        if error.code == 1008:  # policy violation: Binance's "too many requests"
            return RateLimited(venue, f"closed by venue: 1008 {error.reason}", retry_after_s=10.0)
        return ConnectionLost(venue, f"closed by venue: {error.code} {error.reason}".rstrip())
    if isinstance(error, WebSocketError):
        return ConnectionLost(venue, str(error))
    if isinstance(error, TimeoutError):
        return ConnectFailed(venue, f"timed out: {error or 'no answer'}")
    if isinstance(error, OSError):
        return ConnectFailed(venue, f"{type(error).__name__}: {error}")
    return ConnectionLost(venue, f"{type(error).__name__}: {error}")


def _retry_after_header(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else 30.0
    except ValueError:
        return 30.0


# --- backoff --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff: initial_s * multiplier**n, capped, with +-jitter fraction."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    #: Each delay is scaled by a uniform factor in [1 - jitter, 1]: reconnecting clients
    #: spread out instead of hammering a recovering venue in lockstep.
    jitter: float = 0.5
    #: A connection that stayed up this long resets the backoff to `initial_s`.
    healthy_after_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `attempt` (0-based)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        factor = 1.0 - self.jitter * (rng or random).random()
        return base * factor


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """Something that happened to a venue's feed (not market data)."""

    kind: str  # connect | disconnect | silence | stale | fresh | resync | rejected
    venue: str
    ts_ns: int
    details: dict[str, Any] = field(default_factory=dict)


FeedListener = Callable[[FeedEvent], None]


@dataclass(frozen=True, slots=True)
class FeedTimings:
    """Time limits of a venue's feed (all seconds), from `VenueSettings` and adapter options."""

    #: No frame at all for this long: reconnect.
    silence_timeout_s: float = 30.0
    #: A quote older than this is flagged stale.
    stale_after_s: float = 10.0
    #: Reconnect proactively after this long (Binance closes connections at 24 h).
    max_connection_age_s: float | None = None
    #: WebSocket handshake limit.
    open_timeout_s: float = 10.0
    #: How long a subscription may wait for its acknowledgement.
    ack_timeout_s: float = 10.0
    #: A planned reconnect (age limit, shutdown notice) skips the backoff only after a
    #: connection that lasted this long: a venue that keeps saying "go" must not make
    #: us spin.
    min_planned_up_s: float = 1.0
    backoff: BackoffPolicy = BackoffPolicy()


# --- the supervisor -------------------------------------------------------------------------


class Link:
    """One connection attempt as the supervisor sees it; the session reports into it."""

    __slots__ = ("_on_connected", "connected_at", "details")

    def __init__(self, on_connected: Callable[[Link], None]) -> None:
        self._on_connected = on_connected
        #: time.monotonic() when the session said it is connected (None before).
        self.connected_at: float | None = None
        self.details: dict[str, Any] = {}

    def connected(self, **details: Any) -> None:
        """Called by the session once connected (and subscribed, where that is quick)."""
        if self.connected_at is None:
            self.connected_at = time.monotonic()
            self.details = details
            self._on_connected(self)


class Session(Protocol):
    """One venue connection's life. `serve` connects, reports `link.connected(...)`,
    delivers data until the connection ends, and then returns (planned reconnect) or
    raises (failure). It must leave nothing running behind it."""

    venue: str

    async def serve(self, link: Link) -> None: ...


class ConnectionSupervisor:
    """Keeps one venue's session running; owns both watchdogs and the venue's events."""

    def __init__(
        self,
        venue: str,
        bus: Bus,
        symbols: Sequence[str],
        timings: FeedTimings,
        *,
        stats: VenueStats | None = None,
        listeners: Iterable[FeedListener] = (),
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.venue = venue
        self.bus = bus
        self.symbols = list(symbols)
        self.timings = timings
        self.stats = stats or stats_for(venue)
        self.listeners: list[FeedListener] = list(listeners)
        self._clock_ns = clock_ns
        self._rng = rng or random.Random()
        self._attempt = 0
        self._stale: set[str] = set()
        self._never_quoted_warned: set[str] = set()
        self._started_ns = 0

    # -- events, used by sessions too --------------------------------------------------------

    def emit(self, kind: str, level: str = "info", **details: Any) -> None:
        """Log a feed event and hand it to the listeners (never raises into the feed)."""
        event = FeedEvent(kind, self.venue, self._clock_ns(), details)
        getattr(log, level)(kind, venue=self.venue, **details)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("feed_listener_failed", venue=self.venue, feed_event=kind)

    def resync(self, key: str, reason: str) -> None:
        """A session resynchronises a book (resubscribe, snapshot refetch)."""
        self.stats.resyncs += 1
        self.emit("resync", level="warning", key=key, reason=reason)

    # -- main loop ---------------------------------------------------------------------------

    async def run(self, session: Session) -> None:
        """Run `session` until cancelled; raise only a `FeedError` that must not be retried."""
        self._started_ns = self._clock_ns()
        watchdog = asyncio.create_task(self._watch_quotes(), name=f"stale-watchdog:{self.venue}")
        try:
            while True:
                link = Link(self._on_connected)
                error = await self._run_once(session, link)
                self._after_connection(link, error)
                if error is None:
                    if _up_for(link) >= self.timings.min_planned_up_s:
                        continue  # planned reconnect: no backoff
                    # A venue that asks us to go right after connecting: do not spin.
                    error = ConnectionLost(self.venue, "told to reconnect right after connecting")
                if not error.should_retry:
                    self.emit("gave_up", level="error", error=error.kind, detail=error.detail)
                    raise error
                delay = max(error.retry_after_s,
                            self.timings.backoff.delay(self._attempt, self._rng))
                self._attempt += 1
                log.info("reconnect_wait", venue=self.venue, delay_s=round(delay, 3),
                         attempt=self._attempt)
                await asyncio.sleep(delay)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _run_once(self, session: Session, link: Link) -> FeedError | None:
        """One connection attempt, policed by the silence watchdog."""
        task = asyncio.create_task(session.serve(link), name=f"session:{self.venue}")
        stats = self.stats
        silence_ns = int(self.timings.silence_timeout_s * NS_PER_SECOND)
        check_s = _check_interval(self.timings.silence_timeout_s)
        started_ns = self._clock_ns()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=check_s)
                if done:
                    break
                last_activity = max(stats.last_frame_ns, started_ns)
                if self._clock_ns() - last_activity > silence_ns:
                    stats.silences += 1
                    self.emit("silence", level="warning",
                              silent_s=round((self._clock_ns() - last_activity) / 1e9, 3))
                    await _cancel_and_wait(task)
                    return SilenceTimeout(
                        self.venue, f"no frame for {self.timings.silence_timeout_s:g} s")
        except asyncio.CancelledError:
            await _cancel_and_wait(task)
            if link.connected_at is not None:
                self._on_disconnected(link, "shutdown")
            raise
        if task.cancelled():  # only a cancel from outside our control gets here
            return ConnectionLost(self.venue, "session cancelled")
        error = task.exception()
        return None if error is None else classify_error(self.venue, error)

    def _on_connected(self, link: Link) -> None:
        stats = self.stats
        stats.connects += 1
        if stats.connects > 1:
            stats.reconnects += 1
        stats.connected = True
        self.emit("connect", attempt=self._attempt, **link.details)

    def _after_connection(self, link: Link, error: FeedError | None) -> None:
        if link.connected_at is not None:
            up_s = time.monotonic() - link.connected_at
            if up_s >= self.timings.backoff.healthy_after_s or error is None:
                self._attempt = 0
            self._on_disconnected(link, error.kind if error else "planned", error, up_s)
        elif error is not None:
            self.emit("connect_failed", level="warning", error=error.kind, detail=error.detail,
                      attempt=self._attempt)

    def _on_disconnected(self, link: Link, reason: str, error: FeedError | None = None,
                         up_s: float | None = None) -> None:
        stats = self.stats
        stats.disconnects += 1
        stats.connected = False
        details: dict[str, Any] = {"reason": reason}
        if error is not None:
            details["detail"] = error.detail
        if up_s is not None:
            details["up_s"] = round(up_s, 3)
        self.emit("disconnect", level="warning" if error else "info", **details)
        # No update can arrive until the connection is back: do not let a strategy act
        # on the last quote in the meantime.
        for symbol in self.symbols:
            self._mark_stale(symbol, "disconnected")

    # -- quote-age watchdog ------------------------------------------------------------------

    async def _watch_quotes(self) -> None:
        stale_ns = int(self.timings.stale_after_s * NS_PER_SECOND)
        check_s = _check_interval(self.timings.stale_after_s)
        while True:
            await asyncio.sleep(check_s)
            self.check_quotes(self._clock_ns(), stale_ns)

    def check_quotes(self, now_ns: int, stale_ns: int) -> None:
        """Flag every symbol whose newest quote is older than `stale_ns` (one pass)."""
        view = self.bus.view
        for symbol in self.symbols:
            quote = view.quote(self.venue, symbol)
            if quote is None:
                if now_ns - self._started_ns > stale_ns and symbol not in self._never_quoted_warned:
                    self._never_quoted_warned.add(symbol)
                    self.emit("no_quotes", level="warning", symbol=symbol,
                              waited_s=round((now_ns - self._started_ns) / 1e9, 3))
                continue
            if not quote.stale:
                if symbol in self._stale:
                    self._stale.discard(symbol)  # the bus cleared it with a fresh quote
                    self.emit("fresh", symbol=symbol)
                if now_ns - quote.local_ts_ns > stale_ns:
                    self._mark_stale(symbol, "quote_age",
                                     age_s=round((now_ns - quote.local_ts_ns) / 1e9, 3))

    def _mark_stale(self, symbol: str, reason: str, **details: Any) -> None:
        if self.bus.mark_stale(self.venue, symbol) is None or symbol in self._stale:
            return
        self._stale.add(symbol)
        self.stats.stale_events += 1
        self.emit("stale", level="warning", symbol=symbol, reason=reason, **details)


def _up_for(link: Link) -> float:
    return 0.0 if link.connected_at is None else time.monotonic() - link.connected_at


def _check_interval(limit_s: float) -> float:
    """How often a watchdog looks: often enough to react within ~25% of its limit."""
    return min(1.0, max(0.005, limit_s / 4))


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has finished (its own exception is not ours)."""
    task.cancel()
    await asyncio.wait({task})


# --- the shared WebSocket session -----------------------------------------------------------


#: Receives every raw frame of a venue with its local receive time (the recorder).
FrameTap = Callable[[bytes, int], None]


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


def timings_from_settings(venue_settings: Any) -> FeedTimings:
    """`FeedTimings` from a `VenueSettings`: stale and silence limits, reconnect backoff,
    connection age."""
    return FeedTimings(
        silence_timeout_s=venue_settings.silence_timeout_s,
        stale_after_s=venue_settings.stale_after_s,
        max_connection_age_s=venue_settings.max_connection_age_s,
        backoff=BackoffPolicy(initial_s=venue_settings.reconnect_initial_s,
                              max_s=venue_settings.reconnect_max_s),
    )


def venue_symbols(symbols: Sequence[str]) -> dict[str, str]:
    """Venue symbol -> unified symbol for a parser's `set_symbols`."""
    return {venue_symbol(symbol): symbol for symbol in symbols}
