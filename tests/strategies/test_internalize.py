"""Internalize-or-hedge: decisions on constructed cases, hand-computed costs, portfolio."""

from __future__ import annotations

import bisect
import csv
import math
from pathlib import Path

import pytest

from daemon.core.model import ClientFill, Decision, Fill, OrderAck, OrderType, Quote, Side
from daemon.core.routes import Callbacks
from daemon.core.vocabulary import OrderStatus
from strategies.internalize import (
    FlowImbalance,
    InternalizeStrategy,
    optimal_hedge_qty,
    warehouse_cost,
)
from strategies.portfolio import INTERNALIZATION_CSV, PORTFOLIO_CSV, write_results

VENUE = "binance_spot"
SYMBOL = "ETH/USDT"
S = 1_000_000_000
BID, ASK, MID = 2999.0, 3001.0, 3000.0
FEE = 0.001  # 10 bps
COEFFICIENT = 0.0005  # price moves 5 bps per ETH hedged
GAMMA, HORIZON = 0.1, 300.0


class FakeMarket:
    """MarketView with settable quotes and volatility (log returns per sqrt-second)."""

    def __init__(self, sigma: float = 1e-5) -> None:
        self.sigma = sigma
        self.quotes: dict[tuple[str, str], Quote] = {}
        self.set_quote(VENUE, BID, ASK)

    def set_quote(self, venue: str, bid: float, ask: float, stale: bool = False) -> Quote:
        quote = Quote(venue, SYMBOL, bid, 10.0, ask, 10.0, 0, 0, stale=stale)
        self.quotes[(venue, SYMBOL)] = quote
        return quote

    def quote(self, exchange: str, symbol: str) -> Quote | None:
        return self.quotes.get((exchange, symbol))

    def volatility(self, exchange: str, symbol: str, window_s: float) -> float:
        return self.sigma

    def trade_rate(self, exchange: str, symbol: str, window_s: float) -> float:
        return 0.0


class DepthMarket(FakeMarket):
    """Adds depth walking: asks 3001 x 1, then 3003 x 10."""

    def walk(self, exchange: str, symbol: str, side: str, qty: float) -> float | None:
        if side != "buy" or qty > 11:
            return None
        first = min(qty, 1.0)
        return (first * 3001.0 + (qty - first) * 3003.0) / qty


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += int(seconds * S)
        return self.now


class NoAccount:
    def balances(self, venue: str) -> dict[str, float]:
        return {}


def make(market: FakeMarket | None = None, **overrides: object) -> tuple[
        InternalizeStrategy, FakeMarket, Clock]:
    params: dict[str, object] = dict(
        gamma=GAMMA, horizon_s=HORIZON, max_inventory=50.0,
        slippage_coefficient=COEFFICIENT,
        initial_balances={"ETH": 100.0, "USDT": 100_000.0}, flow_halflife_s=120.0,
    )
    params.update(overrides)
    strategy = InternalizeStrategy(SYMBOL, {VENUE: 10.0}, **params)  # type: ignore[arg-type]
    market = market or FakeMarket()
    clock = Clock()
    strategy.bind(market, NoAccount(), clock)
    return strategy, market, clock


def client(side: Side, qty: float, clock: Clock, price: float = MID) -> ClientFill:
    return ClientFill(clock.now, SYMBOL, side, qty, price, "c1", f"f{clock.now}")


# --- hand computations ------------------------------------------------------------------------


def test_hedge_cost_of_a_fill_equals_the_hand_computation() -> None:
    strategy, _, clock = make()
    decision = strategy.on_client_fill(client(Side.BUY, 2.0, clock))
    # Client bought 2 ETH: the desk re-buys 2 at ask*(1 + 0.0005*2) = 3004.001.
    # Crossing 2*(3004.001 - 3000) = 8.002; taker fee 0.001*2*3004.001 = 6.008002.
    assert decision.inputs["hedge_cost"] == pytest.approx(14.010002, abs=1e-9)
    assert decision.inputs["slippage_model"] == "formula"

    strategy, _, clock = make()
    decision = strategy.on_client_fill(client(Side.SELL, 2.0, clock))
    # Desk re-sells 2 at bid*(1 - 0.001) = 2996.001: 2*3.999 + 0.001*2*2996.001.
    assert decision.inputs["hedge_cost"] == pytest.approx(7.998 + 5.992002, abs=1e-9)


def test_warehouse_cost_equals_the_hand_computation() -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-5))
    decision = strategy.on_client_fill(client(Side.SELL, 2.0, clock))
    # sigma_price = 3000 * 1e-5 = 0.03 USDT/sqrt(s); A = 0.1 * 0.03^2 * 300 = 0.027 USDT/ETH^2.
    assert decision.inputs["sigma_price"] == pytest.approx(0.03)
    assert decision.inputs["risk_per_base2"] == pytest.approx(0.027)
    assert decision.inputs["warehouse_cost"] == pytest.approx(0.027 * 4)  # from flat: A*q^2
    assert decision.inputs["expected_offset"] == 0.0  # the only flow is this fill itself
    assert decision.action == "warehouse" and not decision.intents
    assert decision.expected == pytest.approx(0.108)


def test_chosen_partial_hedge_is_the_closed_form_optimum() -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-4))
    decision = strategy.on_client_fill(client(Side.BUY, 2.0, clock))  # desk short 2
    risk = GAMMA * (MID * 1e-4) ** 2 * HORIZON  # 2.7 USDT/ETH^2
    unit_cost = (ASK - MID) + FEE * ASK  # 4.001 USDT/ETH
    impact = (1 + FEE) * COEFFICIENT * ASK  # USDT/ETH^2
    expected_qty = (2 * risk * 2.0 - unit_cost) / (2 * (impact + risk))
    assert decision.action == "partial_hedge"
    assert decision.inputs["hedge_qty"] == pytest.approx(expected_qty)
    [intent] = decision.intents
    assert (intent.venue, intent.side, intent.type, intent.price) == (
        VENUE, Side.BUY, OrderType.IOC, ASK)
    assert intent.qty == pytest.approx(expected_qty) and intent.strategy == "internalize"
    # Cost of the chosen hedge: c*h + k*h^2 is exactly the crossing cost at the formula price.
    assert decision.inputs["hedge_cost_chosen"] == pytest.approx(
        unit_cost * expected_qty + impact * expected_qty**2)
    assert decision.inputs["target_inventory"] == pytest.approx(-2.0 + expected_qty)


def test_optimal_hedge_never_overshoots_and_honours_the_offset() -> None:
    assert optimal_hedge_qty(10.0, 1.0, 0.0, 0.0, 0.0) == 0.0
    assert optimal_hedge_qty(-10.0, 0.0, 0.0, 5.0, 0.0) == pytest.approx(10.0)
    assert optimal_hedge_qty(10.0, 0.0, 0.0, 5.0, 4.0) == pytest.approx(6.0)
    assert optimal_hedge_qty(10.0, 0.0, 0.0, 5.0, 12.0) == 0.0
    assert optimal_hedge_qty(3.0, 1.0, 1.0, math.nan, 0.0) == 3.0
    assert warehouse_cost(10.0, 2.0, -4.0) == pytest.approx(2.0 * 36)
    assert warehouse_cost(10.0, 2.0, +4.0) == pytest.approx(2.0 * 100)  # same side: no help


# --- constructed decisions --------------------------------------------------------------------


def test_a_fill_that_offsets_existing_inventory_is_warehoused() -> None:
    strategy, _, clock = make(FakeMarket(sigma=2e-5))
    first = strategy.on_client_fill(client(Side.SELL, 3.0, clock))
    assert first.action == "warehouse" and strategy.inventory == pytest.approx(3.0)
    clock.advance(30)
    second = strategy.on_client_fill(client(Side.BUY, 2.0, clock))
    assert second.action == "warehouse" and not second.intents
    assert second.inputs["inventory_before"] == pytest.approx(3.0)
    assert second.inputs["inventory_after"] == pytest.approx(1.0)
    assert second.inputs["warehouse_cost"] < 0.0  # keeping it lowers the expected risk cost
    assert strategy.inventory == pytest.approx(1.0)


def test_a_fill_past_the_inventory_limit_is_hedged_back_to_it() -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-6), max_inventory=5.0)
    assert strategy.on_client_fill(client(Side.SELL, 4.0, clock)).action == "warehouse"
    clock.advance(1)
    decision = strategy.on_client_fill(client(Side.SELL, 3.0, clock))  # inventory 7 > 5
    assert decision.action in ("hedge", "partial_hedge")
    assert decision.inputs["forced"] is True and "inventory limit" in decision.reason
    [intent] = decision.intents
    assert intent.side is Side.SELL and intent.price == BID
    assert intent.qty == pytest.approx(2.0)
    assert decision.inputs["target_inventory"] == pytest.approx(5.0)


def test_larger_sigma_shifts_decisions_toward_hedging() -> None:
    hedged, outcomes = [], []
    for sigma in (1e-6, 3e-5, 5e-5, 1e-4, 1e-3):
        market = FakeMarket(sigma=1e-7)
        strategy, _, clock = make(market)
        strategy.on_client_fill(client(Side.SELL, 3.0, clock))  # warehoused while calm
        market.sigma = sigma
        clock.advance(2)  # past the one-second volatility cache
        decision = strategy.on_client_fill(client(Side.SELL, 1.0, clock))
        hedged.append(decision.inputs["hedge_qty"])
        outcomes.append(decision.action)
    assert hedged == sorted(hedged) and hedged[0] == 0.0
    assert outcomes[0] == "warehouse" and outcomes[-1] == "hedge"
    assert "partial_hedge" in outcomes


def test_recent_opposite_flow_is_expected_to_offset_inventory() -> None:
    strategy, _, clock = make(FakeMarket(sigma=5e-5))
    strategy.on_client_fill(client(Side.SELL, 6.0, clock))  # desk long 6 (maybe part hedged)
    clock.advance(1200)  # ten half-lives: that flow is forgotten
    for _ in range(3):
        clock.advance(5)
        decision = strategy.on_client_fill(client(Side.BUY, 0.5, clock))
    assert decision.inputs["expected_flow"] < 0.0  # clients keep buying from us
    assert decision.inputs["expected_offset"] > 0.0
    assert decision.inputs["offset_value"] > 0.0
    position = decision.inputs["inventory_after"]
    risk = decision.inputs["risk_per_base2"]
    residual = position - decision.inputs["expected_offset"]
    assert decision.inputs["inventory_risk"] == pytest.approx(risk * position**2)
    assert decision.inputs["offset_value"] == pytest.approx(risk * (position**2 - residual**2))


def test_depth_walk_replaces_the_formula_when_the_view_has_depth() -> None:
    strategy, _, clock = make(DepthMarket(sigma=1e-6))
    decision = strategy.on_client_fill(client(Side.BUY, 3.0, clock))
    walked = (3001.0 + 2 * 3003.0) / 3.0
    assert decision.inputs["slippage_model"] == "depth"
    assert decision.inputs["hedge_cost"] == pytest.approx(
        3.0 * (walked - MID) + FEE * 3.0 * walked)


def test_the_cheapest_venue_is_chosen_for_the_hedge() -> None:
    market = FakeMarket(sigma=1e-3)
    market.set_quote("bybit_spot", 2998.0, 3000.5)
    strategy = InternalizeStrategy(
        SYMBOL, {VENUE: 10.0, "bybit_spot": 10.0}, gamma=GAMMA, horizon_s=HORIZON,
        max_inventory=50.0, slippage_coefficient=COEFFICIENT,
        initial_balances={"ETH": 100.0, "USDT": 100_000.0})
    clock = Clock()
    strategy.bind(market, NoAccount(), clock)
    [intent] = strategy.on_client_fill(client(Side.BUY, 2.0, clock)).intents
    assert (intent.venue, intent.price) == ("bybit_spot", 3000.5)


def test_no_fresh_quote_warehouses_within_the_limit_and_unknown_volatility_hedges_all(
) -> None:
    market = FakeMarket()
    market.set_quote(VENUE, BID, ASK, stale=True)
    strategy, _, clock = make(market)
    # Past the limit with no quote the fill is refused before it is booked (issue 13
    # item 5; this test used to show it warehoused): see the tests below.
    assert strategy.client_fill_refusal(client(Side.SELL, 80.0, clock)) is not None
    decision = strategy.on_client_fill(client(Side.SELL, 20.0, clock))  # within the limit
    assert decision.action == "warehouse" and "no fresh quote" in decision.reason
    assert math.isnan(decision.inputs["hedge_cost"])

    strategy, _, clock = make(FakeMarket(sigma=math.nan))
    decision = strategy.on_client_fill(client(Side.SELL, 2.0, clock))
    assert decision.action == "hedge" and "volatility unknown" in decision.reason
    assert decision.intents[0].qty == pytest.approx(2.0)


def test_lot_rounding_floors_optimal_hedges_and_ceils_forced_ones() -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-4), lot=0.1)
    decision = strategy.on_client_fill(client(Side.BUY, 2.0, clock))
    assert decision.intents[0].qty == pytest.approx(0.8)  # optimum ~0.81
    strategy, _, clock = make(FakeMarket(sigma=1e-7), lot=0.1, max_inventory=4.95)
    decision = strategy.on_client_fill(client(Side.SELL, 6.0, clock))
    assert decision.intents[0].qty == pytest.approx(1.1)


# --- order lifecycle, re-evaluation, kill -------------------------------------------------------


def hedge_fill(intent_id: str, side: Side, qty: float, price: float, ts: int) -> Fill:
    return Fill(intent_id, VENUE, SYMBOL, side, price, qty, FEE * qty * price, "USDT", "taker",
                ts, "internalize")


def test_pending_hedges_count_until_filled_or_expired_then_the_timer_hedges_the_rest() -> None:
    market = FakeMarket(sigma=1e-7)
    strategy, _, clock = make(market, max_inventory=5.0)
    decision = strategy.on_client_fill(client(Side.SELL, 9.0, clock))
    [intent] = decision.intents
    assert intent.qty == pytest.approx(4.0) and intent.client_order_id == ""
    intent.client_order_id = "cpabcdef-internalize-1"  # as the executor names it on submit
    assert strategy.position == pytest.approx(5.0)  # 9 held, 4 on the way out
    # Only 1 fills at the touch; the IOC expires with the rest.
    strategy.on_fill(hedge_fill(intent.client_order_id, Side.SELL, 1.0, BID, clock.now))
    assert strategy.inventory == pytest.approx(8.0) and strategy.position == pytest.approx(5.0)
    assert strategy.on_timer(clock.advance(5)) is None  # still in flight: no double hedge
    strategy.on_ack(OrderAck(intent.client_order_id, VENUE, SYMBOL, OrderStatus.EXPIRED,
                             clock.now, filled_qty=1.0))
    assert strategy.pending == [] and strategy.position == pytest.approx(8.0)
    again = strategy.on_timer(clock.advance(5))
    assert again is not None and again.inputs["trigger"] == "timer"
    assert again.intents[0].qty == pytest.approx(3.0) and again.inputs["forced"] is True
    assert again.intents[0] is not intent


def test_quotes_re_evaluate_warehoused_inventory_at_most_once_a_second() -> None:
    market = FakeMarket(sigma=1e-6)
    strategy, _, clock = make(market)
    assert strategy.on_client_fill(client(Side.SELL, 4.0, clock)).action == "warehouse"
    market.sigma = 1e-3  # the market turns wild
    clock.advance(2)
    first = strategy.on_quote(market.set_quote(VENUE, BID, ASK))
    assert first is not None and first.inputs["trigger"] == "quote" and first.intents
    strategy.on_ack(OrderAck(first.intents[0].client_order_id, VENUE, SYMBOL,
                             OrderStatus.REJECTED, clock.now))
    clock.advance(0.5)
    assert strategy.on_quote(market.set_quote(VENUE, BID, ASK)) is None  # throttled
    clock.advance(0.6)
    assert strategy.on_quote(market.set_quote(VENUE, BID, ASK)) is not None


def test_kill_switch_stops_hedging_and_can_flatten() -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-3))
    assert strategy.on_kill("daily loss") is None
    decision = strategy.on_client_fill(client(Side.SELL, 2.0, clock))
    assert decision.action == "warehouse" and "kill switch" in decision.reason
    assert not decision.intents and strategy.on_timer(clock.advance(5)) is None

    strategy, _, clock = make(FakeMarket(sigma=1e-7), flatten_on_kill=True)
    strategy.on_client_fill(client(Side.SELL, 2.0, clock))
    flatten = strategy.on_kill("daily loss")
    assert flatten is not None and flatten.intents[0].qty == pytest.approx(2.0)
    assert flatten.intents[0].side is Side.SELL


def test_flow_imbalance_decays_with_its_half_life() -> None:
    flow = FlowImbalance(halflife_s=60.0)
    flow.add(0, 6.0)
    tau = 60.0 / math.log(2)
    assert flow.rate(0) == pytest.approx(6.0 / tau)
    assert flow.rate(60 * S) == pytest.approx(3.0 / tau)
    assert flow.expected(0, 1e9) == pytest.approx(6.0)  # all of it, eventually


# --- portfolio --------------------------------------------------------------------------------


def test_portfolio_books_fills_reconciles_and_exports(tmp_path: Path) -> None:
    strategy, market, clock = make(FakeMarket(sigma=1e-4))
    decision = strategy.on_client_fill(client(Side.BUY, 2.0, clock, price=3001.5))
    [intent] = decision.intents
    fill = hedge_fill(intent.client_order_id, Side.BUY, intent.qty, ASK, clock.now)
    strategy.on_fill(fill)
    book = strategy.portfolio
    assert book.balances["ETH"] == pytest.approx(100.0 - 2.0 + intent.qty)
    assert book.balances["USDT"] == pytest.approx(
        100_000.0 + 2.0 * 3001.5 - intent.qty * ASK - fill.fee)
    assert all(abs(gap) < 1e-9 for gap in book.reconcile().values())
    # Sold 2 at 3001.5 (1.5 over the mid), marked at the mid: +3 before hedging costs.
    assert book.pnl_trading(MID) == pytest.approx(
        2.0 * 1.5 - intent.qty * (ASK - MID) - fill.fee)
    trade = book.trades[0]
    assert trade.outcome == "partial_hedge" and trade.hedge_qty == pytest.approx(intent.qty)
    # Hedging all 2 at once: re-buy at 3004.001 with fee 6.008002.
    assert trade.hedge_pnl == pytest.approx(-2.0 * (3004.001 - 3001.5) - 6.008002)

    clock.advance(HORIZON + 1)
    market.set_quote(VENUE, 2989.0, 2991.0)
    strategy.on_timer(clock.now)  # marks the portfolio: the fill's mark-out matures
    assert trade.markout_complete and trade.markout_mid == 2990.0
    assert trade.warehouse_pnl == pytest.approx(-2.0 * (2990.0 - 3001.5))
    assert trade.better_in_hindsight == "warehouse"

    trades_path, rows_path = write_results(book, tmp_path)
    assert (trades_path.name, rows_path.name) == (INTERNALIZATION_CSV, PORTFOLIO_CSV)
    with open(trades_path, newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["outcome"] == "partial_hedge" and row["better_in_hindsight"] == "warehouse"
    with open(rows_path, newline="") as handle:
        events = [r["event"] for r in csv.DictReader(handle)]
    assert events == ["client_fill", "hedge_fill", "mark"]


def test_a_hedge_refused_before_it_was_named_or_never_answered_does_not_block() -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-7), max_inventory=5.0,
                              pending_timeout_s=30.0)
    [refused] = strategy.on_client_fill(client(Side.SELL, 9.0, clock)).intents
    # The risk gate refuses it before the executor named it: the ack has the empty id.
    strategy.on_ack(OrderAck("", VENUE, SYMBOL, OrderStatus.REJECTED, clock.now))
    assert strategy.pending == [] and strategy.position == pytest.approx(9.0)
    retry = strategy.on_timer(clock.advance(5))
    assert retry is not None and retry.intents[0].qty == pytest.approx(4.0)
    retry.intents[0].client_order_id = "cpabcdef-internalize-2"
    assert strategy.on_timer(clock.advance(5)) is None  # in flight
    lost = strategy.on_timer(clock.advance(30))  # no answer for 35 s: given up on
    assert lost is not None and lost.intents[0].qty == pytest.approx(4.0)
    assert refused is not retry.intents[0]


# --- end to end on paper over the shared Binance recording ------------------------------------

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / \
    "binance_spot_btcusdt_20240808.gz"


@pytest.mark.skipif(not SHARED.is_file(), reason=f"shared recording absent: {SHARED}")
def test_end_to_end_on_paper_over_the_recorded_binance_book(tmp_path: Path) -> None:
    """Synthetic client flow around the recorded mid, hedged on paper Binance spot.

    Wiring as the daemon does it: frames -> parser -> consolidated view + ring buffer ->
    runner (paper executor sees the market first) -> strategy; client fills go through
    `runner.call`. No risk gate here (the brief's gate has its own tests).
    """
    paper = pytest.importorskip("daemon.trading.paper")
    from adapters.binance.parser import BinanceParser
    from adapters.client_flow import SyntheticFlowSource
    from adapters.recordings.replay import iter_frames
    from config.settings import ExecutionSettings, Settings, VenueSettings
    from daemon.backtest.calibrate import recorded_mids
    from daemon.core.records import MemorySink
    from daemon.market.market_view import RingMarketView
    from daemon.market.ringbuffer import RingStore
    from daemon.market.view import ConsolidatedView
    from daemon.trading.runner import StrategyRunner

    symbol = "BTC/USDT"
    settings = Settings(_env_file=None, strategies={"internalize": {
        "symbol": symbol, "gamma": 0.01, "max_inventory": 1.0, "synthetic_rate_hz": 0.5,
        "synthetic_mean_qty": 0.3, "initial_balances": {"BTC": 10.0, "USDT": 1_000_000.0},
    }}, risk={"max_order_notional": 250_000.0})  # a desk sized for BTC hedges
    strategy = InternalizeStrategy.from_settings(settings)
    venue = VenueSettings(enabled=True, taker_fee_bps=10.0,
                          balances={"BTC": 50.0, "USDT": 5_000_000.0},
                          markets={symbol: {"tick": 0.01, "lot": 0.00001}})
    executor = paper.PaperExecutor({VENUE: venue}, ExecutionSettings(), "cpe2etst")
    now = [0]

    def clock() -> int:
        return now[0]

    view, rings, sink = ConsolidatedView(), RingStore(retention_s=3600.0), MemorySink()
    runner = StrategyRunner(strategy, executor, sink, RingMarketView(view, rings, clock),
                            executor, clock)

    def on_quote(quote: Quote) -> None:
        now[0] = quote.local_ts_ns
        view.update(quote)
        rings.on_quote(quote)
        runner.on_quote(quote)

    def on_trade(trade) -> None:  # type: ignore[no-untyped-def]
        now[0] = trade.local_ts_ns
        rings.on_trade(trade)
        runner.on_trade(trade)

    times, mids = recorded_mids(SHARED, symbol)
    source = SyntheticFlowSource(symbol, 0.5, 0.3, seed=11, markup_bps=5.0)
    fills = list(source.generate(times[0], times[-1],
                                 lambda ts: mids[max(0, _index_at(times, ts))]))
    parser = BinanceParser(VENUE, Callbacks(on_quote, on_trade))
    pending = iter(fills)
    upcoming = next(pending, None)
    for ts_ns, frame, _ in iter_frames(SHARED):
        while upcoming is not None and upcoming.ts_ns <= ts_ns:
            now[0] = upcoming.ts_ns
            runner.advance(upcoming.ts_ns)
            runner.call(lambda fill=upcoming: strategy.on_client_fill(fill))
            upcoming = next(pending, None)
        parser.feed(frame, ts_ns)
    runner.advance(now[0] + 10 * S)  # the last IOCs arrive and finish

    decisions = sink.of_type(Decision)
    per_fill = [d for d in decisions if d.inputs.get("trigger") == "client_fill"]
    assert len(fills) > 100
    assert sorted(d.inputs["fill_id"] for d in per_fill) == sorted(f.fill_id for f in fills)
    outcomes = {d.action for d in per_fill}
    assert "warehouse" in outcomes and outcomes & {"hedge", "partial_hedge"}
    assert not [d for d in decisions if d.action == "reject"]
    for decision in per_fill:
        if decision.inputs["hedge_venue"]:
            assert abs(decision.inputs["target_inventory"]) <= 1.0 + 1e-9

    # Reconcile from the raw records, independently of the portfolio's own ledgers.
    hedge_fills = [f for f in sink.of_type(Fill) if f.strategy == "internalize"]
    assert hedge_fills and all(f.fee_asset == "USDT" for f in hedge_fills)
    client_base = sum(f.desk_base_delta for f in fills)
    client_quote = -sum(f.desk_base_delta * f.price for f in fills)
    hedge_base = sum(f.qty if f.side is Side.BUY else -f.qty for f in hedge_fills)
    hedge_quote = -sum((f.qty if f.side is Side.BUY else -f.qty) * f.price for f in hedge_fills)
    fees = sum(f.fee for f in hedge_fills)
    book = strategy.portfolio
    assert book.balances["BTC"] == pytest.approx(10.0 + client_base + hedge_base, abs=1e-9)
    assert book.balances["USDT"] == pytest.approx(
        1_000_000.0 + client_quote + hedge_quote - fees, abs=1e-6)
    venue_balances = executor.balances(VENUE)
    assert venue_balances["BTC"] == pytest.approx(50.0 + hedge_base, abs=1e-9)
    assert venue_balances["USDT"] == pytest.approx(5_000_000.0 + hedge_quote - fees, abs=1e-6)
    assert all(abs(gap) < 1e-6 for gap in book.reconcile().values())
    assert strategy.pending == [] and abs(strategy.inventory) <= 1.0 + 0.5

    trades_path, rows_path = write_results(book, tmp_path)
    with open(trades_path, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(fills)
    with open(rows_path, newline="") as handle:
        events = [row["event"] for row in csv.DictReader(handle)]
    assert events.count("client_fill") == len(fills)
    assert events.count("hedge_fill") == len(hedge_fills)


def _index_at(times: list[int], ts_ns: int) -> int:
    return bisect.bisect_right(times, ts_ns) - 1


def test_from_settings_takes_fee_lot_and_limits_from_the_configuration() -> None:
    from config.settings import Settings

    settings = Settings(_env_file=None, strategies={"internalize": {
        "symbol": "BTC/USDT", "gamma": 0.5, "max_inventory": 3.0}})
    strategy = InternalizeStrategy.from_settings(settings)
    assert (strategy.symbol, strategy.gamma, strategy.max_inventory) == ("BTC/USDT", 0.5, 3.0)
    assert strategy.lot == 0.00001  # config/default.toml: binance_spot BTC/USDT lot
    assert strategy.timer_interval_s == 5.0
    assert strategy.portfolio.initial_balances == {"ETH": 100.0, "USDT": 100_000.0}
    with pytest.raises(ValueError, match="not a configured venue"):
        InternalizeStrategy.from_settings(Settings(
            _env_file=None, strategies={"internalize": {"venue": "kraken_x"}}))


def test_hedges_are_capped_at_the_max_order_notional_and_the_rest_follows() -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-7), max_inventory=5.0, lot=0.001,
                              max_order_notional=6_000.0)
    decision = strategy.on_client_fill(client(Side.SELL, 9.0, clock))  # 4 to hedge
    [first] = decision.intents
    assert first.qty == pytest.approx(2.0) and first.qty * first.price <= 6_000.0
    assert "capped" in decision.reason
    first.client_order_id = "cpabcdef-internalize-1"
    strategy.on_fill(hedge_fill(first.client_order_id, Side.SELL, 2.0, BID, clock.now))
    [second] = strategy.on_timer(clock.advance(5)).intents  # type: ignore[union-attr]
    assert second.qty == pytest.approx(2.0) and strategy.position == pytest.approx(5.0)


# --- issue 13 item 5: past max_inventory with no mid: refused, never warehoused ---------------


def test_a_fill_past_the_limit_without_a_fresh_quote_is_refused() -> None:
    market = FakeMarket()
    strategy, _, clock = make(market, max_inventory=5.0)
    past = client(Side.SELL, 8.0, clock)  # desk long 8 > 5
    assert strategy.client_fill_refusal(past) is None  # a fresh quote: hedged back instead
    market.set_quote(VENUE, BID, ASK, stale=True)
    reason = strategy.client_fill_refusal(past)
    assert reason is not None and "inventory limit 5" in reason and "no fresh quote" in reason
    assert strategy.client_fill_refusal(client(Side.SELL, 5.0, clock)) is None  # at the limit
    # Fills already queued ahead count: 3 queued + 3 more = 6 > 5.
    assert strategy.client_fill_refusal(client(Side.SELL, 3.0, clock)) is None
    assert strategy.client_fill_refusal(client(Side.SELL, 3.0, clock),
                                        queued_desk_delta=3.0) is not None
    market.quotes.clear()  # no quote at all: the same
    assert strategy.client_fill_refusal(past) is not None


def test_a_fill_that_reduces_inventory_is_never_refused() -> None:
    market = FakeMarket()
    strategy, _, clock = make(FakeMarket(sigma=1e-9), max_inventory=5.0)
    strategy.bind(market, NoAccount(), clock)
    strategy.on_client_fill(client(Side.SELL, 4.0, clock))  # desk long 4, warehoused
    market.set_quote(VENUE, BID, ASK, stale=True)
    assert strategy.client_fill_refusal(client(Side.BUY, 9.0, clock)) is None  # 4 -> -5
    assert strategy.client_fill_refusal(client(Side.BUY, 9.5, clock)) is not None  # -> -5.5


def test_the_runner_books_a_refused_fill_nowhere_and_logs_the_refusal() -> None:
    """Through the runner and the risk gate, as every mode delivers client fills."""
    from config.settings import ExecutionSettings, RiskSettings, VenueSettings
    from daemon.core.records import MemorySink
    from daemon.trading.gate import GatedExecutor
    from daemon.trading.paper import PaperExecutor
    from daemon.trading.risk import RiskGate
    from daemon.trading.runner import StrategyRunner

    market = FakeMarket()
    market.set_quote(VENUE, BID, ASK, stale=True)
    strategy, _, clock = make(market, max_inventory=5.0)
    venue = VenueSettings(enabled=True, balances={"ETH": 100.0, "USDT": 1e6},
                          markets={SYMBOL: {"tick": 0.01, "lot": 0.001}})
    paper = PaperExecutor({VENUE: venue}, ExecutionSettings(), "cptestaa")
    gate = RiskGate(RiskSettings())
    sink = MemorySink()
    gated = GatedExecutor(paper, gate, sink=sink)
    runner = StrategyRunner(strategy, gated, sink, market, gated, clock)
    runner.on_client_fill(client(Side.SELL, 3.0, clock))  # within the limit: booked
    runner.on_client_fill(client(Side.SELL, 8.0, clock))  # 11 > 5, no quote: refused
    assert gate.position("ETH") == pytest.approx(3.0)
    assert strategy.inventory == pytest.approx(3.0)
    decisions = sink.of_type(Decision)
    assert [d.action for d in decisions] == ["warehouse", "reject"]
    refused = decisions[-1]
    assert "client fill refused" in refused.reason and "inventory limit 5" in refused.reason
    assert refused.inputs["refused_qty"] == 8.0 and "client_qty" not in refused.inputs
    assert not refused.intents


async def test_the_ingest_endpoint_answers_a_refused_fill_with_an_error() -> None:
    import asyncio

    import orjson
    from websockets.asyncio.client import connect

    from adapters.client_flow import WebSocketFlowSource, run_flow

    market = FakeMarket()
    market.set_quote(VENUE, BID, ASK, stale=True)
    strategy, _, clock = make(market, max_inventory=5.0)
    source = WebSocketFlowSource(SYMBOL, "tok", port=0, clock=clock,
                                 admit=strategy.client_fill_refusal)
    await source.start()
    received: list[ClientFill] = []
    try:
        url = f"ws://127.0.0.1:{source.port}/flow"
        async with connect(url, additional_headers={"Authorization": "Bearer tok"}) as ws:
            replies = []
            for qty in (3.0, 3.0, 1.0):  # the second would make 6 with the first still queued
                await ws.send(orjson.dumps({"side": "sell", "qty": qty, "price": MID}))
                replies.append(orjson.loads(await ws.recv()))
    finally:
        await source.stop()
    await asyncio.wait_for(run_flow(source, received.append), 5)
    assert [r["ok"] for r in replies] == [True, False, True]
    assert "inventory limit 5" in replies[1]["error"]
    assert [f.qty for f in received] == [3.0, 1.0] and source.rejected["refused"] == 1


# --- hedge prices are fills; the baseline is the always-hedge twin (issue 14, item 10) --------


def read_trades(path: Path) -> list[dict[str, str]]:
    with open(path / INTERNALIZATION_CSV, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_results_csv_shows_the_hedge_fills_price_not_the_formulas(tmp_path: Path) -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-4))
    decision = strategy.on_client_fill(client(Side.BUY, 2.0, clock, price=3001.5))
    [intent] = decision.intents
    intent.client_order_id = "h1"  # the runner names it before it is sent
    # The executor fills the hedge in two pieces, walking the asks: 60% at 3001, the rest
    # at 3002. The formula would have had it all at ask * (1 + 0.0005 * 2) = 3004.001.
    first, second = round(intent.qty * 0.6, 9), intent.qty - round(intent.qty * 0.6, 9)
    strategy.on_fill(hedge_fill("h1", Side.BUY, first, 3001.0, clock.now))
    strategy.on_fill(hedge_fill("h1", Side.BUY, second, 3002.0, clock.now))
    strategy.write_exports(tmp_path)
    [row] = read_trades(tmp_path)
    vwap = (first * 3001.0 + second * 3002.0) / intent.qty
    assert float(row["hedge_price"]) == pytest.approx(vwap)
    assert float(row["hedge_filled_qty"]) == pytest.approx(intent.qty)
    assert float(row["hedge_fee"]) == pytest.approx(FEE * (first * 3001.0 + second * 3002.0))
    # The estimate the strategy decided on stays, by its own name.
    assert float(row["expected_hedge_price"]) == pytest.approx(3004.001)
    assert float(row["expected_hedge_fee"]) == pytest.approx(6.008002)


def test_always_hedge_policy_offsets_the_whole_inventory_at_once() -> None:
    strategy, _, clock = make(FakeMarket(sigma=1e-9), policy="always_hedge")
    decision = strategy.on_client_fill(client(Side.SELL, 2.0, clock))
    assert decision.action == "hedge" and decision.intents[0].qty == pytest.approx(2.0)
    assert decision.intents[0].side is Side.SELL
    decision.intents[0].client_order_id = "h1"
    strategy.on_fill(hedge_fill("h1", Side.SELL, 0.5, BID, clock.now))  # IOC: 1.5 expire
    strategy.on_ack(OrderAck("h1", VENUE, SYMBOL, OrderStatus.EXPIRED, clock.now))
    later = strategy.on_timer(clock.advance(5))
    assert later is not None and later.intents[0].qty == pytest.approx(1.5)
    with pytest.raises(ValueError, match="policy"):
        make(policy="sometimes")


def test_hedge_at_once_is_priced_by_the_always_hedge_twins_fill(tmp_path: Path) -> None:
    market = FakeMarket(sigma=1e-9)  # no risk: the strategy warehouses everything
    strategy, _, clock = make(market)
    twin = InternalizeStrategy(SYMBOL, {VENUE: 10.0}, gamma=GAMMA, horizon_s=HORIZON,
                               max_inventory=50.0, slippage_coefficient=COEFFICIENT,
                               initial_balances={"ETH": 100.0, "USDT": 100_000.0},
                               policy="always_hedge", name="internalize.always-hedge")
    twin.bind(market, NoAccount(), clock)
    strategy.baseline = twin
    fill = client(Side.BUY, 2.0, clock, price=3001.5)
    assert strategy.on_client_fill(fill).action == "warehouse"
    [intent] = twin.on_client_fill(fill).intents
    intent.client_order_id = "t1"
    twin.on_fill(hedge_fill("t1", Side.BUY, 2.0, 3001.25, clock.now))
    strategy.write_exports(tmp_path)
    [row] = read_trades(tmp_path)
    assert row["outcome"] == "warehouse" and row["hedge_price"] == "nan"
    assert row["always_hedge_source"] == "always_hedge"
    assert float(row["always_hedge_price"]) == 3001.25
    fee = FEE * 2.0 * 3001.25
    assert float(row["always_hedge_fee"]) == pytest.approx(fee)
    # The desk sold 2 at 3001.5; hedging at once re-buys them at the twin's 3001.25.
    assert float(row["hedge_pnl"]) == pytest.approx(2.0 * (3001.5 - 3001.25) - fee)


def test_the_twin_is_built_only_when_there_is_something_to_compare() -> None:
    from config.settings import load_settings

    def built(**internalize: object) -> InternalizeStrategy:
        settings = load_settings({"strategies": {"internalize": internalize}}, env_file=None)
        return InternalizeStrategy.from_settings(settings)

    strategy = built()
    assert strategy.policy == "optimal" and strategy.baseline is not None
    assert strategy.baseline.policy == "always_hedge"
    assert strategy.baseline.name == "internalize.always-hedge"
    assert strategy.baseline.baseline is None
    assert built(always_hedge_baseline=False).baseline is None
    assert built(policy="always_hedge").baseline is None  # it is its own baseline
