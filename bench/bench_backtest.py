"""Backtest throughput: events/s of a strategy over the shared Binance recordings, vs a bare
replay that only parses the same frames.

Run: .venv/bin/python bench/bench_backtest.py [--repeat 3] [--strategy inventory-mm]
Prints figures, never asserts on time. Every measurement reads the same files in the same
process (spot and USD-M BTCUSDT, 2024-08-08, ~125k bookTicker + trade events), best of
`--repeat` runs each:

- bare replay: `ReplayFeed` at max speed with callbacks that only count: decompressing and
  parsing, the floor of any run that parses;
- frames: the backtest with `backtest.cache` off, every frame parsed and run (the old path);
- cold: the cache built (parse, decode to columns, write), then run from the columns;
- warm: the cache read back (the usual rerun);
- warm, no skip: the same with every event run (what the exact skip saves);
- cold / warm, no depth: `execution.walk_depth = false`, the cache without the depth
  books' changes (the baseline of what keeping them costs; issue 14 item 5).

The cache files' sizes on disk follow, with and without depth. `--sample` runs on the
shipped 75 s sample (adapters/recordings/samples) instead of the shared files.

Events/s always counts every event of the files, skipped or not, so the rates compare with
the bare replay's. The decision log of every run is identical (tests/backtest/test_engine.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.recordings.replay import SAMPLE_FILES, ReplayFeed, ReplaySpec
from config.settings import load_settings
from daemon.backtest.engine import Backtest, BacktestResult
from daemon.core.logs import configure_logging
from daemon.core.model import Quote, Trade

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = (SHARED / "binance_spot_btcusdt_20240808.gz", SHARED / "binance_usdm_btcusdt_20240808.gz")


async def bare_replay(specs: list[ReplaySpec]) -> tuple[int, float]:
    counted = [0]

    def count(_event: Quote | Trade) -> None:
        counted[0] += 1

    started = time.perf_counter()
    await ReplayFeed(specs, count, count, speed=None).run()
    return counted[0], time.perf_counter() - started


def backtest(specs: list[ReplaySpec], strategy: str, data_dir: Path, run_id: str, *,
             cache: bool, skip: bool = True, depth: bool = True) -> BacktestResult:
    settings = load_settings({"data_dir": data_dir, "backtest": {"cache": cache},
                              "execution": {"walk_depth": depth}}, env_file=None)
    return asyncio.run(Backtest(settings, strategy, specs, run_id, skip=skip).run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--strategy", default="inventory-mm")
    parser.add_argument("--sample", action="store_true",
                        help="the shipped 75 s sample instead of the shared files")
    args = parser.parse_args()
    files = SAMPLE_FILES if args.sample else FILES
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        print(f"skipped: shared recordings not found ({', '.join(missing)})")
        return
    configure_logging("bench-backtest", "warning", "console")
    specs = [ReplaySpec(path) for path in files]

    bare_best = float("inf")
    bare_events = 0
    best: dict[str, BacktestResult] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for attempt in range(args.repeat):
            bare_events, seconds = asyncio.run(bare_replay(specs))
            bare_best = min(bare_best, seconds)
            runs = {
                "frames (cache off)": backtest(specs, args.strategy, root / f"off-{attempt}",
                                               "bench", cache=False),
                # A fresh data dir each time: the cache is built, then run from.
                "cold (cache built)": backtest(specs, args.strategy, root / f"cold-{attempt}",
                                               "bench", cache=True),
                "warm (cache hit)": backtest(specs, args.strategy, root / "cold-0",
                                             f"warm-{attempt}", cache=True),
                "warm, no skip": backtest(specs, args.strategy, root / "cold-0",
                                          f"noskip-{attempt}", cache=True, skip=False),
                "cold, no depth": backtest(specs, args.strategy, root / f"flat-{attempt}",
                                           "bench", cache=True, depth=False),
                "warm, no depth": backtest(specs, args.strategy, root / "flat-0",
                                           f"warm-{attempt}", cache=True, depth=False),
            }
            for name, result in runs.items():
                if name not in best or result.wall_seconds < best[name].wall_seconds:
                    best[name] = result
        cache_sizes = cache_sizes_of(root)
    bare_rate = bare_events / bare_best
    print(f"events                      {bare_events:,} ({', '.join(p.name for p in files)}), "
          f"strategy {args.strategy}, best of {args.repeat}")
    print(f"bare replay (parse only)    {bare_rate:>11,.0f} events/s  {bare_best:6.3f} s")
    for name, result in best.items():
        if result.events != bare_events:
            print(f"warning: {name} saw {result.events:,} events")
        rate = result.events_per_second
        print(f"{name:<27} {rate:>11,.0f} events/s  {result.wall_seconds:6.3f} s  "
              f"x{rate / bare_rate:5.2f} bare  cache {result.cache:<5}  "
              f"{result.processed:,} run, {result.skipped:,} skipped, "
              f"{result.records:,} log records")
    print_cache_sizes(cache_sizes)


def cache_sizes_of(root: Path) -> dict[str, int]:
    """Bytes on disk of the cache entry in each data dir: events file, depth file."""
    sizes = {}
    for kind, directory in (("with depth", "cold-0"), ("no depth", "flat-0")):
        cache = root / directory / "cache" / "backtest"
        sizes[f"{kind}: events"] = sum(p.stat().st_size for p in cache.glob("*.arrow"))
        sizes[f"{kind}: depth"] = sum(p.stat().st_size for p in cache.glob("*.depth"))
    return sizes


def print_cache_sizes(sizes: dict[str, int]) -> None:
    line = ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items())
    print(f"cache on disk               {line}")


if __name__ == "__main__":
    main()
