"""Reading decision logs into DuckDB: file discovery, torn-line accounting, tidy tables.

`load_log` finds the files under `<data_dir>/decisions/` (pruned by date directory and run
id before anything is opened), reads them with DuckDB's `read_ndjson` in parallel with
`ignore_errors` (a torn or corrupt line comes back as an all-NULL row: counted, then
dropped) and builds these tables in an in-memory database:

- `records`: every valid v1 record in the filters, `seq` keeping file order;
- `decisions`: + `mid`, `symbol`, `venue` unpacked from inputs (symbol/venue fall back to
  the first intent's), `n_intents`, `n_cancels`, `decision_id`;
- `orders`: one row per client order id: intent records (sent after the risk gate) and
  the intents nested in decisions (what the strategy asked for), the strategy taken from
  the intent or else from its decision, `submit_ts_ns`, `decision_id`, `decision_mid`;
- `fills`: venue fills with `strategy` resolved through the order, `signed_qty`, and
  `fee_quote` (a fee in the base asset valued at the fill price; one in the quote asset as
  is; any other asset is not valued and counted in `fees_unvalued`);
- `client_fills`: internalize's client fills, taken from decisions that carry
  `client_side/client_qty/client_price`, as the desk's side of the trade;
- `acks`, `balances`: as recorded, strategy resolved like fills.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from daemon.postmortem.schema import COLUMNS, SCHEMA_VERSION
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
    """Read the logs in the filter into a fresh in-memory DuckDB; see the module doc."""
    db = duckdb.connect(":memory:")
    if threads:
        db.execute(f"SET threads = {int(threads)}")
    loaded = LoadedLog(db, find_log_files(data_dir, log_filter))
    if not loaded.files:
        return loaded
    _read_records(loaded, log_filter)
    if loaded.records:
        _build_tables(db, log_filter.strategy)
    return loaded


def _read_records(loaded: LoadedLog, log_filter: LogFilter) -> None:
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items()) + "}"
    db = loaded.db
    db.execute(
        f"""CREATE TEMP TABLE raw AS
            SELECT row_number() OVER () AS seq, *
            FROM read_ndjson($files, columns = {columns}, ignore_errors = true,
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
    params: dict[str, object] = {}
    if log_filter.run_id:
        conditions.append("run_id = $run_id")
        params["run_id"] = log_filter.run_id
    if log_filter.since_ns is not None:
        conditions.append("ts_ns >= $since")
        params["since"] = log_filter.since_ns
    if log_filter.until_ns is not None:
        conditions.append("ts_ns < $until")
        params["until"] = log_filter.until_ns
    db.execute(f"CREATE TEMP TABLE records AS SELECT * FROM raw WHERE {' AND '.join(conditions)}",
               params)
    db.execute("DROP TABLE raw")
    loaded.records = int(db.execute("SELECT count(*) FROM records").fetchone()[0])  # type: ignore[index]


# The strategy filter is applied to every table after attribution (acks and some intents
# carry no strategy of their own); `$strategy` is NULL for "all strategies".
_TABLES = """
CREATE TEMP TABLE decisions_all AS
SELECT seq AS decision_id, run_id, ts_ns, strategy, action, reason, expected, inputs,
       intents, cancels,
       TRY_CAST(json_extract_string(inputs, '$.mid') AS DOUBLE) AS mid,
       coalesce(json_extract_string(inputs, '$.symbol'),
                json_extract_string(intents, '$[0].symbol')) AS symbol,
       coalesce(json_extract_string(inputs, '$.venue'),
                json_extract_string(intents, '$[0].venue')) AS venue,
       coalesce(json_array_length(intents), 0) AS n_intents,
       coalesce(json_array_length(cancels), 0) AS n_cancels
FROM records WHERE type = 'decision';

CREATE TEMP TABLE requested AS
SELECT d.run_id, d.decision_id, d.ts_ns, d.strategy AS decision_strategy, d.action,
       d.mid AS decision_mid, i.*
FROM decisions_all d,
     unnest(from_json(d.intents, '[{"venue": "VARCHAR", "symbol": "VARCHAR",
         "side": "VARCHAR", "order_type": "VARCHAR", "qty": "DOUBLE", "price": "DOUBLE",
         "client_order_id": "VARCHAR", "strategy": "VARCHAR", "reason": "VARCHAR"}]'))
     AS u(i)
WHERE d.n_intents > 0;

CREATE TEMP TABLE orders_all AS
WITH sent AS (
    SELECT run_id, client_order_id, min(ts_ns) AS sent_ts_ns, any_value(strategy) AS strategy,
           any_value(venue) AS venue, any_value(symbol) AS symbol, any_value(side) AS side,
           any_value(order_type) AS order_type, any_value(qty) AS qty,
           any_value(price) AS price
    FROM records WHERE type = 'intent' GROUP BY run_id, client_order_id
), asked AS (
    SELECT run_id, client_order_id, arg_min(decision_id, ts_ns) AS decision_id,
           min(ts_ns) AS asked_ts_ns, arg_min(decision_strategy, ts_ns) AS decision_strategy,
           arg_min(strategy, ts_ns) AS strategy, arg_min(action, ts_ns) AS action,
           arg_min(decision_mid, ts_ns) AS decision_mid, arg_min(venue, ts_ns) AS venue,
           arg_min(symbol, ts_ns) AS symbol, arg_min(side, ts_ns) AS side,
           arg_min(order_type, ts_ns) AS order_type, arg_min(qty, ts_ns) AS qty,
           arg_min(price, ts_ns) AS price
    FROM requested GROUP BY run_id, client_order_id
)
SELECT coalesce(s.run_id, a.run_id) AS run_id,
       coalesce(s.client_order_id, a.client_order_id) AS client_order_id,
       coalesce(nullif(s.strategy, ''), nullif(a.strategy, ''), a.decision_strategy, '')
           AS strategy,
       coalesce(s.venue, a.venue) AS venue, coalesce(s.symbol, a.symbol) AS symbol,
       coalesce(s.side, a.side) AS side, coalesce(s.order_type, a.order_type) AS order_type,
       coalesce(s.qty, a.qty) AS qty, coalesce(s.price, a.price) AS price,
       coalesce(s.sent_ts_ns, a.asked_ts_ns) AS submit_ts_ns,
       s.client_order_id IS NOT NULL AS sent,
       a.decision_id, a.action AS decision_action, a.decision_mid
FROM sent s FULL OUTER JOIN asked a
  ON s.run_id = a.run_id AND s.client_order_id = a.client_order_id;

CREATE TEMP TABLE fills_all AS
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

CREATE TEMP TABLE client_fills_all AS
SELECT decision_id AS seq, run_id, ts_ns, strategy, symbol,
       CASE WHEN inputs->>'client_side' = 'buy' THEN 'sell' ELSE 'buy' END AS side,
       TRY_CAST(inputs->>'client_price' AS DOUBLE) AS price,
       TRY_CAST(inputs->>'client_qty' AS DOUBLE) AS qty,
       mid, action,
       TRY_CAST(inputs->>'hedge_cost' AS DOUBLE) AS hedge_cost
FROM decisions_all
WHERE inputs->>'client_side' IS NOT NULL AND inputs->>'client_qty' IS NOT NULL;

CREATE TEMP TABLE acks_all AS
SELECT a.seq, a.run_id, a.ts_ns, coalesce(o.strategy, '') AS strategy, a.client_order_id,
       a.venue, a.symbol, a.status, a.reason, a.filled_qty
FROM records a LEFT JOIN orders_all o
  ON a.run_id = o.run_id AND a.client_order_id = o.client_order_id
WHERE a.type = 'ack';

CREATE TEMP TABLE balances_all AS
SELECT seq, run_id, ts_ns, strategy, venue, balances FROM records WHERE type = 'balance';
"""

_FILTERED = {
    "decisions": "decisions_all",
    "orders": "orders_all",
    "fills": "fills_all",
    "client_fills": "client_fills_all",
    "acks": "acks_all",
    "balances": "balances_all",
}


def _build_tables(db: duckdb.DuckDBPyConnection, strategy: str | None) -> None:
    db.execute(_TABLES)
    wanted = normalise_strategy(strategy) if strategy else None
    for name, source in _FILTERED.items():
        if wanted is None:
            db.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM {source}")
        else:
            db.execute(
                f"""CREATE TEMP TABLE {name} AS SELECT * FROM {source}
                    WHERE lower(replace(trim(strategy), '_', '-')) = $wanted""",
                {"wanted": wanted},
            )
