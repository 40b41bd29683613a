"""Ring buffer figures: bytes/row, append cost, window latency, kernels, snapshots, RSS.

Run: .venv/bin/python bench/bench_ringbuffer.py [--rows 10000000]
Prints figures, never asserts on time. Quotes and trades for the append benchmark come
from the real Binance USD-M BTCUSDT recording in ../shared/data.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.core.model import Quote, Trade
from daemon.market import kernels
from daemon.market.ringbuffer import QuoteRing, RingStore, TradeRing, warm_up_kernels

RECORDING = Path(__file__).resolve().parents[2] / "shared/data/binance_usdm_btcusdt_20240808.gz"
EXCHANGE, SYMBOL = "binance_usdm", "BTC/USDT:USDT"
NS = 1_000_000_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def load_recording() -> tuple[list[bytes], list[Quote], list[Trade]]:
    """bookTicker frames (raw JSON), and every quote and trade in file (publish) order."""
    frames: list[bytes] = []
    quotes: list[Quote] = []
    trades: list[Trade] = []
    with gzip.open(RECORDING, "rb") as recording:
        for line in recording:
            local_ts, _, frame = line.partition(b" ")
            if b"@bookTicker" in frame[:40]:
                data = orjson.loads(frame)["data"]
                frames.append(frame)
                quotes.append(Quote(EXCHANGE, SYMBOL, float(data["b"]), float(data["B"]),
                                    float(data["a"]), float(data["A"]), data["E"] * 1_000_000,
                                    int(local_ts), data["u"]))
            elif b"@trade" in frame[:40]:
                data = orjson.loads(frame)["data"]
                trades.append(Trade(EXCHANGE, SYMBOL, float(data["p"]), float(data["q"]),
                                    "sell" if data["m"] else "buy", data["E"] * 1_000_000,
                                    int(local_ts), str(data["t"])))
    return frames, quotes, trades


def best_ns_per_row(run, rows: int, repeats: int = 7) -> float:
    best = math.inf
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter_ns()
        run()
        best = min(best, time.perf_counter_ns() - started)
    return best / rows


def percentiles_us(samples_ns: list[int]) -> str:
    p50, p99 = np.percentile(np.array(samples_ns) / 1000, [50, 99])
    return f"p50 {p50:8.2f} us   p99 {p99:8.2f} us"


def bench_append(frames: list[bytes], quotes: list[Quote], trades: list[Trade]) -> None:
    print("\n## append (hot path), real Binance USD-M BTCUSDT quotes")
    # Repeat the session with shifted times so every append goes forward, ~400k quotes.
    laps = max(1, 400_000 // len(quotes))
    span = quotes[-1].local_ts_ns - quotes[0].local_ts_ns + NS
    stream = [
        Quote(q.exchange, q.symbol, q.bid, q.bid_qty, q.ask, q.ask_qty, q.exchange_ts_ns,
              q.local_ts_ns + lap * span, q.seq)
        for lap in range(laps) for q in quotes
    ]
    rows = len(stream)

    def baseline() -> None:
        staged: list[tuple] = []
        append = staged.append
        for q in stream:
            append((q.local_ts_ns, q.exchange_ts_ns, q.bid, q.ask, q.bid_qty, q.ask_qty))

    def ring_append() -> None:
        append = QuoteRing(EXCHANGE, SYMBOL, capacity=1 << 20).append
        for q in stream:
            append(q)

    # A ring that has grown to hold the stream already (at its max capacity here, as a busy
    # venue's ring is after its first retention): appends with no growth and no copy.
    later = [
        Quote(q.exchange, q.symbol, q.bid, q.bid_qty, q.ask, q.ask_qty, q.exchange_ts_ns,
              q.local_ts_ns + laps * span, q.seq)
        for q in stream
    ]
    grown: list[QuoteRing] = []
    for _ in range(7):
        ring = QuoteRing(EXCHANGE, SYMBOL, capacity=rows)
        for q in stream:
            ring.append(q)
        grown.append(ring)

    def grown_ring_append() -> None:
        append = grown.pop().append
        for q in later:
            append(q)

    def store_on_quote() -> None:
        on_quote = RingStore(retention_s=3600, max_rate_hz=300).on_quote
        for q in stream:
            on_quote(q)

    def orjson_loop() -> None:
        loads = orjson.loads
        for frame in frames:
            loads(frame)

    baseline_ns = best_ns_per_row(baseline, rows)
    ring_ns = best_ns_per_row(ring_append, rows)
    grown_ns = best_ns_per_row(grown_ring_append, rows)
    store_ns = best_ns_per_row(store_on_quote, rows)
    orjson_ns = best_ns_per_row(orjson_loop, len(frames))
    print(f"rows per run                           {rows:>10,}")
    print(f"list.append(6-tuple) baseline          {baseline_ns:8.1f} ns/row")
    print(f"QuoteRing.append                       {ring_ns:8.1f} ns/row"
          f"   ({ring_ns / baseline_ns:.2f}x baseline)")
    print(f"QuoteRing.append, grown ring           {grown_ns:8.1f} ns/row"
          f"   ({grown_ns / baseline_ns:.2f}x baseline; the line above includes growing from"
          f" 4,096 rows: copies and fresh pages)")
    print(f"RingStore.on_quote (key lookup + ring) {store_ns:8.1f} ns/row"
          f"   ({store_ns / baseline_ns:.2f}x baseline)")
    print(f"orjson.loads of the bookTicker frame   {orjson_ns:8.1f} ns/frame (for scale)")

    trade_ring = TradeRing(EXCHANGE, SYMBOL, capacity=1 << 20)
    trade_ns = best_ns_per_row(lambda: [trade_ring.append(t) for t in trades], len(trades))
    print(f"TradeRing.append                       {trade_ns:8.1f} ns/row")

    # How out of order are real local receive times? Per ring (one stream each) and across
    # the two streams in file (publish) order.
    quote_replay = QuoteRing(EXCHANGE, SYMBOL, capacity=len(quotes))
    for q in quotes:
        quote_replay.append(q)
    trade_replay = TradeRing(EXCHANGE, SYMBOL, capacity=len(trades))
    for t in trades:
        trade_replay.append(t)
    for name, replay in (("bookTicker", quote_replay), ("trade", trade_replay)):
        print(f"recording, {name} ring: clamped rows {replay.clamped_rows:,} of {len(replay):,}, "
              f"max backwards step {replay.max_clamp_ns / 1000:.1f} us")


def bench_full_ring(rows: int) -> None:
    print(f"\n## a full quote ring of {rows:,} rows (200 rows/s, wrapped once)")
    rss_before = rss_mb()
    ring = QuoteRing(EXCHANGE, SYMBOL, capacity=rows)
    print(f"bytes per row: quotes {ring.bytes_per_row}, trades "
          f"{TradeRing(EXCHANGE, SYMBOL, 1).bytes_per_row}")
    print(f"RSS after creating it (allocated "
          f"{ring.memory_bytes().allocated_bytes / 2**20:,.1f} MB: it grows as rows arrive): "
          f"+{rss_mb() - rss_before:,.1f} MB")
    rng = np.random.default_rng(1)
    start_ns = 1_723_161_255_030_314_667
    step_ns = NS // 200
    chunk = 1_000_000
    written = 0
    total_rows = rows + rows // 5  # wrap: the write index ends at 20 % of the buffer
    mid = 60_000.0
    while written < total_rows:
        count = min(chunk, total_rows - written)
        ts = start_ns + (written + np.arange(count, dtype=np.int64)) * step_ns
        mids = mid * np.exp(np.cumsum(rng.normal(0, 2e-5, count)))
        mid = float(mids[-1])
        ring.extend_columns(ts, ts - 3_000_000, mids - 0.05, mids + 0.05,
                            rng.uniform(0, 5, count), rng.uniform(0, 5, count))
        written += count
    usage = ring.memory_bytes()
    print(f"memory_bytes: allocated {usage.allocated_bytes / 2**20:,.0f} MB, "
          f"used {usage.used_bytes / 2**20:,.0f} MB; RSS now {rss_mb():,.0f} MB")

    newest = ring.newest_ts_ns
    oldest = ring.oldest_ts_ns
    assert newest is not None and oldest is not None
    queries = rng.integers(oldest + 400 * NS, newest, 2000)
    samples = []
    for now_ns in queries:
        started = time.perf_counter_ns()
        window = ring.window(360, now_ns=int(now_ns))
        samples.append(time.perf_counter_ns() - started)
    print(f"window(360 s), random now_ns           {percentiles_us(samples)}   "
          f"({len(window):,} rows)")
    samples = []
    for _ in range(2000):
        started = time.perf_counter_ns()
        window = ring.window(360)
        samples.append(time.perf_counter_ns() - started)
    print(f"window(360 s), newest                  {percentiles_us(samples)}")
    # The one case that copies: the window straddles the wrap point (the 6 min after
    # every lap of the ring); only the window's rows are concatenated.
    wrap_ts = int(ring._local_ts_ns[0])
    samples = []
    for _ in range(200):
        started = time.perf_counter_ns()
        window = ring.window(360, now_ns=wrap_ts + 180 * NS)
        samples.append(time.perf_counter_ns() - started)
    print(f"window(360 s), straddling the wrap     {percentiles_us(samples)}   (copies "
          f"{len(window) * ring.bytes_per_row / 2**20:.1f} MB)")

    bench_kernels("synthetic, every row moves the mid", ring)


def bench_kernels(label: str, ring: QuoteRing) -> None:
    window = ring.window(360)
    print(f"kernels over the last 6 min, {label} ({len(window):,} rows):")
    runs = (
        ("realised_volatility", lambda: kernels.realised_volatility(
            window.local_ts_ns, window.bid, window.ask)),
        ("mean_spread", lambda: kernels.mean_spread(window.bid, window.ask)),
        ("ring.volatility(360) incl. window", lambda: ring.volatility(360)),
    )
    for name, run in runs:
        run()
        samples = []
        for _ in range(200):
            started = time.perf_counter_ns()
            run()
            samples.append(time.perf_counter_ns() - started)
        print(f"  {name:36s} {percentiles_us(samples)}")


async def loop_lag_during_snapshot(store: RingStore, directory: str) -> tuple[list[float], int]:
    """Event-loop tick lag (1 ms ticks, 20 appends each) while a snapshot thread runs."""
    ring = store.quotes(EXCHANGE, SYMBOL)
    assert ring is not None
    newest = ring.newest_ts_ns or 0
    lags: list[float] = []
    appended = 0
    snapshot = asyncio.ensure_future(asyncio.to_thread(store.snapshot, directory))
    while not snapshot.done():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - started) * 1000 - 1.0)
        for _ in range(20):
            appended += 1
            store.on_quote(Quote(EXCHANGE, SYMBOL, 60_000.0, 1.0, 60_000.1, 1.0, 0,
                                 newest + appended))
    await snapshot
    return lags, appended


def bench_snapshot(rows: int) -> None:
    print(f"\n## snapshot of a full {rows:,}-row quote ring (Feather / Arrow IPC, uncompressed)")
    store = RingStore(retention_s=rows / 200, max_rate_hz=200)
    ring = store._add_quote_ring(QuoteRing(EXCHANGE, SYMBOL, rows))
    step = 1_000_000
    start_ns = 1_723_161_255_030_314_667
    for first in range(0, rows + rows // 5, step):
        ts = start_ns + (first + np.arange(step, dtype=np.int64)) * (NS // 200)
        prices = np.full(step, 60_000.0)
        ring.extend_columns(ts, ts, prices, prices + 0.1, prices, prices)
    newest = ring.newest_ts_ns
    del ring
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as directory:
        rss_before = rss_mb()
        report = store.snapshot(directory)
        print(f"write: {report.rows:,} rows, {report.bytes_written / 2**20:,.0f} MB in "
              f"{report.seconds:.2f} s ({report.bytes_written / 2**20 / report.seconds:,.0f} "
              f"MB/s, fsync included); RSS {rss_before:,.0f} -> {rss_mb():,.0f} MB")
        lag_ms, appended = asyncio.run(loop_lag_during_snapshot(store, directory))
        print(f"snapshot in a worker thread (as snapshot_every runs it) while the loop appends: "
              f"loop lag p50 {np.percentile(lag_ms, 50):.2f} ms, p99 "
              f"{np.percentile(lag_ms, 99):.2f} ms, max {max(lag_ms):.2f} ms; "
              f"{appended:,} quotes appended meanwhile")
        del store
        gc.collect()
        rss_before = rss_mb()
        started = time.perf_counter()
        loaded = RingStore.load(directory, retention_s=rows / 200, now_ns=newest,
                                max_rate_hz=200)
        seconds = time.perf_counter() - started
        print(f"read:  {loaded.memory_bytes().rows:,} rows in {seconds:.2f} s; "
              f"RSS {rss_before:,.0f} -> {rss_mb():,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    print(f"# ring buffer benchmark, Python {sys.version.split()[0]}, numpy {np.__version__}")
    frames, quotes, trades = load_recording()
    print(f"kernel warm-up (numba compile or cache load): {warm_up_kernels():.2f} s")
    bench_append(frames, quotes, trades)
    real = QuoteRing(EXCHANGE, SYMBOL, capacity=len(quotes))
    for quote in quotes:
        real.append(quote)
    bench_full_ring(args.rows)
    bench_kernels("real BTCUSDT bookTicker session", real)
    bench_snapshot(args.rows)


if __name__ == "__main__":
    main()
