"""Synthetic cross rates on the bus: prices, sizes, fees, staleness, and real recorded legs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.recordings.replay import ReplayFeed, ReplaySpec
from config.settings import Settings
from daemon.core.model import Quote
from daemon.market.bus import Bus
from daemon.market.synthetic import (
    SYNTHETIC_VENUE,
    ConsolidatedBBO,
    CrossRate,
    SyntheticQuotes,
    attach_synthetics,
)

ETH = ("binance_spot", "ETH/USDT")
BTC = ("bybit_spot", "BTC/USDT")


def leg(key: tuple[str, str], bid: float, bid_qty: float, ask: float, ask_qty: float,
        ts: int) -> Quote:
    return Quote(key[0], key[1], bid, bid_qty, ask, ask_qty, ts, ts + 5)


def cross_bus(base_fee: float = 0.0, quote_fee: float = 0.0) -> tuple[Bus, list[Quote]]:
    """A bus with an ETH/BTC cross; returns it and every cross published (via a sink)."""
    bus = Bus()
    SyntheticQuotes(bus, [CrossRate("ETH/BTC", ETH, BTC, base_fee, quote_fee)])
    crosses: list[Quote] = []
    bus.add_sink(on_quote=lambda q: crosses.append(q) if q.exchange == SYNTHETIC_VENUE else None)
    return bus, crosses


def test_cross_is_leg_bid_over_other_leg_ask_with_sizes_limited_by_the_legs() -> None:
    bus, crosses = cross_bus()
    bus.publish_quote(leg(ETH, 3_000.0, 2.0, 3_001.0, 0.5, ts=100))
    assert crosses == []  # one leg only: nothing to price
    bus.publish_quote(leg(BTC, 60_000.0, 0.01, 60_010.0, 1.0, ts=90))
    cross = crosses[-1]
    assert cross.key == (SYNTHETIC_VENUE, "ETH/BTC")
    assert cross.bid == 3_000.0 / 60_010.0
    assert cross.ask == 3_001.0 / 60_000.0
    # Selling: ETH bid has 2 ETH, BTC ask 1 BTC buys 60_010 / 3_000 = 20 ETH worth -> 2.
    assert cross.bid_qty == 2.0
    # Buying: ETH ask has 0.5, but the BTC bid (0.01 BTC = 600 USDT) funds only 0.2 ETH.
    assert cross.ask_qty == pytest.approx(0.01 * 60_000.0 / 3_001.0)
    assert (cross.exchange_ts_ns, cross.local_ts_ns) == (100, 105)  # the newer leg's
    assert bus.view.quote(SYNTHETIC_VENUE, "ETH/BTC") == cross


def test_net_of_fees_widens_by_both_legs_taker_fees() -> None:
    bus, crosses = cross_bus(base_fee=0.001, quote_fee=0.0005)
    bus.publish_quote(leg(ETH, 3_000.0, 2.0, 3_001.0, 0.5, ts=100))
    bus.publish_quote(leg(BTC, 60_000.0, 0.01, 60_010.0, 1.0, ts=90))
    keep = 0.999 * 0.9995
    assert crosses[-1].bid == pytest.approx(3_000.0 / 60_010.0 * keep, rel=1e-12)
    assert crosses[-1].ask == pytest.approx(3_001.0 / 60_000.0 / keep, rel=1e-12)


def test_only_a_leg_update_reprices_the_cross() -> None:
    bus, crosses = cross_bus()
    bus.publish_quote(leg(ETH, 3_000.0, 2.0, 3_001.0, 0.5, ts=100))
    bus.publish_quote(leg(BTC, 60_000.0, 0.01, 60_010.0, 1.0, ts=90))
    bus.publish_quote(leg(("binance_spot", "SOL/USDT"), 150.0, 1.0, 150.1, 1.0, ts=110))
    bus.publish_quote(leg(("bybit_spot", "ETH/USDT"), 3_000.0, 1.0, 3_001.0, 1.0, ts=110))
    assert len(crosses) == 1
    bus.publish_quote(leg(BTC, 60_005.0, 0.01, 60_010.0, 1.0, ts=120))
    assert len(crosses) == 2 and crosses[-1].ask == 3_001.0 / 60_005.0


def test_the_cross_turns_stale_with_a_leg_and_recovers_with_it() -> None:
    bus, crosses = cross_bus()
    watcher = bus.subscribe("watcher", trades=False)
    bus.publish_quote(leg(ETH, 3_000.0, 2.0, 3_001.0, 0.5, ts=100))
    bus.publish_quote(leg(BTC, 60_000.0, 0.01, 60_010.0, 1.0, ts=90))
    bus.mark_stale(*BTC)
    view_cross = bus.view.quote(SYNTHETIC_VENUE, "ETH/BTC")
    assert view_cross is not None and view_cross.stale
    seen = [q for q in watcher.drain() if q.exchange == SYNTHETIC_VENUE]  # type: ignore[union-attr]
    assert seen[-1].stale  # subscribers (view, watch, strategies) are told too
    # The other leg moves while BTC is stale: no fresh cross is published.
    bus.publish_quote(leg(ETH, 3_002.0, 2.0, 3_003.0, 0.5, ts=130))
    assert len(crosses) == 1
    assert bus.view.quote(SYNTHETIC_VENUE, "ETH/BTC").stale  # type: ignore[union-attr]
    # The stale leg quotes again: the cross is fresh.
    bus.publish_quote(leg(BTC, 60_000.0, 0.01, 60_010.0, 1.0, ts=140))
    fresh = bus.view.quote(SYNTHETIC_VENUE, "ETH/BTC")
    assert fresh is not None and not fresh.stale and fresh.bid == 3_002.0 / 60_010.0


def test_a_leg_that_cannot_price_the_cross_is_dropped_and_counted() -> None:
    bus = Bus()
    cross = CrossRate("ETH/BTC", ETH, BTC)
    SyntheticQuotes(bus, [cross])
    bus.publish_quote(leg(ETH, 3_000.0, 2.0, 3_001.0, 0.5, ts=100))
    bus.publish_quote(leg(BTC, 0.0, 0.01, 60_010.0, 1.0, ts=90))
    assert cross.dropped == 1 and bus.view.quote(SYNTHETIC_VENUE, "ETH/BTC") is None


def test_settings_configure_crosses_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crosses = [{"symbol": "ETH/BTC", "base_leg": "binance_spot:ETH/USDT",
                "quote_leg": "bybit_spot:BTC/USDT", "net_of_fees": True}]
    monkeypatch.setenv("CRYPTOPIPE_SYNTHETIC__CROSSES", json.dumps(crosses))
    settings = Settings(venues={"binance_spot": {"taker_fee_bps": 10.0},
                                "bybit_spot": {"taker_fee_bps": 5.0}})
    synthetics = attach_synthetics(Bus(), settings)
    assert synthetics is not None
    (cross,) = synthetics.crosses
    assert (cross.base_leg, cross.quote_leg) == (ETH, BTC)
    assert (cross.base_fee, cross.quote_fee) == (0.001, 0.0005)
    monkeypatch.delenv("CRYPTOPIPE_SYNTHETIC__CROSSES")
    assert attach_synthetics(Bus(), Settings()) is None  # none by default


def test_a_malformed_leg_is_a_clear_settings_error() -> None:
    with pytest.raises(ValueError, match="venue:SYMBOL"):
        Settings(synthetic={"crosses": [{"symbol": "ETH/BTC", "base_leg": "ETH/USDT",
                                         "quote_leg": "bybit_spot:BTC/USDT"}]})


def test_cross_from_real_recorded_usdm_legs_equals_a_hand_computation(
    shared_file: Callable[[str], Path],
) -> None:
    eth_file = shared_file("binance_usdm_ethusdt_20240718.gz")
    btc_file = shared_file("binance_usdm_btcusdt_20240718.gz")
    venue, eth_symbol, btc_symbol = "binance_usdm", "ETH/USDT:USDT", "BTC/USDT:USDT"
    bus = Bus()
    # Every leg quote, in publish order, with the crosses it caused right after it.
    events: list[Quote] = []
    bus.add_sink(on_quote=events.append)
    SyntheticQuotes(bus, [CrossRate("ETH/BTC", (venue, eth_symbol), (venue, btc_symbol))])
    specs = [ReplaySpec(eth_file, venue, eth_symbol), ReplaySpec(btc_file, venue, btc_symbol)]
    asyncio.run(ReplayFeed(specs, bus.publish_quote, bus.publish_trade).run())

    crosses = [i for i, q in enumerate(events) if q.exchange == SYNTHETIC_VENUE]
    legs = len(events) - len(crosses)
    assert len(crosses) > 1_000 and legs > len(crosses)
    for index in (crosses[0], crosses[len(crosses) // 2], crosses[-1]):
        cross = events[index]
        eth = next(q for q in reversed(events[:index]) if q.symbol == eth_symbol)
        btc = next(q for q in reversed(events[:index]) if q.symbol == btc_symbol)
        assert cross.bid == eth.bid / btc.ask
        assert cross.ask == eth.ask / btc.bid
        assert cross.bid_qty == min(eth.bid_qty, btc.ask_qty * btc.ask / eth.bid)
        assert cross.ask_qty == min(eth.ask_qty, btc.bid_qty * btc.bid / eth.ask)
        assert cross.exchange_ts_ns == max(eth.exchange_ts_ns, btc.exchange_ts_ns)
        assert cross.local_ts_ns == max(eth.local_ts_ns, btc.local_ts_ns)
        assert 0.04 < cross.bid < cross.ask < 0.07  # ETH/BTC in July 2024: ~0.053

    # A leg going stale takes the cross with it.
    bus.mark_stale(venue, btc_symbol)
    assert bus.view.quote(SYNTHETIC_VENUE, "ETH/BTC").stale  # type: ignore[union-attr]


# -- consolidated best bid/offer -------------------------------------------------------------

SPOT_A = ("binance_spot", "BTC/USDT")
SPOT_B = ("bybit_spot", "BTC/USDT")


def bbo_bus() -> Bus:
    bus = Bus()
    SyntheticQuotes(bus, [ConsolidatedBBO("BTC/USDT", (SPOT_A, SPOT_B))])
    return bus


def test_consolidated_bbo_is_the_best_price_of_each_side_summing_sizes_at_it() -> None:
    bus = bbo_bus()
    bus.publish_quote(leg(SPOT_A, 60_000.0, 1.0, 60_002.0, 2.0, ts=100))
    first = bus.view.quote(SYNTHETIC_VENUE, "BTC/USDT")
    assert first is not None and (first.bid, first.ask) == (60_000.0, 60_002.0)
    bus.publish_quote(leg(SPOT_B, 60_000.0, 0.5, 60_001.0, 0.3, ts=90))
    bbo = bus.view.quote(SYNTHETIC_VENUE, "BTC/USDT")
    assert bbo is not None
    assert (bbo.bid, bbo.bid_qty) == (60_000.0, 1.5)  # both venues bid the best price
    assert (bbo.ask, bbo.ask_qty) == (60_001.0, 0.3)  # only bybit offers the best
    assert (bbo.exchange_ts_ns, bbo.local_ts_ns) == (100, 105)


def test_consolidated_bbo_leaves_out_a_stale_venue_and_is_stale_when_all_are() -> None:
    bus = bbo_bus()
    bus.publish_quote(leg(SPOT_A, 60_000.0, 1.0, 60_002.0, 2.0, ts=100))
    bus.publish_quote(leg(SPOT_B, 60_001.0, 0.5, 60_003.0, 0.3, ts=110))
    bus.mark_stale(*SPOT_B)
    bbo = bus.view.quote(SYNTHETIC_VENUE, "BTC/USDT")
    assert bbo is not None and not bbo.stale and bbo.bid == 60_000.0  # binance only
    bus.mark_stale(*SPOT_A)
    assert bus.view.quote(SYNTHETIC_VENUE, "BTC/USDT").stale  # type: ignore[union-attr]
    bus.publish_quote(leg(SPOT_B, 60_001.0, 0.5, 60_003.0, 0.3, ts=120))
    bbo = bus.view.quote(SYNTHETIC_VENUE, "BTC/USDT")
    assert bbo is not None and not bbo.stale and bbo.bid == 60_001.0


def test_consolidated_settings_build_a_bbo() -> None:
    settings = Settings(synthetic={"consolidated": [
        {"symbol": "BTC/USDT", "legs": ["binance_spot:BTC/USDT", "bybit_spot:BTC/USDT"]}]})
    synthetics = attach_synthetics(Bus(), settings)
    assert synthetics is not None and synthetics.legs == [SPOT_A, SPOT_B]
    with pytest.raises(ValueError, match="venue:SYMBOL"):
        Settings(synthetic={"consolidated": [{"symbol": "BTC/USDT", "legs": ["BTC/USDT"]}]})
