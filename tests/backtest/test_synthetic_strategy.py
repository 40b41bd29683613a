"""A strategy that reads a synthetic market (issue 15, item 5): it declares the market and
its legs, a backtest takes the market as present when its legs are in the data, and the
runner hands it each cross as a live subscription would (just before the leg that moved
it), priced from the legs it sees in the view."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import strategies
from adapters.recordings.replay import ReplaySpec
from config.settings import Settings, load_settings
from daemon.backtest.engine import Backtest
from daemon.core.model import Decision, Quote
from daemon.market.synthetic import SYNTHETIC_VENUE
from strategies.base import MarketView, StrategyBase

VENUE, ETH, BTC = "binance_usdm", "ETH/USDT:USDT", "BTC/USDT:USDT"
CROSS = (SYNTHETIC_VENUE, "ETH/BTC")


class CrossReader(StrategyBase):
    """Records each cross it is handed with the legs in the view at that moment."""

    name = "cross-reader"
    market_keys = frozenset({CROSS, (VENUE, ETH), (VENUE, BTC)})  # the market and its legs

    def __init__(self) -> None:
        self.seen: list[tuple[Quote, Quote, Quote]] = []
        self.legs_seen = 0

    def bind(self, market: MarketView, account: object, clock: object) -> None:
        self.market = market

    def on_quote(self, quote: Quote) -> Decision | None:
        if quote.exchange == SYNTHETIC_VENUE:
            eth, btc = self.market.quote(VENUE, ETH), self.market.quote(VENUE, BTC)
            assert eth is not None and btc is not None
            self.seen.append((quote, eth, btc))
        else:
            self.legs_seen += 1
        return None


async def test_a_strategy_reading_a_cross_gets_it_in_a_backtest_priced_from_its_legs(
        tmp_path: Path, shared_file: Callable[[str], Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    reader = CrossReader()
    monkeypatch.setitem(strategies.STRATEGIES, "cross-reader", lambda _s: reader)
    settings: Settings = load_settings({
        "data_dir": tmp_path,
        "synthetic": {"crosses": [{"symbol": "ETH/BTC", "base_leg": f"{VENUE}:{ETH}",
                                   "quote_leg": f"{VENUE}:{BTC}"}]}}, env_file=None)
    specs = [ReplaySpec(shared_file("binance_usdm_ethusdt_20240718.gz")),
             ReplaySpec(shared_file("binance_usdm_btcusdt_20240718.gz"))]
    engine = Backtest(settings, "cross-reader", specs, "cross")
    await engine.run()
    assert engine.missing_note is None  # the cross counts as in the data: its legs are
    assert len(reader.seen) == engine.bus.published_by(SYNTHETIC_VENUE) > 1_000
    assert reader.legs_seen > len(reader.seen)
    for cross, eth, btc in reader.seen:
        assert cross.bid == eth.bid / btc.ask and cross.ask == eth.ask / btc.bid
        # Handed over inside the leg's publish: the view already has the leg that moved it.
        assert cross.local_ts_ns == max(eth.local_ts_ns, btc.local_ts_ns)
