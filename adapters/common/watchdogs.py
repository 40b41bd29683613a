"""The two watchdogs of a venue's feed.

- per connection (silence): no frame at all for `silence_timeout_s` means a half-open
  socket, which never errors on its own; the supervisor's loop polices it with
  `silent_for_ns` and reconnects.
- per (venue, symbol) (quote age): the venue's latest quote older than `stale_after_s`
  -> `bus.mark_stale(venue, symbol)`, so strategies stop acting on it. The next good
  quote clears the flag (the bus does that by itself); `StaleQuotes` reports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from adapters.common.stats import VenueStats
from daemon.market.bus import Bus


class Emit(Protocol):
    """`ConnectionSupervisor.emit`: log a feed event and hand it to the listeners."""

    def __call__(self, kind: str, level: str = "info", **details: Any) -> None: ...


def check_interval(limit_s: float) -> float:
    """How often a watchdog looks: often enough to react within ~25% of its limit."""
    return min(1.0, max(0.005, limit_s / 4))


def silent_for_ns(stats: VenueStats, connection_started_ns: int, now_ns: int) -> int:
    """How long the connection has gone without a frame (counted from its start)."""
    return now_ns - max(stats.last_frame_ns, connection_started_ns)


class StaleQuotes:
    """The quote-age watchdog of one venue: flags stale symbols once, reports them fresh
    again, and warns once about a symbol that never quoted at all."""

    __slots__ = ("_emit", "_never_quoted_warned", "_stale", "bus", "stats", "venue")

    def __init__(self, venue: str, bus: Bus, stats: VenueStats, emit: Emit) -> None:
        self.venue = venue
        self.bus = bus
        self.stats = stats
        self._emit = emit
        self._stale: set[str] = set()
        self._never_quoted_warned: set[str] = set()

    def check(self, symbols: Iterable[str], now_ns: int, stale_ns: int,
              started_ns: int) -> None:
        """Flag every symbol whose newest quote is older than `stale_ns` (one pass)."""
        view = self.bus.view
        for symbol in symbols:
            quote = view.quote(self.venue, symbol)
            if quote is None:
                if now_ns - started_ns > stale_ns and symbol not in self._never_quoted_warned:
                    self._never_quoted_warned.add(symbol)
                    self._emit("no_quotes", level="warning", symbol=symbol,
                               waited_s=round((now_ns - started_ns) / 1e9, 3))
                continue
            if not quote.stale:
                if symbol in self._stale:
                    self._stale.discard(symbol)  # the bus cleared it with a fresh quote
                    self._emit("fresh", symbol=symbol)
                if now_ns - quote.local_ts_ns > stale_ns:
                    self.mark_stale(symbol, "quote_age",
                                    age_s=round((now_ns - quote.local_ts_ns) / 1e9, 3))

    def mark_stale(self, symbol: str, reason: str, **details: Any) -> None:
        """Flag `symbol` stale on the bus and report it, once until it is fresh again."""
        if self.bus.mark_stale(self.venue, symbol) is None or symbol in self._stale:
            return
        self._stale.add(symbol)
        self.stats.stale_events += 1
        self._emit("stale", level="warning", symbol=symbol, reason=reason, **details)
