"""Stepping the backtest engine (issue 15 item 2): `open` / `run_until` / `request_pause` /
`finish` drive the very row loop `run()` does, so a Gymnasium environment built on them
reproduces a plain backtest's decision log byte for byte; and the null decision log of
training runs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import strategies
from adapters.recordings.replay import ReplaySpec
from config.settings import Settings, load_settings
from daemon.backtest.cache import QUOTE, BacktestData
from daemon.backtest.engine import Backtest, BacktestResult, window_rows
from daemon.core.model import ClientFill, Decision, OrderIntent, OrderType, Quote, Side
from daemon.core.vocabulary import Action
from strategies.base import StrategyBase
from tests.helpers.caches import Caches

SPOT = "binance_spot_btcusdt_20240808.gz"
USDM = "binance_usdm_btcusdt_20240808.gz"
SECOND = 1_000_000_000
#: Synthetic client flow at a fill a second (internalize).
FLOW = {"internalize": {"symbol": "BTC/USDT", "synthetic_mean_qty": 0.02,
                        "synthetic_rate_hz": 1.0}}


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    return load_settings({"data_dir": data_dir, **overrides}, env_file=None)


def log_of(result: BacktestResult) -> bytes:
    return b"".join(path.read_bytes() for path in result.log_files)


def step_through(engine: Backtest, data: BacktestData, every_ns: int,
                 window: tuple[int, int] | None = None) -> tuple[BacktestResult, int]:
    """open, run_until every `every_ns` of data time until the data runs out, finish."""
    engine.open(data, window)
    start = int(data.local_ts_ns[window[0] if window else 0])
    steps, until = 0, start + every_ns
    while engine.run_until(until):
        steps += 1
        assert engine.clock.now_ns >= until  # paused on time: the clock got there
        until += every_ns
    assert engine.exhausted and not engine.run_until(until)
    return engine.finish(), steps


@pytest.mark.parametrize(("strategy", "overrides", "quiet"),
                         [("inventory-mm", {}, False), ("inventory-mm", {}, True),
                          ("internalize", {"strategies": FLOW}, False)])
async def test_stepping_a_second_at_a_time_writes_the_log_of_a_plain_run(
    tmp_path: Path, shared_file: Callable[[str], Path], caches: Caches, strategy: str,
    overrides: dict[str, Any], quiet: bool,
) -> None:
    """The same log and counts; with quiet rows (daemon/core/quiet.py) the row at each
    pause runs as an event, so more of them run than in the plain run (none skipped)."""
    specs = [ReplaySpec(shared_file(SPOT))]
    data = await caches.load(specs, tmp_path / "plain")
    plain_settings = settings_for(tmp_path / "plain", **overrides)
    plain = await Backtest(plain_settings, strategy, specs, "same", quiet=quiet).run()
    assert plain.cache == "hit"

    stepped_settings = settings_for(tmp_path / "stepped", **overrides)
    engine = Backtest(stepped_settings, strategy, specs, "same", quiet=quiet)
    stepped, steps = step_through(engine, data, SECOND)

    assert steps > 300  # the file is ~6 minutes of data
    assert log_of(plain) and log_of(stepped) == log_of(plain)
    for figure in ("events", "processed" if not quiet else "skipped", "quotes", "trades",
                   "records", "decisions", "orders", "fills", "client_fills", "first_ts_ns",
                   "last_ts_ns"):
        assert getattr(stepped, figure) == getattr(plain, figure), figure
    assert (stepped.quiet > 0) is quiet
    if strategy == "internalize":
        assert stepped.client_fills > 100


class AgentStand(StrategyBase):
    """A tiny strategy whose every 400th quote calls for an order (a market buy or sell,
    alternately, and a resting bid). Deciding itself, it returns the decision from
    `on_quote`; waiting for an agent, it keeps the decision for the agent and asks the
    engine to pause (`ask_agent`), as a policy that needs an outside action would."""

    name = "agent-stand"
    market_keys = frozenset({("binance_spot", "BTC/USDT")})
    #: So the engine skips trades that reach none of its orders, while nothing is due.
    reads_trades = False
    EVERY = 400

    def __init__(self) -> None:
        self.ask_agent: Callable[[], None] | None = None
        self.pending: Decision | None = None
        self.seen: list[int] = []  # receive times of the quotes seen

    def on_quote(self, quote: Quote) -> Decision | None:
        self.seen.append(quote.local_ts_ns)
        count = len(self.seen) - 1
        if count % self.EVERY:
            return None
        side = Side.BUY if count // self.EVERY % 2 == 0 else Side.SELL
        decision = Decision(self.name, quote.local_ts_ns, Action.QUOTE, f"quote {count}",
                            inputs={"bid": quote.bid, "ask": quote.ask},
                            intents=[OrderIntent("binance_spot", "BTC/USDT", side,
                                                 OrderType.MARKET, 0.001),
                                     OrderIntent("binance_spot", "BTC/USDT", Side.BUY,
                                                 OrderType.LIMIT, 0.001, quote.bid)])
        if self.ask_agent is None:
            return decision
        self.pending = decision
        self.ask_agent()
        return None


async def test_a_pause_from_a_callback_lands_the_agents_order_as_if_returned(
    tmp_path: Path, shared_file: Callable[[str], Path], caches: Caches,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[AgentStand] = []

    def build(_settings: Settings) -> AgentStand:
        built.append(AgentStand())
        return built[-1]

    monkeypatch.setitem(strategies.STRATEGIES, AgentStand.name, build)
    # With USD-M events to skip: an order placed at a pause makes something due (its
    # ack, one latency later) that the engine must not skip past.
    specs = [ReplaySpec(shared_file(SPOT)), ReplaySpec(shared_file(USDM))]
    data = await caches.load(specs, tmp_path / "itself")
    itself = await Backtest(settings_for(tmp_path / "itself"), AgentStand.name, specs,
                            "agent").run()

    engine = Backtest(settings_for(tmp_path / "agent"), AgentStand.name, specs, "agent")
    stand = built[-1]
    stand.ask_agent = engine.request_pause
    engine.open(data)
    pauses = 0
    while engine.run_until(None):  # no time limit: only the strategy's requests pause
        pauses += 1
        decision, stand.pending = stand.pending, None
        assert decision is not None
        # Right after the row that asked: nothing after it has run.
        assert engine.clock.now_ns == stand.seen[-1] == decision.ts_ns
        assert len(stand.seen) == (pauses - 1) * AgentStand.EVERY + 1
        engine.runner.call(lambda decision=decision: decision)
    agent = engine.finish()

    assert pauses == len(stand.seen) // AgentStand.EVERY + 1 > 50
    assert itself.orders > 100 and itself.fills > 50
    assert itself.processed < itself.events / 2 and agent.processed == itself.processed
    # The very first quote asks too: had the engine paused after that row's balance
    # snapshot, the agent's order would follow it in the log.
    assert log_of(agent) == log_of(itself)
    assert (agent.orders, agent.fills, agent.records) == (itself.orders, itself.fills,
                                                          itself.records)


class AgentDesk(StrategyBase):
    """A tiny desk that hedges every client fill at once with a market order and notes
    its inventory on a timer; waiting for an agent, it keeps each decision for the agent
    and asks the engine to pause."""

    name = "agent-desk"
    market_keys = frozenset({("binance_spot", "BTC/USDT")})
    reads_trades = False
    takes_client_flow = True
    #: Often enough that some timers fire as time moves to a client fill.
    timer_interval_s = 0.25

    def __init__(self) -> None:
        self.ask_agent: Callable[[], None] | None = None
        self.pending: Decision | None = None
        self.fills: list[int] = []  # times of the client fills taken
        self.timers: list[int] = []
        self.inventory = 0.0

    def on_client_fill(self, fill: ClientFill) -> Decision | None:
        self.fills.append(fill.ts_ns)
        delta = fill.desk_base_delta
        hedge = OrderIntent("binance_spot", "BTC/USDT", Side.BUY if delta < 0 else Side.SELL,
                            OrderType.MARKET, abs(delta))
        return self._decide(Decision(self.name, fill.ts_ns, Action.HEDGE, fill.fill_id,
                                     inputs={"client_qty": fill.qty}, intents=[hedge]))

    def on_timer(self, now_ns: int) -> Decision | None:
        self.timers.append(now_ns)
        return self._decide(Decision(self.name, now_ns, Action.HOLD, "timer",
                                     inputs={"fills": len(self.fills)}))

    def _decide(self, decision: Decision) -> Decision | None:
        if self.ask_agent is None:
            return decision
        self.pending = decision
        self.ask_agent()
        return None


async def test_a_pause_from_a_client_fill_or_a_timer_lands_the_agents_decision_as_returned(
    tmp_path: Path, shared_file: Callable[[str], Path], caches: Caches,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Client fills come before the market event they are due by, and time moves to each
    first (a strategy timer may fire then): a pause asked for in either callback comes
    right after it, so the agent's decision lands before the fill, the next fill or the
    market event, where the strategy's own would have."""
    built: list[AgentDesk] = []
    monkeypatch.setitem(strategies.STRATEGIES, AgentDesk.name,
                        lambda _settings: built.append(AgentDesk()) or built[-1])
    specs = [ReplaySpec(shared_file(SPOT)), ReplaySpec(shared_file(USDM))]
    flow = {"strategies": FLOW}
    data = await caches.load(specs, tmp_path / "itself")
    itself = await Backtest(settings_for(tmp_path / "itself", **flow), AgentDesk.name, specs,
                            "desk").run()

    engine = Backtest(settings_for(tmp_path / "agent", **flow), AgentDesk.name, specs, "desk")
    desk = built[-1]
    desk.ask_agent = engine.request_pause
    engine.open(data)
    pauses = 0
    while engine.run_until(None):
        pauses += 1
        decision, desk.pending = desk.pending, None
        assert decision is not None and pauses == len(desk.fills) + len(desk.timers)
        assert engine.clock.now_ns == decision.ts_ns  # at the fill's (timer's) own time
        engine.runner.call(lambda decision=decision: decision)
    agent = engine.finish()

    assert len(desk.fills) == itself.client_fills > 300 and itself.fills > 300
    assert len(set(desk.timers) & set(desk.fills)) > 3  # timers fired by a fill's time
    assert log_of(agent) == log_of(itself)


ETH = "binance_usdm_ethusdt_20240718.gz"
#: rl-internalize on the ETH perpetual with the quoted client flow (as its own tests run it).
RL_DESK = {
    "venues": {"binance_usdm": {"enabled": True, "balances": {"USDT": 1_000_000.0},
                                "markets": {"ETH/USDT:USDT": {"tick": 0.01, "lot": 0.001}}}},
    "strategies": {"internalize": {"venue": "binance_usdm", "symbol": "ETH/USDT:USDT",
                                   "source": "quoted", "max_inventory": 20.0},
                   "rl_internalize": {"policy": "a-s"}},
}


async def test_rl_internalize_deciding_through_an_outside_agent_writes_its_policys_log(
    tmp_path: Path, shared_file: Callable[[str], Path], caches: Caches,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the Gymnasium environment does: the policy returns None and asks the engine
    to pause; the agent (here the A-S formula itself) answers through `runner.call`. The
    log is the one of the strategy deciding with that formula on its own."""
    from strategies.rl_internalize import RLInternalizeStrategy, policy_from_name

    specs = [ReplaySpec(shared_file(ETH))]
    data = await caches.load(specs, tmp_path / "itself")
    itself = await Backtest(settings_for(tmp_path / "itself", **RL_DESK), "rl-internalize",
                            specs, "rl").run()

    settings = settings_for(tmp_path / "agent", **RL_DESK)
    asked: list[tuple[Any, Any]] = []
    engine: Backtest | None = None

    def outside(observation: Any, state: Any) -> None:
        asked.append((observation, state))
        assert engine is not None
        engine.request_pause()

    monkeypatch.setitem(strategies.STRATEGIES, "rl-internalize",
                        lambda s: RLInternalizeStrategy.from_settings(s, policy=outside))
    engine = Backtest(settings, "rl-internalize", specs, "rl")
    desk = engine.strategy
    assert isinstance(desk, RLInternalizeStrategy)
    formula = policy_from_name("a-s", settings)
    engine.open(data)
    until = int(data.local_ts_ns[0])
    while engine.run_until(until):  # pauses on time too, as an environment's step may
        until += 3 * SECOND
        if desk.awaiting is None:
            continue
        observation, state = asked[-1]
        action = formula(observation, state)
        engine.runner.call(partial(desk.act, action, state.now_ns, observation))
    agent = engine.finish()

    assert len(asked) == desk.decisions > 150
    assert log_of(agent) == log_of(itself)
    assert itself.client_fills > 20


async def test_a_window_runs_only_its_rows(
    tmp_path: Path, shared_file: Callable[[str], Path], caches: Caches,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[AgentStand] = []
    monkeypatch.setitem(strategies.STRATEGIES, AgentStand.name,
                        lambda _settings: built.append(AgentStand()) or built[-1])
    settings = settings_for(tmp_path)
    specs = [ReplaySpec(shared_file(SPOT))]
    data = await caches.load(specs)
    first = int(data.local_ts_ns[0])
    start, stop = window_rows(data, first + 60 * SECOND, first + 120 * SECOND)
    assert 0 < start < stop < len(data)
    times = data.local_ts_ns[start:stop]
    assert times.min() >= first + 60 * SECOND and times.max() < first + 120 * SECOND

    engine = Backtest(settings, AgentStand.name, specs, "window")
    result, steps = step_through(engine, data, 5 * SECOND, (start, stop))
    quotes = data.local_ts_ns[start:stop][data.kind[start:stop] == QUOTE]
    assert built[-1].seen == quotes.tolist()  # every quote of the window, no other
    assert (result.events, result.quotes + result.trades) == (stop - start, stop - start)
    assert (result.first_ts_ns, result.last_ts_ns) == (times.min(), times.max())
    assert 10 <= steps <= 12 and result.orders > 0


async def test_without_a_decision_log_nothing_is_written_and_the_counts_stay(
    tmp_path: Path, shared_file: Callable[[str], Path], caches: Caches,
) -> None:
    specs = [ReplaySpec(shared_file(SPOT))]
    quiet_dir = tmp_path / "quiet"
    data = await caches.load(specs, tmp_path / "logged", quiet_dir)
    logged = await Backtest(settings_for(tmp_path / "logged"), "inventory-mm", specs,
                            "train").run()
    plain = await Backtest(settings_for(quiet_dir), "inventory-mm", specs, "train",
                           decision_log=False).run()
    engine = Backtest(settings_for(quiet_dir), "inventory-mm", specs, "stepped",
                      decision_log=False)
    stepped, _ = step_through(engine, data, 10 * SECOND)
    # Only the cache the plain run built: no decision log, no report folder (exports).
    assert sorted(path.name for path in quiet_dir.iterdir()) == ["cache"]
    for result in (plain, stepped):
        assert result.log_files == []
        assert (result.records, result.decisions, result.orders, result.fills) == (
            logged.records, logged.decisions, logged.orders, logged.fills)
        assert result.records > 1000


async def test_stepping_refuses_what_it_cannot_do(tmp_path: Path,
                                                  shared_file: Callable[[str], Path],
                                                  caches: Caches) -> None:
    settings = settings_for(tmp_path)
    specs = [ReplaySpec(shared_file(SPOT))]
    data = await caches.load(specs)
    engine = Backtest(settings, "inventory-mm", specs, "refused", decision_log=False)
    with pytest.raises(RuntimeError, match="open"):
        engine.run_until(0)
    with pytest.raises(ValueError, match="window"):
        engine.open(data, (10, 10))
    with pytest.raises(ValueError, match="frame by frame"):  # load() found no columns
        engine.open(None)  # type: ignore[arg-type]
    engine = Backtest(settings, "inventory-mm", specs, "once", decision_log=False)
    engine.open(data, (0, 1_000))
    assert engine.run_until(int(data.local_ts_ns[0]))  # the clock is there after one row
    result = engine.finish()  # before the end of the window: the rows reached so far
    assert 0 < result.events < 1_000 and result.processed == result.events
    with pytest.raises(RuntimeError, match="finish"):
        engine.finish()
    with pytest.raises(RuntimeError, match="one run each"):
        await engine.run()


async def test_a_strategy_that_raises_while_stepped_ends_the_run_with_its_log_closed(
    tmp_path: Path, shared_file: Callable[[str], Path], caches: Caches,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Failing(AgentStand):
        def on_quote(self, quote: Quote) -> Decision | None:
            if len(self.seen) == 1_000:
                raise ZeroDivisionError("a strategy bug")
            return super().on_quote(quote)

    monkeypatch.setitem(strategies.STRATEGIES, AgentStand.name, lambda _s: Failing())
    settings = settings_for(tmp_path)
    specs = [ReplaySpec(shared_file(SPOT))]
    data = await caches.load(specs)
    engine = Backtest(settings, AgentStand.name, specs, "failing")
    engine.open(data)
    with pytest.raises(ZeroDivisionError):
        engine.run_until(None)
    written = list((tmp_path / "decisions").glob("*/failing.jsonl"))
    assert written and b"run_end" not in written[0].read_bytes()  # durable, not ended
    for step in (lambda: engine.run_until(None), engine.finish):
        with pytest.raises(RuntimeError, match="raised"):
            step()


def test_window_rows_follow_the_running_max_of_receive_times() -> None:
    class Times:
        local_ts_ns = np.array([10, 20, 15, 30, 40])

    assert window_rows(Times(), 16, 35) == (1, 4)  # type: ignore[arg-type]
    assert window_rows(Times(), 0, 100) == (0, 5)  # type: ignore[arg-type]
