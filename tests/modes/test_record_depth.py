"""`--mode record` with `record.depth = true` records depth streams from the (local fake)
venue, and `--mode calibrate` walks the books of that recording (issue 14 item 15)."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import load_settings
from daemon.modes.record import with_recorded_depth
from tests.helpers.venue_servers import (
    BinanceServer,
    BybitServer,
    binance_tape,
    bybit_depth_events_from_binance,
)

REPO = Path(__file__).resolve().parents[2]
SPOT_FILE = "binance_spot_btcusdt_20240808.gz"


def environment(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
               **settings)
    return env


async def main_py(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "main.py"), *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 180)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def calibrate_on(recording: Path, tmp_path: Path, symbol: str) -> list[dict[str, str]]:
    """`--mode calibrate` on a recording, piped; the CSV rows it wrote."""
    env = environment(tmp_path / "data", CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYMBOL=symbol,
                      CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_RATE_HZ="20",
                      CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYNTHETIC_MEAN_QTY="0.5")
    code, out, err = await main_py("--mode", "calibrate", "--data", str(recording),
                                   "--run-id", "cal", env=env, cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert "fitted coefficient" in out and "apply it: CRYPTOPIPE_STRATEGIES__INTERNALIZE__" \
        "SLIPPAGE_COEFFICIENT=" in out, out[-3000:]
    with open(tmp_path / "data" / "reports" / "cal" / "slippage_comparison_vs_orderbook.csv",
              newline="") as handle:
        return list(csv.DictReader(handle))


def test_record_depth_raises_every_venues_book_depth() -> None:
    plain = load_settings({}, env_file=None)
    assert with_recorded_depth(plain) is plain
    deep = with_recorded_depth(load_settings({"record": {"depth": True}, "venues": {
        "bybit_spot": {"book_depth": 200}}}, env_file=None))
    assert deep.venues["binance_spot"].book_depth == 50
    assert deep.venues["bybit_spot"].book_depth == 200  # a deeper setting stays


async def test_record_binance_depth_then_calibrate_on_it(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    tape, snapshot = binance_tape(shared_file(SPOT_FILE))
    # Under 1,000 depth diffs in all: the parser buffers every one until the snapshot.
    async with BinanceServer(tape[:8_000], snapshot=snapshot, rate_hz=3_000) as server:
        env = environment(tmp_path / "data", CRYPTOPIPE_RECORD__DEPTH="true",
                          CRYPTOPIPE_VENUES__BINANCE_SPOT__WS_URL=server.ws_url,
                          CRYPTOPIPE_VENUES__BINANCE_SPOT__REST_URL=server.rest_url)
        code, _, err = await main_py("--mode", "record", "--venues", "binance_spot",
                                     "--symbols", "BTC/USDT", "--duration", "4", env=env,
                                     cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert "btcusdt@depth@100ms" in server.subscribed_paths[0]
    assert any(path.startswith("/api/v3/depth") for path in server.http_requests)
    (recording,) = (tmp_path / "data" / "recordings").glob("binance_spot_btcusdt_*.gz")
    rows = await calibrate_on(recording, tmp_path, "BTC/USDT")
    assert [row for row in rows if row["walked_price"] != "nan"], "no fill walked the book"


async def test_record_bybit_orderbook_50_then_calibrate_on_it(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    tape, snapshot = binance_tape(shared_file(SPOT_FILE))
    assert snapshot is not None
    events = bybit_depth_events_from_binance(tape[:16_000], snapshot, depth=50)
    async with BybitServer(events, rate_hz=4_000) as server:
        env = environment(tmp_path / "data", CRYPTOPIPE_RECORD__DEPTH="true",
                          CRYPTOPIPE_VENUES__BYBIT_SPOT__WS_URL=server.ws_url)
        code, _, err = await main_py("--mode", "record", "--venues", "bybit_spot",
                                     "--symbols", "BTC/USDT", "--duration", "4", env=env,
                                     cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert {"op": "subscribe", "args": ["orderbook.50.BTCUSDT"],
            "req_id": "orderbook.50.BTCUSDT"} in server.requests
    (recording,) = (tmp_path / "data" / "recordings").glob("bybit_spot_btcusdt_*.gz")
    rows = await calibrate_on(recording, tmp_path, "BTC/USDT")
    walked = [row for row in rows if row["walked_price"] != "nan"]
    assert walked and max(int(row["levels"]) for row in walked) > 1


@pytest.mark.parametrize("depth", [False])
def test_without_record_depth_only_the_top_is_subscribed(depth: bool) -> None:
    settings = with_recorded_depth(load_settings({"record": {"depth": depth}}, env_file=None))
    assert settings.venues["binance_spot"].book_depth == 1
