"""Backtest memory and throughput as the data grows: 1, 4 and 16 time-shifted copies of a
recording (issue 18, item 2: "peak RSS within 20 % of each other" is the goal).

Run: .venv/bin/python bench/bench_days.py [--copies 1,4,16] [--shift day|span]
         [--retention SECONDS] [--strategy inventory-mm]
Prints figures, never asserts on time. Each copy is the shared spot BTCUSDT recording
(~346 s, 37,797 events) with every receive time shifted (their exchange times are left as
recorded), so the copies follow each other:

- `--shift day` (the default, the must-show's reading): copy k starts k x 24 h after the
  first, each copy standing for one day of data. With the default 24 h retention the
  rings keep at most a day, as they would over real consecutive days;
- `--shift span`: copy k starts right after copy k-1 ends (k x 347 s), so every copy is
  within the default retention and stays in the rings (~48 bytes a quote, ~24 a trade),
  which is growth by design; give a short `--retention` to see the rest.

Each size runs in a child process of its own, given as directories to `--data`, twice:
cold (the event cache built) and warm (read back); the child's peak RSS (`ru_maxrss`) is
printed for each, with the ratio to one copy, and the rings' resident bytes (the rows
written, up to their capacity: a ring's pages are committed as rows are first written).
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

SOURCE = ROOT.parent / "shared" / "data" / "binance_spot_btcusdt_20240808.gz"

CHILD = """
import asyncio, json, resource, sys, time
sys.path.insert(0, {root!r})
from config.settings import load_settings
from daemon.backtest.engine import Backtest
from daemon.core.logs import configure_logging
from daemon.modes.data import data_specs
configure_logging("bench", "warning", "json")
settings = load_settings({{"data_dir": {data_dir!r}, **{overrides!r}}}, env_file=None)
specs = data_specs([{days!r}], "backtest")
started = time.perf_counter()
backtest = Backtest(settings, {strategy!r}, specs, {run_id!r})
result = asyncio.run(backtest.run())
ring_mb = backtest.rings.memory_bytes().used_bytes / 2**20
print(json.dumps({{"events": result.events, "cache": result.cache,
                  "seconds": time.perf_counter() - started, "ring_mb": ring_mb,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


#: How far copy k+1 starts after copy k (see the module docstring).
SHIFTS = ("day", "span")
DAY_NS = 86_400 * 1_000_000_000


def day_copies(directory: Path, copies: int, shift: str = "day") -> Path:
    """`copies` files in `directory`, copy k shifted by k days or k spans of the source."""
    names = [f"binance_spot_btcusdt_day{k:03d}.gz" for k in range(copies)]
    shifted_copies(SOURCE, directory, names, DAY_NS if shift == "day" else None)
    return directory


def run_child(days: Path, data_dir: Path, strategy: str, run_id: str,
              overrides: dict | None = None) -> dict:
    code = CHILD.format(root=str(ROOT), data_dir=str(data_dir), days=str(days),
                        strategy=strategy, run_id=run_id, overrides=overrides or {})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    if done.returncode != 0:
        sys.exit(f"bench_days: the backtest of {days} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", default="1,4,16")
    parser.add_argument("--strategy", default="inventory-mm")
    parser.add_argument("--shift", choices=SHIFTS, default="day",
                        help="copy k starts k days (default) or k recording spans after "
                             "the first")
    parser.add_argument("--retention", type=float, default=None,
                        help="ring-buffer retention in seconds (default: the setting's, 24 h: "
                             "with --shift span every copy stays in the rings)")
    args = parser.parse_args()
    overrides = {"retention": args.retention} if args.retention is not None else {}
    if not SOURCE.is_file():
        sys.exit(f"bench_days: {SOURCE} is absent (../shared/data)")
    sizes = [int(n) for n in args.copies.split(",")]
    print(f"{args.strategy} over N copies of {SOURCE.name}, each a {args.shift} after the "
          "one before; peak RSS of the child; ring retention "
          + (f"{args.retention:g} s" if args.retention is not None else "24 h (default)"))
    print(f"{'copies':>6} {'events':>10} {'cold ev/s':>10} {'cold MB':>8} {'warm ev/s':>10} "
          f"{'warm MB':>8} {'warm MB vs 1':>12} {'rings MB':>8}")
    base_rss = None
    with tempfile.TemporaryDirectory(prefix="bench-days-") as tmp:
        for copies in sizes:
            days = day_copies(Path(tmp) / f"days{copies}", copies, args.shift)
            data_dir = Path(tmp) / f"data{copies}"
            cold = run_child(days, data_dir, args.strategy, f"cold{copies}", overrides)
            warm = run_child(days, data_dir, args.strategy, f"warm{copies}", overrides)
            base_rss = base_rss or warm["rss_mb"]
            print(f"{copies:>6} {warm['events']:>10,} {cold['events'] / cold['seconds']:>10,.0f} "
                  f"{cold['rss_mb']:>8,.0f} {warm['events'] / warm['seconds']:>10,.0f} "
                  f"{warm['rss_mb']:>8,.0f} {warm['rss_mb'] / base_rss:>11.2f}x "
                  f"{warm['ring_mb']:>8,.1f}")
    print(f"({time.strftime('%Y-%m-%d %H:%M:%S')}; goal: warm MB within 1.2x of one copy)")


if __name__ == "__main__":
    main()
