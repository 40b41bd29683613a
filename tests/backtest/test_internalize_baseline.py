"""Internalize's always-hedge baseline on the shared ETH recording (issue 14, item 10): the
twin that runs beside the strategy is a run of the forced always-hedge policy, so its P&L
is what running the strategy with `policy = "always_hedge"` makes on the same flow; and
the results CSV shows the hedges' fills as the executor made them."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.recordings.replay import ReplaySpec
from config.settings import load_settings
from daemon.backtest.engine import Backtest
from daemon.postmortem.reader import LogFilter
from daemon.postmortem.report import build_report
from strategies.portfolio import INTERNALIZATION_CSV

ETH = ("binance_usdm_ethusdt_20240718.gz", "binance_usdm_ethusdt_20240719.gz")
VENUE, SYMBOL = "binance_usdm", "ETH/USDT:USDT"


async def run(data_dir: Path, specs: list[ReplaySpec], run_id: str, **internalize: Any
              ) -> Backtest:
    settings = load_settings({
        "data_dir": data_dir,
        "venues": {VENUE: {"enabled": True, "balances": {"USDT": 1_000_000.0},
                           "markets": {SYMBOL: {"tick": 0.01, "lot": 0.001}}}},
        "strategies": {"internalize": {"venue": VENUE, "symbol": SYMBOL, **internalize}},
    }, env_file=None)
    backtest = Backtest(settings, "internalize", specs, run_id)
    await backtest.run()
    return backtest


def log_records(data_dir: Path, run_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in sorted(data_dir.glob(f"decisions/*/{run_id}.jsonl"))
            for line in path.read_bytes().splitlines()]


async def test_the_baseline_is_the_pnl_of_the_forced_always_hedge_policy(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    specs = [ReplaySpec(shared_file(name)) for name in ETH]
    backtest = await run(tmp_path, specs, "desk")  # "optimal", the twin beside it (defaults)
    await run(tmp_path, specs, "forced", policy="always_hedge")
    desk = build_report(tmp_path, LogFilter(run_id="desk"), charts=False).summaries
    forced = build_report(tmp_path, LogFilter(run_id="forced"), charts=False).summaries
    assert [s.strategy for s in desk] == ["internalize"]  # the twin is no strategy of its own
    stats = desk[0].internalize
    assert stats.client_fills > 100 and stats.always_hedge_fills > 100
    # Same flow seed, same executor rules: the twin made what the forced run made.
    assert stats.always_hedge_pnl == pytest.approx(forced[0].total_pnl, abs=1e-6)
    assert stats.always_hedge_fees == pytest.approx(forced[0].fees, abs=1e-6)
    assert stats.cost_saved_vs_always_hedge == pytest.approx(
        desk[0].total_pnl - forced[0].total_pnl, abs=1e-6)
    # The formula's estimate charged slippage the executor never did: it was far worse.
    assert stats.always_hedge_pnl_estimate < stats.always_hedge_pnl - 100.0
    # The run's own summary says the same, from the desk portfolios (marked at their mids).
    desk_line, twin_line = backtest.strategy.summary_lines()  # type: ignore[attr-defined]
    assert f"P&L {desk[0].total_pnl:+,.2f}" in desk_line
    assert f"P&L {stats.always_hedge_pnl:+,.2f}" in twin_line
    assert f"saved vs always-hedge {stats.cost_saved_vs_always_hedge:+,.2f}" in twin_line


async def test_the_results_csv_shows_the_hedge_fills_from_the_log(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    backtest = await run(tmp_path, [ReplaySpec(shared_file(name)) for name in ETH], "desk")
    backtest.strategy.write_exports(tmp_path / "reports")
    with open(tmp_path / "reports" / INTERNALIZATION_CSV, newline="") as handle:
        rows = {row["fill_id"]: row for row in csv.DictReader(handle)}
    # From the decision log: the hedge order each client fill's decision sent, its fills.
    logged = log_records(tmp_path, "desk")
    order_of = {r["inputs"]["fill_id"]: r["intents"][0]["client_order_id"] for r in logged
                if r["type"] == "decision" and r["strategy"] == "internalize"
                and "client_qty" in r["inputs"] and r["intents"]}
    fills: dict[str, list[tuple[float, float]]] = {}
    for r in logged:
        if r["type"] == "fill":
            fills.setdefault(r["client_order_id"], []).append((r["qty"], r["price"]))
    checked = 0
    for fill_id, order in order_of.items():
        row = rows[fill_id]
        executed = fills.get(order, [])
        if not executed:
            assert math.isnan(float(row["hedge_price"]))
            continue
        qty = sum(q for q, _ in executed)
        assert float(row["hedge_filled_qty"]) == pytest.approx(qty)
        assert float(row["hedge_price"]) == pytest.approx(sum(q * p for q, p in executed) / qty)
        assert float(row["hedge_price"]) != pytest.approx(float(row["expected_hedge_price"]))
        checked += 1
    assert checked > 10
    # Each client fill's hedge-at-once alternative is priced by the twin's fills, whenever
    # the twin's IOC for it filled (one that found the touch gone expires unfilled).
    twin_order = {r["inputs"]["fill_id"]: r["intents"][0]["client_order_id"] for r in logged
                  if r["type"] == "decision" and r["strategy"] == "internalize.always-hedge"
                  and "client_qty" in r["inputs"] and r["intents"]}
    twin_filled = {fill_id for fill_id, order in twin_order.items() if order in fills}
    assert len(twin_filled) > 0.9 * len(rows)
    for fill_id, row in rows.items():
        assert (row["always_hedge_source"] == "always_hedge") == (fill_id in twin_filled)


async def test_the_twin_leaves_the_desks_own_decisions_and_fills_unchanged(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    """The twin trades on a paper account and book of its own: the desk decides and fills
    exactly as it does with the twin off (its order ids carry the run's prefix only)."""
    specs = [ReplaySpec(shared_file(name)) for name in ETH]
    await run(tmp_path, specs, "with")
    await run(tmp_path, specs, "without", always_hedge_baseline=False)

    def desk(run_id: str) -> list[bytes]:
        prefixes = {r["client_order_id"].split("-", 1)[0] for r in log_records(tmp_path, run_id)
                    if r["type"] == "intent"}
        records = log_records(tmp_path, run_id)
        orders = {r["client_order_id"] for r in records
                  if r["type"] == "intent" and r["strategy"] == "internalize"}
        lines = [orjson.dumps({k: v for k, v in r.items() if k != "run_id"}) for r in records
                 if r.get("strategy") == "internalize" or r.get("client_order_id") in orders]
        for prefix in prefixes:
            lines = [line.replace(prefix.encode(), b"RUN") for line in lines]
        return lines

    with_twin, alone = desk("with"), desk("without")
    assert len(alone) > 500 and sum(b'"type":"fill"' in line for line in alone) > 100
    assert sum(b'"type":"ack"' in line for line in alone) > 100
    assert with_twin == alone
    twin = [r for r in log_records(tmp_path, "with")
            if r.get("strategy") == "internalize.always-hedge" and r["type"] == "fill"]
    assert len(twin) > 100  # the twin did trade beside it
