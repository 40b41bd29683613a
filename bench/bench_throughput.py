"""Backtest events/s cold and warm, the skip on and off, over a ~10 M-event multi-day
input, with the peak RSS of each size (issue 18, item 2's benchmark; goal: >= 1 M events/s
warm with every event dispatched, memory flat in the days).

Run: .venv/bin/python bench/bench_throughput.py [--days 1,80] [--strategy inventory-mm]
Prints figures, never asserts on time. One "day" is the shared spot and USD-M BTCUSDT
recordings of 2024-08-08 (~125 k events, 346 s); day k is both files with every receive
time shifted by k spans, so the days follow each other (generated in a temporary
directory, never in the repo; 80 days ~ 10 M events, ~0.5 GB of gzip). Each size runs in
child processes of its own (peak RSS: `ru_maxrss`): cold (the event cache built, the skip
and quiet rows on: the default), warm so, warm with the skip alone (the default before
quiet rows), cold and warm with both off (every event built and run through the strategy
path; its own cache directory, so its cold run builds too), and warm with the skip off and
quiet rows on (every event checked by every handler, those that act run). The baseline is
the smallest size in the same run: peak RSS as a ratio to it; events/s also as a ratio to
the 1 M events/s goal, per second of the child's CPU time (a shared machine's other load
slows the wall clock, much less the CPU time), and quiet rows against the runs without.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.days import shifted_copies  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SOURCES = (DATA / "binance_spot_btcusdt_20240808.gz", DATA / "binance_usdm_btcusdt_20240808.gz")
GOAL = 1_000_000
#: (name, skip, quiet rows, cache folder): each cache folder's first run builds it (cold).
RUNS = (("cold", True, True, "on"), ("warm", True, True, "on"),
        ("warm/skip", True, False, "on"), ("cold/all", False, False, "all"),
        ("warm/all", False, False, "all"), ("warm/quiet", False, True, "all"))

CHILD = """
import asyncio, json, resource, sys, time
sys.path.insert(0, {root!r})
from config.settings import load_settings
from daemon.backtest.engine import Backtest
from daemon.core.logs import configure_logging
from daemon.modes.data import data_specs
configure_logging("bench", "warning", "json")
settings = load_settings({{"data_dir": {data_dir!r}}}, env_file=None)
specs = data_specs([{days!r}], "backtest")
started, cpu = time.perf_counter(), time.process_time()
result = asyncio.run(Backtest(settings, {strategy!r}, specs, {run_id!r}, skip={skip!r},
                              quiet={quiet!r}).run())
print(json.dumps({{"events": result.events, "processed": result.processed,
                  "quiet": result.quiet,
                  "cache": result.cache, "seconds": time.perf_counter() - started,
                  "cpu_seconds": time.process_time() - cpu,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make_days(directory: Path, days: int) -> Path:
    names = [f"day{k:03d}" for k in range(days)]
    for source in SOURCES:
        market = source.name.split("_2024")[0]
        shifted_copies(source, directory, [f"{market}_{name}.gz" for name in names])
    return directory


def run_child(days: Path, data_dir: Path, strategy: str, run_id: str, skip: bool,
              quiet: bool) -> dict:
    code = CHILD.format(root=str(ROOT), data_dir=str(data_dir), days=str(days),
                        strategy=strategy, run_id=run_id, skip=skip, quiet=quiet)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    if done.returncode != 0:
        sys.exit(f"bench_throughput: the backtest of {days} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="1,80")
    parser.add_argument("--strategy", default="inventory-mm")
    args = parser.parse_args()
    missing = [str(source) for source in SOURCES if not source.is_file()]
    if missing:
        sys.exit(f"bench_throughput: {', '.join(missing)} absent (../shared/data)")
    sizes = [int(n) for n in args.days.split(",")]
    print(f"{args.strategy} over N shifted days of {SOURCES[0].name} + {SOURCES[1].name}")
    print(f"{'days':>5} {'events':>11} {'run':<11} {'ran':>9} {'quiet':>11} {'seconds':>8} "
          f"{'ev/s':>10} {'vs 1M':>6} {'cpu ev/s':>10} {'peak MB':>8} {'MB vs base':>10}")
    base: dict[str, float] = {}
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        for days in sizes:
            folder = make_days(Path(tmp) / f"days{days}", days)
            for name, skip, quiet, cache in RUNS:
                data_dir = Path(tmp) / f"data{days}-{cache}"
                run = run_child(folder, data_dir, args.strategy,
                                f"{name.replace('/', '-')}{days}", skip, quiet)
                rate = run["events"] / run["seconds"]
                cpu_rate = run["events"] / run["cpu_seconds"]
                base.setdefault(name, run["rss_mb"])
                rates[name] = rate
                print(f"{days:>5} {run['events']:>11,} {name:<11} {run['processed']:>9,} "
                      f"{run['quiet']:>11,} {run['seconds']:>8.1f} {rate:>10,.0f} "
                      f"{rate / GOAL:>5.2f}x {cpu_rate:>10,.0f} "
                      f"{run['rss_mb']:>8,.0f} {run['rss_mb'] / base[name]:>9.2f}x", flush=True)
            print(f"{'':>5} warm/quiet vs warm/all (every event built and run): "
                  f"{rates['warm/quiet'] / rates['warm/all']:.2f}x; warm (skip, quiet) vs "
                  f"warm/skip (skip only): {rates['warm'] / rates['warm/skip']:.2f}x", flush=True)
            for path in folder.iterdir():  # the next size makes its own
                path.unlink()
    print(f"({time.strftime('%Y-%m-%d %H:%M:%S')}; 'ran': events built and run through the "
          "strategy path; 'quiet': events checked in bulk, compiled, and found to change "
          "nothing (daemon/core/quiet.py); '/all': the skip and quiet rows off, every event "
          "built and dispatched; '/quiet': the skip off, every event checked by every handler; "
          "goal >= 1M ev/s warm with every event dispatched; 'cpu ev/s': per second of the "
          "process's own CPU time, steadier on a shared machine)")


if __name__ == "__main__":
    main()
