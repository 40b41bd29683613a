"""inventory-mm on a linear perpetual: a short needs margin (quote currency), not a base
asset balance the venue never holds. Before the fix the ask side's room was the base
balance, so on a perp with only USDT the strategy never quoted an ask (issue 14's ETH
example: every fill a buy, maximum short 0)."""

from __future__ import annotations

from config.settings import VenueSettings
from daemon.core.model import Quote, Side
from strategies.inventory_mm import InventoryMMStrategy
from tests.helpers.strategy_fakes import FakeAccount, FakeClock, FakeMarket
from tests.strategies.test_inventory_mm import ASK, BID, LOT, MID, SIGMA_ABS, TICK, mm_settings

VENUE, PERP = "binance_usdm", "BTC/USDT:USDT"


def perp_strategy(usdt: float) -> tuple[InventoryMMStrategy, FakeMarket, FakeClock]:
    clock, market = FakeClock(), FakeMarket()
    market.sigma[(VENUE, PERP)] = SIGMA_ABS / MID
    strategy = InventoryMMStrategy(
        mm_settings(venue=VENUE, symbol=PERP),
        VenueSettings(markets={PERP: {"tick": TICK, "lot": LOT}}, stale_after_s=10.0))
    strategy.bind(market, FakeAccount({VENUE: {"USDT": usdt}}), clock)
    return strategy, market, clock


def quote_once(strategy: InventoryMMStrategy, market: FakeMarket, clock: FakeClock):
    quote = Quote(VENUE, PERP, BID, 5.0, ASK, 5.0, 0, clock())
    market.quotes[quote.key] = quote
    return strategy.on_quote(quote)


def test_a_perp_quotes_both_sides_on_quote_currency_margin_alone() -> None:
    strategy, market, clock = perp_strategy(usdt=100_000.0)
    decision = quote_once(strategy, market, clock)
    sides = sorted(intent.side.value for intent in decision.intents)
    assert sides == [Side.BUY.value, Side.SELL.value]
    assert decision.inputs["ask_room"] > 0


def test_a_perp_short_is_still_bounded_by_the_margin_it_has() -> None:
    """30 USDT of margin carries about 0.0005 BTC each way, less than the order size 0.001:
    both sides are cut to what the margin carries at their price, down to the lot (the bid
    below 60,000 carries 0.0005; the ask above it 0.000499..., so 0.00049)."""
    strategy, market, clock = perp_strategy(usdt=30.0)
    decision = quote_once(strategy, market, clock)
    assert sorted((i.side.value, round(i.qty, 8)) for i in decision.intents) == [
        (Side.BUY.value, 0.0005), (Side.SELL.value, 0.00049)]
