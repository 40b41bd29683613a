"""ccxt.pro feed against the local Binance server (raw /ws endpoint + SUBSCRIBE, REST
exchangeInfo on the same port), with ccxt's URLs redirected by the venue settings."""

from __future__ import annotations

import asyncio

import pytest

from adapters.ccxt.exchange import new_exchange, redirect_urls
from adapters.ccxt.feed import CcxtFeed
from adapters.common.errors import SubscriptionRejected, VenueRefused
from adapters.common.stats import VenueStats
from adapters.common.timings import BackoffPolicy, FeedTimings
from config.settings import VenueSettings
from daemon.core.model import Quote, Trade
from daemon.market.bus import Bus
from tests.helpers.venue_servers import (
    BinanceServer,
    Fault,
    binance_tape,
    count_streams,
    running,
    wait_until,
)

SPOT_FILE = "binance_spot_btcusdt_20240808.gz"
FAST = FeedTimings(silence_timeout_s=5.0, stale_after_s=5.0,
                   backoff=BackoffPolicy(initial_s=0.01, max_s=0.05))


@pytest.fixture(scope="module")
def tape(request: pytest.FixtureRequest) -> list:
    return binance_tape(request.getfixturevalue("shared_file")(SPOT_FILE))[0][:3_000]


def make_feed(server: BinanceServer, symbols: tuple[str, ...] = ("BTC/USDT",)
              ) -> tuple[CcxtFeed, list[Quote], list[Trade]]:
    bus = Bus()
    quotes: list[Quote] = []
    trades: list[Trade] = []
    bus.add_sink(on_quote=quotes.append, on_trade=trades.append)
    settings = VenueSettings(enabled=True, feed="ccxt", ccxt_id="binance", market_type="spot",
                             ws_url=server.ws_url, rest_url=server.rest_url)
    feed = CcxtFeed("binance_spot", settings, list(symbols), bus, timings=FAST,
                    stats=VenueStats("binance_spot"))
    return feed, quotes, trades


def test_redirect_keeps_paths_and_leaves_real_endpoints_alone() -> None:
    exchange = new_exchange("binance")
    original = exchange.urls["api"]["fapiPublic"]
    redirect_urls(exchange, "wss://stream.binance.com:9443/ws", "https://api.binance.com")
    assert exchange.urls["api"]["fapiPublic"] == original  # ccxt's own origin: no change
    redirect_urls(exchange, "ws://127.0.0.1:5555/ws", "http://127.0.0.1:5555")
    assert exchange.urls["api"]["ws"]["spot"] == "ws://127.0.0.1:5555/ws"
    assert exchange.urls["api"]["public"] == "http://127.0.0.1:5555/api/v3"
    assert exchange.urls["api"]["fapiPublic"] == "http://127.0.0.1:5555/fapi/v1"


def test_unknown_ccxt_exchange_is_refused() -> None:
    with pytest.raises(VenueRefused, match="nosuchvenue"):
        new_exchange("nosuchvenue")


async def test_ccxt_feed_receives_quotes_and_trades(tape) -> None:
    expected = count_streams(tape)
    async with BinanceServer(tape, rate_hz=20_000) as server:
        feed, quotes, trades = make_feed(server)
        async with running(feed):
            await asyncio.wait_for(server.finished.wait(), 30)
            await wait_until(lambda: len(trades) == expected["trade"], timeout_s=5,
                             what="every trade")
            await asyncio.sleep(0.05)
    assert "/api/v3/exchangeInfo" in server.http_requests
    subscribed = {p for r in server.requests if r.get("method") == "SUBSCRIBE"
                  for p in r["params"]}
    assert subscribed == {"btcusdt@bookTicker", "btcusdt@trade"}
    # ccxt returns the latest bid/ask when asked: intermediate updates may be conflated.
    assert 0 < len(quotes) <= expected["bookTicker"]
    assert quotes[-1].symbol == "BTC/USDT" and quotes[-1].exchange == "binance_spot"
    assert quotes[-1].bid < quotes[-1].ask
    assert {t.side for t in trades} == {"buy", "sell"}
    assert feed.stats.connects == 1


async def test_ccxt_feed_rejects_an_unknown_symbol(tape) -> None:
    async with BinanceServer(tape[:10]) as server:
        feed, _, _ = make_feed(server, symbols=("NOPE/USDT",))
        with pytest.raises(SubscriptionRejected, match="NOPE/USDT"):
            await asyncio.wait_for(feed.run(), 10)


async def test_ccxt_feed_reconnects_after_a_drop(tape) -> None:
    # The server drops every connection at a tape position and holds its cursor until
    # the client's streams are subscribed again: the rest of the tape (1 s of it) then
    # reaches the new connections however slowly a loaded CPU lets the client reconnect
    # (ccxt conflates tickers: a starved client sees fewer quotes than the tape has).
    drop = Fault("drop", seconds=5.0)
    async with BinanceServer(tape, rate_hz=2_000, faults={1_000: drop}) as server:
        feed, quotes, _ = make_feed(server)
        async with running(feed):
            await wait_until(lambda: feed.stats.reconnects >= 1, what="a reconnect")
            count = len(quotes)
            await wait_until(lambda: len(quotes) > count + 20, what="quotes after the drop")
    assert server.connection_count >= 2
    assert feed.stats.reconnects >= 1
