"""`--mode evaluate`: does the rl-internalize agent beat its baselines on the same clients?

    python main.py --strategy rl-internalize --mode evaluate --model PATH \\
        --data ../shared/data/binance_usdm_ethusdt_20240719.gz --seeds 30

Runs the agent and the baselines (closed-form internalize, always hedge, never hedge
capped, Avellaneda-Stoikov client quote) on every flow seed (daemon/backtest/evaluation.py),
prints the tables and writes `evaluation.csv`, `evaluation_differences.csv` and
`evaluation.html` in `data_dir/reports/<run-id>/` (daemon/backtest/evaluation_report.py).

The decoded events are cached once here, before any run (`backtest.cache`), so the runs
only read the cache. With more than one core free the runs go to 2 worker processes,
else they run one after another in this process; the summary says which.

Refused with exit 2 and one line: another strategy, no --data (or a missing file), no
model (--model or `strategies.rl_internalize.model`), a folder that is not a model, run
ids whose decision logs exist already, data without the desk's market.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from adapters.recordings.replay import (
    NothingUsable,
    ReplaySpec,
    check_usable,
)
from config.settings import ConfigError, Settings
from daemon.backtest.cache import load
from daemon.backtest.evaluation import (
    POLICIES,
    Evaluation,
    RunMetrics,
    evaluate,
    existing_run_logs,
    free_cores,
    policy_settings,
)
from daemon.backtest.evaluation_report import report_folder, tables, warnings, write_files
from daemon.core.logs import configure_logging
from daemon.feeds import resolve_markets
from daemon.modes.data import data_specs
from daemon.modes.progress import counted_bar
from daemon.trading.session import build_strategy

if TYPE_CHECKING:
    from pathlib import Path

    from daemon.app import App

STRATEGY = "rl-internalize"
DEFAULT_SEEDS = 30


async def run_evaluate(app: App) -> int:
    """Mode entry point: check, cache the data, run every policy and seed, report."""
    settings, args = app.settings, app.args
    if args.strategy != STRATEGY:
        raise ConfigError(f"--mode evaluate compares the {STRATEGY} agent with its baselines: "
                          f"pass --strategy {STRATEGY} (got {args.strategy or 'none'})")
    specs = data_specs(args.data, "evaluate")
    _check_model(settings)
    seeds = getattr(args, "seeds", None) or DEFAULT_SEEDS
    previous = existing_run_logs(settings, app.run_id, seeds)
    if previous:
        raise ConfigError(f"evaluation run {app.run_id!r} already has decision logs "
                          f"({previous[0]}); choose another --run-id or remove them")
    settings = app.settings = await resolve_markets(settings, specs=specs)
    for policy in POLICIES:  # a setting a policy cannot use, before anything runs
        build_strategy(policy.strategy, policy_settings(settings, policy, 0))
    await _cache(settings, specs)
    free = free_cores()
    with _progress(enabled=sys.stderr.isatty()) as progress, _quiet_runs(settings, app.run_id):
        evaluation = await evaluate(settings, specs, app.run_id, seeds, progress=progress)
    paths = write_files(evaluation, report_folder(settings.data_dir, app.run_id))
    _print(evaluation, paths, free, args.format)
    return 0




def _check_model(settings: Settings) -> None:
    from strategies.rl_internalize import AgentPolicy

    model = settings.strategies.rl_internalize.model
    if model is None:
        raise ConfigError("--mode evaluate needs the agent to evaluate: --model PATH (a "
                          "folder written by --mode train)")
    try:
        AgentPolicy.load(model)
    except Exception as exc:  # anything wrong with the folder or its files
        raise ConfigError(f"--model {model}: not a usable model folder: {exc}") from None


async def _cache(settings: Settings, specs: list[ReplaySpec]) -> None:
    """Decode the files once (or find them cached) so every run reads the same cache; the
    data must carry the desk's market."""
    if not settings.backtest.cache:
        return
    try:
        data, _ = await load(specs, settings.data_dir, settings.backtest.cache_max_mb * 1e6,
                             depth=settings.execution.walk_depth)
        if data is None:
            return
        check_usable(specs, data.stats)
    except NothingUsable as exc:
        raise ConfigError(f"--data: {exc}") from None
    own = settings.strategies.internalize
    if (own.venue, own.symbol) not in data.keys:
        have = ", ".join(f"{venue} {symbol}" for venue, symbol in data.keys)
        raise ConfigError(f"--data: no {own.venue} {own.symbol} quotes in the files (they "
                          f"have {have or 'nothing'}): set strategies.internalize.venue "
                          "and symbol")


@contextlib.contextmanager
def _quiet_runs(settings: Settings, run_id: str) -> Iterator[None]:
    """At the default level, info lines of every run (its rings, the cache hit) would bury
    the progress: warnings only while the runs go (debug or warning are left as chosen)."""
    level, fmt = settings.logging.level, settings.logging.format
    if level != "info":
        yield
        return
    configure_logging(run_id, "warning", fmt)
    try:
        yield
    finally:
        configure_logging(run_id, level, fmt)


class _progress:
    """Runs done on a rich bar on a terminal; off one, a line on stderr every 10 %."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._started = time.perf_counter()
        self._next_line = 0.1

    def __enter__(self) -> Callable[[RunMetrics, int, int], None]:
        if self.enabled:
            self._bar = counted_bar("evaluate", "runs {task.fields[last]}", transient=True)
            self._task = self._bar.add_task("evaluate", total=None, last="")
        return self.update

    def update(self, run: RunMetrics, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total,
                             last=f"(last: {run.policy} seed {run.seed})")
        elif done / total >= self._next_line or done == total:
            self._next_line = done / total + 0.1
            print(f"evaluate: {done}/{total} runs in {time.perf_counter() - self._started:.1f} s",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _print(evaluation: Evaluation, paths: list[Path], free: float, fmt: str | None) -> None:
    how = (f"{evaluation.workers} worker processes" if evaluation.workers > 1
           else "one after another in this process")
    runs = len(evaluation.runs)
    timing = (f"{runs} runs ({len(POLICIES)} policies x {len(evaluation.seeds)} seeds) in "
              f"{evaluation.wall_seconds:.1f} s, {how} ({free:.1f} cores free at the start)")
    if fmt == "json":
        figures = {"run_id": evaluation.run_id, "seeds": evaluation.seeds,
                   "workers": evaluation.workers, "wall_seconds": evaluation.wall_seconds,
                   "summary": evaluation.summary,
                   "differences": [d.row() for d in evaluation.differences],
                   "files": [str(path) for path in paths], "warnings": warnings(evaluation)}
        sys.stdout.buffer.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2 |
                                             orjson.OPT_SERIALIZE_NUMPY))
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        return
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    for table in tables(evaluation):
        console.print(table)
    console.print(timing, markup=False)
    for line in warnings(evaluation):
        console.print(line, markup=False)
    console.print(f"files: {', '.join(str(path) for path in paths)}", markup=False)
    console.print(f"each run's decision log: --mode post-mortem --run "
                  f"{evaluation.run_id}-<policy>-seed<seed>", markup=False)
