"""Binance native adapter against a local server replaying the shared recordings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.binance.session import BinanceAdapter, combined_stream_url, streams_for
from adapters.common.errors import SubscriptionRejected
from adapters.common.events import FeedEvent
from adapters.common.stats import VenueStats
from adapters.common.timings import BackoffPolicy, FeedTimings
from config.settings import VenueSettings
from daemon.core.model import Quote, Trade
from daemon.market.bus import Bus
from tests.helpers.venue_servers import (
    BinanceServer,
    Fault,
    TapeFrame,
    binance_tape,
    count_streams,
    running,
    wait_until,
)

SPOT_FILE = "binance_spot_btcusdt_20240808.gz"
USDM_FILE = "binance_usdm_btcusdt_20240808.gz"

FAST = FeedTimings(silence_timeout_s=5.0, stale_after_s=5.0, open_timeout_s=2.0,
                   ack_timeout_s=2.0,
                   backoff=BackoffPolicy(initial_s=0.01, max_s=0.05, healthy_after_s=0.5))


@pytest.fixture(scope="module")
def spot_tape(request: pytest.FixtureRequest) -> tuple[list[TapeFrame], bytes | None]:
    shared_file: Callable[[str], Path] = request.getfixturevalue("shared_file")
    return binance_tape(shared_file(SPOT_FILE))


def venue_settings(server: BinanceServer, market: str = "spot", **extra: object) -> VenueSettings:
    return VenueSettings(enabled=True, feed="native",
                         ccxt_id="binance" if market == "spot" else "binanceusdm",
                         market_type="spot" if market == "spot" else "linear",
                         ws_url=server.ws_url, rest_url=server.rest_url, **extra)


class Collector:
    """Everything the adapter published, and every feed event it emitted."""

    def __init__(self, bus: Bus) -> None:
        self.quotes: list[Quote] = []
        self.trades: list[Trade] = []
        self.events: list[FeedEvent] = []
        bus.add_sink(on_quote=self.quotes.append, on_trade=self.trades.append)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]


def make_adapter(server: BinanceServer, timings: FeedTimings = FAST, market: str = "spot",
                 symbols: tuple[str, ...] = ("BTC/USDT",), **settings: object
                 ) -> tuple[BinanceAdapter, Bus, Collector]:
    bus = Bus()
    seen = Collector(bus)
    venue = "binance_spot" if market == "spot" else "binance_usdm"
    adapter = BinanceAdapter(venue, venue_settings(server, market, **settings), list(symbols),
                             bus, timings=timings, listeners=[seen.events.append],
                             stats=VenueStats(venue))
    return adapter, bus, seen


def test_combined_stream_url_derived_from_the_raw_base() -> None:
    streams = streams_for(["BTC/USDT", "ETH/USDT"])
    assert combined_stream_url("wss://stream.binance.com:9443/ws", streams) == (
        "wss://stream.binance.com:9443/stream?streams="
        "btcusdt@bookTicker/btcusdt@trade/ethusdt@bookTicker/ethusdt@trade")
    assert combined_stream_url("ws://127.0.0.1:1234/stream", ["a@trade"]).endswith(
        "/stream?streams=a@trade")
    # USD-M since Binance's 2026 split: bookTicker, trade and depth are public streams.
    assert combined_stream_url("wss://fstream.binance.com/public/ws", ["btcusdt@trade"]) == (
        "wss://fstream.binance.com/public/stream?streams=btcusdt@trade")
    assert streams_for(["BTC/USDT:USDT"], depth=True) == [
        "btcusdt@bookTicker", "btcusdt@trade", "btcusdt@depth@100ms"]


async def test_whole_spot_file_arrives_with_every_quote_and_trade(spot_tape) -> None:
    tape, _ = spot_tape
    expected = count_streams(tape)
    assert expected["bookTicker"] == 28_040 and expected["trade"] == 9_757
    async with BinanceServer(tape) as server:
        adapter, _, seen = make_adapter(server)
        async with running(adapter):
            await wait_until(lambda: len(seen.quotes) == 28_040 and len(seen.trades) == 9_757,
                             timeout_s=60, what="every quote and trade")
            await asyncio.wait_for(server.finished.wait(), 5)
    assert adapter.parser.dropped == {}
    assert seen.quotes[0].exchange == "binance_spot" and seen.quotes[0].symbol == "BTC/USDT"
    # The depth stream was not asked for: only the two subscribed streams came.
    assert server.subscribed_paths == [
        "/stream?streams=btcusdt@bookTicker/btcusdt@trade"]
    assert adapter.stats.frames == 28_040 + 9_757
    assert seen.kinds()[0] == "connect"


async def test_usdm_futures_frames_parse(request: pytest.FixtureRequest) -> None:
    tape, _ = binance_tape(request.getfixturevalue("shared_file")(USDM_FILE))
    tape = tape[:20_000]
    expected = count_streams(tape)
    async with BinanceServer(tape, market="usdm") as server:
        adapter, _, seen = make_adapter(server, market="usdm", symbols=("BTC/USDT:USDT",))
        async with running(adapter):
            await wait_until(lambda: len(seen.quotes) == expected["bookTicker"]
                             and len(seen.trades) == expected["trade"], timeout_s=60,
                             what="USD-M quotes and trades")
    assert {q.symbol for q in seen.quotes} == {"BTC/USDT:USDT"}
    assert all(q.exchange_ts_ns > 0 for q in seen.quotes)  # futures send event times


@pytest.mark.parametrize("kind", ["close", "drop"])
async def test_reconnects_and_resumes_after_the_server_cuts_the_connection(
        spot_tape, kind: str) -> None:
    tape = spot_tape[0][:6_000]
    async with BinanceServer(tape, faults={2_000: Fault(kind), 4_000: Fault(kind)}) as server:
        adapter, _, seen = make_adapter(server)
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 30)
            await wait_until(lambda: seen.quotes and seen.quotes[-1].seq == _last_ticker_id(tape),
                             what="the last quote of the tape")
    assert server.connection_count == 3
    # Each new connection subscribed again (through its URL).
    assert len(set(server.subscribed_paths)) == 1 and len(server.subscribed_paths) == 3
    assert adapter.stats.reconnects == 2 and adapter.stats.disconnects >= 2
    assert seen.kinds().count("connect") == 3
    assert any(e.kind == "disconnect" and e.details["reason"] == "connection_lost"
               for e in seen.events)
    # Quotes after each cut: the stream resumed, in order.
    ids = [q.seq for q in seen.quotes]
    assert ids == sorted(ids)
    assert len(seen.quotes) == count_streams(tape)["bookTicker"]


async def test_disconnect_marks_quotes_stale_until_data_resumes(spot_tape) -> None:
    tape = spot_tape[0][:3_000]
    async with BinanceServer(tape, faults={1_000: Fault("drop")}) as server:
        adapter, bus, seen = make_adapter(server)
        flags: list[bool] = []
        consumer = asyncio.create_task(_strategy_view(bus, flags))
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 30)
            await wait_until(lambda: seen.quotes[-1].seq == _last_ticker_id(tape))
            await asyncio.sleep(0.01)
            consumer.cancel()
    assert True in flags  # the strategy saw the stale flag...
    assert flags[-1] is False  # ...and fresh quotes after it
    assert adapter.stats.stale_events >= 1


async def test_stalled_server_flags_stale_then_clears(spot_tape) -> None:
    tape = spot_tape[0][:2_000]
    timings = FeedTimings(silence_timeout_s=5.0, stale_after_s=0.2,
                          backoff=FAST.backoff)
    async with BinanceServer(tape, faults={1_000: Fault("stall", seconds=0.8)}) as server:
        adapter, bus, seen = make_adapter(server, timings)
        async with running(adapter):
            await wait_until(lambda: "stale" in seen.kinds(), timeout_s=3, what="stale flag")
            stale_event = next(e for e in seen.events if e.kind == "stale")
            assert bus.view.quote("binance_spot", "BTC/USDT").stale
            await wait_until(lambda: "fresh" in seen.kinds(), timeout_s=3, what="fresh again")
            assert not bus.view.quote("binance_spot", "BTC/USDT").stale
    assert stale_event.details["reason"] == "quote_age"
    assert 0.2 <= stale_event.details["age_s"] < 0.5
    assert server.connection_count == 1  # a stall shorter than the silence limit: no reconnect


async def test_silent_connection_is_dropped_and_reconnected(spot_tape) -> None:
    tape = spot_tape[0][:2_000]
    timings = FeedTimings(silence_timeout_s=0.3, stale_after_s=5.0, backoff=FAST.backoff)
    async with BinanceServer(tape, faults={500: Fault("stall", seconds=1.0)}) as server:
        adapter, _, seen = make_adapter(server, timings)
        async with running(adapter):
            await wait_until(lambda: "silence" in seen.kinds(), timeout_s=3, what="silence")
            await wait_until(lambda: server.connection_count >= 2, what="a new connection")
    assert adapter.stats.silences >= 1


MALFORMED: list[bytes | str] = [
    '{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"6',  # truncated
    "this is not JSON",
    '{"stream":"btcusdt@bookTicker","data":{"u":99999999999999,"s":"BTCUSDT","b":"abc",'
    '"B":"1","a":"2","A":"1"}}',
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"61000.0",'
    '"q":"-1.5","T":1,"m":true,"M":true}}',
    '{"stream":"btcusdt@bookTicker","data":{"u":99999999999998,"s":"BTCUSDT",'
    '"b":"62000.0","B":"1","a":"61000.0","A":"1"}}',  # crossed
    b"\x89\xff\x00binary garbage\xfe",
    '{"stream":"btcusdt@kline_1m","data":{"e":"kline"}}',  # a stream we never asked for
]


async def test_malformed_frames_are_dropped_and_counted(spot_tape) -> None:
    tape = spot_tape[0][:3_000]
    async with BinanceServer(tape, faults={1_500: Fault("inject", frames=MALFORMED)}) as server:
        adapter, _, seen = make_adapter(server)
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 30)
            await wait_until(lambda: seen.quotes and seen.quotes[-1].seq == _last_ticker_id(tape))
    dropped = adapter.stats.parse_errors
    assert dropped == {"malformed_json": 2, "bad_value": 2, "crossed": 1, "binary": 1,
                       "unknown_stream": 1}
    assert len(seen.quotes) == count_streams(tape)["bookTicker"]
    assert server.connection_count == 1


async def test_live_subscribe_and_unsubscribe(spot_tape) -> None:
    tape = spot_tape[0][:4_000]
    async with BinanceServer(tape, rate_hz=4_000) as server:
        adapter, _, seen = make_adapter(server, symbols=("ETH/USDT",))
        async with running(adapter):
            await wait_until(lambda: adapter.ws is not None, what="connected")
            await adapter.set_symbols(["ETH/USDT", "BTC/USDT"])
            await wait_until(lambda: len(seen.quotes) > 10, what="BTC quotes after SUBSCRIBE")
            await adapter.set_symbols(["ETH/USDT"])
            count = len(seen.quotes)
            await asyncio.sleep(0.1)
    methods = [r["method"] for r in server.requests]
    assert methods == ["SUBSCRIBE", "UNSUBSCRIBE"]
    assert server.requests[0]["params"] == ["btcusdt@bookTicker", "btcusdt@trade"]
    assert len(seen.quotes) - count < 5  # at most frames in flight after UNSUBSCRIBE
    assert server.subscribed_paths == ["/stream?streams=ethusdt@bookTicker/ethusdt@trade"]


async def test_rejected_live_subscription_names_the_stream(spot_tape) -> None:
    async with BinanceServer(spot_tape[0][:100], reject_streams={"dogeusdt@trade"}) as server:
        adapter, _, _ = make_adapter(server)
        async with running(adapter):
            await wait_until(lambda: adapter.ws is not None, what="connected")
            with pytest.raises(SubscriptionRejected, match="dogeusdt@trade"):
                await adapter.set_symbols(["BTC/USDT", "DOGE/USDT"])


async def test_server_pings_are_answered(spot_tape) -> None:
    async with BinanceServer(spot_tape[0][:10], rate_hz=1) as server:
        adapter, _, _ = make_adapter(server)
        async with running(adapter):
            await wait_until(lambda: server.connections, what="connected")
            latencies = await server.ping_clients(timeout_s=2.0)
    assert len(latencies) == 1 and latencies[0] < 1.0


async def test_proactive_reconnect_before_the_connection_age_limit(spot_tape) -> None:
    tape = spot_tape[0][:3_000]
    timings = FeedTimings(silence_timeout_s=5.0, stale_after_s=5.0,
                          max_connection_age_s=0.3, backoff=FAST.backoff)
    async with BinanceServer(tape, rate_hz=5_000) as server:
        adapter, _, seen = make_adapter(server, timings)
        async with running(adapter):
            await wait_until(lambda: server.connection_count >= 2, what="a rotation")
    disconnects = [e for e in seen.events if e.kind == "disconnect"]
    assert disconnects[0].details["reason"] == "planned"


async def test_server_shutdown_notice_reconnects_at_once(spot_tape) -> None:
    notice = '{"e":"serverShutdown","E":1723161255000}'
    tape = spot_tape[0][:2_000]
    async with BinanceServer(tape, faults={500: Fault("inject", frames=[notice])}) as server:
        adapter, _, seen = make_adapter(server)
        async with running(adapter):
            await wait_until(lambda: server.connection_count >= 2, what="reconnect")
    assert "planned_reconnect" in seen.kinds()


async def test_depth_book_synced_from_rest_snapshot(spot_tape) -> None:
    tape, snapshot = spot_tape
    assert snapshot is not None
    async with BinanceServer(tape[:6_000], snapshot=snapshot, rate_hz=20_000) as server:
        adapter, _, _ = make_adapter(server, book_depth=1000)
        async with running(adapter):
            await wait_until(lambda: adapter.parser.in_sync("BTCUSDT"), timeout_s=10,
                             what="depth book in sync")
            book = adapter.parser.book("BTCUSDT")
            assert book is not None and not book.crossed and len(book) > 100
    assert server.http_requests[0].startswith("/api/v3/depth?symbol=BTCUSDT&limit=1000")
    assert "btcusdt@depth@100ms" in server.subscribed_paths[0]


async def test_repeated_depth_diffs_cost_no_rest_resync(spot_tape) -> None:
    """Issue 13 item 9: every 20th depth diff sent twice (the attack: 56 resyncs in 25 s);
    each repeat is dropped and counted, the book is fetched once and stays in sync."""
    tape, snapshot = spot_tape
    repeated: list[TapeFrame] = []
    depth_seen = 0
    for frame in tape[:6_000]:
        repeated.append(frame)
        if frame.stream.endswith("@depth@100ms"):
            depth_seen += 1
            if depth_seen % 20 == 0:
                repeated.append(frame)
    async with BinanceServer(repeated, snapshot=snapshot, rate_hz=20_000) as server:
        adapter, _, seen = make_adapter(server, book_depth=1000)
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 20)
            await wait_until(lambda: adapter.parser.in_sync("BTCUSDT"), what="book in sync")
    depth_requests = [p for p in server.http_requests if p.startswith("/api/v3/depth")]
    assert len(depth_requests) == 1
    assert "resync" not in seen.kinds()
    assert adapter.parser.dropped["depth_gap"] == 0
    assert adapter.parser.dropped["duplicate_seq"] >= 10


async def _strategy_view(bus: Bus, flags: list[bool]) -> None:
    """A strategy's view: the stale flag of every quote it is handed (conflated)."""
    async for event in bus.subscribe("strategy"):
        if isinstance(event, Quote):
            flags.append(event.stale)


def _last_ticker_id(tape: list[TapeFrame]) -> int:
    import orjson

    last = next(f for f in reversed(tape) if f.stream.endswith("@bookTicker"))
    return orjson.loads(last.raw)["u"]
