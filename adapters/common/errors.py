"""The feed error taxonomy: what went wrong with a market-data connection, and whether
reconnecting can help (`should_retry`).

A rejected subscription or an endpoint that refuses us for good is never retried (retrying
a typo forever helps nobody: the venue stops, loudly); every other kind is retried with
backoff, a rate limit no sooner than the venue asked. `classify_error` maps whatever a
session raised onto these kinds.
"""

from __future__ import annotations

from typing import ClassVar

from adapters.common.wsclient import (
    ConnectionClosedByPeer,
    HandshakeFailed,
    InvalidURL,
    WebSocketError,
)


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
