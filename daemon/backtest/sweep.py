"""Parameter sweeps: one backtest per combination of a grid, in parallel, ranked.

    python main.py --strategy inventory-mm --mode sweep --data FILE \\
        --grid gamma=0.05,0.1,0.2 --grid k_bps=0.5,1,2 [--workers N | --cluster ADDRESS]

A grid names settings (`gamma`: the strategy's own, `strategies.<strategy>.gamma`; a dotted
name is a path from the settings' root, e.g. `execution.latency_ms`) and the values each
takes; every value is validated by the settings model before anything runs. Each
combination is one `SweepTask`: a whole backtest (daemon/backtest/engine.py, as
`--mode backtest` runs it) with its own run id and decision log, then its figures read
back from that log by the post-mortem's own code (`run_figures`: daemon/postmortem), so a
sweep's P&L is the post-mortem's P&L, never a second formula.

Tasks run in worker processes (`run_task` is the whole of a worker's job): local ones
(`ProcessPoolExecutor`, forked from a forkserver that imported this code once; spawned
where there is none) or the workers of an existing Dask distributed scheduler
(`--cluster ADDRESS`), which run the very same function on the very same task, so the
results are identical. The decoded-event cache (daemon/backtest/cache.py) is built once
by the caller before any task starts; every worker then reads it (a hit), read-only. Dask
workers must see `data_dir` and the `--data` files at the same absolute paths (one
machine, or a shared filesystem).

A run whose log ends with its `run_end` record is finished (`DecisionLogWriter.end_run`):
resuming a sweep runs only the others, after removing what a cut-short run left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import secrets
import shutil
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from adapters.recordings.replay import NothingUsable, ReplaySpec
from config.settings import ConfigError, Settings, describe_validation_error
from daemon.backtest.engine import Backtest, NoMarketData, existing_logs
from daemon.backtest.span import Span
from daemon.core.logs import configure_logging, get_logger
from daemon.postmortem.exports import exports_dir, write_strategy_exports
from daemon.postmortem.figures import groups, summarise
from daemon.postmortem.reader import LogFilter, load_log, normalise_strategy
from daemon.postmortem.tail import run_ended

log = get_logger("sweep")

#: What a walk-forward may pick the best combination by (P&L is the default).
CRITERIA = ("pnl", "sharpe")
#: How often the caller looks for finished tasks (and for a stop request).
POLL_S = 0.05


# -- the grid --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Axis:
    """One setting of the grid and the values it takes, as the settings model took them."""

    name: str  # as given: the column's header
    path: tuple[str, ...]  # from the settings' root
    values: tuple[Any, ...]


def parse_grid_flag(text: str) -> tuple[str, list[str]]:
    """`NAME=V1,V2,...` -> (NAME, [V1, V2, ...]); raises ConfigError."""
    name, equals, values = text.partition("=")
    items = [value.strip() for value in values.split(",")]
    if not equals or not name.strip() or not all(items):
        raise ConfigError(f"--grid {text!r}: expected NAME=VALUE[,VALUE...]")
    return name.strip(), items


def read_grid_file(path: Path) -> dict[str, list[Any]]:
    """A TOML table of `name = [values]` (a scalar is one value); raises ConfigError."""
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"--grid-file {path}: not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--grid-file {path}: malformed TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--grid-file {path}: cannot read: {exc.strerror}") from None
    grid: dict[str, list[Any]] = {}
    for name, values in _flatten(table):
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"--grid-file {path}: {name} has no values")
        grid[name] = values
    return grid


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`[execution] latency_ms = [..]` is `execution.latency_ms`, as a dotted key is."""
    items: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def strategy_section(strategy: str) -> str:
    """`inventory-mm` -> `inventory_mm`, its settings under `strategies.`."""
    return normalise_strategy(strategy).replace("-", "_")


def setting_path(settings: Settings, strategy: str, name: str, probe: Any = None
                 ) -> tuple[str, ...]:
    """Where a grid name lives; raises ConfigError for a name that is no setting (with the
    model's own word when it has one for the name, e.g. a setting that was renamed: the
    section is validated with `probe` as the name's value)."""
    parts = tuple(name.split("."))
    dumped = settings.model_dump()
    if parts[0] not in dumped:  # not a section of the root: the strategy's own setting
        parts = ("strategies", strategy_section(strategy), *parts)
    node: Any = dumped
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            if depth == len(parts) - 1 and isinstance(node, dict):
                _refused_name(settings, parts, f"--grid {name}={probe}", probe)
            where = ".".join(parts[:depth]) or "the settings"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "nothing"
            raise ConfigError(f"--grid {name}: no setting {'.'.join(parts)} "
                              f"({where} has: {known})")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"--grid {name}: {'.'.join(parts)} is a section, not a setting")
    return parts


def _refused_name(settings: Settings, path: tuple[str, ...], flag: str, probe: Any) -> None:
    """Raise the model's own message about an unknown name, if it has one beyond "extra"."""
    try:
        with_values(settings, {path: probe})
    except ConfigError as exc:
        if "Extra inputs are not permitted" not in str(exc):
            raise ConfigError(f"{flag}: {exc}") from None


def with_values(settings: Settings, values: dict[tuple[str, ...], Any]) -> Settings:
    """The settings with these paths set, validated by the model; raises ConfigError."""
    from pydantic import ValidationError

    data = settings.model_dump()
    for path, value in values.items():
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def build_grid(settings: Settings, strategy: str, raw: dict[str, list[Any]]) -> list[Axis]:
    """The axes of `raw` with every value checked (and converted) by the settings model;
    the first bad name or value raises ConfigError naming it."""
    if not raw:
        raise ConfigError("--mode sweep needs a grid: --grid NAME=V1,V2 or --grid-file FILE")
    axes = []
    for name, values in raw.items():
        path = setting_path(settings, strategy, name, values[0] if values else None)
        taken = []
        for value in values:
            try:
                checked = with_values(settings, {path: value})
            except ConfigError as exc:
                raise ConfigError(f"--grid {name}={value}: {exc}") from None
            node: Any = checked
            for part in path:
                node = node[part] if isinstance(node, dict) else getattr(node, part)
            taken.append(node)
        if len(set(map(repr, taken))) != len(taken):
            raise ConfigError(f"--grid {name}: a value is given twice")
        axes.append(Axis(name, path, tuple(taken)))
    return axes


def combinations(axes: Sequence[Axis]) -> list[tuple[Any, ...]]:
    """Every combination, the last axis varying fastest (index order of the run ids)."""
    return list(itertools.product(*(axis.values for axis in axes)))


def combination_settings(settings: Settings, axes: Sequence[Axis], values: Sequence[Any]
                         ) -> Settings:
    return with_values(settings, {axis.path: value
                                  for axis, value in zip(axes, values, strict=True)})


# -- one task: a backtest and its figures ------------------------------------------------


class SweepInputError(Exception):
    """The data cannot run this strategy (no usable event, none of its markets, nothing in
    the span): the same for every combination, so the sweep stops with this line."""


@dataclass(slots=True)
class RunFigures:
    """A run's figures, from its decision log by the post-mortem's code."""

    run_id: str
    finished: bool = False
    pnl: float = math.nan
    #: Sharpe per day (daemon/postmortem/performance.py: the P&L curve sampled evenly).
    sharpe: float = math.nan
    max_drawdown: float = math.nan
    fills: int = 0
    fees: float = math.nan
    #: Time-weighted mean |position| (base units; of several symbols, the largest).
    mean_abs_inventory: float = math.nan
    decisions: int = 0


@dataclass(frozen=True, slots=True)
class SweepTask:
    """One combination's backtest, as a worker gets it (pickled: everything it needs)."""

    run_id: str
    settings: Settings
    strategy: str
    specs: tuple[ReplaySpec, ...]
    span: Span | None = None
    #: False: the run finished before (a resumed sweep); only its figures are read.
    run: bool = True


def run_task(task: SweepTask) -> RunFigures:
    """A worker's whole job: the backtest (unless it finished before), then its figures.
    Runs in a fresh process (or a Dask worker); raises SweepInputError for bad data."""
    settings = task.settings
    if task.run:
        configure_logging(task.run_id, settings.logging.level, settings.logging.format)
        clear_run(settings.data_dir, task.run_id)
        backtest = Backtest(settings, task.strategy, list(task.specs), task.run_id,
                            span=task.span)
        try:
            asyncio.run(backtest.run())
        except (NothingUsable, NoMarketData) as exc:
            raise SweepInputError(f"--data: {exc}") from None
        write_strategy_exports(backtest.strategy, settings.data_dir, task.run_id)
    return run_figures(settings.data_dir, task.run_id, task.strategy)


def run_finished(data_dir: Path, run_id: str) -> bool:
    return run_ended(existing_logs(data_dir, run_id))


def clear_run(data_dir: Path, run_id: str) -> None:
    """Remove what a run cut short left: its log files and its strategy exports."""
    for path in existing_logs(data_dir, run_id):
        path.unlink(missing_ok=True)
    shutil.rmtree(exports_dir(data_dir, run_id), ignore_errors=True)


def run_figures(data_dir: Path, run_id: str, strategy: str) -> RunFigures:
    """The run's figures as the post-mortem computes them (NaN/0 with no decision)."""
    figures = RunFigures(run_id, finished=run_finished(data_dir, run_id))
    loaded = load_log(data_dir, LogFilter(run_id=run_id), threads=1)
    try:
        if not loaded.records:
            return figures
        found = [name for run, name in groups(loaded.db) if run == run_id]
        if not found:
            return figures
        wanted = normalise_strategy(strategy)
        name = next((n for n in found if normalise_strategy(n) == wanted), found[0])
        summary = summarise(loaded.db, run_id, name, data_dir / "reports")
    finally:
        loaded.db.close()
    figures.pnl = summary.total_pnl
    figures.max_drawdown = summary.max_drawdown
    figures.fills = summary.fills
    figures.fees = summary.fees
    figures.decisions = summary.decisions
    if summary.performance is not None:
        figures.sharpe = summary.performance.sharpe_per_day
    if summary.inventory:
        figures.mean_abs_inventory = max(stats.mean_abs for stats in summary.inventory)
    return figures


# -- running many ----------------------------------------------------------------------------


@dataclass(slots=True)
class Runner:
    """Where tasks run: `workers` local processes, or the Dask scheduler at `cluster`."""

    workers: int
    cluster: str | None = None
    #: Called with each task's figures as it finishes (progress lines).
    on_done: Callable[[SweepTask, RunFigures], None] | None = None
    failures: dict[str, str] = field(default_factory=dict)

    def run(self, tasks: Sequence[SweepTask], stop: threading.Event) -> list[RunFigures]:
        """Every task's figures, in task order (a failed task: unfinished, its error in
        `failures`). Blocking: call it in a thread; `stop` cancels what has not started."""
        if not tasks:
            return []
        if self.cluster is not None:
            return self._on_cluster(tasks, stop)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = _worker_context(multiprocessing)
        with ProcessPoolExecutor(max_workers=max(1, min(self.workers, len(tasks))),
                                 mp_context=context) as pool:
            futures = [pool.submit(run_task, task) for task in tasks]
            try:
                return self._collect(tasks, futures, stop)
            finally:
                for future in futures:
                    future.cancel()

    def _on_cluster(self, tasks: Sequence[SweepTask], stop: threading.Event
                    ) -> list[RunFigures]:
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--cluster needs Dask distributed: pip install "
                              "'cryptopipe[cluster]'") from None
        try:
            client = Client(self.cluster, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--cluster {self.cluster}: no scheduler there ({exc})"
                              ) from None
        with client:
            token = secrets.token_hex(4)  # another client's same run id is another task
            futures = [client.submit(run_task, task, pure=False,
                                     key=f"cryptopipe-sweep-{task.run_id}-{token}")
                       for task in tasks]
            try:
                return self._collect(tasks, futures, stop)
            finally:
                client.cancel([f for f in futures if not f.done()])

    def _collect(self, tasks: Sequence[SweepTask], futures: Sequence[Any],
                 stop: threading.Event) -> list[RunFigures]:
        results: list[RunFigures | None] = [None] * len(tasks)
        pending = set(range(len(tasks)))
        while pending and not stop.is_set():
            done = [index for index in pending if futures[index].done()]
            if not done:
                time.sleep(POLL_S)
                continue
            for index in sorted(done):
                pending.discard(index)
                results[index] = self._result(tasks[index], futures[index])
        return [result if result is not None else RunFigures(task.run_id)
                for task, result in zip(tasks, results, strict=True)]

    def _result(self, task: SweepTask, future: Any) -> RunFigures:
        try:
            figures: RunFigures = future.result()
        except SweepInputError:
            raise
        except Exception as exc:  # one combination failed: the others go on
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.error("sweep_run_failed", run_id=task.run_id, error=reason)
            self.failures[task.run_id] = reason
            figures = RunFigures(task.run_id)
        if self.on_done is not None:
            self.on_done(task, figures)
        return figures


def _worker_context(multiprocessing: Any) -> Any:
    """Fresh worker processes, never a fork of the caller (its threads, its event loop):
    forked from a server that imported the backtest code once where there is one (Unix),
    so each worker starts in milliseconds rather than importing it again; else spawned."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


# -- ranking -------------------------------------------------------------------------------


def criterion_value(figures: RunFigures, criterion: str) -> float:
    return figures.pnl if criterion == "pnl" else figures.sharpe


def ranking(figures: Sequence[RunFigures], criterion: str) -> list[int]:
    """Indices of `figures`, best first by `criterion` (NaN and unfinished runs last;
    ties in index order)."""
    def key(index: int) -> tuple[int, float, int]:
        value = criterion_value(figures[index], criterion)
        usable = figures[index].finished and not math.isnan(value)
        return (0 if usable else 1, -value if usable else 0.0, index)

    return sorted(range(len(figures)), key=key)


def task_settings(settings: Settings) -> Settings:
    """The settings a task gets: an absolute data_dir (workers may start elsewhere), paper
    execution and no secret at all (API keys, tokens): a backtest needs none, and a task
    may travel to another machine."""
    data = _without_secrets(settings.model_dump())
    data["data_dir"] = settings.data_dir.resolve()
    data["execution"]["mode"] = "paper"
    return Settings.model_validate(data)


def _without_secrets(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _without_secrets(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_without_secrets(value) for value in node]
    return None if isinstance(node, SecretStr) else node


def resolved(specs: Sequence[ReplaySpec]) -> tuple[ReplaySpec, ...]:
    """Specs with absolute paths: the workers' cache name is then the caller's."""
    return tuple(dataclasses.replace(spec, path=spec.path.resolve()) for spec in specs)
