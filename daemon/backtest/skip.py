"""The exact skip: which of a backtest's events need not go through the per-event path.

A strategy that declares its markets (`Strategy.market_keys`) ignores every other
market's events: `on_quote`/`on_trade` return None and change nothing (each strategy's
test pins that down). Such an event still passes through the rest of the per-event path,
and there it matters only in these ways:

- time: the runner fires the strategy timer on the first event of any market at or after
  `next_timer_ns`; the paper executor lands pending submits, cancels and transfers on the
  first event at or after their time (`next_event_ns`); the kill switch polls its flag
  file (`next_poll_ns`); balance snapshots are taken at the first event at or after
  `next_ns`; client fills are delivered before the first event at or after their time;
- the clocks: the simulated clock and the paper executor's clock move to the event's time;
- its market's state: the bus view, the ring, the risk gate's and the paper executor's
  latest quote of that market.

So an event may be skipped when its market is not of interest and its time is before the
earliest of those due times: then it could only have moved the clocks, which the engine
moves to where the skipped events left them before the next event it runs (landing
nothing: `PaperExecutor.note_time`), and updated
state of a market that nothing reads -- the strategy reads only its markets, orders go
only to them, and the risk gate reads quotes only of markets with our orders, of the
client flow's symbol (its client-trade market is marked at that symbol's newest mid on any
venue: the backtest adds those markets to the interest) and of a third asset a fee is
charged in (never on paper, which charges fees in the quote asset). A strategy that breaks
its promise fails loudly (`GuardedMarketView`, `GuardedSink`) rather than trading on a
market view that misses the skipped quotes.

Trades of the strategy's own markets go the same way when it declares `reads_trades =
False` (its `on_trade` does nothing, it reads no trade statistics): such a trade matters
only to the paper executor, when it prints at or through one of our resting orders
(`PaperExecutor.print_reaches_orders`), or when something is due by its time. That test
is per trade, made as the engine meets it; it saves ~1.8 us a trade.

Finding the next event to run costs no Python per skipped event: the rows of interest are
listed once, and the first row at or after a due time is a binary search over the running
maximum of `local_ts_ns` (the first row whose running maximum reaches the due time is never
later than the first row whose own time does, so out-of-order data only makes the engine
run an event more, never skip one it should not). Skipped events still count in
`events`, so events/s compares with a bare replay, which counts all.
"""

from __future__ import annotations

import numpy as np

from daemon.backtest.cache import BacktestData
from daemon.core.model import OrderIntent, Quote, Trade
from daemon.core.records import Record, RecordSink
from strategies.base import MarketView

Key = tuple[str, str]
#: `SkipPlan.gap_max` of a row of interest with no skippable event just before it.
NO_GAP = -(2**63)


class UndeclaredMarket(RuntimeError):
    """A strategy read or traded a market outside its `market_keys` while the backtest was
    skipping that market's events: its results would differ from an unskipped run."""


class SkipPlan:
    """Where a backtest's rows of interest are and how to find the next row that is due,
    over one stretch of rows held in memory (a run's, or one chunk of it: see `chunk`)."""

    def __init__(self, data: BacktestData, interest: frozenset[Key] | None,
                 window: tuple[int, int] | None = None, *, offset: int = 0,
                 first: int | None = None, carry: int = NO_GAP,
                 previous: int | None = None, origin: int | None = None,
                 before: int = 0) -> None:
        """`interest`: the markets whose every event runs; None runs every event.
        `window`: the rows [start, stop) to plan (a stepped episode's part of a
        recording); None: all of `data`. Rows outside it do not exist for the plan.

        For one chunk of a longer run (rows are the run's, `data` holds rows
        [offset, offset + len(data))): `first`, the first row whose rows of interest are
        listed (rows before it were met in the chunk before, kept for their due rows);
        `carry`, the running max receive time of the rows before `start`; `previous`, the
        last row of interest before `first`; `origin`, the run's first row (`events`
        count from it); `before`, the rows of interest before `first`."""
        start, stop = window if window is not None else (offset, offset + len(data))
        first = start if first is None else first
        #: The rows [start, stop) planned, and where the run began (`events` count from it).
        self.start, self.stop = start, stop
        self.origin = start if origin is None else origin
        self.data, self.offset = data, offset
        #: Rows of interest of the run before this plan's (`processed` counts them).
        self.before = before
        #: The running max of the rows before `start`.
        self.carry = carry
        times = data.local_ts_ns[start - offset:stop - offset]
        running_max = np.maximum.accumulate(times) if len(times) else times
        if carry != NO_GAP and len(running_max):
            running_max = np.maximum(running_max, carry)
        #: Running maximum of local_ts_ns over the rows (index: row - start): sorted, so
        #: due rows are found by bisection.
        self.running_max: np.ndarray = running_max
        if interest is None:
            rows = np.arange(first, stop)
        else:
            wanted = np.array([key in interest for key in data.keys] or [False])
            rows = np.flatnonzero(wanted[data.key[first - offset:stop - offset]]) + first
        #: Rows whose events always run, in order.
        self.rows: np.ndarray = rows
        #: Per row of interest: the running max time of the skippable rows just before it
        #: (the last of them), or NO_GAP when the row before it is of interest too.
        gap_max = np.full(len(rows), NO_GAP, dtype=np.int64)
        if len(rows):
            last = start - 1 if previous is None else previous
            preceding = np.concatenate(([last], rows[:-1]))
            has_gap = rows - preceding > 1
            with_carry = np.concatenate(([carry], running_max))  # index: row - start + 1
            gap_max[has_gap] = with_carry[rows[has_gap] - start]
        self.gap_max: list[int] = gap_max.tolist()

    def __len__(self) -> int:
        """Rows in the window (skipped or not)."""
        return int(self.running_max.shape[0])

    def first_due(self, start: int, stop: int, due_ns: int) -> int:
        """The first row in [start, stop) whose running max time reaches `due_ns`; `stop`
        when there is none (every row in between may be skipped). Rows before the plan's
        are not looked at: the engine keeps a chunk's rows with a chance to be due
        (`Backtest._rows`)."""
        # The running max is sorted over the whole window: search all of it (no slice to
        # make), then keep the answer within [start, stop].
        found = int(self.running_max.searchsorted(due_ns)) + self.start
        return start if found < start else stop if found > stop else found

    def running_max_at(self, row: int) -> int:
        """The running max receive time at `row` (`start - 1`: the carry)."""
        return int(self.running_max[row - self.start]) if row >= self.start else self.carry

    def event(self, row: int) -> Quote | Trade:
        return self.data.event(row - self.offset)


class GuardedMarketView:
    """The strategy's market view, refusing to read a market the backtest may skip (and
    trade statistics, when the backtest may skip the trades)."""

    def __init__(self, market: MarketView, keys: frozenset[Key], strategy: str,
                 reads_trades: bool = True) -> None:
        self._market = market
        self._keys = keys
        self._strategy = strategy
        self._reads_trades = reads_trades

    def quote(self, exchange: str, symbol: str) -> Quote | None:
        self._check(exchange, symbol, "read the quote of")
        return self._market.quote(exchange, symbol)

    def volatility(self, exchange: str, symbol: str, window_s: float) -> float:
        self._check(exchange, symbol, "read the volatility of")
        return self._market.volatility(exchange, symbol, window_s)

    def trade_rate(self, exchange: str, symbol: str, window_s: float) -> float:
        self._check(exchange, symbol, "read the trade rate of")
        if not self._reads_trades:
            raise UndeclaredMarket(
                f"strategy {self._strategy} read the trade rate of {exchange} {symbol} but "
                "declares reads_trades = False: the backtest skips trades it does not need")
        return self._market.trade_rate(exchange, symbol, window_s)

    def _check(self, exchange: str, symbol: str, what: str) -> None:
        if (exchange, symbol) not in self._keys:
            raise UndeclaredMarket(undeclared(self._strategy, what, exchange, symbol))


class GuardedSink:
    """The decision log as the runner and the gate see it, refusing an order for a market
    the backtest may skip (every submitted order is recorded before it is sent)."""

    def __init__(self, sink: RecordSink, keys: frozenset[Key], strategy: str) -> None:
        self._sink = sink
        self._keys = keys
        self._strategy = strategy

    def record(self, record: Record) -> None:
        if type(record) is OrderIntent and (record.venue, record.symbol) not in self._keys:
            raise UndeclaredMarket(undeclared(self._strategy, "sent an order to",
                                              record.venue, record.symbol))
        self._sink.record(record)


def undeclared(strategy: str, what: str, exchange: str, symbol: str) -> str:
    return (f"strategy {strategy} {what} {exchange} {symbol}, not among its market_keys: "
            "the backtest skips that market's events, so this run would not be exact; "
            "declare the market (or market_keys = None)")

