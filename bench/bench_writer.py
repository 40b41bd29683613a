"""Decision log writer: sustained records/s with an fsync every 200 ms, vs bare orjson.dumps.

Run: .venv/bin/python bench/bench_writer.py [--records 1000000] [--dir PATH]
Prints figures, never asserts on time. The records are the inventory-mm mix a live run
logs (a quote decision with two intents, the two intents, acks, a fill now and then),
built once and used by both measurements. The baseline is `orjson.dumps` of the same
objects (dataclasses, natively): the floor for any JSON log, with no envelope, no file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

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


def bare_dumps(records: list[object]) -> float:
    dumps = orjson.dumps
    started = time.perf_counter()
    for record in records:
        dumps(record)
    return time.perf_counter() - started


async def through_writer(records: list[object], directory: Path, yield_every: int
                         ) -> tuple[float, DecisionLogWriter]:
    """Time from the first record() to the last record fsync'd, writer task running."""
    writer = DecisionLogWriter(directory, "bench", flush_interval_ms=200.0)
    await writer.start()
    started = time.perf_counter()
    record = writer.record
    for index, item in enumerate(records):
        record(item)  # type: ignore[arg-type]
        if index % yield_every == 0:
            await asyncio.sleep(0)  # a live loop yields between events; so does this
    await writer.aclose()
    return time.perf_counter() - started, writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temporary directory)")
    parser.add_argument("--yield-every", type=int, default=100)
    args = parser.parse_args()
    configure_logging("bench-writer", "warning", "console")  # alerts to stderr

    records = market_making_records(args.records)
    baseline_s = bare_dumps(records)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        elapsed_s, writer = asyncio.run(through_writer(records, Path(scratch), args.yield_every))
        size = writer.path.stat().st_size if writer.path else 0
    counters = writer.counters()
    baseline_rate = args.records / baseline_s
    rate = args.records / elapsed_s
    print(f"records                       {args.records:,}")
    print(f"bare orjson.dumps             {baseline_rate:,.0f} records/s")
    print(f"decision log (fsync 200 ms)   {rate:,.0f} records/s  (target >= 200,000)")
    print(f"ratio writer / bare dumps     {rate / baseline_rate:.2f}")
    print(f"bytes per record              {size / args.records:.0f}")
    print(f"fsyncs                        {counters['flushes']:,.0f}")
    print(f"max queued records            {counters['max_queued']:,.0f}")
    print(f"back-pressure blocks          {counters['backpressure_blocks']:,.0f} "
          f"({counters['backpressure_blocked_s']:.3f} s blocked)")
    print(f"durable at close              {counters['durable_records']:,.0f}")


if __name__ == "__main__":
    main()
