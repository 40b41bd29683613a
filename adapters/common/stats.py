"""Per-venue feed counters, one object per venue id, read by the metrics exporter.

The adapters update plain integer attributes on the hot path (one attribute store per
frame); anything costlier (a parser's drop reasons) is attached by reference and summed
only when someone reads it. `registry()` is the process-wide view the exporter walks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VenueStats", "registry", "reset_registry", "stats_for"]


@dataclass(slots=True)
class VenueStats:
    """What one venue's feed has done since the process started (monotonic counters)."""

    venue: str
    #: Frames received from the venue (data, acks, pongs and garbage alike).
    frames: int = 0
    #: Successful connections (the first one included) and reconnection attempts after one.
    connects: int = 0
    reconnects: int = 0
    disconnects: int = 0
    #: Connections dropped by the silence watchdog (no message at all for too long).
    silences: int = 0
    #: (venue, symbol) keys flagged stale by the quote-age watchdog.
    stale_events: int = 0
    #: Book resynchronisations requested (Bybit resubscribe, Binance snapshot refetch).
    resyncs: int = 0
    #: Local receive time of the newest frame, ns (0 before the first one).
    last_frame_ns: int = 0
    #: Whether a connection is up right now (a gauge, not a counter).
    connected: bool = False
    _drop_sources: list[Mapping[str, int]] = field(default_factory=list, repr=False)
    _own_drops: Counter[str] = field(default_factory=Counter, repr=False)

    def attach_drops(self, counter: Mapping[str, int]) -> None:
        """Count a parser's `dropped` counter (reason -> frames) as this venue's parse errors."""
        if not any(source is counter for source in self._drop_sources):
            self._drop_sources.append(counter)

    def drop(self, reason: str, count: int = 1) -> None:
        """A frame or update dropped by the adapter itself (not by an attached parser)."""
        self._own_drops[reason] += count

    @property
    def parse_errors(self) -> Counter[str]:
        """Dropped frames by reason, over the attached parsers and the adapter itself."""
        total: Counter[str] = Counter(self._own_drops)
        for source in self._drop_sources:
            total.update(source)
        return total

    def as_dict(self) -> dict[str, Any]:
        """A plain snapshot for logs and the metrics exporter."""
        return {
            "venue": self.venue,
            "frames": self.frames,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "disconnects": self.disconnects,
            "silences": self.silences,
            "stale_events": self.stale_events,
            "resyncs": self.resyncs,
            "connected": self.connected,
            "last_frame_ns": self.last_frame_ns,
            "parse_errors": dict(self.parse_errors),
        }


_REGISTRY: dict[str, VenueStats] = {}


def stats_for(venue: str) -> VenueStats:
    """The (process-wide) stats object of a venue, created on first use."""
    stats = _REGISTRY.get(venue)
    if stats is None:
        stats = _REGISTRY[venue] = VenueStats(venue)
    return stats


def registry() -> Mapping[str, VenueStats]:
    """Every venue's stats, by venue id (a live read-only view)."""
    return _REGISTRY


def reset_registry() -> None:
    """Forget every venue's counters (tests; a fresh daemon run in the same process)."""
    _REGISTRY.clear()
