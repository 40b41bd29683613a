"""Stepping the backtest (what a Gymnasium environment does) vs running it whole: events/s
of `Backtest.run()` and of `open` + `run_until` every `--step-s` seconds of data + `finish`,
on the same files in the same process, and their ratio.

Run: .venv/bin/python bench/bench_stepping.py [--repeat 3] [--strategy inventory-mm]
     [--step-s 1] [--sample]
Prints figures, never asserts on time. Files: spot and USD-M BTCUSDT, 2024-08-08 (~125k
events; `--sample`: the shipped 75 s sample). The cache is built first (not timed); then,
best of `--repeat` each:

- run(): a warm backtest (reads the cache, runs, writes the decision log);
- stepped: the events loaded once (as an environment does, not timed), then one episode
  over all of them, paused every `--step-s` seconds of data;
- both again with `decision_log=False` (the null log of training runs).

Events/s counts every event of the files, skipped or not (as bench_backtest.py does). The
decision logs of run() and of the stepped run are identical (tests/backtest/test_stepping.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.recordings.replay import SAMPLE_FILES, ReplaySpec
from config.settings import Settings, load_settings
from daemon.backtest.cache import BacktestData, load
from daemon.backtest.engine import Backtest
from daemon.core.logs import configure_logging

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = (SHARED / "binance_spot_btcusdt_20240808.gz", SHARED / "binance_usdm_btcusdt_20240808.gz")
#: internalize needs a client flow: a synthetic fill a second.
FLOW = {"internalize": {"symbol": "BTC/USDT", "synthetic_mean_qty": 0.02,
                        "synthetic_rate_hz": 1.0}}


def settings_for(data_dir: Path) -> Settings:
    overrides: dict[str, Any] = {"data_dir": data_dir, "strategies": FLOW}
    return load_settings(overrides, env_file=None)


def plain(settings: Settings, strategy: str, specs: list[ReplaySpec], run_id: str,
          decision_log: bool) -> tuple[int, float]:
    result = asyncio.run(Backtest(settings, strategy, specs, run_id,
                                  decision_log=decision_log).run())
    return result.events, result.wall_seconds


def stepped(settings: Settings, strategy: str, specs: list[ReplaySpec], run_id: str,
            data: BacktestData, step_ns: int, decision_log: bool) -> tuple[int, float, int]:
    started = time.perf_counter()
    engine = Backtest(settings, strategy, specs, run_id, decision_log=decision_log)
    engine.open(data)
    until, steps = int(data.local_ts_ns[0]) + step_ns, 0
    while engine.run_until(until):
        until += step_ns
        steps += 1
    result = engine.finish()
    return result.events, time.perf_counter() - started, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--strategy", default="inventory-mm")
    parser.add_argument("--step-s", type=float, default=1.0)
    parser.add_argument("--sample", action="store_true",
                        help="the shipped 75 s sample instead of the shared files")
    args = parser.parse_args()
    files = SAMPLE_FILES if args.sample else FILES
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        print(f"skipped: shared recordings not found ({', '.join(missing)})")
        return
    configure_logging("bench-stepping", "warning", "console")
    specs = [ReplaySpec(path) for path in files]
    step_ns = int(args.step_s * 1e9)
    best: dict[str, float] = {}
    events: dict[str, int] = {}
    steps = 0
    with tempfile.TemporaryDirectory() as scratch:
        settings = settings_for(Path(scratch))
        asyncio.run(Backtest(settings, args.strategy, specs, "build").run())  # the cache
        started = time.perf_counter()
        data, _ = asyncio.run(load(specs, settings.data_dir,
                                   depth=settings.execution.walk_depth))
        load_s = time.perf_counter() - started
        assert data is not None
        for attempt in range(args.repeat):
            for logged in (True, False):
                suffix = "" if logged else ", no log"
                runs = {f"run(){suffix}": plain(settings, args.strategy, specs,
                                                f"plain-{attempt}-{logged}", logged)}
                count, seconds, steps = stepped(settings, args.strategy, specs,
                                                f"step-{attempt}-{logged}", data, step_ns,
                                                logged)
                runs[f"stepped{suffix}"] = (count, seconds)
                for name, (count, seconds) in runs.items():
                    best[name] = min(best.get(name, float("inf")), seconds)
                    events[name] = count
    print(f"events              {events['run()']:,} ({', '.join(p.name for p in files)}), "
          f"strategy {args.strategy}, best of {args.repeat}; stepped: {steps:,} pauses "
          f"({args.step_s:g} s of data each), events loaded once in {load_s:.3f} s")
    for name, seconds in best.items():
        rate = events[name] / seconds
        base = "run()" if "no log" not in name else "run(), no log"
        ratio = best[base] / seconds
        print(f"{name:<19} {rate:>11,.0f} events/s  {seconds:6.3f} s  "
              f"rate x{ratio:5.2f} that of {base}")


if __name__ == "__main__":
    main()
