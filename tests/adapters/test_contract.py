"""The contract every market-data adapter passes, whatever its venue or transport.

`AdapterContract` holds the tests; each subclass only says how to build its adapter and
a local server for it. A new adapter gets a subclass here before it gets a venue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapters.binance.session import BinanceAdapter
from adapters.bybit.session import BybitAdapter
from adapters.ccxt.feed import CcxtFeed
from adapters.common.events import FeedEvent
from adapters.common.stats import VenueStats
from adapters.common.timings import BackoffPolicy, FeedTimings
from config.settings import VenueSettings
from daemon.core.model import Quote, Trade
from daemon.market.bus import Bus
from tests.helpers.venue_servers import (
    BinanceServer,
    BybitServer,
    binance_tape,
    bybit_events_from_binance,
    running,
    wait_until,
)

SPOT_FILE = "binance_spot_btcusdt_20240808.gz"
TIMINGS = FeedTimings(silence_timeout_s=5.0, stale_after_s=5.0, open_timeout_s=2.0,
                      ack_timeout_s=2.0, backoff=BackoffPolicy(initial_s=0.01, max_s=0.05))


@pytest.fixture(scope="module")
def tape(request: pytest.FixtureRequest) -> list:
    return binance_tape(request.getfixturevalue("shared_file")(SPOT_FILE))[0][:6_000]


class AdapterContract:
    """Subclasses set `venue` and implement `server` and `adapter`."""

    venue: str
    symbol = "BTC/USDT"
    #: Frames per second the test server plays the tape at.
    tape_rate_hz = 20_000

    def server(self, tape: list, **options: Any) -> Any:
        raise NotImplementedError

    def adapter(self, server: Any, bus: Bus, listeners: list) -> Any:
        raise NotImplementedError

    def build(self, server: Any) -> tuple[Any, Bus, list[Quote], list[Trade], list[FeedEvent]]:
        bus = Bus()
        quotes: list[Quote] = []
        trades: list[Trade] = []
        events: list[FeedEvent] = []
        bus.add_sink(on_quote=quotes.append, on_trade=trades.append)
        return self.adapter(server, bus, [events.append]), bus, quotes, trades, events

    async def test_publishes_normalised_quotes_and_trades(self, tape) -> None:
        async with self.server(tape, rate_hz=self.tape_rate_hz) as server:
            adapter, _, quotes, trades, _ = self.build(server)
            async with running(adapter):
                await wait_until(lambda: len(quotes) > 50 and len(trades) > 10,
                                 what="quotes and trades")
        for quote in quotes:
            assert (quote.exchange, quote.symbol) == (self.venue, self.symbol)
            assert 0 < quote.bid < quote.ask and quote.bid_qty >= 0 and quote.ask_qty >= 0
            assert quote.local_ts_ns > 0 and not quote.stale
        assert {(t.exchange, t.symbol) for t in trades} == {(self.venue, self.symbol)}
        assert {t.side for t in trades} <= {"buy", "sell"} and all(t.qty > 0 for t in trades)
        assert adapter.stats.frames > 0 and adapter.stats.connects == 1

    async def test_cancel_stops_it_cleanly(self, tape) -> None:
        async with self.server(tape, rate_hz=5_000) as server:
            adapter, _, quotes, _, _ = self.build(server)
            task = asyncio.create_task(adapter.run())
            await wait_until(lambda: len(quotes) > 5, what="first quotes")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            leftovers = [t for t in asyncio.all_tasks()
                         if self.venue in t.get_name() and not t.done()]
            assert leftovers == []
            assert not adapter.stats.connected

    async def test_survives_a_dropped_connection_and_flags_the_gap(self, tape) -> None:
        async with self.server(tape, rate_hz=5_000) as server:
            adapter, bus, quotes, _, events = self.build(server)
            async with running(adapter):
                await wait_until(lambda: len(quotes) > 20, what="first quotes")
                server.drop_connections()
                await wait_until(lambda: any(e.kind == "stale" for e in events),
                                 what="the stale flag on disconnect")
                count = len(quotes)
                await wait_until(lambda: len(quotes) > count + 20, what="quotes again")
                assert not bus.view.quote(self.venue, self.symbol).stale
        assert adapter.stats.reconnects >= 1


class TestBinanceNative(AdapterContract):
    venue = "binance_spot"

    def server(self, tape: list, **options: Any) -> BinanceServer:
        return BinanceServer(tape, **options)

    def adapter(self, server: BinanceServer, bus: Bus, listeners: list) -> BinanceAdapter:
        settings = VenueSettings(enabled=True, feed="native", ws_url=server.ws_url,
                                 rest_url=server.rest_url)
        return BinanceAdapter(self.venue, settings, [self.symbol], bus, timings=TIMINGS,
                              listeners=listeners, stats=VenueStats(self.venue))


class TestBybitNative(AdapterContract):
    venue = "bybit_spot"

    def server(self, tape: list, **options: Any) -> BybitServer:
        return BybitServer(bybit_events_from_binance(tape), **options)

    def adapter(self, server: BybitServer, bus: Bus, listeners: list) -> BybitAdapter:
        settings = VenueSettings(enabled=True, feed="native", ws_url=server.ws_url)
        return BybitAdapter(self.venue, settings, [self.symbol], bus, timings=TIMINGS,
                            listeners=listeners, stats=VenueStats(self.venue))


class TestCcxtPro(AdapterContract):
    venue = "binance_spot"
    # ccxt.pro subscribes stream by stream after loading markets; at 20 k/s the 6,000-frame
    # tape could be over before its trade subscription lands (flaky under load).
    tape_rate_hz = 1_000

    def server(self, tape: list, **options: Any) -> BinanceServer:
        return BinanceServer(tape, **options)

    def adapter(self, server: BinanceServer, bus: Bus, listeners: list) -> CcxtFeed:
        settings = VenueSettings(enabled=True, feed="ccxt", ccxt_id="binance",
                                 ws_url=server.ws_url, rest_url=server.rest_url)
        return CcxtFeed(self.venue, settings, [self.symbol], bus, timings=TIMINGS,
                        listeners=listeners, stats=VenueStats(self.venue))
