"""A user's first hour on a new symbol (issue 14): inventory-mm on ETH/USDT with no
`markets` or ETH balance in the settings runs in backtest, replay and live, its tick and
lot taken from the recorded data or the venue's markets and said so in one log line;
explicit settings win."""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.helpers.venue_servers import BinanceServer, MarketFilters, binance_tape
from tests.modes.test_action import read_log, run_main

REPO = Path(__file__).resolve().parents[2]
ETH_FILE = "binance_usdm_ethusdt_20240718.gz"
ETH_ON_SPOT = {"CRYPTOPIPE_STRATEGIES__INVENTORY_MM__SYMBOL": "ETH/USDT"}


def on_steps(records: list[dict], tick: float, lot: float) -> list[dict]:
    intents = [r for r in records if r["type"] == "intent"]
    for intent in intents:
        assert math.isclose(intent["price"] / tick, round(intent["price"] / tick), abs_tol=1e-6)
        assert math.isclose(intent["qty"] / lot, round(intent["qty"] / lot), abs_tol=1e-6)
    return intents


def test_a_backtest_on_a_new_symbol_derives_tick_and_lot_from_the_data(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    eth = shared_file(ETH_FILE)
    data_dir = tmp_path / "data"
    done = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "eth",
                     "--data", f"{eth}@binance_spot:ETH/USDT"], data_dir, **ETH_ON_SPOT)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    assert ("markets: ETH/USDT on binance_spot tick 0.01 lot 0.001 from recorded data; "
            "set venues.binance_spot.markets to override") in done.stderr
    assert "paper balances for ETH/USDT on binance_spot: ETH 7.299" in done.stderr
    assert on_steps(read_log(data_dir), 0.01, 0.001), "inventory-mm placed no quote"


def test_explicit_markets_win_over_the_data(tmp_path: Path,
                                            shared_file: Callable[[str], Path]) -> None:
    eth = shared_file(ETH_FILE)
    data_dir = tmp_path / "data"
    markets = {"BTC/USDT": {"tick": 0.01, "lot": 0.00001}, "ETH/USDT": {"tick": 0.05,
                                                                      "lot": 0.002}}
    done = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "eth",
                     "--data", f"{eth}@binance_spot:ETH/USDT"], data_dir, **ETH_ON_SPOT,
                    CRYPTOPIPE_VENUES__BINANCE_SPOT__MARKETS=orjson.dumps(markets).decode(),
                    CRYPTOPIPE_STRATEGIES__INVENTORY_MM__ORDER_QTY="0.002")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "from recorded data" not in done.stderr
    assert on_steps(read_log(data_dir), 0.05, 0.002)


def test_an_action_replay_on_a_new_symbol_derives_the_same_rules(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    eth = shared_file(ETH_FILE)
    data_dir = tmp_path / "data"
    done = run_main(["--strategy", "inventory-mm", "--mode", "action", "--speed", "max",
                     "--feed", f"replay:{eth}@binance_spot:ETH/USDT"], data_dir, **ETH_ON_SPOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "markets: ETH/USDT on binance_spot tick 0.01 lot 0.001 from recorded data" in (
        done.stderr)
    assert on_steps(read_log(data_dir), 0.01, 0.001)


async def test_a_live_paper_run_on_a_new_symbol_takes_the_venues_markets(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    tape, _ = binance_tape(shared_file(ETH_FILE))
    filters = {"ETHUSDT": MarketFilters(tick="0.01", step="0.001", min_notional="20")}
    async with BinanceServer(tape[:4_000], market="usdm", symbols=["ETHUSDT"],
                             market_rules=filters, rate_hz=500) as server:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
        environment.update(
            CRYPTOPIPE_DATA_DIR=str(tmp_path / "data"), CRYPTOPIPE_METRICS__ENABLED="false",
            CRYPTOPIPE_VENUES__BINANCE_SPOT__ENABLED="false",
            CRYPTOPIPE_VENUES__BYBIT_SPOT__ENABLED="false",
            CRYPTOPIPE_VENUES__BINANCE_USDM__ENABLED="true",
            CRYPTOPIPE_VENUES__BINANCE_USDM__WS_URL=server.ws_url,
            CRYPTOPIPE_VENUES__BINANCE_USDM__REST_URL=server.rest_url,
            CRYPTOPIPE_SYMBOLS="ETH/USDT:USDT",
            CRYPTOPIPE_STRATEGIES__INVENTORY_MM__VENUE="binance_usdm",
            CRYPTOPIPE_STRATEGIES__INVENTORY_MM__SYMBOL="ETH/USDT:USDT")
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "main.py"), "--strategy", "inventory-mm", "--mode",
            "action", "--duration", "6", cwd=tmp_path, env=environment,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            _out, err = await asyncio.wait_for(process.communicate(), 120)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    logs = err.decode(errors="replace")
    assert process.returncode == 0, logs[-2000:]
    assert ("markets: ETH/USDT:USDT on binance_usdm tick 0.01 lot 0.001 min notional 20 "
            "from the venue's markets (ccxt)") in logs
    assert "paper balances for ETH/USDT:USDT on binance_usdm: USDT 50000" in logs
    assert on_steps(read_log(tmp_path / "data"), 0.01, 0.001), "no quote placed"
    assert "/fapi/v1/exchangeInfo" in server.http_requests
