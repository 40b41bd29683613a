"""Backtest throughput: events/s of inventory-mm over the shared Binance recordings, vs a
bare replay that only parses the same frames.

Run: .venv/bin/python bench/bench_backtest.py [--repeat 3] [--strategy inventory-mm]
Prints figures, never asserts on time. Both measurements read the same files in the same
process (spot and USD-M BTCUSDT, 2024-08-08, ~125k bookTicker + trade events); the bare
replay is `ReplayFeed` at max speed with callbacks that only count, so the ratio is what
the strategy, runner, risk gate, paper executor, ring buffer and synchronous decision log
cost on top of decompressing and parsing. Best of `--repeat` runs each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.replay import ReplayFeed, ReplaySpec
from config.settings import load_settings
from daemon.backtest import Backtest
from daemon.logs import configure_logging
from daemon.model import Quote, Trade

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = (SHARED / "binance_spot_btcusdt_20240808.gz", SHARED / "binance_usdm_btcusdt_20240808.gz")


async def bare_replay(specs: list[ReplaySpec]) -> tuple[int, float]:
    counted = [0]

    def count(_event: Quote | Trade) -> None:
        counted[0] += 1

    started = time.perf_counter()
    await ReplayFeed(specs, count, count, speed=None).run()
    return counted[0], time.perf_counter() - started


async def strategy_replay(specs: list[ReplaySpec], strategy: str, data_dir: Path,
                          run_id: str) -> tuple[int, float, int]:
    settings = load_settings({"data_dir": data_dir}, env_file=None)
    engine = Backtest(settings, strategy, specs, run_id)
    started = time.perf_counter()
    result = await engine.run()
    return result.events, time.perf_counter() - started, result.records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--strategy", default="inventory-mm")
    args = parser.parse_args()
    missing = [str(path) for path in FILES if not path.is_file()]
    if missing:
        print(f"skipped: shared recordings not found ({', '.join(missing)})")
        return
    configure_logging("bench-backtest", "warning", "console")
    specs = [ReplaySpec(path) for path in FILES]

    bare_best = strategy_best = float("inf")
    events = bare_events = records = 0
    with tempfile.TemporaryDirectory() as scratch:
        for attempt in range(args.repeat):
            bare_events, seconds = asyncio.run(bare_replay(specs))
            bare_best = min(bare_best, seconds)
            events, seconds, records = asyncio.run(
                strategy_replay(specs, args.strategy, Path(scratch), f"bench-{attempt}"))
            strategy_best = min(strategy_best, seconds)
    if events != bare_events:
        print(f"warning: the replays saw {bare_events:,} and {events:,} events")
    bare_rate, rate = bare_events / bare_best, events / strategy_best
    print(f"events                          {events:,} ({', '.join(p.name for p in FILES)})")
    print(f"bare replay (parse only)        {bare_rate:,.0f} events/s  ({bare_best:.2f} s)")
    print(f"backtest {args.strategy:<22} {rate:,.0f} events/s  ({strategy_best:.2f} s, "
          f"{records:,} log records)")
    print(f"ratio backtest / bare replay    {rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
