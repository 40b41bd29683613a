"""`--mode action`: run a strategy on the live bus, trading on paper unless `--live`.

Wiring, in start-up order (start-up and crash recovery are one path):

1. the ring buffer reloads its snapshot, so volatility windows are warm at once (live
   only: a replay starts with the recording's history alone, as a backtest does);
2. the decision log opens; every record from here on is durable within its flush interval;
3. the executor: paper by default; live only with keys and an explicit opt-in, and it
   reconciles its open orders before anything else happens;
4. the risk gate and kill switch wrap the executor (SIGUSR1 and the flag file fire it);
5. the strategy starts (on a conflated bus subscription, or in step with a replay at
   `--speed max`), then the market-data feed.

The strategy's clock is the feed's: wall time live, the recorded receive time in a replay.

Two ways to hand events to the strategy (README "Action replay vs backtest"):

- live, and a replay paced at `--speed N`: the live loop. The feed publishes on the bus;
  the loop wakes up, drains its subscription — the newest quote per market (a burst is
  conflated, as live) and every trade — and feeds them to the runner, then moves time on
  (`runner.advance`). What the strategy sees depends on how fast it keeps up.
- a replay at `--speed max`: in step (`Lockstep`). Pacing means nothing there, and a loop
  that wakes up when it can would see whatever the CPU let it, so each event is handed to
  the strategy as the replay publishes it, through the backtest engine's steps in its
  order (client fills due, the clock, the bus, the runner, balance snapshots), and the
  end of the data is the engine's (`TradingSession.finish_data`). The decision log is the
  backtest's of the same file, record for record (tests/modes/test_action_parity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from config.settings import ConfigError, Settings
from daemon.core.clock import FeedClock
from daemon.core.logs import get_logger
from daemon.core.model import ClientFill, Quote, Trade
from daemon.core.records import RecordSink
from daemon.core.routes import Callbacks
from daemon.core.tasks import spawn
from daemon.market.market_view import RingMarketView
from daemon.modes.summary import RunSummary, print_summary, record_counts, strategy_notes
from daemon.postmortem.exports import attach_strategy_exports, write_strategy_exports
from daemon.postmortem.schema import log_file_name
from daemon.postmortem.writer import DecisionLogWriter
from daemon.trading.coverage import QuoteWatch, traded_markets
from daemon.trading.errors import ExecutionError, LiveTradingRefused
from daemon.trading.gate import GatedExecutor
from daemon.trading.paper import PaperExecutor
from daemon.trading.runner import StrategyRunner
from daemon.trading.session import TradingSession, build_strategy, open_session
from daemon.trading.transfers import BackgroundTransfers
from strategies.base import Strategy

if TYPE_CHECKING:
    from adapters.client_flow import FeedClockFlow
    from daemon.app import App

log = get_logger("action")

#: Live loop tick when no market data arrives: order latency, timers and transfers still
#: need time to pass.
IDLE_TICK_S = 0.1
#: The summary's name of each dispatch (the `dispatch` figure).
LOCKSTEP = "every event"
LIVE_LOOP = "conflated (live loop)"


@dataclass(slots=True)
class _Tally:
    """What the trading loop saw, for the summary (kept as it goes: a stop cancels it)."""

    first_ns: int = 0
    delivered: int = 0
    conflated: int = 0
    #: How events reached the strategy: `LOCKSTEP` or `LIVE_LOOP`.
    dispatch: str = ""
    #: The recording's span (first and last frame) once a replay has ended: the span a
    #: backtest's summary gives.
    span_ns: tuple[int, int] | None = None
    client_fills: int = 0
    client_fills_unpriced: int = 0
    client_fills_skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: A live synthetic source's count of arrivals it could not price (read at the end).
    unpriced: Mapping[str, int] = dataclasses.field(default_factory=dict)


async def run_action(app: App) -> int:
    from daemon.feeds import resolve_markets

    # Tick, lot and paper balances of markets the settings leave out: from the recording
    # on a replay, from the venue's markets live (explicit settings win).
    settings = app.settings = await resolve_markets(app.settings, feed=app.args.feed,
                                                    strategy=app.args.strategy)
    started = time.perf_counter()
    tally = _Tally()
    rings = app.start_rings(warm=not app.replaying)  # a replay starts cold, as a backtest
    app.replay_yield_every = 1
    strategy = build_strategy(app.args.strategy, settings)
    attach_strategy_exports(strategy, settings.data_dir, app.run_id)
    app.warm_up_kernels()
    clock = FeedClock(replaying=app.replaying)
    writer = DecisionLogWriter.from_settings(settings, app.run_id, clock=clock)
    await writer.start()
    app.attach_decision_log(writer)
    sink = app.trading.tee(writer)
    try:
        inner = await _open_executor(settings, app)
        session = open_session(settings, strategy, inner, sink=sink, writer=writer,
                               market=RingMarketView(app.bus.view, rings, clock), clock=clock,
                               transfers=_live_transfers(settings, inner, sink))
        _arm_kill_switch(app, session.executor)
        # A halt the strategy comes back from by itself (e.g. after a failed unwind).
        app.health.watch_degraded(f"strategy {strategy.name}", strategy.degraded)
        log.info("strategy_started", strategy=strategy.name, mode=settings.execution.mode,
                 log=str(writer.root))
        try:
            await _trade(app, session, writer, clock, tally)
        finally:
            session.executor.cancel_all(clock())
            await _close_executor(inner)
            write_strategy_exports(strategy, settings.data_dir, app.run_id)
    finally:
        # The run ended cleanly unless an error (not a stop's cancellation) is in flight.
        failure = sys.exc_info()[1]
        clean = failure is None or isinstance(failure, asyncio.CancelledError)
        writer.end_run("stopped" if clean else f"failed: {type(failure).__name__}")
        await writer.aclose()
        log.info("strategy_stopped", strategy=strategy.name, records=writer.durable_records)
        if clean:  # the backtest's summary, on any clean stop (end of replay, signal, duration)
            _print_summary(app, strategy, writer, tally, clock,
                           time.perf_counter() - started)
    return 0


def _print_summary(app: App, strategy: Strategy, writer: DecisionLogWriter, tally: _Tally,
                   clock: FeedClock, wall_seconds: float) -> None:
    bus = app.bus
    quotes, trades = bus.published_quotes, bus.published_trades
    first_ns, last_ns = tally.span_ns or (tally.first_ns, clock() if tally.first_ns else 0)
    summary = RunSummary(
        mode="action", run_id=app.run_id, strategy=strategy.name, events=quotes + trades,
        quotes=quotes, trades=trades, first_ts_ns=first_ns, last_ts_ns=last_ns,
        wall_seconds=wall_seconds,
        records=writer.durable_records,
        log_files=sorted(writer.root.glob(f"*/{log_file_name(app.run_id)}")),
        **record_counts(writer.kinds), client_fills=tally.client_fills,
        client_fills_unpriced=tally.client_fills_unpriced or tally.unpriced.get("no_mid", 0),
        client_fills_skipped=dict(tally.client_fills_skipped),
        events_note=_events_note(tally),
    )
    summary.strategy_notes = strategy_notes(strategy)
    figures = {field.name: getattr(summary, field.name) for field in dataclasses.fields(summary)
               if field.name not in ("events_note", "strategy_notes")}
    figures.update(log_files=[str(path) for path in summary.log_files],
                   events_per_second=summary.events / wall_seconds if wall_seconds > 0 else 0.0,
                   delivered=tally.delivered, conflated=tally.conflated,
                   dispatch=tally.dispatch)
    print_summary(summary, figures, app.args.format)


def _events_note(tally: _Tally) -> str:
    if tally.dispatch == LOCKSTEP:
        return (f"{tally.delivered:,} reached the strategy: every event, in step with the "
                "replay, as in a backtest")
    return (f"{tally.delivered:,} reached the strategy, {tally.conflated:,} quotes "
            "conflated (a newer quote of the same market came first)")


async def _open_executor(settings: Settings, app: App) -> Any:
    if settings.execution.mode != "live":
        return _paper_executor(settings, app)
    from adapters.ccxt.executor import LiveExecutor

    try:
        executor = LiveExecutor.from_settings(settings, app.run_id, live_flag=app.args.live)
        await executor.start()
    except (LiveTradingRefused, ExecutionError) as exc:
        raise ConfigError(str(exc)) from None
    return executor


def _paper_executor(settings: Settings, app: App) -> PaperExecutor:
    """Paper: with `execution.walk_depth`, the bus keeps the depth books the parsers send
    (a replay's recorded ones; live, Binance with book_depth > 1 and Bybit orderbook.N),
    on the executor's clock, and marketable orders walk them as the backtest's do."""
    if not settings.execution.walk_depth:
        return PaperExecutor.from_settings(settings, app.run_id)
    books = app.bus.keep_depth()
    paper = PaperExecutor.from_settings(settings, app.run_id, depth=books.levels)
    books.clock = lambda: paper.now_ns  # an order walks the book as it arrives
    return paper


def _live_transfers(settings: Settings, inner: Any, sink: RecordSink) -> Any:
    """Live: withdrawals through ccxt, whitelisted, as background tasks. Paper: None (the
    session moves paper balances itself)."""
    if isinstance(inner, PaperExecutor):
        return None
    from adapters.ccxt.transfers import LiveTransfers

    exchanges = {venue: inner.exchange(venue) for venue in settings.enabled_venues()}
    return BackgroundTransfers(LiveTransfers(exchanges, settings.execution), sink,
                               settings.execution)


async def _close_executor(executor: Any) -> None:
    close = getattr(executor, "close", None)
    if close is not None:
        await close()


def _arm_kill_switch(app: App, executor: GatedExecutor) -> None:
    """Beyond the session's own wiring (runner.kill): /healthz turns 503, SIGUSR1 fires it,
    and so do any task of the daemon that dies (none of ours is restarted: a strategy must
    not quote on without its flow source, feed or decision log) and a decision log the
    disk stops taking."""
    kill_switch = executor.kill_switch
    kill_switch.on_fire(lambda why, _now: app.health.trip_kill_switch(why))
    app.kill_switch = kill_switch  # an operator's kill on the bus (ctl.<process>.kill)
    app.health.tasks.on_failure(
        lambda name, exc: kill_switch.fire(f"task {name} died: {type(exc).__name__}: {exc}"))
    if app.decision_log is not None:  # no order the audit trail cannot hold
        app.decision_log.on_not_durable(
            lambda why: kill_switch.fire(f"decision log not durable: {why}"))
    with contextlib.suppress(RuntimeError, ValueError):  # not on the main thread / platform
        kill_switch.install_signal_handler()


async def _trade(app: App, session: TradingSession, writer: DecisionLogWriter,
                 clock: FeedClock, tally: _Tally) -> None:
    """Hand the feed's events to the strategy until the feed ends (replay) or we are
    cancelled: in step with a replay at `--speed max`, else by the live loop."""
    if clock.replaying and getattr(app.args, "speed", 1.0) is None:
        tally.dispatch = LOCKSTEP
        await _trade_in_step(app, session, clock, tally)
    else:
        tally.dispatch = LIVE_LOOP
        await _trade_live(app, session, writer, clock, tally)


class Lockstep:
    """A replay's events handed to the strategy one by one as the replay publishes them,
    through the steps of the backtest engine's `Backtest.on_quote`/`on_trade`
    (daemon/backtest/engine.py) in the same order: the client fills due by the event
    (priced off the hedge quote before it), the feed clock, the bus (view and ring), the
    runner (paper executor first, then the strategy), a balance snapshot when due. The
    engine writes these steps out inline for speed; tests/modes/test_action_parity.py
    holds the two to the same decision log."""

    def __init__(self, app: App, session: TradingSession, clock: FeedClock, tally: _Tally,
                 flow: FeedClockFlow | None, watch: QuoteWatch | None) -> None:
        self._bus, self._trading = app.bus, app.trading
        self._runner, self._snapshots = session.runner, session.snapshots
        self._clock, self._tally = clock, tally
        self._flow, self._watch = flow, watch
        if app.synthetics is not None:  # as the live loop's subscription delivers them
            app.synthetics.deliver_to(session.runner.on_quote)

    def on_quote(self, quote: Quote) -> None:
        now = self._before(quote)
        self._bus.publish_quote(quote)
        self._runner.on_quote(quote)
        self._after(now)

    def on_trade(self, trade: Trade) -> None:
        now = self._before(trade)
        self._bus.publish_trade(trade)
        self._runner.on_trade(trade)
        self._after(now)

    def _before(self, event: Quote | Trade) -> int:
        now = event.local_ts_ns
        tally = self._tally
        if not tally.first_ns:
            tally.first_ns = now
        tally.delivered += 1
        if self._flow is not None:
            self._flow.before(event)
        self._clock.observe(now)
        self._trading.tick(now)
        return now

    def _after(self, now: int) -> None:
        self._snapshots.maybe_record(now)
        if self._watch is not None and self._watch.check(self._tally.first_ns, now):
            self._watch = None  # warned, or every market quoted: once per run


async def _trade_in_step(app: App, session: TradingSession, clock: FeedClock,
                         tally: _Tally) -> None:
    """A replay at `--speed max`: every event through `Lockstep`, then the backtest's end
    of the data. A stop before the end (signal, --duration) ends as the live loop does."""
    flow = _feed_clock_flow(app, session.runner, clock)
    # The /flow endpoint's fills come when its clients send them: a task of its own.
    endpoint = _start_client_flow(app, session.runner, clock, tally) if flow is None else None
    markets = traded_markets(session.runner.strategy, app.settings)
    watch = QuoteWatch(session.runner.strategy.name, markets, app.bus) if markets else None
    step = Lockstep(app, session, clock, tally, flow, watch)
    ended = False
    try:
        _note_span(tally, await app.market_data(Callbacks(step.on_quote, step.on_trade)))
        ended = True
        session.finish_data(clock, app.settings.execution)
    finally:
        if flow is not None and flow.flow is not None:
            tally.client_fills = flow.flow.delivered
            tally.client_fills_unpriced = flow.flow.unpriced
            tally.client_fills_skipped = flow.flow.skipped
        if endpoint is not None and not endpoint.done():
            endpoint.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await endpoint
        if not ended:
            session.snapshots.record_now(clock())


def _note_span(tally: _Tally, stats: object) -> None:
    """A replay that ended: the recording's span for the summary, as a backtest gives it."""
    from adapters.recordings.replay import ReplayStats

    if isinstance(stats, ReplayStats) and stats.first_ts_ns is not None:
        tally.span_ns = (stats.first_ts_ns, stats.last_ts_ns or stats.first_ts_ns)


async def _trade_live(app: App, session: TradingSession, writer: DecisionLogWriter,
                      clock: FeedClock, tally: _Tally) -> None:
    """Drain the bus subscription into the runner until the feed ends or we are cancelled."""
    runner, snapshots = session.runner, session.snapshots
    subscription = app.bus.subscribe(f"strategy:{runner.strategy.name}")
    timed_flow = _feed_clock_flow(app, runner, clock)  # before the feed: it sees the first event
    feed = spawn(app.market_data(), name="feed")
    flow = _start_client_flow(app, runner, clock, tally) if timed_flow is None else None
    markets = traded_markets(runner.strategy, app.settings)
    watch = QuoteWatch(runner.strategy.name, markets, app.bus) if markets else None
    ended = False  # the feed ended by itself: a replay's data is over
    try:
        while True:
            # Not spawned: awaited and cancelled right here, once per wake-up (the
            # replay yields after every frame), where spawn's watch would be pure cost.
            waiter = asyncio.ensure_future(subscription.wait())
            await asyncio.wait({waiter, feed}, timeout=None if clock.replaying else IDLE_TICK_S,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for event in subscription.drain():
                if not tally.first_ns:
                    tally.first_ns = event.local_ts_ns
                if timed_flow is not None:
                    timed_flow.before(event)  # the client fills due first, as in a backtest
                clock.observe(event.local_ts_ns)
                app.trading.tick(event.local_ts_ns)
                if isinstance(event, Quote):
                    runner.on_quote(event)
                else:
                    runner.on_trade(event)
            runner.advance(clock())
            snapshots.maybe_record(clock())
            if watch is not None and watch.check(tally.first_ns, clock()):
                watch = None  # warned, or every market quoted: once per run
            await writer.wait_room()
            if feed.done() and not subscription.pending:
                _note_span(tally, feed.result())  # a feed failure surfaces here
                ended = True
                break
    finally:
        tally.delivered, tally.conflated = subscription.delivered, subscription.conflated
        if timed_flow is not None and timed_flow.flow is not None:
            tally.client_fills = timed_flow.flow.delivered
            tally.client_fills_unpriced = timed_flow.flow.unpriced
            tally.client_fills_skipped = timed_flow.flow.skipped
        app.bus.unsubscribe(subscription)
        for task in (feed, flow):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not ended:
            snapshots.record_now(clock())
    session.finish_data(clock, app.settings.execution)  # a replay's end: as a backtest's


def _feed_clock_flow(app: App, runner: StrategyRunner, clock: FeedClock) -> FeedClockFlow | None:
    """On a replay, a file or synthetic client flow comes due by the feed clock and the
    trading loop delivers it before each market event, as a backtest does: the same fills
    at the same feed times whatever `--speed`. None live (the feed clock is the wall clock:
    the source paces itself) and for the /flow endpoint (its clients send when they do)."""
    if (not runner.strategy.takes_client_flow or not clock.replaying
            or app.settings.strategies.internalize.source == "websocket"):
        return None
    from adapters.client_flow import FeedClockFlow

    flow = FeedClockFlow(app.settings, runner, clock,
                         getattr(runner.strategy, "desk_quote", None))
    app.bus.add_sink(on_quote=flow.on_published, on_trade=flow.on_published)
    return flow


def _start_client_flow(app: App, runner: StrategyRunner, clock: FeedClock,
                       tally: _Tally) -> asyncio.Task[int] | None:
    """Client fills that arrive by themselves (internalize live, or the /flow endpoint),
    from the configured source, pumped into the runner as they come."""
    if not runner.strategy.takes_client_flow:
        return None
    from adapters.client_flow import (
        FileFlowSource,
        SyntheticFlowSource,
        build_flow_source,
        run_flow,
    )

    own = app.settings.strategies.internalize

    def mid() -> float | None:
        quote = app.bus.view.quote(own.venue, own.symbol)
        return quote.mid if quote is not None and not quote.stale else None

    source = build_flow_source(app.settings, mid=mid, clock=clock,
                               admit=runner.client_fill_refusal,
                               desk_quote=getattr(runner.strategy, "desk_quote", None))
    # The summary's counts: a file's bad rows; synthetic arrivals with no mid to price them.
    if isinstance(source, FileFlowSource):
        tally.client_fills_skipped = source.skipped
    elif isinstance(source, SyntheticFlowSource):
        tally.unpriced = source.skipped

    def deliver(fill: ClientFill) -> None:
        tally.client_fills += 1
        runner.on_client_fill(fill)

    return spawn(run_flow(source, deliver), name="client-flow")
