"""The exact skip of a backtest: what each component promises about events it need not see.

A backtest may skip an event only when it provably changes nothing: its market is outside
the strategy's declared `market_keys` and nothing is due before it (strategy timer, paper
latency events, kill-switch poll, balance snapshot, client fill). These tests pin each
of those promises down on its own; tests/backtest/test_engine.py checks the whole on real data.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import pytest

import strategies
from adapters.recordings.replay import SAMPLE_FILES, ReplayFeed, ReplaySpec, ReplayStats
from config.settings import ExecutionSettings, RiskSettings, VenueSettings, load_settings
from daemon.backtest.cache import BacktestData
from daemon.backtest.skip import NO_GAP, GuardedMarketView, GuardedSink, SkipPlan, UndeclaredMarket
from daemon.core.model import ClientFill, OrderIntent, OrderType, Quote, Side, Trade
from daemon.core.records import MemorySink
from daemon.trading.killswitch import KillSwitch
from daemon.trading.paper import PaperExecutor
from daemon.trading.runner import NEVER_NS, StrategyRunner
from tests.helpers.strategy_fakes import FakeAccount, FakeClock, FakeMarket, RollingVolatility

MS = 1_000_000


async def sample_events() -> list[Quote | Trade]:
    """The shipped sample (Binance spot and USD-M BTCUSDT, merged by receive time), the
    USD-M file also presented as a second spot venue, so an arbitrage has two legs."""
    spot, usdm = SAMPLE_FILES
    specs = [ReplaySpec(spot), ReplaySpec(usdm, "bybit_spot", "BTC/USDT"), ReplaySpec(usdm)]
    events: list[Quote | Trade] = []
    await ReplayFeed(specs, events.append, events.append).run()
    return events


def strategy_state(strategy: object) -> tuple[bytes, list[bytes]]:
    """Everything a strategy holds, serialised (the injected clock and views left out):
    the pickle and, copied out of band, its arrays' bytes (protocol 5; a tenth of the
    cost of pickling inventory-mm's 1 MB of trade arrays in band, byte for byte the same
    comparison)."""
    state = {name: value for name, value in vars(strategy).items()
             if not callable(value) and name not in ("_market", "_account", "_walk")}
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(state, protocol=5, buffer_callback=buffers.append)
    return head, [bytes(buffer.raw()) for buffer in buffers]


@pytest.mark.parametrize("name", ["inventory-mm", "arbitrage", "internalize"])
async def test_strategies_ignore_every_market_outside_their_declared_keys(name: str) -> None:
    settings = load_settings({"strategies": {"internalize": {"symbol": "BTC/USDT"}}},
                             env_file=None)
    strategy = strategies.build(name, settings)
    declared = strategy.market_keys
    assert declared, f"{name} declares no markets"
    market, clock = FakeMarket(), FakeClock()
    for key in declared:
        market.rolling[key] = RollingVolatility(360.0)
    strategy.bind(market, FakeAccount({v: {"BTC": 1.0, "USDT": 1e5} for v, _ in declared}),
                  clock)
    events = await sample_events()
    foreign = own = 0
    state = None  # the state after the last event, while it was a foreign one
    for event in events:
        clock.now_ns = event.local_ts_ns
        callback: Any = strategy.on_quote if type(event) is Quote else strategy.on_trade
        if event.key in declared and (type(event) is Quote or strategy.reads_trades):
            own += 1
            state = None
            if type(event) is Quote:
                market.publish(event)
            if own == 1:  # the snapshot does see what a market of its own changes
                before = strategy_state(strategy)
                callback(event)
                assert strategy_state(strategy) != before
            else:
                callback(event)
            if name == "internalize" and own % 500 == 0:  # inventory to re-evaluate
                side = Side.BUY if own % 1000 else Side.SELL
                strategy.on_client_fill(ClientFill(clock.now_ns, "BTC/USDT", side, 0.5,  # type: ignore[attr-defined]
                                                   60_000.0))
            continue
        foreign += 1
        before = state if state is not None else strategy_state(strategy)
        assert callback(event) is None
        state = strategy_state(strategy)  # also the state before the next foreign event
        assert state == before, f"{name} changed on {event}"
    assert foreign > 5_000 and own > 5_000  # both kinds of event really were exercised
    assert not strategy.reads_trades  # so its own trades were among the "foreign" ones


def test_the_runner_says_when_its_timer_is_due() -> None:
    class Timed:
        name = "timed"
        timer_interval_s: float | None = 1.0

        def __init__(self) -> None:
            self.ticks: list[int] = []

        def bind(self, *_: object) -> None: ...

        def on_quote(self, quote: Quote) -> None: ...

        def on_timer(self, now_ns: int) -> None:
            self.ticks.append(now_ns)

    strategy = Timed()
    paper = PaperExecutor({}, ExecutionSettings())
    runner = StrategyRunner(strategy, paper, MemorySink(), FakeMarket(), paper,  # type: ignore[arg-type]
                            clock=lambda: 0)
    assert runner.next_timer_ns == 0  # the first event arms the timer
    quote = Quote("x", "A/B", 1.0, 1.0, 2.0, 1.0, 0, 5_000 * MS)
    runner.on_quote(quote)
    assert runner.next_timer_ns == 6_000 * MS and strategy.ticks == []
    runner.advance(6_000 * MS)
    assert strategy.ticks == [6_000 * MS] and runner.next_timer_ns == 7_000 * MS
    strategy.timer_interval_s = None
    untimed = StrategyRunner(strategy, PaperExecutor({}), MemorySink(), FakeMarket(),  # type: ignore[arg-type]
                             paper, clock=lambda: 0)
    assert untimed.next_timer_ns == NEVER_NS


def test_the_paper_executor_says_when_its_next_latency_event_is_due() -> None:
    paper = PaperExecutor({"v": VenueSettings(balances={"USDT": 1e6})},
                          ExecutionSettings(submit_latency_ms=20, cancel_latency_ms=30))
    assert paper.next_event_ns is None
    paper.on_quote(Quote("v", "BTC/USDT", 100.0, 1.0, 101.0, 1.0, 0, 1_000 * MS))
    intent = OrderIntent("v", "BTC/USDT", Side.BUY, OrderType.LIMIT, 1.0, 99.0)
    paper.submit(intent, 1_000 * MS)
    assert paper.next_event_ns == 1_020 * MS
    paper.cancel(intent.client_order_id, 1_010 * MS)
    paper.advance(1_020 * MS)  # arrived and resting; the cancel lands 30 ms after it was sent
    assert paper.next_event_ns == 1_040 * MS
    assert paper.print_reaches_orders("v", "BTC/USDT", 99.0)  # at or through the bid
    assert paper.print_reaches_orders("v", "BTC/USDT", 98.5)
    assert not paper.print_reaches_orders("v", "BTC/USDT", 99.5)
    assert not paper.print_reaches_orders("v", "ETH/USDT", 1.0)  # no book there
    paper.advance(1_040 * MS)
    assert paper.next_event_ns is None and paper.open_order_count() == 0
    assert not paper.print_reaches_orders("v", "BTC/USDT", 99.0)  # cancelled: nothing rests
    # Catching the clock up over skipped events lands nothing, not even what is due then.
    instant = PaperExecutor({"v": VenueSettings(balances={"USDT": 1e6})},
                            ExecutionSettings(submit_latency_ms=0))
    instant.submit(OrderIntent("v", "BTC/USDT", Side.BUY, OrderType.LIMIT, 1.0, 99.0),
                   2_000 * MS)
    instant.note_time(2_000 * MS)
    assert instant.next_event_ns == 2_000 * MS and instant.now_ns == 2_000 * MS
    instant.advance(2_000 * MS)
    assert instant.next_event_ns is None


def test_the_kill_switch_says_when_it_next_polls_its_flag_file(tmp_path: Path) -> None:
    assert KillSwitch(RiskSettings()).next_poll_ns is None  # no flag file: never
    flag = tmp_path / "stop"
    switch = KillSwitch(RiskSettings(kill_switch_file=flag), poll_interval_s=1.0)
    assert switch.next_poll_ns is not None and switch.next_poll_ns <= 0  # at the first event
    switch.poll(5_000 * MS)
    assert switch.next_poll_ns == 6_000 * MS
    flag.touch()
    switch.poll(6_000 * MS)
    assert switch.active and switch.next_poll_ns is None


def test_the_skip_plan_finds_rows_of_interest_and_the_first_due_row() -> None:
    def quote(key: str, ts: int) -> Quote:
        return Quote(key, "A/B", 1.0, 1.0, 2.0, 1.0, 0, ts)

    #        row:  0        1        2        3         4        5        6
    events = [quote("x", 10), quote("y", 11), quote("y", 30), quote("y", 20),
              quote("x", 21), quote("x", 22), quote("y", 25)]
    data = BacktestData.from_events(events, ReplayStats([]))  # type: ignore[arg-type]
    plan = SkipPlan(data, frozenset({("x", "A/B")}))
    assert plan.rows.tolist() == [0, 4, 5]
    # Row 4 follows skippable rows 1-3, whose times peak at 30; row 5 follows row 4.
    assert plan.gap_max == [NO_GAP, 30, NO_GAP]
    assert plan.running_max.tolist() == [10, 11, 30, 30, 30, 30, 30]
    # Due at 25: row 3's own time is 20, but row 2 (30) already passed it.
    assert plan.first_due(1, 4, 25) == 2
    assert plan.first_due(1, 4, 31) == 4  # nothing due in between: all skippable
    assert plan.first_due(6, 7, 25) == 6
    everything = SkipPlan(data, None)
    assert everything.rows.tolist() == list(range(7)) and set(everything.gap_max) == {NO_GAP}


def test_guards_refuse_what_a_strategy_did_not_declare() -> None:
    market, sink = FakeMarket(), MemorySink()
    keys = frozenset({("v", "BTC/USDT")})
    guarded = GuardedMarketView(market, keys, "s")
    assert guarded.quote("v", "BTC/USDT") is None
    with pytest.raises(UndeclaredMarket, match="strategy s read the volatility of w BTC/USDT"):
        guarded.volatility("w", "BTC/USDT", 60.0)
    assert math.isnan(guarded.trade_rate("v", "BTC/USDT", 60.0))
    quotes_only = GuardedMarketView(market, keys, "s", reads_trades=False)
    with pytest.raises(UndeclaredMarket, match="reads_trades = False"):
        quotes_only.trade_rate("v", "BTC/USDT", 60.0)
    guarded_sink = GuardedSink(sink, keys, "s")
    ok = OrderIntent("v", "BTC/USDT", Side.BUY, OrderType.LIMIT, 1.0, 99.0)
    guarded_sink.record(ok)
    with pytest.raises(UndeclaredMarket, match="sent an order to v ETH/USDT"):
        guarded_sink.record(OrderIntent("v", "ETH/USDT", Side.BUY, OrderType.LIMIT, 1.0, 9.0))
    assert sink.records == [ok]
