"""Reading decision logs into DuckDB: file discovery, torn-line accounting, tidy tables.

`load_log` finds the files under `<data_dir>/decisions/` (pruned by date directory and run
id before anything is opened), reads them with DuckDB's `read_ndjson` in parallel with
`ignore_errors` (a torn or corrupt line comes back as an all-NULL row: counted, then
dropped) and builds these tables in an in-memory database:

- `records`: every valid v1 record in the filters, `seq` keeping file order;
- `decisions`: + `mid`, `symbol`, `venue` and the other input keys the report reads,
  unpacked from `inputs` (symbol/venue fall back to the first intent's), `n_intents`,
  `n_cancels`, `decision_id` (= the record's `seq`; `inputs` itself stays in `records`);
- `orders`: one row per client order id (unique within a run, as venues require): intent
  records (sent after the risk gate) joined to the intents nested in decisions (what the
  strategy asked for; an intent the gate refused has no record of its own), the strategy
  taken from the intent or else from its decision, `submit_ts_ns`, `decision_id`,
  `decision_mid`, `sent`;
- `fills`: venue fills with `strategy` resolved through the order, `signed_qty`, and
  `fee_quote` (a fee in the base asset valued at the fill price; one in the quote asset as
  is; any other asset is not valued and counted in `fees_unvalued`);
- `client_fills`: internalize's client fills, taken from decisions that carry
  `client_side/client_qty/client_price`, as the desk's side of the trade (`venue`: the
  venue whose quote priced it, the decision's "venue" or "hedge_venue");
- `acks`, `balances`: as recorded, strategy resolved like fills;
- `market_quotes`: the market's touch (venue, symbol, bid, ask) as decisions saw it, one
  row per venue a decision's inputs price (schema.py: "market_bid"/"bid", arbitrage's
  "buy_*"/"sell_*"); crossed, missing or non-positive quotes are left out.

A strategy filter keeps the strategy's baseline twin (`<strategy>.always-hedge`) too: the
figures read it as that strategy's baseline.

A run whose log has no `run_end` record did not end cleanly (a crash, a kill -9, a disk
that stopped taking writes): `LoadedLog.unfinished_runs` names it with the time of its last
durable record. With `--until`, a run with records at or past that time is not judged (its
end may lie beyond the files read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from daemon.core.vocabulary import BASELINE_SUFFIX
from daemon.postmortem.schema import COLUMNS, RUN_END, SCHEMA_VERSION, log_file_name
from daemon.postmortem.writer import decisions_dir

_DAY_DIR = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Which records a report covers. Times are ns since the epoch, `until` exclusive."""

    strategy: str | None = None
    run_id: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None


@dataclass(slots=True)
class LoadedLog:
    """The DuckDB connection holding the tables, and what reading found."""

    db: duckdb.DuckDBPyConnection
    files: list[Path] = field(default_factory=list)
    records: int = 0
    #: Lines that are not a whole JSON record (a torn tail, corruption): skipped.
    corrupt_lines: int = 0
    #: Whole records of a schema version this reader does not know: skipped.
    unsupported_lines: int = 0
    #: run id -> time (ns) of its last durable record, for runs without a `run_end` record.
    unfinished_runs: dict[str, int] = field(default_factory=dict)
    #: run id -> (first, last) record time (ns) of the whole run, whatever the time filter.
    run_spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def skipped_lines(self) -> int:
        return self.corrupt_lines + self.unsupported_lines


def normalise_strategy(name: str) -> str:
    """`inventory_mm`, `Inventory-MM` and `inventory-mm` name the same strategy."""
    return name.strip().lower().replace("_", "-")


def parse_time(text: str) -> int:
    """ISO 8601 (date, or date and time; naive means UTC) -> ns since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def find_log_files(data_dir: Path, log_filter: LogFilter) -> list[Path]:
    """Log files that can hold records in the filter, oldest day first."""
    root = decisions_dir(data_dir)
    if not root.is_dir():
        return []
    first_day = _day_text(log_filter.since_ns)
    last_day = _day_text(log_filter.until_ns)
    files: list[Path] = []
    for day in sorted(p for p in root.iterdir() if p.is_dir() and _DAY_DIR.fullmatch(p.name)):
        if (first_day and day.name < first_day) or (last_day and day.name > last_day):
            continue
        pattern = f"{log_filter.run_id}.jsonl" if log_filter.run_id else "*.jsonl"
        files.extend(sorted(p for p in day.glob(pattern) if p.is_file()))
    return files


def _day_text(ts_ns: int | None) -> str | None:
    if ts_ns is None:
        return None
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d")


def load_log(data_dir: Path, log_filter: LogFilter, threads: int | None = None) -> LoadedLog:
    """Read the logs in the filter into a fresh in-memory DuckDB; see the module doc.

    The tables are plain (not TEMP) so that other cursors of the connection see them: the
    report writes its CSV exports on one while it computes the figures on another.
    """
    db = duckdb.connect(":memory:")
    if threads:
        db.execute(f"SET threads = {int(threads)}")
    loaded = LoadedLog(db, find_log_files(data_dir, log_filter))
    if not loaded.files:
        return loaded
    _read_records(loaded, log_filter)
    if loaded.records:
        _build_tables(db, log_filter.strategy)
        loaded.run_spans = _run_spans(db, _pruned_files(data_dir, db, loaded.files))
    return loaded


def _pruned_files(data_dir: Path, db: duckdb.DuckDBPyConnection, read: list[Path]
                  ) -> list[Path]:
    """Files of the reported runs that the time filter left unread (other days)."""
    runs = [str(run) for (run,) in db.execute("SELECT DISTINCT run_id FROM records").fetchall()]
    files = find_log_files(data_dir, LogFilter())
    names = {log_file_name(run) for run in runs if _safe_name(run)}
    return [path for path in files if path.name in names and path not in set(read)]


def _safe_name(run_id: str) -> bool:
    try:
        log_file_name(run_id)
    except ValueError:
        return False
    return True


def _run_spans(db: duckdb.DuckDBPyConnection, pruned: list[Path]
               ) -> dict[str, tuple[int, int]]:
    """First and last record of each reported run: the files read, plus the days of the
    run that `--since`/`--until` left out (only their times are read)."""
    extra = ""
    if pruned:
        extra = """UNION ALL SELECT v, run_id, ts_ns FROM read_ndjson($files,
            columns = {'v': 'INTEGER', 'run_id': 'VARCHAR', 'ts_ns': 'BIGINT'},
            ignore_errors = true, format = 'newline_delimited')"""
    rows = db.execute(
        f"""SELECT run_id, min(ts_ns), max(ts_ns) FROM (
                SELECT v, run_id, ts_ns FROM raw {extra})
            WHERE v = {SCHEMA_VERSION} AND ts_ns IS NOT NULL
              AND run_id IN (SELECT DISTINCT run_id FROM records)
            GROUP BY run_id""", {"files": [str(p) for p in pruned]} if pruned else None,
    ).fetchall()
    return {str(run): (int(first), int(last)) for run, first, last in rows}


def _read_records(loaded: LoadedLog, log_filter: LogFilter) -> None:
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items()) + "}"
    db = loaded.db
    # One parallel pass over the files; `rowid` of the table keeps file order.
    db.execute(
        f"""CREATE TABLE raw AS
            SELECT * FROM read_ndjson($files, columns = {columns}, ignore_errors = true,
                                      format = 'newline_delimited')""",
        {"files": [str(p) for p in loaded.files]},
    )
    corrupt, unsupported = db.execute(
        f"""SELECT count(*) FILTER (WHERE v IS NULL OR type IS NULL),
                   count(*) FILTER (WHERE v IS NOT NULL AND v <> {SCHEMA_VERSION})
            FROM raw"""
    ).fetchone()  # type: ignore[misc]
    loaded.corrupt_lines, loaded.unsupported_lines = int(corrupt), int(unsupported)
    conditions = [f"v = {SCHEMA_VERSION}", "type IS NOT NULL"]
    if log_filter.run_id:
        conditions.append(f"run_id = {_literal(log_filter.run_id)}")
    if log_filter.since_ns is not None:
        conditions.append(f"ts_ns >= {int(log_filter.since_ns)}")
    if log_filter.until_ns is not None:
        conditions.append(f"ts_ns < {int(log_filter.until_ns)}")
    db.execute(f"""CREATE VIEW records AS SELECT rowid AS seq, * FROM raw
                   WHERE {' AND '.join(conditions)}""")
    loaded.records = int(db.execute("SELECT count(*) FROM records").fetchone()[0])  # type: ignore[index]
    loaded.unfinished_runs = _unfinished_runs(db, log_filter)


def _unfinished_runs(db: duckdb.DuckDBPyConnection, log_filter: LogFilter) -> dict[str, int]:
    """Runs in the filter whose files hold no `run_end` record, with their last time."""
    rows = db.execute(
        f"""SELECT run_id, max(ts_ns) AS last_ns FROM raw
            WHERE v = {SCHEMA_VERSION} AND run_id IN (SELECT DISTINCT run_id FROM records)
            GROUP BY run_id
            HAVING count(*) FILTER (WHERE type = '{RUN_END}') = 0
            ORDER BY run_id"""
    ).fetchall()
    until = log_filter.until_ns
    return {str(run): int(last) for run, last in rows if until is None or last < until}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# The strategy filter is applied to every table after attribution (acks and some intents
# carry no strategy of their own).
_TABLES = """
CREATE TABLE decisions_all AS
WITH d AS (
    SELECT seq, run_id, ts_ns, strategy, action, reason, expected,
           intents[1].symbol AS first_symbol, intents[1].venue AS first_venue,
           coalesce(len(intents), 0) AS n_intents, coalesce(len(cancels), 0) AS n_cancels,
           -- one parse of the inputs for every key the report reads
           json_extract_string(inputs, ['$.mid', '$.symbol', '$.venue', '$.client_side',
               '$.client_qty', '$.client_price', '$.hedge_cost', '$.expected_edge_bps',
               '$.market_bid', '$.market_ask', '$.bid', '$.ask', '$.hedge_venue',
               '$.buy_venue', '$.buy_bid', '$.buy_ask', '$.sell_venue', '$.sell_bid',
               '$.sell_ask'])
               AS known
    FROM records WHERE type = 'decision')
SELECT seq AS decision_id, run_id, ts_ns, strategy, action, reason, expected,
       TRY_CAST(known[1] AS DOUBLE) AS mid,
       coalesce(known[2], first_symbol) AS symbol,
       coalesce(known[3], first_venue) AS venue,
       known[4] AS client_side,
       TRY_CAST(known[5] AS DOUBLE) AS client_qty,
       TRY_CAST(known[6] AS DOUBLE) AS client_price,
       TRY_CAST(known[7] AS DOUBLE) AS hedge_cost,
       TRY_CAST(known[8] AS DOUBLE) AS expected_edge_bps,
       n_intents, n_cancels,
       -- the market's touch: "market_bid"/"market_ask", else "bid"/"ask" (schema.py)
       TRY_CAST(coalesce(known[9], known[11]) AS DOUBLE) AS market_bid,
       TRY_CAST(coalesce(known[10], known[12]) AS DOUBLE) AS market_ask,
       coalesce(known[3], known[13], first_venue) AS market_venue,
       known[14] AS buy_venue, TRY_CAST(known[15] AS DOUBLE) AS buy_bid,
       TRY_CAST(known[16] AS DOUBLE) AS buy_ask,
       known[17] AS sell_venue, TRY_CAST(known[18] AS DOUBLE) AS sell_bid,
       TRY_CAST(known[19] AS DOUBLE) AS sell_ask
FROM d;

CREATE TABLE market_quotes_all AS
SELECT * FROM (
    SELECT decision_id AS seq, run_id, ts_ns, strategy, market_venue AS venue, symbol,
           market_bid AS bid, market_ask AS ask FROM decisions_all
    UNION ALL
    SELECT decision_id, run_id, ts_ns, strategy, buy_venue, symbol, buy_bid, buy_ask
    FROM decisions_all WHERE buy_venue IS NOT NULL
    UNION ALL
    SELECT decision_id, run_id, ts_ns, strategy, sell_venue, symbol, sell_bid, sell_ask
    FROM decisions_all WHERE sell_venue IS NOT NULL)
WHERE venue IS NOT NULL AND symbol IS NOT NULL AND isfinite(bid) AND isfinite(ask)
  AND bid > 0 AND ask >= bid;

CREATE TABLE requested AS
SELECT r.run_id, r.seq AS decision_id, r.ts_ns, r.strategy AS decision_strategy, r.action,
       d.mid AS decision_mid, unnest(r.intents, recursive := true)
FROM records r JOIN decisions_all d ON d.decision_id = r.seq
WHERE r.type = 'decision' AND len(r.intents) > 0;

CREATE TABLE orders_all AS
SELECT coalesce(s.run_id, a.run_id) AS run_id,
       coalesce(s.client_order_id, a.client_order_id) AS client_order_id,
       coalesce(nullif(s.strategy, ''), nullif(a.strategy, ''), a.decision_strategy, '')
           AS strategy,
       coalesce(s.venue, a.venue) AS venue, coalesce(s.symbol, a.symbol) AS symbol,
       coalesce(s.side, a.side) AS side, coalesce(s.order_type, a.order_type) AS order_type,
       coalesce(s.qty, a.qty) AS qty, coalesce(s.price, a.price) AS price,
       coalesce(s.ts_ns, a.ts_ns) AS submit_ts_ns,
       s.client_order_id IS NOT NULL AS sent,
       a.decision_id, a.action AS decision_action, a.decision_mid
FROM (SELECT * FROM records WHERE type = 'intent') s
FULL OUTER JOIN requested a
  ON s.run_id = a.run_id AND s.client_order_id = a.client_order_id;

CREATE TABLE fills_all AS
SELECT f.seq, f.run_id, f.ts_ns,
       coalesce(nullif(f.strategy, ''), o.strategy, '') AS strategy,
       f.venue, f.symbol, f.side, f.price, f.qty,
       CASE WHEN f.side = 'buy' THEN f.qty ELSE -f.qty END AS signed_qty,
       f.price * f.qty AS notional, f.fee, f.fee_asset,
       CASE WHEN f.fee_asset = split_part(split_part(f.symbol, ':', 1), '/', 2) THEN f.fee
            WHEN f.fee_asset = split_part(f.symbol, '/', 1) THEN f.fee * f.price
            WHEN f.fee = 0 THEN 0.0
            ELSE NULL END AS fee_quote,
       f.liquidity, f.client_order_id, f.trade_id
FROM records f LEFT JOIN orders_all o
  ON f.run_id = o.run_id AND f.client_order_id = o.client_order_id
WHERE f.type = 'fill';

CREATE TABLE client_fills_all AS
SELECT decision_id AS seq, run_id, ts_ns, strategy, symbol,
       CASE WHEN client_side = 'buy' THEN 'sell' ELSE 'buy' END AS side,
       client_price AS price, client_qty AS qty, mid, action, hedge_cost,
       market_venue AS venue
FROM decisions_all
WHERE client_side IS NOT NULL AND client_qty IS NOT NULL;

CREATE TABLE acks_all AS
SELECT a.seq, a.run_id, a.ts_ns, coalesce(o.strategy, '') AS strategy, a.client_order_id,
       a.venue, a.symbol, a.status, a.reason, a.filled_qty
FROM records a LEFT JOIN orders_all o
  ON a.run_id = o.run_id AND a.client_order_id = o.client_order_id
WHERE a.type = 'ack';

CREATE TABLE balances_all AS
SELECT seq, run_id, ts_ns, strategy, venue, balances, in_transit FROM records
WHERE type = 'balance';
"""

_FILTERED = {
    "decisions": "decisions_all",
    "orders": "orders_all",
    "fills": "fills_all",
    "client_fills": "client_fills_all",
    "acks": "acks_all",
    "balances": "balances_all",
    "market_quotes": "market_quotes_all",
}


def _build_tables(db: duckdb.DuckDBPyConnection, strategy: str | None) -> None:
    db.execute(_TABLES)
    wanted = normalise_strategy(strategy) if strategy else None
    for name, source in _FILTERED.items():
        if wanted is None:
            db.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
        else:
            # The strategy's baseline twin comes with it (figures.py reads it as such).
            db.execute(
                f"""CREATE TABLE {name} AS SELECT * FROM {source}
                    WHERE lower(replace(trim(strategy), '_', '-'))
                          IN ($wanted, $wanted || $twin)""",
                {"wanted": wanted, "twin": BASELINE_SUFFIX},
            )


def query_arrays(db: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
            ) -> dict[str, np.ndarray]:
    """Query -> plain numpy arrays (NULL floats become NaN)."""
    out = {}
    for name, column in db.execute(sql, params).fetchnumpy().items():
        if isinstance(column, np.ma.MaskedArray):
            column = column.filled(np.nan) if column.dtype.kind == "f" else column.data
        out[name] = np.asarray(column)
    return out
