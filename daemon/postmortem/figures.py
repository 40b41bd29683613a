"""Post-mortem figures per (run, strategy), computed from the tables of `reader.load_log`.

Money is in the quote currency of the symbols traded (USDT for the shipped strategies);
quantities in base units; times in ns since the epoch.

P&L (every strategy). The ledger is every fill of the strategy: venue fills, plus for
internalize the desk's side of each client fill (from its decision's inputs). Positions are
netted per symbol across venues (an arbitrage's two legs offset).
- `realised_pnl`: average-cost accounting (a fill that reduces a position realises
  (price - average cost) x closed quantity), minus all fees;
- `unrealised_pnl`: open position x (mark - average cost), the mark being the last price
  recorded for the symbol: a fill's price or a decision's `inputs["mid"]`, whichever is
  later;
- `total_pnl` = realised + unrealised = -sum(signed notional) - fees + position x mark;
- `max_drawdown`: the largest fall of total P&L (marked at every fill and every recorded
  mid) from its running peak, the peak starting at 0.

Orders (every strategy; the seed notebook's order metrics, shown for inventory-mm):
`fill_rate` = orders with any fill / orders sent; `cancel_ratio` = orders whose last ack is
"canceled" / orders sent; `avg_order_duration_s` = mean time from sending to the terminal
ack (or the fill that completed it) over closed orders, `avg_filled_order_duration_s` the
same over filled ones; `spread_captured` = sum over maker fills of side x (mid - price) x
qty with the last mid recorded at or before the fill (positive: bought below / sold above
the mid), also in bps of their notional; `slippage` = sum over fills of side x (price -
reference) x qty, the reference being the order's limit price, or the deciding mid for a
market order (positive: paid more than asked), averaged per filled order as in the seed.

Arbitrage: `opportunities_seen` = decisions that are "arbitrage" or carry
`inputs["expected_edge_bps"]`; `opportunities_taken` = "arbitrage" decisions; expected
edge = sum of their `expected` (quote) and mean `expected_edge_bps`; `leg_failures` =
taken opportunities with a leg not completely filled (rejected, expired, cancelled or
partial); over the `completed` ones (every leg filled), `expected_edge_completed` against
`realised_edge` = what their legs' fills made (sells - buys - fees), also in bps of half
the legs' notional (one side of the round trip). A failed leg's open position is in the
P&L figures, not in the edge. `halts`: every "unwind_failed" decision (the strategy halted
with a residual it could not hedge) with its time, symbol and residual, until the next
"resume" (or the run's end: `resumed_ns` None); `halted_s` sums their durations.

Internalize: counts of "hedge", "warehouse" and "partial_hedge" (all decisions and client
fills only). The always-hedge baseline is the strategy's twin, `<strategy>.always-hedge`
in the same run (strategies/internalize.py): the same client flow through the forced
always-hedge policy on a paper executor of its own, logged like any strategy. Its P&L,
`always_hedge_pnl`, is computed by the same ledger as the strategy's `total_pnl` (its
fills as the executor made them, its fees, marked at its own last price), with its
`always_hedge_fills` and `always_hedge_fees`; `cost_saved_vs_always_hedge` = the
strategy's total P&L - that baseline (positive: the warehousing decisions paid off). A
run without a twin has no baseline (NaN): `always_hedge_pnl_estimate` is then the only
figure, sum(desk side x qty x (mid - client price) - inputs["hedge_cost"]), the
strategy's own estimate of hedging each fill at once (formula slippage the executor does
not charge: not comparable with a P&L made of fills). A twin is never a strategy of its
own in `groups`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from daemon.core.model import split_symbol
from daemon.core.vocabulary import BASELINE_SUFFIX, Action, baseline_of
from daemon.postmortem.performance import (
    DeskPortfolio,
    MarketSeries,
    Performance,
    desk_portfolio,
    market_series,
    markouts,
    performance,
    timeline_events,
    traded_notional,
)
from daemon.postmortem.reader import query_arrays
from strategies.portfolio import PORTFOLIO_CSV

#: Assets valued at 1 quote unit in portfolio values (the quote side of every symbol is too).
STABLE_ASSETS = frozenset({"USDT", "USDC", "USD", "BUSD", "FDUSD", "DAI", "TUSD"})
_FULL = 1.0 - 1e-9


@dataclass(slots=True)
class InventoryStats:
    symbol: str
    final: float
    max_long: float
    max_short: float
    #: Time-weighted mean of |position| over the run.
    mean_abs: float
    mark: float


@dataclass(slots=True)
class OrderStats:
    orders: int = 0
    filled_orders: int = 0
    fully_filled_orders: int = 0
    cancelled_orders: int = 0
    rejected_orders: int = 0
    open_orders: int = 0
    fill_rate: float = math.nan
    cancel_ratio: float = math.nan
    avg_order_duration_s: float = math.nan
    avg_filled_order_duration_s: float = math.nan
    spread_captured: float = 0.0
    spread_captured_bps: float = math.nan
    slippage: float = 0.0
    avg_slippage_per_filled_order: float = math.nan


@dataclass(slots=True)
class ArbitrageStats:
    opportunities_seen: int = 0
    opportunities_taken: int = 0
    expected_edge: float = 0.0
    mean_expected_edge_bps: float = math.nan
    #: Opportunities whose every leg filled completely: expected vs realised, like for like.
    completed: int = 0
    expected_edge_completed: float = 0.0
    realised_edge: float = 0.0
    realised_edge_bps: float = math.nan
    leg_failures: int = 0
    #: Halts after a failed unwind (see `halts`) and the seconds of data they left untraded.
    halts: int = 0
    halted_s: float = 0.0
    halt_log: list[Halt] = field(default_factory=list)


@dataclass(slots=True)
class Halt:
    """One halt of an arbitrage after a failed unwind: when, what was left unhedged, and
    when it resumed (None: still halted when the run ended)."""

    ts_ns: int
    symbol: str | None
    residual: float
    resumed_ns: int | None
    halted_s: float
    reason: str


@dataclass(slots=True)
class InternalizeStats:
    client_fills: int = 0
    client_volume: float = 0.0
    hedge: int = 0
    warehouse: int = 0
    partial_hedge: int = 0
    client_fill_hedge: int = 0
    client_fill_warehouse: int = 0
    client_fill_partial_hedge: int = 0
    #: The always-hedge twin's P&L from its fills (NaN: the run has no twin).
    always_hedge_pnl: float = math.nan
    cost_saved_vs_always_hedge: float = math.nan
    always_hedge_fills: int = 0
    always_hedge_fees: float = 0.0
    #: The strategy's own estimate of hedging every fill at once (formula or depth).
    always_hedge_pnl_estimate: float = math.nan
    #: Client fills without a mid or hedge cost (no quote at the time): not in the baseline.
    unpriced_client_fills: int = 0


@dataclass(slots=True)
class Series:
    """Time series for the charts (full resolution; charts downsample)."""

    pnl_ts: np.ndarray
    pnl: np.ndarray
    realised_ts: np.ndarray
    realised: np.ndarray
    inventory: dict[str, tuple[np.ndarray, np.ndarray]]
    portfolio_ts: np.ndarray
    portfolio_value: np.ndarray
    decision_ts: np.ndarray
    decision_action: np.ndarray
    #: Halts, kills and rebalances (performance.timeline_events).
    events_ts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    events_kind: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    events_reason: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    markets: list[MarketSeries] = field(default_factory=list)
    desk: DeskPortfolio | None = None


@dataclass(slots=True)
class RunSummary:
    """Every figure of one strategy in one run."""

    run_id: str
    strategy: str
    start_ns: int
    end_ns: int
    decisions: int
    actions: dict[str, int]
    intents_requested: int
    intents_sent: int
    rejects: int
    fills: int
    volume: float
    fees: float
    fees_unvalued: int
    realised_pnl: float
    unrealised_pnl: float
    total_pnl: float
    max_drawdown: float
    portfolio_value: float
    inventory: list[InventoryStats]
    orders: OrderStats
    arbitrage: ArbitrageStats | None = None
    internalize: InternalizeStats | None = None
    #: Internalize: the desk portfolio's last equity (its export), else NaN.
    desk_portfolio_value: float = math.nan
    performance: Performance | None = None
    #: The whole run's first and last record, whatever the report's time filter.
    run_start_ns: int = 0
    run_end_ns: int = 0
    series: Series | None = field(default=None, repr=False)

    def figures(self) -> dict[str, Any]:
        """The summary as plain data (what `--format json` prints), without the series."""
        from dataclasses import asdict

        data = asdict(self)
        data.pop("series", None)
        return data


def _scalar(db: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> Any:
    row = db.execute(sql, params).fetchone()
    return row[0] if row else None


def groups(db: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(run_id, strategy) pairs that have any decision or fill, in order."""
    rows = db.execute(
        """SELECT run_id, strategy FROM (
               SELECT run_id, strategy FROM decisions UNION
               SELECT run_id, strategy FROM fills)
           WHERE strategy IS NOT NULL ORDER BY run_id, strategy"""
    ).fetchall()
    found = [(str(run), str(strategy)) for run, strategy in rows]
    present = set(found)
    # A baseline twin is part of its strategy's figures, not a strategy of its own.
    return [(run, strategy) for run, strategy in found
            if (run, baseline_of(strategy)) not in present]


def summarise(db: duckdb.DuckDBPyConnection, run_id: str, strategy: str,
              exports_root: Path | None = None) -> RunSummary:
    """All figures of one (run, strategy); `exports_root/<run>/` holds the strategies'
    own exports (internalize's desk portfolio)."""
    key = {"run": run_id, "strategy": strategy}
    where = "run_id = $run AND strategy = $strategy"
    start, end = db.execute(
        f"""SELECT min(ts_ns), max(ts_ns) FROM (
                SELECT ts_ns FROM decisions WHERE {where} UNION ALL
                SELECT ts_ns FROM fills WHERE {where} UNION ALL
                SELECT ts_ns FROM acks WHERE {where})""", key).fetchone()  # type: ignore[misc]
    actions = dict(db.execute(
        f"SELECT action, count(*) FROM decisions WHERE {where} GROUP BY action ORDER BY action",
        key).fetchall())
    venue_fills = db.execute(
        f"""SELECT count(*), coalesce(sum(notional), 0), coalesce(sum(fee_quote), 0),
                   count(*) FILTER (WHERE fee_quote IS NULL)
            FROM fills WHERE {where}""", key).fetchone()
    assert venue_fills is not None
    ledger = _Ledger.build(db, key, where)
    pnl = ledger.profit_and_loss(int(end))
    summary = RunSummary(
        run_id=run_id,
        strategy=strategy,
        start_ns=int(start),
        end_ns=int(end),
        decisions=sum(actions.values()),
        actions=actions,
        intents_requested=int(_scalar(
            db, f"SELECT coalesce(sum(n_intents), 0) FROM decisions WHERE {where}", key)),
        intents_sent=int(_scalar(
            db, f"SELECT count(*) FROM orders WHERE {where} AND sent", key)),
        rejects=actions.get(Action.REJECT, 0),
        fills=int(venue_fills[0]),
        volume=float(venue_fills[1]),
        fees=float(venue_fills[2]),
        fees_unvalued=int(venue_fills[3]),
        realised_pnl=pnl.realised,
        unrealised_pnl=pnl.unrealised,
        total_pnl=pnl.realised + pnl.unrealised,
        max_drawdown=pnl.max_drawdown,
        portfolio_value=math.nan,
        inventory=pnl.inventory,
        orders=order_stats(db, key, where),
    )
    if strategy_kind(strategy, actions) == "arbitrage":
        summary.arbitrage = arbitrage_stats(db, key, where)
        summary.arbitrage.halt_log = halts(db, key, int(end))
        summary.arbitrage.halts = len(summary.arbitrage.halt_log)
        summary.arbitrage.halted_s = sum(h.halted_s for h in summary.arbitrage.halt_log)
    if ledger.client_fills or strategy_kind(strategy, actions) == "internalize":
        summary.internalize = internalize_stats(db, key, where, summary.total_pnl)
    portfolio_ts, portfolio_value = portfolio_series(db, key, where, ledger)
    if len(portfolio_value):
        summary.portfolio_value = float(portfolio_value[-1])
    decision_rows = query_arrays(
        db, f"SELECT ts_ns, action FROM decisions WHERE {where} ORDER BY ts_ns, decision_id",
        key)
    events = timeline_events(db, key, where)
    summary.series = Series(
        pnl_ts=pnl.curve_ts, pnl=pnl.curve, realised_ts=pnl.realised_ts,
        realised=pnl.realised_curve, inventory=pnl.inventory_paths,
        portfolio_ts=portfolio_ts, portfolio_value=portfolio_value,
        decision_ts=decision_rows["ts_ns"], decision_action=decision_rows["action"],
        events_ts=events[0], events_kind=events[1], events_reason=events[2],
        markets=market_series(db, key, where, int(end)),
    )
    if exports_root is not None and strategy_kind(strategy, actions) == "internalize":
        summary.series.desk = desk_portfolio(db, exports_root / run_id / PORTFOLIO_CSV)
    _add_performance(db, key, where, summary)
    return summary


def _add_performance(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str,
                     summary: RunSummary) -> None:
    """Return on equity, Sharpe, turnover and markouts; the desk's equity when known."""
    series = summary.series
    assert series is not None
    starting = float(series.portfolio_value[0]) if len(series.portfolio_value) else math.nan
    if series.desk is not None:
        starting = series.desk.starting_equity
        summary.desk_portfolio_value = float(series.desk.equity[-1])
    summary.performance = performance(
        series.pnl_ts, series.pnl, summary.start_ns, summary.end_ns, starting,
        summary.total_pnl, traded_notional(db, key, where))
    summary.performance.markouts = markouts(db, key, where)


def strategy_kind(strategy: str, actions: dict[str, int]) -> str:
    """Which strategy-specific figures apply: by name, else by the verbs it used."""
    name = strategy.lower().replace("_", "-")
    for kind in ("arbitrage", "internalize", "inventory-mm"):
        if name.startswith(kind):
            return kind
    if Action.ARBITRAGE in actions:
        return "arbitrage"
    if {Action.HEDGE, Action.WAREHOUSE, Action.PARTIAL_HEDGE} & actions.keys():
        return "internalize"
    return "inventory-mm" if Action.QUOTE in actions else name


# -- P&L ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _ProfitAndLoss:
    realised: float
    unrealised: float
    max_drawdown: float
    inventory: list[InventoryStats]
    curve_ts: np.ndarray
    curve: np.ndarray
    realised_ts: np.ndarray
    realised_curve: np.ndarray
    inventory_paths: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def total(self) -> float:
        return self.realised + self.unrealised


@dataclass(slots=True)
class _Ledger:
    """Fills (venue and client) and marks of one (run, strategy), in time order."""

    symbols: list[str]
    # Events: every fill and every recorded mid, ordered by (time, record order).
    ts: np.ndarray
    symbol: np.ndarray  # index into `symbols`
    signed_qty: np.ndarray  # 0 for a mark
    price: np.ndarray
    fee: np.ndarray  # quote currency, 0 for a mark or an unvalued fee
    is_fill: np.ndarray
    #: Market prices: venue fills and recorded mids. A client's price carries the desk's
    #: markup, so a client fill moves the position but never the mark.
    is_mark: np.ndarray
    client_fills: int

    @classmethod
    def build(cls, db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str) -> _Ledger:
        symbols = [row[0] for row in db.execute(
            f"""SELECT DISTINCT symbol FROM (
                    SELECT symbol FROM fills WHERE {where} UNION ALL
                    SELECT symbol FROM client_fills WHERE {where} UNION ALL
                    SELECT symbol FROM decisions WHERE {where} AND mid > 0)
                WHERE symbol IS NOT NULL ORDER BY symbol""", key).fetchall()]
        # A decision that names no symbol marks the strategy's only symbol, if it has one.
        only = symbols[0] if len(symbols) == 1 else None
        events = query_arrays(db, f"""
            SELECT ts_ns, list_position($symbols, symbol) - 1 AS symbol, signed_qty, price,
                   fee, is_fill, is_mark FROM (
                SELECT ts_ns, seq, symbol, signed_qty, price, coalesce(fee_quote, 0) AS fee,
                       true AS is_fill, true AS is_mark
                FROM fills WHERE {where}
                UNION ALL
                SELECT ts_ns, seq, symbol, CASE WHEN side = 'buy' THEN qty ELSE -qty END,
                       price, 0.0, true, false
                FROM client_fills WHERE {where} AND qty > 0 AND price > 0
                UNION ALL
                SELECT ts_ns, decision_id, coalesce(symbol, $only), 0.0, mid, 0.0, false, true
                FROM decisions WHERE {where} AND mid > 0 AND isfinite(mid))
            WHERE symbol IS NOT NULL
            ORDER BY ts_ns, seq, is_fill""", {**key, "only": only, "symbols": symbols})
        symbol_index = events["symbol"].astype(np.int64)
        client = _scalar(db, f"SELECT count(*) FROM client_fills WHERE {where}", key)
        return cls(symbols, events["ts_ns"].astype(np.int64), symbol_index,
                   events["signed_qty"].astype(np.float64), events["price"].astype(np.float64),
                   events["fee"].astype(np.float64), events["is_fill"].astype(bool),
                   events["is_mark"].astype(bool), int(client or 0))

    def profit_and_loss(self, end_ns: int) -> _ProfitAndLoss:
        realised, realised_ts, realised_curve, stats, paths = self._average_cost(end_ns)
        curve = self._equity_curve()
        unrealised = sum(
            s.final * (s.mark - cost) for s, cost in stats if s.final != 0.0
        )
        peaks = np.maximum.accumulate(np.concatenate(([0.0], curve)))[1:]
        drawdown = float(np.max(peaks - curve)) if len(curve) else 0.0
        return _ProfitAndLoss(
            realised=realised, unrealised=float(unrealised), max_drawdown=drawdown,
            inventory=[s for s, _ in stats], curve_ts=self.ts, curve=curve,
            realised_ts=realised_ts, realised_curve=realised_curve, inventory_paths=paths,
        )

    def _equity_curve(self) -> np.ndarray:
        """Total P&L after every event: cash + sum over symbols of position x last price."""
        fill_qty = np.where(self.is_fill, self.signed_qty, 0.0)
        cash = np.cumsum(-fill_qty * self.price - self.fee)
        value = np.zeros(len(self.ts))
        positions = np.arange(len(self.ts))
        for index in range(len(self.symbols)):
            mine = self.symbol == index
            position = np.cumsum(np.where(mine, fill_qty, 0.0))
            last_seen = np.maximum.accumulate(np.where(mine & self.is_mark, positions, -1))
            # Before the symbol's first market price, its first fill's price stands in.
            fallback = np.maximum.accumulate(np.where(mine, positions, -1))
            last_seen = np.where(last_seen >= 0, last_seen, fallback)
            mark = np.where(last_seen >= 0, self.price[np.maximum(last_seen, 0)], 0.0)
            value += np.where(position != 0.0, position * mark, 0.0)
        return cash + value

    def _average_cost(self, end_ns: int) -> tuple[
        float, np.ndarray, np.ndarray, list[tuple[InventoryStats, float]],
        dict[str, tuple[np.ndarray, np.ndarray]],
    ]:
        """Realised P&L by average cost, inventory paths and per-symbol stats."""
        fills = np.flatnonzero(self.is_fill)
        count = len(self.symbols)
        position = [0.0] * count
        cost = [0.0] * count
        realised = 0.0
        realised_curve = np.empty(len(fills))
        path_ts: list[list[int]] = [[] for _ in range(count)]
        path_qty: list[list[float]] = [[] for _ in range(count)]
        # Plain lists of the fills only: marks do not move positions or cost.
        ts, symbol, qty, price, fee = (self.ts[fills].tolist(), self.symbol[fills].tolist(),
                                       self.signed_qty[fills].tolist(),
                                       self.price[fills].tolist(), self.fee[fills].tolist())
        for event in range(len(fills)):
            s, q, p = symbol[event], qty[event], price[event]
            held = position[s]
            if held == 0.0 or (held > 0.0) == (q > 0.0):  # opening or adding
                cost[s] = (cost[s] * abs(held) + p * abs(q)) / (abs(held) + abs(q))
            else:  # reducing, maybe flipping through zero
                closed = min(abs(q), abs(held))
                realised += closed * (p - cost[s]) * (1.0 if held > 0.0 else -1.0)
                if abs(q) > abs(held):
                    cost[s] = p
            position[s] = held + q
            if abs(position[s]) < 1e-12 * max(1.0, abs(q)):
                position[s], cost[s] = 0.0, 0.0
            realised -= fee[event]
            realised_curve[event] = realised
            path_ts[s].append(ts[event])
            path_qty[s].append(position[s])
        marks = self._last_prices()
        stats = []
        paths = {}
        for s, name in enumerate(self.symbols):
            times = np.asarray(path_ts[s], dtype=np.int64)
            held_path = np.asarray(path_qty[s], dtype=np.float64)
            paths[name] = (times, held_path)
            stats.append((InventoryStats(
                symbol=name,
                final=position[s],
                max_long=float(max(held_path.max(initial=0.0), 0.0)),
                max_short=float(min(held_path.min(initial=0.0), 0.0)),
                mean_abs=_time_weighted_abs(times, held_path, self._start(), end_ns),
                mark=marks[s],
            ), cost[s]))
        return realised, self.ts[fills], realised_curve, stats, paths

    def _last_prices(self) -> list[float]:
        marks = [math.nan] * len(self.symbols)
        for s in range(len(self.symbols)):
            mine = np.flatnonzero((self.symbol == s) & self.is_mark)
            if len(mine):
                marks[s] = float(self.price[mine[-1]])
        return marks

    def _start(self) -> int:
        return int(self.ts[0]) if len(self.ts) else 0


def _time_weighted_abs(times: np.ndarray, held: np.ndarray, start_ns: int, end_ns: int) -> float:
    """Mean |position| over [start, end]; the position is 0 before the first fill."""
    span = end_ns - start_ns
    if span <= 0 or not len(times):
        return float(abs(held[-1])) if len(held) else 0.0
    until = np.append(times[1:], end_ns)
    return float(np.sum(np.abs(held) * np.clip(until - times, 0, None)) / span)


# -- orders ------------------------------------------------------------------------------


def order_stats(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str) -> OrderStats:
    """Fill rate, cancel ratio, durations, spread captured and slippage (see module doc)."""
    # Orders sent to an executor; when the log has no intent records, what was asked.
    sent_only = _scalar(db, f"SELECT bool_or(sent) FROM orders WHERE {where}", key)
    orders_where = f"{where} AND sent" if sent_only else where
    row = db.execute(f"""
        WITH o AS (SELECT * FROM orders WHERE {orders_where}),
        filled AS (
            SELECT client_order_id, sum(qty) AS filled_qty, max(ts_ns) AS last_fill_ns
            FROM fills WHERE {where} GROUP BY client_order_id),
        last_ack AS (
            SELECT client_order_id, arg_max(status, (ts_ns, seq)) AS status,
                   min(ts_ns) FILTER (WHERE status IN ('filled', 'canceled', 'rejected',
                                                       'expired')) AS closed_ns
            FROM acks WHERE {where} GROUP BY client_order_id),
        lifecycle AS (
            SELECT o.client_order_id, o.qty, o.submit_ts_ns,
                   coalesce(f.filled_qty, 0) AS filled_qty, a.status,
                   CASE WHEN coalesce(f.filled_qty, 0) >= o.qty * {_FULL}
                        THEN least(coalesce(a.closed_ns, f.last_fill_ns), f.last_fill_ns)
                        ELSE a.closed_ns END AS closed_ns
            FROM o LEFT JOIN filled f USING (client_order_id)
                   LEFT JOIN last_ack a USING (client_order_id))
        SELECT count(*),
               count(*) FILTER (WHERE filled_qty > 0),
               count(*) FILTER (WHERE filled_qty >= qty * {_FULL}),
               count(*) FILTER (WHERE status = 'canceled'),
               count(*) FILTER (WHERE status = 'rejected'),
               count(*) FILTER (WHERE closed_ns IS NULL),
               avg(closed_ns - submit_ts_ns) / 1e9,
               avg(closed_ns - submit_ts_ns) FILTER (WHERE filled_qty >= qty * {_FULL}) / 1e9
        FROM lifecycle""", key).fetchone()
    assert row is not None
    stats = OrderStats(*(int(v) for v in row[:6]))
    if stats.orders:
        stats.fill_rate = stats.filled_orders / stats.orders
        stats.cancel_ratio = stats.cancelled_orders / stats.orders
    stats.avg_order_duration_s = _float(row[6])
    stats.avg_filled_order_duration_s = _float(row[7])
    captured, maker_notional = db.execute(f"""
        WITH marks AS (SELECT ts_ns, symbol, mid FROM decisions
                       WHERE {where} AND mid > 0 AND isfinite(mid)),
        maker AS (SELECT * FROM fills WHERE {where} AND liquidity = 'maker')
        SELECT coalesce(sum(CASE WHEN f.side = 'buy' THEN 1 ELSE -1 END
                            * (m.mid - f.price) * f.qty), 0),
               sum(f.notional) FILTER (WHERE m.mid IS NOT NULL)
        FROM maker f ASOF LEFT JOIN marks m
          ON f.symbol = m.symbol AND f.ts_ns >= m.ts_ns""", key).fetchone()  # type: ignore[misc]
    stats.spread_captured = float(captured)
    stats.spread_captured_bps = (float(captured) / maker_notional * 1e4
                                 if maker_notional else math.nan)
    slippage = _scalar(db, """
        SELECT coalesce(sum(CASE WHEN f.side = 'buy' THEN 1 ELSE -1 END
                            * (f.price - coalesce(o.price, o.decision_mid)) * f.qty), 0)
        FROM fills f JOIN orders o USING (run_id, client_order_id)
        WHERE f.run_id = $run AND f.strategy = $strategy
          AND coalesce(o.price, o.decision_mid) IS NOT NULL""", key)
    stats.slippage = float(slippage)
    if stats.filled_orders:
        stats.avg_slippage_per_filled_order = stats.slippage / stats.filled_orders
    return stats


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


# -- arbitrage ---------------------------------------------------------------------------


def arbitrage_stats(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str
                    ) -> ArbitrageStats:
    row = db.execute(f"""
        SELECT count(*) FILTER (WHERE action = 'arbitrage' OR expected_edge_bps IS NOT NULL),
               count(*) FILTER (WHERE action = 'arbitrage'),
               coalesce(sum(expected) FILTER (WHERE action = 'arbitrage'), 0),
               avg(expected_edge_bps) FILTER (WHERE action = 'arbitrage')
        FROM decisions WHERE {where}""", key).fetchone()
    assert row is not None
    stats = ArbitrageStats(int(row[0]), int(row[1]), float(row[2]), _float(row[3]))
    legs = db.execute(f"""
        WITH legs AS (
            SELECT o.decision_id, o.client_order_id, o.qty,
                   coalesce(sum(f.qty), 0) AS filled_qty,
                   coalesce(sum(-f.signed_qty * f.price - coalesce(f.fee_quote, 0)), 0)
                       AS cash,
                   coalesce(sum(f.notional), 0) AS notional
            FROM orders o LEFT JOIN fills f USING (run_id, client_order_id)
            WHERE o.run_id = $run AND o.strategy = $strategy AND o.decision_action = 'arbitrage'
            GROUP BY ALL),
        opportunities AS (
            SELECT decision_id, bool_and(filled_qty >= qty * {_FULL}) AS complete,
                   sum(cash) AS cash, sum(notional) AS notional
            FROM legs GROUP BY decision_id)
        SELECT count(*) FILTER (WHERE NOT complete),
               count(*) FILTER (WHERE complete),
               coalesce(sum(p.cash) FILTER (WHERE complete), 0),
               sum(p.notional) FILTER (WHERE complete),
               coalesce(sum(d.expected) FILTER (WHERE complete), 0)
        FROM opportunities p JOIN decisions d USING (decision_id)""", key).fetchone()
    assert legs is not None
    stats.leg_failures, stats.completed = int(legs[0]), int(legs[1])
    stats.realised_edge = float(legs[2])
    # In bps of one side of the round trip: half the legs' notional.
    stats.realised_edge_bps = float(legs[2]) / (legs[3] / 2) * 1e4 if legs[3] else math.nan
    stats.expected_edge_completed = float(legs[4])
    return stats


def halts(db: duckdb.DuckDBPyConnection, key: dict[str, Any], end_ns: int) -> list[Halt]:
    """Each "unwind_failed" decision, paired with the "resume" that ended it."""
    rows = db.execute(f"""
        SELECT d.ts_ns, d.action, d.symbol, d.reason,
               TRY_CAST(json_extract_string(r.inputs, '$.residual') AS DOUBLE) AS residual
        FROM decisions d JOIN records r ON r.seq = d.decision_id
        WHERE d.run_id = $run AND d.strategy = $strategy
          AND d.action IN ('{Action.UNWIND_FAILED}', '{Action.RESUME}')
        ORDER BY d.ts_ns, d.decision_id""", key).fetchall()
    found: list[Halt] = []
    for ts_ns, action, symbol, reason, residual in rows:
        if action == Action.UNWIND_FAILED:
            found.append(Halt(int(ts_ns), symbol, _float(residual), None,
                              (end_ns - int(ts_ns)) / 1e9, reason or ""))
        elif found and found[-1].resumed_ns is None:
            found[-1].resumed_ns = int(ts_ns)
            found[-1].halted_s = (int(ts_ns) - found[-1].ts_ns) / 1e9
    return found


# -- internalize -------------------------------------------------------------------------


_WHERE = "run_id = $run AND strategy = $strategy"


def _span(db: duckdb.DuckDBPyConnection, key: dict[str, Any]) -> tuple[Any, Any]:
    """(first, last) record time of one (run, strategy); (None, None) without records."""
    return db.execute(  # type: ignore[return-value]
        f"""SELECT min(ts_ns), max(ts_ns) FROM (
                SELECT ts_ns FROM decisions WHERE {_WHERE} UNION ALL
                SELECT ts_ns FROM fills WHERE {_WHERE} UNION ALL
                SELECT ts_ns FROM acks WHERE {_WHERE})""", key).fetchone()


def internalize_stats(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str,
                      total_pnl: float) -> InternalizeStats:
    row = db.execute(f"""
        SELECT count(*) FILTER (WHERE action = 'hedge'),
               count(*) FILTER (WHERE action = 'warehouse'),
               count(*) FILTER (WHERE action = 'partial_hedge')
        FROM decisions WHERE {where}""", key).fetchone()
    client = db.execute(f"""
        SELECT count(*), coalesce(sum(qty * price), 0),
               count(*) FILTER (WHERE action = 'hedge'),
               count(*) FILTER (WHERE action = 'warehouse'),
               count(*) FILTER (WHERE action = 'partial_hedge'),
               sum(CASE WHEN side = 'buy' THEN 1 ELSE -1 END * qty * (mid - price)
                   - hedge_cost) FILTER (WHERE isfinite(mid) AND isfinite(hedge_cost)),
               count(*) FILTER (WHERE mid IS NULL OR hedge_cost IS NULL OR NOT isfinite(mid)
                                OR NOT isfinite(hedge_cost))
        FROM client_fills WHERE {where}""", key).fetchone()
    assert row is not None and client is not None
    stats = InternalizeStats(
        client_fills=int(client[0]), client_volume=float(client[1]),
        hedge=int(row[0]), warehouse=int(row[1]), partial_hedge=int(row[2]),
        client_fill_hedge=int(client[2]), client_fill_warehouse=int(client[3]),
        client_fill_partial_hedge=int(client[4]), always_hedge_pnl_estimate=_float(client[5]),
        unpriced_client_fills=int(client[6]),
    )
    twin = {"run": key["run"], "strategy": key["strategy"] + BASELINE_SUFFIX}
    _, end = _span(db, twin)
    if end is not None:  # the twin ran: its P&L from its fills, by the same ledger
        stats.always_hedge_pnl = _Ledger.build(db, twin, _WHERE).profit_and_loss(int(end)).total
        fills, fees = db.execute(f"SELECT count(*), coalesce(sum(fee_quote), 0) FROM fills "
                                 f"WHERE {_WHERE}", twin).fetchone()  # type: ignore[misc]
        stats.always_hedge_fills, stats.always_hedge_fees = int(fills), float(fees)
        stats.cost_saved_vs_always_hedge = total_pnl - stats.always_hedge_pnl
    return stats


# -- portfolio value ---------------------------------------------------------------------


def portfolio_series(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str,
                     ledger: _Ledger) -> tuple[np.ndarray, np.ndarray]:
    """Value of the recorded balances (all venues) at each snapshot, at the marks then,
    funds in transit between venues included (a snapshot's `in_transit`: in no venue's
    balance until they land, so without them the value would drop by the amount in flight
    and come back on arrival; with them it moves only by the transfer's fee).

    A venue's latest snapshot stands until its next one. Quote and stable assets count at
    1; a base asset at the last mark of a symbol with that base (the first mark for a
    snapshot taken before any); others are left out.
    """
    rows = db.execute(
        f"""SELECT ts_ns, venue, balances, in_transit FROM balances WHERE {where}
            ORDER BY ts_ns, seq""", key).fetchall()
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0)
    import orjson

    quote_assets = set(STABLE_ASSETS) | {split_symbol(s)[1] for s in ledger.symbols}
    base_symbol = {split_symbol(s)[0]: i for i, s in enumerate(ledger.symbols)}
    marks = [(ledger.symbol == i) & ledger.is_mark for i in range(len(ledger.symbols))]
    mark_times = [ledger.ts[mine] for mine in marks]
    mark_prices = [ledger.price[mine] for mine in marks]

    def price(asset: str, ts_ns: int) -> float:
        if asset in quote_assets:
            return 1.0
        index = base_symbol.get(asset)
        if index is None:
            return math.nan
        prices = mark_prices[index]
        if not len(prices):
            return math.nan
        # The last mark at or before the snapshot; before the first mark, the first one
        # (a run snapshots its balances before the strategy has recorded any price).
        at = int(np.searchsorted(mark_times[index], ts_ns, side="right")) - 1
        return float(prices[max(at, 0)])

    def parsed(value: Any) -> dict[str, float]:
        return (orjson.loads(value) if isinstance(value, str) else value) or {}

    latest: dict[str, dict[str, float]] = {}
    arriving: dict[str, dict[str, float]] = {}
    times, values = [], []
    for ts_ns, venue, balances, in_transit in rows:
        latest[venue], arriving[venue] = parsed(balances), parsed(in_transit)
        total = 0.0
        for held in (*latest.values(), *arriving.values()):
            for asset, amount in held.items():
                worth = amount * price(asset, ts_ns) if amount else 0.0
                if not math.isnan(worth):
                    total += worth
        if times and times[-1] == ts_ns:  # venues snapshotted together: one point
            values[-1] = total
        else:
            times.append(ts_ns)
            values.append(total)
    return np.asarray(times, dtype=np.int64), np.asarray(values)
