"""A receive-optimised WebSocket client (RFC 6455) for market-data connections.

Why not `websockets.connect` and `await ws.recv()`: that path costs an await, a future and
a generator-driven frame parser per message, about 5 us a frame, more than parsing the
frame's JSON into a Quote. Here the frames of every TCP read are cut out of the bytes in
one tight loop inside `data_received` and handed to `on_frame(payload, local_ts_ns)`
synchronously, all with the receive time of that read (which is the true local receive
time). The venue sends many small frames; we send a handful of control messages.

What it does: the opening handshake (plain or TLS, `Sec-WebSocket-Accept` checked), text
and binary messages (fragmented ones reassembled), pings answered at once with the same
payload (Binance drops clients that do not pong), pongs matched to our own pings, the
closing handshake both ways, a maximum message size. What it leaves out on purpose:
extensions (no permessage-deflate: it would cost CPU on every frame), subprotocols,
HTTP proxies.

Errors raised (the supervisor maps them to its taxonomy): `HandshakeFailed` (a non-101
answer, with its status and headers), `ConnectionClosedByPeer` (a close frame, with its
code and reason), `ConnectionDropped` (the socket ended without a close frame, or the
peer broke the protocol).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

try:  # websockets' C helper for masking our (few, small) outgoing frames
    from websockets.speedups import apply_mask
except ImportError:  # a build without the C extension

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        return bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))

__all__ = [
    "ConnectionClosedByPeer",
    "ConnectionDropped",
    "FrameConnection",
    "HandshakeFailed",
    "InvalidURL",
    "WebSocketError",
    "open_connection",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_MAX_HANDSHAKE_BYTES = 64 * 1024

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


class FrameConnection(asyncio.Protocol):
    """One client connection. Incoming data messages go to `on_frame`; `closed` completes
    when the connection is over, with the reason as its exception."""

    def __init__(self, on_frame: FrameHandler, host_header: str, resource: str,
                 max_message_bytes: int, counters: Any = None,
                 extra_headers: dict[str, str] | None = None) -> None:
        self.on_frame = on_frame
        self.counters = counters if counters is not None else _Counters()
        self.max_message_bytes = max_message_bytes
        self._host_header = host_header
        self._resource = resource
        self._extra_headers = extra_headers or {}
        self._key = base64.b64encode(os.urandom(16))
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._handshake = b""
        self._tail: list[bytes] = []  # the start of a frame cut by the end of a read
        self._tail_bytes = 0
        self._tail_needed = 0  # bytes that frame needs in all (0: unknown yet)
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_bytes = 0
        self._close_sent = False
        self._close_first = False  # we started the closing handshake
        self._close_received: ConnectionClosedByPeer | None = None
        self._error: BaseException | None = None
        self._pings: dict[bytes, asyncio.Future[float]] = {}

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        headers = {
            "Host": self._host_header,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": self._key.decode(),
            "Sec-WebSocket-Version": "13",
            "User-Agent": "cryptopipe",
            **self._extra_headers,
        }
        request = f"GET {self._resource} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        transport.write(request.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.opened.done():
            data = self._read_handshake(data)
            if not data:
                return
        if self._tail:
            # A large frame arriving over many reads is collected, not re-joined per read.
            self._tail.append(data)
            self._tail_bytes += len(data)
            if self._tail_bytes < self._tail_needed:
                return
            data = b"".join(self._tail)
            self._tail = []
        try:
            self._read_frames(data, now)
        except Exception as error:  # a consumer bug or a protocol violation: end it here
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionDropped(
                f"connection lost during the handshake: {exc or 'closed by the server'}"))
        if not self.closed.done():
            self.closed.add_done_callback(_retrieved)  # whoever cares awaits it; no noise
            if self._error is not None:
                self.closed.set_exception(self._error)
            elif self._close_first:
                self.closed.set_result(None)  # we asked for it
            elif self._close_received is not None:
                self.closed.set_exception(self._close_received)
            else:
                self.closed.set_exception(ConnectionDropped(
                    f"connection dropped without a close frame ({exc or 'EOF'})"))
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.cancel()
        self._pings.clear()

    # -- the hot path ------------------------------------------------------------------------

    def _read_frames(self, data: bytes, now: int) -> None:
        on_frame = self.on_frame
        size = len(data)
        position = 0
        count = 0
        self._tail_needed = 0  # a header cut short: any further byte may complete it
        while size - position >= 2:
            first = data[position]
            length = data[position + 1]
            if length & 0x80:
                raise ConnectionDropped("the server masked a frame (RFC 6455 forbids it)")
            start = position + 2
            if length >= 126:  # 16- or 64-bit extended length
                if length == 126:
                    if size - position < 4:
                        break
                    length = (data[start] << 8) | data[start + 1]
                    start += 2
                else:
                    if size - position < 10:
                        break
                    (length,) = struct.unpack_from("!Q", data, start)
                    start += 8
                if length > self.max_message_bytes:
                    raise ConnectionDropped(f"frame of {length} bytes exceeds the limit")
            end = start + length
            if end > size:
                self._tail_needed = end - position
                break
            position = end
            # FIN set and a text or binary opcode: a whole message, the common case.
            if first == 0x81 or first == 0x82:
                count += 1
                on_frame(data[start:end], now)
            else:
                count += self._other_frame(first, data[start:end], now)
        if position < size:
            rest = data[position:]
            self._tail = [rest]
            self._tail_bytes = len(rest)
        if count:
            counters = self.counters
            counters.frames += count
            counters.last_frame_ns = now

    def _other_frame(self, first: int, payload: bytes, now: int) -> int:
        """Control frames and fragments; returns 1 when a data message completed."""
        if first & 0x70:
            raise ConnectionDropped("reserved bits set: no extension was negotiated")
        opcode, fin = first & 0x0F, bool(first & 0x80)
        if opcode == _OP_PING:
            self._send_frame(_OP_PONG, payload)
        elif opcode == _OP_PONG:
            waiter = self._pings.pop(payload, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(time.monotonic())
        elif opcode == _OP_CLOSE:
            self._on_close_frame(payload)
        elif opcode in (_OP_TEXT, _OP_BINARY):  # the first fragment of a message
            if self._fragments:
                raise ConnectionDropped("a new message started inside a fragmented one")
            self._fragment_opcode = opcode
            self._add_fragment(payload)
        elif opcode == _OP_CONTINUATION:
            if not self._fragments:
                raise ConnectionDropped("a continuation frame with no message to continue")
            self._add_fragment(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments.clear()
                self._fragment_bytes = 0
                self.on_frame(message, now)
                return 1
        else:
            raise ConnectionDropped(f"unknown opcode {opcode}")
        return 0

    def _add_fragment(self, payload: bytes) -> None:
        self._fragment_bytes += len(payload)
        if self._fragment_bytes > self.max_message_bytes:
            raise ConnectionDropped(f"message exceeds {self.max_message_bytes} bytes")
        self._fragments.append(payload)

    # -- handshake ---------------------------------------------------------------------------

    def _read_handshake(self, data: bytes) -> bytes:
        """Consume the HTTP answer; returns the bytes after it (the first frames)."""
        self._handshake += data
        end = self._handshake.find(b"\r\n\r\n")
        if end < 0:
            if len(self._handshake) > _MAX_HANDSHAKE_BYTES:
                self._fail_open(HandshakeFailed(0, "handshake answer too long", {}))
            return b""
        head, rest = self._handshake[:end].decode("latin-1"), self._handshake[end + 4:]
        self._handshake = b""
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            self._fail_open(HandshakeFailed(0, f"not an HTTP answer: {status_line[:80]!r}", {}))
            return b""
        if status != 101:
            self._fail_open(HandshakeFailed(status, parts[2] if len(parts) > 2 else "",
                                            headers, rest[:512]))
            return b""
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self._fail_open(HandshakeFailed(status, "wrong Sec-WebSocket-Accept", headers))
            return b""
        if headers.get("sec-websocket-extensions"):
            self._fail_open(HandshakeFailed(status, "server imposed an extension we did not "
                                            "offer: " + headers["sec-websocket-extensions"],
                                            headers))
            return b""
        self.opened.set_result(None)
        return rest

    def _fail_open(self, error: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    # -- sending and closing -----------------------------------------------------------------

    def send_text(self, text: str) -> None:
        if self._close_sent or self.transport is None or self.transport.is_closing():
            raise ConnectionDropped("the connection is closing")
        self._send_frame(_OP_TEXT, text.encode())

    async def send(self, text: str) -> None:
        """Send a text message (the awaitable form, as `websockets` has it)."""
        self.send_text(text)

    async def ping(self, timeout_s: float) -> float:
        """Send a ping; the round trip in seconds once its pong is back."""
        payload = os.urandom(4)
        waiter = asyncio.get_running_loop().create_future()
        self._pings[payload] = waiter
        sent = time.monotonic()
        self._send_frame(_OP_PING, payload)
        try:
            return await asyncio.wait_for(waiter, timeout_s) - sent
        finally:
            self._pings.pop(payload, None)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        mask = os.urandom(4)  # clients must mask every frame (RFC 6455 5.3)
        transport.write(header + mask + apply_mask(payload, mask))

    def _on_close_frame(self, payload: bytes) -> None:
        code, reason = 1005, ""
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            reason = payload[2:].decode("utf-8", "replace")
        self._close_received = ConnectionClosedByPeer(code, reason)
        if not self._close_sent:
            self._close_sent = True
            self._send_frame(_OP_CLOSE, payload[:2])
        if self.transport is not None:
            self.transport.close()

    async def close(self, code: int = 1000, timeout_s: float = 1.0) -> None:
        """Closing handshake; the socket is cut if the server does not answer in time."""
        transport = self.transport
        if transport is None or self.closed.done():
            return
        if not self._close_sent:
            self._send_frame(_OP_CLOSE, code.to_bytes(2, "big"))
            self._close_sent = True
            self._close_first = True
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)
        except (TimeoutError, WebSocketError):
            pass
        finally:
            transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        """Until the connection is over; raises why, unless we closed it ourselves."""
        await asyncio.shield(self.closed)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


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
    port = parts.port or (443 if secure else 80)
    default_port = port == (443 if secure else 80)
    host_header = parts.hostname if default_port else f"{parts.hostname}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()

    async def connect() -> FrameConnection:
        _, protocol = await loop.create_connection(
            lambda: FrameConnection(on_frame, host_header, resource, max_message_bytes,
                                    counters, extra_headers),
            parts.hostname, port,
            ssl=(ssl_context or ssl.create_default_context()) if secure else None,
            server_hostname=parts.hostname if secure else None)
        connection: FrameConnection = protocol  # type: ignore[assignment]
        try:
            await connection.opened
        except BaseException:
            connection.abort()
            raise
        return connection

    try:
        return await asyncio.wait_for(connect(), open_timeout_s)
    except TimeoutError:
        raise TimeoutError(f"no WebSocket handshake with {url} within {open_timeout_s:g} s"
                           ) from None
