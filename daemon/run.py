"""Run one mode as a process: signals, `--duration`, the operations servers, a clean stop.

`run_mode` builds the `App` (daemon/app.py), runs the chosen mode as one task, and stops it
cleanly on Ctrl-C, SIGTERM or `--duration`: the mode's task is cancelled, its `finally`
blocks run, the ring buffer is snapshotted, and the exit status is 0.
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

from config.settings import ConfigError, Settings
from daemon.app import App
from daemon.bridge.process import start_bridge
from daemon.core.logs import configure_logging, get_logger
from daemon.core.tasks import install_loop_handler, watch_tasks
from daemon.ops.metrics import start_operations
from daemon.postmortem.writer import DecisionLogNotDurable

log = get_logger("app")

ModeRunner = Callable[[App], Awaitable[int]]


def new_run_id() -> str:
    """Sortable and unique enough: UTC start time plus 4 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


#: Each mode is `async def run_<mode>(app: App) -> int` in its own module, imported lazily so
#: a mode's heavy dependencies (ccxt, duckdb, plotly) load only when it runs.
MODE_ENTRY_POINTS = {
    "watch": "daemon.modes.watch:run_watch",
    "action": "daemon.modes.action:run_action",
    "record": "daemon.modes.record:run_record",
    "backtest": "daemon.modes.backtest:run_backtest",
    "post-mortem": "daemon.modes.postmortem:run_postmortem",
    "calibrate": "daemon.modes.calibrate:run_calibrate",
    "train": "daemon.modes.train:run_train",
    "evaluate": "daemon.modes.evaluate:run_evaluate",
    "sweep": "daemon.modes.sweep:run_sweep",
    "feed": "daemon.modes.feed:run_feed_mode",
    "archive": "daemon.modes.archive:run_archive",
}


def _load_mode(mode: str) -> ModeRunner:
    module_name, _, function = MODE_ENTRY_POINTS[mode].partition(":")
    return getattr(importlib.import_module(module_name), function)


def run_mode(settings: Settings, args: argparse.Namespace) -> int:
    run_id = args.run_id or new_run_id()
    configure_logging(run_id, settings.logging.level, settings.logging.format)
    runner = _load_mode(args.mode)
    app = App(settings=settings, args=args, run_id=run_id)
    try:
        return _event_loop_run(_supervise(app, runner))
    except ConfigError as exc:  # raised by a mode that finds a setting it cannot use
        print(f"cryptopipe: {exc}", file=sys.stderr)
        return 2
    except DecisionLogNotDurable as exc:  # the disk refused records to the end: say so once
        print(f"cryptopipe: {exc}", file=sys.stderr)
        return 1
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
    # Every task spawned below reports its death to /healthz (and, trading, the kill switch).
    watch_tasks(app.health.tasks)
    install_loop_handler(loop, app.health.tasks)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info("start", mode=app.args.mode, strategy=app.args.strategy,
             venues=app.settings.enabled_venues(), symbols=app.settings.symbols)
    operations = await start_operations(app)  # /metrics, /healthz, /book (long-running modes)
    try:
        app.bridge = await start_bridge(app)  # NATS, when given an address (daemon/bridge)
    except BaseException:
        await operations.aclose()
        raise
    # Plain tasks, not `spawn`: both are awaited right here, and a mode's failure is the
    # process's exit status (run_mode logs it).
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
        await app.bridge.aclose()
        await operations.aclose()
        await app.stop_background()
        app.snapshot_rings()
        log.info("stopped", bus=app.bus.counters())
