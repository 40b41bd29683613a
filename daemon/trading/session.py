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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from config.settings import ConfigError, Settings
from daemon.core.clock import Clock
from daemon.core.logs import get_logger
from daemon.core.model import Decision, TransferIntent
from daemon.core.records import RecordSink
from daemon.core.vocabulary import Action
from daemon.postmortem.writer import BalanceSnapshots, DecisionLogWriter
from daemon.trading.executor import OrderGateway
from daemon.trading.gate import GatedExecutor
from daemon.trading.paper import PaperExecutor
from daemon.trading.risk import RiskGate
from daemon.trading.runner import StrategyRunner, TransferService
from strategies.base import MarketView, Strategy

log = get_logger("session")


@dataclass(slots=True)
class TradingSession:
    strategy: Strategy
    #: The risk gate and kill switch in front of the paper or live executor.
    executor: GatedExecutor
    runner: StrategyRunner
    #: Periodic balance snapshots into the decision log.
    snapshots: BalanceSnapshots


def build_strategy(name: str, settings: Settings) -> Strategy:
    """The strategy `name` from its settings; a setting it cannot use is a ConfigError."""
    import strategies

    try:
        return strategies.build(name, settings)
    except ValueError as exc:
        raise ConfigError(f"invalid setting strategies: {exc}") from None


def open_session(settings: Settings, strategy: Strategy, inner: OrderGateway, *,
                 sink: RecordSink, market: MarketView, clock: Clock,
                 writer: DecisionLogWriter) -> TradingSession:
    """Wire a strategy to `inner` (paper or live) through the risk gate and kill switch.

    `sink` takes every record (decisions, intents, acks, fills, refusals); `writer` is the
    decision log the balance snapshots go to (the sink may wrap it).
    """
    executor = GatedExecutor(inner, RiskGate(settings.risk), sink=sink)
    runner = StrategyRunner(strategy, executor, sink, market, account=executor, clock=clock,
                            transfers=transfer_service(settings, inner, sink))
    executor.kill_switch.on_fire(lambda why, _now: runner.kill(why))
    snapshots = BalanceSnapshots(writer, executor, settings.enabled_venues(),
                                 settings.postmortem.balance_snapshot_interval_s, strategy.name)
    return TradingSession(strategy, executor, runner, snapshots)


def transfer_service(settings: Settings, inner: Any, sink: RecordSink) -> TransferService:
    """Paper moves balances on the feed clock; live withdraws only to whitelisted addresses."""
    from daemon.trading.transfers import LiveTransfers, PaperTransfers

    if isinstance(inner, PaperExecutor):
        return PaperTransfers(inner, settings.execution)
    exchanges = {venue: inner.exchange(venue) for venue in settings.enabled_venues()}
    return BackgroundTransfers(LiveTransfers(exchanges, settings.execution), sink)


class BackgroundTransfers:
    """Runs live transfers as tasks (the runner is synchronous); a failure is recorded."""

    def __init__(self, transfers: Any, sink: RecordSink) -> None:
        self._transfers = transfers
        self._sink = sink
        self._tasks: set[asyncio.Task[Any]] = set()

    def transfer(self, asset: str, amount: float, from_venue: str, to_venue: str,
                 now_ns: int) -> None:
        task = asyncio.create_task(self._send(asset, amount, from_venue, to_venue, now_ns))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, asset: str, amount: float, from_venue: str, to_venue: str,
                    now_ns: int) -> None:
        try:
            await self._transfers.transfer(asset, amount, from_venue, to_venue)
        except Exception as exc:  # refused or failed: the log says why, trading goes on
            log.error("transfer_failed", asset=asset, amount=amount, source=from_venue,
                      destination=to_venue, error=str(exc))
            inputs = TransferIntent(asset, from_venue, to_venue, amount).as_inputs()
            self._sink.record(Decision("transfers", now_ns, Action.REJECT, str(exc),
                                       inputs=inputs))
