"""`--mode action` ends with the one-screen summary a backtest prints (one printer for both)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "adapters" / "recordings" / "samples"
SAMPLE_SPOT = SAMPLES / "binance_spot_btcusdt_20240808_sample.gz"
FLOW = {"CRYPTOPIPE_STRATEGIES__INTERNALIZE__VENUE": "binance_spot",
        "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYMBOL": "BTC/USDT",
        "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SOURCE": "synthetic",
        "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_MEAN_QTY": "0.02"}


def run_main(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
                       CRYPTOPIPE_LOGGING__LEVEL="warning", **FLOW, **env)
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--strategy", "internalize",
                           "--run-id", "sum", *args], cwd=data_dir.parent, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_action_on_a_replay_ends_with_the_backtest_summary(tmp_path: Path) -> None:
    backtest = run_main(["--mode", "backtest", "--data", str(SAMPLE_SPOT)], tmp_path / "bt")
    action = run_main(["--mode", "action", "--speed", "max", "--feed", f"replay:{SAMPLE_SPOT}"],
                      tmp_path / "action")
    lines = action.stdout.splitlines()
    # The same figures as the backtest's, from the same printer.
    assert lines[0].startswith("action sum (internalize): 7,855 events (6,299 quotes, "
                               "1,556 trades) over 75 s of data in ")
    assert backtest.stdout.splitlines()[0].startswith(
        "backtest sum (internalize): 7,855 events (6,299 quotes, 1,556 trades) over 75 s")
    client = [line for line in lines if line.startswith("client fills:")]
    assert client and client == [line for line in backtest.stdout.splitlines()
                                 if line.startswith("client fills:")]
    assert any(line.startswith("events: ") and "reached the strategy" in line for line in lines)
    assert any(line.startswith("decisions: ") and " fills" in line for line in lines)
    (log_line,) = [line for line in lines if line.startswith("decision log: ")]
    log_file = tmp_path / "action" / "decisions" / "2024-08-08" / "sum.jsonl"
    records = len(log_file.read_bytes().splitlines())
    assert log_line.startswith(f"decision log: {records:,} records in ")
    assert log_line.endswith(str(log_file.relative_to(tmp_path)))
    assert lines[-1] == "report: python main.py --mode post-mortem --run sum"


def test_action_stopped_by_duration_prints_the_summary_and_json_figures(tmp_path: Path) -> None:
    """A stop (--duration, as SIGTERM: the mode is cancelled) still ends with the summary;
    --format json gives the figures as a backtest's JSON does."""
    done = run_main(["--mode", "action", "--speed", "1", "--duration", "3", "--format", "json",
                     "--feed", f"replay:{SAMPLE_SPOT}"], tmp_path / "data")
    figures = orjson.loads(done.stdout)
    assert figures["mode"] == "action" and figures["run_id"] == "sum"
    assert 0 < figures["events"] < 7_855  # stopped part of the way through the 75 s
    assert figures["events"] == figures["quotes"] + figures["trades"]
    assert figures["records"] > 0 and figures["log_files"]
    for key in ("client_fills", "client_fills_unpriced", "decisions", "orders", "fills",
                "first_ts_ns", "last_ts_ns", "wall_seconds", "events_per_second",
                "delivered", "conflated"):
        assert key in figures


def test_action_stopped_by_sigterm_prints_the_summary(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
                       CRYPTOPIPE_LOGGING__LEVEL="info", CRYPTOPIPE_LOGGING__FORMAT="json",
                       **FLOW)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--strategy", "internalize", "--run-id", "sig",
         "--mode", "action", "--speed", "1", "--feed", f"replay:{SAMPLE_SPOT}"],
        cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the strategy is trading: stop it
            if "strategy_started" in line:
                break
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    lines = stdout.splitlines()
    assert lines[0].startswith("action sig (internalize): ")
    assert lines[-1] == "report: python main.py --mode post-mortem --run sig"
