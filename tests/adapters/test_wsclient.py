"""The native adapters' WebSocket client against the websockets server (interop) and a
raw TCP server that writes exactly the bytes a test wants (framing edge cases)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers

from adapters.common.wsclient import (
    ConnectionClosedByPeer,
    ConnectionDropped,
    HandshakeFailed,
    InvalidURL,
    open_connection,
)


class Inbox:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.times: list[int] = []
        self.arrived = asyncio.Event()

    def __call__(self, frame: bytes, local_ts_ns: int) -> None:
        self.frames.append(frame)
        self.times.append(local_ts_ns)
        self.arrived.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        async def until() -> None:
            while len(self.frames) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(until(), timeout_s)


async def with_server(handler: Callable[[ServerConnection], Awaitable[None]], **options: object):
    server = await serve(handler, "127.0.0.1", 0, compression=None, **options)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 300_000])
async def test_message_sizes_around_the_length_encodings(size: int) -> None:
    payload = ("x" * size).encode()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(payload.decode())
        await ws.send(payload, text=False)
        await ws.wait_closed()

    server, url = await with_server(handler)
    inbox = Inbox()
    connection = await open_connection(url, inbox)
    await inbox.wait_for(2)
    assert inbox.frames == [payload, payload]
    await connection.close()
    server.close()


async def test_fragmented_message_is_reassembled() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(['{"stream":', '"btcusdt@trade",', '"data":{}}'])
        await ws.send("after")
        await ws.wait_closed()

    server, url = await with_server(handler)
    inbox = Inbox()
    connection = await open_connection(url, inbox)
    await inbox.wait_for(2)
    assert inbox.frames == [b'{"stream":"btcusdt@trade","data":{}}', b"after"]
    await connection.close()
    server.close()


async def test_pings_both_ways_and_messages_sent_to_the_server() -> None:
    received: list[str] = []
    pong_latency: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        pong_latency.append(await asyncio.wait_for(await ws.ping(b"hi"), 2))
        received.append(await ws.recv())
        await ws.wait_closed()

    server, url = await with_server(handler, ping_interval=None)
    connection = await open_connection(url, Inbox())
    assert await connection.ping(timeout_s=2) < 1.0  # the server's pong came back
    await connection.send('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}')
    await asyncio.sleep(0.05)
    assert received == ['{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}']
    assert pong_latency and pong_latency[0] < 1.0  # we answered the server's ping
    await connection.close()
    server.close()


async def test_server_close_surfaces_code_and_reason() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(1001, "going away")

    server, url = await with_server(handler)
    connection = await open_connection(url, Inbox())
    with pytest.raises(ConnectionClosedByPeer) as caught:
        await asyncio.wait_for(connection.wait_closed(), 2)
    assert (caught.value.code, caught.value.reason) == (1001, "going away")
    server.close()


async def test_server_close_with_an_application_code() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(4000, "reconnect")

    server, url = await with_server(handler)
    connection = await open_connection(url, Inbox())
    with pytest.raises(ConnectionClosedByPeer) as caught:
        await asyncio.wait_for(connection.wait_closed(), 2)
    assert (caught.value.code, caught.value.reason) == (4000, "reconnect")
    server.close()


async def test_abrupt_drop_and_our_own_close() -> None:
    async def handler(ws: ServerConnection) -> None:
        if ws.request.path == "/drop":
            ws.transport.abort()
        await ws.wait_closed()

    server, url = await with_server(handler)
    dropped = await open_connection(url.replace("/ws", "/drop"), Inbox())
    with pytest.raises(ConnectionDropped, match="without a close frame"):
        await asyncio.wait_for(dropped.wait_closed(), 2)
    ours = await open_connection(url, Inbox())
    await ours.close()
    assert ours.closed.done() and ours.closed.exception() is None
    server.close()


@pytest.mark.parametrize("status", [404, 429, 451, 503])
async def test_refused_handshake_carries_status_and_headers(status: int) -> None:
    def refuse(connection: ServerConnection, request: object):
        response = connection.respond(status, "no")
        response.headers = Headers([("Retry-After", "3"), ("Content-Length", "2")])
        return response

    server, url = await with_server(lambda ws: ws.wait_closed(), process_request=refuse)
    with pytest.raises(HandshakeFailed) as caught:
        await open_connection(url, Inbox())
    assert caught.value.status == status and caught.value.headers["retry-after"] == "3"
    server.close()


async def test_not_a_websocket_url() -> None:
    with pytest.raises(InvalidURL):
        await open_connection("https://example.invalid/ws", Inbox())


# --- byte-exact framing against a raw server ------------------------------------------------


def server_frame(payload: bytes, first_byte: int = 0x81, mask: bytes | None = None) -> bytes:
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first_byte, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first_byte, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first_byte, mask_bit | 127, length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + payload
    return header + payload


async def raw_server(body: bytes, chunk: int = 0, accept: bytes | None = None,
                     after_101: bytes = b"", extra_header: bytes = b""
                     ) -> tuple[asyncio.Server, str]:
    """Answers the handshake, then writes `body` (in `chunk`-byte pieces when chunk > 0)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key"))
        good = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-"
                                             b"C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + (accept or good)
                     + b"\r\n" + extra_header + b"\r\n" + after_101)
        step = chunk or len(body) or 1
        for start in range(0, len(body), step):
            writer.write(body[start:start + step])
            await writer.drain()
            if chunk:
                await asyncio.sleep(0)
        await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/stream"


async def test_frames_split_across_reads_at_every_byte() -> None:
    messages = [b'{"u":%d}' % i for i in range(50)] + [b"y" * 300, b"z" * 70_000]
    body = b"".join(server_frame(m) for m in messages)
    server, url = await raw_server(body, chunk=3)
    inbox = Inbox()
    connection = await open_connection(url, inbox)
    await inbox.wait_for(len(messages))
    assert inbox.frames == messages
    connection.abort()  # the raw server does not answer a close frame
    server.close()


async def test_frames_in_the_handshake_packet_are_not_lost() -> None:
    server, url = await raw_server(b"", after_101=server_frame(b"first") + server_frame(b"2nd"))
    inbox = Inbox()
    connection = await open_connection(url, inbox)
    await inbox.wait_for(2)
    assert inbox.frames == [b"first", b"2nd"]
    connection.abort()  # the raw server does not answer a close frame
    server.close()


async def test_one_read_one_receive_time() -> None:
    server, url = await raw_server(b"".join(server_frame(b"%d" % i) for i in range(100)))
    inbox = Inbox()
    connection = await open_connection(url, inbox)
    await inbox.wait_for(100)
    assert len(set(inbox.times)) < 10  # frames of one socket read share its receive time
    assert inbox.times == sorted(inbox.times)
    connection.abort()  # the raw server does not answer a close frame
    server.close()


@pytest.mark.parametrize(("body", "match"), [
    (server_frame(b"hello", mask=b"\x01\x02\x03\x04"), "masked"),
    (server_frame(b"x", first_byte=0xC1), "reserved bits"),
    (server_frame(b"x", first_byte=0x83), "invalid opcode"),
    (server_frame(b"x", first_byte=0x80), "continuation"),
])
async def test_protocol_violations_end_the_connection(body: bytes, match: str) -> None:
    server, url = await raw_server(body)
    connection = await open_connection(url, Inbox())
    with pytest.raises(ConnectionDropped, match=match):
        await asyncio.wait_for(connection.wait_closed(), 2)
    server.close()


async def test_message_over_the_limit_ends_the_connection() -> None:
    server, url = await raw_server(server_frame(b"x" * 5_000))
    connection = await open_connection(url, Inbox(), max_message_bytes=1_000)
    with pytest.raises(ConnectionDropped, match="exceed"):
        await asyncio.wait_for(connection.wait_closed(), 2)
    server.close()


async def test_wrong_accept_key_is_refused() -> None:
    server, url = await raw_server(b"", accept=b"AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    with pytest.raises(HandshakeFailed, match="Sec-WebSocket-Accept"):
        await open_connection(url, Inbox())
    server.close()


async def test_an_imposed_extension_is_refused() -> None:
    server, url = await raw_server(
        b"", extra_header=b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    with pytest.raises(HandshakeFailed, match="extension"):
        await open_connection(url, Inbox())
    server.close()


async def raw_answer(answer: bytes) -> tuple[asyncio.Server, str]:
    """Reads the request, writes `answer` (b"": none) and hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/stream"


async def test_a_status_http_does_not_name_still_carries_status_and_headers() -> None:
    server, url = await raw_answer(b"HTTP/1.1 520 \r\nRetry-After: 7\r\n"
                                   b"Content-Length: 0\r\n\r\n")
    with pytest.raises(HandshakeFailed) as caught:
        await open_connection(url, Inbox())
    assert caught.value.status == 520 and caught.value.headers["retry-after"] == "7"
    server.close()


async def test_connection_lost_during_the_handshake() -> None:
    server, url = await raw_answer(b"")
    with pytest.raises(ConnectionDropped, match="handshake"):
        await open_connection(url, Inbox())
    server.close()


async def test_a_ping_ending_a_read_is_answered_and_the_next_read_gets_its_own_time() -> None:
    """Pings are answered by the client itself, not picows's auto-pong (which would hide
    the ping that ends a socket read and leave its receive time on the next read)."""
    pongs: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key"))
        good = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-"
                                             b"C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + good + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(server_frame(b"first") + server_frame(b"p1", first_byte=0x89))
        frame = await reader.readexactly(8)  # the masked pong: 2 + 4 (mask) + 2
        assert frame[0] == 0x8A
        pongs.append(bytes(b ^ frame[2 + i % 4] for i, b in enumerate(frame[6:])))
        await asyncio.sleep(0.02)
        writer.write(server_frame(b"second"))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/stream"
    inbox = Inbox()
    connection = await open_connection(url, inbox)
    await inbox.wait_for(2)
    assert inbox.frames == [b"first", b"second"] and pongs == [b"p1"]
    assert inbox.times[1] - inbox.times[0] > 10_000_000  # ns: a fresh time for the 2nd read
    connection.abort()
    server.close()


async def test_a_consumer_exception_ends_the_connection_with_it() -> None:
    server, url = await raw_server(server_frame(b"boom"))

    def broken(frame: bytes, ts: int) -> None:
        raise RuntimeError("consumer bug")

    connection = await open_connection(url, broken)
    with pytest.raises(RuntimeError, match="consumer bug"):
        await asyncio.wait_for(connection.wait_closed(), 2)
    server.close()


# --- TLS (the venues are all wss://) --------------------------------------------------------


def self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cryptopipe test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_wss_with_certificate_verification(tmp_path) -> None:
    import ssl

    pytest.importorskip("cryptography")
    cert, key = self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    async def handler(ws: ServerConnection) -> None:
        for i in range(1_000):
            await ws.send(f'{{"u":{i},"s":"BTCUSDT"}}')
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0, ssl=server_context, compression=None)
    url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    trusting = ssl.create_default_context(cafile=cert)
    inbox = Inbox()
    connection = await open_connection(url, inbox, ssl_context=trusting)
    await inbox.wait_for(1_000)
    assert inbox.frames[-1] == b'{"u":999,"s":"BTCUSDT"}'
    await connection.close()
    # The default context does not trust a self-signed certificate: verification is on.
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_connection(url, Inbox())
    server.close()
