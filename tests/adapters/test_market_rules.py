"""Tick and lot of a new symbol: from the recorded data (replay, backtest) and from the venue's
markets through ccxt (live), against the local fake Binance (issue 14)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.ccxt.exchange import fetch_market_rules
from adapters.recordings.market_rules import sample_market_rules
from adapters.recordings.replay import parse_spec
from config.settings import load_settings
from tests.helpers.venue_servers import BinanceServer, MarketFilters

ETH_FILE = "binance_usdm_ethusdt_20240718.gz"


def test_tick_and_lot_come_from_the_recorded_prices_and_sizes(
        shared_file: Callable[[str], Path]) -> None:
    eth = shared_file(ETH_FILE)
    # Binance USD-M ETHUSDT: prices in cents, sizes in thousandths (its real tick and step).
    found = sample_market_rules([parse_spec(str(eth))])
    (key, rules), = found.items()
    assert key == ("binance_usdm", "ETH/USDT:USDT")
    assert (rules.tick, rules.lot) == (0.01, 0.001)
    assert rules.mid == pytest.approx(3425.0, abs=1.0)
    # Relabelled as another market, the rules follow the label.
    relabelled = sample_market_rules([parse_spec(f"{eth}@binance_spot:ETH/USDT")])
    assert set(relabelled) == {("binance_spot", "ETH/USDT")}
    # BTCUSDT perpetual: tick 0.1, step 0.001.
    btc = sample_market_rules([parse_spec(str(shared_file("binance_usdm_btcusdt_20240808.gz")))])
    assert [(r.tick, r.lot) for r in btc.values()] == [(0.1, 0.001)]


def test_an_unreadable_file_gives_no_rules(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"not a recording")
    assert sample_market_rules([parse_spec(str(junk))]) == {}


@pytest.mark.parametrize(("market", "venue", "symbol"), [
    ("spot", "binance_spot", "ETH/USDT"), ("usdm", "binance_usdm", "ETH/USDT:USDT")])
async def test_live_rules_come_from_the_venues_markets(market: str, venue: str,
                                                       symbol: str) -> None:
    filters = {"ETHUSDT": MarketFilters(tick="0.01", step="0.0001", min_notional="5")}
    async with BinanceServer([], market=market, symbols=["BTCUSDT", "ETHUSDT"],
                             market_rules=filters) as server:
        settings = load_settings({"venues": {venue: {"rest_url": server.rest_url}}},
                                 env_file=None)
        found = await fetch_market_rules(venue, settings.venues[venue],
                                         [symbol, "XRP/USDT"])
    assert found == {symbol: {"tick": 0.01, "lot": 0.0001, "min_notional": 5.0}}
    assert server.http_requests == [f"/{'api/v3' if market == 'spot' else 'fapi/v1'}"
                                    "/exchangeInfo"]
