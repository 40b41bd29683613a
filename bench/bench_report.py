"""Post-mortem report time over a log of 1,000,000 decisions (target < 5 s).

Run: .venv/bin/python bench/bench_report.py [--decisions 1000000] [--dir PATH]
Prints figures, never asserts on time. The log is generated first (synchronous writer, an
inventory-mm day: a quote decision with a mid and inventory every 50 ms, two post-only
intents every 4th decision with acks, a fill now and then, balance snapshots every 10 s),
then the report runs as `--mode post-mortem` does: read with DuckDB; figures while the
fills/decisions CSVs are written alongside; summary CSV and HTML; tables. Wall and CPU
time per phase (CPU includes DuckDB's threads), and the machine's load while measuring.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from daemon.core.logs import configure_logging
from daemon.core.model import (
    BalanceSnapshot,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Side,
)
from daemon.core.vocabulary import OrderStatus
from daemon.postmortem.reader import LogFilter, load_log
from daemon.postmortem.report import compile_report, print_report
from daemon.postmortem.writer import DecisionLogWriter

T0 = 1_723_161_253_000_000_000
STEP_NS = 50_000_000
VENUE, SYMBOL, STRATEGY = "binance_spot", "BTC/USDT", "inventory-mm"


def generate(data_dir: Path, decisions: int) -> tuple[int, int]:
    """Write the log; returns (records, bytes)."""
    records = 0
    inventory, usdt = 0.0, 100_000.0
    with DecisionLogWriter(data_dir, "bench", synchronous=True) as writer:
        for step in range(decisions):
            ts = T0 + step * STEP_NS
            mid = 60_000.0 + 20.0 * ((step // 1_000) % 7) + (step % 13) * 0.5
            inputs = {"venue": VENUE, "symbol": SYMBOL, "mid": mid, "inventory": inventory,
                      "sigma": 0.0004, "reservation_price": mid - 0.3, "spread": 10.0}
            intents = []
            if step % 4 == 0:
                intents = [
                    OrderIntent(VENUE, SYMBOL, Side.BUY, OrderType.POST_ONLY, 0.001, mid - 5,
                                f"mm-{step}-b", STRATEGY, "quote"),
                    OrderIntent(VENUE, SYMBOL, Side.SELL, OrderType.POST_ONLY, 0.001, mid + 5,
                                f"mm-{step}-a", STRATEGY, "quote"),
                ]
            writer.record(Decision(STRATEGY, ts, "quote" if intents else "hold", "requote",
                                   inputs, 0.0, intents))
            records += 1
            for intent in intents:
                writer.record(intent)
                writer.record(OrderAck(intent.client_order_id, VENUE, SYMBOL, OrderStatus.NEW,
                                       ts + 1))
                records += 2
            if step % 40 == 0:
                side = Side.BUY if (step // 40) % 2 == 0 else Side.SELL
                price = mid - 5 if side is Side.BUY else mid + 5
                order_id = f"mm-{step}-{'b' if side is Side.BUY else 'a'}"
                writer.record(Fill(order_id, VENUE, SYMBOL, side, price, 0.001, 0.0, "USDT",
                                   "maker", ts + 2, STRATEGY))
                writer.record(OrderAck(order_id, VENUE, SYMBOL, OrderStatus.FILLED, ts + 2,
                                       filled_qty=0.001))
                inventory += 0.001 * side.sign
                usdt -= price * 0.001 * side.sign
                records += 2
            if step % 200 == 0:
                writer.record(BalanceSnapshot(VENUE, ts, {"BTC": 1.0 + inventory, "USDT": usdt},
                                              STRATEGY))
                records += 1
    assert writer.path is not None
    return records, writer.path.stat().st_size


def cpu_seconds() -> float:
    """CPU time of this process, DuckDB's worker threads included."""
    usage = os.times()
    return usage.user + usage.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    configure_logging("bench-report", "warning", "console")

    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        data_dir = Path(scratch)
        started = time.perf_counter()
        records, size = generate(data_dir, args.decisions)
        print(f"generated {records:,} records ({args.decisions:,} decisions, "
              f"{size / 1e6:,.0f} MB) in {time.perf_counter() - started:.1f} s")

        timings: dict[str, tuple[float, float]] = {}
        began, began_cpu = time.perf_counter(), cpu_seconds()

        def lap(phase: str, since: tuple[float, float]) -> tuple[float, float]:
            now = (time.perf_counter(), cpu_seconds())
            timings[phase] = (now[0] - since[0], now[1] - since[1])
            return now

        mark = (began, began_cpu)
        loaded = load_log(data_dir, LogFilter())
        mark = lap("read (DuckDB, tables)", mark)
        report = compile_report(loaded, data_dir, LogFilter())
        mark = lap("figures + CSV + HTML", mark)
        print_report(report, Console(file=io.StringIO(), width=200))
        mark = lap("tables", mark)
        total = (mark[0] - began, mark[1] - began_cpu)
        html_size = report.exports["html"].stat().st_size
        loaded.db.close()

    print(f"{'phase':<24}{'wall':>8}{'CPU':>8}")
    for phase, (wall, cpu) in timings.items():
        print(f"{phase:<24}{wall:7.2f}s{cpu:7.2f}s")
    print(f"{'report total':<24}{total[0]:7.2f}s{total[1]:7.2f}s  (target < 5 s wall)")
    print(f"load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    summary = report.summaries[0]
    print(f"records read {report.records:,}; decisions {summary.decisions:,}; "
          f"fills {summary.fills:,}; HTML {html_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
