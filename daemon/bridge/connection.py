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

from nats.aio.client import Client
from nats.errors import Error as NatsError

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


class TlsNotOffered(NatsError):
    """TLS is configured but the server spoke in clear."""

    def __str__(self) -> str:
        return ("TLS is configured (tls:// or nats.tls_ca_file) but the server did not "
                "offer it; nothing was sent in clear")


class _TlsOnlyClient(Client):
    """A client that sends CONNECT (and with it the token or password) only over TLS.

    nats-py upgrades to TLS only when the server's INFO asks for it, whatever the URL or
    the SSL context say: a server without TLS, or a man in the middle that strips
    `tls_required` from INFO, would get the credentials and every message in clear. This
    check runs before every CONNECT, first connection and reconnects alike (nats-py
    counts a failed reconnect and tries again). It reads the stream writer nats-py keeps
    (a private attribute): should that change, it finds no TLS and refuses, never the
    other way round."""

    def _connect_command(self) -> bytes:
        writer = getattr(self._transport, "_io_writer", None)
        if writer is None or writer.get_extra_info("ssl_object") is None:
            raise TlsNotOffered()
        return super()._connect_command()


def tls_context(settings: NatsSettings, url: str | None = None) -> ssl.SSLContext | None:
    """A verifying client context when a CA file is configured or the URL says tls://
    (`url`: the address actually dialled, e.g. from `--feed`; default `settings.url`)."""
    if settings.tls_ca_file is None and not (url or settings.url).startswith("tls://"):
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
    tls = tls_context(settings, url)
    client = _TlsOnlyClient() if tls is not None else Client()
    try:
        await client.connect(
            servers=[url], name=name, tls=tls,
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


async def flush_all(client: Client) -> None:
    """Return once the server has processed every command written before the call (a SUB
    just made included).

    nats-py 2.16's `flush()` writes its PING straight to the socket, ahead of commands
    still queued for its flusher task: the PONG may come back before the server saw a
    subscription made just before (seen in a server trace: PING, PONG, a PUB, then the
    SUB; the message was lost). While the first round trip waits, the flusher (woken
    before the PONG can arrive) writes the queue; the second PING goes after it."""
    await client.flush()
    await client.flush()


def _reason(exc: BaseException, credentials: dict[str, str]) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    for secret in credentials.values():
        text = text.replace(secret, "***")
    return text
