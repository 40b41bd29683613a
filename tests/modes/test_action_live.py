"""`--mode action --live` end to end against the fake Binance on 127.0.0.1: a stop leaves
none of our orders resting at the venue (issue 13).

The daemon runs as a real process (`python main.py`), its REST calls redirected to the fake
(`CRYPTOPIPE_VENUES__BINANCE_SPOT__REST_URL`), keys from the environment, market data
replayed from the shipped sample (no WebSocket market feed). inventory-mm quotes post-only
limits; the fake's touch is set far away so every quote rests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from daemon.trading.order_ids import is_ours
from tests.helpers.fake_binance import FakeBinance

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "adapters" / "recordings" / "samples" / "binance_spot_btcusdt_20240808_sample.gz"
# The example credentials of Binance's API documentation ("SIGNED endpoint examples").
API_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
API_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
RUN_ID = "live-sigterm"


@pytest.fixture
async def venue() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance(API_KEY, API_SECRET, balances={"BTC": "1", "USDT": "100000"})
    # Far from the sample's ~57,000 mid: post-only quotes never cross, they all rest.
    fake.best_bid, fake.best_ask = Decimal("1000.00"), Decimal("1000000.00")
    await fake.start()
    yield fake
    await fake.close()


def live_environment(url: str, data_dir: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(
        CRYPTOPIPE_DATA_DIR=str(data_dir),
        CRYPTOPIPE_METRICS__ENABLED="false",
        CRYPTOPIPE_VENUES__BYBIT_SPOT__ENABLED="false",
        CRYPTOPIPE_VENUES__BINANCE_SPOT__REST_URL=url,
        CRYPTOPIPE_VENUES__BINANCE_SPOT__API_KEY=API_KEY,
        CRYPTOPIPE_VENUES__BINANCE_SPOT__API_SECRET=API_SECRET,
        CRYPTOPIPE_EXECUTION__SHUTDOWN_CANCEL_TIMEOUT_S="20",
    )
    return environment


async def test_a_live_run_stopped_by_sigterm_leaves_none_of_our_orders_open(
        venue: FakeBinance, tmp_path: Path) -> None:
    venue.add_open_order("web_8c1f2a9d", "SELL", "0.02", "2000000.00")  # someone else's
    output = tmp_path / "daemon.log"  # a file, not a pipe nobody reads while it runs
    with output.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "main.py"), "--strategy", "inventory-mm",
            "--mode", "action", "--live", "--run-id", RUN_ID, "--feed", f"replay:{SAMPLE}",
            cwd=tmp_path, env=live_environment(venue.url, tmp_path / "data"),
            stdout=sink, stderr=asyncio.subprocess.STDOUT)
    try:
        # Wait (on the daemon, not the clock) until quotes rest at the venue.
        for _ in range(1200):
            if len([o for o in venue.open_orders() if is_ours(o.client_order_id)]) >= 2:
                break
            if process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        resting = [o.client_order_id for o in venue.open_orders()
                   if is_ours(o.client_order_id)]
        assert len(resting) >= 2, "the daemon placed no quotes at the fake venue"
        venue.cancel_faults = ["unavailable"]  # the first cancel must be retried
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = output.read_text(errors="replace")
    assert process.returncode == 0, log[-3000:]
    assert [o.client_order_id for o in venue.open_orders()] == ["web_8c1f2a9d"], log[-3000:]
    assert "cancel-all confirmed" in log
    for cid in resting:
        assert venue.by_client_id(cid).status == "CANCELED"
