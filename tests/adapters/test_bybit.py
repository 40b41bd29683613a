"""Bybit v5 native adapter against a local server: the real XRPUSDT order-book frames,
and the real Binance BTCUSDT frames re-encoded as Bybit `orderbook.1` / `publicTrade`."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.bybit.parser import BybitParser
from adapters.bybit.session import BybitAdapter, book_depth_for, topics_for
from adapters.common.errors import SubscriptionRejected
from adapters.common.events import FeedEvent
from adapters.common.stats import VenueStats
from adapters.common.timings import BackoffPolicy, FeedTimings
from config.settings import VenueSettings
from daemon.core.model import Quote, Trade
from daemon.core.routes import Callbacks
from daemon.market.bus import Bus
from tests.helpers.venue_servers import (
    BookTopicState,
    BybitConnectionState,
    BybitServer,
    Fault,
    binance_tape,
    bybit_depth_events_from_binance,
    bybit_events_from_binance,
    bybit_events_from_frames,
    running,
    wait_until,
)

BINANCE_SPOT_FILE = "binance_spot_btcusdt_20240808.gz"
BYBIT_FILE = "bybit_linear_xrpusdt_ob500_20241201.jsonl"

FAST = FeedTimings(silence_timeout_s=5.0, stale_after_s=5.0, open_timeout_s=2.0,
                   ack_timeout_s=2.0,
                   backoff=BackoffPolicy(initial_s=0.01, max_s=0.05, healthy_after_s=0.5))


@pytest.fixture(scope="module")
def btc_events(request: pytest.FixtureRequest) -> list:
    shared_file: Callable[[str], Path] = request.getfixturevalue("shared_file")
    tape, _ = binance_tape(shared_file(BINANCE_SPOT_FILE))
    return bybit_events_from_binance(tape[:8_000])


@pytest.fixture(scope="module")
def depth_events(request: pytest.FixtureRequest) -> list:
    """Real BTCUSDT depth diffs as a Bybit `orderbook.50` topic (one event per 100 ms)."""
    shared_file: Callable[[str], Path] = request.getfixturevalue("shared_file")
    tape, snapshot = binance_tape(shared_file(BINANCE_SPOT_FILE))
    assert snapshot is not None
    return bybit_depth_events_from_binance(tape, snapshot, depth=50)


class Collector:
    def __init__(self, bus: Bus) -> None:
        self.quotes: list[Quote] = []
        self.trades: list[Trade] = []
        self.events: list[FeedEvent] = []
        bus.add_sink(on_quote=self.quotes.append, on_trade=self.trades.append)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]


def make_adapter(server: BybitServer, venue: str = "bybit_spot",
                 symbols: tuple[str, ...] = ("BTC/USDT",), timings: FeedTimings = FAST,
                 **settings: object) -> tuple[BybitAdapter, Bus, Collector]:
    bus = Bus()
    seen = Collector(bus)
    venue_settings = VenueSettings(
        enabled=True, feed="native", ccxt_id="bybit",
        market_type="spot" if venue == "bybit_spot" else "linear", ws_url=server.ws_url,
        rest_url="http://127.0.0.1:1", **settings)
    adapter = BybitAdapter(venue, venue_settings, list(symbols), bus, timings=timings,
                           listeners=[seen.events.append], stats=VenueStats(venue))
    return adapter, bus, seen


def expected_quotes(server: BybitServer, venue: str = "bybit_spot") -> list[Quote]:
    """What the parser makes of the frames one subscription to every topic receives."""
    quotes: list[Quote] = []
    parser = BybitParser(venue, Callbacks(quotes.append, lambda trade: None))
    state = BybitConnectionState("expected")
    for event in server.events:
        state.topics.setdefault(event.topic, BookTopicState(update_id=100))
    for index in range(len(server.events)):
        for frame in server.frames_at(index, state):
            parser.feed(frame, 0)
    return quotes


def test_topics_and_depths() -> None:
    assert topics_for(["BTC/USDT", "XRP/USDT:USDT"], 50) == [
        "orderbook.50.BTCUSDT", "publicTrade.BTCUSDT",
        "orderbook.50.XRPUSDT", "publicTrade.XRPUSDT"]
    assert book_depth_for("bybit_spot", 1) == 1
    assert book_depth_for("bybit_spot", 5) == 50
    assert book_depth_for("bybit_linear", 500) == 500
    assert book_depth_for("bybit_spot", 500) == 1000


async def test_real_bybit_orderbook_500_frames(request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue("shared_file")(BYBIT_FILE)
    lines = path.read_bytes().splitlines()
    direct: list[Quote] = []
    reference = BybitParser("bybit_linear", Callbacks(direct.append, lambda trade: None))
    for line in lines:
        reference.feed(line, 0)
    async with BybitServer(bybit_events_from_frames(lines)) as server:
        adapter, _, seen = make_adapter(server, "bybit_linear", ("XRP/USDT:USDT",),
                                        book_depth=500)
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 10)
            await wait_until(lambda: len(seen.quotes) == len(direct), what="every quote")
    assert [r["args"] for r in server.requests if r["op"] == "subscribe"] == [
        ["orderbook.500.XRPUSDT"], ["publicTrade.XRPUSDT"]]
    assert [(q.bid, q.ask, q.seq) for q in seen.quotes] == [(q.bid, q.ask, q.seq) for q in direct]
    assert adapter.parser.counts["snapshot"] == 1 and adapter.parser.counts["delta"] == 49
    assert adapter.stats.parse_errors == {}


async def test_binance_frames_reencoded_as_bybit_second_venue(btc_events) -> None:
    async with BybitServer(btc_events) as server:
        adapter, _, seen = make_adapter(server)
        expected = expected_quotes(server)
        trades = sum(1 for e in btc_events if e.kind == "trade")
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 20)
            await wait_until(lambda: len(seen.quotes) == len(expected)
                             and len(seen.trades) == trades, what="every quote and trade")
    assert [(q.bid, q.bid_qty, q.ask, q.ask_qty) for q in seen.quotes] == [
        (q.bid, q.bid_qty, q.ask, q.ask_qty) for q in expected]
    assert {q.exchange for q in seen.quotes} == {"bybit_spot"}
    assert seen.trades[0].side in ("buy", "sell")
    assert adapter.stats.parse_errors == {}


async def test_delta_before_snapshot_resubscribes(btc_events) -> None:
    async with BybitServer(btc_events[:3_000], delta_first=True, rate_hz=5_000) as server:
        adapter, _, seen = make_adapter(server)
        async with running(adapter):
            await wait_until(lambda: "resync" in seen.kinds(), what="a resync")
            await wait_until(lambda: len(seen.quotes) > 10, what="quotes after the snapshot")
    resync = next(e for e in seen.events if e.kind == "resync")
    assert resync.details == {"key": "orderbook.1.BTCUSDT", "reason": "delta_before_snapshot"}
    ops = [(r["op"], r["args"]) for r in server.requests if r["op"] != "ping"]
    assert ops == [("subscribe", ["orderbook.1.BTCUSDT"]), ("subscribe", ["publicTrade.BTCUSDT"]),
                   ("unsubscribe", ["orderbook.1.BTCUSDT"]),
                   ("subscribe", ["orderbook.1.BTCUSDT"])]
    assert adapter.stats.resyncs == 1
    assert adapter.stats.parse_errors["delta_before_snapshot"] >= 1
    assert server.connection_count == 1  # resynced without reconnecting


async def test_rejected_subscription_is_a_clear_error_naming_the_topic(btc_events) -> None:
    async with BybitServer(btc_events[:100],
                           reject_topics={"orderbook.1.NOPEUSDT"}) as server:
        adapter, _, seen = make_adapter(server, symbols=("BTC/USDT", "NOPE/USDT"))
        with pytest.raises(SubscriptionRejected) as caught:
            await asyncio.wait_for(adapter.run(), 5)
    assert caught.value.topic == "orderbook.1.NOPEUSDT"
    assert "orderbook.1.NOPEUSDT" in str(caught.value)
    assert "handler not found" in str(caught.value)
    assert server.connection_count == 1  # not retried
    assert "gave_up" in seen.kinds()


@pytest.mark.parametrize("kind", ["close", "drop"])
async def test_reconnect_resubscribes_and_resumes(btc_events, kind: str) -> None:
    async with BybitServer(btc_events[:4_000], faults={1_500: Fault(kind)}) as server:
        adapter, _, seen = make_adapter(server)
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 20)
            await wait_until(lambda: seen.quotes and seen.quotes[-1].ask
                             == float(btc_events[_last_quote(btc_events[:4_000])].payload[2]),
                             what="the last quote")
    assert server.connection_count == 2
    assert server.subscribe_counts["orderbook.1.BTCUSDT"] == 2
    assert adapter.stats.reconnects == 1
    assert adapter.stats.parse_errors == {}  # the new connection starts with a snapshot


async def test_pings_every_interval_and_pongs_keep_a_quiet_connection_alive(btc_events) -> None:
    timings = FeedTimings(silence_timeout_s=0.3, stale_after_s=5.0, backoff=FAST.backoff)
    async with BybitServer(btc_events[:50], faults={10: Fault("stall", seconds=1.0)}) as server:
        adapter, _, seen = make_adapter(server, timings=timings)
        async with running(adapter):
            await asyncio.sleep(1.0)
    assert server.pings >= 4  # every silence_timeout / 2
    assert "silence" not in seen.kinds()
    assert server.connection_count == 1


async def test_stall_flags_stale_and_clears(btc_events) -> None:
    timings = FeedTimings(silence_timeout_s=5.0, stale_after_s=0.2, backoff=FAST.backoff)
    async with BybitServer(btc_events[:2_000],
                           faults={1_000: Fault("stall", seconds=0.6)}) as server:
        adapter, bus, seen = make_adapter(server, timings=timings)
        async with running(adapter):
            await wait_until(lambda: "stale" in seen.kinds(), timeout_s=3, what="stale")
            assert bus.view.quote("bybit_spot", "BTC/USDT").stale
            await wait_until(lambda: "fresh" in seen.kinds(), timeout_s=3, what="fresh")


async def test_malformed_frames_are_dropped_and_counted(btc_events) -> None:
    bad = [
        '{"topic":"orderbook.1.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT","b":[["6',
        "not json at all",
        b"\x00\xff\x80 binary",
        '{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{}}',
        '{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":[{"T":1,"s":"BTCUSDT",'
        '"S":"Buy","v":"-1","p":"abc","i":"x"}]}',
    ]
    async with BybitServer(btc_events[:2_000], faults={1_000: Fault("inject", frames=bad)}
                           ) as server:
        adapter, _, seen = make_adapter(server)
        expected = expected_quotes(server)
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 20)
            await wait_until(lambda: len(seen.quotes) == len(expected), what="every quote")
    assert adapter.stats.parse_errors == {"malformed_json": 2, "binary": 1, "unknown_topic": 1,
                                          "bad_value": 1}
    assert server.connection_count == 1


def _last_quote(events: list) -> int:
    return max(i for i, e in enumerate(events) if e.kind == "quote")


async def test_live_symbol_change_subscribes_and_unsubscribes(btc_events) -> None:
    async with BybitServer(btc_events[:4_000], rate_hz=4_000) as server:
        adapter, _, seen = make_adapter(server, symbols=("ETH/USDT",))
        async with running(adapter):
            await wait_until(lambda: adapter.ws is not None and server.requests, what="open")
            await adapter.set_symbols(["ETH/USDT", "BTC/USDT"])
            await wait_until(lambda: len(seen.quotes) > 10, what="BTC quotes")
            await adapter.set_symbols(["BTC/USDT"])
    ops = [(r["op"], r["args"][0]) for r in server.requests if r["op"] != "ping"]
    assert ops == [("subscribe", "orderbook.1.ETHUSDT"), ("subscribe", "publicTrade.ETHUSDT"),
                   ("subscribe", "orderbook.1.BTCUSDT"), ("subscribe", "publicTrade.BTCUSDT"),
                   ("unsubscribe", "orderbook.1.ETHUSDT"), ("unsubscribe", "publicTrade.ETHUSDT")]
    assert {q.symbol for q in seen.quotes} == {"BTC/USDT"}
    assert "resync" not in seen.kinds()  # the BTC book survived the change


async def test_crossed_delta_at_depth_50_resyncs_to_fresh_tops(depth_events) -> None:
    """Issue 13 item 8: one crossed delta on a depth-50 book used to take the venue dark
    (every later frame dropped as crossed, no resync). Now the book is reset and
    resubscribed at once: fresh tops within a second of feed time, each equal to the
    independent rebuild's top at the same feed time."""
    events = depth_events[:1_200]
    cross_at = 600
    rebuilt: defaultdict[int, set[tuple[float, ...]]] = defaultdict(set)
    for event in events:
        rebuilt[event.ts_ms].add(event.payload.top())
    last_top = events[-1].payload.top()
    async with BybitServer(events, faults={cross_at: Fault("cross")}, rate_hz=2_000) as server:
        adapter, _, seen = make_adapter(server, book_depth=50)
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 20)
            await wait_until(lambda: seen.quotes and _top(seen.quotes[-1]) == last_top,
                             what="the last top of the rebuild")
    assert server.subscribe_counts["orderbook.50.BTCUSDT"] == 2  # one resubscribe
    assert server.connection_count == 1  # resynced without reconnecting
    assert adapter.parser.dropped["crossed"] == 1
    resync = next(e for e in seen.events if e.kind == "resync")
    assert resync.details == {"key": "orderbook.50.BTCUSDT", "reason": "crossed"}
    for quote in seen.quotes:
        assert _top(quote) in rebuilt[quote.exchange_ts_ns // 1_000_000]
    fault_ms = events[cross_at].ts_ms
    assert any(fault_ms <= q.exchange_ts_ns // 1_000_000 <= fault_ms + 1_000
               for q in seen.quotes)


def _top(quote: Quote) -> tuple[float, float, float, float]:
    return quote.bid, quote.bid_qty, quote.ask, quote.ask_qty


async def test_a_venue_resetting_again_and_again_is_reconnected_without_growing_waits(
    btc_events,
) -> None:
    """Issue 13 item 11 against the fake venue: it drops the connection every 400 frames;
    each connection delivered quotes, so every backoff wait chosen stays at the first
    delay (jittered) instead of doubling towards the cap."""
    backoff = BackoffPolicy(initial_s=0.01, max_s=5.0, healthy_after_s=30.0)
    timings = FeedTimings(silence_timeout_s=5.0, stale_after_s=5.0, backoff=backoff)
    resets = {at: Fault("drop") for at in range(400, 3_200, 400)}
    async with BybitServer(btc_events[:3_200], faults=resets) as server:
        adapter, _, _ = make_adapter(server, timings=timings)
        waits: list[float] = []
        sleep = adapter.supervisor._sleep

        async def recorded(delay_s: float) -> None:
            waits.append(delay_s)
            await sleep(delay_s)

        adapter.supervisor._sleep = recorded
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 20)
    assert server.connection_count == len(resets) + 1
    assert len(waits) == len(resets)
    assert all(backoff.initial_s * (1 - backoff.jitter) <= w <= backoff.initial_s
               for w in waits), waits
