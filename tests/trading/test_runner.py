"""The runner: decisions recorded, intents through the risk gate, acks and fills routed back."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from config.settings import RiskSettings
from daemon.core.model import Decision, Fill, OrderAck, OrderIntent, OrderType, Quote, Side, Trade
from daemon.core.records import MemorySink
from daemon.core.vocabulary import OrderStatus
from daemon.trading.gate import GatedExecutor
from daemon.trading.risk import RiskGate
from daemon.trading.runner import StrategyRunner


class FakeExecutor:
    """Acks every submit at once and fills it fully, from inside `submit` (re-entrant)."""

    def __init__(self) -> None:
        self.listener = None
        self.submitted: list[OrderIntent] = []
        self.cancelled: list[str] = []
        self.cancel_all_calls = 0
        self.quotes_seen = 0

    now_ns = 0

    def assign_client_order_id(self, intent: OrderIntent) -> str:
        return intent.client_order_id

    def submit(self, intent: OrderIntent, now_ns: int) -> None:
        self.submitted.append(intent)
        self.listener.on_ack(OrderAck(intent.client_order_id, intent.venue, intent.symbol,
                                      OrderStatus.NEW, now_ns))
        self.listener.on_fill(Fill(intent.client_order_id, intent.venue, intent.symbol,
                                   intent.side, intent.price or 0.0, intent.qty, 0.0, "USDT",
                                   "taker", now_ns))

    def cancel(self, client_order_id: str, now_ns: int) -> None:
        self.cancelled.append(client_order_id)

    def cancel_all(self, now_ns: int, venue: str | None = None) -> None:
        self.cancel_all_calls += 1

    def balances(self, venue: str) -> Mapping[str, float]:
        return {}

    def open_orders(self) -> list[OrderIntent]:
        return []

    def on_quote(self, quote: Quote) -> None:
        self.quotes_seen += 1

    def on_trade(self, trade: Trade) -> None:
        pass

    def advance(self, now_ns: int) -> None:
        pass


class BuyOnEveryQuote:
    """Buys on each quote, records every callback it gets and whether one nested in another."""

    name = "test"
    timer_interval_s = 1.0

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.depth = 0
        self.max_depth = 0
        self.counter = 0

    def bind(self, market: object, account: object, clock: object) -> None:
        self.clock = clock

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)

    def on_quote(self, quote: Quote) -> Decision:
        self._enter("quote")
        self.counter += 1
        intent = OrderIntent("v", quote.symbol, Side.BUY, OrderType.IOC, 1.0, quote.ask,
                             client_order_id=f"c{self.counter}", strategy=self.name)
        self.depth -= 1
        return Decision(self.name, quote.local_ts_ns, "buy", "test", intents=[intent])

    def on_trade(self, trade: Trade) -> None:
        return None

    def on_fill(self, fill: Fill) -> None:
        self._enter("fill")
        self.depth -= 1

    def on_ack(self, ack: OrderAck) -> None:
        self._enter(f"ack:{ack.status}")
        self.depth -= 1

    def on_timer(self, now_ns: int) -> Decision:
        self._enter("timer")
        self.depth -= 1
        return Decision(self.name, now_ns, "hold", "timer")

    def on_kill(self, reason: str) -> Decision:
        self._enter("kill")
        self.depth -= 1
        flatten = OrderIntent("v", "BTC/USDT", Side.SELL, OrderType.MARKET, 2.0,
                              client_order_id="flat", strategy=self.name)
        return Decision(self.name, 0, "flatten", reason, intents=[flatten])


def quote(ts_s: float) -> Quote:
    ts = int(ts_s * 1e9)
    return Quote("v", "BTC/USDT", 100.0, 1.0, 101.0, 1.0, ts, ts)


def make_runner(risk: RiskSettings | None = None) -> tuple[
        StrategyRunner, BuyOnEveryQuote, FakeExecutor, MemorySink, list[int]]:
    """The runner in front of the risk gate and kill switch, as every session wires it."""
    strategy, executor, sink = BuyOnEveryQuote(), FakeExecutor(), MemorySink()
    gated = GatedExecutor(executor, RiskGate(risk or RiskSettings()), sink=sink)  # type: ignore[arg-type]
    now = [0]
    runner = StrategyRunner(strategy, gated, sink, market=None, account=gated,  # type: ignore[arg-type]
                            clock=lambda: now[0])
    gated.kill_switch.on_fire(lambda why, _now: runner.kill(why))
    return runner, strategy, executor, sink, now


def test_records_decision_intent_ack_fill_in_order_without_nesting_callbacks() -> None:
    runner, strategy, executor, sink, _ = make_runner()
    runner.on_quote(quote(0))
    assert [type(r).__name__ for r in sink.records] == ["Decision", "OrderIntent", "OrderAck",
                                                        "Fill"]
    assert strategy.calls == ["quote", "ack:new", "fill"]
    assert strategy.max_depth == 1
    assert executor.quotes_seen == 1  # the executor saw the market before the strategy


def test_risk_rejection_becomes_a_decision_and_a_rejected_ack() -> None:
    runner, strategy, executor, sink, _ = make_runner(RiskSettings(max_order_notional=50.0))
    runner.on_quote(quote(0))
    assert executor.submitted == []
    rejects = [r for r in sink.of_type(Decision) if r.action == "reject"]
    assert len(rejects) == 1 and "notional" in rejects[0].reason
    assert rejects[0].inputs["client_order_id"] == "c1"
    assert rejects[0].strategy == "test"  # the runner names the intent's strategy
    assert strategy.calls == ["quote", "ack:rejected"]


def test_timer_fires_on_the_feed_clock() -> None:
    runner, strategy, *_ = make_runner()
    for t in (0.0, 0.5, 1.0, 1.2, 2.5):
        runner.on_quote(quote(t))
    assert strategy.calls.count("timer") == 2  # at 1.0 and 2.5, armed by the first quote


def test_kill_cancels_all_tells_the_strategy_and_the_gate_refuses_every_intent() -> None:
    runner, strategy, executor, sink, _ = make_runner()
    runner.executor.kill_switch.fire("daily loss limit", 0)  # type: ignore[attr-defined]
    assert executor.cancel_all_calls >= 1  # the gate's and the runner's cancel-all
    assert "kill" in strategy.calls
    calls = executor.cancel_all_calls
    runner.on_quote(quote(1))
    assert executor.submitted == []
    rejects = [d for d in sink.of_type(Decision) if d.action == "reject"]
    assert [d.reason for d in rejects] == ["kill switch: daily loss limit"] * 2  # flatten, buy
    assert all(set(d.inputs) >= {"venue", "type", "intent_reason"} for d in rejects)  # one shape
    assert sink.of_type(Decision)[0].action == "kill"
    runner.kill("again")  # idempotent
    assert executor.cancel_all_calls == calls


class RecordingTransfers:
    def __init__(self, refuse: bool = False) -> None:
        self.sent: list[tuple] = []
        self.refuse = refuse

    def transfer(self, asset: str, amount: float, from_venue: str, to_venue: str,
                 now_ns: int) -> None:
        from daemon.trading.errors import TransferRefused

        if self.refuse:
            raise TransferRefused("withdrawal refused: not whitelisted")
        self.sent.append((asset, amount, from_venue, to_venue, now_ns))


def rebalance_decision() -> Decision:
    from daemon.core.model import TransferIntent

    transfer = TransferIntent("BTC", "binance_spot", "bybit_spot", 0.25)
    return Decision("test", 5, "rebalance", "drift", inputs=transfer.as_inputs())


@pytest.mark.parametrize("refuse", [False, True])
def test_rebalance_decisions_go_to_the_transfer_service(refuse: bool) -> None:
    runner, *_rest = make_runner()
    sink = _rest[2]
    runner.transfers = RecordingTransfers(refuse)
    runner.call(rebalance_decision)
    if refuse:
        assert runner.transfers.sent == []
        reject = sink.of_type(Decision)[-1]
        assert reject.action == "reject" and "whitelisted" in reject.reason
        assert reject.inputs["amount"] == 0.25
    else:
        assert runner.transfers.sent == [("BTC", 0.25, "binance_spot", "bybit_spot", 0)]
