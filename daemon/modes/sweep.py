"""`--mode sweep`: a strategy's backtest over a grid of settings, in parallel, ranked.

    python main.py --strategy inventory-mm --mode sweep --data FILE [FILE...] \\
        --grid gamma=0.05,0.1,0.2 --grid k_bps=0.5,1,2 [--grid-file GRID.toml] \\
        [--workers N | --cluster HOST:PORT] [--run-id SWEEP] \\
        [--train FROM..TO --test FROM..TO [--select pnl|sharpe]]

The engine of it is daemon/backtest/sweep.py (grid, tasks, workers, figures) and
daemon/backtest/sweep_report.py (the CSV and HTML); this entry checks the inputs, builds
the event cache once, runs the tasks and prints the ranking (a table on a terminal,
aligned text when piped, JSON with `--format json`).

The sweep id is `--run-id` (default: generated); run `i` of the grid is `<sweep-id>-<i>`
(walk-forward: `<sweep-id>-train-<i>` and `<sweep-id>-test`). `sweep.json` in the
sweep's report folder keeps what the sweep is (strategy, grid, data, spans, criterion,
a digest of the settings): the same `--run-id` again resumes it, running only the runs
that did not finish (the grid, data, spans and criterion may then be left out); a
different grid, data or settings under the same id is refused.

Walk-forward: `--train FROM..TO` runs the grid on the events received in [FROM, TO)
only; the best run by `--select` (P&L by default, or Sharpe per day) is then run with its
settings on `--test FROM..TO`, and both are reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from adapters.recordings.replay import (
    NothingUsable,
    ReplaySpec,
    check_usable,
)
from config.settings import ConfigError, Settings
from daemon.backtest.cache import load
from daemon.backtest.span import Span, parse_span
from daemon.backtest.sweep import (
    Axis,
    RunFigures,
    Runner,
    SweepInputError,
    SweepTask,
    build_grid,
    combination_settings,
    combinations,
    criterion_value,
    parse_grid_flag,
    ranking,
    read_grid_file,
    resolved,
    run_finished,
    task_settings,
)
from daemon.backtest.sweep_report import (
    CSV_NAME,
    HTML_NAME,
    SweepRow,
    table_rows,
    write_csv,
    write_html,
)
from daemon.core.logs import get_logger
from daemon.feeds import resolve_markets
from daemon.modes.data import data_specs
from daemon.postmortem.exports import REPORTS_DIR

if TYPE_CHECKING:
    from daemon.app import App

log = get_logger("sweep")

MANIFEST = "sweep.json"


async def run_sweep(app: App) -> int:
    """Mode entry point: check, build the cache, run every combination, rank, report."""
    args = app.args
    sweep_id, strategy = app.run_id, args.strategy
    report_dir = app.settings.data_dir / REPORTS_DIR / sweep_id
    manifest = _read_manifest(report_dir)
    specs = resolved(_specs(args.data, manifest))
    settings = task_settings(await resolve_markets(app.settings, specs=specs))
    axes = build_grid(settings, strategy, _raw_grid(args, manifest))
    train, test = _span(args, "train", manifest), _span(args, "test", manifest)
    if test is not None and train is None:
        raise ConfigError("--test needs --train: the parameters are chosen on the train span")
    criterion = getattr(args, "select", None) or (manifest or {}).get("select") or "pnl"
    plan = {"strategy": strategy, "grid": {axis.name: list(axis.values) for axis in axes},
            "data": [str(spec) for spec in specs],
            "train": str(train) if train else None, "test": str(test) if test else None,
            "select": criterion, "settings": _settings_digest(settings)}
    _check_or_write_manifest(report_dir, manifest, plan)
    combos = combinations(axes)
    combo_settings = [combination_settings(settings, axes, values) for values in combos]
    await _build_cache(combo_settings, specs, needs_cache=train is not None)

    runner = Runner(workers=args.workers or os.cpu_count() or 1, cluster=args.cluster)
    sweep = _Sweep(sweep_id, strategy, specs, runner)
    phase = "train" if train is not None else "grid"
    prefix = f"{sweep_id}-train" if train is not None else sweep_id
    tasks = [sweep.task(f"{prefix}-{index}", combo, train)
             for index, combo in enumerate(combo_settings)]
    figures = await sweep.run(tasks)
    order = ranking(figures, criterion)
    rows = [SweepRow(phase, rank, combos[index], figures[index], sweep.status(tasks[index]))
            for rank, index in enumerate(order, start=1)]
    chosen: dict[str, Any] | None = None
    if test is not None:
        best = order[0]
        if not figures[best].finished or _nan(criterion_value(figures[best], criterion)):
            print(f"cryptopipe: sweep {sweep_id}: no train run finished with a {criterion}: "
                  "nothing to test", file=sys.stderr)
            return 1
        chosen = {axis.name: value for axis, value in zip(axes, combos[best], strict=True)}
        test_task = sweep.task(f"{sweep_id}-test", combo_settings[best], test)
        (test_figures,) = await sweep.run([test_task])
        rows.append(SweepRow("test", None, combos[best], test_figures,
                             sweep.status(test_task)))
    notes = _notes(strategy, criterion, specs, train, test, chosen)
    csv_path = write_csv(rows, axes, report_dir / CSV_NAME)
    html_path = write_html(rows, axes, report_dir / HTML_NAME, f"Sweep {sweep_id} ({strategy})",
                           notes)
    _print(rows, axes, args.format, notes, {
        "sweep_id": sweep_id, "strategy": strategy, "select": criterion,
        "grid": plan["grid"], "train": plan["train"], "test": plan["test"], "chosen": chosen,
        "rows": [row.as_dict(axes) for row in rows], "failed": runner.failures,
        "csv": str(csv_path), "html": str(html_path)})
    return 1 if runner.failures else 0


class _Sweep:
    """The tasks of one sweep and how they went."""

    def __init__(self, sweep_id: str, strategy: str, specs: tuple[ReplaySpec, ...],
                 runner: Runner) -> None:
        self.sweep_id, self.strategy, self.specs, self.runner = sweep_id, strategy, specs, runner
        self.runner.on_done = self._done
        self._total = self._finished = 0

    def task(self, run_id: str, settings: Settings, span: Span | None) -> SweepTask:
        finished = run_finished(settings.data_dir, run_id)
        return SweepTask(run_id, settings, self.strategy, self.specs, span, run=not finished)

    def status(self, task: SweepTask) -> str:
        failure = self.runner.failures.get(task.run_id)
        if failure is not None:
            return f"failed: {failure}"
        return "ran" if task.run else "finished before"

    async def run(self, tasks: list[SweepTask]) -> list[RunFigures]:
        self._total, self._finished = len(tasks), 0
        to_run = sum(task.run for task in tasks)
        where = (f"on the cluster at {self.runner.cluster}" if self.runner.cluster
                 else f"in {min(self.runner.workers, len(tasks))} worker process(es)")
        print(f"sweep {self.sweep_id}: {to_run} of {len(tasks)} run(s) to run {where}"
              + (f", {len(tasks) - to_run} finished before" if to_run < len(tasks) else ""),
              file=sys.stderr)
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self.runner.run, tasks, stop)
        except SweepInputError as exc:
            raise ConfigError(str(exc)) from None
        finally:
            stop.set()  # cancelled (Ctrl-C): what has not started does not start

    def _done(self, task: SweepTask, figures: RunFigures) -> None:
        self._finished += 1
        state = "failed" if task.run_id in self.runner.failures else (
            f"P&L {figures.pnl:.4f}, {figures.fills} fills")
        print(f"sweep {self.sweep_id}: {self._finished}/{self._total} {task.run_id} {state}",
              file=sys.stderr)


# -- inputs --------------------------------------------------------------------------------


def _specs(data: list[Path] | None, manifest: dict[str, Any] | None) -> list[ReplaySpec]:
    """`--data`, or a resumed sweep's data from its manifest."""
    texts = [str(path) for path in data] if data else (manifest or {}).get("data")
    return data_specs(texts, "sweep")


def _raw_grid(args: Any, manifest: dict[str, Any] | None) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    if getattr(args, "grid_file", None) is not None:
        grid.update(read_grid_file(args.grid_file))
    for text in getattr(args, "grid", None) or []:
        name, values = parse_grid_flag(text)
        if name in grid:
            raise ConfigError(f"--grid {name}: given twice (flags or grid file)")
        grid[name] = values
    if not grid and manifest is not None:  # a resumed sweep: its own grid
        return dict(manifest["grid"])
    return grid


def _span(args: Any, name: str, manifest: dict[str, Any] | None) -> Span | None:
    """`--train`/`--test`; left out, a resumed sweep's own."""
    text = getattr(args, name, None) or (manifest or {}).get(name)
    if text is None:
        return None
    try:
        return parse_span(text)
    except ValueError as exc:
        raise ConfigError(f"--{name}: {exc}") from None


async def _build_cache(combo_settings: list[Settings], specs: tuple[ReplaySpec, ...],
                       needs_cache: bool) -> None:
    """The decoded events, once, before any worker: every worker then reads the file."""
    first = combo_settings[0]
    if not first.backtest.cache:
        if needs_cache:
            raise ConfigError("--train/--test need the event cache: backtest.cache is off")
        return
    for depth in sorted({s.execution.walk_depth for s in combo_settings}):
        data, _ = await load(list(specs), first.data_dir, first.backtest.cache_max_mb * 1e6,
                             depth=depth)
        if data is None:
            if needs_cache:
                raise ConfigError("--train/--test: these files cannot be cached (see the log)")
            continue
        try:
            check_usable(list(specs), data.stats)
        except NothingUsable as exc:
            raise ConfigError(f"--data: {exc}") from None


# -- the manifest (what a sweep id is, for resuming) ---------------------------------------


def _settings_digest(settings: Settings) -> str:
    text = settings.model_dump_json(exclude={"logging", "metrics", "book_socket"})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_manifest(report_dir: Path) -> dict[str, Any] | None:
    path = report_dir / MANIFEST
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"sweep manifest {path} unreadable ({exc}); remove it to start "
                          "the sweep again") from None


def _check_or_write_manifest(report_dir: Path, manifest: dict[str, Any] | None,
                             plan: dict[str, Any]) -> None:
    normal = orjson.loads(orjson.dumps(plan, default=str))
    if manifest is not None:
        changed = [key for key in normal if manifest.get(key) != normal[key]]
        if changed:
            raise ConfigError(f"sweep {report_dir.name} exists with another "
                              f"{', '.join(changed)}; resume it with the same ones or choose "
                              "another --run-id")
        return
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / MANIFEST).write_bytes(orjson.dumps(normal, option=orjson.OPT_INDENT_2))


# -- output --------------------------------------------------------------------------------


def _notes(strategy: str, criterion: str, specs: tuple[ReplaySpec, ...], train: Span | None,
           test: Span | None, chosen: dict[str, Any] | None) -> list[str]:
    label = "P&L" if criterion == "pnl" else "Sharpe per day"
    notes = [f"{strategy} on {', '.join(spec.path.name for spec in specs)}; ranked by {label} "
             "(figures from each run's decision log, as the post-mortem computes them)"]
    if train is not None:
        notes.append(f"walk-forward: grid on {train}"
                     + (f", chosen {chosen} run on {test}" if test and chosen else ""))
    return notes


def _print(rows: list[SweepRow], axes: list[Axis], output: str | None, notes: list[str],
           figures: dict[str, Any]) -> None:
    if output == "json":
        sys.stdout.buffer.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2
                                             | orjson.OPT_SERIALIZE_NUMPY, default=str))
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        return
    header, body = table_rows(rows, axes)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"sweep {figures['sweep_id']}", caption=" ".join(notes))
        for name in header:
            table.add_column(name, justify="left" if name in ("phase", "run", "status")
                             else "right")
        for line in body:
            table.add_row(*line)
        Console().print(table)
    else:
        widths = [max(len(cell) for cell in column) for column in zip(header, *body,
                                                                      strict=True)]
        for line in (header, *body):
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths,
                                                                     strict=True)).rstrip())
        for note in notes:
            print(note)
    print(f"csv: {figures['csv']}\nchart: {figures['html']}")
    if figures["failed"]:
        print(f"failed: {len(figures['failed'])} run(s); the same --run-id "
              f"{figures['sweep_id']} reruns them", file=sys.stderr)


def _nan(value: float) -> bool:
    return value != value
