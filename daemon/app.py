"""Runtime wiring and task supervision, shared by every mode.

`run_mode` builds the `App` (bus, ring buffer, market-data feed), runs the chosen mode as
one task, and stops it cleanly on Ctrl-C, SIGTERM or `--duration`: the mode's task is
cancelled, its `finally` blocks run, the ring buffer is snapshotted, and the exit status
is 0. Start-up and crash recovery are one path: the ring snapshot is reloaded before any
consumer starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import ConfigError, Settings
from daemon.core.logs import configure_logging, get_logger
from daemon.core.model import now_ns
from daemon.market.bus import Bus
from daemon.market.ringbuffer import RingStore, snapshot_every
from daemon.ops.health import Health
from daemon.ops.metrics import TradingStats, start_operations
from daemon.postmortem.writer import DecisionLogWriter

log = get_logger("app")

ModeRunner = Callable[["App"], Awaitable[int]]


def new_run_id() -> str:
    """Sortable and unique enough: UTC start time plus 4 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


@dataclass
class App:
    """What every mode gets: settings, the bus with its ring buffer, and the feed to run."""

    settings: Settings
    args: argparse.Namespace
    run_id: str
    bus: Bus = field(default_factory=Bus)
    rings: RingStore | None = None
    #: Replay frames published between two yields to the event loop. A live socket yields
    #: on every frame; strategy modes set 1 so a max-speed replay conflates no more than
    #: live traffic would. Viewers keep a large batch: they only need the latest state.
    replay_yield_every: int = 2048
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    #: Behind /healthz: required feeds and the kill switch (trip it via health.trip_kill_switch).
    health: Health = field(default_factory=Health)
    #: Decision/order/fill/P&L counters for /metrics (daemon/ops/metrics.py says how to feed them).
    trading: TradingStats = field(default_factory=TradingStats)
    #: The decision log writer of a strategy mode (its counters go to /metrics).
    decision_log: DecisionLogWriter | None = None

    @property
    def replaying(self) -> bool:
        """Market data comes from recordings (`--feed sample|replay:...`): the feed's clock
        is the recorded receive time, not the wall clock."""
        return getattr(self.args, "feed", "live") != "live"

    @property
    def ring_dir(self) -> Path:
        return self.settings.data_dir / "ring"

    def start_rings(self) -> RingStore:
        """Reload the last snapshot (dropping rows past retention) and attach to the bus."""
        settings = self.settings
        self.rings = RingStore.load(
            self.ring_dir, retention_s=settings.retention, now_ns=now_ns(),
            max_rate_hz=settings.ring.max_rate_hz,
        )
        self.bus.add_sink(self.rings)
        self._background.append(asyncio.create_task(
            snapshot_every(self.rings, self.ring_dir, settings.ring.snapshot_interval_s),
            name="ring-snapshots",
        ))
        return self.rings

    async def stop_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def snapshot_rings(self) -> None:
        if self.rings is not None:
            self.rings.snapshot(self.ring_dir)

    def warm_up_kernels(self) -> None:
        """Compile or load every numba kernel a strategy uses, before any market data: the
        first call of each would otherwise pay for it (up to seconds with a cold cache)
        inside the first quote's callback."""
        from daemon.market.ringbuffer import warm_up_kernels
        from strategies.kernels_mm import warm_up

        started = time.perf_counter()
        warm_up_kernels()
        warm_up()
        log.info("kernels_ready", seconds=round(time.perf_counter() - started, 3))

    def market_data(self) -> Awaitable[object]:
        """The feed chosen by `--feed`: live adapters, the shipped sample, or recordings."""
        from daemon.feeds import build_feed

        return build_feed(self)


#: Each mode is `async def run_<mode>(app: App) -> int` in its own module, imported lazily so
#: a mode's heavy dependencies (ccxt, duckdb, plotly) load only when it runs.
MODE_ENTRY_POINTS = {
    "watch": "daemon.modes.watch:run_watch",
    "action": "daemon.modes.action:run_action",
    "record": "daemon.modes.record:run_record",
    "backtest": "daemon.backtest.engine:run_backtest",
    "post-mortem": "daemon.postmortem.report:run_postmortem",
    "calibrate": "daemon.backtest.calibrate:run_calibrate",
}


def _load_mode(mode: str) -> ModeRunner | None:
    module_name, _, function = MODE_ENTRY_POINTS[mode].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
    return getattr(module, function, None)


def run_mode(settings: Settings, args: argparse.Namespace) -> int:
    run_id = args.run_id or new_run_id()
    configure_logging(run_id, settings.logging.level, settings.logging.format)
    runner = _load_mode(args.mode)
    if runner is None:
        print(f"cryptopipe: --mode {args.mode} is not available in this build yet",
              file=sys.stderr)
        return 2
    app = App(settings=settings, args=args, run_id=run_id)
    try:
        return _event_loop_run(_supervise(app, runner))
    except ConfigError as exc:  # raised by a mode that finds a setting it cannot use
        print(f"cryptopipe: {exc}", file=sys.stderr)
        return 2
    except Exception:
        log.exception("crashed", mode=args.mode)
        return 1


def _event_loop_run(main: Awaitable[int]) -> int:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the stdlib loop works, only slower
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


async def _supervise(app: App, runner: ModeRunner) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info("start", mode=app.args.mode, strategy=app.args.strategy,
             venues=app.settings.enabled_venues(), symbols=app.settings.symbols)
    operations = await start_operations(app)  # /metrics, /healthz, /book (long-running modes)
    work = asyncio.create_task(runner(app), name=f"mode:{app.args.mode}")
    stopper = asyncio.create_task(stop.wait(), name="signals")
    try:
        done, _ = await asyncio.wait(
            {work, stopper}, timeout=app.args.duration, return_when=asyncio.FIRST_COMPLETED
        )
        if work in done:
            return work.result()
        reason = "signal" if stopper in done else "duration"
        log.info("stopping", reason=reason)
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return 0
    finally:
        stopper.cancel()
        await operations.aclose()
        await app.stop_background()
        app.snapshot_rings()
        log.info("stopped", bus=app.bus.counters())
