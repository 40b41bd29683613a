"""The backtest engine: recorded market data through the live strategy code.

`--mode backtest` (daemon/modes/backtest.py) checks its inputs and runs this engine.
The recorded frames go through the live parsers (`adapters.recordings.replay.ReplayFeed`, files
merged by receive time, `FILE@VENUE:SYMBOL` relabelling as for `--feed replay:`) into the
same objects `--mode action` wires: a fresh bus view and ring buffer, the strategy built by
`strategies.build`, `StrategyRunner`, the risk gate and kill switch, the paper executor and
paper transfers. Only the clock differs: a simulated clock that is the receive time of the
event being processed. Nothing waits on it; the replay only yields to the event loop every
few thousand frames so Ctrl-C and the progress bar stay responsive.

Client flow (internalize): fills from `strategies.internalize.source` ("file": the CSV's
own times; "synthetic": the seeded Poisson arrivals of `SyntheticFlowSource`, priced off
the hedge venue's mid at arrival, as live) are delivered in time order between market
events. A WebSocket source has no place in a backtest and is refused.

Everything goes to the decision log, written synchronously (`DecisionLogWriter`,
`synchronous=True`) under the date of the data, so `--mode post-mortem --run ID` reports
on a backtest exactly as on a live run. At the end of the data every open order is
cancelled and the cancels are let through (one cancel latency later), then balances are
snapshotted.

Deterministic: the same files, settings, seed and `--run-id` give a byte-identical log (no
wall-clock time, no ring snapshot from disk, client order ids derived from the run id).
A run id whose log already exists is refused rather than appended to or overwritten.

A strategy's baseline twin (internalize's always-hedge policy, see
daemon/trading/session.py) runs in the same pass: its runner is fed through the
strategy's, and what is due on its own paper executor counts as due here.

Depth (`execution.walk_depth`, on by default): where the files carry order books (Binance
`@depth` diffs on their REST snapshot, Bybit `orderbook.N`), marketable paper orders walk
them (daemon/trading/paper.py) as they stood when the order arrived: the changes received
by then, not the frame of the event that lands it. Frame by frame the parsers feed the
books as they go; from the cache `RecordedDepth` applies the saved changes up to the row
being run (daemon/backtest/depth.py), so both give the same log. Files without depth
fill at the touch, as before.

Fast path (`backtest.cache`, on by default; issue #8): the frames are parsed once and the
events kept as columns (daemon/backtest/cache.py), so a rerun over the same files reads
them instead of parsing (a chunk at a time, the events built a few thousand ahead of the
loop: memory does not grow with the days, issue 18); and events that provably change
nothing are skipped: those of markets the strategy does not trade, and trades it does
not read that fill none of our orders, while nothing is due (daemon/backtest/skip.py).
Events that run take the same path as above, one by one; the decision log is
byte-identical to the frame-by-frame replay's. Skipped events still count in `events`;
the result says how many ran (`processed`) and whether the cache was hit, built or off.

Quiet rows (`backtest.quiet_rows`, on by default; issue 18): from the cache, where every
handler of the per-event path can tell which rows it must see (the runner, risk gate, paper
executor and strategy: `first_loud`, numba kernels over the chunk's columns), a stretch of
rows before the first such row, or before anything is due by time, is not built into
events: the last quote of each market in it runs (so every latest quote is exact) and the
clocks move (daemon/backtest/quiet.py, daemon/core/quiet.py). The log is the same byte for
byte; the result counts those rows in `quiet`. A strategy that cannot tell (every one but
inventory-mm so far), client flow, a twin, a kill-switch flag file, the queue model,
synthetic markets or another bus listener keep the row-by-row path with the skip.

Stepped (issue 15: a Gymnasium environment on the real engine). The column loop is one
synchronous generator (`_rows`): `run()` drives it to the end, yielding to the event loop
at its periodic pause points; `open(data, window)`, `run_until(ts_ns)` and `finish()` drive
it from outside, a stretch of data time at a time, and `request_pause()` (called from a
strategy callback, e.g. a policy waiting for an agent's action) stops it right after the
runner call under way. The same rows run in the same order either way, so the decision log
is the same; the events are loaded once (`cache.load`) and reused by every episode, an
episode being a fresh `Backtest` over a window of rows. Only the columns step: the
frame-by-frame replay (`backtest.cache` off, or events the cache cannot keep) is `run()`
only. `decision_log=False` records into a null sink (training writes no log).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from adapters.client_flow import ClientFlow, timed_client_flow
from adapters.quoted_flow import DeskQuote
from adapters.recordings.replay import ReplayFeed, ReplaySpec, ReplayStats, check_usable
from config.settings import Settings
from daemon.backtest.cache import (
    QUOTE,
    BacktestData,
    CachedEvents,
    CacheStatus,
    EventSource,
    joined,
    load,
)
from daemon.backtest.depth import RecordedDepth
from daemon.backtest.quiet import last_rows, quiet_rows
from daemon.backtest.skip import NO_GAP, GuardedMarketView, GuardedSink, SkipPlan
from daemon.backtest.span import Span, span_rows
from daemon.core.clock import SimulatedClock
from daemon.core.logs import get_logger
from daemon.core.model import Decision, Fill, OrderIntent, Quote, Trade
from daemon.core.quiet import QuietRows
from daemon.market.bus import Bus
from daemon.market.market_view import RingMarketView
from daemon.market.ringbuffer import RingStore
from daemon.market.synthetic import attach_synthetics
from daemon.postmortem.exports import attach_strategy_exports
from daemon.postmortem.writer import DecisionLogWriter, NullDecisionLog, decisions_dir
from daemon.trading.coverage import market_names, traded_markets
from daemon.trading.paper import PaperExecutor
from daemon.trading.runner import NEVER_NS
from daemon.trading.session import build_strategy, open_session
from strategies.base import MarketView

log = get_logger("backtest")

#: The progress bar is refreshed every this many events (a refresh costs ~50 µs).
PROGRESS_EVERY = 8_192
#: Replaying columns, yield to the event loop every this many rows (Ctrl-C, progress).
YIELD_EVERY_ROWS = 8_192
#: The decision log is written (and fsync'd) every this many records: ~330 bytes each
#: queued since the writer keeps encoded lines in one buffer (a few MB), and few fsyncs.
LOG_QUEUE_RECORDS = 8_192
#: Events (Quote/Trade objects) are built this many rows ahead of the loop taking them.
BUILD_ROWS = 4_096
#: `Backtest._pause_ns` once `request_pause()` was called: every clock has reached it.
PAUSE_NOW = NO_GAP


@dataclass(slots=True)
class BacktestResult:
    run_id: str
    strategy: str
    events: int
    quotes: int
    trades: int
    client_fills: int
    client_fills_unpriced: int
    first_ts_ns: int
    last_ts_ns: int
    wall_seconds: float
    records: int
    log_files: list[Path]
    corrupt_lines: int
    dropped: dict[str, int]
    #: Where the events came from: "hit", "built", "unsaved" or "off" (CacheStatus).
    cache: str = CacheStatus.OFF.value
    #: Events that went through the per-event path; the others were skipped or quiet.
    processed: int = 0
    #: Events checked in bulk and found to change nothing but the clocks and the latest
    #: quotes (daemon/core/quiet.py): never built as objects.
    quiet: int = 0
    #: Client fills left out, by what was wrong with them (a file's bad rows).
    client_fills_skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    #: What the replay lost on the way (ReplayStats.damage_summary), None if nothing.
    damage: str | None = None
    #: Decisions, order intents and fills in the decision log.
    decisions: int = 0
    orders: int = 0
    fills: int = 0

    @property
    def skipped(self) -> int:
        return self.events - self.processed - self.quiet

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall_seconds if self.wall_seconds > 0 else math.nan

    def figures(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["log_files"] = [str(path) for path in self.log_files]
        data["events_per_second"] = self.events_per_second
        data["skipped"] = self.skipped
        return data


class NoMarketData(Exception):
    """None of the strategy's markets has a single event in the data (a symbol or venue
    the recording does not carry): the message names them and what the data has."""


# -- client flow ----------------------------------------------------------------------------


def build_client_flow(settings: Settings, bus: Bus, start_ns: int,
                      desk_quote: DeskQuote | None = None) -> ClientFlow:
    """The configured client-flow source, as a time-ordered stream for the backtest;
    synthetic and quoted fills are priced off the hedge venue's quote on the bus when they
    come due (quoted clients shown `desk_quote`, the strategy's quote, if it has one)."""
    own = settings.strategies.internalize
    return timed_client_flow(settings, lambda: bus.view.quote(own.venue, own.symbol), start_ns,
                             desk_quote)


# -- the engine ----------------------------------------------------------------------------


class Backtest:
    """One strategy over recorded files on a simulated clock, logging every record.

    `skip=False` runs every event through the per-event path even from the cache (the
    parity tests compare it with the exact skip); with `backtest.cache` off the frames are
    replayed one by one and nothing is skipped.

    `decision_log=False` (training: many episodes nobody reports on) records into a
    `NullDecisionLog`: no file is written (nor the strategy's exports), the result's
    counts (records, decisions, orders, fills) are those a logged run would show, and
    `log_files` is empty.

    A Backtest runs once, either all at once (`await run()`) or stepped by a caller that
    needs control between events (a Gymnasium environment): `open(data)`, then
    `run_until(ts_ns)` as often as it likes (`request_pause()` from inside a strategy
    callback stops it early), then `finish()`. Stepping goes through the very loop `run()`
    does, so the same data and settings give the same decision log either way.
    """

    #: With every row run (the skip off), a chunk's rows go to the rings in bulk (made
    #: visible as the loop reaches them) instead of one append per event; False appends
    #: them one by one (tests compare the two).
    stage_rings: bool = True

    def __init__(self, settings: Settings, strategy_name: str, specs: list[ReplaySpec],
                 run_id: str, progress: Callable[[int, int], None] | None = None,
                 bus: Bus | None = None, *, skip: bool = True, span: Span | None = None,
                 decision_log: bool = True, quiet: bool | None = None) -> None:
        self.settings = settings
        #: Only the events received in this span run (walk-forward: daemon/backtest/span.py).
        self.span = span
        self.specs = specs
        self.run_id = run_id
        self.clock = SimulatedClock()
        self.bus = bus or Bus()
        # Fresh history: a backtest never reads the live ring snapshot. Growable rings:
        # memory follows the rows within the retention, not the days replayed.
        self.rings = RingStore(retention_s=settings.retention,
                               max_rate_hz=settings.ring.max_rate_hz, growable=True)
        self.bus.add_sink(self.rings)  # each key's channel writes straight to its ring
        # Configured cross rates, published as markets of their own (synthetic.crosses).
        synthetics = attach_synthetics(self.bus, settings)
        #: Legs of those: never skipped, or a cross would be priced off an old leg.
        self._synthetic_legs: set[tuple[str, str]] = (
            set(synthetics.legs) if synthetics is not None else set())
        self.strategy = build_strategy(strategy_name, settings)
        #: Whether the run writes its decision log (and exports); False: a null sink.
        self.decision_log = decision_log
        if decision_log:
            # Exports appended during the run (positions.csv) go to the run's report folder.
            attach_strategy_exports(self.strategy, settings.data_dir, run_id)
        log_class = DecisionLogWriter if decision_log else NullDecisionLog
        # Written as it goes, a few hundred records at a time: the log's queue (100k
        # records by default, sized for a live run's bursts) would otherwise hold every
        # encoded line of a long backtest, each ~8-16 kB in memory (orjson's buffer, not
        # the ~0.5 kB line): 9,646 records of 8 days of the spot recording held ~150 MB.
        self.writer = log_class(
            settings.data_dir, run_id, flush_interval_ms=settings.postmortem.flush_interval_ms,
            queue_size=min(settings.postmortem.queue_size, LOG_QUEUE_RECORDS),
            synchronous=True, clock=self.clock)
        self._takes_client_flow = self.strategy.takes_client_flow
        #: What the strategy trades (None: undeclared, not checked against the data).
        self.markets = traded_markets(self.strategy, settings)
        #: The markets of those with no event in the data, when others have (a warning).
        self.missing_note: str | None = None
        #: Markets whose events always run; None: every event runs (no exact skip).
        self.interest = self.markets if skip and settings.backtest.cache else None
        sink: GuardedSink | DecisionLogWriter = self.writer
        market: MarketView = RingMarketView(self.bus.view, self.rings, self.clock)
        #: Trades of the strategy's markets run only when they matter (reads_trades False).
        self.skip_trades = (self.interest is not None
                            and not self.strategy.reads_trades)
        if self.interest is not None:  # a strategy breaking its promise fails loudly
            sink = GuardedSink(self.writer, self.interest, self.strategy.name)
            market = GuardedMarketView(market, self.interest, self.strategy.name,
                                       reads_trades=not self.skip_trades)
        #: The recorded books marketable paper orders walk (execution.walk_depth).
        self.depth = RecordedDepth() if settings.execution.walk_depth else None
        self.paper = PaperExecutor.from_settings(
            settings, run_id, depth=self.depth.levels if self.depth is not None else None)
        if self.depth is not None:
            self.depth.clock = lambda: self.paper.now_ns  # an order walks as it arrives
        session = open_session(settings, self.strategy, self.paper, sink=sink, market=market,
                               clock=self.clock, writer=self.writer)
        self.session = session
        self.executor, self.runner = session.executor, session.runner
        if synthetics is not None:  # the runner sees them as a live subscription would
            synthetics.deliver_to(self.runner.on_quote)
        #: Synthetic markets and their legs: one counts as in the data when its legs are.
        self._synthetic_markets: dict[tuple[str, str], list[tuple[str, str]]] = (
            synthetics.market_legs() if synthetics is not None else {})
        self.snapshots = session.snapshots
        #: The strategy's baseline twin (internalize): its runner is fed through the
        #: strategy's; only what is due on its own paper executor is asked for here.
        self.baseline = session.baseline
        self.flow: ClientFlow | None = None
        self._rare_dues = (self._takes_client_flow
                           or self.executor.kill_switch.flag_file is not None)
        self._progress = progress
        self._next_progress = NEVER_NS
        self.events = 0
        self.processed = 0
        self.cache = CacheStatus.OFF
        #: The rows the run will go through (known once the events are loaded; None for a
        #: frame-by-frame replay): the progress bar's total.
        self.total: int | None = None
        #: Stepping pauses right after the row (run) that brings the clock to this time;
        #: PAUSE_NOW once `request_pause()` was called. NEVER_NS: no pause (`run()`).
        self._pause_ns = NEVER_NS
        #: The stepped run (`open`): the row loop, paused; None before `open` and after
        #: `finish` (or a failure).
        self._stepping: Generator[bool, None, None] | None = None
        self._stepped_stats: ReplayStats | None = None
        self._exhausted = False
        self._started = 0.0
        self._used = False
        #: Due rows run among the skippable ones, and rows of interest run before the
        #: last `_note_progress` (the counts of a stepped run finished early).
        self._due_rows_run = 0
        self._interest_ran = 0
        #: Check quiet rows in bulk where the run's handlers can (`_quiet_rows`); None:
        #: as `backtest.quiet_rows` says. Rows so checked and not built as events: `quiet`.
        self._quiet = settings.backtest.quiet_rows if quiet is None else quiet
        self.quiet = 0

    def _check_markets(self, present: Iterable[tuple[str, str]]) -> None:
        """Raises `NoMarketData` if none of the strategy's markets is in the data; notes
        (and logs) the missing ones if only some are."""
        if self.markets is None:
            return
        present = frozenset(present)
        present |= {market for market, legs in self._synthetic_markets.items()
                    if all(leg in present for leg in legs)}
        missing = self.markets - present
        if not missing:
            return
        files = ", ".join(str(dataclasses.replace(spec, path=Path(spec.path.name)))
                          for spec in self.specs)
        message = (f"no data for {market_names(missing)} in {files} "
                   f"(markets there: {market_names(present)})")
        if missing == self.markets:
            raise NoMarketData(message)
        log.warning("markets_without_data", strategy=self.strategy.name, detail=message)
        self.missing_note = message

    async def run(self) -> BacktestResult:
        self._claim("run()")
        started = time.perf_counter()
        if self._progress is not None:
            self._next_progress = PROGRESS_EVERY
        try:
            data: EventSource | None = None
            if self.settings.backtest.cache:
                data, self.cache = await load(self.specs, self.settings.data_dir,
                                              self.settings.backtest.cache_max_mb * 1e6,
                                              depth=self.depth is not None)
            window = self._in_span(data, self.span) if self.span is not None else None
            if data is None:
                depth = self.depth
                stats = check_usable(self.specs, await ReplayFeed(
                    self.specs, self.on_quote, self.on_trade, speed=None,
                    books=depth is not None,
                    publish_depth=depth.apply if depth is not None else None).run())
                self.processed = self.events
                self._check_markets(self.bus.published_keys())  # known only once replayed
            else:
                check_usable(self.specs, data.stats)  # before the strategy sees nothing
                self._check_markets(data.keys)
                window = window or (0, len(data))
                self.total = window[1] - window[0]
                for paused in self._rows(data, window):
                    if paused:  # a pause asked for outside stepping: nobody to hand over to
                        self._pause_ns = NEVER_NS
                    else:
                        await asyncio.sleep(0)
                stats = data.stats
            self._finish()
            self.writer.end_run()  # the log says the run ended cleanly (post-mortem reads it)
        finally:
            self.writer.close()
        return self._result(stats, time.perf_counter() - started)

    @staticmethod
    def _in_span(data: EventSource | None, span: Span) -> tuple[int, int]:
        """The rows received in `span` (a row range of the cache: nothing is copied)."""
        if data is None:  # frame by frame (cache off or impossible) has no rows to cut
            raise NoMarketData(f"a time span ({span}) needs the event cache (backtest.cache)")
        start, stop = span_rows(data, span)
        if start >= stop:
            raise NoMarketData(f"no events received in {span}")
        return start, stop

    # -- stepping (a Gymnasium environment drives the run) ---------------------------

    def open(self, data: BacktestData, window: tuple[int, int] | None = None) -> None:
        """Start a stepped run over `data`, events already loaded (`await cache.load(...)`,
        once: an episode reuses them, nothing is read or parsed again).

        `window`: the rows [start, stop) of `data` to run (`window_rows` finds them for a
        time span); None runs all of them. The run starts fresh at the window's first row
        (empty account history, strategy, flow and clocks; the recorded order books as of
        that row) and its end is the window's end. Then `run_until`, then `finish`.
        Raises `NoMarketData` (as `run()` does), ValueError for a bad window or for no
        columns (`data` None: `cache.load` could not keep the events; only `run()` replays
        those, frame by frame). The result's `cache` is "hit" (the events came ready).
        """
        if data is None:  # what `cache.load` returns for events it cannot keep as columns
            raise ValueError("stepping needs the events as columns, and the cache could not "
                             "keep these files' events: run() replays them frame by frame")
        self._claim("open()")
        if window is not None:
            start, stop = window
            if not 0 <= start < stop <= len(data):
                raise ValueError(f"window {window} is not a non-empty row range of the "
                                 f"data's {len(data):,} rows")
        check_usable(self.specs, data.stats)
        self._check_markets(data.keys)
        self._started = time.perf_counter()
        self.cache = CacheStatus.HIT
        window = window or (0, len(data))
        self.total = window[1] - window[0]
        self._stepped_stats = data.window_stats(*window)
        self._stepping = self._rows(data, window)

    def run_until(self, ts_ns: int | None = None) -> bool:
        """Run rows until the simulated clock reaches `ts_ns` (None: no time limit), or
        until `request_pause()` is called, whichever comes first. True when it paused
        (there may be rows left), False once the data (window) ran out: then `finish()`.

        A pause on time comes right after the row that brought the clock to (or past)
        `ts_ns`, once the runner has taken it (`runner.on_quote`/`on_trade` returned) and
        before that row's balance-snapshot check. If the clock is already there, nothing
        runs. Only rows that run can pause: the exact skip (daemon/backtest/skip.py) leaves
        out events that change nothing, so the clock may be past `ts_ns` by then.

        A pause requested during a row comes at the same place, so an order the caller
        then submits through `runner.call(...)` lands exactly where it would have had the
        strategy returned it from that callback. Client fills come before the market
        event they are due by, each at its own time: time moves to the fill first (a
        strategy timer may fire: `runner.advance`), then the runner takes it
        (`runner.on_client_fill`); a pause asked for in either comes right after that
        call, before the rest of the row. One runner call that runs more than one
        callback (e.g. `on_quote` and a timer due at the same event) pauses after all of
        them: a strategy should ask for an outside decision from one of them only.
        """
        stepping = self._stepping
        if stepping is None:
            raise RuntimeError("run_until() needs an open stepped run: open() first; not "
                               "after finish() or a run_until() that raised")
        if self._exhausted:
            return False
        target = NEVER_NS if ts_ns is None else ts_ns
        if self.clock.now_ns >= target:
            return True
        self._pause_ns = target
        try:
            for paused in stepping:
                if paused:
                    return True
        except BaseException:
            self._abandon()
            raise
        finally:
            self._pause_ns = NEVER_NS
        self._exhausted = True
        return False

    def request_pause(self) -> None:
        """Pause the stepped run right after the runner call under way (see `run_until`):
        called from inside a strategy callback, e.g. by a policy that waits for an action
        from an agent outside the run. Ignored by `run()`, and between `run_until` calls."""
        self._pause_ns = PAUSE_NOW

    @property
    def exhausted(self) -> bool:
        """Whether the stepped run's data (window) ran out (`run_until` returned False)."""
        return self._exhausted

    def finish(self) -> BacktestResult:
        """End the stepped run as `run()` ends (cancel what is open and let the cancels
        through, snapshot the balances, `run_end`, close the log) and return its result.
        Before the data ran out, the rows not run yet are left out: `events` counts the
        window's rows up to the last one reached."""
        if self._stepping is None:
            raise RuntimeError("finish() needs an open stepped run: open() first; once, and "
                               "not after a run_until() that raised (the log is closed)")
        stepping, self._stepping = self._stepping, None
        try:
            if not self._exhausted:
                stepping.close()
            self._finish()
            self.writer.end_run()
        finally:
            self.writer.close()
        assert self._stepped_stats is not None
        return self._result(self._stepped_stats, time.perf_counter() - self._started)

    def _abandon(self) -> None:
        """A row raised while stepping: the run is over, its log closed (no `run_end`)."""
        stepping, self._stepping = self._stepping, None
        if stepping is not None:
            stepping.close()
        self.writer.close()

    def _claim(self, how: str) -> None:
        if self._used:
            raise RuntimeError(f"{how}: this Backtest has run already (one run each)")
        self._used = True

    # -- from columns, with the exact skip -------------------------------------------

    def _interest(self, data: EventSource) -> frozenset[tuple[str, str]] | None:
        """The markets whose every event runs (None: every event runs)."""
        interest = self.interest
        if interest is not None and self._takes_client_flow:
            # The risk gate marks client trades at the newest mid of the flow's symbol on
            # any venue: every market of that symbol is of interest.
            symbol = self.settings.strategies.internalize.symbol
            interest = interest | {key for key in data.keys if key[1] == symbol}
        if interest is not None:
            interest = interest | self._synthetic_legs
        return interest

    def _rows(self, data: EventSource, window: tuple[int, int]) -> Generator[bool, None, None]:
        """The rows of `window` in order: quiet stretches checked in bulk where the run's
        handlers can tell them (`_quiet_rows`), else one event at a time (`_event_rows`).

        Yields False every YIELD_EVERY_ROWS rows (`run()` lets other tasks run there) and
        True where stepping pauses (see `run_until`); the run goes on when it is resumed."""
        interest = self._interest(data)
        replayed = self._quiet_keys(data, interest)
        if replayed is not None:
            yield from self._quiet_rows(data, window, replayed)
        else:
            yield from self._event_rows(data, window, interest)

    def _quiet_keys(self, data: EventSource,
                    interest: frozenset[tuple[str, str]] | None) -> list[bool] | None:
        """Per key of the data, whether its quiet rows leave state behind (`_quiet_rows`
        replays its last quote: every market, or with the skip on those of interest; the
        others' state nothing reads). Their rows then go to the rings in bulk. None: the
        quiet path is off or some handler cannot tell its quiet rows (the runner, gate,
        paper executor or strategy says so; client flow, a twin, synthetic markets, a bus
        sink or subscriber besides the rings would see events left out)."""
        if not (self._quiet and self.stage_rings and self.runner.quiet_rows) or (
                self._takes_client_flow or self.baseline is not None
                or self._synthetic_markets or self._synthetic_legs):
            return None
        replayed = [interest is None or key in interest for key in data.keys]
        bulk = frozenset(key for key, kept in zip(data.keys, replayed, strict=True) if kept)
        self.rings.feed_in_bulk(bulk)
        self.bus.refresh_routes()
        if any(self.bus.listened(*key) for key in bulk):
            self.rings.feed_in_bulk(frozenset())
            self.bus.refresh_routes()
            return None
        return replayed

    def _quiet_rows(self, data: EventSource, window: tuple[int, int],
                    replayed: list[bool]) -> Generator[bool, None, None]:
        """`_event_rows`, with each stretch of rows no handler must see as an event checked
        in bulk (daemon/core/quiet.py): the runner's `first_loud` (gate, paper executor,
        strategy) over the chunk's columns, bounded by what is due by time (`_due_ns`: the
        strategy timer, paper latencies, balance snapshots; a stepping pause). Such a stretch
        is never built as events: the last quote of each market in it runs (at its row's
        clock) so every latest quote is the one the stretch would leave, then the clocks
        move to its end (daemon/backtest/quiet.py). The first row a handler must see runs
        as `_event_rows` runs it. The rows go to the rings in bulk, visible up to the row
        run (or replayed)."""
        origin, end = window
        depth = self.depth if data.depth is not None else None
        if depth is not None:  # an order walks only the strategy's markets' books
            depth.load(data.depth, self.markets)  # type: ignore[arg-type]
        keys = data.keys
        bus, clock, snapshots, runner = self.bus, self.clock, self.snapshots, self.runner
        quote_routes: dict[int, Callable[[Quote], None]] = {}
        trade_routes: dict[int, Callable[[Trade], None]] = {}

        def publish(event: Quote | Trade, key: int) -> None:
            """The event to the bus and the runner, as `on_quote`/`on_trade` send it."""
            if type(event) is Quote:
                route = quote_routes.get(key)
                if route is None:
                    route = quote_routes[key] = bus.quote_route(*keys[key])
                route(event)
                runner.on_quote(event)
            else:
                publish_trade = trade_routes.get(key)
                if publish_trade is None:
                    publish_trade = trade_routes[key] = bus.trade_route(*keys[key])
                publish_trade(event)  # type: ignore[arg-type]
                runner.on_trade(event)  # type: ignore[arg-type]

        position = _ReplayPosition(origin - 1)
        in_bulk = np.array(replayed, dtype=bool)
        next_progress = origin + YIELD_EVERY_ROWS
        run = quiet = 0
        for first, chunk in data.chunks(origin, end):
            if depth is not None and first > origin:
                depth.settle(first)  # what every later walk sees, folded (bounded memory)
            local = np.arange(len(chunk))
            bulk = in_bulk[chunk.key]
            _stage_rings(self.rings, chunk, local[bulk], first + local[bulk],
                         chunk.kind[bulk] == QUOTE, position)
            rows = quiet_rows(chunk, clock.now_ns)
            at = 0
            while at < len(chunk):
                if first + at >= next_progress:  # every few thousand rows: progress, other tasks
                    next_progress = first + at + YIELD_EVERY_ROWS
                    self.events, self.processed, self.quiet = first + at - origin, run, quiet
                    if self.events >= self._next_progress:
                        self._report_progress(clock.now_ns)
                    yield False
                bound = min(len(chunk), next_progress - first)
                loud = self._first_loud(rows, at, bound)
                if loud > at:  # rows [at, loud) are quiet
                    replays = self._settle_quiet(rows, chunk, first, at, loud, replayed,
                                                 position, publish, trade_routes)
                    run += replays
                    quiet += loud - at - replays
                if loud == bound:
                    at = loud
                    continue
                row = first + loud
                event = chunk.event(loud)
                now = event.local_ts_ns
                if depth is not None:
                    depth.at_row = row
                if now > clock.now_ns:
                    clock.now_ns = now
                position.row = row
                publish(event, int(rows.key[loud]))
                run += 1
                at = loud + 1
                if clock.now_ns >= self._pause_ns:  # stepping: hand over before the snapshot
                    self.events, self.processed, self.quiet = row + 1 - origin, run, quiet
                    yield True
                if now >= snapshots.next_ns:
                    snapshots.record_now(now)
            self.rings.flush_staged()  # the loop is past every row of the chunk
        if depth is not None:
            depth.at_row = end  # the end of the data: every change is in
        self.events, self.processed, self.quiet = end - origin, run, quiet

    def _first_loud(self, rows: QuietRows, start: int, stop: int) -> int:
        """The first of rows [start, stop) that must run as an event: one whose clock
        reaches what is due by time, or one a handler must see (`runner.first_loud`)."""
        due = min(self._due_ns(), self._pause_ns)
        stop = start + int(rows.clock_ns[start:stop].searchsorted(due))
        return self.runner.first_loud(rows, start, stop)

    def _settle_quiet(self, rows: QuietRows, chunk: BacktestData, first: int, start: int,
                      stop: int, replayed: list[bool], position: _ReplayPosition,
                      publish: Callable[[Quote | Trade, int], None],
                      trade_routes: dict[int, Callable[[Trade], None]]) -> int:
        """Leave every handler as the quiet rows [start, stop) would (see `_quiet_rows`):
        the last quote of each market, in row order, at its row's clock; then the clocks
        at the stretch's end. Returns how many quotes ran."""
        last_quote, last_trade = last_rows(rows.kind, rows.key, start, stop, len(rows.keys))
        clock = self.clock
        ran = 0
        for row in sorted(row for key, row in enumerate(last_quote.tolist())
                          if row >= 0 and replayed[key]):
            clock.now_ns = int(rows.clock_ns[row])
            position.row = first + row
            publish(chunk.event(row), int(rows.key[row]))
            ran += 1
        for key, row in enumerate(last_trade.tolist()):
            if row >= 0 and replayed[key] and key not in trade_routes:
                # As a published trade would: the bus asks the rings for the key's route
                # (a staged trade ring exists from then).
                trade_routes[key] = self.bus.trade_route(*rows.keys[key])
        clock.now_ns = int(rows.clock_ns[stop - 1])
        self.paper.note_time(clock.now_ns)
        return ran

    def _event_rows(self, data: EventSource, window: tuple[int, int],
                    interest: frozenset[tuple[str, str]] | None
                    ) -> Generator[bool, None, None]:
        """Every event of interest through the per-event path, in order; of the others only
        those at which something is due (daemon/backtest/skip.py).

        The rows come a chunk at a time (`data.chunks`: a cache file's record batches, or
        views of columns in memory), and the chunk's rows of interest are built into
        Quote/Trade objects `BUILD_ROWS` at a time as the loop reaches them: memory holds
        one chunk's columns and a few thousand events, not the run's. The skip's state
        carries over from chunk to chunk (see `_next_chunk`), so the rows that run are
        those a single pass over all the rows would run.

        Yields as `_rows` does.
        """
        origin, end = window
        # With recorded depth, the books a walk reads are those as of the row being run.
        depth = self.depth if data.depth is not None else None
        if depth is not None:  # an order walks only the strategy's markets' books
            depth.load(data.depth, self.markets)  # type: ignore[arg-type]
        # The steps of `on_quote`/`on_trade` and `_after`, inlined: this loop runs every
        # event of interest, and the calls and the bus's key lookup were ~0.4 us of each.
        # The bus channel of a key is asked for when the key is first published, as
        # `publish_quote` would create it.
        quote_routes: dict[int, Callable[[Quote], None]] = {}
        trade_routes: dict[int, Callable[[Trade], None]] = {}
        keys = data.keys
        bus, clock, snapshots = self.bus, self.clock, self.snapshots
        runner_on_quote, runner_on_trade = self.runner.on_quote, self.runner.on_trade
        flows = self._takes_client_flow
        reaches_orders = self._print_reaches_orders() if self.skip_trades else None
        start = origin  # the first row not yet run or skipped
        skipped = NO_GAP  # running max time of the rows skipped since the last one run
        trades_skipped = 0
        due: int | None = None  # `_due_ns()`, kept while no row runs (None: ask again)
        next_progress = start + YIELD_EVERY_ROWS  # and a yield to other tasks
        previous = origin - 1  # the last row of interest met
        plan: SkipPlan | None = None
        # Every row runs (no skip): each chunk's rows go to the rings in bulk, made visible
        # as the loop reaches them (`RingStore.feed_in_bulk`); `position.row` is the row
        # being published, set just before its publish.
        position = (_ReplayPosition(origin - 1) if interest is None and self.stage_rings
                    else None)
        if position is not None:
            self.rings.feed_in_bulk(frozenset(keys).difference(self._synthetic_markets))
            bus.refresh_routes()
        for first, chunk in data.chunks(origin, end):
            if plan is None:
                plan = SkipPlan(chunk, interest, offset=first, origin=origin)
            else:
                plan, start = yield from self._next_chunk(plan, chunk, first, interest, start,
                                                          previous, trades_skipped)
                due = None
                if depth is not None:  # what every later walk sees, folded (bounded memory)
                    depth.settle(start)
            rows = plan.rows
            local = rows - plan.offset
            columns = plan.data
            is_quote = columns.kind[local] == QUOTE
            if position is not None:
                _stage_rings(self.rings, columns, local, rows, is_quote, position)
            quotes = _built(columns.quotes, local[is_quote])
            trades = _built(columns.trades, local[~is_quote])
            next_quote, next_trade = quotes.__next__, trades.__next__
            for row, gap, quote, key in zip(rows.tolist(), plan.gap_max, is_quote.tolist(),
                                            columns.key[local].tolist(), strict=True):
                if row >= next_progress:  # every few thousand rows: progress, other tasks
                    next_progress = row + YIELD_EVERY_ROWS
                    if row >= self._next_progress:
                        self.events = row - origin
                        self._report_progress(clock.now_ns)
                    yield False
                event: Quote | Trade = next_quote() if quote else next_trade()
                now = event.local_ts_ns
                if gap != NO_GAP:  # rows [start, row) are not of interest
                    if due is None:
                        due = self._due_ns()
                    if gap >= due:
                        self._note_progress(plan, row, trades_skipped)
                        start = yield from self._due_rows(plan, start, row)
                        due = None
                    # The running max of rows before this one, if the last of them was
                    # skipped.
                    skipped = gap if start < row else NO_GAP
                if skipped > now:
                    self._catch_up(skipped)  # the skipped rows moved the clocks past this one
                if reaches_orders is not None and not quote:
                    if due is None:
                        due = self._due_ns()
                    if now < due and not reaches_orders(event.exchange, event.symbol,  # type: ignore[union-attr]
                                                        event.price):
                        # A trade that nothing reads, that fills none of our orders, and by
                        # whose time nothing is due: it changes nothing but the clocks.
                        trades_skipped += 1
                        if now > skipped:
                            skipped = now
                        continue
                skipped = NO_GAP
                due = None  # this row runs: what is due may change (a pause too: see below)
                if depth is not None:
                    depth.at_row = row
                if flows:  # client fills due by now first (`_deliver_client_fills`)
                    flow = self.flow
                    if flow is None or ((next_fill := flow.next_ts_ns) is not None
                                        and next_fill <= now):
                        self._note_progress(plan, row, trades_skipped)
                        yield from self._client_fills(now)
                if now > clock.now_ns:
                    clock.now_ns = now
                if position is not None:
                    position.row = row
                if quote:
                    publish_quote = quote_routes.get(key)
                    if publish_quote is None:
                        publish_quote = quote_routes[key] = bus.quote_route(*keys[key])
                    publish_quote(event)  # type: ignore[arg-type]
                    runner_on_quote(event)  # type: ignore[arg-type]
                else:
                    publish_trade = trade_routes.get(key)
                    if publish_trade is None:
                        publish_trade = trade_routes[key] = bus.trade_route(*keys[key])
                    publish_trade(event)  # type: ignore[arg-type]
                    runner_on_trade(event)  # type: ignore[arg-type]
                if clock.now_ns >= self._pause_ns:  # stepping: hand over before the snapshot
                    self._note_progress(plan, row + 1, trades_skipped)
                    yield True
                if now >= snapshots.next_ns:
                    snapshots.record_now(now)
                start = row + 1
            if len(rows):
                previous = int(rows[-1])
            if position is not None:  # the loop is past every row of the chunk
                self.rings.flush_staged()
            # The chunk's events go before the next chunk's are built.
            quotes = trades = iter(())
            next_quote, next_trade = quotes.__next__, trades.__next__
        if plan is not None and start < end:
            self._note_progress(plan, end, trades_skipped)
            start = yield from self._due_rows(plan, start, end)
            if start < end:
                self._catch_up(plan.running_max_at(end - 1))
        if depth is not None:
            depth.at_row = end  # the end of the data: every change is in
        self.events = end - origin
        interest_rows = plan.before + len(plan.rows) if plan is not None else 0
        self.processed = interest_rows - trades_skipped + self._due_rows_run

    def _next_chunk(self, plan: SkipPlan, chunk: BacktestData, first: int,
                    interest: frozenset[tuple[str, str]] | None, start: int, previous: int,
                    trades_skipped: int) -> Generator[bool, None, tuple[SkipPlan, int]]:
        """The plan of the chunk starting at row `first`, the one before being `plan`.

        Rows of the chunk before not run yet ([start, first)) are settled first, as the
        one pass over all rows would settle them. A row among them can still run only if
        its running max time reaches what is due (`_due_ns()`, which only a row run
        changes). If the chunk ended on skippable rows, the next row of interest (or the
        end of the data) runs those due rows before anything else runs: they are run now.
        If it ended on a trade the skip left out, whether they run is not known yet: they
        are kept, ahead of the new chunk (with out-of-order times only; rows none of
        which can be due are forgotten). Returns the new plan and where `start` goes."""
        carry = plan.running_max_at(first - 1)
        resume = start
        kept: BacktestData | None = None
        if start < first and carry >= self._due_ns():
            if previous < first - 1:
                self._note_progress(plan, first, trades_skipped)
                resume = yield from self._due_rows(plan, start, first)
            else:
                keep_from = plan.first_due(start, first, self._due_ns())
                kept = plan.data.slice(keep_from - plan.offset, first - plan.offset)
                carry = plan.running_max_at(keep_from - 1)
        offset = first
        if kept is not None and len(kept):
            offset = first - len(kept)
            chunk = joined([kept, chunk])
        following = SkipPlan(chunk, interest, (offset, offset + len(chunk)), offset=offset,
                             first=first, carry=carry, previous=previous, origin=plan.origin,
                             before=plan.before + len(plan.rows))
        return following, resume

    def _note_progress(self, plan: SkipPlan, row: int, trades_skipped: int) -> None:
        """`events` and `processed` up to `row` (excluded), before the loop may pause (a
        stepped run may `finish()` there; the loop's own end sets them at once)."""
        self.events = row - plan.origin
        self._interest_ran = plan.before + int(plan.rows.searchsorted(row)) - trades_skipped
        self.processed = self._interest_ran + self._due_rows_run

    def _due_rows(self, plan: SkipPlan, start: int, stop: int) -> Generator[bool, None, int]:
        """Run the rows in [start, stop) at which something is due, skip the others.
        Returns the row after the last one run (`start` if none was). Each runs as
        `on_quote`/`on_trade` would run it, a stepping pause before its snapshot check."""
        clock = self.clock
        while (row := plan.first_due(start, stop, self._due_ns())) < stop:
            event = plan.event(row)
            now = event.local_ts_ns
            if start < row and (skipped_max := plan.running_max_at(row - 1)) > now:
                self._catch_up(skipped_max)
            self.events = row - plan.origin
            if self.depth is not None:
                self.depth.at_row = row
            if self._takes_client_flow:
                yield from self._client_fills(now)
            if now > clock.now_ns:
                clock.now_ns = now
            if type(event) is Quote:
                self.bus.publish_quote(event)
                self.runner.on_quote(event)
            else:
                self.bus.publish_trade(event)
                self.runner.on_trade(event)
            self._due_rows_run += 1
            self.processed = self._interest_ran + self._due_rows_run
            if clock.now_ns >= self._pause_ns:
                yield True
            self._after(now)
            start = row + 1
        return start

    def _client_fills(self, until_ns: int) -> Generator[bool, None, None]:
        """Client fills due before this market event, each at its own time, as
        `ClientFlow.deliver` hands them out; a pause asked for while time moved to a fill
        (a strategy timer) comes before the fill is taken, one asked for while it was
        taken right after it."""
        clock, runner = self.clock, self.runner
        flow = self._client_flow(until_ns)
        for arrival in flow.arrivals(until_ns):
            clock.advance_to(arrival.ts_ns)
            runner.advance(clock())
            if self._pause_ns == PAUSE_NOW:
                yield True
            fill = flow.price(arrival)  # at the quote the desk shows by now
            if fill is None:
                continue
            runner.on_client_fill(fill)
            if self._pause_ns == PAUSE_NOW:
                yield True

    def _due_ns(self) -> int:
        """The earliest time at which something besides the strategy's markets is due."""
        due = self.snapshots.next_ns
        timer = self.runner.next_timer_ns
        if timer < due:
            due = timer
        pending = self.paper.next_event_ns
        if pending is not None and pending < due:
            due = pending
        if self.baseline is not None:
            pending = self.baseline.paper.next_event_ns
            if pending is not None and pending < due:
                due = pending
            due = min(due, self.baseline.runner.next_timer_ns)
        return self._rarely_due(due) if self._rare_dues else due

    def _rarely_due(self, due: int) -> int:
        """`_due_ns` for what only some runs have: client fills, a kill-switch flag file."""
        if self._takes_client_flow:
            fill = self.flow.next_ts_ns if self.flow is not None else 0
            if fill is not None and fill < due:
                due = fill
        switches = [self.executor.kill_switch]
        if self.baseline is not None:
            switches.append(self.baseline.executor.kill_switch)
        for kill_switch in switches:
            if kill_switch.flag_file is not None:
                poll = kill_switch.next_poll_ns
                if poll is not None and poll < due:
                    due = poll
        return due

    def _catch_up(self, ts_ns: int) -> None:
        """Move the clocks to where skipped rows (out of time order) left them; `ts_ns` is
        the running max time up to the last of them. Nothing was due at their own times
        (that is why they were skipped), so nothing lands: only the clocks move."""
        self.clock.advance_to(ts_ns)
        self.paper.note_time(ts_ns)
        if self.baseline is not None:
            self.baseline.paper.note_time(ts_ns)

    def _print_reaches_orders(self) -> Callable[[str, str, float], bool]:
        """Would a print fill a resting order of the strategy's (or of its twin's)?"""
        reaches = self.paper.print_reaches_orders
        if self.baseline is None:
            return reaches
        twin_reaches = self.baseline.paper.print_reaches_orders
        return lambda venue, symbol, price: (reaches(venue, symbol, price)
                                             or twin_reaches(venue, symbol, price))

    # -- per event (the hot path) ------------------------------------------------------

    # Once per event, so the clock's `advance_to` and the snapshots' `maybe_record` are
    # written out inline, with no helper between them: those calls were 0.15 µs of the
    # 2.6 µs per event the inventory-mm backtest spent on top of parsing.

    def on_quote(self, quote: Quote) -> None:
        now = quote.local_ts_ns
        if self._takes_client_flow:
            self._deliver_client_fills(now)
        if now > self.clock.now_ns:  # SimulatedClock.advance_to: time never goes back
            self.clock.now_ns = now
        self.bus.publish_quote(quote)
        self.runner.on_quote(quote)
        self._after(now)

    def on_trade(self, trade: Trade) -> None:
        now = trade.local_ts_ns
        if self._takes_client_flow:
            self._deliver_client_fills(now)
        if now > self.clock.now_ns:
            self.clock.now_ns = now
        self.bus.publish_trade(trade)
        self.runner.on_trade(trade)
        self._after(now)

    def _after(self, now: int) -> None:
        if now >= self.snapshots.next_ns:  # BalanceSnapshots.maybe_record, inline
            self.snapshots.record_now(now)
        self.events += 1
        if self.events >= self._next_progress:  # NEVER_NS without a progress bar
            self._report_progress(now)

    def _report_progress(self, now: int) -> None:
        self._next_progress = self.events + PROGRESS_EVERY
        self._progress(self.events, now)  # type: ignore[misc]

    def _deliver_client_fills(self, until_ns: int) -> None:
        """Client fills due before this market event, each at its own time."""
        self._client_flow(until_ns).deliver(until_ns, self.clock, self.runner)

    def _client_flow(self, start_ns: int) -> ClientFlow:
        """The run's client flow, built at its first event (`start_ns`)."""
        if self.flow is None:
            self.flow = build_client_flow(self.settings, self.bus, start_ns,
                                          getattr(self.strategy, "desk_quote", None))
        return self.flow

    # -- the end of the data -----------------------------------------------------------

    def _finish(self) -> None:
        """Cancel what is still open, let the cancels through, snapshot the balances (the
        session's end of data, which an action replay at --speed max shares)."""
        self.session.finish_data(self.clock, self.settings.execution)

    def _result(self, stats: ReplayStats, wall_seconds: float) -> BacktestResult:
        flow = self.flow
        return BacktestResult(
            run_id=self.run_id,
            strategy=self.strategy.name,
            events=self.events,
            quotes=stats.quotes,
            trades=stats.trades,
            client_fills=flow.delivered if flow else 0,
            client_fills_unpriced=flow.unpriced if flow else 0,
            first_ts_ns=stats.first_ts_ns or 0,
            last_ts_ns=stats.last_ts_ns or 0,
            wall_seconds=wall_seconds,
            records=self.writer.durable_records,
            log_files=(existing_logs(self.settings.data_dir, self.run_id)
                       if self.decision_log else []),
            corrupt_lines=stats.corrupt_lines,
            dropped=dict(stats.dropped),
            cache=self.cache.value,
            processed=self.processed,
            quiet=self.quiet,
            client_fills_skipped=dict(flow.skipped) if flow else {},
            damage=stats.damage_summary(),
            decisions=self.writer.kinds[Decision],
            orders=self.writer.kinds[OrderIntent],
            fills=self.writer.kinds[Fill],
        )


def window_rows(data: EventSource, start_ns: int, end_ns: int) -> tuple[int, int]:
    """The rows of `data` received in [start_ns, end_ns), as a `Backtest.open` window:
    from the first row whose running max receive time reaches `start_ns` to the first that
    reaches `end_ns` (rows are in receive order; one out of order stays with its place)."""
    if isinstance(data, BacktestData | CachedEvents):
        return data.rows_received(start_ns, end_ns)
    running_max = np.maximum.accumulate(data.local_ts_ns)  # any columns with the times
    start, stop = running_max.searchsorted([start_ns, end_ns]).tolist()
    return int(start), int(stop)


def window_stats(data: EventSource, start: int, stop: int) -> ReplayStats:
    """`data.stats` with the quotes, trades and times of the rows [start, stop) (the
    files' damage and drops stay those of the whole files)."""
    return data.window_stats(start, stop)


def _built(build: Callable[[np.ndarray], list[Any]], rows: np.ndarray) -> Iterator[Any]:
    """The events of these rows, built `BUILD_ROWS` at a time as the loop takes them: a
    chunk's rows are read at once, its objects (~0.5 kB each) only a few thousand ahead."""
    return chain.from_iterable(build(rows[at:at + BUILD_ROWS])
                               for at in range(0, len(rows), BUILD_ROWS))


class _ReplayPosition:
    """The row a column replay is publishing (what staged ring rows are visible up to)."""

    __slots__ = ("row",)

    def __init__(self, row: int) -> None:
        self.row = row

    def __call__(self) -> int:
        return self.row


def _stage_rings(rings: RingStore, columns: BacktestData, local: np.ndarray,
                 rows: np.ndarray, is_quote: np.ndarray, position: _ReplayPosition) -> None:
    """Hand the rows of one chunk (`local` in `columns`, `rows` their run positions, all
    of which run) to each key's quote and trade rings, as their appends would write them."""
    key_ids = columns.key[local]
    buys = np.array([side == "buy" for side in columns.sides] or [False])
    sells = np.array([side == "sell" for side in columns.sides] or [False])
    for key_id in np.flatnonzero(np.bincount(key_ids)).tolist():  # a few keys: no sort
        exchange, symbol = columns.keys[key_id]
        of_key = key_ids == key_id
        quote_rows = of_key & is_quote
        if quote_rows.any():
            at = local[quote_rows]
            rings.stage_quotes(exchange, symbol, rows[quote_rows], [
                columns.local_ts_ns[at], columns.exchange_ts_ns[at], columns.price[at],
                columns.ask[at], columns.qty[at], columns.ask_qty[at]], position)
        trade_rows = of_key & ~is_quote
        if trade_rows.any():
            at = local[trade_rows]
            side, qty = columns.side[at], columns.qty[at]
            # TradeRing.append: the taker's side signs the qty, an unknown side is 0.
            signed_qty = np.where(buys[side], qty, np.where(sells[side], -qty, 0.0))
            rings.stage_trades(exchange, symbol, rows[trade_rows],
                               [columns.local_ts_ns[at], columns.price[at], signed_qty], position)


def existing_logs(data_dir: Path, run_id: str) -> list[Path]:
    """Decision-log files of this run id, any day."""
    return sorted(decisions_dir(data_dir).glob(f"*/{run_id}.jsonl"))
