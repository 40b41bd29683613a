"""`--mode sweep` (issue 18, items 3 and 4): a 3 x 3 grid on a shared recording ranked from
each run's own decision log; the same sweep on a local Dask cluster; resuming; bad grids;
the walk-forward split."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.backtest.test_engine import records, run_main

RECORDING = "binance_spot_btcusdt_20240808.gz"  # 2024-08-08 23:54:13 .. 24:00:00 UTC
GRID = ["--grid", "min_edge_bps=0,0.5,3", "--grid", "order_qty=0.001,0.002,0.003"]
FIGURES = ("pnl", "sharpe", "max_drawdown", "fills", "fees", "mean_abs_inventory")


def sweep(data_dir: Path, sweep_id: str, *args: str) -> Any:
    done = run_main(["--strategy", "inventory-mm", "--mode", "sweep", "--run-id", sweep_id,
                     "--format", "json", *args], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout)


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without what names the run (its id, whether it ran now); NaN as None."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in row.items() if key not in ("run_id", "status")}


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory,
                shared_file: Callable[[str], Path]) -> tuple[Path, Any]:
    data_dir = tmp_path_factory.mktemp("sweep") / "data"
    return data_dir, sweep(data_dir, "grid", "--workers", "2", "--data",
                           str(shared_file(RECORDING)), *GRID)


def test_a_3x3_sweep_ranks_nine_runs_each_with_its_own_decision_log(
    local_sweep: tuple[Path, Any],
) -> None:
    data_dir, result = local_sweep
    rows = result["rows"]
    assert [row["rank"] for row in rows] == list(range(1, 10))
    assert sorted(row["run_id"] for row in rows) == [f"grid-{i}" for i in range(9)]
    assert {(row["min_edge_bps"], row["order_qty"]) for row in rows} == {
        (edge, qty) for edge in (0.0, 0.5, 3.0) for qty in (0.001, 0.002, 0.003)}
    assert all(row["status"] == "ran" for row in rows)
    pnls = [row["pnl"] for row in rows]
    assert pnls == sorted(pnls, reverse=True)  # ranked by P&L, the default
    assert len(set(pnls)) > 1 and any(row["fills"] > 0 for row in rows)
    for row in rows:  # each run its own log, ended cleanly, of its own settings
        own = records(data_dir, row["run_id"])
        assert own[-1]["type"] == "run_end"
        assert {r["run_id"] for r in own} == {row["run_id"]}
        sizes = {r["qty"] for r in own if r["type"] == "intent" and r["reason"] in ("bid", "ask")}
        assert max(sizes) == row["order_qty"], (row, sizes)  # less only as inventory grows
    # The post-mortem's figures of a run are the sweep's (one P&L formula).
    report = run_main(["--mode", "post-mortem", "--run", rows[0]["run_id"], "--format",
                       "json"], data_dir)
    (summary,) = orjson.loads(report.stdout)["runs"]
    assert summary["total_pnl"] == rows[0]["pnl"] and summary["fills"] == rows[0]["fills"]
    # The CSV holds the same rows; the chart is a heatmap of P&L over the two settings.
    report_dir = data_dir / "reports" / "grid"
    with (report_dir / "sweep.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [line["run_id"] for line in table] == [row["run_id"] for row in rows]
    assert float(table[0]["pnl"]) == rows[0]["pnl"]
    page = (report_dir / "sweep.html").read_text()
    assert '"type":"heatmap"' in page and "min_edge_bps" in page


def test_the_same_sweep_on_a_local_dask_cluster_gives_identical_rankings_and_figures(
    local_sweep: tuple[Path, Any], shared_file: Callable[[str], Path],
) -> None:
    distributed = pytest.importorskip("distributed")
    data_dir, local = local_sweep
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        remote = sweep(data_dir, "on-cluster", "--cluster", cluster.scheduler_address,
                       "--data", str(shared_file(RECORDING)), *GRID)
    assert [comparable(row) for row in remote["rows"]] == [
        comparable(row) for row in local["rows"]]
    assert [row["run_id"].removeprefix("on-cluster-") for row in remote["rows"]] == [
        row["run_id"].removeprefix("grid-") for row in local["rows"]]


def test_resuming_a_sweep_reruns_only_the_run_that_did_not_finish(
    local_sweep: tuple[Path, Any],
) -> None:
    data_dir, first = local_sweep
    lost = first["rows"][4]["run_id"]
    for path in (data_dir / "decisions").glob(f"*/{lost}.jsonl"):
        path.unlink()
    # Its grid and data are the sweep's own: the id alone resumes it.
    again = sweep(data_dir, "grid", "--workers", "2")
    status = {row["run_id"]: row["status"] for row in again["rows"]}
    assert status.pop(lost) == "ran"
    assert set(status.values()) == {"finished before"}
    assert [comparable(row) for row in again["rows"]] == [
        comparable(row) for row in first["rows"]]


def test_a_bad_grid_value_exits_2_with_one_line_before_anything_runs(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    # (every kind of bad name and value: tests/backtest/test_sweep.py)
    done = run_main(["--strategy", "inventory-mm", "--mode", "sweep", "--data",
                     str(shared_file(RECORDING)), "--grid", "gamma=0.1,-1"], tmp_path / "data")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("cryptopipe:")]
    assert lines == ["cryptopipe: --grid gamma=-1: invalid setting strategies.inventory_mm."
                     "gamma: Input should be greater than 0"], done.stderr
    assert not list((tmp_path / "data").glob("decisions/*/*.jsonl"))  # nothing ran


def test_walk_forward_picks_on_the_train_span_and_reports_the_choice_on_the_test_span(
    local_sweep: tuple[Path, Any], shared_file: Callable[[str], Path],
) -> None:
    data_dir = local_sweep[0]  # its event cache is built
    result = sweep(data_dir, "wf", "--workers", "2", "--data", str(shared_file(RECORDING)),
                   "--grid", "allow_quotes_inside_fees=true,false",
                   "--train", "2024-08-08T23:54..2024-08-08T23:57",
                   "--test", "2024-08-08T23:57..2024-08-09")
    train = [row for row in result["rows"] if row["phase"] == "train"]
    (test,) = [row for row in result["rows"] if row["phase"] == "test"]
    assert sorted(row["run_id"] for row in train) == ["wf-train-0", "wf-train-1"]
    best = train[0]
    assert best["pnl"] >= train[1]["pnl"] and result["select"] == "pnl"
    assert result["chosen"] == {"allow_quotes_inside_fees": best["allow_quotes_inside_fees"]}
    assert test["run_id"] == "wf-test" and test["rank"] is None
    assert test["allow_quotes_inside_fees"] == best["allow_quotes_inside_fees"]
    assert all(not math.isnan(test[name]) for name in ("pnl", "fills"))
    # Each phase saw only its own span: decisions from 23:54 to 23:57, then 23:57 on.
    split = 1_723_161_420 * 10**9  # 2024-08-08T23:57:00Z
    train_times = [r["ts_ns"] for r in records(data_dir, best["run_id"])
                   if r["type"] == "decision"]
    test_times = [r["ts_ns"] for r in records(data_dir, "wf-test") if r["type"] == "decision"]
    assert train_times and max(train_times) < split + 10**9  # closing cancels: just after
    assert test_times and min(test_times) >= split
    # Resumed by its id alone, spans and all: nothing left to run, the same report.
    again = sweep(data_dir, "wf")
    assert {row["status"] for row in again["rows"]} == {"finished before"}
    assert [comparable(row) for row in again["rows"]] == [
        comparable(row) for row in result["rows"]]
