"""Bus bridge in, against a real nats-server: `--feed nats://` feeds the local bus as an
adapter does — only the enabled keys, the latest quote of each at once for a late joiner,
stale flags when a key goes silent, bad bodies dropped and counted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from adapters.common.stats import reset_registry, stats_for
from config.settings import NatsSettings, Settings
from daemon.bridge.codec import subject
from daemon.bridge.connection import connect
from daemon.bridge.market_in import NatsMarketFeed
from daemon.bridge.market_out import MarketPublisher, ensure_market_stream
from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import Quote, Trade
from daemon.core.routes import Callbacks
from daemon.market.bus import Bus
from tests.bridge.test_market_out import eventually, quote, trade


@pytest.fixture
async def links(nats_server):
    """A feed process's connection and a strategy process's, closed after the test."""
    out = await connect(NatsSettings(url=nats_server.url), name="feed")
    into = await connect(NatsSettings(url=nats_server.url), name="strategy")
    yield out, into
    await out.close()
    await into.close()


def strategy_settings(url: str, **venues: dict) -> Settings:
    """binance_spot and bybit_spot on BTC/USDT, ETH/USDT (the feed process publishes more)."""
    return Settings(nats={"url": url}, symbols="BTC/USDT,ETH/USDT",
                    venues={"binance_spot": {"enabled": True, "stale_after_s": 2,
                                             **venues.get("binance_spot", {})},
                            "bybit_spot": {"enabled": True, "stale_after_s": 2},
                            "binance_usdm": {"enabled": False},
                            "bybit_linear": {"enabled": False}})


@pytest.fixture(autouse=True)
def _fresh_venue_stats():
    reset_registry()
    yield
    reset_registry()


class FeedProcess:
    """What a feed process does: its bus published on NATS, the stream kept."""

    def __init__(self, client) -> None:
        self.bus = Bus()
        self.publisher = MarketPublisher(client, capacity=10_000)
        self.bus.add_sink(self.publisher)
        self.publisher.start()


class FakeClock:
    def __init__(self) -> None:
        self.now = 10**12

    def __call__(self) -> int:
        return self.now


async def test_a_late_joiner_gets_the_latest_quote_of_every_key_at_once(nats_server, links):
    url = nats_server.url
    out, into = links
    await ensure_market_stream(out, NatsSettings(url=url))
    feed = FeedProcess(out)
    latest = {}
    for i in range(50):
        for venue, symbol in [("binance_spot", "BTC/USDT"), ("binance_spot", "ETH/USDT"),
                              ("bybit_spot", "BTC/USDT"), ("bybit_spot", "SOL/USDT"),
                              ("binance_usdm", "BTC/USDT:USDT")]:
            latest[(venue, symbol)] = quote(i, venue, symbol)
            feed.bus.publish_quote(latest[(venue, symbol)])
        feed.bus.publish_trade(trade(i))
    await eventually(lambda: feed.publisher.published == 300)
    await out.flush()

    bus = Bus()
    seen: list[Quote] = []
    bus.add_sink(on_quote=seen.append)
    nats_feed = NatsMarketFeed(into, strategy_settings(url), bus)
    task = asyncio.create_task(nats_feed.run())
    await eventually(lambda: nats_feed.late_quotes == 3)
    wanted = [("binance_spot", "BTC/USDT"), ("binance_spot", "ETH/USDT"),
              ("bybit_spot", "BTC/USDT")]
    # Exactly the enabled keys' newest quotes, one each, not the history.
    assert sorted(seen, key=lambda q: q.key) == [latest[key] for key in wanted]
    assert bus.view.quote("bybit_spot", "SOL/USDT") is None
    assert bus.view.quote("binance_usdm", "BTC/USDT:USDT") is None

    # Then live: a new quote and trade of an enabled key, nothing of the others.
    trades: list[Trade] = []
    bus.add_sink(on_trade=trades.append)
    feed.bus.publish_quote(quote(99, "bybit_spot", "SOL/USDT"))
    feed.bus.publish_quote(quote(100))
    feed.bus.publish_trade(trade(100))
    await eventually(lambda: len(trades) == 1 and len(seen) == 4)
    assert seen[-1] == quote(100) and trades == [trade(100)]
    assert bus.view.quote("bybit_spot", "SOL/USDT") is None
    assert stats_for("binance_spot").frames == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await feed.publisher.aclose()


async def test_a_silent_key_is_flagged_stale_and_its_next_quote_clears_it(nats_server, links):
    url = nats_server.url
    out, into = links
    feed = FeedProcess(out)
    clock = FakeClock()
    bus = Bus()
    stale_flags: list[tuple[str, str]] = []
    bus.on_stale(lambda venue, symbol: stale_flags.append((venue, symbol)))
    nats_feed = NatsMarketFeed(into, strategy_settings(url), bus, monotonic_ns=clock)
    nats_feed._check_s = 3600  # the test drives the watchdog itself
    task = asyncio.create_task(nats_feed.run())
    await eventually(lambda: nats_feed._subscriptions and len(nats_feed._subscriptions) == 4)
    await asyncio.sleep(0.1)  # past the late join
    feed.bus.publish_quote(quote(1))
    feed.bus.publish_quote(quote(1, "bybit_spot"))
    await eventually(lambda: bus.view.quote("bybit_spot", "BTC/USDT") is not None
                     and bus.view.quote("binance_spot", "BTC/USDT") is not None)

    clock.now += 1 * NS_PER_SECOND  # within stale_after_s (2 s): nothing
    nats_feed.check(clock.now)
    assert not stale_flags
    clock.now += 2 * NS_PER_SECOND  # silent for 3 s
    feed.bus.publish_quote(quote(2, "bybit_spot"))  # bybit speaks again
    await eventually(lambda: bus.view.quote("bybit_spot", "BTC/USDT").seq == 2)
    nats_feed.check(clock.now)
    assert stale_flags == [("binance_spot", "BTC/USDT")]
    assert bus.view.quote("binance_spot", "BTC/USDT").stale
    assert not bus.view.quote("bybit_spot", "BTC/USDT").stale
    assert stats_for("binance_spot").stale_events == 1
    nats_feed.check(clock.now + 1)  # flagged once
    assert len(stale_flags) == 1

    feed.bus.publish_quote(quote(3))  # the feed is back
    await eventually(lambda: not bus.view.quote("binance_spot", "BTC/USDT").stale)
    nats_feed.check(clock.now)
    assert bus.view.quote("binance_spot", "BTC/USDT") == quote(3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await feed.publisher.aclose()


async def test_a_body_that_does_not_decode_is_dropped_and_counted(nats_server, links):
    url = nats_server.url
    out, into = links
    bus = Bus()
    nats_feed = NatsMarketFeed(into, strategy_settings(url), bus)
    task = asyncio.create_task(nats_feed.run())
    await eventually(lambda: len(nats_feed._subscriptions) == 4)
    await asyncio.sleep(0.1)
    await out.publish(subject("binance_spot", "BTC/USDT", "quote"), b"not msgpack \xc1")
    await out.publish(subject("binance_spot", "BTC/USDT", "trade"), b"\x90")
    FeedProcess(out).bus.publish_quote(quote(7))
    await eventually(lambda: bus.view.quote("binance_spot", "BTC/USDT") is not None)
    assert bus.view.quote("binance_spot", "BTC/USDT") == quote(7)
    assert stats_for("binance_spot").parse_errors == {"bad_body": 2}
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_kept_quote_older_than_stale_after_arrives_flagged_stale(nats_server):
    into = await connect(NatsSettings(url=nats_server.url), name="strategy")
    try:
        bus = Bus()
        nats_feed = NatsMarketFeed(into, strategy_settings(nats_server.url), bus)
        key = nats_feed.keys[("binance_spot", "BTC/USDT")]
        from daemon.bridge.codec import encode_quote

        nats_feed._deliver_kept(key, encode_quote(quote(5)),
                                datetime.now(UTC) - timedelta(seconds=30))
        kept = bus.view.quote("binance_spot", "BTC/USDT")
        assert kept is not None and kept.stale and kept.seq == 5
        fresh_key = nats_feed.keys[("bybit_spot", "BTC/USDT")]
        nats_feed._deliver_kept(fresh_key, encode_quote(quote(6, "bybit_spot")),
                                datetime.now(UTC))
        assert bus.view.quote("bybit_spot", "BTC/USDT") == quote(6, "bybit_spot")
    finally:
        await into.close()


async def test_lockstep_callbacks_get_the_events_instead_of_the_bus(nats_server, links):
    url = nats_server.url
    out, into = links
    handed: list[Quote | Trade] = []
    bus = Bus()
    nats_feed = NatsMarketFeed(into, strategy_settings(url), bus,
                               publish=Callbacks(handed.append, handed.append))
    task = asyncio.create_task(nats_feed.run())
    await eventually(lambda: len(nats_feed._subscriptions) == 4)
    await asyncio.sleep(0.1)
    feed = FeedProcess(out)
    feed.bus.publish_quote(quote(1))
    feed.bus.publish_trade(trade(2))
    await eventually(lambda: len(handed) == 2)
    assert sorted(handed, key=lambda e: type(e).__name__) == [quote(1), trade(2)]
    assert bus.view.quote("binance_spot", "BTC/USDT") is None  # the callbacks publish
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await feed.publisher.aclose()


async def test_a_keys_quotes_and_trades_reach_the_bus_in_the_order_they_were_published(
        nats_server, links):
    url = nats_server.url
    out, into = links
    bus = Bus()
    arrived: list[Quote | Trade] = []
    bus.add_sink(on_quote=arrived.append, on_trade=arrived.append)
    nats_feed = NatsMarketFeed(into, strategy_settings(url), bus)
    task = asyncio.create_task(nats_feed.run())
    await eventually(lambda: len(nats_feed._subscriptions) == 4)
    await asyncio.sleep(0.1)
    feed = FeedProcess(out)
    sent: list[Quote | Trade] = []
    for i in range(200):
        sent += [quote(i), trade(i), trade(i + 1000)]
    for event in sent:
        (feed.bus.publish_quote if isinstance(event, Quote) else feed.bus.publish_trade)(
            event)
    await eventually(lambda: len(arrived) == len(sent))
    assert arrived == sent
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await feed.publisher.aclose()
