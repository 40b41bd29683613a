"""Internalize benchmark: client fills decided per second, and ingest endpoint round trips.

    .venv/bin/python bench/bench_internalize.py [--fills N] [--messages N] [--repeat N]

Decisions (best of --repeat runs over the same seeded synthetic flow, ETH/USDT at 3000):

  (a) bare loop: iterate the fills and call a function that returns its argument
      (the floor any per-fill Python callback pays);
  (b) `InternalizeStrategy.on_client_fill` alone: one full Decision per fill (costs,
      closed-form hedge, portfolio booking, inputs snapshot); in-flight hedges are
      forgotten unfilled, so the inventory sits past its limit and nearly every fill
      takes the heavier force-hedge path (an intent per fill);
  (c) as (b) plus booking each hedge's fill through `on_fill` (the paper round trip
      without the executor itself).

Ingest: the WebSocket `/flow` endpoint on 127.0.0.1 (ephemeral port), one client,
(d) sequential round trips (send a fill, wait for its JSON reply) and (e) pipelined
(send all, then read all replies); a consumer task drains the accepted fills.

Figures are printed, never asserted. Target from the issue: (b) >= 50,000 fills/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

from adapters.client_flow import SyntheticFlowSource, WebSocketFlowSource, run_flow  # noqa: E402
from daemon.core.model import ClientFill, Fill, Quote  # noqa: E402
from strategies.internalize import InternalizeStrategy  # noqa: E402

SYMBOL = "ETH/USDT"
VENUE = "binance_spot"
TOKEN = "bench-token"


class StaticMarket:
    """One fresh quote and a fixed volatility: the view costs what a dict lookup costs."""

    def __init__(self) -> None:
        self._quote = Quote(VENUE, SYMBOL, 2999.99, 50.0, 3000.01, 50.0, 0, 0)

    def quote(self, exchange: str, symbol: str) -> Quote | None:
        return self._quote

    def volatility(self, exchange: str, symbol: str, window_s: float) -> float:
        return 8e-5

    def trade_rate(self, exchange: str, symbol: str, window_s: float) -> float:
        return 1.0


class NoAccount:
    def balances(self, venue: str) -> dict[str, float]:
        return {}


def make_fills(count: int) -> list[ClientFill]:
    source = SyntheticFlowSource(SYMBOL, rate_hz=10.0, mean_qty=1.0, seed=7, markup_bps=5.0)
    fills = list(itertools.islice(source.generate(0, 10**18, lambda ts: 3000.0), count))
    if len(fills) < count:
        raise SystemExit("not enough synthetic fills")
    return fills


def make_strategy(now: list[int]) -> InternalizeStrategy:
    strategy = InternalizeStrategy(
        SYMBOL, {VENUE: 10.0}, gamma=0.1, horizon_s=300.0, max_inventory=50.0,
        slippage_coefficient=0.0005, initial_balances={"ETH": 100.0, "USDT": 100_000.0},
    )
    strategy.bind(StaticMarket(), NoAccount(), lambda: now[0])
    return strategy


def timed(run: Callable[[], int]) -> tuple[float, int]:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        count = run()
        return time.perf_counter() - start, count
    finally:
        gc.enable()


def bare_loop(fills: list[ClientFill]) -> int:
    def callback(fill: ClientFill) -> ClientFill:
        return fill

    count = 0
    for fill in fills:
        callback(fill)
        count += 1
    return count


def decide_only(fills: list[ClientFill]) -> int:
    now = [0]
    strategy = make_strategy(now)
    decide, pending = strategy.on_client_fill, strategy.pending
    hedges = 0
    for fill in fills:
        now[0] = fill.ts_ns
        if decide(fill).intents:
            hedges += 1
            pending.clear()
    return hedges


def decide_and_book(fills: list[ClientFill]) -> int:
    now = [0]
    strategy = make_strategy(now)
    decide, book = strategy.on_client_fill, strategy.on_fill
    hedges = 0
    for fill in fills:
        now[0] = fill.ts_ns
        for intent in decide(fill).intents:
            hedges += 1
            intent.client_order_id = f"bench-{hedges}"
            book(Fill(intent.client_order_id, VENUE, SYMBOL, intent.side, intent.price or 0.0,
                      intent.qty, 0.001 * intent.qty * (intent.price or 0.0), "USDT", "taker",
                      fill.ts_ns, "internalize"))
    return hedges


def bench_decisions(fill_count: int, repeat: int) -> None:
    fills = make_fills(fill_count)
    print(f"decisions over {fill_count:,} seeded synthetic client fills (best of {repeat})")
    baseline = None
    for label, run in (("(a) bare loop", bare_loop), ("(b) on_client_fill", decide_only),
                       ("(c) on_client_fill + hedge fills booked", decide_and_book)):
        best, extra = min(timed(lambda run=run: run(fills)) for _ in range(repeat))
        rate = fill_count / best
        baseline = baseline or rate
        note = "" if run is bare_loop else f"  {baseline / rate:6.1f}x the bare loop, " \
            f"{best / fill_count * 1e6:5.2f} us/fill, hedges sent {extra:,}"
        print(f"  {label:<42} {rate:>12,.0f} fills/s{note}")


async def bench_ingest(message_count: int) -> None:
    source = WebSocketFlowSource(SYMBOL, TOKEN, port=0, queue_size=message_count * 2 + 10)
    await source.start()
    consumer = asyncio.create_task(run_flow(source, lambda fill: None))
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{source.port}/flow"
    messages = [orjson.dumps({"side": "buy" if i % 2 else "sell", "qty": 1.0 + i % 7,
                              "price": 3000.0, "fill_id": f"b{i}"}) for i in range(message_count)]
    print(f"ingest endpoint ws://127.0.0.1:<port>/flow, {message_count:,} fills, one client")
    try:
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"},
                           max_queue=None) as ws:
            start = time.perf_counter()
            for message in messages:
                await ws.send(message.decode())
                await ws.recv()
            elapsed = time.perf_counter() - start
            print(f"  (d) sequential round trips                {message_count / elapsed:>12,.0f}"
                  f" /s  ({elapsed / message_count * 1e6:.0f} us each)")
            start = time.perf_counter()
            for message in messages:
                await ws.send(message.decode())
            for _ in messages:
                await ws.recv()
            elapsed = time.perf_counter() - start
            print(f"  (e) pipelined (send all, then read all)   {message_count / elapsed:>12,.0f}"
                  " /s")
    finally:
        await source.stop()
    print(f"  accepted {await consumer:,} fills, rejected {sum(source.rejected.values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=200_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    bench_decisions(args.fills, args.repeat)
    try:
        import uvloop

        run: Callable[..., object] = uvloop.run
        loop_name = "uvloop"
    except ImportError:
        run, loop_name = asyncio.run, "asyncio"
    print(f"event loop: {loop_name}")
    run(bench_ingest(args.messages))


if __name__ == "__main__":
    main()
