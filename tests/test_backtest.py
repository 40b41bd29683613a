"""`--mode backtest`: deterministic replays through the live strategy code, reported by
the post-mortem exactly like a live run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from daemon.backtest import ClientFlow, SimulatedClock, _progress_bar
from daemon.model import ClientFill, Side
from daemon.postmortem.reader import LogFilter
from daemon.postmortem.report import build_report

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SPOT = REPO / "adapters" / "samples" / "binance_spot_btcusdt_20240808_sample.gz"


def run_main(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
                       CRYPTOPIPE_LOGGING__LEVEL="warning", **env)
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=data_dir.parent,
                          env=environment, capture_output=True, text=True, timeout=300)


def backtest(data_dir: Path, strategy: str, run_id: str, *files: Path,
             **env: str) -> subprocess.CompletedProcess[str]:
    done = run_main(["--strategy", strategy, "--mode", "backtest", "--run-id", run_id,
                     "--data", *map(str, files)], data_dir, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def log_bytes(data_dir: Path, run_id: str) -> dict[str, bytes]:
    root = data_dir / "decisions"
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.glob(f"*/{run_id}.jsonl"))}


def records(data_dir: Path, run_id: str) -> list[dict]:
    return [orjson.loads(line) for content in log_bytes(data_dir, run_id).values()
            for line in content.splitlines()]


def test_inventory_mm_backtest_is_byte_identical_on_the_shared_recording(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    recording = shared_file("binance_spot_btcusdt_20240808.gz")
    first = backtest(tmp_path / "one", "inventory-mm", "det", recording)
    backtest(tmp_path / "two", "inventory-mm", "det", recording)
    logs = log_bytes(tmp_path / "one", "det")
    assert logs, "the backtest wrote no decision log"
    assert logs == log_bytes(tmp_path / "two", "det")
    # The data is 2024-08-08 23:54-24:00: the log lives under the data's date, and the
    # closing cancels a few ms after midnight roll over into the next day's file.
    assert "2024-08-08/det.jsonl" in logs
    kinds = Counter(r["type"] for r in records(tmp_path / "one", "det"))
    assert kinds["decision"] > 100 and kinds["intent"] > 10 and kinds["ack"] > 10
    assert kinds["fill"] > 0 and kinds["balance"] >= 2
    assert "37,797 events" in first.stdout  # 28,040 bookTicker + 9,757 trades


def test_post_mortem_reports_a_backtest_and_its_pnl_matches_the_paper_balances(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    backtest(data_dir, "inventory-mm", "mm", SAMPLE_SPOT)
    logged = records(data_dir, "mm")
    assert all(r["run_id"] == "mm" for r in logged)
    report = build_report(data_dir, LogFilter(run_id="mm"), charts=False)
    (mm,) = report.summaries
    assert mm.strategy == "inventory-mm" and mm.fills > 0 and mm.orders.orders > 0
    assert report.corrupt_lines == 0
    # Every order in the log is linked to its acks: none left open after the final cancels.
    assert mm.orders.open_orders == 0
    # Independent check: the P&L the report derives from fills equals the change of the
    # paper account's balances (USDT + BTC at the report's mark), fees included.
    balances = [r for r in logged if r["type"] == "balance" and r["venue"] == "binance_spot"]
    start, end = balances[0]["balances"], balances[-1]["balances"]
    (inventory,) = mm.inventory
    from_balances = (end["USDT"] - start["USDT"]) + (end["BTC"] - start["BTC"]) * inventory.mark
    assert mm.total_pnl == pytest.approx(from_balances, abs=1e-6)
    assert inventory.final == pytest.approx(end["BTC"] - start["BTC"], abs=1e-12)


def test_internalize_backtest_delivers_seeded_client_flow_deterministically(
    tmp_path: Path,
) -> None:
    flow = {"CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYMBOL": "BTC/USDT",
            "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_MEAN_QTY": "0.02",
            "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_RATE_HZ": "1"}
    backtest(tmp_path / "one", "internalize", "desk", SAMPLE_SPOT, **flow)
    backtest(tmp_path / "two", "internalize", "desk", SAMPLE_SPOT, **flow)
    assert log_bytes(tmp_path / "one", "desk") == log_bytes(tmp_path / "two", "desk")
    client_decisions = [r for r in records(tmp_path / "one", "desk")
                        if r["type"] == "decision" and "client_qty" in r["inputs"]]
    assert len(client_decisions) > 20  # ~75 s of data at 1 fill/s
    for decision in client_decisions:
        inputs = decision["inputs"]
        markup = 1 + 5e-4 if inputs["client_side"] == "buy" else 1 - 5e-4
        assert inputs["client_price"] == pytest.approx(inputs["mid"] * markup)
    report = build_report(tmp_path / "one", LogFilter(run_id="desk"), charts=False)
    (desk,) = report.summaries
    assert desk.internalize.client_fills == len(client_decisions)


def test_backtest_refuses_a_run_id_that_has_a_log_and_missing_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    backtest(data_dir, "inventory-mm", "once", SAMPLE_SPOT)
    again = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "once",
                      "--data", str(SAMPLE_SPOT)], data_dir)
    assert again.returncode == 2 and "already has a decision log" in again.stderr
    missing = run_main(["--mode", "backtest", "--data", str(tmp_path / "nope.gz")], data_dir)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    nothing = run_main(["--mode", "backtest"], data_dir)
    assert nothing.returncode == 2 and "--data" in nothing.stderr


def test_no_progress_bar_off_a_terminal(tmp_path: Path) -> None:
    assert _progress_bar(enabled=False).__enter__() is None
    done = backtest(tmp_path / "data", "inventory-mm", "quiet", SAMPLE_SPOT)
    assert "events/s" not in done.stderr  # the bar's line; the summary goes to stdout
    assert "events/s" in done.stdout


def test_client_flow_hands_out_fills_as_the_clock_passes_them() -> None:
    fills = [ClientFill(t, "BTC/USDT", Side.BUY, 1.0, 100.0, "c", f"f{t}") for t in (5, 10, 15)]
    flow = ClientFlow(iter(fills), reprice=lambda f: None if f.ts_ns == 10 else f)
    assert [f.ts_ns for f in flow.due(4)] == []
    assert [f.ts_ns for f in flow.due(12)] == [5]  # 10 had no market to price it
    assert [f.ts_ns for f in flow.due(100)] == [15]
    assert (flow.delivered, flow.unpriced) == (2, 1)
    clock = SimulatedClock()
    clock.advance_to(7)
    clock.advance_to(3)
    assert clock() == 7
