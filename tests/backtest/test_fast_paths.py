"""Issue 18: the dispatched backtest's fast paths give exactly what the slow paths give.

Rings fed in bulk (`RingStore.feed_in_bulk`, `_Ring.stage`): with the skip off, a chunk's
rows go to the rings as columns and become visible as the loop reaches them, instead of
one `append` per event. A reader must see, at every read, the very rows and counters the
appends would have left, and a backtest the very decision log.
"""

from __future__ import annotations

from functools import partial
from operator import getitem
from pathlib import Path

import numpy as np
import pytest

from adapters.recordings.replay import ReplaySpec
from config.settings import load_settings
from daemon.backtest.cache import load
from daemon.backtest.engine import Backtest
from daemon.core.model import Quote, Trade
from daemon.market.bus import Bus
from daemon.market.market_view import RingMarketView
from daemon.market.ringbuffer import QuoteRing, RingStore, TradeRing

SPOT = "binance_spot_btcusdt_20240808.gz"
USDM = "binance_usdm_btcusdt_20240808.gz"
#: Rows of the recordings the ring tests take (both files merged by receive time).
ROWS = 40_000


async def recorded_events(paths: list[Path], data_dir: Path) -> list[Quote | Trade]:
    """The first ROWS events of the recordings, in publish order (the real values)."""
    data, _ = await load([ReplaySpec(path) for path in paths], data_dir)
    assert data is not None
    for _, chunk in data.chunks(0, min(ROWS, len(data))):
        return chunk.all_events()
    raise AssertionError("no events")


def ring_state(ring: QuoteRing | TradeRing) -> tuple[object, ...]:
    """Everything a reader can see of a ring, and its counters."""
    held = ring._logical_slice(0, len(ring))
    return (len(ring), ring.total_rows, ring.oldest_ts_ns, ring.newest_ts_ns,
            ring.clamped_rows, ring.max_clamp_ns, ring.malformed_rows,
            [column.tobytes() for column in held])


def staged_columns(events: list[Quote | Trade], kind: type) -> list[np.ndarray]:
    if kind is Quote:
        return [np.array([getattr(e, name) for e in events]) for name in
                ("local_ts_ns", "exchange_ts_ns", "bid", "ask", "bid_qty", "ask_qty")]
    signed = [e.qty if e.side == "buy" else -e.qty if e.side == "sell" else 0.0
              for e in events]
    return [np.array([e.local_ts_ns for e in events]), np.array([e.price for e in events]),
            np.array(signed, dtype=np.float64)]


@pytest.mark.parametrize("capacity", [1_000_000, 3_001])  # never wraps; wraps many times
async def test_staged_rows_read_as_appended_rows_at_every_position(
    shared_file, tmp_path: Path, capacity: int,
) -> None:
    events = await recorded_events([shared_file(SPOT), shared_file(USDM)], tmp_path)
    # One key of each kind; a few receive times moved back (merged connections stamp a
    # few us out of order) so the clamp runs, and one trade with no aggressor side.
    quotes = [e for e in events if type(e) is Quote and e.exchange == "binance_usdm"]
    trades = [e for e in events if type(e) is Trade and e.exchange == "binance_usdm"]
    for at in range(50, len(quotes), 997):
        quotes[at].local_ts_ns -= 7_000
    for at in range(30, len(trades), 499):
        trades[at].local_ts_ns -= 3_000
    trades[11].side = ""
    for kind, rows in ((Quote, quotes), (Trade, trades)):
        ring_class = QuoteRing if kind is Quote else TradeRing
        appended = ring_class("binance_usdm", "BTC/USDT:USDT", capacity)
        staged = ring_class("binance_usdm", "BTC/USDT:USDT", capacity)
        positions = np.arange(len(rows)) * 3 + 5  # replay rows, with other keys between
        position = [-1]
        reached = partial(getitem, position, 0)
        staged.stage(positions[:len(rows) // 2], staged_columns(rows[:len(rows) // 2], kind),
                     reached)
        assert ring_state(staged) == ring_state(appended)  # nothing reached yet
        for index, (row, event) in enumerate(zip(positions.tolist(), rows, strict=True)):
            if index == len(rows) // 2:  # the next chunk: everything before is written
                staged.stage(positions[index:], staged_columns(rows[index:], kind), reached)
            position[0] = row
            appended.append(event)  # type: ignore[arg-type]
            if index % 613 == 0 or index < 5:
                assert ring_state(staged) == ring_state(appended), (kind, index)
                end = event.local_ts_ns
                for seconds in (0.5, 30.0):
                    assert [c.tobytes() for c in staged._rows_between(end - 10**9, end)] == \
                        [c.tobytes() for c in appended._rows_between(end - 10**9, end)]
                    if kind is Quote:
                        assert np.array_equal(staged.volatility(seconds, end),
                                              appended.volatility(seconds, end),
                                              equal_nan=True)
                    else:
                        assert np.array_equal(staged.arrival_rate(seconds, end),
                                              appended.arrival_rate(seconds, end),
                                              equal_nan=True)
        staged.flush_staged()
        assert ring_state(staged) == ring_state(appended)
        assert appended.clamped_rows > 0


def test_a_bulk_key_is_not_appended_through_the_bus_and_its_ring_appears_on_its_first_event(
) -> None:
    rings = RingStore(retention_s=60.0)
    bus = Bus()
    bus.add_sink(rings)
    quote = Quote("binance_usdm", "BTC/USDT:USDT", 100.0, 1.0, 101.0, 2.0, 5, 10)
    rings.feed_in_bulk(frozenset({("binance_usdm", "BTC/USDT:USDT")}))
    bus.refresh_routes()
    position = [-1]
    rings.stage_quotes("binance_usdm", "BTC/USDT:USDT", np.array([0]),
                       staged_columns([quote], Quote), lambda: position[0])
    assert rings.quotes("binance_usdm", "BTC/USDT:USDT") is None  # as before its first quote
    position[0] = 0
    bus.publish_quote(quote)
    ring = rings.quotes("binance_usdm", "BTC/USDT:USDT")
    assert ring is not None and ring.total_rows == 1  # the staged row, not appended twice
    rings.flush_staged()
    assert ring.total_rows == 1 and ring.newest_ts_ns == 10
    other = Quote("bybit", "BTC/USDT:USDT", 100.0, 1.0, 101.0, 2.0, 5, 11)
    bus.publish_quote(other)  # not a bulk key: appended as ever
    assert rings.quotes("bybit", "BTC/USDT:USDT").total_rows == 1  # type: ignore[union-attr]
    rings.stage_quotes("binance_usdm", "ETH/USDT:USDT", np.array([1]),
                       staged_columns([quote], Quote), lambda: position[0])
    with pytest.raises(RuntimeError, match="never published"):
        rings.flush_staged()


async def test_a_dispatched_backtest_with_rings_in_bulk_is_exact(
    shared_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every event dispatched (skip off) over the real recordings, in small chunks: the
    same decision log, byte for byte, and the same ring reads at every strategy read,
    whether the rings take each event's append or the chunk's rows in bulk, and with the
    quiet rows checked in bulk (daemon/core/quiet.py) instead of built one by one."""
    import daemon.backtest.cache as cache_module

    monkeypatch.setattr(cache_module, "CHUNK_ROWS", 20_011, raising=False)
    specs = [ReplaySpec(shared_file(SPOT)), ReplaySpec(shared_file(USDM))]
    variants = ("appended", "staged", "quiet")
    reads: dict[str, list[float]] = {variant: [] for variant in variants}
    volatility, trade_rate = RingMarketView.volatility, RingMarketView.trade_rate
    current = [variants[0]]

    def seen_volatility(self: RingMarketView, *args: object) -> float:
        value = volatility(self, *args)  # type: ignore[arg-type]
        reads[current[0]].append(value)
        return value

    def seen_trade_rate(self: RingMarketView, *args: object) -> float:
        value = trade_rate(self, *args)  # type: ignore[arg-type]
        reads[current[0]].append(value)
        return value

    monkeypatch.setattr(RingMarketView, "volatility", seen_volatility)
    monkeypatch.setattr(RingMarketView, "trade_rate", seen_trade_rate)
    logs: dict[str, bytes] = {}
    orders: dict[str, int] = {}
    ends: dict[str, list[tuple[object, ...]]] = {}
    settings = load_settings({"data_dir": tmp_path / "data"}, env_file=None)
    for variant in variants:
        current[0] = variant
        backtest = Backtest(settings, "inventory-mm", specs, variant, skip=False,
                            quiet=variant == "quiet")
        backtest.stage_rings = variant != "appended"
        result = await backtest.run()
        if variant == "quiet":
            assert result.processed < 5_000 and result.quiet == result.events - result.processed
        else:
            assert result.processed == result.events > 100_000
        orders[variant] = result.orders
        logs[variant] = b"".join(path.read_bytes() for path in result.log_files).replace(
            variant.encode(), b"run")
        # By content: quiet rows create a key's rings where its first quote runs.
        ends[variant] = sorted((ring_state(ring) for ring in backtest.rings._rings()),
                               key=lambda state: state[:4])
    for variant in variants[1:]:
        assert logs[variant] == logs["appended"], variant
        assert orders[variant] == orders["appended"] > 10
        assert ends[variant] == ends["appended"], variant
        assert np.array_equal(reads[variant], reads["appended"], equal_nan=True), variant
    assert len(reads["appended"]) > 100
