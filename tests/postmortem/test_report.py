"""Post-mortem report: exact figures on a hand-built log, torn lines, filters, exports, HTML.

Every expected number below is worked out by hand in the comments, independently of the
report's code.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from daemon.cli import main
from daemon.core.model import (
    BalanceSnapshot,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Side,
)
from daemon.core.vocabulary import OrderStatus
from daemon.postmortem.reader import LogFilter, parse_time
from daemon.postmortem.report import build_report
from daemon.postmortem.writer import DecisionLogWriter

S = 1_000_000_000
T0 = 1_723_161_253_000_000_000  # 2024-08-08T23:54:13Z
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No CRYPTOPIPE_ variable or .env of the developer's leaks into a test."""
    for name in list(os.environ):
        if name.startswith("CRYPTOPIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    # `main()` points structlog at the captured stderr, which pytest closes after the test.
    structlog.reset_defaults()


def market_making_records() -> list[object]:
    """BTC/USDT on one venue: buy 2 @ 99, sell 1 @ 101, a cancelled ask, sell 0.5 @ 96.5."""
    name, venue, symbol = "inventory-mm", "binance_spot", "BTC/USDT"

    def seen(mid: float) -> dict[str, object]:
        return {"venue": venue, "symbol": symbol, "mid": mid}

    def limit(side: Side, qty: float, price: float, order_id: str) -> OrderIntent:
        return OrderIntent(venue, symbol, side, OrderType.LIMIT, qty, price, order_id, name)

    bid, ask, ask_again = (limit(Side.BUY, 2.0, 99.0, "c1"), limit(Side.SELL, 1.0, 101.0, "c2"),
                           limit(Side.SELL, 1.0, 100.0, "c3"))
    market = OrderIntent(venue, symbol, Side.SELL, OrderType.MARKET, 0.5, None, "c4", name)
    return [
        BalanceSnapshot(venue, T0, {"BTC": 0.0, "USDT": 1000.0}, name),
        Decision(name, T0, "quote", "both sides", seen(100.0), 0.0, [bid, ask]), bid, ask,
        OrderAck("c1", venue, symbol, OrderStatus.NEW, T0 + S),
        OrderAck("c2", venue, symbol, OrderStatus.NEW, T0 + S),
        Fill("c1", venue, symbol, Side.BUY, 99.0, 2.0, 0.1, "USDT", "maker", T0 + 2 * S, name),
        OrderAck("c1", venue, symbol, OrderStatus.FILLED, T0 + 2 * S, filled_qty=2.0),
        Decision(name, T0 + 3 * S, "quote", "keep", seen(102.0)),
        Fill("c2", venue, symbol, Side.SELL, 101.0, 1.0, 0.05, "USDT", "maker", T0 + 4 * S, name),
        OrderAck("c2", venue, symbol, OrderStatus.FILLED, T0 + 4 * S, filled_qty=1.0),
        Decision(name, T0 + 5 * S, "quote", "ask", seen(98.0), 0.0, [ask_again]), ask_again,
        OrderAck("c3", venue, symbol, OrderStatus.NEW, T0 + 5 * S),
        OrderAck("c3", venue, symbol, OrderStatus.CANCELED, T0 + 6 * S),
        Decision(name, T0 + 7 * S, "hold", "at target", seen(97.0)),
        Decision(name, T0 + 8 * S, "flatten", "reduce", seen(97.0), 0.0, [market]), market,
        # Fee in the base asset: 0.0005 BTC at 96.5 = 0.04825 USDT.
        Fill("c4", venue, symbol, Side.SELL, 96.5, 0.5, 0.0005, "BTC", "taker", T0 + 8 * S, name),
        OrderAck("c4", venue, symbol, OrderStatus.FILLED, T0 + 8 * S, filled_qty=0.5),
        Decision(name, T0 + 10 * S, "skip", "stale", seen(98.0)),
        BalanceSnapshot(venue, T0 + 10 * S, {"BTC": 0.5, "USDT": 1000.0 - 48.94825}, name),
    ]


def internalize_records() -> list[object]:
    """ETH/USDT client flow: warehouse, hedge (IOC sell 1 @ 1999.5), warehouse."""
    name, venue, symbol = "internalize", "binance_spot", "ETH/USDT"

    def client(side: str, qty: float, price: float, mid: float, hedge_cost: float) -> dict:
        return {"symbol": symbol, "mid": mid, "client_side": side, "client_qty": qty,
                "client_price": price, "hedge_cost": hedge_cost}

    hedge = OrderIntent(venue, symbol, Side.SELL, OrderType.IOC, 1.0, 1999.5, "i1", name)
    return [
        Decision(name, T0, "warehouse", "hold", client("buy", 1.0, 2001.0, 2000.0, 1.5)),
        Decision(name, T0 + S, "hedge", "hedge", client("sell", 2.0, 1999.0, 2000.0, 2.5), 0.0,
                 [hedge]), hedge,
        Fill("i1", venue, symbol, Side.SELL, 1999.5, 1.0, 0.2, "USDT", "taker", T0 + S, name),
        Decision(name, T0 + 2 * S, "warehouse", "hold", client("buy", 0.5, 2002.0, 2001.0, 0.8)),
    ]


def arbitrage_records() -> list[object]:
    """Two opportunities taken: one completes (+0.1 gross), one loses its sell leg."""
    name, symbol = "arbitrage", "BTC/USDT"

    def leg(venue: str, side: Side, price: float, order_id: str) -> OrderIntent:
        return OrderIntent(venue, symbol, side, OrderType.IOC, 1.0, price, order_id, name)

    first = [leg("bybit_spot", Side.BUY, 100.0, "a1"), leg("binance_spot", Side.SELL, 100.1, "a2")]
    second = [leg("bybit_spot", Side.BUY, 100.0, "a3"),
              leg("binance_spot", Side.SELL, 100.05, "a4")]

    def seen(edge_bps: float | None, mid: float) -> dict[str, object]:
        inputs: dict[str, object] = {"symbol": symbol, "mid": mid}
        if edge_bps is not None:
            inputs["expected_edge_bps"] = edge_bps
        return inputs

    return [
        Decision(name, T0, "arbitrage", "edge", seen(8.0, 100.0), 0.8, first), *first,
        Fill("a1", "bybit_spot", symbol, Side.BUY, 100.0, 1.0, 0.01, "USDT", "taker", T0, name),
        Fill("a2", "binance_spot", symbol, Side.SELL, 100.1, 1.0, 0.01, "USDT", "taker", T0, name),
        Decision(name, T0 + S, "skip", "edge below threshold", seen(0.5, 100.0)),
        Decision(name, T0 + 2 * S, "arbitrage", "edge", seen(5.0, 100.0), 0.5, second), *second,
        Fill("a3", "bybit_spot", symbol, Side.BUY, 100.0, 1.0, 0.01, "USDT", "taker", T0 + 2 * S,
             name),
        OrderAck("a4", "binance_spot", symbol, OrderStatus.REJECTED, T0 + 2 * S,
                 reason="insufficient balance"),
        Decision(name, T0 + 3 * S, "skip", "no edge", seen(None, 100.02)),
    ]


def write_log(data_dir: Path, run_id: str = "hand", records: list[object] | None = None) -> Path:
    if records is None:
        records = market_making_records() + internalize_records() + arbitrage_records()
    with DecisionLogWriter(data_dir, run_id, synchronous=True) as writer:
        for record in records:
            writer.record(record)
    assert writer.path is not None
    return writer.path


def by_strategy(report: object) -> dict[str, object]:
    return {summary.strategy: summary for summary in report.summaries}  # type: ignore[attr-defined]


def test_market_making_figures_are_exact(tmp_path: Path) -> None:
    write_log(tmp_path)
    mm = by_strategy(build_report(tmp_path, LogFilter(), charts=False))["inventory-mm"]
    fees = 0.1 + 0.05 + 0.0005 * 96.5  # 0.19825
    assert mm.fills == 3 and mm.fees == pytest.approx(fees)
    assert mm.volume == pytest.approx(2 * 99 + 101 + 0.5 * 96.5)
    # Average cost: long 2 @ 99; sell 1 @ 101 realises +2; sell 0.5 @ 96.5 realises -1.25.
    assert mm.realised_pnl == pytest.approx(2.0 - 1.25 - fees)
    # 0.5 left at cost 99, marked at the last mid 98.
    assert mm.unrealised_pnl == pytest.approx(0.5 * (98 - 99))
    assert mm.total_pnl == pytest.approx(-198 + 101 + 48.25 - fees + 0.5 * 98)
    # P&L path: 0, -0.1, 5.9 (mid 102), 3.85, 0.85, -0.15, -0.15, -0.69825, 0.05175.
    assert mm.max_drawdown == pytest.approx(5.9 - (-0.69825))
    assert mm.decisions == 6
    assert mm.actions == {"flatten": 1, "hold": 1, "quote": 3, "skip": 1}
    assert mm.intents_requested == 4 and mm.intents_sent == 4
    (inventory,) = mm.inventory
    assert (inventory.symbol, inventory.final, inventory.max_long, inventory.max_short) == (
        "BTC/USDT", 0.5, 2.0, 0.0)
    assert inventory.mark == 98.0
    # |q| = 2 for 2 s, 1 for 4 s, 0.5 for 2 s, over the 10 s of the run.
    assert inventory.mean_abs == pytest.approx((2 * 2 + 1 * 4 + 0.5 * 2) / 10)
    # Balances at the end: 0.5 BTC at 98 plus 951.05175 USDT.
    assert mm.portfolio_value == pytest.approx(0.5 * 98 + 1000 - 48.94825)


def test_order_metrics_of_the_seed_notebook_are_exact(tmp_path: Path) -> None:
    write_log(tmp_path)
    orders = by_strategy(build_report(tmp_path, LogFilter(), charts=False))["inventory-mm"].orders
    assert (orders.orders, orders.filled_orders, orders.cancelled_orders) == (4, 3, 1)
    assert orders.fill_rate == 0.75 and orders.cancel_ratio == 0.25
    # Lifetimes: c1 2 s, c2 4 s, c3 1 s (cancelled), c4 0 s (market).
    assert orders.avg_order_duration_s == pytest.approx((2 + 4 + 1 + 0) / 4)
    assert orders.avg_filled_order_duration_s == pytest.approx((2 + 4 + 0) / 3)
    # Maker fills against the last mid: bought 2 @ 99 under mid 100 (+2), sold 1 @ 101
    # under mid 102 (-1); in bps of their 299 notional.
    assert orders.spread_captured == pytest.approx(1.0)
    assert orders.spread_captured_bps == pytest.approx(1.0 / 299 * 1e4)
    # Limits fill at their price; the market sell got 96.5 against a deciding mid of 97.
    assert orders.slippage == pytest.approx(0.25)
    assert orders.avg_slippage_per_filled_order == pytest.approx(0.25 / 3)


def test_arbitrage_figures_are_exact(tmp_path: Path) -> None:
    write_log(tmp_path)
    arb = by_strategy(build_report(tmp_path, LogFilter(), charts=False))["arbitrage"]
    stats = arb.arbitrage
    assert (stats.opportunities_seen, stats.opportunities_taken) == (3, 2)
    assert stats.expected_edge == pytest.approx(1.3)
    assert stats.mean_expected_edge_bps == pytest.approx(6.5)
    assert (stats.leg_failures, stats.completed) == (1, 1)
    assert stats.expected_edge_completed == pytest.approx(0.8)
    # -100 - 0.01 + 100.1 - 0.01, over half of the 200.1 traded.
    assert stats.realised_edge == pytest.approx(0.08)
    assert stats.realised_edge_bps == pytest.approx(0.08 / 100.05 * 1e4)
    # The failed opportunity left 1 BTC long at 100, marked at 100.02.
    assert arb.realised_pnl == pytest.approx(0.1 - 0.03)
    assert arb.unrealised_pnl == pytest.approx(0.02)
    assert arb.orders.rejected_orders == 1


def test_internalize_figures_are_exact(tmp_path: Path) -> None:
    write_log(tmp_path)
    desk = by_strategy(build_report(tmp_path, LogFilter(), charts=False))["internalize"]
    stats = desk.internalize
    assert (stats.client_fills, stats.hedge, stats.warehouse, stats.partial_hedge) == (3, 1, 2, 0)
    assert stats.client_volume == pytest.approx(2001 + 2 * 1999 + 0.5 * 2002)
    # Desk: sold 1 @ 2001, bought 2 @ 1999, hedged: sold 1 @ 1999.5 (fee 0.2), sold 0.5 @
    # 2002; short 0.5 marked at 2001 (a client's price never marks).
    cash = 2001 - 2 * 1999 + 1999.5 - 0.2 + 0.5 * 2002
    assert desk.total_pnl == pytest.approx(cash - 0.5 * 2001)  # 2.8
    assert desk.unrealised_pnl == pytest.approx(0.5)
    # Always hedge: sum of desk side x qty x (mid - client price) - hedge cost.
    baseline = (1 - 1.5) + (2 - 2.5) + (0.5 - 0.8)
    assert stats.always_hedge_pnl == pytest.approx(baseline)
    assert stats.cost_saved_vs_always_hedge == pytest.approx(2.8 - baseline)
    # Path: 0, +1 (sold 1 over mid), 3 (bought 2 under), 2.3 after the hedge, 2.8.
    assert desk.max_drawdown == pytest.approx(0.7)


def test_torn_and_corrupt_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write_log(tmp_path, records=market_making_records())
    with open(path, "ab") as handle:
        handle.write(b'{"v":2,"type":"fill","run_id":"hand","ts_ns":1}\n')  # future schema
        handle.write(b"not json at all\n")
        handle.write(b'{"v":1,"type":"decision","run_id":"hand","ts_ns":17')  # torn tail
    # The next run of the same id appends after the torn line, not onto it.
    write_log(tmp_path, records=[Decision("inventory-mm", T0 + 20 * S, "skip", "late",
                                          {"symbol": "BTC/USDT", "mid": 98.0})])
    report = build_report(tmp_path, LogFilter(), charts=False)
    assert (report.corrupt_lines, report.unsupported_lines) == (2, 1)
    assert report.records == len(market_making_records()) + 1
    mm = by_strategy(report)["inventory-mm"]
    assert mm.decisions == 7
    assert mm.total_pnl == pytest.approx(-198 + 101 + 48.25 - 0.19825 + 0.5 * 98)


def test_filters_by_strategy_run_and_time(tmp_path: Path) -> None:
    write_log(tmp_path, "first")
    write_log(tmp_path, "second", market_making_records())
    only_mm = build_report(tmp_path, LogFilter(strategy="inventory_mm"), charts=False)
    assert [(s.run_id, s.strategy) for s in only_mm.summaries] == [
        ("first", "inventory-mm"), ("second", "inventory-mm")]
    one_run = build_report(tmp_path, LogFilter(run_id="second"), charts=False)
    assert [s.run_id for s in one_run.summaries] == ["second"]
    # The first 5 s of the market maker: bought 2 @ 99, sold 1 @ 101.
    window = build_report(tmp_path, LogFilter(strategy="inventory-mm", run_id="first",
                                              since_ns=T0, until_ns=T0 + 5 * S), charts=False)
    (mm,) = window.summaries
    assert mm.fills == 2
    assert mm.realised_pnl == pytest.approx(2.0 - 0.15)
    assert parse_time("2024-08-08T23:54:13Z") == T0
    assert parse_time("2024-08-08T23:54:13") == T0


def test_exports_hold_the_runs_fills_and_decisions(tmp_path: Path) -> None:
    write_log(tmp_path)
    report = build_report(tmp_path, LogFilter(), charts=False)
    assert report.exports["summary"].parent == tmp_path / "reports" / "all-runs"
    with open(report.exports["summary"]) as handle:
        summary = {row["strategy"]: row for row in csv.DictReader(handle)}
    assert float(summary["inventory-mm"]["total_pnl"]) == pytest.approx(0.05175)
    assert float(summary["inventory-mm"]["orders_fill_rate"]) == 0.75
    with open(report.exports["fills"]) as handle:
        fills = list(csv.DictReader(handle))
    assert len(fills) == 3 + 1 + 3 + 3  # venue fills of each strategy + 3 client fills
    assert sum(row["kind"] == "client" for row in fills) == 3
    with open(report.exports["decisions"]) as handle:
        decisions = list(csv.DictReader(handle))
    assert len(decisions) == 6 + 3 + 4
    assert orjson.loads(decisions[0]["inputs"])["symbol"]


def run_cli(capsys: pytest.CaptureFixture[str], data_dir: Path, *flags: str) -> tuple[int, str]:
    os.environ["CRYPTOPIPE_DATA_DIR"] = str(data_dir)
    try:
        status = main(["--mode", "post-mortem", *flags])
    finally:
        del os.environ["CRYPTOPIPE_DATA_DIR"]
    return status, capsys.readouterr().out


def test_missing_or_empty_log_says_so_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    status, out = run_cli(capsys, tmp_path / "nothing-here")
    assert status == 0
    assert "no decision log under" in out
    empty = tmp_path / "empty" / "decisions" / "2024-08-08"
    empty.mkdir(parents=True)
    (empty / "r.jsonl").write_bytes(b"")
    status, out = run_cli(capsys, tmp_path / "empty", "--format", "json")
    assert status == 0
    figures = orjson.loads(out)
    assert figures["runs"] == [] and "no records" in figures["message"]


def test_command_line_tables_and_json_report_the_same_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    write_log(tmp_path)
    status, out = run_cli(capsys, tmp_path, "--strategy", "inventory-mm", "--run", "hand")
    assert status == 0
    assert "P&L per strategy and run" in out and "inventory-mm" in out and "0.05" in out
    status, out = run_cli(capsys, tmp_path, "--strategy", "inventory-mm", "--format", "json")
    assert status == 0
    (run,) = orjson.loads(out)["runs"]
    assert run["total_pnl"] == pytest.approx(0.05175)
    assert run["orders"]["cancel_ratio"] == 0.25
    status, _ = run_cli(capsys, tmp_path, "--since", "yesterday")
    assert status == 2  # a time that cannot be used is a usage error


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="headless check needs Debian's chromium: apt-get install -y chromium")
def test_html_report_renders_its_charts_in_headless_chromium(tmp_path: Path) -> None:
    write_log(tmp_path)
    report = build_report(tmp_path, LogFilter())
    page = report.exports["html"]
    html = page.read_text()
    assert "<script src=" not in html and "<script type=\"text/javascript\" src=" not in html
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js inlined: offline
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    # Three runs, each its figure, one per market and its markouts (issue 14 item 13):
    # inventory-mm 1 + 1 + 1, internalize 1 + 1 (the hedge's venue) + 1, arbitrage 1 + 2
    # + 1. Plotly draws every figure into <svg class="main-svg">.
    assert result.stdout.count('class="main-svg"') >= 10
    assert result.stdout.count('class="plot-container plotly"') == 10
    shutil.rmtree(profile, ignore_errors=True)


def test_a_run_without_its_end_record_is_reported_as_not_ended_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    write_log(data_dir, "crashed", market_making_records())
    with DecisionLogWriter(data_dir, "clean", synchronous=True) as writer:
        for record in market_making_records():
            writer.record(record)
        writer.end_run()
    last_ns = max(getattr(r, "ts_ns", 0) for r in market_making_records())
    status, out = run_cli(capsys, data_dir, "--format", "json")
    assert status == 0
    figures = orjson.loads(out)
    assert figures["runs_not_ended_cleanly"] == [
        {"run_id": "crashed", "last_durable_ts_ns": last_ns,
         "last_durable": figures["runs_not_ended_cleanly"][0]["last_durable"]}]
    assert {run["run_id"] for run in figures["runs"]} == {"crashed", "clean"}
    status, out = run_cli(capsys, data_dir)
    assert status == 0
    assert "run crashed did not end cleanly: last durable record at " in out
    assert "run clean did not" not in out


def test_reports_that_cannot_be_written_exit_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    write_log(data_dir)
    (data_dir / "reports").write_text("a file where the reports directory should be")
    os.environ["CRYPTOPIPE_DATA_DIR"] = str(data_dir)
    try:
        status = main(["--mode", "post-mortem"])
    finally:
        del os.environ["CRYPTOPIPE_DATA_DIR"]
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cryptopipe:")]
    assert len(lines) == 1 and "cannot write the reports under" in lines[0]
