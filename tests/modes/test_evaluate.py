"""`--mode evaluate` from the command line (issue 15, item 4): the files it writes and the
one-line refusals."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.backtest.evaluation import POLICY_NAMES
from tests.backtest.test_engine import run_main
from tests.helpers.rl_models import write_random_model
from tests.strategies.test_rl_internalize import ETH, GRID

CONFIG = """
[venues.binance_usdm]
enabled = true
balances = { USDT = 1000000.0 }
[venues.binance_usdm.markets."ETH/USDT:USDT"]
tick = 0.01
lot = 0.001
[strategies.internalize]
venue = "binance_usdm"
symbol = "ETH/USDT:USDT"
max_inventory = 20.0
"""


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    data_dir = tmp_path / "data"
    config = tmp_path / "eth.toml"
    config.write_text(CONFIG)
    model = write_random_model(tmp_path / "model", GRID, seed=3)
    return data_dir, config, model


def test_evaluate_writes_the_csv_and_the_html_chart(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    data_dir, config, model = _setup(tmp_path)
    done = run_main(["--strategy", "rl-internalize", "--mode", "evaluate", "--config",
                     str(config), "--model", str(model), "--data", str(shared_file(ETH)),
                     "--seeds", "2", "--run-id", "ev"], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Agent minus baseline" in done.stdout and "10 runs (5 policies x 2 seeds)" in (
        done.stdout)
    folder = data_dir / "reports" / "ev"
    with open(folder / "evaluation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["policy"], r["seed"]) for r in rows] == [
        *((name, seed) for name in POLICY_NAMES for seed in ("7", "8")),
        *((name, "mean") for name in POLICY_NAMES)]
    for row in rows:
        parts = sum(float(row[k]) for k in ("markup", "hedge_fees", "crossing",
                                              "inventory_mtm"))
        assert parts == pytest.approx(float(row["pnl"]), abs=1e-6)
    with open(folder / "evaluation_differences.csv", newline="") as handle:
        differences = list(csv.DictReader(handle))
    assert {(d["baseline"], d["metric"]) for d in differences} == {
        (name, metric) for name in POLICY_NAMES[1:] for metric in ("pnl", "pnl_bps")}
    page = (folder / "evaluation.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "plotly" in page
    assert all(f'id="evaluation-{n}"' in page for n in range(3))
    for name in POLICY_NAMES:  # each run has its decision log
        for seed in (7, 8):
            assert list(data_dir.glob(f"decisions/*/ev-{name}-seed{seed}.jsonl"))


@pytest.mark.parametrize(("flags", "message"), [
    (["--strategy", "internalize"], "pass --strategy rl-internalize"),
    (["--strategy", "rl-internalize", "--model", "MODEL"], "needs recorded files: --data"),
    (["--strategy", "rl-internalize", "--data", "DATA"], "--model PATH"),
    (["--strategy", "rl-internalize", "--data", "DATA", "--model", "EMPTY"],
     "not a usable model folder"),
])
def test_evaluate_refuses_in_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    data_dir, config, model = _setup(tmp_path)
    recording = tmp_path / "recording.gz"
    recording.write_bytes(b"")  # never read: the refusal comes first
    (tmp_path / "empty").mkdir()
    paths = {"MODEL": str(model), "DATA": str(recording), "EMPTY": str(tmp_path / "empty")}
    done = run_main(["--mode", "evaluate", "--config", str(config),
                     *(paths.get(flag, flag) for flag in flags)], data_dir)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (data_dir / "reports").exists()
