"""Loopback benchmark: a local Binance-protocol server -> WebSocket client -> bus -> ring.

    .venv/bin/python bench/bench_loopback.py [--rounds N] [--latency-seconds S] [--rate HZ]

A server process replays the shared Binance spot and USD-M recordings (bookTicker and
trade frames, ~125k) over real TCP on 127.0.0.1, each market on its own port, as fast as
the socket takes: every frame is WebSocket-framed in advance and written in one go, so
the server costs next to nothing and the client is what is measured. Three clients
take turns, each on a fresh connection, in the same run (best of `--rounds`):

  native  the daemon's path: BinanceAdapter (supervisor, picows client, msgspec parser) ->
          Bus.publish_* -> RingStore (the 24 h ring, when daemon.market.ringbuffer is present)
  ccxt    ccxt.pro binance/binanceusdm (watch_bids_asks + watch_trades) -> the same bus
  bare    a websockets client doing `orjson.loads` per frame and nothing else

frames/s = frames sent / (last frame handled - connect). ccxt hands over only the
newest bid/ask when asked, but it parses every frame, so all of them count.

Then tick-to-bus latency: the server paces spot frames at `--rate` frames/s, writing
its send time (time.time_ns, ns) into each frame (bookTicker `u`, trade `t`), and the
client takes `time.time_ns() - send time` when the quote or trade reaches the bus (the
bare client: after orjson.loads). p50 / p99 / p99.9 over `--latency-seconds`.

Both processes share the machine's cores (2 here). The server runs the stdlib asyncio
loop (see server_main); clients run uvloop, as the daemon does. It prints figures and
never asserts time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import logging
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

SHARED = ROOT.parent / "shared" / "data"
FILES = {"binance_spot": SHARED / "binance_spot_btcusdt_20240808.gz",
         "binance_usdm": SHARED / "binance_usdm_btcusdt_20240808.gz"}
STREAMS = ("btcusdt@bookTicker", "btcusdt@trade")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --- the server process ---------------------------------------------------------------------


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A server-to-client (unmasked) WebSocket frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def load_tape(path: Path) -> list[tuple[str, bytes, bytes]]:
    """(stream, combined frame, raw data frame) for the bookTicker and trade lines."""
    from venue_servers import binance_tape

    frames, _ = binance_tape(path)
    return [(f.stream, f.combined, f.raw) for f in frames if f.stream in STREAMS]


class BlastServer:
    """Speaks just enough of Binance's protocol: the handshake, combined streams from the
    URL, raw streams via SUBSCRIBE (replied to), pings, and the REST exchangeInfo."""

    def __init__(self, market: str, tape: list[tuple[str, bytes, bytes]]) -> None:
        from venue_servers import exchange_info

        self.market = market
        self.tape = tape
        self.combined = b"".join(ws_frame(combined) for _, combined, _ in tape)
        self.exchange_info = exchange_info(["BTCUSDT"], spot=market == "binance_spot")
        self.paced: tuple[float, float] | None = None  # (rate, seconds) for latency runs

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        control: asyncio.Task[None] | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None:  # small frames must leave at once, not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode().split("\r\n")
            path = request_line.split()[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in header_lines if line)}
            if headers.get("upgrade", "").lower() != "websocket":
                self.answer_http(path, writer)
                return
            accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode()
                                                   + GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            if "/stream" in path:
                control = asyncio.create_task(self.serve_control(reader, writer, None))
                if self.paced is not None:
                    await self.send_paced(writer)
                else:
                    writer.write(self.combined)
            else:
                subscribed: set[str] = set()
                control = asyncio.create_task(self.serve_control(reader, writer, subscribed))
                while not subscribed:  # ccxt subscribes once connected
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.02)  # ...possibly in more than one request
                writer.write(b"".join(ws_frame(raw) for stream, _, raw in self.tape
                                      if stream in subscribed))
            await writer.drain()
            await control
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if control is not None:
                control.cancel()

    def answer_http(self, path: str, writer: asyncio.StreamWriter) -> None:
        found = "exchangeInfo" in path
        body = self.exchange_info if found else b'{"code":-1}'
        status = b"200 OK" if found else b"404 Not Found"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                     b"Connection: close\r\n\r\n" + body)

    async def serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            subscribed: set[str] | None) -> None:
        """Client frames: SUBSCRIBE (raw mode), pings, close."""
        while True:
            first, second = await reader.readexactly(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
            if opcode == 8:
                writer.write(ws_frame(data[:2], opcode=8))
                return
            if opcode == 9:
                writer.write(ws_frame(data, opcode=10))
            elif opcode == 1 and subscribed is not None:
                request = orjson.loads(data)
                subscribed.update(request.get("params") or [])
                writer.write(ws_frame(orjson.dumps({"result": None, "id": request.get("id")})))

    async def send_paced(self, writer: asyncio.StreamWriter) -> None:
        """Frames at a fixed rate, each stamped with its send time just before it goes.

        Sleeps between due frames instead of spinning: on a 2-core machine a spinning
        server would take a core from the client and show up as client latency.
        """
        assert self.paced is not None
        rate, seconds = self.paced
        stamped = [_stampable(stream, combined) for stream, combined, _ in self.tape]
        transport = writer.transport
        interval = 1.0 / rate
        count = int(rate * seconds)
        start = time.perf_counter()
        index = 0
        while index < count and not transport.is_closing():  # until the client goes
            due = min(count, int((time.perf_counter() - start) / interval) + 1)
            while index < due:
                prefix, suffix = stamped[index % len(stamped)]
                transport.write(ws_frame(prefix + str(time.time_ns()).encode() + suffix))
                index += 1
            await asyncio.sleep(max(0.0, start + index * interval - time.perf_counter()))


def _stampable(stream: str, combined: bytes) -> tuple[bytes, bytes]:
    """Split a frame around the number that will carry the send time (u or t)."""
    key = b'"u":' if stream.endswith("bookTicker") else b'"t":'
    start = combined.index(key) + len(key)
    end = start
    while combined[end:end + 1].isdigit():
        end += 1
    return combined[:start], combined[end:]


def server_main(pipe: Any, latency: tuple[float, float]) -> None:
    async def main() -> None:
        servers = {}
        for market, path in FILES.items():
            servers[market] = BlastServer(market, load_tape(path))
        paced = BlastServer("binance_spot", servers["binance_spot"].tape)
        paced.paced = latency
        ports = {}
        for name, server in [*servers.items(), ("paced", paced)]:
            listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
            ports[name] = listener.sockets[0].getsockname()[1]
        counts = {m: len(s.tape) for m, s in servers.items()}
        pipe.send((ports, counts))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told

    # The stdlib loop on purpose: under uvloop this paced sender's frames showed a
    # millisecond p99 of its own (measured: p99 2.2 ms with a uvloop server against
    # 0.26 ms with this one, same client), which is the server's, not the client's.
    asyncio.run(main())


# --- clients --------------------------------------------------------------------------------


def venue_settings(market: str, port: int, feed: str) -> Any:
    from config.settings import VenueSettings

    return VenueSettings(enabled=True, feed=feed,
                         ccxt_id="binance" if market == "binance_spot" else "binanceusdm",
                         market_type="spot" if market == "binance_spot" else "linear",
                         ws_url=f"ws://127.0.0.1:{port}/ws", rest_url=f"http://127.0.0.1:{port}")


def symbol_of(market: str) -> str:
    return "BTC/USDT" if market == "binance_spot" else "BTC/USDT:USDT"


def new_bus(with_ring: bool = True) -> tuple[Any, str]:
    from daemon.market.bus import Bus

    bus = Bus()
    try:
        from daemon.market.ringbuffer import RingStore
    except ImportError:
        return bus, "bus (no ring: daemon.market.ringbuffer absent)"
    if with_ring:
        ring = RingStore(retention_s=3_600.0)
        bus.add_sink(ring)
        return bus, "bus + ring"
    return bus, "bus"


async def run_native(ports: dict[str, int], counts: dict[str, int]) -> float:
    from adapters.binance.session import BinanceAdapter
    from adapters.common.stats import VenueStats

    bus, _ = new_bus()
    done = asyncio.Event()
    total = sum(counts.values())

    seen = [0]

    def check(_: Any) -> None:
        seen[0] += 1
        if seen[0] >= total:
            done.set()

    bus.add_sink(on_quote=check, on_trade=check)
    adapters = [BinanceAdapter(m, venue_settings(m, ports[m], "native"), [symbol_of(m)], bus,
                               stats=VenueStats(m)) for m in counts]
    start = time.perf_counter()
    tasks = [asyncio.create_task(a.run()) for a in adapters]
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    await _stop(tasks)
    return total / elapsed


async def run_ccxt(ports: dict[str, int], counts: dict[str, int]) -> float:
    from adapters.ccxt.feed import CcxtFeed
    from adapters.common.stats import VenueStats

    bus, _ = new_bus()
    # Every trade arrives (ccxt caches them); the last trade marks the end of the stream.
    trades_expected = {m: sum(1 for s, _, _ in load_tape(FILES[m]) if s.endswith("@trade"))
                       for m in counts}
    seen: dict[str, int] = dict.fromkeys(counts, 0)
    done = asyncio.Event()

    def on_trade(trade: Any) -> None:
        seen[trade.exchange] += 1
        if all(seen[m] >= trades_expected[m] for m in counts):
            done.set()

    bus.add_sink(on_trade=on_trade)
    feeds = [CcxtFeed(m, venue_settings(m, ports[m], "ccxt"), [symbol_of(m)], bus,
                      stats=VenueStats(m)) for m in counts]
    start = time.perf_counter()
    tasks = [asyncio.create_task(f.run()) for f in feeds]
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - start
    await _stop(tasks)
    return sum(counts.values()) / elapsed


async def run_bare(ports: dict[str, int], counts: dict[str, int]) -> float:
    from websockets.asyncio.client import connect

    async def one(market: str) -> None:
        url = f"ws://127.0.0.1:{ports[market]}/stream?streams={'/'.join(STREAMS)}"
        async with connect(url, compression=None, max_queue=4096) as ws:
            loads = orjson.loads
            for _ in range(counts[market]):
                loads(await ws.recv())

    start = time.perf_counter()
    await asyncio.gather(*(one(m) for m in counts))
    return sum(counts.values()) / (time.perf_counter() - start)


async def _stop(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- latency --------------------------------------------------------------------------------


async def latency_native(port: int, count: int) -> tuple[list[int], list[int]]:
    """(send -> publish, socket read -> publish) per quote/trade, ns."""
    from adapters.binance.session import BinanceAdapter
    from adapters.common.stats import VenueStats

    bus, _ = new_bus()
    total: list[int] = []
    in_process: list[int] = []
    clock = time.time_ns

    def on_quote(quote: Any) -> None:
        now = clock()
        total.append(now - quote.seq)
        in_process.append(now - quote.local_ts_ns)

    def on_trade(trade: Any) -> None:
        now = clock()
        total.append(now - int(trade.trade_id))
        in_process.append(now - trade.local_ts_ns)

    bus.add_sink(on_quote=on_quote, on_trade=on_trade)
    adapter = BinanceAdapter("binance_spot", venue_settings("binance_spot", port, "native"),
                             ["BTC/USDT"], bus, stats=VenueStats("binance_spot"))
    task = asyncio.create_task(adapter.run())
    await _until(lambda: len(total) >= count, 60 + count / 1000)
    await _stop([task])
    return total, in_process


async def latency_bare(port: int, count: int) -> list[int]:
    from websockets.asyncio.client import connect

    samples: list[int] = []
    clock = time.time_ns
    url = f"ws://127.0.0.1:{port}/stream?streams={'/'.join(STREAMS)}"
    async with connect(url, compression=None, max_queue=4096) as ws:
        while len(samples) < count:
            data = orjson.loads(await ws.recv())["data"]
            samples.append(clock() - int(data["u"] if "u" in data else data["t"]))
    return samples


async def _until(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark stream stalled")
        await asyncio.sleep(0.01)


def percentiles(samples: list[int]) -> str:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3

    return (f"p50 {pick(0.5):8.1f} us   p99 {pick(0.99):8.1f} us   "
            f"p99.9 {pick(0.999):8.1f} us   max {ordered[-1] / 1e3:8.1f} us   "
            f"mean {statistics.fmean(ordered) / 1e3:7.1f} us   (n={len(ordered)})")


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--skip-ccxt", action="store_true")
    parser.add_argument("--latency-only", action="store_true")
    args = parser.parse_args()
    if not all(path.is_file() for path in FILES.values()):
        print(f"needs the shared recordings in {SHARED}", file=sys.stderr)
        raise SystemExit(2)

    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.get_context("fork").Process(
        target=server_main, args=(theirs, (args.rate, args.latency_seconds + 2.0)), daemon=True)
    server.start()
    ports, counts = ours.recv()
    try:
        import uvloop

        loop_name = f"uvloop {uvloop.__version__}"
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        loop_name, runner = "asyncio", asyncio.run
    _, sink_label = new_bus()
    print(f"loopback: {sum(counts.values()):,} frames ({counts}); client loop: {loop_name}; "
          f"{os.cpu_count()} cores; best of {args.rounds}")
    best: dict[str, float] = {}
    variants: list[tuple[str, Callable[..., Any]]] = [("native", run_native), ("bare", run_bare)]
    if not args.skip_ccxt:
        variants.insert(1, ("ccxt", run_ccxt))
    for round_index in range(0 if args.latency_only else args.rounds):
        for name, variant in variants:
            if name == "ccxt" and round_index > 0:
                continue  # ~10 s a round and far from the others: one round says enough
            gc.collect()
            rate = runner(variant(ports, counts))
            best[name] = max(best.get(name, 0.0), rate)
    labels = {"native": f"native adapter -> {sink_label}", "ccxt": f"ccxt.pro -> {sink_label}",
              "bare": "bare websockets + orjson.loads"}
    for name, rate in best.items():
        print(f"  {labels[name]:<40} {rate:>12,.0f} frames/s")
    if "ccxt" in best:
        print(f"  native / ccxt.pro = {best['native'] / best['ccxt']:.1f}x (target >= 10x)")
    if "bare" in best:
        print(f"  native / bare     = {best['native'] / best['bare']:.2f}x (target >= 1.0x)")

    count = int(args.rate * args.latency_seconds)
    print(f"\ntick-to-bus latency, paced {args.rate:,.0f} frames/s for "
          f"{args.latency_seconds:g} s (server send -> publish):")
    warm_up = count // 10  # skipped: connection set-up, first allocations
    total, in_process = runner(latency_native(ports["paced"], count))
    print(f"  native adapter    {percentiles(total[warm_up:])}")
    print(f"    of which socket read -> publish (parse, bus, ring): "
          f"{percentiles(in_process[warm_up:])}")
    bare = runner(latency_bare(ports["paced"], count))
    print(f"  bare websockets   {percentiles(bare[warm_up:])}")
    print("  (send -> read is the kernel and the scheduler: the same for both clients)")
    ours.send("stop")
    server.join(timeout=5)


if __name__ == "__main__":
    main()
