"""One way to reach the NATS server: credentials and TLS from `Settings.nats`, reconnects
forever, and every connection event logged without a secret in it.

A process never stops for the broker: nats-py reconnects in the background and buffers
what is published meanwhile (up to `pending_size`); what does not fit is the publisher's
to count (daemon/bridge/market_out.py).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client

from config.settings import ConfigError, NatsSettings
from daemon.core.logs import get_logger

log = get_logger("nats")

#: While the server stays away, its connection errors are logged this often at most.
ERROR_LOG_EVERY_S = 30.0


class NatsUnavailable(ConfigError):
    """The first connection to the server failed (address, credentials or TLS): the
    process exits 2 with this one line, as for any setting it cannot use."""


def redact_url(url: str) -> str:
    """`url` without credentials (nats://user:pass@host -> nats://host), for logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """A verifying client context when a CA file is configured (or the URL says tls://)."""
    if settings.tls_ca_file is None and not settings.url.startswith("tls://"):
        return None
    context = ssl.create_default_context(
        cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return context


async def connect(settings: NatsSettings, *, url: str | None = None, name: str) -> Client:
    """Connect to `url` (default `settings.url`) as `name`; reconnect forever after that.

    Raises `NatsUnavailable` with a one-line reason when the first attempt fails, so a
    mode can exit 2 naming the address instead of hanging; the reason never carries the
    token or password."""
    url = url or settings.url
    shown = redact_url(url)

    errors = _ErrorLog(shown)

    async def on_error(exc: Exception) -> None:
        errors.seen(exc)

    async def on_disconnected() -> None:
        log.warning("nats_disconnected", server=shown)

    async def on_reconnected() -> None:
        errors.reset()
        log.info("nats_reconnected", server=shown)

    credentials: dict[str, str] = {}
    if settings.token is not None:
        credentials["token"] = settings.token.get_secret_value()
    if settings.user is not None and settings.password is not None:
        credentials["user"] = settings.user
        credentials["password"] = settings.password.get_secret_value()
    try:
        client = await nats.connect(
            servers=[url], name=name, tls=tls_context(settings),
            connect_timeout=settings.connect_timeout_s,
            reconnect_time_wait=settings.reconnect_wait_s,
            # One attempt first (a wrong address or token must not retry forever)...
            allow_reconnect=False, max_reconnect_attempts=1,
            error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
            **credentials)
    except Exception as exc:  # nats-py raises several kinds; all mean "not reachable"
        raise NatsUnavailable(
            f"cannot connect to NATS at {shown}: {_reason(exc, credentials)}") from None
    # ...then, once it is known good, reconnect forever: nats-py reads these at each loss.
    client.options["allow_reconnect"] = True
    client.options["max_reconnect_attempts"] = -1
    log.info("nats_connected", server=shown, name=name)
    return client


class _ErrorLog:
    """While the server is away nats-py reports every failed reconnect attempt (ten a
    second at a 0.1 s wait): log the first, then one line per `ERROR_LOG_EVERY_S` saying
    how many came since."""

    def __init__(self, server: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._server, self._clock = server, clock
        self._logged_at: float | None = None
        self._since = 0

    def seen(self, exc: Exception) -> None:
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < ERROR_LOG_EVERY_S:
            self._since += 1
            return
        log.warning("nats_error", server=self._server, error=type(exc).__name__,
                    detail=str(exc), repeated=self._since)
        self._logged_at, self._since = now, 0

    def reset(self) -> None:
        self._logged_at, self._since = None, 0


def _reason(exc: BaseException, credentials: dict[str, str]) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    for secret in credentials.values():
        text = text.replace(secret, "***")
    return text
