"""The backtest's end-of-run summary with the quoted client flow: clients who declined the
desk's quote are told apart from those no market could price (issue 15)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.backtest.test_engine import run_main
from tests.modes.test_evaluate import CONFIG
from tests.strategies.test_rl_internalize import ETH

QUOTED = {"CRYPTOPIPE_STRATEGIES__INTERNALIZE__SOURCE": "quoted",
          "CRYPTOPIPE_STRATEGIES__RL_INTERNALIZE__POLICY": "never-hedge"}


def test_the_summary_says_how_many_clients_declined_the_quote(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    config = tmp_path / "eth.toml"
    config.write_text(CONFIG)
    args = ["--strategy", "rl-internalize", "--mode", "backtest", "--config", str(config),
            "--data", str(shared_file(ETH))]
    text = run_main([*args, "--run-id", "text"], tmp_path / "data", **QUOTED)
    assert text.returncode == 0, text.stderr[-3000:]
    line = re.search(r"client fills: ([\d,]+) delivered, ([\d,]+) declined the desk's quote, "
                     r"([\d,]+) without a market to price them", text.stdout)
    assert line is not None, text.stdout
    delivered, declined, no_market = (int(n.replace(",", "")) for n in line.groups())
    assert delivered > 20 and declined > 0 and no_market == 0
    as_json = run_main([*args, "--run-id", "json", "--format", "json"], tmp_path / "data",
                       **QUOTED)
    figures = orjson.loads(as_json.stdout)
    assert figures["client_fills"] == delivered
    assert figures["client_fills_declined"] == declined
    assert figures["client_fills_no_market"] == no_market
    assert figures["client_fills_unpriced"] == declined + no_market


def test_without_the_quoted_flow_the_line_is_unchanged(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    config = tmp_path / "eth.toml"
    config.write_text(CONFIG)
    done = run_main(["--strategy", "internalize", "--mode", "backtest", "--config",
                     str(config), "--data", str(shared_file(ETH))], tmp_path / "data")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"client fills: [\d,]+ delivered, [\d,]+ without a market to price them",
                     done.stdout), done.stdout
    assert "declined" not in done.stdout
