"""Client flow in `--mode action` on a replay follows the feed clock, as in a backtest.

A replay at any `--speed` and a backtest of the same file see the same client fills: the
same arrivals (ids and times), due by the recorded receive times, never by the wall clock.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "adapters" / "recordings" / "samples"
SAMPLE_SPOT = SAMPLES / "binance_spot_btcusdt_20240808_sample.gz"
#: The sample's span: 2024-08-08 23:54:14 to 23:55:29 UTC (receive times).
SAMPLE_START_NS = 1_723_161_254_087_891_268
FLOW = {"CRYPTOPIPE_STRATEGIES__INTERNALIZE__VENUE": "binance_spot",
        "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYMBOL": "BTC/USDT",
        "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SOURCE": "synthetic",
        "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_MEAN_QTY": "0.02"}


def run_main(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
                       CRYPTOPIPE_LOGGING__LEVEL="warning", **env)
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--strategy", "internalize",
                           "--run-id", "flow", *args], cwd=data_dir.parent, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def client_fills(data_dir: Path) -> list[tuple[str, int, str]]:
    """(fill id, fill time, what the desk did) of every client fill in the run's log."""
    fills = []
    for path in sorted((data_dir / "decisions").glob("*/flow.jsonl")):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            inputs = record.get("inputs") or {}
            if (record["type"] == "decision" and inputs.get("trigger") == "client_fill"
                    and record["strategy"] == "internalize"):  # not its always-hedge twin
                fills.append((inputs["fill_id"], inputs["fill_ts_ns"], record["action"]))
    return fills


def backtest(data_dir: Path, **env: str) -> list[tuple[str, int, str]]:
    run_main(["--mode", "backtest", "--data", str(SAMPLE_SPOT)], data_dir, **env)
    return client_fills(data_dir)


def action(data_dir: Path, speed: str, **env: str) -> list[tuple[str, int, str]]:
    run_main(["--mode", "action", "--speed", speed, "--feed", f"replay:{SAMPLE_SPOT}"],
             data_dir, **env)
    return client_fills(data_dir)


def ids_and_times(fills: list[tuple[str, int, str]]) -> list[tuple[str, int]]:
    return [(fill_id, ts_ns) for fill_id, ts_ns, _ in fills]


def test_synthetic_flow_on_a_replay_follows_the_feed_clock_at_any_speed(tmp_path: Path) -> None:
    expected = backtest(tmp_path / "backtest", **FLOW)
    assert len(expected) > 20  # ~75 s of data at 0.5 fills/s
    # The wall clock gave 0-3 fills at --speed max and a handful at a slow speed: the feed
    # clock gives the backtest's arrivals, whatever the speed.
    at_max = action(tmp_path / "max", "max", **FLOW)
    assert ids_and_times(at_max) == ids_and_times(expected)
    at_50 = action(tmp_path / "slow", "50", **FLOW)
    assert ids_and_times(at_50) == ids_and_times(expected)


def test_a_flow_file_on_a_replay_comes_due_by_its_own_times_as_in_a_backtest(
    tmp_path: Path,
) -> None:
    """A CSV's fills are due when the feed clock passes their times: one before the data
    comes at its first event, one after its end never comes (a backtest does the same)."""
    flow_file = tmp_path / "flow.csv"
    second = 1_000_000_000
    times = [SAMPLE_START_NS - 60 * second, *(SAMPLE_START_NS + k * 10 * second
                                              for k in range(1, 7)),
             SAMPLE_START_NS + 3_600 * second]
    with flow_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "side", "qty", "price", "fill_id"])
        for n, ts_ns in enumerate(times):
            writer.writerow([ts_ns, "buy" if n % 2 else "sell", "0.01", "61800", f"f{n}"])
    env = {**FLOW, "CRYPTOPIPE_STRATEGIES__INTERNALIZE__SOURCE": "file",
           "CRYPTOPIPE_STRATEGIES__INTERNALIZE__FILE": str(flow_file)}
    expected = backtest(tmp_path / "backtest", **env)
    assert [fill_id for fill_id, _, _ in expected] == [f"f{n}" for n in range(7)]
    assert ids_and_times(action(tmp_path / "max", "max", **env)) == ids_and_times(expected)



def test_the_always_hedge_twin_takes_the_same_flow_in_an_action_run(tmp_path: Path) -> None:
    """The baseline twin runs in `--mode action` too: every client fill the strategy took,
    the twin took and hedged at once; the summary shows the desk against it."""
    data_dir = tmp_path / "max"
    done = run_main(["--mode", "action", "--speed", "max", "--feed", f"replay:{SAMPLE_SPOT}"],
                    data_dir, **FLOW)
    taken: dict[str, list[str]] = {}
    for path in sorted((data_dir / "decisions").glob("*/flow.jsonl")):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            if record["type"] == "decision" and "client_qty" in (record.get("inputs") or {}):
                taken.setdefault(record["strategy"], []).append(record["inputs"]["fill_id"])
    assert len(taken["internalize"]) > 20
    assert taken["internalize.always-hedge"] == taken["internalize"]
    assert "saved vs always-hedge" in done.stdout
