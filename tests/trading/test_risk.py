"""Risk gate limits, the gated executor, and the kill switch (loss limit, flag file, SIGUSR1)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from config.settings import ExecutionSettings, RiskSettings, VenueSettings
from daemon.core.model import (
    ClientFill,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Quote,
    Side,
)
from daemon.core.records import MemorySink
from daemon.core.vocabulary import OrderStatus
from daemon.trading.gate import KILL_STRATEGY, GatedExecutor
from daemon.trading.killswitch import KillSwitch
from daemon.trading.order_ids import run_prefix
from daemon.trading.paper import PaperExecutor
from daemon.trading.risk import RiskGate, rejection_decision

MS = 1_000_000
S = 1_000 * MS
T0 = 1_723_161_254_000 * MS
VENUE = "binance_spot"
SYMBOL = "BTC/USDT"


def risk(**overrides: object) -> RiskSettings:
    values: dict[str, object] = {
        "max_order_notional": 1_000.0,
        "max_position": {"BTC": 0.5, "*": 1_000.0},
        "max_open_orders": 3,
        "price_collar_bps": 50.0,
        "stale_quote_s": 2.0,
        "max_orders_per_s": 5.0,
        "daily_loss_limit": 100.0,
    }
    values.update(overrides)
    return RiskSettings(**values)  # type: ignore[arg-type]


def quote(t_s: float, bid: float = 999.0, ask: float = 1_001.0, qty: float = 10.0,
          stale: bool = False) -> Quote:
    ts = T0 + int(t_s * S)
    return Quote(VENUE, SYMBOL, bid, qty, ask, qty, ts, ts, stale=stale)


def intent(side: Side = Side.BUY, qty: float = 0.1, price: float | None = 1_000.0,
           kind: OrderType = OrderType.LIMIT, cid: str = "") -> OrderIntent:
    return OrderIntent(VENUE, SYMBOL, side, kind, qty, price, client_order_id=cid,
                       strategy="mm")


def fill(side: Side, qty: float, price: float, t_s: float = 0.0, cid: str = "x",
         fee: float = 0.0) -> Fill:
    return Fill(cid, VENUE, SYMBOL, side, price, qty, fee, "USDT", "taker", T0 + int(t_s * S))


def at(t_s: float) -> int:
    return T0 + int(t_s * S)


# --- each limit ---------------------------------------------------------------------------


def test_stale_quote_guard_rejects_missing_flagged_and_old_quotes() -> None:
    gate = RiskGate(risk())
    assert gate.check(intent(), at(0)).startswith("stale quote: no quote")  # type: ignore[union-attr]
    gate.on_quote(quote(0, stale=True))
    assert "flagged stale" in (gate.check(intent(), at(0)) or "")
    gate.on_quote(quote(0))
    assert gate.check(intent(), at(1.9)) is None
    reason = gate.check(intent(), at(2.5))
    assert reason is not None and reason.startswith("stale quote:") and "2.5 s old" in reason


def test_orders_on_a_synthetic_market_are_refused_even_with_a_fresh_quote() -> None:
    # A cross rate (daemon/market/synthetic.py) is priced from its legs and has no book.
    gate = RiskGate(risk())
    cross = Quote("synthetic", "ETH/BTC", 0.0529, 5.0, 0.0530, 5.0, at(0), at(0))
    gate.on_quote(cross)
    order = OrderIntent("synthetic", "ETH/BTC", Side.BUY, OrderType.LIMIT, 0.1, 0.053,
                        strategy="mm")
    reason = gate.check(order, at(0))
    assert reason is not None and reason.startswith("synthetic market:")
    assert "synthetic ETH/BTC" in reason and "legs" in reason


def test_price_collar_rejects_prices_too_far_from_mid() -> None:
    gate = RiskGate(risk())
    gate.on_quote(quote(0))  # mid 1000, collar 50 bps = 5.0
    assert gate.check(intent(price=1_004.9), at(0)) is None
    reason = gate.check(intent(price=1_005.5), at(0))
    assert reason is not None and reason.startswith("price collar:") and "55.0 bps" in reason
    assert (gate.check(intent(Side.SELL, price=994.0), at(0)) or "").startswith("price collar:")
    assert gate.check(intent(kind=OrderType.MARKET, price=None), at(0)) is None


def test_max_order_notional_uses_the_limit_price_or_mid_for_market_orders() -> None:
    gate = RiskGate(risk(max_position={"*": 10.0}))
    gate.on_quote(quote(0))
    assert gate.check(intent(qty=1.0, price=1_000.0), at(0)) is None
    reason = gate.check(intent(qty=1.01, price=1_000.0), at(0))
    assert reason == "max order notional: 1,010.00 > 1,000.00"
    market = intent(qty=1.2, price=None, kind=OrderType.MARKET)
    assert (gate.check(market, at(0)) or "").startswith("max order notional: 1,200.00")


def test_max_position_counts_open_orders_and_lets_reducing_orders_through() -> None:
    gate = RiskGate(risk(max_order_notional=10_000.0, max_open_orders=10))
    gate.on_quote(quote(0))
    first = intent(qty=0.3, cid="a")
    assert gate.check(first, at(0)) is None
    gate.on_submitted(first)
    reason = gate.check(intent(qty=0.3, cid="b"), at(0))  # 0.3 open + 0.3 > 0.5
    assert reason is not None and reason.startswith("max position: BTC would reach +0.6")
    gate.on_fill(fill(Side.BUY, 0.3, 1_000.0, cid="a"))
    gate.on_ack(OrderAck("a", VENUE, SYMBOL, OrderStatus.FILLED, at(0), filled_qty=0.3))
    assert gate.position("BTC") == pytest.approx(0.3)
    assert gate.check(intent(qty=0.2), at(0)) is None
    assert (gate.check(intent(qty=0.25), at(0)) or "").startswith("max position")
    # Past the limit (say, after a fill of a big order), selling still works.
    gate.on_fill(fill(Side.BUY, 0.4, 1_000.0))
    assert gate.check(intent(Side.SELL, qty=0.1), at(0)) is None
    assert (gate.check(intent(Side.BUY, qty=0.01), at(0)) or "").startswith("max position")


def test_max_open_orders_counts_until_terminal_acks() -> None:
    gate = RiskGate(risk(max_orders_per_s=100.0))
    gate.on_quote(quote(0))
    for cid in ("a", "b", "c"):
        order = intent(qty=0.01, cid=cid)
        assert gate.check(order, at(0)) is None
        gate.on_submitted(order)
    assert gate.check(intent(qty=0.01), at(0)) == "max open orders: 3 open (limit 3)"
    gate.on_ack(OrderAck("b", VENUE, SYMBOL, OrderStatus.NEW, at(0)))  # still open
    assert gate.check(intent(qty=0.01), at(0)) is not None
    gate.on_ack(OrderAck("b", VENUE, SYMBOL, OrderStatus.CANCELED, at(0)))
    assert gate.check(intent(qty=0.01), at(0)) is None


def test_order_rate_is_a_token_bucket_on_the_feed_clock() -> None:
    gate = RiskGate(risk(max_open_orders=100))
    gate.on_quote(quote(0))
    results = [gate.check(intent(qty=0.01), at(0.5)) for _ in range(6)]
    assert results[:5] == [None] * 5
    assert results[5] == "order rate: more than 5 orders/s"
    assert gate.check(intent(qty=0.01), at(0.6)) is not None  # 0.1 s: half a token
    assert gate.check(intent(qty=0.01), at(0.7)) is None  # 0.2 s: one token
    assert gate.check(intent(qty=0.01), at(0.7)) is not None
    assert [gate.check(intent(qty=0.01), at(2.0)) for _ in range(6)].count(None) == 5


def test_daily_loss_limit_counts_realised_and_unrealised_and_resets_next_day() -> None:
    gate = RiskGate(risk(max_order_notional=100_000.0))
    gate.on_quote(quote(0))
    gate.on_fill(fill(Side.BUY, 1.0, 1_000.0, fee=1.0))  # marked at mid 1000: -1 fee
    assert gate.daily_pnl(at(0)) == pytest.approx(-1.0)
    assert gate.on_quote(quote(1, bid=950.0, ask=952.0)) is None  # -49 - 1
    assert gate.daily_pnl(at(1)) == pytest.approx(-50.0)
    breach = gate.on_quote(quote(2, bid=900.0, ask=902.0))  # -99 - 1 = -100
    assert breach == "daily loss limit: P&L -100.00 <= -100.00"
    assert gate.check(intent(price=901.0), at(2)) == breach
    # Realised: sell at 900.  P&L since start stays -100; a new UTC day starts from there.
    gate.on_fill(fill(Side.SELL, 1.0, 901.0, t_s=2))
    assert gate.pnl() == pytest.approx(-100.0)
    next_day = T0 - T0 % (86_400 * S) + 86_400 * S + 1
    gate.on_quote(Quote(VENUE, SYMBOL, 900.0, 1.0, 902.0, 1.0, next_day, next_day))
    assert gate.daily_pnl(next_day) == pytest.approx(0.0)
    assert gate.check(OrderIntent(VENUE, SYMBOL, Side.BUY, OrderType.LIMIT, 0.1, 901.0),
                      next_day) is None


def test_rejection_decision_records_the_intent_without_counting_as_taken() -> None:
    order = intent(cid="cpabcdef-mm-7")
    decision = rejection_decision(order, "price collar: too far", at(3))
    assert isinstance(decision, Decision)
    assert (decision.strategy, decision.action, decision.reason, decision.ts_ns) == (
        "mm", "reject", "price collar: too far", at(3))
    assert decision.inputs["client_order_id"] == "cpabcdef-mm-7"
    assert not decision.taken


# --- the gated executor and the kill switch -------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.acks: list[OrderAck] = []
        self.fills: list[Fill] = []

    def on_ack(self, ack: OrderAck) -> None:
        self.acks.append(ack)

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)


def gated(settings: RiskSettings | None = None, poll_interval_s: float = 1.0
          ) -> tuple[GatedExecutor, PaperExecutor, Recorder, MemorySink]:
    venue = VenueSettings(enabled=True, balances={"BTC": 1.0, "USDT": 100_000.0},
                          markets={SYMBOL: {"tick": 0.01, "lot": 0.0001}})
    paper = PaperExecutor({VENUE: venue}, ExecutionSettings(), run_prefix("risk-test"))
    settings = settings or risk()
    switch = KillSwitch(settings, clock=lambda: paper.now_ns, poll_interval_s=poll_interval_s)
    sink = MemorySink()
    executor = GatedExecutor(paper, RiskGate(settings), switch, sink)
    recorder = Recorder()
    executor.listener = recorder
    return executor, paper, recorder, sink


def test_a_refused_intent_never_reaches_the_executor_and_is_recorded() -> None:
    executor, paper, seen, sink = gated()
    executor.on_quote(quote(0))
    order = intent(price=1_100.0)
    reason = executor.submit(order, at(0))
    assert reason is not None and reason.startswith("price collar:")
    assert paper.open_orders() == []
    assert [(a.client_order_id, a.status, a.reason) for a in seen.acks] == [
        (order.client_order_id, OrderStatus.REJECTED, reason)]
    (decision,) = sink.of_type(Decision)
    assert (decision.action, decision.reason) == ("reject", reason)
    assert order.client_order_id.startswith(run_prefix("risk-test"))


def test_kill_switch_cancels_everything_and_refuses_further_intents() -> None:
    executor, paper, seen, _ = gated()
    executor.on_quote(quote(0))
    resting = [intent(qty=0.1, price=998.0 - i) for i in range(2)]
    for order in resting:
        assert executor.submit(order, at(0)) is None
    executor.advance(at(0.05))
    in_flight = intent(qty=0.1, price=997.0)
    assert executor.submit(in_flight, at(0.05)) is None
    assert executor.kill_switch.fire("operator said so", at(0.06))
    assert not executor.kill_switch.fire("again", at(0.07))  # first reason wins
    executor.advance(at(0.2))
    assert paper.open_orders() == []
    for order in (*resting, in_flight):
        assert [a.status for a in seen.acks if a.client_order_id == order.client_order_id][-1] \
            is OrderStatus.CANCELED
    assert executor.kill_switch.active
    assert executor.submit(intent(qty=0.1, price=999.0), at(0.3)) == \
        "kill switch: operator said so"


def test_a_loss_limit_breach_fires_the_kill_switch() -> None:
    executor, paper, seen, _ = gated(risk(max_order_notional=100_000.0,
                                          max_position={"*": 10.0}))
    executor.on_quote(quote(0, bid=999.0, ask=1_001.0, qty=10.0))
    assert executor.submit(intent(qty=1.0, price=None, kind=OrderType.MARKET), at(0)) is None
    executor.on_quote(quote(0.1))  # arrival: bought 1 BTC at 1001 (+1.00 fee)
    assert [f.price for f in seen.fills] == [1_001.0]
    resting = intent(qty=0.1, price=998.0)
    assert executor.submit(resting, at(0.1)) is None
    executor.advance(at(0.2))
    assert not executor.kill_switch.active
    executor.on_quote(quote(0.3, bid=900.0, ask=902.0))  # mid 901: -100 - 1.001 fee
    assert executor.kill_switch.active
    assert executor.kill_switch.reason.startswith("daily loss limit: P&L -101.")
    executor.advance(at(0.5))
    assert paper.open_orders() == []
    assert executor.submit(intent(qty=0.1, price=901.0), at(0.6)).startswith(  # type: ignore[union-attr]
        "kill switch: daily loss limit")


def test_flatten_on_kill_sends_market_orders_that_undo_the_position() -> None:
    executor, paper, seen, sink = gated(risk(flatten_on_kill=True))
    executor.on_quote(quote(0))
    executor.submit(intent(qty=0.3, price=None, kind=OrderType.MARKET), at(0))
    executor.advance(at(0.05))
    assert executor.gate.position("BTC") == pytest.approx(0.3)
    executor.kill_switch.fire("test", at(0.1))
    executor.advance(at(0.2))
    flatten = [f for f in seen.fills if f.strategy == KILL_STRATEGY]
    assert [(f.side, f.qty, f.price) for f in flatten] == [(Side.SELL, 0.3, 999.0)]
    assert executor.gate.position("BTC") == pytest.approx(0.0)
    assert paper.balances(VENUE)["BTC"] == pytest.approx(1.0)
    assert any(isinstance(r, OrderIntent) and r.strategy == KILL_STRATEGY for r in sink.records)


def test_flag_file_fires_the_kill_switch_on_the_next_poll(tmp_path: Path) -> None:
    flag = tmp_path / "STOP"
    executor, paper, _, _ = gated(risk(kill_switch_file=flag), poll_interval_s=1.0)
    executor.on_quote(quote(0))
    executor.submit(intent(qty=0.1, price=998.0), at(0))
    executor.advance(at(0.5))
    flag.write_text("stop")
    executor.on_quote(quote(0.9))  # polled at 0 s: next poll due at 1 s
    assert not executor.kill_switch.active
    executor.on_quote(quote(1.0))
    assert executor.kill_switch.active
    assert executor.kill_switch.reason == f"flag file {flag} present"
    executor.advance(at(1.1))
    assert paper.open_orders() == []


async def test_flag_file_watch_task_fires_on_the_wall_clock(tmp_path: Path) -> None:
    flag = tmp_path / "STOP"
    switch = KillSwitch(risk(kill_switch_file=flag))
    watcher = asyncio.create_task(switch.watch(interval_s=0.005))
    await asyncio.sleep(0.01)
    assert not switch.active
    flag.touch()
    await asyncio.wait_for(watcher, 1.0)
    assert switch.active


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
async def test_sigusr1_fires_the_kill_switch() -> None:
    executor, paper, _, _ = gated()
    executor.on_quote(quote(0))
    executor.submit(intent(qty=0.1, price=998.0), at(0))
    executor.advance(at(0.05))
    fired = asyncio.Event()
    executor.kill_switch.on_fire(lambda why, now: fired.set())
    assert executor.kill_switch.install_signal_handler()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(fired.wait(), 1.0)
    finally:
        executor.kill_switch.remove_signal_handler()
    assert executor.kill_switch.reason == "SIGUSR1 received"
    executor.advance(at(0.2))
    assert paper.open_orders() == []


def test_a_failing_kill_handler_does_not_stop_the_others() -> None:
    switch = KillSwitch(risk())
    calls: list[str] = []

    def broken(why: str, now: int) -> None:
        raise RuntimeError("boom")

    switch.on_fire(broken)
    switch.on_fire(lambda why, now: calls.append(why))
    switch.fire("x", 1)
    assert calls == ["x"]
    late: list[str] = []
    switch.on_fire(lambda why, now: late.append(why))  # registered after firing: runs at once
    assert late == ["x"]


def test_a_fee_in_a_third_asset_is_priced_at_its_market_or_set_aside() -> None:
    """A BNB fee is worth BNB/USDT's mid in USDT, not its face value; with no BNB market
    it is kept out of the P&L and accounted as unpriced."""
    def bnb_fill(fee: float) -> Fill:
        return Fill("c1", VENUE, SYMBOL, Side.BUY, 1_000.0, 1.0, fee, "BNB", "taker", at(0))

    blind = RiskGate(risk(max_order_notional=100_000.0))
    blind.on_quote(quote(0))
    blind.on_fill(bnb_fill(0.01))
    assert blind.daily_pnl(at(0)) == pytest.approx(0.0)
    assert blind.unpriced_fees == {"BNB": pytest.approx(0.01)}

    priced = RiskGate(risk(max_order_notional=100_000.0))
    priced.on_quote(quote(0))
    priced.on_quote(Quote(VENUE, "BNB/USDT", 499.0, 1.0, 501.0, 1.0, at(0), at(0)))
    priced.on_fill(bnb_fill(0.01))
    assert priced.daily_pnl(at(0)) == pytest.approx(-5.0)  # 0.01 BNB x 500
    assert not priced.unpriced_fees


def test_client_fills_count_in_positions_and_pnl_so_their_hedge_passes() -> None:
    """A client buys 2 BTC from the desk (desk short 2); the hedge buy of 2 brings the desk
    back to flat, so a 1 BTC position limit lets it through, and a price move afterwards
    is no loss: the client trade and the hedge offset. A flatten has no client venue."""
    gate = RiskGate(risk(max_order_notional=100_000.0, max_position={"BTC": 1.0}))
    gate.on_quote(quote(0))
    assert gate.check(intent(Side.BUY, qty=2.0), at(0)).startswith("max position:")

    client = ClientFill(at(0), SYMBOL, Side.BUY, 2.0, 1_010.0, "c", "f1")
    assert gate.on_client_fill(client) is None
    assert gate.position("BTC") == pytest.approx(-2.0)
    assert gate.daily_pnl(at(0)) == pytest.approx(20.0)  # sold 2 at 1010, marked at 1000

    hedge = intent(Side.BUY, qty=2.0, price=1_001.0, cid="h1")
    assert gate.check(hedge, at(0)) is None
    gate.on_submitted(hedge)
    gate.on_fill(fill(Side.BUY, 2.0, 1_001.0, cid="h1"))
    assert gate.position("BTC") == pytest.approx(0.0)
    gate.on_quote(quote(1, bid=899.0, ask=901.0))  # -100: flat, so no loss
    assert gate.daily_pnl(at(1)) == pytest.approx(18.0)
    assert gate.market_positions() == {(VENUE, SYMBOL): pytest.approx(2.0)}


# --- issue 13 item 5: a non-finite number is a breach -----------------------------------------


@pytest.mark.parametrize(
    "book",
    [
        lambda gate: gate.on_fill(fill(Side.BUY, 0.1, float("nan"))),  # P&L NaN
        lambda gate: gate.on_fill(fill(Side.BUY, 0.1, float("inf"))),  # P&L -inf
        lambda gate: gate.on_client_fill(  # a position of 1e308: its value overflows
            ClientFill(at(0), SYMBOL, Side.SELL, 1e308, 1_000.0, "c", "f1")),
        lambda gate: gate.on_fill(fill(Side.BUY, float("inf"), 1_000.0)),  # position inf
    ],
    ids=["pnl-nan", "pnl-minus-inf", "position-1e308", "position-inf"],
)
def test_a_non_finite_pnl_or_position_is_a_breach(book: object) -> None:
    gate = RiskGate(risk())
    gate.on_quote(quote(0))
    breach = book(gate)  # type: ignore[operator]
    assert breach is not None and "non-finite" in breach
    assert gate.check(intent(side=Side.SELL, qty=0.01, price=1_000.0), at(0.1)) == breach
    tomorrow = 86_400.0
    gate.on_quote(quote(tomorrow))
    assert gate.check(intent(side=Side.SELL, qty=0.01, price=1_000.0), at(tomorrow)) == breach


def test_a_non_finite_mark_on_a_quote_is_a_breach() -> None:
    gate = RiskGate(risk())
    gate.on_quote(quote(0))
    assert gate.on_fill(fill(Side.BUY, 0.1, 1_000.0)) is None
    breach = gate.on_quote(quote(0.1, bid=float("inf"), ask=float("inf")))  # P&L +inf
    assert breach is not None and "non-finite" in breach


def test_a_non_finite_client_fill_fires_the_kill_switch() -> None:
    executor, paper, _, _ = gated()
    executor.on_quote(quote(0))
    assert executor.submit(intent(qty=0.1, price=998.0), at(0)) is None
    executor.on_client_fill(ClientFill(at(0.1), SYMBOL, Side.BUY, 1e308, 1_000.0, "c", "f"))
    assert executor.kill_switch.active and "non-finite" in executor.kill_switch.reason
    executor.advance(at(0.2))
    assert paper.open_orders() == []


def test_the_kill_switch_does_not_cancel_its_own_flatten_orders() -> None:
    """Live, a venue acks an order before it fills: an order acked while the switch is on is
    cancelled (it was sent before the switch fired), but not the flatten the gate sent."""
    executor, paper, _, _ = gated(risk(flatten_on_kill=True))
    executor.on_quote(quote(0))
    executor.submit(intent(qty=0.3, price=None, kind=OrderType.MARKET), at(0))
    executor.advance(at(0.05))
    cancelled: list[str] = []
    paper_cancel = paper.cancel
    paper.cancel = lambda order_id, now_ns: (cancelled.append(order_id),  # type: ignore[method-assign]
                                             paper_cancel(order_id, now_ns))
    executor.kill_switch.fire("test", at(0.1))
    (flatten,) = [o for o in paper.open_orders() if o.strategy == KILL_STRATEGY]
    executor.on_ack(OrderAck(flatten.client_order_id, VENUE, SYMBOL, OrderStatus.NEW, at(0.12)))
    assert flatten.client_order_id not in cancelled
    late = OrderAck("sent-before-the-kill", VENUE, SYMBOL, OrderStatus.NEW, at(0.12))
    executor.on_ack(late)
    assert cancelled == ["sent-before-the-kill"]
