"""The post-mortem report: what every strategy decided and what it earned, from the decision log.

    python main.py --mode post-mortem [--strategy S] [--run RUN_ID]
                   [--since 2024-08-08T23:00] [--until 2024-08-09] [--format json]

Reads `<data_dir>/decisions/*/*.jsonl` with DuckDB (torn and corrupt lines skipped and
counted), prints tables per strategy and run (or, with `--format json`, the same figures as
one JSON document on stdout), and writes under `<data_dir>/reports/<run|all-runs>[-S]/`:
`summary.csv` (one row per strategy and run), `fills.csv`, `decisions.csv` (in log order,
which is time order within a run; with the strategy's whole `inputs` as JSON) and
`report.html` (plotly charts, plotly.js inlined so it opens offline). The figures are
defined in `daemon.postmortem.figures`.

An empty or missing log is not an error: a clear message and exit status 0. A run whose
log lacks its `run_end` record is reported as "did not end cleanly", with the time of its
last durable record. Reports that cannot be written (a full disk, a read-only directory)
raise `ReportNotWritten`, one line; the mode exits 2.
"""

from __future__ import annotations

import csv
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from daemon.core.logs import get_logger
from daemon.postmortem.chance import BASELINE, SEED_RUN, AgainstChance, compare_with_seeds
from daemon.postmortem.charts import report_html
from daemon.postmortem.exports import REPORTS_DIR
from daemon.postmortem.figures import RunSummary, groups, summarise
from daemon.postmortem.reader import LoadedLog, LogFilter, load_log
from daemon.postmortem.writer import decisions_dir

log = get_logger("postmortem")


class ReportNotWritten(Exception):
    """The report files could not be written (the message says where and why, one line)."""


@dataclass(slots=True)
class Report:
    """What a post-mortem found and wrote."""

    log_dir: Path
    log_filter: LogFilter
    files: int = 0
    records: int = 0
    corrupt_lines: int = 0
    unsupported_lines: int = 0
    #: run id -> time (ns) of the last durable record, for runs that did not end cleanly.
    unfinished_runs: dict[str, int] = field(default_factory=dict)
    summaries: list[RunSummary] = field(default_factory=list)
    exports: dict[str, Path] = field(default_factory=dict)
    #: Each reported run beside its `random-inventory` seed runs (`--seeds N`).
    chance: list[AgainstChance] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.summaries

    def message(self) -> str:
        """Why there is nothing to report, in one line an operator can act on."""
        where = f"{self.log_dir}{_describe(self.log_filter)}"
        if not self.files:
            return f"no decision log under {where}"
        if not self.records:
            return f"no records in {self.files} decision log file(s) under {where}"
        return f"no decisions or fills among {self.records:,} records under {where}"

    def figures(self) -> dict[str, Any]:
        """Everything `--format json` prints."""
        return {
            "log_dir": str(self.log_dir),
            "filter": asdict(self.log_filter),
            "files": self.files,
            "records": self.records,
            "skipped_lines": self.corrupt_lines + self.unsupported_lines,
            "corrupt_lines": self.corrupt_lines,
            "unsupported_lines": self.unsupported_lines,
            "runs": [summary.figures() for summary in self.summaries],
            "runs_not_ended_cleanly": [
                {"run_id": run, "last_durable_ts_ns": last, "last_durable": _time(last)}
                for run, last in self.unfinished_runs.items()],
            "against_chance": [chance.figures() for chance in self.chance],
            "exports": {name: str(path) for name, path in self.exports.items()},
            "message": self.message() if self.empty else "",
        }


def _describe(log_filter: LogFilter) -> str:
    parts = [f"{name}={value}" for name, value in asdict(log_filter).items() if value is not None]
    return f" matching {', '.join(parts)}" if parts else ""


def build_report(data_dir: Path, log_filter: LogFilter, out_dir: Path | None = None,
                 charts: bool = True) -> Report:
    """Read, compute, export. `out_dir` defaults to `<data_dir>/reports/<label>`."""
    loaded = load_log(Path(data_dir), log_filter)
    try:
        return compile_report(loaded, Path(data_dir), log_filter, out_dir, charts)
    finally:
        loaded.db.close()


def compile_report(loaded: LoadedLog, data_dir: Path, log_filter: LogFilter,
                   out_dir: Path | None = None, charts: bool = True) -> Report:
    """Figures and exports from a loaded log.

    The fills and decisions CSVs are written by DuckDB on a second cursor in a worker
    thread while this thread computes the figures (DuckDB releases the GIL), so the two
    largest pieces of work overlap on a multi-core machine.
    """
    report = Report(decisions_dir(data_dir), log_filter, len(loaded.files), loaded.records,
                    loaded.corrupt_lines, loaded.unsupported_lines, dict(loaded.unfinished_runs))
    for run, last in report.unfinished_runs.items():
        log.warning("run_did_not_end_cleanly", run_id=run, last_durable=_time(last),
                    hint="no run_end record: the run crashed, was killed, or its disk failed")
    if loaded.skipped_lines:
        log.warning("decision_log_lines_skipped", corrupt=loaded.corrupt_lines,
                    unsupported=loaded.unsupported_lines,
                    hint="torn (crash mid-write) or corrupt lines; every other record is read")
    if not loaded.records:
        return report
    target = out_dir or data_dir / REPORTS_DIR / _label(log_filter)
    try:
        _compute_and_export(loaded, report, data_dir, target, charts)
    except (OSError, duckdb.IOException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ReportNotWritten(f"post-mortem: cannot write the reports under {target}: "
                               f"{reason.splitlines()[0] if reason else type(exc).__name__}"
                               ) from None
    return report


def _compute_and_export(loaded: LoadedLog, report: Report, data_dir: Path, target: Path,
                        charts: bool) -> None:
    target.mkdir(parents=True, exist_ok=True)
    cursor = loaded.db.cursor()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="postmortem-csv") as pool:
            tables = pool.submit(export_tables, cursor, target)
            report.summaries = [summarise(loaded.db, run, strategy, data_dir / REPORTS_DIR)
                                for run, strategy in groups(loaded.db)]
            report.exports = tables.result()
    finally:
        cursor.close()
    for summary in report.summaries:
        summary.run_start_ns, summary.run_end_ns = loaded.run_spans.get(
            summary.run_id, (summary.start_ns, summary.end_ns))
    filtered = report.log_filter.run_id or report.log_filter.strategy
    report.chance = compare_with_seeds(
        ((s.run_id, s.strategy, s.total_pnl) for s in report.summaries),
        (lambda run_id: _seed_runs(data_dir, report.log_filter, run_id)) if filtered else None)
    report.exports.update(write_summary_and_html(report, target, charts))


def _seed_runs(data_dir: Path, log_filter: LogFilter, run_id: str
               ) -> dict[int, tuple[str, float]]:
    """The baseline seed runs of `run_id` that the filter left out: {seed: (run, P&L)},
    each read under the same time filter."""
    names = {path.stem for path in decisions_dir(data_dir).glob(f"*/{run_id}-seed*.jsonl")}
    found = {}
    for seed_run in sorted(names):
        matched = SEED_RUN.fullmatch(seed_run)
        if not matched or matched["run"] != run_id:
            continue
        loaded = load_log(data_dir, replace(log_filter, run_id=seed_run, strategy=None))
        try:
            if loaded.records and (seed_run, BASELINE) in groups(loaded.db):
                pnl = summarise(loaded.db, seed_run, BASELINE).total_pnl
                found[int(matched["seed"])] = (seed_run, pnl)
        finally:
            loaded.db.close()
    return found


def _label(log_filter: LogFilter) -> str:
    label = log_filter.run_id or "all-runs"
    if log_filter.strategy:
        label += "-" + log_filter.strategy.lower().replace("_", "-")
    return label


# -- exports -----------------------------------------------------------------------------


def export_tables(db: duckdb.DuckDBPyConnection, target: Path) -> dict[str, Path]:
    """fills.csv (venue and client fills) and decisions.csv (with the whole inputs)."""
    exports = {"fills": target / "fills.csv", "decisions": target / "decisions.csv"}
    db.execute(f"""COPY (
        SELECT run_id, strategy, make_timestamp_ns(ts_ns) AS time, ts_ns, 'venue' AS kind,
               venue, symbol, side, price, qty, notional, fee, fee_asset, fee_quote,
               liquidity, client_order_id, trade_id
        FROM fills
        UNION ALL
        SELECT run_id, strategy, make_timestamp_ns(ts_ns), ts_ns, 'client', 'client', symbol,
               side, price, qty, price * qty, 0.0, NULL, 0.0, 'client', NULL, NULL
        FROM client_fills
        ORDER BY run_id, strategy, ts_ns) TO '{_sql_path(exports["fills"])}' (HEADER)""")
    db.execute(f"""COPY (
        SELECT d.run_id, d.strategy, make_timestamp_ns(d.ts_ns) AS time, d.ts_ns, d.action,
               d.reason, d.expected, d.venue, d.symbol, d.mid, d.n_intents AS intents,
               d.n_cancels AS cancels, r.inputs
        FROM decisions d JOIN records r ON r.seq = d.decision_id)
        TO '{_sql_path(exports["decisions"])}' (HEADER)""")
    return exports


def write_summary_and_html(report: Report, target: Path, charts: bool = True
                           ) -> dict[str, Path]:
    """summary.csv (one row per strategy and run) and, with charts, report.html."""
    exports = {"summary": target / "summary.csv"}
    _write_summary_csv(report.summaries, exports["summary"])
    if charts and report.summaries:
        exports["html"] = target / "report.html"
        notes = [f"{report.files} log file(s), {report.records:,} records, "
                 f"{report.corrupt_lines + report.unsupported_lines:,} line(s) skipped "
                 "(torn or corrupt)."]
        notes += [_unfinished(run, last) for run, last in report.unfinished_runs.items()]
        notes += halt_lines(report.summaries)
        notes += [chance_line(chance) for chance in report.chance]
        title = f"cryptopipe post-mortem — {_label(report.log_filter)}"
        exports["html"].write_text(report_html(report.summaries, title, notes), encoding="utf-8")
    return exports


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def summary_row(summary: RunSummary) -> dict[str, Any]:
    """One flat CSV row; nested figures prefixed: `orders_fill_rate`, `inventory_BTC/USDT_final`."""
    figures = summary.figures()
    row: dict[str, Any] = {}
    for name, value in figures.items():
        if name == "actions":
            row.update({f"action_{action}": count for action, count in value.items()})
        elif name == "inventory":
            for stats in value:
                symbol = stats.pop("symbol")
                row.update({f"inventory_{symbol}_{k}": v for k, v in stats.items()})
        elif name == "performance" and value is not None:
            row.update(_performance_columns(value))
        elif isinstance(value, dict):
            row.update({f"{name}_{k}": _cell(v) for k, v in value.items()})
        elif value is not None:
            row[name] = value
    return row


def _performance_columns(performance: dict[str, Any]) -> dict[str, Any]:
    """`return_on_equity`, ..., and `markout_venue_1s_bps` per kind of fill and horizon."""
    columns = {name: value for name, value in performance.items() if name != "markouts"}
    for markout in performance["markouts"]:
        prefix = f"markout_{markout['kind']}_{markout['horizon_s']}s"
        columns.update({f"{prefix}_quote": markout["markout"],
                        f"{prefix}_bps": markout["markout_bps"],
                        f"{prefix}_marked": markout["marked"]})
    return columns


def _cell(value: Any) -> Any:
    """A list (e.g. the halts of an arbitrage) goes into one CSV cell as JSON."""
    if isinstance(value, list):
        import orjson

        return orjson.dumps(value).decode()
    return value


def _write_summary_csv(summaries: list[RunSummary], path: Path) -> None:
    rows = [summary_row(summary) for summary in summaries]
    columns: list[str] = []
    for row in rows:
        columns.extend(name for name in row if name not in columns)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# -- tables ------------------------------------------------------------------------------


def _money(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:,.2f}"


def _ratio(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1%}"


def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _time(ts_ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _unfinished(run: str, last_ns: int) -> str:
    return f"run {run} did not end cleanly: last durable record at {_time(last_ns)} UTC"


def print_report(report: Report, console: Console) -> None:
    for run, last in report.unfinished_runs.items():
        console.print(_unfinished(run, last))
    if report.empty:
        console.print(f"post-mortem: {report.message()}")
        return
    for table in (_runs_table(report), _actions_table(report), _inventory_table(report),
                  _orders_table(report), _performance_table(report), _markouts_table(report),
                  _arbitrage_table(report), _internalize_table(report)):
        if table is not None and table.row_count:
            console.print(table)
    if report.chance:
        console.print(_chance_table(report))
    for line in halt_lines(report.summaries):
        console.print(line, markup=False)
    skipped = report.corrupt_lines + report.unsupported_lines
    console.print(f"{report.files} log file(s), {report.records:,} records; "
                  f"{skipped:,} line(s) skipped (torn or corrupt)")
    for name, path in report.exports.items():
        console.print(f"{name}: {path}")


def chance_line(chance: AgainstChance) -> str:
    """One comparison in a sentence (the HTML report's notes)."""
    spread = chance.figures()["baseline_pnl"]
    return (f"Against chance: {chance.run_id} ({chance.strategy}) P&L {_money(chance.pnl)} "
            f"among {len(chance.seed_pnls)} {BASELINE} seeds ({chance.seed_runs_text()}): "
            f"mean {_money(spread['mean'])}, median {_money(spread['median'])}, "
            f"p5 {_money(spread['p5'])}, p95 {_money(spread['p95'])}; percentile "
            f"{chance.percentile:.0f} (50 = chance).")


def _chance_table(report: Report) -> Table:
    table = Table(title=f"Against chance: P&L among the run's {BASELINE} seeds (percentile: "
                        "seeds below, ties half; 50 = chance)")
    for column in ("run", "strategy", "P&L", "seeds", "seed runs", "mean", "median", "p5",
                   "p95", "percentile"):
        table.add_column(column, justify="left" if column in ("run", "strategy", "seed runs")
                         else "right")
    for chance in report.chance:
        spread = chance.figures()["baseline_pnl"]
        table.add_row(chance.run_id, chance.strategy, _money(chance.pnl),
                      f"{len(chance.seed_pnls):,}", chance.seed_runs_text(),
                      _money(spread["mean"]), _money(spread["median"]), _money(spread["p5"]),
                      _money(spread["p95"]), f"{chance.percentile:.0f}")
    return table


def _runs_table(report: Report) -> Table:
    table = Table(title="P&L per strategy and run (quote currency; from/to: the run's first "
                        "and last record)")
    for column in ("run", "strategy", "from", "to", "decisions", "intents", "fills", "volume",
                   "fees", "realised", "unrealised", "total P&L", "max drawdown"):
        table.add_column(column, justify="left" if column in ("run", "strategy") else "right")
    for s in report.summaries:
        table.add_row(s.run_id, s.strategy, _time(s.run_start_ns), _time(s.run_end_ns),
                      f"{s.decisions:,}", f"{s.intents_sent:,}", f"{s.fills:,}",
                      _money(s.volume), _money(s.fees), _money(s.realised_pnl),
                      _money(s.unrealised_pnl), _money(s.total_pnl), _money(s.max_drawdown))
    return table


def _actions_table(report: Report) -> Table:
    table = Table(title="Decisions by action")
    for column in ("run", "strategy", "action", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for s in report.summaries:
        for action, count in s.actions.items():
            table.add_row(s.run_id, s.strategy, action, f"{count:,}")
    return table


def _inventory_table(report: Report) -> Table:
    table = Table(title="Inventory (base units)")
    for column in ("run", "strategy", "symbol", "final", "max long", "max short",
                   "mean |position|", "mark"):
        table.add_column(column, justify="left" if column in ("run", "strategy", "symbol")
                         else "right")
    for s in report.summaries:
        for i in s.inventory:
            table.add_row(s.run_id, s.strategy, i.symbol, _num(i.final), _num(i.max_long),
                          _num(i.max_short), _num(i.mean_abs), _money(i.mark))
    return table


def _orders_table(report: Report) -> Table:
    table = Table(title="Orders")
    for column in ("run", "strategy", "orders", "fill rate", "cancel ratio", "avg duration s",
                   "avg filled duration s", "spread captured", "captured bps", "slippage",
                   "avg slippage / filled order"):
        table.add_column(column, justify="left" if column in ("run", "strategy") else "right")
    for s in report.summaries:
        o = s.orders
        if not o.orders:
            continue
        table.add_row(s.run_id, s.strategy, f"{o.orders:,}", _ratio(o.fill_rate),
                      _ratio(o.cancel_ratio), _num(o.avg_order_duration_s, 2),
                      _num(o.avg_filled_order_duration_s, 2), _money(o.spread_captured),
                      _num(o.spread_captured_bps, 2), _money(o.slippage),
                      _money(o.avg_slippage_per_filled_order))
    return table


def _performance_table(report: Report) -> Table:
    table = Table(title="Return, risk and turnover (Sharpe: P&L sampled at equal intervals, "
                        "per day; annualised x sqrt(365))")
    for column in ("run", "strategy", "starting equity", "desk portfolio", "return on equity",
                   "turnover", "Sharpe / day", "Sharpe / year", "sampled every"):
        table.add_column(column, justify="left" if column in ("run", "strategy") else "right")
    for s in report.summaries:
        p = s.performance
        if p is None:
            continue
        table.add_row(s.run_id, s.strategy, _money(p.starting_equity),
                      _money(s.desk_portfolio_value), _ratio_precise(p.return_on_equity),
                      _num(p.turnover), _num(p.sharpe_per_day, 2),
                      _num(p.sharpe_annualised, 2),
                      f"{p.sharpe_interval_s} s" if p.sharpe_interval_s else "–")
    return table


def _markouts_table(report: Report) -> Table:
    table = Table(title="Markouts: side x (mid after the horizon - fill price)")
    for column in ("run", "strategy", "fills", "horizon", "marked", "not marked",
                   "markout (quote)", "markout (bps)"):
        table.add_column(column, justify="left" if column in ("run", "strategy", "fills")
                         else "right")
    for s in report.summaries:
        for m in s.performance.markouts if s.performance else ():
            table.add_row(s.run_id, s.strategy, m.kind, f"{m.horizon_s} s", f"{m.marked:,}",
                          f"{m.unmarked:,}", _money(m.markout), _num(m.markout_bps, 2))
    return table


def _ratio_precise(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4%}"


def _arbitrage_table(report: Report) -> Table | None:
    rows = [s for s in report.summaries if s.arbitrage is not None]
    if not rows:
        return None
    table = Table(title="Arbitrage")
    for column in ("run", "strategy", "seen", "taken", "expected edge", "expected bps",
                   "leg failures", "completed", "expected (completed)", "realised edge",
                   "realised bps", "halts", "halted s"):
        table.add_column(column, justify="left" if column in ("run", "strategy") else "right")
    for s in rows:
        a = s.arbitrage
        assert a is not None
        table.add_row(s.run_id, s.strategy, f"{a.opportunities_seen:,}",
                      f"{a.opportunities_taken:,}", _money(a.expected_edge),
                      _num(a.mean_expected_edge_bps, 2), f"{a.leg_failures:,}",
                      f"{a.completed:,}", _money(a.expected_edge_completed),
                      _money(a.realised_edge), _num(a.realised_edge_bps, 2),
                      f"{a.halts:,}", _num(a.halted_s, 1))
    return table


def halt_lines(summaries: list[RunSummary]) -> list[str]:
    """One line per halt of an arbitrage after a failed unwind: when, the residual it kept
    as position, and when it resumed (or that it never did)."""
    lines = []
    for s in summaries:
        if s.arbitrage is None:
            continue
        for halt in s.arbitrage.halt_log:
            until = (f"resumed {_time(halt.resumed_ns)} UTC" if halt.resumed_ns is not None
                     else "never resumed before the run ended")
            lines.append(f"halt: {s.run_id} {s.strategy} at {_time(halt.ts_ns)} UTC, "
                         f"{halt.residual:+g} {halt.symbol or ''} unhedged after a failed "
                         f"unwind; {until} ({halt.halted_s:,.1f} s halted)")
    return lines


def _internalize_table(report: Report) -> Table | None:
    rows = [s for s in report.summaries if s.internalize is not None]
    if not rows:
        return None
    table = Table(title="Internalize: hedge or warehouse")
    for column in ("run", "strategy", "client fills", "client volume", "hedge", "warehouse",
                   "partial hedge", "always-hedge P&L", "strategy P&L", "saved vs always-hedge"):
        table.add_column(column, justify="left" if column in ("run", "strategy") else "right")
    for s in rows:
        i = s.internalize
        assert i is not None
        table.add_row(s.run_id, s.strategy, f"{i.client_fills:,}", _money(i.client_volume),
                      f"{i.hedge:,}", f"{i.warehouse:,}", f"{i.partial_hedge:,}",
                      _money(i.always_hedge_pnl), _money(s.total_pnl),
                      _money(i.cost_saved_vs_always_hedge))
    return table
