"""Decision log writer: sustained records/s with an fsync every 200 ms, vs bare orjson.dumps;
then the sweep case, K logs written at once.

Run: .venv/bin/python bench/bench_writer.py [--records 1000000] [--dir PATH]
         [--writers 1 2 4] [--sweep-records 250000] [--no-sweep]
Prints figures, never asserts on time. The records are the inventory-mm mix a live run
logs (a quote decision with two intents, the two intents, acks, a fill now and then),
built once and used by both measurements. The baseline is `orjson.dumps` of the same
objects (dataclasses, natively): the floor for any JSON log, with no envelope, no file.
Compare runs by the ratio to that baseline (measured in the same run): on a shared
machine the absolute rates move with the load, the ratio much less.

1. One live log (the writer task and its thread, fsync every 200 ms): wall records/s from
   the first `record()` to the last record fsync'd, and CPU time per record on the event
   loop (what the strategy pays per record) and in the writer's thread.
2. The sweep case: K logs at once, each written as a backtest writes it (synchronous mode,
   written and fsync'd every `queue_size` records and at close), K = `--writers`:
   - in K processes, as a sweep's worker processes write them (started together);
   - in one process, the K logs fed in turn, one record each (the backtest case).
   Total records/s over all K logs and per log, with bare dumps of the same records in the
   same K processes (or the one) as the baseline, and the peak RSS of a process (its
   records, built before the timing, included).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.core.logs import configure_logging
from daemon.core.model import Decision, Fill, OrderAck, OrderIntent, OrderType, Side
from daemon.core.vocabulary import OrderStatus
from daemon.postmortem.writer import DecisionLogWriter

T0 = 1_723_161_253_000_000_000
VENUE, SYMBOL, STRATEGY = "binance_spot", "BTC/USDT", "inventory-mm"


def market_making_records(count: int) -> list[object]:
    """`count` records in the shape a quoting strategy logs them."""
    records: list[object] = []
    step = 0
    while len(records) < count:
        ts = T0 + step * 50_000_000
        mid = 60_000.0 + (step % 200) * 0.5
        bid = OrderIntent(VENUE, SYMBOL, Side.BUY, OrderType.POST_ONLY, 0.001, mid - 5,
                          f"mm-{2 * step:010d}", STRATEGY, "quote")
        ask = OrderIntent(VENUE, SYMBOL, Side.SELL, OrderType.POST_ONLY, 0.001, mid + 5,
                          f"mm-{2 * step + 1:010d}", STRATEGY, "quote")
        inputs = {"venue": VENUE, "symbol": SYMBOL, "mid": mid, "inventory": 0.002,
                  "sigma": 0.0004, "reservation_price": mid - 0.3, "spread": 10.0,
                  "bid": mid - 5, "ask": mid + 5, "pnl": 1.25}
        records.append(Decision(STRATEGY, ts, "quote", "requote bid; requote ask", inputs,
                                0.0, [bid, ask], [f"mm-{2 * step - 2:010d}"]))
        records.extend((bid, ask))
        records.append(OrderAck(bid.client_order_id, VENUE, SYMBOL, OrderStatus.NEW, ts + 1))
        records.append(OrderAck(ask.client_order_id, VENUE, SYMBOL, OrderStatus.NEW, ts + 1))
        if step % 4 == 0:
            records.append(Fill(bid.client_order_id, VENUE, SYMBOL, Side.BUY, mid - 5, 0.001,
                                0.0, "USDT", "maker", ts + 2, STRATEGY, f"t{step}"))
        step += 1
    return records[:count]


def bare_dumps(records: list[object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of orjson.dumps over the records."""
    dumps = orjson.dumps
    started, cpu = time.perf_counter(), time.thread_time()
    for record in records:
        dumps(record)
    return time.perf_counter() - started, time.thread_time() - cpu


@dataclass
class LiveRun:
    elapsed_s: float
    loop_cpu_s: float  # the event loop's thread: record() and the writer task
    other_cpu_s: float  # every other thread: the writer's (write, fsync)
    writer: DecisionLogWriter


async def through_writer(records: list[object], directory: Path, yield_every: int) -> LiveRun:
    """Time from the first record() to the last record fsync'd, writer task running."""
    writer = DecisionLogWriter(directory, "bench", flush_interval_ms=200.0)
    await writer.start()
    started, loop_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
    record = writer.record
    for index, item in enumerate(records):
        record(item)  # type: ignore[arg-type]
        if index % yield_every == 0:
            await asyncio.sleep(0)  # a live loop yields between events; so does this
    await writer.aclose()
    loop_cpu = time.thread_time() - loop_cpu
    return LiveRun(time.perf_counter() - started, loop_cpu,
                   time.process_time() - process_cpu - loop_cpu, writer)


def live_case(args: argparse.Namespace) -> None:
    records = market_making_records(args.records)
    baseline_s, baseline_cpu_s = bare_dumps(records)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        run = asyncio.run(through_writer(records, Path(scratch), args.yield_every))
        writer = run.writer
        size = writer.path.stat().st_size if writer.path else 0
    counters = writer.counters()
    baseline_rate = args.records / baseline_s
    rate = args.records / run.elapsed_s
    per_record_ns = 1e9 / args.records
    print(f"records                       {args.records:,}")
    print(f"bare orjson.dumps             {baseline_rate:,.0f} records/s "
          f"({baseline_cpu_s * per_record_ns:,.0f} ns CPU per record)")
    print(f"decision log (fsync 200 ms)   {rate:,.0f} records/s  (target >= 200,000)")
    print(f"ratio writer / bare dumps     {rate / baseline_rate:.2f}")
    print(f"CPU per record: event loop    {run.loop_cpu_s * per_record_ns:,.0f} ns "
          f"(record() and the writer task: {run.loop_cpu_s / baseline_cpu_s:.2f} x bare dumps)")
    print(f"CPU per record: writer thread {run.other_cpu_s * per_record_ns:,.0f} ns "
          "(write and fsync)")
    print(f"bytes per record              {size / args.records:.0f}")
    print(f"fsyncs                        {counters['flushes']:,.0f}")
    print(f"max queued records            {counters['max_queued']:,.0f}")
    print(f"back-pressure blocks          {counters['backpressure_blocks']:,.0f} "
          f"({counters['backpressure_blocked_s']:.3f} s blocked)")
    print(f"durable at close              {counters['durable_records']:,.0f}")


# -- the sweep case: K logs at once ------------------------------------------------------


def write_logs(records: list[object], directory: Path, logs: int) -> None:
    """`logs` synchronous logs (as backtests write them), fed one record each in turn."""
    writers = [DecisionLogWriter(directory, f"bench-{os.getpid()}-{index}", synchronous=True)
               for index in range(logs)]
    records_of = [writer.record for writer in writers]
    for item in records:
        for record in records_of:
            record(item)  # type: ignore[arg-type]
    for writer in writers:
        writer.close()


def dumps_times(records: list[object], times: int) -> None:
    dumps = orjson.dumps
    for item in records:
        for _ in range(times):
            dumps(item)


def sweep_worker(count: int, directory: str, logs: int, barrier: Any, results: Any) -> None:
    """One process of the sweep case: bare dumps, then its logs, each started together."""
    records = market_making_records(count)
    spans = []
    for measure in (lambda: dumps_times(records, logs),
                    lambda: write_logs(records, Path(directory), logs)):
        barrier.wait()
        started = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
        measure()
        spans.append((started, time.monotonic()))
    results.put((spans, peak_rss_mb()))


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: ru_maxrss would include the parent's, which a
    spawned process inherits across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sweep_spans(processes: int, logs: int, count: int, directory: Path
                ) -> tuple[float, float, float]:
    """(bare dumps seconds, writing seconds), first start to last end over the processes,
    and the largest peak RSS of a process, MB."""
    context = multiprocessing.get_context("spawn")  # fresh processes, as a sweep's workers
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=sweep_worker,
                               args=(count, str(directory), logs, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    reports = [results.get() for _ in workers]
    spans = [spans for spans, _ in reports]
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a sweep-case worker failed (exit code {worker.exitcode})")
    bare_s, write_s = (
        max(span[phase][1] for span in spans) - min(span[phase][0] for span in spans)
        for phase in (0, 1))
    return bare_s, write_s, max(rss for _, rss in reports)


def sweep_case(args: argparse.Namespace) -> None:
    print()
    print(f"sweep case: K logs at once, {args.sweep_records:,} records each, synchronous "
          "(fsync every 100,000 records and at close, as a backtest writes)")
    print("where          K   total records/s   per log records/s   bare dumps total/s   "
          "ratio   peak RSS of a process")
    for where, layout in (("K processes", lambda k: (k, 1)), ("one process", lambda k: (1, k))):
        for logs in args.writers:
            processes, per_process = layout(logs)
            with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
                bare_s, write_s, rss_mb = sweep_spans(processes, per_process, args.sweep_records,
                                              Path(scratch))
            total = logs * args.sweep_records
            print(f"{where:13s} {logs:2d}   {total / write_s:15,.0f}   "
                  f"{total / write_s / logs:17,.0f}   {total / bare_s:18,.0f}   "
                  f"{bare_s / write_s:5.2f}   {rss_mb:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temporary directory)")
    parser.add_argument("--yield-every", type=int, default=100)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4],
                        help="the sweep case's numbers of logs written at once")
    parser.add_argument("--sweep-records", type=int, default=250_000,
                        help="records per log in the sweep case")
    parser.add_argument("--no-sweep", action="store_true", help="only the live log")
    args = parser.parse_args()
    configure_logging("bench-writer", "warning", "console")  # alerts to stderr
    live_case(args)
    if not args.no_sweep:
        sweep_case(args)


if __name__ == "__main__":
    main()
