"""Time limits of a venue's feed: reconnect backoff and the watchdogs' limits."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff: initial_s * multiplier**n, capped, with +-jitter fraction."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    #: Each delay is scaled by a uniform factor in [1 - jitter, 1]: reconnecting clients
    #: spread out instead of hammering a recovering venue in lockstep.
    jitter: float = 0.5
    #: A connection that stayed up this long resets the backoff to `initial_s` (so does
    #: one that delivered market data, however short: see the supervisor).
    healthy_after_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `attempt` (0-based)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        factor = 1.0 - self.jitter * (rng or random).random()
        return base * factor


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
