"""Ring buffer: wrap-around, windows by bisection, clamping, snapshots, the bus sink API.

Every window test compares against a brute-force model: a plain list of rows with the
same clamp rule, cut to the newest `capacity` rows, filtered by a list comprehension.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from daemon.core.model import Quote, Trade
from daemon.market.ringbuffer import (
    QuoteRing,
    RingStore,
    TradeRing,
    snapshot_every,
)

NS = 1_000_000_000
T0 = 1_723_161_255_030_314_667  # a real local receive time from the Binance recording


def make_quote(local_ts_ns: int, row: int, exchange: str = "binance_usdm",
               symbol: str = "BTC/USDT:USDT") -> Quote:
    bid = 60_000.0 + (row % 97) * 0.1
    return Quote(exchange, symbol, bid, 1.0 + row, bid + 0.1, 2.0 + row,
                 exchange_ts_ns=local_ts_ns - 3_000_000, local_ts_ns=local_ts_ns, seq=row)


def quote_row(quote: Quote) -> tuple:
    return (quote.local_ts_ns, quote.exchange_ts_ns, quote.bid, quote.ask, quote.bid_qty,
            quote.ask_qty)


def window_rows(window) -> list[tuple]:
    columns = [window.local_ts_ns, window.exchange_ts_ns, window.bid, window.ask,
               window.bid_qty, window.ask_qty]
    return [tuple(c[i].item() for c in columns) for i in range(len(window))]


class ListModel:
    """What the ring must hold: every row with ts clamped to the previous, newest `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rows: list[tuple] = []
        self.last_ts = -(2**63)

    def append(self, row: tuple) -> None:
        ts = max(row[0], self.last_ts)
        self.last_ts = ts
        self.rows.append((ts, *row[1:]))
        del self.rows[: -self.capacity]

    def between(self, start_ns: int, end_ns: int) -> list[tuple]:
        return [row for row in self.rows if start_ns <= row[0] <= end_ns]


# --------------------------------------------------------------------------- wrap-around


def test_wrap_around_keeps_exactly_the_newest_rows_in_order() -> None:
    ring = QuoteRing("binance_usdm", "BTC/USDT:USDT", capacity=7)
    quotes = [make_quote(T0 + row * 1000, row) for row in range(23)]
    for quote in quotes:
        ring.append(quote)
    assert len(ring) == 7
    assert ring.total_rows == 23
    assert window_rows(ring.window(math.inf)) == [quote_row(q) for q in quotes[-7:]]
    assert ring.oldest_ts_ns == quotes[-7].local_ts_ns
    assert ring.newest_ts_ns == quotes[-1].local_ts_ns


def test_six_minute_window_across_the_wrap_boundary() -> None:
    # 1 quote a second, a 1000-row ring: after 1200 quotes the write index is at 200, so
    # the last 6 minutes (rows 839..1199) sit at physical [839, 1000) + [0, 200).
    ring = QuoteRing("bybit_linear", "BTC/USDT:USDT", capacity=1000)
    model = ListModel(1000)
    for row in range(1200):
        quote = make_quote(T0 + row * NS, row)
        ring.append(quote)
        model.append(quote_row(quote))
    window = ring.window(360)
    newest = T0 + 1199 * NS
    expected = model.between(newest - 360 * NS, newest)
    assert window_rows(window) == expected
    assert len(window) == 361  # both ends inclusive
    assert not window.bid.flags.writeable
    # With an explicit clock, in the middle of the history: a view, no copy.
    inner = ring.window(360, now_ns=T0 + 700 * NS)
    assert window_rows(inner) == model.between(T0 + 340 * NS, T0 + 700 * NS)
    assert np.shares_memory(inner.bid, ring._columns[2])
    with pytest.raises(ValueError):
        inner.bid[0] = 1.0


def test_since_across_the_wrap_boundary() -> None:
    ring = QuoteRing("binance_spot", "BTC/USDT", capacity=50)
    model = ListModel(50)
    for row in range(130):
        quote = make_quote(T0 + row * 10_000_000, row)
        ring.append(quote)
        model.append(quote_row(quote))
    for since_row in (0, 79, 80, 95, 99, 100, 129, 130, 500):
        since_ns = T0 + since_row * 10_000_000
        assert window_rows(ring.since(since_ns)) == model.between(since_ns, 2**63 - 1)


def test_empty_ring_windows_are_empty() -> None:
    ring = QuoteRing("binance_spot", "BTC/USDT", capacity=5)
    assert len(ring.window(360)) == 0
    assert len(ring.since(0)) == 0
    assert ring.newest_ts_ns is None and ring.oldest_ts_ns is None
    assert math.isnan(ring.volatility(360).sigma_per_sqrt_second)
    with pytest.raises(ValueError):
        ring.window(-1)


# A random history: per row a timestamp step (mostly forward, sometimes equal, sometimes a
# few us backwards as across streams), appended one by one or in bulk chunks.
steps = st.lists(
    st.one_of(st.integers(0, 3 * NS), st.integers(-5_000, 0)), min_size=0, max_size=300
)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 60),
    ts_steps=steps,
    bulk_every=st.integers(0, 40),
    window_ms=st.lists(st.integers(0, 400_000), min_size=1, max_size=5),
    now_offsets=st.lists(st.integers(-200 * NS, 10 * NS), min_size=1, max_size=5),
    data=st.data(),
)
def test_windows_match_a_list_model(
    capacity: int, ts_steps: list[int], bulk_every: int, window_ms: list[int],
    now_offsets: list[int], data: st.DataObject,
) -> None:
    ring = QuoteRing("binance_usdm", "BTC/USDT:USDT", capacity)
    model = ListModel(capacity)
    ts = T0
    pending: list[tuple] = []
    for row, step in enumerate(ts_steps):
        ts += step
        quote = make_quote(ts, row)
        model.append(quote_row(quote))
        if bulk_every and row % bulk_every:
            pending.append(quote_row(quote))
            continue
        if pending:
            ring.extend_columns(*map(np.array, zip(*pending, strict=True)))
            pending = []
        ring.append(quote)
    if pending:
        ring.extend_columns(*map(np.array, zip(*pending, strict=True)))

    assert len(ring) == len(model.rows)
    assert window_rows(ring.window(math.inf)) == model.rows
    newest = model.rows[-1][0] if model.rows else 0
    for milliseconds in window_ms:
        seconds = milliseconds / 1000
        span = round(seconds * NS)
        window = ring.window(seconds)
        assert window_rows(window) == model.between(newest - span, newest)
        for offset in now_offsets:
            now = newest + offset
            assert window_rows(ring.window(seconds, now_ns=now)) == model.between(now - span, now)
    since_ns = data.draw(st.integers(T0 - NS, ts + NS))
    assert window_rows(ring.since(since_ns)) == model.between(since_ns, 2**63 - 1)


# --------------------------------------------------------------------------- writes


def test_backwards_timestamps_are_clamped_and_counted() -> None:
    ring = QuoteRing("binance_usdm", "BTC/USDT:USDT", capacity=10)
    for ts in (T0, T0 + 10_000, T0 + 7_000, T0 + 9_000, T0 + 20_000):
        ring.append(make_quote(ts, 0))
    window = ring.window(math.inf)
    assert window.local_ts_ns.tolist() == [T0, T0 + 10_000, T0 + 10_000, T0 + 10_000, T0 + 20_000]
    # The venue's time is kept as sent.
    assert window.exchange_ts_ns.tolist()[2] == T0 + 7_000 - 3_000_000
    assert ring.clamped_rows == 2
    assert ring.max_clamp_ns == 3_000


def test_non_float_fields_are_coerced_and_garbage_recorded_as_nan() -> None:
    ring = QuoteRing("binance_spot", "BTC/USDT", capacity=4)
    ring.append(Quote("binance_spot", "BTC/USDT", 60_000, 1, 60_001, 2, T0, T0))  # ints
    ring.append(Quote("binance_spot", "BTC/USDT", None, 1.0, 60_001.0, 2.0, T0, T0 + 1))  # type: ignore[arg-type]
    window = ring.window(math.inf)
    assert window.bid[0] == 60_000.0 and window.ask_qty[0] == 2.0
    assert math.isnan(window.bid[1]) and window.ask[1] == 60_001.0
    assert ring.malformed_rows == 1
    assert len(ring) == 2


def test_trade_ring_signs_quantity_by_taker_side() -> None:
    ring = TradeRing("binance_usdm", "BTC/USDT:USDT", capacity=3)
    for row, side in enumerate(("buy", "sell", "buy", "sell", "")):
        ring.append(Trade("binance_usdm", "BTC/USDT:USDT", 60_000.0 + row, 0.5 + row, side,
                          T0 + row, T0 + row * NS))
    window = ring.window(math.inf)
    assert window.signed_qty.tolist() == [2.5, -3.5, 0.0]  # newest 3; unknown side -> 0
    assert window.price.tolist() == [60_002.0, 60_003.0, 60_004.0]


def test_store_routes_by_key_and_reports_memory() -> None:
    store = RingStore(retention_s=100, max_rate_hz=2, max_trade_rate_hz=1)
    assert store.quote_capacity == 200 and store.trade_capacity == 100
    store.on_quote(make_quote(T0, 0, "binance_spot", "BTC/USDT"))
    store.on_quote(make_quote(T0 + 1, 1, "bybit_spot", "BTC/USDT"))
    store.on_quote(make_quote(T0 + 2, 2, "binance_spot", "BTC/USDT"))
    store.on_trade(Trade("bybit_linear", "XRP/USDT:USDT", 0.5, 10.0, "sell", T0, T0))
    assert store.keys() == [("binance_spot", "BTC/USDT"), ("bybit_linear", "XRP/USDT:USDT"),
                            ("bybit_spot", "BTC/USDT")]
    assert len(store.quotes("binance_spot", "BTC/USDT")) == 2
    assert store.quotes("bybit_linear", "XRP/USDT:USDT") is None
    assert len(store.trades("bybit_linear", "XRP/USDT:USDT")) == 1
    ring = store.quotes("binance_spot", "BTC/USDT")
    assert ring.bytes_per_row == 48
    assert store.trades("bybit_linear", "XRP/USDT:USDT").bytes_per_row == 24
    usage = store.memory_bytes()
    assert usage.allocated_bytes == 2 * 200 * 48 + 100 * 24
    assert usage.used_bytes == 3 * 48 + 24
    assert usage.rows == 4


# --------------------------------------------------------------------------- statistics


def test_ring_statistics_use_the_window() -> None:
    ring = QuoteRing("binance_usdm", "BTC/USDT:USDT", capacity=100)
    mids = [100.0, 101.0, 100.5, 102.0]
    for row, mid in enumerate(mids):
        ring.append(Quote("x", "y", mid - 0.5, 1.0, mid + 0.5, 1.0, 0, T0 + row * NS))
    volatility = ring.volatility(10)
    returns = np.diff(np.log(mids))
    assert volatility.return_count == 3
    assert volatility.elapsed_seconds == 3.0
    assert volatility.variance_per_second == pytest.approx(np.sum(returns**2) / 3.0)
    assert volatility.sigma_per_sqrt_second == pytest.approx(math.sqrt(np.sum(returns**2) / 3.0))
    assert volatility.sigma_price_per_sqrt_second == pytest.approx(
        volatility.sigma_per_sqrt_second * 102.0)
    # Only the last two quotes are inside a 1-second window.
    assert ring.volatility(1).return_count == 1
    spread = ring.mean_spread(10)
    assert spread.mean_spread == pytest.approx(1.0)
    assert spread.mean_spread_bps == pytest.approx(np.mean([1e4 / m for m in mids]))
    weighted = ring.mean_spread(10, now_ns=T0 + 4 * NS, time_weighted=True)
    assert weighted.mean_spread_bps == pytest.approx(np.mean([1e4 / m for m in mids]))


def test_trade_arrival_rate_uses_the_observed_part_of_the_window() -> None:
    ring = TradeRing("binance_usdm", "BTC/USDT:USDT", capacity=1000)
    assert math.isnan(ring.arrival_rate(60))
    for row in range(100):  # 10 trades/s for 10 s
        ring.append(Trade("x", "y", 100.0, 1.0, "buy", 0, T0 + row * NS // 10))
    now = T0 + 10 * NS
    # Ring observed from T0: a 60-s window has 10 s of history, not 60.
    assert ring.arrival_rate(60, now_ns=now) == pytest.approx(100 / 10)
    assert ring.arrival_rate(5, now_ns=now) == pytest.approx(50 / 5)  # (T0+5s, T0+10s]: 50 rows
    assert ring.arrival_rate(5, now_ns=now + 100 * NS) == 0.0  # quiet market


def test_arrival_rates_beyond_distance_join_the_prevailing_mid() -> None:
    quotes = QuoteRing("x", "y", capacity=10)
    trades = TradeRing("x", "y", capacity=10)
    quotes.append(Quote("x", "y", 99.0, 1.0, 101.0, 1.0, 0, T0))  # mid 100, before the window
    quotes.append(Quote("x", "y", 109.0, 1.0, 111.0, 1.0, 0, T0 + 5 * NS))  # mid 110
    for offset_s, price, side in ((2, 101.0, "buy"), (3, 98.0, "sell"), (6, 113.0, "buy"),
                                  (7, 110.5, "buy"), (8, 109.0, "sell")):
        trades.append(Trade("x", "y", price, 1.0, side, 0, T0 + offset_s * NS))
    # Window [T0+1s, T0+11s]: the trade at 2 s joins the quote at T0 (mid 100).
    rates = trades.arrival_rates_beyond(10, np.array([0.0, 1.0, 2.0, 3.0]), quotes,
                                        now_ns=T0 + 11 * NS)
    observed = trades.observed_seconds(10, now_ns=T0 + 11 * NS)
    assert observed == 9.0  # the trade ring starts at its first print, T0 + 2 s
    # distances: 1 (buy 101 vs 100), 2 (sell 98 vs 100), 3, 0.5, 1
    assert (rates * observed).tolist() == [5.0, 4.0, 2.0, 1.0]


# --------------------------------------------------------------------------- snapshots


def filled_store(rows: int = 500, retention_s: float = 3600) -> RingStore:
    store = RingStore(retention_s=retention_s, max_rate_hz=0.1, max_trade_rate_hz=0.05)
    for row in range(rows):  # 1 row/s: quote rings (360 rows) and trade rings (180) wrap
        ts = T0 + row * NS
        store.on_quote(make_quote(ts, row, "binance_usdm", "BTC/USDT:USDT"))
        store.on_quote(make_quote(ts + 1, row, "bybit_spot", "BTC/USDT"))
        store.on_trade(Trade("binance_usdm", "BTC/USDT:USDT", 60_000.0 + row, 0.1 * row,
                             "buy" if row % 3 else "sell", ts, ts + 2))
    return store


def all_columns(ring) -> list[list]:
    window = ring.window(math.inf)
    return [getattr(window, name).tolist() for name, _ in ring.COLUMNS]


def test_snapshot_round_trip_preserves_rows_exactly(tmp_path) -> None:
    store = filled_store()
    report = store.snapshot(tmp_path)
    assert report.files == 3
    assert report.rows == 360 + 360 + 180
    assert not list(tmp_path.glob("*.tmp"))
    loaded = RingStore.load(tmp_path, retention_s=3600, now_ns=T0 + 500 * NS,
                            max_rate_hz=0.1, max_trade_rate_hz=0.05)
    keys = store.keys()
    assert loaded.keys() == keys
    for key in keys:
        for kind in ("quotes", "trades"):
            original, reloaded = getattr(store, kind)(*key), getattr(loaded, kind)(*key)
            assert (original is None) == (reloaded is None)
            if original is not None:
                assert all_columns(reloaded) == all_columns(original)
    # The reloaded ring keeps recording after the loaded history.
    ring = loaded.quotes("bybit_spot", "BTC/USDT")
    ring.append(make_quote(T0 + 600 * NS, 600, "bybit_spot", "BTC/USDT"))
    assert ring.newest_ts_ns == T0 + 600 * NS
    assert len(ring) == 360


def test_reload_drops_rows_older_than_the_retention(tmp_path) -> None:
    filled_store().snapshot(tmp_path)
    now = T0 + 600 * NS
    loaded = RingStore.load(tmp_path, retention_s=200, now_ns=now, max_rate_hz=10)
    ring = loaded.quotes("binance_usdm", "BTC/USDT:USDT")
    assert ring.window(math.inf).local_ts_ns.tolist() == [T0 + r * NS for r in range(400, 500)]
    trades = loaded.trades("binance_usdm", "BTC/USDT:USDT")
    assert trades.oldest_ts_ns == T0 + 400 * NS + 2
    # Everything expired: the key's ring exists but is empty.
    expired = RingStore.load(tmp_path, retention_s=10, now_ns=now + 3600 * NS)
    assert len(expired.quotes("binance_usdm", "BTC/USDT:USDT")) == 0


def test_reload_into_a_smaller_ring_keeps_the_newest_rows(tmp_path) -> None:
    filled_store().snapshot(tmp_path)
    loaded = RingStore.load(tmp_path, retention_s=3600, now_ns=T0 + 500 * NS,
                            max_rate_hz=100 / 3600)
    ring = loaded.quotes("binance_usdm", "BTC/USDT:USDT")
    assert ring.window(math.inf).local_ts_ns.tolist() == [T0 + r * NS for r in range(400, 500)]


def test_corrupt_and_truncated_snapshots_are_logged_and_skipped(tmp_path) -> None:
    store = filled_store()
    store.snapshot(tmp_path)
    files = sorted(tmp_path.glob("*.feather"))
    garbage, truncated, intact = (
        next(p for p in files if p.name.startswith("bybit_spot")),
        next(p for p in files if "trades" in p.name),
        next(p for p in files if p.name.startswith("binance_usdm") and "quotes" in p.name),
    )
    garbage.write_bytes(b"\x00garbage\xff" * 100)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.quotes.feather").write_bytes(b"")
    with capture_logs() as logs:
        loaded = RingStore.load(tmp_path, retention_s=3600, now_ns=T0 + 500 * NS,
                                max_rate_hz=0.1, max_trade_rate_hz=0.05)
    skipped = {entry["path"] for entry in logs if entry["event"] == "snapshot_file_skipped"}
    assert skipped == {str(garbage), str(truncated), str(tmp_path / "empty.quotes.feather")}
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "snapshot_file_skipped")
    assert loaded.keys() == [("binance_usdm", "BTC/USDT:USDT")]
    assert all_columns(loaded.quotes("binance_usdm", "BTC/USDT:USDT")) == all_columns(
        store.quotes("binance_usdm", "BTC/USDT:USDT"))
    assert loaded.trades("binance_usdm", "BTC/USDT:USDT") is None
    assert intact.exists()


def test_snapshot_file_with_unsorted_timestamps_is_rejected(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.ipc

    ring = QuoteRing("binance_spot", "BTC/USDT", capacity=4)
    schema = ring._arrow_schema()
    batch = pa.record_batch([np.array([3, 1]), np.array([0, 0]), *[np.ones(2)] * 4], schema=schema)
    with pa.ipc.new_file(str(tmp_path / "bad.quotes.feather"), schema) as writer:
        writer.write_batch(batch)
    with capture_logs() as logs:
        loaded = RingStore.load(tmp_path, now_ns=T0)
    assert loaded.keys() == []
    assert [e["event"] for e in logs] == ["snapshot_file_skipped"]


def test_missing_snapshot_dir_is_logged_not_fatal(tmp_path) -> None:
    with capture_logs() as logs:
        store = RingStore.load(tmp_path / "nothing-here", now_ns=T0)
    assert store.keys() == []
    assert [e["event"] for e in logs] == ["snapshot_dir_missing"]


def test_snapshot_drops_rows_overwritten_while_it_copies() -> None:
    # The snapshot thread copies chunk by chunk; here the writer runs between two chunks
    # (deterministically, the generator is lazy) and laps part of the unread rows.
    ring = QuoteRing("binance_usdm", "BTC/USDT:USDT", capacity=100)
    quotes = [make_quote(T0 + row * NS, row) for row in range(400)]
    for quote in quotes[:250]:
        ring.append(quote)
    chunks = ring._consistent_chunks(chunk_rows=30)
    first = next(chunks)  # rows 150..179
    for quote in quotes[250:290]:  # overwrites rows 150..189
        ring.append(quote)
    rest = list(chunks)
    saved = [tuple(int(v) if i < 2 else float(v) for i, v in enumerate(r))
             for chunk in [first, *rest] for r in zip(*chunk, strict=True)]
    expected = [quote_row(q) for q in quotes[150:180]] + [quote_row(q) for q in quotes[190:250]]
    assert saved == expected


def test_snapshot_while_appending_from_the_event_loop(tmp_path) -> None:
    # 200k-row rings fed 200 rows a millisecond: a wrap takes a second, so even on a loaded
    # machine a snapshot thread that gets the GIL late still finds rows it can keep.
    store = RingStore(retention_s=100, max_rate_hz=2_000)

    async def main() -> None:
        row = 0

        async def feed() -> None:
            nonlocal row
            while True:
                for _ in range(200):
                    store.on_quote(make_quote(T0 + row * 1_000_000, row))
                    row += 1
                await asyncio.sleep(0.001)

        feeder = asyncio.create_task(feed())
        for _ in range(5):
            await asyncio.to_thread(store.snapshot, tmp_path)
        feeder.cancel()

    asyncio.run(main())
    loaded = RingStore.load(tmp_path, retention_s=100, now_ns=T0, max_rate_hz=2_000)
    ts = loaded.quotes("binance_usdm", "BTC/USDT:USDT").window(math.inf).local_ts_ns
    rows = (ts - T0) // 1_000_000
    # Whatever was saved is a run of consecutive rows with their own values.
    assert len(rows) > 0
    assert np.all(np.diff(rows) == 1)
    window = loaded.quotes("binance_usdm", "BTC/USDT:USDT").window(math.inf)
    assert window.bid_qty.tolist() == (1.0 + rows).tolist()


async def test_snapshot_every_writes_until_cancelled(tmp_path) -> None:
    store = filled_store(rows=10)
    sleeps: list[float] = []
    wrote = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            wrote.set()
            await asyncio.Event().wait()  # park until cancelled

    task = asyncio.create_task(snapshot_every(store, tmp_path, 300, sleep=fake_sleep))
    await asyncio.wait_for(wrote.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sleeps == [300, 300, 300]
    assert len(list(tmp_path.glob("*.feather"))) == 3


async def test_snapshot_every_survives_a_failed_snapshot(tmp_path) -> None:
    store = filled_store(rows=10)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    calls = 0
    done = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            done.set()
            await asyncio.Event().wait()

    with capture_logs() as logs:
        task = asyncio.create_task(snapshot_every(store, blocker, 1, sleep=fake_sleep))
        await asyncio.wait_for(done.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [e["event"] for e in logs if e["event"] == "snapshot_failed"] == ["snapshot_failed"] * 2


def _overwrite_column(path, ring, name: str, values: np.ndarray) -> None:
    """Overwrite one column's bytes in place, as a bad disk or a stray writer would: the
    file still parses as Arrow."""
    original = all_columns(ring)[[n for n, _ in ring.COLUMNS].index(name)]
    data = path.read_bytes()
    column_bytes = np.asarray(original, dtype=np.float64).tobytes()
    at = data.find(column_bytes)
    assert at >= 0, "column not found in the file"
    damaged = values.astype(np.float64).tobytes()
    path.write_bytes(data[:at] + damaged + data[at + len(column_bytes):])


def test_a_snapshot_with_overwritten_values_is_skipped_not_loaded(tmp_path) -> None:
    store = filled_store(rows=300)  # no wrap: each column is one batch
    store.snapshot(tmp_path)
    ring = store.quotes("bybit_spot", "BTC/USDT")
    damaged = next(p for p in tmp_path.glob("bybit_spot*.quotes.feather"))
    asks = np.asarray(all_columns(ring)[3])
    _overwrite_column(damaged, ring, "ask", -asks)  # 300 negative asks that still parse
    with capture_logs() as logs:
        loaded = RingStore.load(tmp_path, retention_s=3600, now_ns=T0 + 300 * NS,
                                max_rate_hz=0.1, max_trade_rate_hz=0.05)
    skipped = [e for e in logs if e["event"] == "snapshot_file_skipped"]
    assert [e["path"] for e in skipped] == [str(damaged)]
    assert skipped[0]["log_level"] == "warning"
    assert loaded.quotes("bybit_spot", "BTC/USDT") is None
    assert all_columns(loaded.quotes("binance_usdm", "BTC/USDT:USDT")) == all_columns(
        store.quotes("binance_usdm", "BTC/USDT:USDT"))


@pytest.mark.parametrize("column, value", [("ask", -1.0), ("bid", math.inf),
                                           ("bid_qty", 0.0), ("ask", 59_000.0)])
def test_a_snapshot_without_checksum_is_checked_value_by_value(tmp_path, column, value) -> None:
    # Files written before checksums (format 1) are accepted only when every row is a
    # possible quote: prices finite, bid <= ask, sizes > 0.
    import pyarrow as pa
    import pyarrow.ipc

    ring = QuoteRing("binance_spot", "BTC/USDT", capacity=4)
    schema = ring._arrow_schema().with_metadata(
        {**ring._arrow_schema().metadata, b"cryptopipe.format_version": b"1"})
    names = [name for name, _ in ring.COLUMNS]
    columns = {"local_ts_ns": np.array([1, 2]), "exchange_ts_ns": np.array([0, 0]),
               "bid": np.array([60_000.0, 60_000.0]), "ask": np.array([60_000.1, 60_000.1]),
               "bid_qty": np.ones(2), "ask_qty": np.ones(2)}
    good = tmp_path / "good"
    bad = tmp_path / "bad"
    for directory in (good, bad):
        directory.mkdir()
        if directory is bad:
            columns[column] = columns[column].copy()
            columns[column][1] = value
        batch = pa.record_batch([columns[name] for name in names], schema=schema)
        with pa.ipc.new_file(str(directory / "x.quotes.feather"), schema) as writer:
            writer.write_batch(batch)
    assert RingStore.load(good, now_ns=3, max_rate_hz=0.1).keys() == [("binance_spot", "BTC/USDT")]
    with capture_logs() as logs:
        assert RingStore.load(bad, now_ns=3, max_rate_hz=0.1).keys() == []
    assert [e["event"] for e in logs] == ["snapshot_file_skipped"]


def test_a_snapshot_the_disk_refuses_leaves_no_temp_file_and_keeps_the_last_one(
        tmp_path, monkeypatch) -> None:
    import errno

    import daemon.market.ringbuffer as ringbuffer

    store = filled_store()
    store.snapshot(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(path, directory=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ringbuffer, "_fsync_path", disk_full)
    with pytest.raises(OSError):
        store.snapshot(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert not list(tmp_path.glob("*.tmp"))
