"""Where running strategies stand, read from the tails of their decision logs.

`--mode watch` runs no strategy: a strategy runs in its own process (`--mode action`, or a
backtest) and writes its decision log under `<data_dir>/decisions/<date>/<run>.jsonl`. The
log is the one channel between them, so watch reads the end of each log written to
recently and shows what the newest decision that reports an order-arrival model says:
inventory-mm's k (`k_state` "configured", or auto's "warming up" with `k_trades` seen of
`k_trades_needed`, "fitted" or "floored" with `k_bps`), its inventory and P&L.

Only the last `TAIL_BYTES` of a file are read (a torn or partial line there is skipped, as
the post-mortem's reader does), so a long log costs no more than a short one; `LogTails`
reads at most once per `refresh_s` whatever the screen's refresh rate.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from daemon.postmortem.schema import DECISION, RUN_END, SCHEMA_VERSION
from daemon.postmortem.writer import decisions_dir

#: How much of the end of a log is read; holds thousands of records.
TAIL_BYTES = 256 * 1024
#: A log not written to for this long (wall clock) belongs to a run that is not running.
ACTIVE_WITHIN_S = 120.0


@dataclass(frozen=True, slots=True)
class StrategyState:
    """The newest decision of one run that says where its k stands."""

    run_id: str
    strategy: str
    ts_ns: int
    action: str
    k_state: str
    k_bps: float | None = None
    k_trades: int | None = None
    k_trades_needed: int | None = None
    inventory: float | None = None
    pnl: float | None = None
    #: The log ends with the run's `run_end` record: it stopped cleanly.
    ended: bool = False

    @property
    def k_text(self) -> str:
        """e.g. `warming up: 12/30 trades`, `fitted: k_bps 0.92 (68 trades)`."""
        trades = "" if self.k_trades is None else f" ({self.k_trades} trades)"
        k_bps = "?" if self.k_bps is None else f"{self.k_bps:.3g}"
        if self.k_state == "warming up":
            seen = "?" if self.k_trades is None else self.k_trades
            needed = "?" if self.k_trades_needed is None else self.k_trades_needed
            return f"warming up: {seen}/{needed} trades"
        if self.k_state in ("fitted", "floored"):
            return f"{self.k_state}: k_bps {k_bps}{trades}"
        return f"{self.k_state}: k_bps {k_bps}"


def latest_states(data_dir: Path, *, run_id: str | None = None, strategy: str | None = None,
                  active_within_s: float = ACTIVE_WITHIN_S,
                  wall_clock: Callable[[], float] = time.time) -> list[StrategyState]:
    """One state per run whose log was written to within `active_within_s` (any age for
    the run named `run_id`), newest run first; runs that report no k are left out."""
    files: dict[str, list[Path]] = {}  # run -> its files (a run spans days)
    active: dict[str, float] = {}  # run -> when any of its files was last written
    for path in decisions_dir(data_dir).glob("*/*.jsonl"):
        run = path.stem
        if run_id is not None and run != run_id:
            continue
        try:
            modified = path.stat().st_mtime
        except OSError:  # rotated away between the glob and the stat
            continue
        files.setdefault(run, []).append(path)
        active[run] = max(active.get(run, modified), modified)
    states = []
    for run in sorted(active, key=active.__getitem__, reverse=True):
        if run_id is None and wall_clock() - active[run] > active_within_s:
            continue
        state = _run_state(sorted(files[run], key=lambda p: p.parent.name), strategy)
        if state is not None:
            states.append(state)
    return states


def _run_state(paths: list[Path], strategy: str | None) -> StrategyState | None:
    """From the newest day's file back: a run's last file may hold only its closing
    records (a backtest's final cancels just past midnight)."""
    ended = False
    for path in reversed(paths):
        state = read_state(path, strategy)
        if state is not None:
            return state if state.ended or not ended else replace(state, ended=True)
        ended = ended or _ends_run(path)
    return None


def read_state(path: Path, strategy: str | None = None) -> StrategyState | None:
    """The newest decision with a `k_state` in the tail of one log (of `strategy`, when
    given), or None."""
    ended = False
    for record in reversed(_tail_records(path)):
        kind = record.get("type")
        if kind == RUN_END:
            ended = True
            continue
        inputs = record.get("inputs")
        if kind != DECISION or not isinstance(inputs, dict) or "k_state" not in inputs:
            continue
        if strategy is not None and record.get("strategy") != strategy:
            continue
        return StrategyState(
            run_id=str(record.get("run_id", path.stem)), strategy=str(record.get("strategy")),
            ts_ns=int(record.get("ts_ns") or 0), action=str(record.get("action")),
            k_state=str(inputs["k_state"]), k_bps=_number(inputs.get("k_bps")),
            k_trades=_whole(inputs.get("k_trades")),
            k_trades_needed=_whole(inputs.get("k_trades_needed")),
            inventory=_number(inputs.get("inventory")), pnl=_number(inputs.get("pnl")),
            ended=ended)
    return None


def run_ended(paths: list[Path]) -> bool:
    """Whether a run's log files (oldest day first) end with its `run_end` record, which
    `DecisionLogWriter.end_run` writes only when the run finished cleanly."""
    return bool(paths) and _ends_run(paths[-1])


def _ends_run(path: Path) -> bool:
    records = _tail_records(path)
    return bool(records) and records[-1].get("type") == RUN_END


def _tail_records(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - TAIL_BYTES))
            tail = log.read(TAIL_BYTES)
    except OSError:
        return []
    lines = tail.split(b"\n")
    if len(tail) == TAIL_BYTES and size > TAIL_BYTES:
        lines = lines[1:]  # the first line is cut at the window's start
    records = []
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:  # a torn last line, or the empty one after "\n"
            continue
        if isinstance(record, dict) and record.get("v") == SCHEMA_VERSION:
            records.append(record)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # NaN is written as null
    return float(value) if math.isfinite(value) else None


def _whole(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


class LogTails:
    """`latest_states` for a screen that refreshes often: re-read at most every
    `refresh_s` (monotonic), the last answer in between."""

    def __init__(self, data_dir: Path, *, run_id: str | None = None,
                 strategy: str | None = None, refresh_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.data_dir = data_dir
        self.run_id = run_id
        self.strategy = strategy
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self._read_at = -math.inf
        self._states: list[StrategyState] = []

    def states(self) -> list[StrategyState]:
        now = self._monotonic()
        if now - self._read_at >= self.refresh_s:
            self._read_at = now
            self._states = latest_states(self.data_dir, run_id=self.run_id,
                                         strategy=self.strategy)
        return self._states
