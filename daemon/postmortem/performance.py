"""How well a (run, strategy) traded, beyond P&L: markouts, return on equity, Sharpe,
turnover; the events a timeline marks; per market prices with our quotes and fills; and
internalize's desk portfolio. Inputs are the tables of `reader.load_log`.

Markouts (every fill of the strategy: venue fills, and for internalize the desk's side of
each client fill). At horizon h (1 s, 10 s, 60 s) a fill's markout is
side x (mid at fill time + h - fill price) x qty in quote currency (positive: the market
moved our way after we bought / sold), and in bps of the fills' notional. The mid at
t + h is the last one recorded for the fill's venue and symbol at or before t + h (a
decision's "mid", or the middle of the market touch its inputs carry); a fill whose
t + h lies past that market's last recorded mid is not marked (counted in `unmarked`).

Return on equity = total P&L / starting equity, the starting equity being the portfolio
value at the run's first balance snapshot (internalize: the desk portfolio's initial
balances at its first mid, when its export is there). Turnover = notional traded (venue
and client fills) / starting equity, over the run.

Sharpe per day: the P&L curve is sampled every `interval_s` from the strategy's first
record (the largest of 1 day, 1 hour, 1 minute, 1 second that gives at least
`MIN_SHARPE_INTERVALS` intervals); mean / standard deviation (ddof 1) of the changes,
scaled by sqrt(intervals per day). Annualised by sqrt(365): crypto trades every day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from daemon.core.vocabulary import Action
from daemon.postmortem.reader import query_arrays

MARKOUT_HORIZONS_S = (1, 10, 60)
SECONDS_PER_DAY = 86_400
DAYS_PER_YEAR = 365
MIN_SHARPE_INTERVALS = 10
SHARPE_INTERVALS_S = (SECONDS_PER_DAY, 3_600, 60, 1)
NS = 1_000_000_000

#: Decisions the timeline marks: halts (an arbitrage that stops after a failed unwind),
#: kills and rebalances; any other action whose name says halt or alert is a halt too.
TIMELINE_EVENTS: dict[str, str] = {
    Action.KILL: "kill",
    Action.FLATTEN: "kill",
    Action.MAX_LOSS_EXIT: "max loss exit",
    Action.UNWIND_FAILED: "halt",
    Action.REBALANCE: "rebalance",
    Action.PORTFOLIO_REBALANCE: "rebalance",
}


def timeline_kind(action: str) -> str | None:
    """What the timeline calls this decision, or None when it is not marked."""
    kind = TIMELINE_EVENTS.get(action)
    if kind is None and ("halt" in action or "alert" in action):
        return "halt"
    return kind


@dataclass(slots=True)
class Markout:
    """Markouts of one kind of fill ("venue" or "client") at one horizon."""

    kind: str
    horizon_s: int
    marked: int
    unmarked: int
    notional: float
    markout: float
    markout_bps: float


@dataclass(slots=True)
class Performance:
    starting_equity: float = math.nan
    return_on_equity: float = math.nan
    turnover: float = math.nan
    sharpe_per_day: float = math.nan
    sharpe_annualised: float = math.nan
    sharpe_interval_s: int = 0
    sharpe_intervals: int = 0
    markouts: list[Markout] = field(default_factory=list)


@dataclass(slots=True)
class MarketSeries:
    """One market's chart: its touch, our resting quotes (NaN: none), our fills."""

    venue: str
    symbol: str
    quote_ts: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    #: side -> (times, best resting price of ours, NaN while none rests)
    our_quotes: dict[str, tuple[np.ndarray, np.ndarray]]
    #: (kind, side) -> (times, prices, quantities); kind "venue" or "client"
    fills: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(slots=True)
class DeskPortfolio:
    """Internalize's desk (its portfolio_tracking_results.csv): balances at the mid."""

    ts: np.ndarray
    equity: np.ndarray
    base_balance: np.ndarray
    quote_balance: np.ndarray
    pnl_trading: np.ndarray
    starting_equity: float


# -- markouts ----------------------------------------------------------------------------


_OUR_FILLS = """
    SELECT 'venue' AS kind, venue, symbol, side, price, qty, ts_ns
    FROM fills WHERE {where} AND price > 0 AND qty > 0
    UNION ALL
    SELECT 'client', venue, symbol, side, price, qty, ts_ns
    FROM client_fills WHERE {where} AND price > 0 AND qty > 0 AND venue IS NOT NULL"""

_MARKS = """
    SELECT venue, symbol, ts_ns, (bid + ask) / 2 AS mid FROM market_quotes WHERE {where}
    UNION ALL
    SELECT market_venue, symbol, ts_ns, mid FROM decisions
    WHERE {where} AND mid > 0 AND isfinite(mid) AND market_venue IS NOT NULL
      AND symbol IS NOT NULL"""


def markouts(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str
             ) -> list[Markout]:
    """Per kind of fill and horizon: fills marked, markout in quote and bps (module doc)."""
    rows = db.execute(f"""
        WITH f AS ({_OUR_FILLS.format(where=where)}),
        marks AS ({_MARKS.format(where=where)}),
        last_mark AS (SELECT venue, symbol, max(ts_ns) AS last_ns FROM marks GROUP BY ALL),
        due AS (SELECT f.*, h.horizon_s, f.ts_ns + h.horizon_s::BIGINT * {NS} AS at_ns
                FROM f CROSS JOIN (SELECT unnest($horizons) AS horizon_s) h),
        marked AS (
            SELECT d.kind, d.horizon_s, d.price, d.qty,
                   CASE WHEN d.side = 'buy' THEN 1 ELSE -1 END AS sign,
                   CASE WHEN d.at_ns <= l.last_ns THEN m.mid END AS mid
            FROM due d ASOF LEFT JOIN marks m
              ON d.venue = m.venue AND d.symbol = m.symbol AND d.at_ns >= m.ts_ns
            LEFT JOIN last_mark l ON d.venue = l.venue AND d.symbol = l.symbol)
        SELECT kind, horizon_s, count(mid), count(*) - count(mid),
               coalesce(sum(price * qty) FILTER (WHERE mid IS NOT NULL), 0),
               coalesce(sum(sign * (mid - price) * qty), 0)
        FROM marked GROUP BY kind, horizon_s ORDER BY kind DESC, horizon_s""",
        {**key, "horizons": list(MARKOUT_HORIZONS_S)}).fetchall()
    return [Markout(str(kind), int(h), int(n), int(missing), float(notional), float(pnl),
                    float(pnl) / float(notional) * 1e4 if notional else math.nan)
            for kind, h, n, missing, notional, pnl in rows]


# -- return, Sharpe, turnover ------------------------------------------------------------


def performance(pnl_ts: np.ndarray, pnl: np.ndarray, start_ns: int, end_ns: int,
                starting_equity: float, total_pnl: float, traded: float) -> Performance:
    """Return on equity, turnover and Sharpe per day (module doc); markouts added apart."""
    result = Performance(starting_equity=starting_equity)
    if starting_equity > 0:
        result.return_on_equity = total_pnl / starting_equity
        result.turnover = traded / starting_equity
    interval_s = sharpe_interval_s(end_ns - start_ns)
    if interval_s:
        changes = np.diff(sample_curve(pnl_ts, pnl, start_ns, end_ns, interval_s))
        result.sharpe_interval_s, result.sharpe_intervals = interval_s, len(changes)
        result.sharpe_per_day = sharpe_per_day(changes, interval_s)
        result.sharpe_annualised = result.sharpe_per_day * math.sqrt(DAYS_PER_YEAR)
    return result


def sharpe_interval_s(span_ns: int) -> int:
    """The longest sampling interval with enough intervals in the span; 0 if none."""
    for interval in SHARPE_INTERVALS_S:
        if span_ns // (interval * NS) >= MIN_SHARPE_INTERVALS:
            return interval
    return 0


def sample_curve(ts: np.ndarray, values: np.ndarray, start_ns: int, end_ns: int,
                 interval_s: int) -> np.ndarray:
    """The curve's value at start, start + interval, ... (0 before its first point)."""
    edges = np.arange(start_ns, end_ns + 1, interval_s * NS, dtype=np.int64)
    at = np.searchsorted(ts, edges, side="right") - 1
    return np.where(at >= 0, values[np.maximum(at, 0)] if len(values) else 0.0, 0.0)


def sharpe_per_day(changes: np.ndarray, interval_s: int) -> float:
    """mean / std (ddof 1) of the P&L changes, scaled from one interval to a day."""
    if len(changes) < 2:
        return math.nan
    spread = float(np.std(changes, ddof=1))
    if not spread > 0:
        return math.nan
    return float(np.mean(changes)) / spread * math.sqrt(SECONDS_PER_DAY / interval_s)


def traded_notional(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str) -> float:
    row = db.execute(f"""SELECT coalesce(sum(price * qty), 0) FROM (
        SELECT price, qty FROM fills WHERE {where} AND price > 0 AND qty > 0 UNION ALL
        SELECT price, qty FROM client_fills WHERE {where} AND price > 0 AND qty > 0)""",
        key).fetchone()
    return float(row[0]) if row else 0.0


# -- timeline events ---------------------------------------------------------------------


def timeline_events(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, kinds, reasons) of the decisions the timeline marks, in time order."""
    rows = db.execute(
        f"""SELECT ts_ns, action, coalesce(reason, '') FROM decisions WHERE {where}
            AND (action IN (SELECT unnest($actions)) OR action ILIKE '%halt%'
                 OR action ILIKE '%alert%')
            ORDER BY ts_ns, decision_id""",
        {**key, "actions": list(TIMELINE_EVENTS)}).fetchall()
    kinds = [f"{timeline_kind(action)}: {action}" for _, action, _ in rows]
    return (np.asarray([r[0] for r in rows], dtype=np.int64), np.asarray(kinds, dtype=object),
            np.asarray([r[2] for r in rows], dtype=object))


# -- per market --------------------------------------------------------------------------


def market_series(db: duckdb.DuckDBPyConnection, key: dict[str, Any], where: str,
                  end_ns: int) -> list[MarketSeries]:
    """Every market the strategy quoted, filled or priced, in (venue, symbol) order."""
    touch = query_arrays(db, f"""SELECT venue, symbol, ts_ns, bid, ask FROM market_quotes
                            WHERE {where} ORDER BY ts_ns, seq""", key)
    steps = query_arrays(db, _QUOTE_STEPS.format(where=where), {**key, "end": end_ns})
    fills = query_arrays(db, f"""SELECT * FROM ({_OUR_FILLS.format(where=where)})
                            ORDER BY ts_ns""", key)
    markets = sorted({(v, s) for table in (touch, steps, fills)
                      for v, s in zip(table["venue"].tolist(), table["symbol"].tolist(),
                                      strict=True)})
    return [_one_market(venue, symbol, touch, steps, fills) for venue, symbol in markets]


def _one_market(venue: str, symbol: str, touch: dict[str, np.ndarray],
                steps: dict[str, np.ndarray], fills: dict[str, np.ndarray]) -> MarketSeries:
    def rows(table: dict[str, np.ndarray]) -> np.ndarray:
        return (table["venue"] == venue) & (table["symbol"] == symbol)

    here = rows(touch)
    ours = {side: (steps["ts_ns"][mine], steps["price"][mine])
            for side in ("buy", "sell") if (mine := rows(steps) & (steps["side"] == side)).any()}
    ours_fills = {}
    for kind in ("venue", "client"):
        for side in ("buy", "sell"):
            mine = rows(fills) & (fills["kind"] == kind) & (fills["side"] == side)
            if mine.any():
                ours_fills[(kind, side)] = (fills["ts_ns"][mine], fills["price"][mine],
                                            fills["qty"][mine])
    return MarketSeries(venue, symbol, touch["ts_ns"][here], touch["bid"][here],
                        touch["ask"][here], ours, ours_fills)


# Our resting limit orders, from sending to their first terminal ack (or the run's end),
# and at every time one opens or closes, the best price resting per side (NULL: none).
_QUOTE_STEPS = """
WITH limits AS (SELECT * FROM orders WHERE {where} AND price > 0
                    AND order_type IN ('limit', 'post_only')),
-- orders sent to an executor; when the log has no intent records, what was asked
mine AS (SELECT * FROM limits
         WHERE sent OR NOT (SELECT coalesce(bool_or(sent), false) FROM limits)),
closed AS (SELECT run_id, client_order_id, min(ts_ns) AS closed_ns FROM acks
           WHERE status IN ('filled', 'canceled', 'rejected', 'expired')
           GROUP BY run_id, client_order_id),
resting AS (
    SELECT o.venue, o.symbol, o.side, o.price, o.submit_ts_ns AS open_ns,
           coalesce(c.closed_ns, $end) AS close_ns
    FROM mine o LEFT JOIN closed c
      ON c.run_id = o.run_id AND c.client_order_id = o.client_order_id),
changes AS (SELECT venue, symbol, side, open_ns AS ts_ns FROM resting
            UNION SELECT venue, symbol, side, close_ns FROM resting)
SELECT c.venue, c.symbol, c.side, c.ts_ns,
       CASE WHEN c.side = 'buy' THEN max(r.price) ELSE min(r.price) END AS price
FROM changes c LEFT JOIN resting r
  ON r.venue = c.venue AND r.symbol = c.symbol AND r.side = c.side
 AND r.open_ns <= c.ts_ns AND c.ts_ns < r.close_ns
GROUP BY c.venue, c.symbol, c.side, c.ts_ns ORDER BY c.ts_ns"""


# -- internalize's desk ------------------------------------------------------------------


def desk_portfolio(db: duckdb.DuckDBPyConnection, path: Path) -> DeskPortfolio | None:
    """The desk portfolio internalize exported for the run, or None when it is not there
    (a run that did not end, exports moved away) or not readable."""
    if not path.is_file():
        return None
    try:
        table = query_arrays(db, """
            SELECT ts_ns, equity, base_balance, quote_balance, pnl_trading, pnl_total
            FROM read_csv($path, header = true, columns = {
                'ts_ns': 'BIGINT', 'event': 'VARCHAR', 'side': 'VARCHAR', 'qty': 'DOUBLE',
                'price': 'DOUBLE', 'fee': 'DOUBLE', 'base_balance': 'DOUBLE',
                'quote_balance': 'DOUBLE', 'inventory': 'DOUBLE', 'mid': 'DOUBLE',
                'equity': 'DOUBLE', 'pnl_trading': 'DOUBLE', 'pnl_total': 'DOUBLE'})
            WHERE isfinite(equity) ORDER BY ts_ns""", {"path": str(path)})
    except duckdb.Error:
        return None
    if not len(table["ts_ns"]):
        return None
    # The initial balances at the first mid: equity minus what the run had made by then.
    start = float(table["equity"][0] - table["pnl_total"][0])
    return DeskPortfolio(table["ts_ns"].astype(np.int64), table["equity"],
                         table["base_balance"], table["quote_balance"],
                         table["pnl_trading"], start)
