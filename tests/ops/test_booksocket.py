"""The /book data socket: the seed's JSON shape, token checks, and a slow client conflated away."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from config.settings import BookSocketSettings
from daemon.core.clock import now_ns
from daemon.core.model import Quote
from daemon.market.bus import Bus
from daemon.ops.booksocket import BookSocketServer

SEED_FIELDS = {"symbol", "top_bid", "top_bid_quantity", "top_ask", "top_ask_quantity"}


def quote(venue: str, bid: float, symbol: str = "BTC/USDT") -> Quote:
    ts = now_ns()
    return Quote(venue, symbol, bid, 1.25, bid + 0.01, 2.5, ts, ts)


@contextlib.asynccontextmanager
async def book_socket(bus: Bus, token: str | None = None) -> AsyncIterator[BookSocketServer]:
    server = BookSocketServer(bus, BookSocketSettings(enabled=True, port=0, token=token))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_client_gets_the_seed_json_shape() -> None:
    bus = Bus()
    bus.publish_quote(quote("binance_spot", 61685.99))
    async with book_socket(bus) as server, connect(f"ws://127.0.0.1:{server.port}/book") as ws:
        snapshot = orjson.loads(await ws.recv())  # the current view, sent on connect
        assert set(snapshot) == {"event_time", "binance_spot"}
        bus.publish_quote(quote("bybit_spot", 61686.5))
        view = orjson.loads(await ws.recv())
    assert isinstance(view["event_time"], int)
    assert set(view) == {"event_time", "binance_spot", "bybit_spot"}
    for venue in ("binance_spot", "bybit_spot"):
        assert set(view[venue]) == SEED_FIELDS
        assert all(isinstance(value, str) for value in view[venue].values())
    assert view["binance_spot"]["top_bid"] == "61685.99"
    assert view["bybit_spot"]["top_ask_quantity"] == "2.5"


async def test_token_is_required_when_configured() -> None:
    bus = Bus()
    async with book_socket(bus, token="s3cret") as server:
        base = f"ws://127.0.0.1:{server.port}"
        for url in (f"{base}/book", f"{base}/book?token=wrong"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 401
        async with connect(f"{base}/book?token=s3cret"):
            pass
        async with connect(f"{base}/book", additional_headers={"Authorization": "Bearer s3cret"}):
            pass
        with pytest.raises(InvalidStatus) as not_found:
            async with connect(f"{base}/other?token=s3cret"):
                pass
        assert not_found.value.response.status_code == 404


async def open_slow_client(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads again."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # fill up quickly
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, (
        f"GET /book HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_slow_client_is_conflated_and_never_delays_the_bus() -> None:
    # Eight venues on one symbol make each view ~1.4 kB, so the slow socket fills sooner.
    venues = ["binance_spot", "bybit_spot", "okx", "kraken", "coinbase", "kucoin", "gate",
              "bitget"]
    bus = Bus()
    server = BookSocketServer(bus, BookSocketSettings(enabled=True, port=0))
    await server.start()
    slow = await open_slow_client(server.port)
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/book") as fast:
            await wait_for(lambda: server.stats()["clients"] == 2)
            slow_name = min(c["client"] for c in server.client_stats())  # connected first
            latest: list[bytes] = []

            async def read_fast() -> None:
                async for message in fast:
                    latest[:] = [message]

            reader = asyncio.create_task(read_fast())

            def slow_client() -> dict:
                return next(c for c in server.client_stats() if c["client"] == slow_name)

            bid, durations = 100.0, []

            def burst() -> None:
                nonlocal bid
                for venue in venues:
                    bid += 0.01
                    started = time.perf_counter()
                    bus.publish_quote(quote(venue, round(bid, 2)))
                    durations.append(time.perf_counter() - started)

            # Publish until the slow client's socket is full and its sender is stuck.
            unchanged, last_delivered = 0, -1
            for _ in range(20_000):
                burst()
                await asyncio.sleep(0)
                delivered = slow_client()["delivered"]
                unchanged = unchanged + 1 if delivered == last_delivered else 0
                last_delivered = delivered
                if unchanged >= 200:
                    break
            assert unchanged >= 200, "the slow client never filled its socket"

            # Now it is stuck: the bus goes on, the slow client only ever holds the newest
            # quote per (venue, symbol), and the fast client keeps up.
            conflated_before = slow_client()["conflated"]
            for _ in range(500):
                burst()
                await asyncio.sleep(0)
            stuck = slow_client()
            assert stuck["delivered"] == last_delivered
            assert stuck["pending"] <= len(venues)
            assert stuck["conflated"] >= conflated_before + 500 * len(venues) - len(venues)
            await wait_for(lambda: latest and orjson.loads(latest[0])["bitget"]["top_bid"]
                           == repr(round(bid, 2)))
            reader.cancel()
        # Shutting down with the slow client still stuck does not hang.
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 3.0
    finally:
        await server.close()
        slow.close()
    # publish is a plain synchronous call: its cost does not depend on the slow reader
    assert sum(durations) / len(durations) < 1e-3
    assert server.stats() == {"clients": 0, "sent": server.stats()["sent"],
                              "conflated": server.stats()["conflated"], "refused": 0}
    assert server.stats()["conflated"] > 0
    assert bus.counters()["published_quotes"] == len(durations)


async def test_clients_beyond_max_clients_are_refused() -> None:
    bus = Bus()
    settings = BookSocketSettings(enabled=True, port=0, max_clients=2)
    server = BookSocketServer(bus, settings)
    await server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}/book"
        async with connect(url) as first, connect(url) as second:
            await wait_for(lambda: server.stats()["clients"] == 2)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 503
            assert server.stats()["refused"] == 1
            await first.close()
            await second.close()
        await wait_for(lambda: server.stats()["clients"] == 0)
        async with connect(url):  # room again once a client has left
            pass
    finally:
        await server.close()


async def test_a_socket_without_token_warns_at_start() -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with book_socket(Bus()):
            pass
        async with book_socket(Bus(), token="s3cret"):
            pass
    warnings = [e for e in logs if e["event"] == "book_socket_without_token"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert "s3cret" not in repr(logs)
