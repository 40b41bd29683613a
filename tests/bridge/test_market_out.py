"""Bus bridge out, against a real nats-server: every quote and trade of the bus on its
key's subject, a publisher that never makes the feed wait, a stream that keeps them."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from config.settings import NatsSettings, Settings
from daemon.bridge import market_out
from daemon.bridge.codec import decode_quote, decode_trade
from daemon.bridge.connection import connect, flush_all
from daemon.bridge.market_out import MarketPublisher, ensure_market_stream, wants_market_out
from daemon.bridge.process import Bridge
from daemon.core.model import Quote, Trade
from daemon.market.bus import Bus


def quote(i: int, exchange: str = "binance_spot", symbol: str = "BTC/USDT") -> Quote:
    return Quote(exchange, symbol, 60000.0 + i, 1.5, 60000.01 + i, 0.25,
                 1723161254000000000 + i, 1723161254000500000 + i, i)


def trade(i: int, exchange: str = "binance_spot", symbol: str = "BTC/USDT") -> Trade:
    return Trade(exchange, symbol, 60000.0 + i, 0.01, "buy", 1723161254000000000 + i,
                 1723161254000500000 + i, f"t{i}")


async def eventually(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_every_quote_and_trade_of_the_bus_reaches_its_keys_subject(nats_server):
    client = await connect(NatsSettings(url=nats_server.url), name="pub")
    reader = await connect(NatsSettings(url=nats_server.url), name="sub")
    try:
        inbox = await reader.subscribe("md.>")
        await reader.flush()
        bus = Bus()
        publisher = MarketPublisher(client, capacity=1000)
        bus.add_sink(publisher)
        publisher.start()
        sent = [quote(1), trade(2), quote(3, "bybit_linear", "BTC/USDT:USDT"), quote(4)]
        for event in sent:
            (bus.publish_quote if isinstance(event, Quote) else bus.publish_trade)(event)
        received = [await inbox.next_msg(timeout=10) for _ in sent]
        assert [m.subject for m in received] == [
            "md.binance_spot.BTC_USDT.quote", "md.binance_spot.BTC_USDT.trade",
            "md.bybit_linear.BTC_USDT-USDT.quote", "md.binance_spot.BTC_USDT.quote"]
        decoded = [decode_quote(e.exchange, e.symbol, m.data) if isinstance(e, Quote)
                   else decode_trade(e.exchange, e.symbol, m.data)
                   for e, m in zip(sent, received, strict=True)]
        assert decoded == sent
        assert publisher.published == 4 and publisher.dropped == 0
        await publisher.aclose()
    finally:
        await client.close()
        await reader.close()


async def test_the_subject_is_computed_once_per_key_never_per_event(nats_server, monkeypatch):
    calls: list[tuple[str, str, str]] = []
    real = market_out.subject

    def counting(venue: str, symbol: str, kind: str) -> str:
        calls.append((venue, symbol, kind))
        return real(venue, symbol, kind)

    monkeypatch.setattr(market_out, "subject", counting)
    client = await connect(NatsSettings(url=nats_server.url), name="pub")
    try:
        bus = Bus()
        publisher = MarketPublisher(client, capacity=10_000)
        bus.add_sink(publisher)
        publisher.start()
        for i in range(500):
            bus.publish_quote(quote(i))
            bus.publish_quote(quote(i, "bybit_spot"))
            bus.publish_trade(trade(i))
        await eventually(lambda: publisher.published == 1500)
        assert sorted(calls) == [("binance_spot", "BTC/USDT", "quote"),
                                 ("binance_spot", "BTC/USDT", "trade"),
                                 ("bybit_spot", "BTC/USDT", "quote")]
        await publisher.aclose()
    finally:
        await client.close()


async def test_a_full_buffer_drops_and_counts_and_the_feed_never_waits(nats_server):
    client = await connect(NatsSettings(url=nats_server.url), name="pub")
    try:
        bus = Bus()
        publisher = MarketPublisher(client, capacity=10)
        bus.add_sink(publisher)
        publisher.start()
        for i in range(100):  # one burst, no await: the task gets no turn in between
            bus.publish_quote(quote(i))
        assert publisher.dropped_by == {"buffer_full": 90}
        await eventually(lambda: publisher.published == 10)
        await publisher.aclose()
    finally:
        await client.close()


async def test_with_the_server_down_the_publisher_counts_drops_and_recovers(nats_server):
    client = await connect(NatsSettings(url=nats_server.url, reconnect_wait_s=0.1), name="p")
    reader = await connect(NatsSettings(url=nats_server.url, reconnect_wait_s=0.1), name="s")
    try:
        bus = Bus()
        publisher = MarketPublisher(client, capacity=1000)
        bus.add_sink(publisher)
        publisher.start()
        nats_server.stop()
        await eventually(lambda: not client.is_connected)
        i = 0
        # nats-py holds what it can while reconnecting; past its buffer, drops are counted.
        while publisher.dropped_by["server_away"] == 0:
            for _ in range(500):
                i += 1
                bus.publish_quote(quote(i))
            await asyncio.sleep(0)
        assert publisher.dropped > 0
        nats_server.start()
        await eventually(lambda: client.is_connected and reader.is_connected)
        inbox = await reader.subscribe("md.binance_spot.BTC_USDT.quote")
        # The server has the subscription (a bare flush() may overtake the SUB: flush_all).
        await flush_all(reader)
        published_before = publisher.published
        bus.publish_quote(quote(10**6))
        await eventually(lambda: publisher.published > published_before)
        while True:  # what nats-py held during the outage may come first
            message = await inbox.next_msg(timeout=10)
            if decode_quote("binance_spot", "BTC/USDT", message.data) == quote(10**6):
                break
        await publisher.aclose()
    finally:
        await client.close()
        await reader.close()


async def test_the_stream_keeps_market_data_with_the_configured_limits(nats_server):
    settings = NatsSettings(url=nats_server.url, md_max_age_s=3600, md_max_bytes=1 << 20)
    client = await connect(settings, name="pub")
    try:
        assert await ensure_market_stream(client, settings)
        # A second publisher with other limits brings the stream to them.
        assert await ensure_market_stream(client, settings.model_copy(
            update={"md_max_bytes": 2 << 20}))
        bus = Bus()
        publisher = MarketPublisher(client, capacity=100)
        bus.add_sink(publisher)
        publisher.start()
        bus.publish_quote(quote(1))
        bus.publish_trade(trade(2))
        js = client.jetstream()
        await eventually(lambda: publisher.published == 2)
        await client.flush()
        info = await js.stream_info("MD")
        assert info.config.subjects == ["md.>"]
        assert info.config.max_age == 3600 and info.config.max_bytes == 2 << 20
        await eventually_async(lambda: _messages(js), 2)
        kept = await js.get_last_msg("MD", "md.binance_spot.BTC_USDT.quote")
        assert decode_quote("binance_spot", "BTC/USDT", kept.data) == quote(1)
        await publisher.aclose()
    finally:
        await client.close()


async def _messages(js) -> int:
    return (await js.stream_info("MD")).state.messages


async def eventually_async(read, expected: int, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while await read() != expected:
            await asyncio.sleep(0.02)


def _args(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**{"mode": "watch", "feed": "live", "bus_publish": None,
                                 **values})


def test_which_processes_publish_their_bus():
    assert not wants_market_out(_args())
    assert wants_market_out(_args(bus_publish="nats://127.0.0.1:4222"))
    assert wants_market_out(_args(mode="feed"))
    assert not wants_market_out(_args(mode="backtest", bus_publish="nats://127.0.0.1:4222"))
    # Fed from NATS: publishing the same data again would loop.
    assert not wants_market_out(_args(mode="action", feed="nats://127.0.0.1:4222",
                                      bus_publish="nats://127.0.0.1:4222"))


async def test_start_market_out_wires_the_bus_the_bridge_and_its_metrics(nats_server):
    client = await connect(NatsSettings(url=nats_server.url), name="pub")
    bridge = Bridge(client, "pub")
    app = argparse.Namespace(settings=Settings(nats={"url": nats_server.url}),
                             args=_args(bus_publish=nats_server.url), bus=Bus())
    publisher = await market_out.start_market_out(app, bridge)
    assert publisher is not None
    app.bus.publish_quote(quote(1))
    await eventually(lambda: publisher.published == 1)
    figures = {metric.name: metric.read() for metric in bridge.metrics()}
    assert figures == {"reconnects": 0, "md_published": 1, "md_dropped": 0, "md_buffered": 0}
    await bridge.aclose()
    assert client.is_closed
