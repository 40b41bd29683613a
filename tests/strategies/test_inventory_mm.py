"""Inventory market making: hand-checked quotes, tolerance, limits, risk exits, recorded day.

Hand numbers (settings below): mid 60000.05, sigma_abs 3 $/sqrt(s), horizon 60 s,
gamma 0.1, order 0.001 BTC (the model's unit, so the kernel gets gamma * 0.001 = 1e-4),
k 1.5 /$ (k_bps = 1.5 * mid / 1e4: k is set per bps of mid), the fee floor opted out
(these check the model's own numbers; tests/strategies/test_inventory_mm_fees.py checks
the floor):
    inventory term  1e-4 * 9 * 60                  = 0.054
    order-flow term (2 / 1e-4) ln(1 + 1e-4 / 1.5)  = 1.33329 (to 5 decimals)
    reservation shift per order held: 0.054 $ (q gamma sigma^2 tau with q = 0.001 BTC)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from config.settings import InventoryMMSettings, VenueSettings
from daemon.core.model import Fill, OrderAck, OrderType, Quote, Side, Trade
from daemon.core.vocabulary import OrderStatus
from strategies.inventory_mm import InventoryMMStrategy, ceil_to_step, floor_to_step
from tests.helpers.strategy_fakes import (
    NS,
    Driver,
    FakeAccount,
    FakeClock,
    FakeExchange,
    FakeMarket,
    RollingVolatility,
    load_binance_recording,
)

VENUE = "binance_spot"
SYMBOL = "BTC/USDT"
TICK, LOT = 0.01, 0.00001
BID, ASK = 60_000.00, 60_000.10
MID = (BID + ASK) / 2
SIGMA_ABS = 3.0
K_BPS = 1.5 * MID * 1e-4  # 1.5 per $ at this mid
INVENTORY_TERM = 1e-4 * SIGMA_ABS**2 * 60.0
ORDER_FLOW_TERM = (2.0 / 1e-4) * math.log(1.0 + 1e-4 / 1.5)
RECORDING = Path(__file__).resolve().parents[2].parent / "shared" / "data" / \
    "binance_spot_btcusdt_20240808.gz"


def mm_settings(**overrides: object) -> InventoryMMSettings:
    values: dict[str, object] = dict(
        venue=VENUE, symbol=SYMBOL, gamma=0.1, k_bps=K_BPS, horizon_s=60.0, order_qty=0.001,
        max_inventory=0.003, size_decay=1.0, delta_price_bps=1.0, delta_size=0.2,
        max_loss=100.0, requote_interval_s=1.0, allow_quotes_inside_fees=True)
    values.update(overrides)
    return InventoryMMSettings(**values)


def venue_settings() -> VenueSettings:
    return VenueSettings(markets={SYMBOL: {"tick": TICK, "lot": LOT}}, stale_after_s=10.0)


class Harness:
    """Strategy bound to fakes; events delivered by hand so each step is visible."""

    def __init__(self, **overrides: object) -> None:
        self.clock = FakeClock()
        self.market = FakeMarket()
        self.market.sigma[(VENUE, SYMBOL)] = SIGMA_ABS / MID
        self.account = FakeAccount({VENUE: {"BTC": 1.0, "USDT": 100_000.0}})
        self.strategy = InventoryMMStrategy(mm_settings(**overrides), venue_settings())
        self.strategy.bind(self.market, self.account, self.clock)

    def quote(self, bid: float = BID, ask: float = ASK, after_s: float = 0.0,
              **fields: object):
        self.clock.advance(after_s)
        quote = Quote(VENUE, SYMBOL, bid, 5.0, ask, 5.0, 0, self.clock(), **fields)
        self.market.quotes[quote.key] = quote
        return self.strategy.on_quote(quote)

    def ack_all(self, decision) -> None:
        for intent in decision.intents:
            self.strategy.on_ack(OrderAck(intent.client_order_id, VENUE, SYMBOL,
                                          OrderStatus.NEW, self.clock()))

    def fill(self, intent, qty: float | None = None, price: float | None = None):
        """A maker fill of `intent` (an OrderIntent or a WorkingOrder), whole by default."""
        return self.strategy.on_fill(Fill(intent.client_order_id, VENUE, SYMBOL, intent.side,
                                          price or intent.price, qty or intent.qty, 0.0,
                                          "USDT", "maker", self.clock()))


def fill_bids_to_the_limit(h: Harness, decision, price: float | None = None):
    """Fill our bid again and again (sizes shrink as we get longer) until q = +max."""
    for _ in range(20):
        if h.strategy.inventory >= 0.003 - 1e-12:
            return decision
        if decision is not None:
            h.ack_all(decision)
        bid = next(o for o in h.strategy.orders.values()
                   if o.side is Side.BUY and not o.cancelling)
        decision = h.fill(bid, price=price)
    raise AssertionError("the limit was never reached")


def side_intent(decision, side: Side):
    matches = [i for i in decision.intents if i.side is side]
    return matches[0] if matches else None


def test_first_quote_is_avellaneda_stoikov_rounded_to_the_tick() -> None:
    h = Harness()
    decision = h.quote()
    assert decision.action == "quote"
    half = (INVENTORY_TERM + ORDER_FLOW_TERM) / 2
    bid, ask = side_intent(decision, Side.BUY), side_intent(decision, Side.SELL)
    assert bid.price == pytest.approx(math.floor((MID - half) / TICK) * TICK, abs=1e-9)
    assert ask.price == pytest.approx(math.ceil((MID + half) / TICK) * TICK, abs=1e-9)
    assert (bid.price, ask.price) == (59_999.35, 60_000.75)  # 59999.3563 down, 60000.7437 up
    assert bid.type is OrderType.POST_ONLY and bid.qty == ask.qty == 0.001
    inputs = decision.inputs
    for key in ("mid", "sigma", "reservation_price", "spread", "bid", "ask", "inventory", "k"):
        assert key in inputs
    assert inputs["sigma"] == pytest.approx(SIGMA_ABS)
    assert inputs["spread"] == pytest.approx(INVENTORY_TERM + ORDER_FLOW_TERM, abs=1e-9)
    assert inputs["reservation_price"] == pytest.approx(MID)
    assert inputs["k"] == pytest.approx(1.5) and inputs["inventory"] == 0.0
    assert inputs["k_bps"] == K_BPS and inputs["k_state"] == "configured"
    # Spread capture if both fill: (mid - bid + ask - mid) x 0.001 BTC, in USDT.
    assert decision.expected == pytest.approx((60_000.75 - 59_999.35) * 0.001)


def test_rounding_helpers_bid_down_ask_up() -> None:
    assert floor_to_step(100.019, 0.01) == 100.01
    assert ceil_to_step(100.011, 0.01) == 100.02
    assert floor_to_step(100.02, 0.01) == 100.02  # already on the grid: unchanged
    assert floor_to_step(0.0012345, 0.00001) == 0.00123


def test_orders_within_tolerance_are_kept_not_replaced() -> None:
    h = Harness()
    first = h.quote()
    h.ack_all(first)
    # One tick later in price and half a second later: inside 1 bps and the interval.
    assert h.quote(BID + TICK, ASK + TICK, after_s=0.5) is None
    # The timer logs a hold: targets moved by a tick, well inside the 6 $ tolerance.
    h.clock.advance(1.0)
    hold = h.strategy.on_timer(h.clock())
    assert hold.action == "hold" and not hold.intents and not hold.cancels
    # A 2 bps jump (12 $) is outside the tolerance: both sides are replaced at once.
    decision = h.quote(BID + 12.0, ASK + 12.0, after_s=0.1)
    assert decision.action == "quote"
    assert sorted(decision.cancels) == sorted(i.client_order_id for i in first.intents)
    assert side_intent(decision, Side.BUY).price == pytest.approx(59_999.35 + 12.0)


def test_inventory_skews_quotes_down_and_shrinks_the_bid() -> None:
    h = Harness()
    first = h.quote()
    h.ack_all(first)
    bid = side_intent(first, Side.BUY)
    decision = h.fill(bid)  # long one order: 0.001 BTC
    assert h.strategy.inventory == pytest.approx(0.001)
    assert decision.inputs["reservation_price"] == pytest.approx(MID - INVENTORY_TERM)
    new_bid = side_intent(decision, Side.BUY)
    assert new_bid.qty == floor_to_step(0.001 * math.exp(-1 / 3), LOT) == 0.00071
    assert new_bid.price == 59_999.30  # 59999.3023 down: the bid moved 5 ticks lower
    # The ask moved 0.054 $, inside the tolerance: it stays, no needless cancel.
    assert not decision.cancels and side_intent(decision, Side.SELL) is None


def test_no_bid_at_the_long_limit_and_no_ask_at_the_short_limit() -> None:
    h = Harness()
    fill_bids_to_the_limit(h, h.quote())
    assert h.strategy.inventory == pytest.approx(0.003)
    assert not any(o.side is Side.BUY and not o.cancelling for o in h.strategy.orders.values())
    h.clock.advance(1.0)
    hold = h.strategy.on_timer(h.clock())
    assert hold.action == "hold" and hold.inputs["bid_qty"] == 0.0

    # Reaching the limit another way (a fill of some other order) pulls the resting bid.
    other = Harness()
    first = other.quote()
    other.ack_all(first)
    other.strategy.inventory = other.strategy.position = 0.003
    decision = other.quote(after_s=1.0)
    assert decision.cancels == [side_intent(first, Side.BUY).client_order_id]
    assert side_intent(decision, Side.BUY) is None and "no bid" in decision.reason

    short = Harness()
    short.strategy.inventory = short.strategy.position = -0.003
    decision = short.quote()
    assert side_intent(decision, Side.SELL) is None and side_intent(decision, Side.BUY)


def test_sizes_never_let_a_fill_cross_the_limit() -> None:
    h = Harness(size_decay=0.0)  # no shrinking: the full 0.001 would be wanted
    h.strategy.inventory = h.strategy.position = 0.0025
    decision = h.quote()
    assert side_intent(decision, Side.BUY).qty == pytest.approx(0.0005)  # the headroom


def test_no_quoting_when_the_market_spread_is_below_the_minimum() -> None:
    # Without a margin: quoting resumes as soon as the spread is wide enough.
    h = Harness(min_market_spread_bps=0.5, min_market_spread_margin_bps=0.0)
    first = h.quote()  # 0.10 $ on 60000 = 0.0167 bps: too narrow
    assert first.action == "skip" and "below minimum" in first.reason and not first.intents
    wide = h.quote(BID, BID + 6.0, after_s=0.1)  # 1 bps wide: quote
    assert wide.action == "quote"
    h.ack_all(wide)
    narrow = h.quote(after_s=0.1)
    assert narrow.action == "skip"
    assert sorted(narrow.cancels) == sorted(i.client_order_id for i in wide.intents)
    assert h.quote(after_s=0.1) is None  # the same reason again is not logged twice


def test_after_a_narrow_market_it_quotes_again_only_past_the_margin_or_the_hold() -> None:
    h = Harness(min_market_spread_bps=0.5, min_market_spread_margin_bps=0.5,
                min_market_spread_hold_s=5.0)
    assert h.quote().action == "skip"  # 0.0167 bps: narrow
    at_minimum = BID + MID * 0.6e-4  # 0.6 bps: past the minimum, not past the margin
    waiting = h.quote(BID, at_minimum, after_s=0.1)
    assert waiting is None  # still the same narrow spell: nothing new to log
    assert h.quote(BID, at_minimum, after_s=4.0) is None  # 4.1 s at the minimum
    assert h.quote(BID, at_minimum, after_s=1.0).action == "quote"  # held 5 s: quote
    # Narrow again, then 1.1 bps (past 0.5 + 0.5): quotes at once, no hold needed.
    assert h.quote(after_s=0.1).action == "skip"
    assert h.quote(BID, BID + MID * 1.1e-4, after_s=0.1).action == "quote"


@pytest.mark.parametrize("fields, reason", [({"stale": True}, "stale quote"),
                                            ({"bid": ASK + 1.0}, "crossed quote")])
def test_stale_or_crossed_quotes_are_never_quoted_on(fields: dict, reason: str) -> None:
    h = Harness()
    first = h.quote()
    h.ack_all(first)
    bid = fields.pop("bid", BID)
    decision = h.quote(bid, ASK, after_s=0.1, **fields)
    assert decision.action == "skip" and decision.reason == reason
    assert not decision.intents and len(decision.cancels) == 2
    assert h.quote(after_s=0.1).action == "quote"  # usable again: quotes at once


def test_quote_older_than_stale_after_is_treated_as_stale() -> None:
    h = Harness()
    h.quote()
    h.clock.advance(11.0)
    decision = h.strategy.on_timer(h.clock())
    assert decision.action == "skip" and decision.reason == "stale quote"


def test_max_loss_exit_on_a_constructed_crash() -> None:
    h = Harness(max_loss=10.0)
    fill_bids_to_the_limit(h, h.quote(), price=60_000.0)
    assert h.strategy.inventory == pytest.approx(0.003)
    # -3000 $ on 0.003 BTC is -9 $: still inside the limit.
    assert h.quote(57_000.0, 57_000.1, after_s=0.5).action != "max_loss_exit"
    crash = h.quote(56_000.0, 56_000.1, after_s=0.5)  # -4000 $: P&L -12 $ < -10 $
    assert crash.action == "max_loss_exit"
    assert crash.inputs["pnl"] == pytest.approx(0.003 * (56_000.05 - 60_000.0))
    assert crash.cancels
    assert all(o.cancelling for o in h.strategy.orders.values() if o.kind == "quote")
    (flatten,) = crash.intents
    assert (flatten.side, flatten.type, flatten.qty) == (Side.SELL, OrderType.MARKET, 0.003)
    assert h.quote(56_000.0, 56_000.1, after_s=1.0) is None  # stopped for good
    assert h.strategy.on_timer(h.clock()) is None
    h.fill(flatten, price=56_000.0)
    assert h.strategy.inventory == pytest.approx(0.0, abs=1e-12)


def test_kill_switch_stops_quoting_and_flattens_when_configured() -> None:
    h = Harness()
    h.strategy.flatten_on_kill = True
    first = h.quote()
    h.ack_all(first)
    h.fill(side_intent(first, Side.SELL))
    decision = h.strategy.on_kill("daily loss limit")
    assert decision.action == "flatten" and not decision.cancels  # the runner cancels
    (flatten,) = decision.intents
    assert (flatten.side, flatten.type, flatten.qty) == (Side.BUY, OrderType.MARKET, 0.001)
    assert h.quote(after_s=1.0) is None
    assert h.strategy.on_kill("again") is None

    quiet = Harness()  # not configured to flatten: it just stops
    quiet.quote()
    assert quiet.strategy.on_kill("daily loss limit") is None
    assert quiet.quote(after_s=1.0) is None


def feed_exponential_trades(h: Harness, k_bps: float, count: int = 400) -> None:
    """Taker prints at exponential distances (in bps) beyond half a bps from the mid."""
    distances = 0.5 - np.log((np.arange(count) + 0.5) / count) / k_bps
    for index, distance in enumerate(distances):
        h.clock.advance(0.01)
        side = "buy" if index % 2 else "sell"
        offset = MID * distance * 1e-4
        price = MID + offset if side == "buy" else MID - offset
        h.strategy.on_trade(Trade(VENUE, SYMBOL, price, 0.01, side, 0, h.clock()))


def test_k_auto_is_fitted_per_bps_from_trade_arrivals_after_a_visible_warm_up() -> None:
    h = Harness(k_bps="auto")
    warm = h.quote()  # no trades yet: warming up, and the decision says so
    assert warm.action == "skip" and "warming up" in warm.reason
    assert warm.inputs["k_state"] == "warming up"
    assert (warm.inputs["k_trades"], warm.inputs["k_trades_needed"]) == (0, 30)
    feed_exponential_trades(h, k_bps=0.5)
    decision = h.quote(after_s=1.0)
    assert decision.action == "quote"
    assert decision.inputs["k_bps"] == pytest.approx(0.5, rel=0.15)
    assert decision.inputs["k_state"] == "fitted" and decision.inputs["k_trades"] == 400
    # The kernel gets k per $ at this mid: k_bps / (mid * 1e-4).
    assert decision.inputs["k"] == pytest.approx(decision.inputs["k_bps"] / (MID * 1e-4))


def test_k_auto_is_floored_when_the_fit_is_too_flat() -> None:
    h = Harness(k_bps="auto", k_auto_floor_bps=1.0)
    h.quote()
    feed_exponential_trades(h, k_bps=0.5)  # fits ~0.5, below the floor of 1
    decision = h.quote(after_s=1.0)
    assert decision.inputs["k_state"] == "floored" and decision.inputs["k_bps"] == 1.0


def test_k_in_price_units_is_refused_with_the_conversion_and_auto_carries_over() -> None:
    with pytest.raises(ValueError, match=r"k is now k_bps.*k_bps = k \* mid / 10000"):
        InventoryMMSettings(k=1.5)
    assert InventoryMMSettings(k="auto").k_bps == "auto"


def test_one_k_bps_gives_the_same_spread_in_bps_at_any_price() -> None:
    """BTC at 60000, ETH at 2600, XRP at 0.5: the order-flow spread is ~2 / k_bps bps."""
    spreads_bps = []
    for mid in (60_000.0, 2_600.0, 0.5):
        tick = mid * 1e-7
        h = Harness(k_bps=0.5, gamma=1e-3)  # small gamma: the order-flow term alone
        h.strategy.tick = tick
        h.market.sigma[(VENUE, SYMBOL)] = 1e-6
        decision = h.quote(mid - tick / 2, mid + tick / 2)
        spreads_bps.append(decision.inputs["spread"] / mid * 1e4)
    assert spreads_bps == pytest.approx([4.0] * 3, rel=1e-3)


def test_quotes_rest_at_least_maker_fee_plus_min_edge_from_the_mid() -> None:
    h = Harness(allow_quotes_inside_fees=False, min_edge_bps=1.0)  # maker fee 10 bps
    first = h.quote()
    assert first.inputs["min_half_spread_bps"] == 11.0
    bid, ask = side_intent(first, Side.BUY), side_intent(first, Side.SELL)
    assert bid.price == floor_to_step(MID * (1 - 11e-4), TICK) == 59_934.04
    assert ask.price == ceil_to_step(MID * (1 + 11e-4), TICK) == 60_066.06
    # The model's own quotes (0.7 $ from the mid) are still in the inputs.
    assert first.inputs["model_bid"] > bid.price
    h.ack_all(first)
    # Long: the model pulls its ask towards the mid, the floor still holds it 11 bps out.
    decision = h.fill(bid)
    for intent in decision.intents:
        mid = decision.inputs["mid"]
        assert abs(intent.price - mid) / mid * 1e4 >= 11.0


def test_a_resting_quote_the_mid_came_too_close_to_is_replaced() -> None:
    h = Harness(allow_quotes_inside_fees=False, min_edge_bps=1.0, delta_price_bps=5.0)
    first = h.quote()
    h.ack_all(first)
    # The mid moves 3 bps up: within the 5 bps tolerance, but the ask is now 8 bps away.
    up = MID * 3e-4
    decision = h.quote(BID + up, ASK + up, after_s=1.0)
    assert side_intent(first, Side.SELL).client_order_id in decision.cancels
    assert side_intent(first, Side.BUY).client_order_id not in decision.cancels
    assert side_intent(decision, Side.SELL).price >= (MID + up) * (1 + 11e-4)


def test_opting_out_lets_the_model_quote_inside_the_fees() -> None:
    decision = Harness(allow_quotes_inside_fees=True).quote()
    assert decision.inputs["min_half_spread_bps"] == 0.0
    assert side_intent(decision, Side.BUY).price == 59_999.35


def test_portfolio_rebalances_to_the_target_weight() -> None:
    h = Harness(target_base_weight=0.5, rebalance_threshold=0.1)
    h.account.by_venue[VENUE] = {"BTC": 0.5, "USDT": 70_000.0}  # base weight 0.3
    first = h.quote()
    h.ack_all(first)
    h.clock.advance(1.0)
    decision = h.strategy.on_timer(h.clock())
    assert decision.action == "portfolio_rebalance"
    (order,) = decision.intents
    assert (order.side, order.type, order.price) == (Side.BUY, OrderType.IOC, ASK)
    # 0.2 of 100000 $ at the mid, floored to the lot; the displayed 5 BTC do not bind.
    assert order.qty == floor_to_step(0.2 * 100_000.025 / MID, LOT) == 0.33333
    assert decision.inputs["weight"] == pytest.approx(30_000.025 / 100_000.025)


def test_registry_builds_the_strategy_from_settings() -> None:
    from config.settings import Settings
    from strategies import STRATEGIES, build

    strategy = build("inventory-mm", Settings())
    assert isinstance(strategy, InventoryMMStrategy) and "inventory-mm" in STRATEGIES
    with pytest.raises(ValueError, match="unknown strategy"):
        build("nope", Settings())


# --- the recorded session ----------------------------------------------------------------


@pytest.fixture(scope="module")
def recording() -> list:
    if not RECORDING.is_file():
        pytest.skip(f"../shared/data not present: {RECORDING} missing")
    return load_binance_recording(RECORDING)


def run_recording(events: list, **overrides: object) -> tuple[Driver, InventoryMMStrategy,
                                                                 list[float]]:
    clock = FakeClock(events[0].local_ts_ns)
    market = FakeMarket()
    market.rolling[(VENUE, SYMBOL)] = RollingVolatility(360.0)
    account = FakeAccount({VENUE: {"BTC": 0.5, "USDT": 50_000.0}})
    strategy = InventoryMMStrategy(mm_settings(**overrides), venue_settings())
    driver = Driver(strategy, FakeExchange(account), market, account, clock)
    inventories: list[float] = []
    driver.after_event = lambda: inventories.append(strategy.inventory)
    driver.feed(events)
    return driver, strategy, inventories


@pytest.mark.parametrize("k", [K_BPS, "auto"])
def test_recorded_session_keeps_inventory_within_limits(recording: list, k: object) -> None:
    driver, _, inventories = run_recording(recording, k_bps=k)
    fills = driver.exchange.fills
    assert len(fills) > 50, "the session should trade both ways"
    assert {f.side for f in fills} == {Side.BUY, Side.SELL}
    assert max(abs(q) for q in inventories) <= 0.003 + 1e-12
    assert max(inventories) == pytest.approx(0.003) or min(inventories) == pytest.approx(-0.003)
    assert driver.actions("max_loss_exit") == []
    # Holds come from the timer only: at most one per second of the 346 s session.
    assert len(driver.actions("hold")) <= 350


def test_recorded_session_never_replaces_an_order_within_tolerance(recording: list) -> None:
    driver, strategy, _ = run_recording(recording)
    settings = strategy.settings
    placed = {i.client_order_id: i for d in driver.decisions for i in d.intents}
    evaluations = cancelled = 0
    for decision in driver.actions("quote") + driver.actions("hold"):
        evaluations += 1
        for client_order_id in decision.cancels:
            cancelled += 1
            order = placed[client_order_id]
            label = "bid" if order.side is Side.BUY else "ask"
            target_price = decision.inputs[label]
            target_qty = decision.inputs[f"{label}_qty"]
            price_ok = abs(order.price - target_price) <= settings.delta_price_bps * 1e-4 * \
                target_price
            # The strategy compares what is still open (partly filled orders shrink).
            remaining = order.qty - sum(f.qty for f in driver.exchange.fills
                                        if f.client_order_id == client_order_id
                                        and f.ts_ns <= decision.ts_ns)
            size_ok = abs(remaining - target_qty) <= settings.delta_size * target_qty + 1e-12
            # Legitimate too: the side's open orders no longer fit what the limit allows.
            fits = remaining <= decision.inputs[f"{label}_room"] + 1e-12
            assert target_qty < LOT or not (price_ok and size_ok and fits), (
                f"{client_order_id} cancelled although within tolerance: {decision}")
    assert cancelled < evaluations


def test_recorded_session_crash_triggers_the_max_loss_exit(recording: list) -> None:
    """The recorded session, then the book gaps 5 % down while we are long."""
    head = recording[:6000]
    last = next(e for e in reversed(head) if isinstance(e, Quote))
    driver, strategy, _ = run_recording(head, max_loss=5.0)
    strategy.inventory = strategy.position = 0.003  # long the limit ...
    strategy.cash = -0.003 * last.mid  # ... bought at the last mid
    crash = [Quote(VENUE, SYMBOL, last.bid * 0.95, 1.0, last.ask * 0.95, 1.0, 0,
                   last.local_ts_ns + NS * step // 10) for step in range(1, 20)]
    driver.feed(crash)
    (exit_decision,) = driver.actions("max_loss_exit")
    (flatten,) = exit_decision.intents
    # At least the 0.003 we were long; a resting bid run over by the gap adds to it.
    assert (flatten.side, flatten.type) == (Side.SELL, OrderType.MARKET)
    assert flatten.qty >= 0.003 and exit_decision.inputs["inventory"] == flatten.qty
    assert exit_decision.inputs["pnl"] < -5.0
    assert not driver.exchange.resting, "every quote was cancelled"
    after = driver.decisions[driver.decisions.index(exit_decision) + 1:]
    assert all(d.action not in ("quote", "hold") for d in after)
    assert strategy.inventory == pytest.approx(0.0, abs=1e-12)  # the market order filled


def test_recorded_session_through_the_runner_and_the_paper_executor(recording: list) -> None:
    """The real event path: StrategyRunner, PaperExecutor with 20 ms latency, post-only."""
    from config.settings import ExecutionSettings
    from daemon.core.model import Decision
    from daemon.core.records import MemorySink
    from daemon.trading.paper import PaperExecutor
    from daemon.trading.runner import StrategyRunner

    venue = VenueSettings(enabled=True, markets={SYMBOL: {"tick": TICK, "lot": LOT}},
                          balances={"BTC": 0.5, "USDT": 50_000.0})
    paper = PaperExecutor({VENUE: venue}, ExecutionSettings())
    strategy = InventoryMMStrategy(mm_settings(k_bps="auto"), venue)
    market = FakeMarket()
    market.rolling[(VENUE, SYMBOL)] = RollingVolatility(360.0)
    clock = FakeClock(recording[0].local_ts_ns)
    sink = MemorySink()
    runner = StrategyRunner(strategy, paper, sink, market, paper, clock)
    worst = 0.0
    for event in recording:
        clock.now_ns = event.local_ts_ns
        if isinstance(event, Quote):
            market.publish(event)
            runner.on_quote(event)
        else:
            runner.on_trade(event)
        worst = max(worst, abs(strategy.inventory))
    runner.advance(clock.now_ns + NS)  # let the last submits and cancels land
    assert worst <= 0.003 + 1e-12
    # k auto fitted per bps from where trades print against the quoting mid (issue 14):
    # a wider spread than the old per-$ fit gave, so fewer fills than the 50+ of before.
    assert len(sink.of_type(Fill)) > 30
    assert strategy.inventory == pytest.approx(paper.balances(VENUE)["BTC"] - 0.5, abs=1e-12)
    assert set(strategy.orders) == {o.client_order_id for o in paper.open_orders()}
    actions = {d.action for d in sink.of_type(Decision)}
    assert {"quote", "hold"} <= actions and "max_loss_exit" not in actions
