"""Connection supervision shared by every venue adapter.

One `ConnectionSupervisor` per venue runs that venue's `Session` again and again:

- a session that fails is retried after an exponential backoff with jitter and a cap
  (timings.py); the backoff starts over after a connection that delivered market data
  (a quote or trade on the bus), or that stayed up for `healthy_after_s`;
- a session that ends on its own (planned reconnect: Binance's 24 h limit, a server
  shutdown notice) is reconnected at once, without backoff;
- errors are classified into a small taxonomy (errors.py) whose `should_retry` decides
  between retrying and failing loudly;
- `asyncio.CancelledError` is always re-raised: cancelling the supervisor stops it.

It runs both watchdogs (watchdogs.py): silence per connection, quote age per symbol.
Losing the connection marks every symbol of the venue stale at once: no update can arrive
until it is back.

Every connect, disconnect, silence, stale and resync is a structured log event, a
counter in the venue's `VenueStats`, and a `FeedEvent` handed to the listeners (the
recorder writes them into recordings as meta lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from adapters.common.errors import ConnectionLost, FeedError, SilenceTimeout, classify_error
from adapters.common.events import FeedEvent, FeedListener
from adapters.common.stats import VenueStats, stats_for
from adapters.common.timings import FeedTimings
from adapters.common.watchdogs import StaleQuotes, check_interval, silent_for_ns
from daemon.core.clock import NS_PER_SECOND
from daemon.core.logs import get_logger
from daemon.market.bus import Bus

log = get_logger("feed")



class Link:
    """One connection attempt as the supervisor sees it; the session reports into it."""

    __slots__ = ("_monotonic", "_on_connected", "connected_at", "details",
                 "published_at_connect")

    def __init__(self, on_connected: Callable[[Link], None],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._on_connected = on_connected
        self._monotonic = monotonic
        #: The supervisor's monotonic clock when the session said it is connected (None
        #: before).
        self.connected_at: float | None = None
        self.details: dict[str, Any] = {}
        #: The venue's quotes + trades published on the bus when it connected.
        self.published_at_connect = 0

    def connected(self, **details: Any) -> None:
        """Called by the session once connected (and subscribed, where that is quick)."""
        if self.connected_at is None:
            self.connected_at = self._monotonic()
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
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`monotonic` (connection up time) and `sleep` (the backoff wait) are injectable
        so a test can run many reconnects on a simulated clock."""
        self.venue = venue
        self.bus = bus
        self.symbols = list(symbols)
        self.timings = timings
        self.stats = stats or stats_for(venue)
        self.listeners: list[FeedListener] = list(listeners)
        self._clock_ns = clock_ns
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._sleep = sleep
        self._attempt = 0
        self._started_ns = 0
        self._quotes = StaleQuotes(venue, bus, self.stats, self.emit)

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
                link = Link(self._on_connected, self._monotonic)
                error = await self._run_once(session, link)
                self._after_connection(link, error)
                if error is None:
                    if self._up_for(link) >= self.timings.min_planned_up_s:
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
                await self._sleep(delay)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _run_once(self, session: Session, link: Link) -> FeedError | None:
        """One connection attempt, policed by the silence watchdog."""
        task = asyncio.create_task(session.serve(link), name=f"session:{self.venue}")
        stats = self.stats
        silence_ns = int(self.timings.silence_timeout_s * NS_PER_SECOND)
        check_s = check_interval(self.timings.silence_timeout_s)
        started_ns = self._clock_ns()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=check_s)
                if done:
                    break
                silent_ns = silent_for_ns(stats, started_ns, self._clock_ns())
                if silent_ns > silence_ns:
                    stats.silences += 1
                    self.emit("silence", level="warning", silent_s=round(silent_ns / 1e9, 3))
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
        link.published_at_connect = self.bus.published_by(self.venue)
        stats = self.stats
        stats.connects += 1
        if stats.connects > 1:
            stats.reconnects += 1
        stats.connected = True
        self.emit("connect", attempt=self._attempt, **link.details)

    def _after_connection(self, link: Link, error: FeedError | None) -> None:
        if link.connected_at is not None:
            up_s = self._up_for(link)
            # A connection that delivered market data worked: the next failure starts
            # the backoff over. Waiting for `healthy_after_s` alone let a venue that resets
            # every few seconds push the backoff to its cap (connected ~25 % of the time).
            delivered = self.bus.published_by(self.venue) > link.published_at_connect
            if delivered or up_s >= self.timings.backoff.healthy_after_s or error is None:
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
            self._quotes.mark_stale(symbol, "disconnected")

    def _up_for(self, link: Link) -> float:
        return 0.0 if link.connected_at is None else self._monotonic() - link.connected_at

    # -- quote-age watchdog ------------------------------------------------------------------

    async def _watch_quotes(self) -> None:
        stale_ns = int(self.timings.stale_after_s * NS_PER_SECOND)
        check_s = check_interval(self.timings.stale_after_s)
        while True:
            await asyncio.sleep(check_s)
            self.check_quotes(self._clock_ns(), stale_ns)

    def check_quotes(self, now_ns: int, stale_ns: int) -> None:
        """Flag every symbol whose newest quote is older than `stale_ns` (one pass)."""
        self._quotes.check(self.symbols, now_ns, stale_ns, self._started_ns)


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has finished (its own exception is not ours)."""
    task.cancel()
    await asyncio.wait({task})
