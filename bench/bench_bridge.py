"""Bridge benchmark: market data through NATS against the same replay in one process.

    .venv/bin/python bench/bench_bridge.py [FILES...] [--rate 10000] [--seconds 5]

Starts its own nats-server (JetStream, temporary store, 127.0.0.1, the one the tests use)
and prints:

1. throughput: the recording replayed as fast as it goes (a) into a local bus, one
   process (the baseline), and (b) into a bus whose publisher sends every event through
   the server to a consumer in another process (`NatsMarketFeed`), which publishes it on
   its own bus: events/s from the first replayed frame to the last event on the far bus,
   and the ratio b/a;
2. latency at a steady `--rate` quotes/s for `--seconds`: each quote stamped with the
   wall time just before the feed side's `Bus.publish_quote`, read on the far bus's sink:
   p50, p99, max (one host, one clock);
3. publish alone, 20,000 quotes: core NATS publish (what the bridge does, the stream
   capturing it) against JetStream publish (one acknowledgement per message) and
   JetStream publish_async (acknowledgements in flight): msgs/s.

Default input: the Binance spot and USD-M recordings of 2024-08-08 in ../shared/data
(the shipped sample when ../shared is absent). It prints figures and never asserts time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

from adapters.recordings.replay import SAMPLE_FILES, ReplayFeed, ReplaySpec  # noqa: E402
from config.settings import NatsSettings, Settings  # noqa: E402
from daemon.bridge.connection import connect  # noqa: E402
from daemon.bridge.market_in import NatsMarketFeed  # noqa: E402
from daemon.bridge.market_out import MarketPublisher, ensure_market_stream  # noqa: E402
from daemon.core.model import Quote, Trade  # noqa: E402
from daemon.market.bus import Bus  # noqa: E402
from tests.helpers.nats_server import NatsServer  # noqa: E402

if TYPE_CHECKING:
    from nats.aio.client import Client

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_FILES = (SHARED / "binance_spot_btcusdt_20240808.gz",
                 SHARED / "binance_usdm_btcusdt_20240808.gz")
LATENCY_VENUE, LATENCY_SYMBOL = "binance_spot", "ETH/USDT"


def consumer_settings(url: str) -> Settings:
    return Settings(nats={"url": url}, symbols="BTC/USDT,BTC/USDT:USDT,ETH/USDT",
                    venues={"binance_spot": {"enabled": True},
                            "binance_usdm": {"enabled": True},
                            "bybit_spot": {"enabled": False},
                            "bybit_linear": {"enabled": False}})


# -- the far side: another process --------------------------------------------------------------


def consume(url: str, expected: int, latency_quotes: int, ready: multiprocessing.Queue,
            results: multiprocessing.Queue) -> None:
    """Count every event reaching the far bus; then time the latency quotes."""
    asyncio.run(_consume(url, expected, latency_quotes, ready, results))


async def _consume(url: str, expected: int, latency_quotes: int,
                   ready: multiprocessing.Queue, results: multiprocessing.Queue) -> None:
    client = await connect(NatsSettings(url=url), name="bench-consumer")
    bus = Bus()
    state = {"events": 0, "last_ns": 0}
    latencies: list[int] = []
    done = asyncio.Event()

    def on_event(_event: Quote | Trade) -> None:
        state["events"] += 1
        if state["events"] == expected:
            state["last_ns"] = time.time_ns()
            done.set()

    def on_latency_quote(quote: Quote) -> None:
        latencies.append(time.time_ns() - quote.local_ts_ns)
        if len(latencies) == latency_quotes:
            done.set()

    def route(event: Quote | Trade) -> None:
        if event.symbol == LATENCY_SYMBOL:
            on_latency_quote(event)  # type: ignore[arg-type]
        else:
            on_event(event)

    bus.add_sink(on_quote=route, on_trade=route)
    feed = NatsMarketFeed(client, consumer_settings(url), bus)
    task = asyncio.create_task(feed.run())
    await asyncio.sleep(0.5)  # subscribed and past the late join
    ready.put("ready")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=600)
    results.put(("throughput", state["events"], state["last_ns"] or time.time_ns()))
    done.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=600)
    results.put(("latency", latencies))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.close()


# -- the feed side ----------------------------------------------------------------------------


async def load_events(paths: list[Path]) -> list[Quote | Trade]:
    events: list[Quote | Trade] = []
    replay = ReplayFeed([ReplaySpec(path) for path in paths], events.append, events.append,
                        speed=None)
    await replay.run()
    return events


async def replay_in_one_process(paths: list[Path]) -> tuple[int, float]:
    bus = Bus()
    seen = [0]

    def count(_event: Quote | Trade) -> None:
        seen[0] += 1

    bus.add_sink(on_quote=count, on_trade=count)
    started = time.perf_counter()
    await ReplayFeed([ReplaySpec(path) for path in paths], bus.publish_quote,
                     bus.publish_trade, speed=None).run()
    return seen[0], time.perf_counter() - started


async def replay_through_nats(url: str, paths: list[Path], expected: int,
                              results: multiprocessing.Queue
                              ) -> tuple[int, float, MarketPublisher, Bus, Client]:
    client = await connect(NatsSettings(url=url), name="bench-feed")
    await ensure_market_stream(client, NatsSettings(url=url))
    bus = Bus()
    publisher = MarketPublisher(client, capacity=expected + 1)  # measure, do not drop
    bus.add_sink(publisher)
    publisher.start()
    started_ns = time.time_ns()
    await ReplayFeed([ReplaySpec(path) for path in paths], bus.publish_quote,
                     bus.publish_trade, speed=None, yield_every=64).run()
    while publisher.buffered:
        await asyncio.sleep(0.001)
    handed_s = (time.time_ns() - started_ns) / 1e9
    print(f"    feed side: replay + publisher handed all to nats-py in {handed_s:.2f} s "
          f"({publisher.published / handed_s:,.0f} events/s)")
    kind, received, last_ns = await asyncio.to_thread(results.get)
    assert kind == "throughput"
    return received, (last_ns - started_ns) / 1e9, publisher, bus, client


async def paced_quotes(bus: Bus, rate: float, count: int) -> None:
    """`count` quotes at `rate`/s, each stamped just before it is published."""
    started = time.perf_counter()
    sent = 0
    while sent < count:
        due = min(count, int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            sent += 1
            bus.publish_quote(Quote(LATENCY_VENUE, LATENCY_SYMBOL, 3000.0 + sent % 7, 1.0,
                                    3000.5 + sent % 7, 1.0, time.time_ns(), time.time_ns(),
                                    sent))
        await asyncio.sleep(0.0005)


def percentile(values: list[int], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1e6


async def publish_alone(url: str, count: int = 20_000) -> dict[str, float]:
    from daemon.bridge.codec import encode_quote, subject

    client = await connect(NatsSettings(url=url), name="bench-publish")
    js = client.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.>"])
    body = encode_quote(Quote("binance_spot", "BTC/USDT", 61837.63, 1.25869, 61837.64, 0.3,
                              1723161254087000000, 1723161254087891268, 48213))
    topic = "bench." + subject("binance_spot", "BTC/USDT", "quote")
    figures: dict[str, float] = {}
    started = time.perf_counter()
    for _ in range(count):
        await client.publish(topic, body)
    await client.flush()
    figures["core publish (stream captures it)"] = count / (time.perf_counter() - started)
    few = count // 10
    started = time.perf_counter()
    for _ in range(few):
        await js.publish(topic, body)
    figures["JetStream publish (ack per message)"] = few / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(count):
        await js.publish_async(topic, body)
    await js.publish_async_completed()
    figures["JetStream publish_async (acks in flight)"] = count / (time.perf_counter() - started)
    await client.close()
    return figures


async def main_async(paths: list[Path], rate: float, seconds: float) -> None:
    events = await load_events(paths)
    expected = len(events)
    latency_quotes = int(rate * seconds)
    print(f"input: {', '.join(p.name for p in paths)}: {expected:,} quotes and trades")

    count, elapsed = await replay_in_one_process(paths)
    in_process = count / elapsed
    print(f"\n(a) replay -> local bus, one process:     {in_process:12,.0f} events/s "
          f"({count:,} in {elapsed:.2f} s)")

    with tempfile.TemporaryDirectory(prefix="bench-nats-") as store, \
            NatsServer(Path(store)) as server:
        context = multiprocessing.get_context("spawn")
        ready, results = context.Queue(), context.Queue()
        far = context.Process(target=consume, args=(server.url, expected, latency_quotes,
                                                    ready, results))
        far.start()
        await asyncio.to_thread(ready.get)
        received, elapsed, publisher, bus, client = await replay_through_nats(
            server.url, paths, expected, results)
        bridged = received / elapsed
        print(f"(b) replay -> bus -> NATS -> other process's bus: {bridged:,.0f} events/s "
              f"({received:,} of {expected:,} in {elapsed:.2f} s, publisher dropped "
              f"{publisher.dropped})")
        print(f"    ratio b/a: {bridged / in_process:.3f}")

        await paced_quotes(bus, rate, latency_quotes)
        kind, latencies = await asyncio.to_thread(results.get)
        far.join(timeout=30)
        if kind == "latency" and latencies:
            print(f"\nlatency, Bus.publish_quote -> far bus, {rate:,.0f} quotes/s for "
                  f"{seconds:g} s ({len(latencies):,} quotes): p50 "
                  f"{percentile(latencies, 0.50):.3f} ms, p99 "
                  f"{percentile(latencies, 0.99):.3f} ms, max {max(latencies) / 1e6:.3f} ms")
        else:
            print(f"\nlatency: only {len(latencies) if kind == 'latency' else 0} quotes came")
        await publisher.aclose()
        await client.close()

        print("\npublish alone, 20,000 quotes of 61 bytes:")
        for name, value in (await publish_alone(server.url)).items():
            print(f"    {name:42} {value:10,.0f} msgs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    paths = options.files or [p for p in DEFAULT_FILES if p.is_file()] or list(SAMPLE_FILES)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_async(paths, options.rate, options.seconds))
    else:
        uvloop.run(main_async(paths, options.rate, options.seconds))


if __name__ == "__main__":
    main()
