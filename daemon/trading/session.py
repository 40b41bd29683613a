"""One trading session: the strategy, the risk gate and kill switch in front of an executor,
the runner, and the decision-log wiring — built the same way for every mode.

`--mode action` (paper or live) and the backtest engine both call `open_session`; they
differ only in what they pass: the executor behind the gate (paper or live), the clock
(feed or simulated), the market view, and the sink records go to.

    session = open_session(settings, strategy, PaperExecutor.from_settings(settings, run_id),
                           sink=writer, market=market, clock=clock, writer=writer)
    session.runner.on_quote(quote)          # the loop that owns the clock feeds it
    session.snapshots.maybe_record(now)     # balances into the decision log

Every refusal — a risk limit or the kill switch — is the gated executor's: it records the
one "reject" Decision shape (`risk.rejection_decision`) and answers a rejected ack.

A strategy with a `baseline` twin (internalize's always-hedge policy) gets a second,
shadow session: the twin behind a paper executor and a risk gate of its own, with the
same settings, its runner fed every market event, client fill and tick of time the
strategy's runner gets (`StrategyRunner.twin`). Its records go to the decision log under
the twin's name (never to the live tee: /metrics and `watch` show the strategy only);
its orders carry a run prefix of their own, so their ids never meet the strategy's. It
records no balance snapshots: its P&L comes from its fills, like every strategy's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from config.settings import ConfigError, ExecutionSettings, Settings
from daemon.core.clock import NS_PER_MS, Clock
from daemon.core.records import RecordSink
from daemon.core.vocabulary import BASELINE_SUFFIX
from daemon.postmortem.writer import BalanceSnapshots, DecisionLogWriter, InTransitSource
from daemon.trading.executor import OrderGateway
from daemon.trading.gate import GatedExecutor
from daemon.trading.paper import DepthProvider, PaperExecutor
from daemon.trading.risk import RiskGate
from daemon.trading.runner import StrategyRunner, TransferService
from daemon.trading.transfers import PaperTransfers
from strategies.base import MarketView, Strategy


class SteppedClock(Clock, Protocol):
    """A clock the loop moves forward itself: `SimulatedClock`, or `FeedClock` on a replay."""

    def advance_to(self, ts_ns: int) -> None: ...


@dataclass(slots=True)
class TradingSession:
    strategy: Strategy
    #: The risk gate and kill switch in front of the paper or live executor.
    executor: GatedExecutor
    runner: StrategyRunner
    #: Periodic balance snapshots into the decision log.
    snapshots: BalanceSnapshots
    #: The strategy's baseline twin, run beside it on paper (None: the strategy has none).
    baseline: BaselineSession | None = None

    def finish_data(self, clock: SteppedClock, execution: ExecutionSettings) -> None:
        """The end of recorded data: cancel what is still open, let the cancels through
        (one submit plus one cancel latency later, so an order still in flight lands and is
        cancelled too), then snapshot the balances. A backtest and an action replay at
        `--speed max` end the same way, so their logs end alike."""
        end = clock()
        if end == 0:
            return  # no market data at all
        self.executor.cancel_all(end)
        if self.baseline is not None:
            self.baseline.executor.cancel_all(end)
        settle_ns = int((execution.submit_latency_ms + execution.cancel_latency_ms) * NS_PER_MS)
        clock.advance_to(end + settle_ns)
        self.runner.advance(clock())
        self.snapshots.record_now(clock())


@dataclass(slots=True)
class BaselineSession:
    """A strategy's baseline twin behind its own paper executor and risk gate."""

    strategy: Strategy
    paper: PaperExecutor
    executor: GatedExecutor
    runner: StrategyRunner


def build_strategy(name: str, settings: Settings) -> Strategy:
    """The strategy `name` from its settings; a setting it cannot use is a ConfigError."""
    import strategies

    try:
        return strategies.build(name, settings)
    except ValueError as exc:
        raise ConfigError(f"invalid setting strategies: {exc}") from None


def traded_venues(settings: Settings, strategy: Strategy) -> list[str]:
    """The venues whose balances are the strategy's equity: those of the markets it
    declares, else every enabled venue (a venue it never trades would dilute its return
    on equity in the post-mortem)."""
    enabled = settings.enabled_venues()
    if strategy.market_keys is None:
        return enabled
    declared = {venue for venue, _ in strategy.market_keys}
    return [venue for venue in enabled if venue in declared]


def open_session(settings: Settings, strategy: Strategy, inner: OrderGateway, *,
                 sink: RecordSink, market: MarketView, clock: Clock,
                 writer: DecisionLogWriter,
                 transfers: TransferService | None = None) -> TradingSession:
    """Wire a strategy to `inner` (paper or live) through the risk gate and kill switch.

    `sink` takes every record (decisions, intents, acks, fills, refusals); `writer` is the
    decision log the balance snapshots go to (the sink may wrap it). `transfers` moves
    assets between venues; by default the paper executor's simulated transfers (a live
    session passes its ccxt one).
    """
    if transfers is None and isinstance(inner, PaperExecutor):
        transfers = PaperTransfers(inner, settings.execution)
    executor = GatedExecutor(inner, RiskGate(settings.risk), sink=sink)
    runner = StrategyRunner(strategy, executor, sink, market, account=executor, clock=clock,
                            transfers=transfers)
    executor.kill_switch.on_fire(lambda why, _now: runner.kill(why))
    # Funds in flight between venues go into the snapshots too, or they would vanish
    # from the portfolio's value until they land.
    in_transit = transfers if isinstance(transfers, InTransitSource) else None
    snapshots = BalanceSnapshots(writer, executor, traded_venues(settings, strategy),
                                 settings.postmortem.balance_snapshot_interval_s, strategy.name,
                                 transfers=in_transit)
    twin = strategy.baseline
    # The twin's paper orders walk the same depth books as the strategy's paper orders.
    depth = inner.depth if isinstance(inner, PaperExecutor) else None
    baseline = (open_baseline(settings, twin, writer=writer, market=market, clock=clock,
                              depth=depth) if twin is not None else None)
    if baseline is not None:
        runner.twin = baseline.runner
    return TradingSession(strategy, executor, runner, snapshots, baseline)


def open_baseline(settings: Settings, twin: Strategy, *, writer: DecisionLogWriter,
                  market: MarketView, clock: Clock,
                  depth: DepthProvider | None = None) -> BaselineSession:
    """The twin's shadow session: paper, with the settings' venues, latencies and limits
    (and the depth books the strategy's paper orders walk, if any)."""
    paper = PaperExecutor.from_settings(settings, writer.run_id + BASELINE_SUFFIX, depth=depth)
    executor = GatedExecutor(paper, RiskGate(settings.risk), sink=writer)
    runner = StrategyRunner(twin, executor, writer, market, account=executor, clock=clock,
                            transfers=PaperTransfers(paper, settings.execution))
    executor.kill_switch.on_fire(lambda why, _now: runner.kill(why))
    return BaselineSession(twin, paper, executor, runner)
