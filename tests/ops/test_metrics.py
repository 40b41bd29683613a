"""/metrics and /healthz: counters move during a replay, health flips on stale feeds and back."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from config.settings import ConfigError, load_settings
from daemon.app import App
from daemon.core.clock import now_ns
from daemon.core.model import Decision, Fill, OrderAck, OrderIntent, OrderType, Quote, Side
from daemon.core.records import MemorySink
from daemon.core.vocabulary import OrderAlert, OrderStatus
from daemon.ops.metrics import (
    LATENCY_BUCKETS_S,
    TradingStats,
    VenueStatsCollector,
    start_operations,
)

HAVE_REPLAY = importlib.util.find_spec("adapters.recordings.replay") is not None


def make_app(mode: str = "watch", feed: str = "live", **overrides: object) -> App:
    settings = load_settings(
        {"metrics": {"port": 0}, "venues": {"binance_spot": {"enabled": True, "stale_after_s": 10},
                                            "bybit_spot": {"enabled": False}},
         "symbols": "BTC/USDT", **overrides},
        env_file=None,
    )
    args = argparse.Namespace(mode=mode, strategy=None, feed=feed, speed=5.0, duration=None)
    return App(settings=settings, args=args, run_id="test")


@contextlib.asynccontextmanager
async def operations(app: App) -> AsyncIterator[int]:
    """Start the app's endpoints, yield the metrics port, always stop them."""
    started = await start_operations(app)
    try:
        assert started.metrics is not None
        yield started.metrics.port
    finally:
        await started.aclose()


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def scrape(port: int) -> dict[str, float]:
    """`name{label="v",...}` -> value for every cryptopipe sample."""
    status, body = await http_get(port, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.startswith("cryptopipe_"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def quote(ts_ns: int, bid: float = 100.0, venue: str = "binance_spot") -> Quote:
    return Quote(venue, "BTC/USDT", bid, 1.0, bid + 0.5, 2.0, ts_ns, ts_ns)


async def test_counters_move_during_a_replay() -> None:
    app = make_app(feed="sample" if HAVE_REPLAY else "live")
    async with operations(app) as port:
        if HAVE_REPLAY:  # the shipped sample, through the real parsers, 5x real time
            feed = asyncio.create_task(app.market_data())
        else:  # the replay adapter is not in this build: quotes straight onto the bus
            async def publish_forever() -> None:
                while True:
                    app.bus.publish_quote(quote(now_ns()))
                    await asyncio.sleep(0.001)

            feed = asyncio.create_task(publish_forever())
        try:
            await asyncio.sleep(0.5)
            first = await scrape(port)
            await asyncio.sleep(0.5)
            second = await scrape(port)
        finally:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
    published = "cryptopipe_bus_published_quotes_total"
    assert 0 < first[published] < second[published]
    assert second['cryptopipe_quote_age_seconds{symbol="BTC/USDT",venue="binance_spot"}'] < 10
    assert second["cryptopipe_healthy"] == 1.0
    assert second["cryptopipe_kill_switch"] == 0.0


async def test_healthz_flips_on_a_stale_feed_and_back() -> None:
    app = make_app()
    async with operations(app) as port:

        async def health() -> tuple[int, dict]:
            status, body = await http_get(port, "/healthz")
            return status, orjson.loads(body)

        app.health.started_ns = now_ns() - 11 * 10**9  # the feed never arrived in 11 s
        status, body = await health()
        assert status == 503
        assert body["status"] == "unhealthy"
        assert "binance_spot BTC/USDT: no quote" in body["reasons"][0]

        app.bus.publish_quote(quote(now_ns()))
        status, body = await health()
        assert (status, body["reasons"]) == (200, [])
        assert body["feeds"]["binance_spot BTC/USDT"]["status"] == "ok"

        app.bus.mark_stale("binance_spot", "BTC/USDT")  # the adapter's watchdog
        status, body = await health()
        assert status == 503
        assert body["reasons"] == ["binance_spot BTC/USDT: flagged stale by the feed watchdog"]

        app.bus.publish_quote(quote(now_ns()))
        assert (await health())[0] == 200

        app.bus.publish_quote(quote(now_ns() - 12 * 10**9))  # older than stale_after_s = 10
        status, body = await health()
        assert status == 503
        assert "last quote 12.0 s old (> 10 s)" in body["reasons"][0]

        app.bus.publish_quote(quote(now_ns()))
        assert (await health())[0] == 200

        app.health.trip_kill_switch("daily loss limit")
        status, body = await health()
        assert status == 503
        assert body["kill_switch"] == "daily loss limit"
        assert (await scrape(port))["cryptopipe_kill_switch"] == 1.0

        app.health.clear_kill_switch()
        assert (await health())[0] == 200


async def test_a_process_fed_over_nats_is_unhealthy_when_a_configured_market_never_comes(
) -> None:
    """A replay requires only the markets it has; a NATS feed may simply never send one."""
    for feed, expected in (("replay:x.gz", 200), ("nats://127.0.0.1:4222", 503)):
        app = make_app(feed=feed)
        async with operations(app) as port:
            app.health.started_ns = now_ns() - 11 * 10**9  # nothing came in 11 s
            status, body = await http_get(port, "/healthz")
            assert status == expected, (feed, body)
            if expected == 503:
                assert "binance_spot BTC/USDT: no quote after 1" in orjson.loads(body)[
                    "reasons"][0]


async def test_healthz_reports_degraded_while_the_arbitrage_is_halted_after_a_failed_unwind(
) -> None:
    """Issue 14: a halted arbitrage was silent. While it waits out its cooldown, /healthz
    says "degraded" (HTTP 200: the daemon itself is fit) with the reason, and
    `cryptopipe_degraded` is 1; once it resumes, "ok" again."""
    from tests.strategies.test_arbitrage import Harness, legs

    h = Harness(unwind_attempts=1, halt_cooldown_s=30.0)
    app = make_app()
    app.health.watch_degraded("strategy arbitrage", h.strategy.degraded)
    async with operations(app) as port:
        app.bus.publish_quote(quote(now_ns()))
        status, body = await http_get(port, "/healthz")
        assert (status, orjson.loads(body)["status"]) == (200, "ok")

        buy, sell = legs(h.books(3.0))
        h.settle(buy, 1.0)
        unwind = h.settle(sell, 0.0, OrderStatus.REJECTED)
        assert h.settle(unwind.intents[0], 0.0).action == "unwind_failed"
        status, body = await http_get(port, "/healthz")
        report = orjson.loads(body)
        assert (status, report["status"], report["reasons"]) == (200, "degraded", [])
        (reason,) = report["degraded"]
        assert reason.startswith("strategy arbitrage: unwind failed: +1 BTC/USDT unhedged")
        assert (await scrape(port))["cryptopipe_degraded"] == 1.0

        app.health.trip_kill_switch("daily loss limit")  # unhealthy outranks degraded
        status, body = await http_get(port, "/healthz")
        assert (status, orjson.loads(body)["status"]) == (503, "unhealthy")
        app.health.clear_kill_switch()

        assert h.strategy.on_timer(h.clock.advance(30.0)).action == "resume"
        status, body = await http_get(port, "/healthz")
        assert (status, orjson.loads(body)["status"], orjson.loads(body)["degraded"]) == \
            (200, "ok", [])
        assert (await scrape(port))["cryptopipe_degraded"] == 0.0


async def test_other_paths_and_methods() -> None:
    app = make_app()
    async with operations(app) as port:
        assert (await http_get(port, "/nope"))[0] == 404
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        response = await reader.read()
        writer.close()
        assert response.startswith(b"HTTP/1.1 405")


async def test_trading_counters_pnl_and_latency() -> None:
    app = make_app()
    sink = MemorySink()
    tee = app.trading.tee(sink)
    app.trading.tick(now_ns())
    intent = OrderIntent("binance_spot", "BTC/USDT", Side.BUY, OrderType.IOC, 0.1, 100.5,
                         "cp-1", "arbitrage", "edge")
    tee.record(Decision("arbitrage", now_ns(), "arbitrage", "edge 3 bps", intents=[intent]))
    tee.record(intent)
    tee.record(OrderAck("cp-1", "binance_spot", "BTC/USDT", OrderStatus.FILLED, now_ns()))
    tee.record(Fill("cp-1", "binance_spot", "BTC/USDT", Side.BUY, 100.5, 0.1, 0.01, "USDT",
                    "taker", now_ns(), strategy="arbitrage"))
    tee.record(Decision("arbitrage", now_ns(), "skip", "edge below threshold"))
    assert len(sink.records) == 5  # everything reached the real sink
    app.bus.publish_quote(quote(now_ns(), bid=110.0))  # mid 110.25
    async with operations(app) as port:
        samples = await scrape(port)
    labels = 'strategy="arbitrage",venue="binance_spot"'
    assert samples['cryptopipe_decisions_total{action="arbitrage",strategy="arbitrage"}'] == 1
    assert samples['cryptopipe_decisions_total{action="skip",strategy="arbitrage"}'] == 1
    assert samples['cryptopipe_orders_submitted_total'
                   '{strategy="arbitrage",type="ioc",venue="binance_spot"}'] == 1
    assert samples['cryptopipe_order_acks_total{status="filled",venue="binance_spot"}'] == 1
    assert samples[f'cryptopipe_fills_total{{liquidity="taker",{labels}}}'] == 1
    book = 'strategy="arbitrage",symbol="BTC/USDT",venue="binance_spot"'
    assert samples[f"cryptopipe_position{{{book}}}"] == pytest.approx(0.1)
    # bought 0.1 at 100.5 paying 0.01 fee, marked at mid 110.25
    assert samples[f"cryptopipe_pnl{{{book}}}"] == pytest.approx(0.1 * (110.25 - 100.5) - 0.01)
    # one latency observation (the first decision after the tick), well under a second
    assert samples["cryptopipe_tick_to_decision_seconds_count"] == 1
    assert samples['cryptopipe_tick_to_decision_seconds_bucket{le="1.0"}'] == 1
    assert len(app.trading.latency_counts) == len(LATENCY_BUCKETS_S) + 1


def test_fees_in_base_and_other_assets() -> None:
    stats = TradingStats()
    stats.record(Fill("a", "bybit_spot", "BTC/USDT", Side.BUY, 100.0, 1.0, 0.001, "BTC",
                      "maker", 0, strategy="mm"))
    stats.record(Fill("b", "bybit_spot", "BTC/USDT", Side.SELL, 101.0, 0.5, 0.02, "BNB",
                      "maker", 0, strategy="mm"))
    position, cash, _ = stats.books[("mm", "bybit_spot", "BTC/USDT")]
    assert position == pytest.approx(1.0 - 0.001 - 0.5)
    assert cash == pytest.approx(-100.0 + 50.5)
    assert stats.other_fees == {"BNB": 0.02}


class FakeVenueStats:
    def __init__(self, **values: object) -> None:
        self.values = values

    def as_dict(self) -> dict[str, object]:
        return self.values


def test_venue_stats_collector_reads_adapter_counters() -> None:
    now = 1_000 * 10**9
    collector = VenueStatsCollector(
        lambda: {"bybit_spot": FakeVenueStats(
            frames=42, reconnects=2, connected=True, last_frame_ns=now - 3 * 10**9,
            parse_errors={"crossed": 1, "bad_json": 4})},
        clock=lambda: now,
    )
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in collector.collect() for s in family.samples}
    venue = (("venue", "bybit_spot"),)
    assert samples[("cryptopipe_venue_frames_total", venue)] == 42
    assert samples[("cryptopipe_venue_reconnects_total", venue)] == 2
    assert samples[("cryptopipe_venue_connected", venue)] == 1
    assert samples[("cryptopipe_venue_staleness_seconds", venue)] == 3
    assert samples[("cryptopipe_venue_parse_errors_total",
                    (("reason", "bad_json"), ("venue", "bybit_spot")))] == 4


async def test_batch_modes_serve_nothing() -> None:
    started = await start_operations(make_app(mode="post-mortem"))
    assert started.metrics is None and started.book_socket is None


async def test_a_taken_port_is_a_config_error_except_for_a_viewer() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start_operations(make_app(mode="action", metrics={"port": port}))
        started = await start_operations(make_app(mode="watch", metrics={"port": port}))
        assert started.metrics is None  # the viewer goes on without metrics
        await started.aclose()
    finally:
        blocker.close()
        await blocker.wait_closed()


def test_replay_latency_counts_from_the_tick_not_the_recorded_receive_time() -> None:
    stats = TradingStats()
    stats.from_receipt = False  # start_operations sets this for a replay
    stats.tick(1_723_161_599_999_000_000)  # a receive time from 2024
    stats.record(Decision("arbitrage", 0, "skip", "no edge"))
    assert sum(stats.latency_counts[:-1]) == 1  # a real figure, not years in +Inf


async def test_decision_log_counters_are_exported(tmp_path: Path) -> None:
    from daemon.core.model import Decision
    from daemon.postmortem.writer import DecisionLogWriter

    app = make_app(mode="action")
    async with operations(app) as port:
        assert not any(k.startswith("cryptopipe_decision_log") for k in await scrape(port))
        writer = DecisionLogWriter(tmp_path, "metrics-test", flush_interval_ms=10)
        await writer.start()
        app.decision_log = writer
        try:
            for i in range(5):
                writer.record(Decision("test", 1_000 + i, "skip", "why"))
            writer.flush()
            samples = await scrape(port)
        finally:
            await writer.aclose()
    assert samples["cryptopipe_decision_log_records_total"] == 5
    assert samples["cryptopipe_decision_log_write_errors_total"] == 0
    assert "cryptopipe_decision_log_queued" in samples


async def test_live_order_alerts_are_counted_by_kind() -> None:
    """Issue 13 item 1: an unknown outcome flagged past its bound, and a cancel the venue
    did not confirm, are on /metrics (they are also acks in the decision log)."""
    app = make_app()
    tee = app.trading.tee(MemorySink())
    for reason in (f"{OrderAlert.UNKNOWN_OUTCOME}: no lookup answered within 30 s",
                   f"{OrderAlert.CANCEL_UNCONFIRMED} within 10 s: may still rest at the venue",
                   f"{OrderAlert.CANCEL_UNCONFIRMED} within 10 s: may still rest at the venue",
                   "post-only order would cross"):
        tee.record(OrderAck("cp-1", "binance_spot", "BTC/USDT", OrderStatus.UNKNOWN,
                            now_ns(), reason=reason))
    async with operations(app) as port:
        samples = await scrape(port)
    alerts = "cryptopipe_order_alerts_total"
    assert samples[f'{alerts}{{kind="unknown_outcome",venue="binance_spot"}}'] == 1
    assert samples[f'{alerts}{{kind="cancel_unconfirmed",venue="binance_spot"}}'] == 2
