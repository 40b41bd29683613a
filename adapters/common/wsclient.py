"""The market-data WebSocket client: picows underneath, frames handed over synchronously.

Why not `websockets.connect` and `await ws.recv()`: that path costs an await, a future and
a generator-driven frame parser per message, about 5 us a frame, more than parsing the
frame's JSON into a Quote. picows (Cython) parses the frames of every socket read in one
loop and calls `on_ws_frame` for each, in the same call stack; here each data message goes
on to `on_frame(payload, local_ts_ns)` at once. picows exposes no read timestamp, so the
receive time is taken once per socket read (at its first frame; picows marks the last one
with `last_in_buffer`): every frame of a read gets the same, true local receive time, and
the counters (frames, last_frame_ns) are bumped once per read.

What picows does: the opening handshake (plain or TLS with certificate verification,
`Sec-WebSocket-Accept` checked), frame parsing and masking, the per-frame size limit and
RFC 6455 framing checks (masked server frames, bad opcodes, bad lengths, bad close codes:
it sends a close frame with the error and disconnects). What this module adds on top:
reassembly of fragmented messages (picows hands over raw frames) with a maximum message
size, the reserved-bit check (no extension is negotiated; picows does not check them),
answering pings (done here, not with picows's `enable_auto_pong`, which swallows the ping
before the listener sees it and so would hide the end of a read), our own pings with their
round-trip time, the closing handshake both ways, and the mapping of all of it to the
errors below. Left out on purpose: extensions (no permessage-deflate: CPU on every frame),
subprotocols, HTTP proxies, redirects.

Errors raised (errors.py maps them onto the feed taxonomy): `HandshakeFailed` (a non-101
answer, with its status and headers), `ConnectionClosedByPeer` (a close frame, with its
code and reason), `ConnectionDropped` (the socket ended without a close frame, or the
peer broke the protocol).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSInvalidHeaderError,
    WSInvalidURL,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

__all__ = [
    "ConnectionClosedByPeer",
    "ConnectionDropped",
    "FrameConnection",
    "HandshakeFailed",
    "InvalidURL",
    "WebSocketError",
    "open_connection",
]

_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
_CONTINUATION, _CLOSE = WSMsgType.CONTINUATION, WSMsgType.CLOSE
_PING, _PONG = WSMsgType.PING, WSMsgType.PONG
_time_ns = time.time_ns

FrameHandler = Callable[[bytes, int], None]


class WebSocketError(Exception):
    """Base of the client's errors."""


class HandshakeFailed(WebSocketError):
    """The server did not switch protocols (or answered something that is not HTTP)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str],
                 body: bytes = b"") -> None:
        super().__init__(f"HTTP {status} {reason}".rstrip())
        self.status = status
        self.headers = headers
        self.body = body


class ConnectionClosedByPeer(WebSocketError):
    """The server sent a close frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the server: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class ConnectionDropped(WebSocketError):
    """The connection ended without a closing handshake, or the server broke the protocol."""


class InvalidURL(WebSocketError, ValueError):
    """Not a ws:// or wss:// URL."""


class _Counters:
    """Where frame counts go when the caller gives none (anything with these two works)."""

    frames = 0
    last_frame_ns = 0


def _ignore(payload: bytes, local_ts_ns: int) -> None:
    """Stands in for the consumer once the connection has failed."""


class FrameConnection(WSListener):
    """One client connection (a picows listener). Incoming data messages go to `on_frame`;
    `closed` completes when the connection is over, with the reason as its exception."""

    def __init__(self, on_frame: FrameHandler, max_message_bytes: int,
                 counters: Any = None) -> None:
        super().__init__()
        self.on_frame = on_frame
        self._deliver = on_frame  # becomes _ignore once the connection has failed
        self.counters = counters if counters is not None else _Counters()
        self.max_message_bytes = max_message_bytes
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None
        self._batch_ns = 0  # receive time of the socket read being delivered (0: none)
        self._batch_frames = 0
        self._fragments: list[bytes] = []
        self._fragment_bytes = 0
        self._close_sent = False  # a close frame sent by us (not by picows on an error)
        self._close_first = False  # we started the closing handshake
        self._close_received: ConnectionClosedByPeer | None = None
        self._error: BaseException | None = None
        self._pings: dict[bytes, asyncio.Future[float]] = {}

    # -- picows callbacks --------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = self._batch_ns
        if not now:
            now = self._batch_ns = _time_ns()
        try:
            # A whole text or binary message: the common case. (Only RSV1, the bit
            # permessage-deflate would set, is checked here; _other_frame checks all three.)
            if frame.fin and not frame.rsv1 and frame.msg_type is _TEXT:
                self._deliver(frame.get_payload_as_bytes(), now)
                self._batch_frames += 1
            else:
                self._other_frame(transport, frame, now)
        except Exception as error:  # a consumer bug or a protocol violation: end it here
            self._fail(error)
        if frame.last_in_buffer:
            self._batch_ns = 0
            count = self._batch_frames
            if count:
                self._batch_frames = 0
                counters = self.counters
                counters.frames += count
                counters.last_frame_ns = now

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        closed = self.closed
        if not closed.done():
            closed.add_done_callback(_retrieved)  # whoever cares awaits it; no noise
            handshake = transport.close_handshake
            if self._error is not None:
                closed.set_exception(self._error)
            elif self._close_first:
                closed.set_result(None)  # we asked for it
            elif self._close_received is not None:
                closed.set_exception(self._close_received)
            elif handshake is not None and handshake.sent is not None and not self._close_sent:
                # picows found a protocol violation: it sent a close frame saying which.
                closed.set_exception(ConnectionDropped(
                    f"the server broke the protocol ({int(handshake.sent.code)}): "
                    f"{handshake.sent.reason}"))
            else:
                closed.set_exception(ConnectionDropped(
                    "connection dropped without a close frame"))
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.cancel()
        self._pings.clear()

    # -- everything but whole data messages --------------------------------------------------

    def _other_frame(self, transport: WSTransport, frame: WSFrame, now: int) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            raise ConnectionDropped("reserved bits set: no extension was negotiated")
        msg_type = frame.msg_type
        if (msg_type is _TEXT or msg_type is _BINARY) and frame.fin and not self._fragments:
            self._deliver(frame.get_payload_as_bytes(), now)  # binary: the parsers count it
            self._batch_frames += 1
            return
        if msg_type is _PING:
            if not transport.is_close_frame_sent:
                transport.send_pong(frame.get_payload_as_bytes())
        elif msg_type is _PONG:
            waiter = self._pings.pop(frame.get_payload_as_bytes(), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(time.monotonic())
        elif msg_type is _CLOSE:
            self._on_close_frame(transport, frame.get_payload_as_bytes())
        elif msg_type is _TEXT or msg_type is _BINARY:  # the first fragment of a message
            if self._fragments:
                raise ConnectionDropped("a new message started inside a fragmented one")
            self._add_fragment(frame.get_payload_as_bytes())
        elif msg_type is _CONTINUATION:
            if not self._fragments:
                raise ConnectionDropped("a continuation frame with no message to continue")
            self._add_fragment(frame.get_payload_as_bytes())
            if frame.fin:
                message = b"".join(self._fragments)
                self._fragments.clear()
                self._fragment_bytes = 0
                self._deliver(message, now)
                self._batch_frames += 1
        else:  # picows refuses unknown opcodes itself
            raise ConnectionDropped(f"unknown opcode {msg_type}")

    def _add_fragment(self, payload: bytes) -> None:
        self._fragment_bytes += len(payload)
        if self._fragment_bytes > self.max_message_bytes:
            raise ConnectionDropped(f"message exceeds {self.max_message_bytes} bytes")
        self._fragments.append(payload)

    def _on_close_frame(self, transport: WSTransport, payload: bytes) -> None:
        code, reason = 1005, ""
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            reason = payload[2:].decode("utf-8", "replace")
        self._close_received = ConnectionClosedByPeer(code, reason)
        if not transport.is_close_frame_sent:
            self._close_sent = True
            transport.send_close(WSCloseCode(1000 if code == 1005 else code))
        transport.disconnect()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._deliver = _ignore  # the rest of this read goes nowhere
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    # -- sending and closing -----------------------------------------------------------------

    def _usable(self) -> WSTransport | None:
        transport = self.transport
        if (transport is None or transport.is_disconnected
                or transport.underlying_transport.is_closing()):
            return None
        return transport

    def send_text(self, text: str) -> None:
        transport = self._usable()
        if transport is None or transport.is_close_frame_sent:
            raise ConnectionDropped("the connection is closing")
        transport.send(_TEXT, text)

    async def send(self, text: str) -> None:
        """Send a text message (the awaitable form, as `websockets` has it)."""
        self.send_text(text)

    async def ping(self, timeout_s: float) -> float:
        """Send a ping; the round trip in seconds once its pong is back."""
        payload = os.urandom(4)
        waiter = asyncio.get_running_loop().create_future()
        self._pings[payload] = waiter
        sent = time.monotonic()
        transport = self._usable()
        if transport is not None:
            transport.send_ping(payload)
        try:
            async with asyncio.timeout(timeout_s):
                received = await waiter
            return received - sent
        finally:
            self._pings.pop(payload, None)

    async def close(self, code: int = 1000, timeout_s: float = 1.0) -> None:
        """Closing handshake; the socket is cut if the server does not answer in time."""
        transport = self.transport
        if transport is None or self.closed.done():
            return
        if not transport.is_close_frame_sent and self._usable() is not None:
            self._close_sent = True
            self._close_first = True
            transport.send_close(WSCloseCode(code))  # any int: a flexible enum
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self.closed)
        except (TimeoutError, WebSocketError):
            pass
        finally:
            transport.disconnect(graceful=False)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    async def wait_closed(self) -> None:
        """Until the connection is over; raises why, unless we closed it ourselves."""
        await asyncio.shield(self.closed)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _handshake_failed(error: WSHandshakeError) -> HandshakeFailed:
    """picows's handshake errors as ours: the status, headers and start of the body."""
    response = error.response
    body = (error.raw_body or b"")[:512]
    if response is not None:
        status = int(response.status)
        headers = {name.lower(): value for name, value in response.headers.items()}
    else:  # no parsed answer (e.g. a status code http.HTTPStatus does not know)
        status, headers = _parse_head(error.raw_header or b"")
    if isinstance(error, WSInvalidHeaderError) and status == 101:
        reason = f"wrong {error.name} header: {error.value!r}"
    elif status != 101 and response is not None:
        reason = response.status.phrase
    else:
        reason = str(error.args[0]) if error.args else type(error).__name__
    return HandshakeFailed(status, reason, headers, body)


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        status = 0
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def open_connection(
    url: str,
    on_frame: FrameHandler,
    *,
    open_timeout_s: float = 10.0,
    max_message_bytes: int = 16 * 1024 * 1024,
    counters: Any = None,
    extra_headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> FrameConnection:
    """Connect and complete the opening handshake (or raise); frames start flowing to
    `on_frame` right away, possibly before this returns."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise InvalidURL(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    headers = {"User-Agent": "cryptopipe", **(extra_headers or {})}

    def listener(request: Any, response: Any) -> FrameConnection:
        # Called once the 101 answer is in, before any frame: refuse what we did not offer.
        extensions = response.headers.get("sec-websocket-extensions")
        if extensions:
            raise HandshakeFailed(101, "server imposed an extension we did not offer: "
                                  + extensions, dict(response.headers))
        return FrameConnection(on_frame, max_message_bytes, counters)

    async def connect() -> FrameConnection:
        try:
            _, connection = await ws_connect(
                listener, url,
                ssl_context=(ssl_context or ssl.create_default_context()) if secure else None,
                # picows cuts a handshake that takes too long itself (the outer wait_for
                # also covers DNS and the TCP/TLS connect).
                websocket_handshake_timeout=open_timeout_s,
                enable_auto_ping=False,
                enable_auto_pong=False,  # answered in FrameConnection (see the docstring)
                max_frame_size=max_message_bytes,
                extra_headers=headers,
                max_redirects=0,
                use_aiofastnet=False,  # uvloop's own transports: no faster here, long proven
            )
        except WSHandshakeError as error:
            raise _handshake_failed(error) from error
        except WSInvalidURL as error:
            raise InvalidURL(f"not a WebSocket URL: {url!r} ({error})") from error
        except WSError as error:
            raise ConnectionDropped(f"during the handshake: {error}") from error
        if connection is None:  # picows: the socket ended before the 101 came in
            raise ConnectionDropped("connection lost during the handshake")
        return connection  # type: ignore[return-value]

    # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
    # lands as the handshake completes (CPython gh-86296), and a cancelled session then
    # kept serving a connection nobody would ever stop (seen as a hung shutdown under load).
    try:
        async with asyncio.timeout(open_timeout_s):
            return await connect()
    except TimeoutError:
        raise TimeoutError(f"no WebSocket handshake with {url} within {open_timeout_s:g} s"
                           ) from None
