"""The runner's idle path against its general queued path, on real market data.

`StrategyRunner.on_quote` and `_deliver` write out, for speed, what `_dispatch` does when
nothing is being dispatched: run the callback in place, apply its decision, drain what it
queued. That copy must decide exactly what the queue would. Here the same real events
(the shipped spot sample, parsed by the product's parser) drive inventory-mm against the
paper executor behind the risk gate, wired as `daemon.backtest.engine.Backtest` wires
them, once through the runner as is and once through a runner whose every delivery goes
through `_dispatch`; the records (decisions, intents, acks, fills) must be equal field for
field, the strategy must be called back in the same order at the same feed times, and
there must be intents, acks and fills, so the comparison cannot pass on nothing.
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import pytest

import strategies
from adapters.recordings.replay import SAMPLE_FILES
from adapters.venues import make_parser
from config.settings import load_settings
from daemon.backtest.engine import SimulatedClock
from daemon.core.model import Decision, Fill, OrderAck, OrderIntent, Quote, Trade
from daemon.core.records import MemorySink, Record
from daemon.core.routes import Callbacks
from daemon.market.bus import Bus
from daemon.market.market_view import RingMarketView
from daemon.market.ringbuffer import RingStore
from daemon.trading.gate import GatedExecutor
from daemon.trading.paper import PaperExecutor
from daemon.trading.risk import RiskGate
from daemon.trading.runner import StrategyRunner
from daemon.trading.transfers import PaperTransfers

T = TypeVar("T")


@cache
def sample_events() -> tuple[Quote | Trade, ...]:
    """Every quote and trade of the shipped spot sample (7,855 events over ~75 s), in
    receive order, as the replay feed would publish them."""
    events: list[Quote | Trade] = []
    parser = make_parser("binance_spot", Callbacks(events.append, events.append))
    with gzip.open(SAMPLE_FILES[0]) as lines:
        for line in lines:
            stamp, frame = line.rstrip(b"\n").split(b" ", 1)
            parser.feed(frame, int(stamp))
    assert parser.dropped == {}
    return tuple(events)


class Witness:
    """The strategy, with a log of every callback the runner makes: which one, the feed
    clock at that moment, and the event. Everything else is the strategy's own."""

    def __init__(self, strategy: Any, clock: SimulatedClock) -> None:
        self.strategy = strategy
        self.clock = clock
        self.calls: list[tuple[str, int, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.strategy, name)

    def _call(self, name: str, event: Any) -> Decision | None:
        self.calls.append((name, self.clock(), event))
        return getattr(self.strategy, name)(event)

    def on_quote(self, quote: Quote) -> Decision | None:
        return self._call("on_quote", quote)

    def on_trade(self, trade: Trade) -> Decision | None:
        return self._call("on_trade", trade)

    def on_ack(self, ack: OrderAck) -> Decision | None:
        return self._call("on_ack", ack)

    def on_fill(self, fill: Fill) -> Decision | None:
        return self._call("on_fill", fill)

    def on_timer(self, now_ns: int) -> Decision | None:
        return self._call("on_timer", now_ns)


class CountingRunner(StrategyRunner):
    """The runner as is; only counts how often the general path was taken."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.dispatched = 0
        super().__init__(*args, **kwargs)

    def _dispatch(self, callback: Callable[[], Decision | None]) -> None:
        self.dispatched += 1
        super()._dispatch(callback)


class QueuedRunner(CountingRunner):
    """Every delivery through `_dispatch`, as if something were always being dispatched.

    `_deliver` becomes what its docstring says it stands for,
    `_dispatch(lambda: callback(event))`, and `on_quote` the `_deliver` call its inlined
    branch writes out (the shape `on_trade` has). Acks, fills and timers go through
    `_deliver` too, so every written-out path is replaced.
    """

    def on_quote(self, quote: Quote) -> None:
        self.executor.on_quote(quote)
        self._deliver(self.strategy.on_quote, quote)
        if quote.local_ts_ns >= self.next_timer_ns:
            self._fire_timer(quote.local_ts_ns)

    def _deliver(self, callback: Callable[[T], Decision | None], event: T) -> None:
        self._dispatch(lambda: callback(event))


@dataclasses.dataclass
class Run:
    records: list[Record]
    runner: CountingRunner
    paper: PaperExecutor
    calls: list[tuple[str, int, Any]]

    def of(self, kind: type) -> list[Any]:
        return [record for record in self.records if isinstance(record, kind)]


def run(runner_class: type[CountingRunner], data_dir: Path, **overrides: Any) -> Run:
    """inventory-mm over the sample, wired as `Backtest.__init__` wires it (paper executor
    in the gated executor, ring market view, paper transfers, the kill switch on the
    runner), with the engine's per-event steps; every record kept in memory."""
    # Quotes inside the fees (the fee floor opted out) and k_bps 9 (the old default of
    # 1.5 /$ at this mid), so the 75 s sample fills often; no direction flip, which would
    # spare the order rate the requotes whose refusals nest (no-latency).
    inside_fees = {"strategies": {"inventory_mm": {"allow_quotes_inside_fees": True,
                                                   "k_bps": 9.0, "one_sided_fills_limit": 0}}}
    settings = load_settings({"data_dir": data_dir, "retention": 600.0, **inside_fees,
                              **overrides}, env_file=None)
    clock = SimulatedClock()
    bus = Bus()
    rings = RingStore(retention_s=settings.retention, max_rate_hz=settings.ring.max_rate_hz)
    bus.add_sink(rings)
    strategy = Witness(strategies.build("inventory-mm", settings), clock)
    sink = MemorySink()
    paper = PaperExecutor.from_settings(settings, "parity")
    executor = GatedExecutor(paper, RiskGate(settings.risk), sink=sink)
    runner = runner_class(strategy, executor, sink, RingMarketView(bus.view, rings, clock),
                          account=executor, clock=clock,
                          transfers=PaperTransfers(paper, settings.execution))
    executor.kill_switch.on_fire(lambda why, _now: runner.kill(why))
    for event in sample_events():
        clock.advance_to(event.local_ts_ns)
        if type(event) is Quote:
            bus.publish_quote(event)
            runner.on_quote(event)
        else:
            bus.publish_trade(event)  # type: ignore[arg-type]
            runner.on_trade(event)  # type: ignore[arg-type]
        # What nested in this event (an ack refused by the gate while a decision was being
        # applied) was handled before the event returned, not left for the next one.
        assert not runner._queue, f"left queued after {event}"
    return Run(sink.records, runner, paper, strategy.calls)


def fields(record: Record) -> tuple[str, dict[str, Any]]:
    """A record's type and every field, recursively (intents inside decisions too)."""
    return type(record).__name__, dataclasses.asdict(record)


@pytest.mark.parametrize(("overrides", "nests"), [
    # Acks and fills land on later market events, each delivered with nothing dispatched.
    pytest.param({}, False, id="latency-20ms"),
    # Orders arrive at once: the strategy answers a fill with orders the gate refuses
    # (order rate), whose rejected acks nest inside the fill's dispatch.
    pytest.param({"execution": {"submit_latency_ms": 0.0, "cancel_latency_ms": 0.0}}, True,
                 id="no-latency"),
    # A tight order rate: the gate refuses orders of quote and timer decisions, and each
    # rejected ack nests in the dispatch that sent the order (on_quote's and _deliver's).
    pytest.param({"risk": {"max_orders_per_s": 2.0}}, True, id="order-rate-2-per-s"),
    # k fitted from trades: the strategy reads every trade.
    pytest.param({"strategies": {"inventory_mm": {"k_bps": "auto",
                                                  "allow_quotes_inside_fees": True}}},
                 False, id="k-from-trades"),
])
def test_the_idle_path_records_what_the_queue_records(tmp_path: Path, overrides: dict[str, Any],
                                                      nests: bool) -> None:
    idle = run(CountingRunner, tmp_path / "idle", **overrides)
    queued = run(QueuedRunner, tmp_path / "queued", **overrides)

    # Not vacuous: the strategy quoted, orders went out, were acked and filled.
    decisions = idle.of(Decision)
    assert any(decision.action == "quote" for decision in decisions)
    assert len(idle.of(OrderIntent)) >= 20
    assert len(idle.of(OrderAck)) >= 20
    assert len(idle.of(Fill)) >= 5
    # The two runs took different paths: the queued one dispatched every event (and
    # every ack, fill and timer), the one as is only what nested.
    assert queued.runner.dispatched >= len(sample_events()) > idle.runner.dispatched
    # Where callbacks nest, the idle path's drain ran them (each nested one is dispatched).
    assert (idle.runner.dispatched > 0) is nests

    assert [fields(record) for record in queued.records] == [
        fields(record) for record in idle.records]
    # And the strategy was called back in the same order, at the same feed times: the
    # written-out path runs each callback exactly where the queue would have.
    assert queued.calls == idle.calls
    assert {name for name, _, _ in idle.calls} == {
        "on_quote", "on_trade", "on_ack", "on_fill", "on_timer"}
    assert queued.paper.balances("binance_spot") == idle.paper.balances("binance_spot")
    assert queued.runner.next_timer_ns == idle.runner.next_timer_ns
    assert queued.runner.killed_reason is idle.runner.killed_reason is None
