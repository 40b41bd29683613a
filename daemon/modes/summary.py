"""The one-screen summary a strategy run ends with: `--mode backtest` and `--mode action`.

One printer for both, so a backtest and an action run on the same data read alike: events
(quotes, trades) over the span of data, the mode's own line on its events, decisions,
orders and fills, client fills, the decision log and the post-mortem command line.
`--format json` prints the figures instead.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.core.model import Decision, Fill, OrderIntent
from strategies.base import Strategy


@dataclass(slots=True)
class RunSummary:
    """What one strategy run did, as its mode prints it at the end."""

    mode: str
    run_id: str
    strategy: str
    events: int
    quotes: int
    trades: int
    first_ts_ns: int
    last_ts_ns: int
    wall_seconds: float
    records: int
    log_files: list[Path]
    decisions: int = 0
    orders: int = 0
    fills: int = 0
    client_fills: int = 0
    client_fills_unpriced: int = 0
    client_fills_skipped: dict[str, int] = field(default_factory=dict)
    #: With the quoted flow, the unpriced split: clients who declined the desk's quote and
    #: those no market could price (None: another source, where unpriced means no market).
    client_fills_declined: int | None = None
    client_fills_no_market: int | None = None
    #: The mode's own line on its events (backtest: the cache and the skip; action: what
    #: reached the strategy and what the bus conflated).
    events_note: str = ""
    #: The strategy's own lines (`summary_lines`: internalize's P&L against its baseline).
    strategy_notes: list[str] = field(default_factory=list)


def record_counts(kinds: Mapping[type, int]) -> dict[str, int]:
    """Decisions, orders and fills from a decision log writer's `kinds`."""
    return {"decisions": kinds.get(Decision, 0), "orders": kinds.get(OrderIntent, 0),
            "fills": kinds.get(Fill, 0)}


def strategy_notes(strategy: Strategy) -> list[str]:
    """The strategy's own summary lines (`summary_lines`; most strategies have none)."""
    return list(strategy.summary_lines())


def print_summary(summary: RunSummary, figures: Mapping[str, Any], fmt: str | None) -> None:
    """The summary on stdout: `figures` as JSON with `--format json`, else the text."""
    if fmt == "json":
        sys.stdout.buffer.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2,
                                             default=str))
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        return
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    span = (summary.last_ts_ns - summary.first_ts_ns) / 1e9 if summary.first_ts_ns else 0.0
    rate = summary.events / summary.wall_seconds if summary.wall_seconds > 0 else 0.0
    console.print(
        f"{summary.mode} {summary.run_id} ({summary.strategy}): {summary.events:,} events "
        f"({summary.quotes:,} quotes, {summary.trades:,} trades) over {span:,.0f} s of data "
        f"in {summary.wall_seconds:.2f} s = {rate:,.0f} events/s", markup=False)
    if summary.events_note:
        console.print(f"events: {summary.events_note}", markup=False)
    console.print(f"decisions: {summary.decisions:,}, orders: {summary.orders:,}, "
                  f"fills: {summary.fills:,}", markup=False)
    for note in summary.strategy_notes:
        console.print(note, markup=False)
    skipped = summary.client_fills_skipped
    if summary.client_fills or summary.client_fills_unpriced or skipped:
        console.print(f"client fills: {summary.client_fills:,} delivered, "
                      f"{_unpriced(summary)} without a market to price them", markup=False)
    if skipped:
        reasons = ", ".join(f"{count:,} {what}" for what, count in sorted(skipped.items()))
        console.print(f"client fills skipped (unusable rows): {sum(skipped.values()):,} "
                      f"({reasons})", markup=False)
    console.print(f"decision log: {summary.records:,} records in "
                  f"{', '.join(str(p) for p in summary.log_files) or '(none)'}", markup=False)
    console.print(f"report: python main.py --mode post-mortem --run {summary.run_id}",
                  markup=False)


def _unpriced(summary: RunSummary) -> str:
    """The undelivered client fills: with the quoted flow, most are clients who were shown
    the desk's quote and declined it, not fills without a market."""
    if summary.client_fills_declined is None or summary.client_fills_no_market is None:
        return f"{summary.client_fills_unpriced:,}"
    return (f"{summary.client_fills_declined:,} declined the desk's quote, "
            f"{summary.client_fills_no_market:,}")
