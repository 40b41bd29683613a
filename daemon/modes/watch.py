"""`--mode watch`: the consolidated top-of-book view, live in the terminal or as JSON lines.

On a terminal (and without `--format json`) a rich table refreshes a few times a second:
per symbol, each venue's bid/ask and sizes, its own spread, the age of its quote, and the
cross-venue spread (best bid anywhere against best ask anywhere). Under it, for every
strategy running beside it (its decision log in the same `data_dir` written to in the last
two minutes; `--run RUN` picks one run, `--strategy NAME` one strategy), where its
order-arrival model stands, read from the newest decision in its log
(daemon/postmortem/tail.py): inventory-mm's k, configured, or auto's warm-up with trades
seen / needed, then fitted or floored with its k_bps; its inventory and P&L.

Otherwise it prints one consolidated-view JSON line per quote update, in the
crypto-pipe.txt shape, so scripts can consume it. Those lines are written from a bus sink,
so none is conflated away; a reader that stops reading slows only this viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from daemon.core.clock import now_ns
from daemon.core.model import Quote
from daemon.core.tasks import spawn
from daemon.market.view import ConsolidatedView
from daemon.postmortem.tail import LogTails, StrategyState

if TYPE_CHECKING:
    from daemon.app import App

REFRESH_HZ = 4


async def run_watch(app: App) -> int:
    app.start_rings()
    as_json = app.args.format == "json" or (app.args.format is None and not sys.stdout.isatty())
    if as_json:
        return await _watch_json(app, sys.stdout.buffer)
    return await _watch_table(app)


async def _watch_json(app: App, out: BinaryIO) -> int:
    view = app.bus.view

    def print_view(quote: Quote) -> None:
        out.write(view.to_json(quote.symbol))
        out.write(b"\n")

    app.bus.add_sink(on_quote=print_view)
    try:
        await app.market_data()
    finally:
        with contextlib.suppress(BrokenPipeError):
            out.flush()
    return 0


async def _watch_table(app: App) -> int:
    console = Console()
    feed = spawn(app.market_data(), name="feed")
    clock = _feed_clock(app)
    # Hand-built argument namespaces (tests) may lack the flags.
    tails = LogTails(app.settings.data_dir, run_id=getattr(app.args, "run", None),
                     strategy=getattr(app.args, "strategy", None))
    with Live(render_watch(app.bus.view, clock(), tails.states()), console=console,
              refresh_per_second=REFRESH_HZ, transient=False) as live:
        try:
            while not feed.done():
                await asyncio.wait({feed}, timeout=1 / REFRESH_HZ)
                live.update(render_watch(app.bus.view, clock(), tails.states()))
        finally:
            if not feed.done():
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed
    feed.result()  # re-raise a feed failure
    return 0


def _feed_clock(app: App) -> Callable[[], int]:
    """Ages are measured on the feed's clock: wall time live, the newest quote in a replay."""
    if not app.replaying:
        return now_ns
    view = app.bus.view
    return lambda: max((q.local_ts_ns for q in view.all_quotes()), default=0)


def render_watch(view: ConsolidatedView, now: int,
                 states: list[StrategyState]) -> RenderableType:
    """The book, and under it the running strategies' state when there are any."""
    book = render_table(view, now)
    return Group(book, render_strategies(states)) if states else book


def render_strategies(states: list[StrategyState]) -> Table:
    """One row per running strategy: its k (warm-up progress in yellow), inventory, P&L
    and its newest decision (the strategy's clock: feed time in a replay)."""
    table = Table(title="strategies (newest decision in their logs)", expand=False)
    for column in ("run", "strategy", "k", "inventory", "P&L", "decision"):
        table.add_column(column, justify="right" if column in ("inventory", "P&L") else "left")
    for state in states:
        at = time.strftime("%H:%M:%S", time.gmtime(state.ts_ns / 1e9))
        table.add_row(
            state.run_id, state.strategy,
            Text(state.k_text, style="yellow" if state.k_state == "warming up" else ""),
            "" if state.inventory is None else f"{state.inventory:.6g}",
            "" if state.pnl is None else f"{state.pnl:.2f}",
            f"{state.action} at {at} UTC" + (" (run ended)" if state.ended else ""),
        )
    return table


def render_table(view: ConsolidatedView, now: int) -> Table:
    table = Table(title="cryptopipe — consolidated top of book", expand=False)
    for column in ("symbol", "venue", "bid qty", "bid", "ask", "ask qty", "spread bps", "age"):
        table.add_column(column, justify="left" if column in ("symbol", "venue") else "right")
    for symbol in sorted(view.symbols()):
        quotes = view.quotes(symbol)
        for venue in sorted(quotes):
            quote = quotes[venue]
            table.add_row(
                symbol, venue, f"{quote.bid_qty:.6g}", f"{quote.bid:.10g}",
                f"{quote.ask:.10g}", f"{quote.ask_qty:.6g}", f"{quote.spread_bps:.2f}",
                _age(quote, now),
            )
        if len(quotes) > 1:
            table.add_row(symbol, Text("cross-venue", style="bold"), "", "", "", "",
                          _cross_venue(quotes), "", end_section=True)
        else:
            table.add_section()
    return table


def _age(quote: Quote, now: int) -> Text:
    age_ms = max(0.0, (now - quote.local_ts_ns) / 1e6)
    label = f"{age_ms / 1000:.1f} s" if age_ms >= 1000 else f"{age_ms:.0f} ms"
    return Text(label + (" STALE" if quote.stale else ""), style="red" if quote.stale else "")


def _cross_venue(quotes: dict[str, Quote]) -> Text:
    """Best bid anywhere minus best ask anywhere, bps of mid; positive = crossed venues."""
    live = [q for q in quotes.values() if not q.stale]
    if len(live) < 2:
        return Text("n/a")
    best_bid = max(live, key=lambda q: q.bid)
    best_ask = min(live, key=lambda q: q.ask)
    mid = (best_bid.bid + best_ask.ask) * 0.5
    bps = (best_bid.bid - best_ask.ask) / mid * 1e4
    detail = f"{bps:+.2f} ({best_bid.exchange} bid / {best_ask.exchange} ask)"
    return Text(detail, style="bold green" if bps > 0 else "")
