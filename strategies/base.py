"""The Strategy contract: plain classes with callbacks that return Decisions.

Strategies import only the model, this module and their own kernels, never an adapter or
an executor: the runner drives the same callbacks live, on paper and in backtests, and
injects the clock and read-only views of the market and the account.

Every callback may return a `Decision` (taken or skipped, with its reason and numbers) or
None when the event did not call for a decision. A Decision's `intents` are submitted and
its `cancels` (client order ids) cancelled by the runner, after the risk gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from daemon.core.clock import Clock
from daemon.core.model import ClientFill, Decision, Fill, OrderAck, Quote, Trade
from daemon.core.quiet import QuietRows


class MarketView(Protocol):
    """What a strategy may read about the market besides the events it is given."""

    def quote(self, exchange: str, symbol: str) -> Quote | None:
        """Latest quote (check `.stale` before acting on it)."""
        ...

    def volatility(self, exchange: str, symbol: str, window_s: float) -> float:
        """Std of log mid returns per sqrt(second) over the window (ring buffer); NaN if unknown."""
        ...

    def trade_rate(self, exchange: str, symbol: str, window_s: float) -> float:
        """Public trades per second over the window."""
        ...


class AccountView(Protocol):
    """Read-only account state of the executor behind the runner."""

    def balances(self, venue: str) -> Mapping[str, float]: ...


class ExportSink(Protocol):
    """Where a strategy appends rows of a per-run export while the run goes (e.g.
    positions.csv). The daemon's object does the I/O, so a strategy callback never opens a
    file; rows already appended survive a crash, and a failed write never raises."""

    def append(self, name: str, columns: Sequence[str],
               rows: Sequence[Sequence[object]]) -> None:
        """Append `rows` to the export `name` (its `columns` head a new file)."""
        ...


class Strategy(Protocol):
    """What the runner and the backtest engine drive. `StrategyBase` gives the optional
    capabilities their defaults; nothing probes a strategy with getattr."""

    name: str
    #: The runner calls `on_timer` this often (seconds of the feed clock); None = never.
    timer_interval_s: float | None
    #: The (exchange, symbol) markets the strategy trades and reads, or None for "any".
    #: A strategy that declares them promises that `on_quote`/`on_trade` of any other
    #: market return None and change nothing, that it reads the `MarketView` only for
    #: these markets and sends orders only in them. A backtest then skips the other
    #: markets' events whenever nothing else is due (daemon/backtest/skip.py), so their
    #: quotes are not in the market view there.
    market_keys: frozenset[tuple[str, str]] | None
    #: False promises that `on_trade` returns None and changes nothing for every trade and
    #: that the strategy never asks the market view for trade statistics; a backtest then
    #: runs a trade only when something is due or it reaches one of our resting orders.
    reads_trades: bool
    #: True: the strategy takes the other side of client fills (`on_client_fill`), and the
    #: mode starts the configured client-flow source for it.
    takes_client_flow: bool
    #: A twin run beside the strategy on paper with the same inputs, as the baseline its
    #: results are compared with (internalize's always-hedge policy), or None.
    baseline: Strategy | None
    #: True: `first_loud` can tell a backtest which rows the strategy would ignore, so
    #: they need not be built as events (daemon/core/quiet.py).
    quiet_rows: bool

    def bind(self, market: MarketView, account: AccountView, clock: Clock) -> None: ...

    def on_quote(self, quote: Quote) -> Decision | None: ...

    def on_trade(self, trade: Trade) -> Decision | None: ...

    def on_fill(self, fill: Fill) -> Decision | None: ...

    def on_ack(self, ack: OrderAck) -> Decision | None: ...

    def on_timer(self, now_ns: int) -> Decision | None: ...

    def first_loud(self, rows: QuietRows, start: int, stop: int) -> int:
        """The first of a backtest's rows [start, stop) whose event the strategy must get:
        before it, `on_quote`/`on_trade` would return None and change nothing but which
        quote is its market's latest (daemon/core/quiet.py). `start` if it cannot tell."""
        ...

    def on_kill(self, reason: str) -> Decision | None:
        """The kill switch fired: stop quoting for good; optionally return a flatten decision."""
        ...

    def on_client_fill(self, fill: ClientFill) -> Decision | None:
        """A client trade the desk took (only called when `takes_client_flow`)."""
        ...

    def attach_exports(self, sink: ExportSink) -> None:
        """Before the run: where to append exports written during it (the run's report
        folder)."""
        ...

    def write_exports(self, out_dir: Path) -> list[Path]:
        """Files the strategy keeps in memory for after the run (e.g. a desk portfolio)."""
        ...

    def degraded(self) -> str | None:
        """Why the strategy runs below its capability now (e.g. halted after a failed
        hedge, resuming by itself later), or None: /healthz reports it as degraded."""
        ...

    def summary_lines(self) -> list[str]:
        """The strategy's own lines for the end-of-run summary."""
        ...


class StrategyBase:
    """The defaults of the optional capabilities: every event ignored, no timer, any
    market, trades read, no client flow, nothing to export, never degraded. Strategies
    subclass it and override what they do."""

    name: str = ""
    timer_interval_s: float | None = None
    market_keys: frozenset[tuple[str, str]] | None = None
    reads_trades: bool = True
    takes_client_flow: bool = False
    baseline: Strategy | None = None
    quiet_rows: bool = False

    def bind(self, market: MarketView, account: AccountView, clock: Clock) -> None:
        pass

    def first_loud(self, rows: QuietRows, start: int, stop: int) -> int:
        return start  # a subclass's callbacks may act on any event

    def on_quote(self, quote: Quote) -> Decision | None:
        return None

    def on_trade(self, trade: Trade) -> Decision | None:
        return None

    def on_fill(self, fill: Fill) -> Decision | None:
        return None

    def on_ack(self, ack: OrderAck) -> Decision | None:
        return None

    def on_timer(self, now_ns: int) -> Decision | None:
        return None

    def on_kill(self, reason: str) -> Decision | None:
        return None

    def on_client_fill(self, fill: ClientFill) -> Decision | None:
        raise NotImplementedError(f"{self.name} takes no client flow")

    def attach_exports(self, sink: ExportSink) -> None:
        pass

    def write_exports(self, out_dir: Path) -> list[Path]:
        return []

    def degraded(self) -> str | None:
        return None

    def summary_lines(self) -> list[str]:
        return []
