"""`--mode action` on a replay at `--speed max` decides exactly as `--mode backtest` does.

Where the inputs are identical (the same file, settings and run id), the decision logs must
be identical record for record: every decision with its inputs, every order, ack, fill
(price, qty, fee), balance snapshot and the run's end. Issue 14 found inventory-mm on the
ETH/USDT recording at 19 fills / -2.77 in action and 15 / -2.61 in a backtest: the action
loop's bus subscription conflated quotes (the strategy saw the newest quote per market
after a burst, and the ring and consolidated view held events it had not been handed
yet), and the end of the run neither let the last cancels through nor snapshotted
balances after them.

The differences that remain are by design and are tested here too: a paced replay
(`--speed N`) runs the live loop, which conflates as live traffic would (README "Action
replay vs backtest").
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import Quote
from daemon.market.ringbuffer import RingStore

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SPOT = (REPO / "adapters" / "recordings" / "samples"
               / "binance_spot_btcusdt_20240808_sample.gz")

#: inventory-mm on Binance USD-M ETH/USDT, with quotes inside the fees and k_bps 9 (the
#: fee floor opted out) so the three minutes of the recording fill a few times each way.
ETH_CONFIG = """\
symbols = ["ETH/USDT:USDT"]
[venues.binance_usdm]
enabled = true
[venues.binance_usdm.balances]
USDT = 50000.0
[venues.binance_usdm.markets."ETH/USDT:USDT"]
tick = 0.01
lot = 0.001
[strategies.inventory_mm]
venue = "binance_usdm"
symbol = "ETH/USDT:USDT"
order_qty = 0.01
max_inventory = 0.1
allow_quotes_inside_fees = true
k_bps = 9.0
"""
#: inventory-mm on the shipped BTC/USDT spot market, likewise inside the fees.
BTC_CONFIG = """\
[strategies.inventory_mm]
allow_quotes_inside_fees = true
k_bps = 9.0
"""


def run_main(args: list[str], data_dir: Path, config: str,
             strategy: str = "inventory-mm") -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    config_file = data_dir / "settings.toml"
    config_file.write_text(config)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
                       CRYPTOPIPE_LOGGING__LEVEL="warning")
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "--strategy", strategy,
                           "--run-id", "parity", "--format", "json", "--config",
                           str(config_file), *args],
                          cwd=data_dir, env=environment, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout)


def decision_log(data_dir: Path) -> list[dict[str, Any]]:
    """The run's records, day after day (a recording that crosses midnight has two)."""
    paths = sorted((data_dir / "decisions").glob("*/parity.jsonl"))
    assert paths
    return [orjson.loads(line) for path in paths for line in path.read_bytes().splitlines()]


def backtest(data: Path | str, data_dir: Path, config: str,
             strategy: str = "inventory-mm") -> list[dict[str, Any]]:
    run_main(["--mode", "backtest", "--data", *str(data).split(",")], data_dir, config,
             strategy)
    return decision_log(data_dir)


def action(data: Path | str, data_dir: Path, config: str, speed: str = "max", *more: str,
           strategy: str = "inventory-mm") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    figures = run_main(["--mode", "action", "--speed", speed, "--feed", f"replay:{data}",
                        *more], data_dir, config, strategy)
    return figures, decision_log(data_dir)


def outcome(records: list[dict[str, Any]]) -> tuple[Any, ...]:
    """What a trader compares first: fills (time, side, price, qty), fees, and each
    venue's last balance snapshot."""
    fills = [(r["ts_ns"], r["side"], r["price"], r["qty"]) for r in records
             if r["type"] == "fill"]
    fees = sum(r["fee"] for r in records if r["type"] == "fill")
    balances = {r["venue"]: r["balances"] for r in records if r["type"] == "balance"}
    return fills, fees, balances


def assert_same_log(replayed: list[dict[str, Any]], backtested: list[dict[str, Any]],
                    min_fills: int = 5) -> None:
    kinds = Counter(record["type"] for record in backtested)
    assert kinds["fill"] >= min_fills, kinds  # not equal by doing nothing
    assert outcome(replayed) == outcome(backtested)
    for index, (mine, theirs) in enumerate(zip(replayed, backtested, strict=False)):
        assert mine == theirs, f"record {index} differs"
    assert len(replayed) == len(backtested)


@pytest.mark.parametrize(("name", "config"), [
    ("binance_usdm_ethusdt_20240718.gz", ETH_CONFIG),
    ("binance_spot_btcusdt_20240808.gz", BTC_CONFIG),
])
def test_a_max_speed_replay_decides_as_a_backtest_of_the_same_file(
    tmp_path: Path, shared_file: Callable[[str], Path], name: str, config: str,
) -> None:
    data = shared_file(name)
    expected = backtest(data, tmp_path / "backtest", config)
    figures, replayed = action(data, tmp_path / "action", config)
    assert_same_log(replayed, expected)
    # Every event reached the strategy, in the engine's order: none was conflated.
    assert figures["dispatch"] == "every event"
    assert figures["delivered"] == figures["events"] and figures["conflated"] == 0


SAMPLE_USDM = SAMPLE_SPOT.with_name("binance_usdm_btcusdt_20240808_sample.gz")
#: Arbitrage between the spot sample and the USD-M sample presented as Bybit spot, with no
#: fees: the 4 bps gap trades (as in tests/modes/test_action.py).
ARBITRAGE_CONFIG = """\
[strategies.arbitrage]
slippage_bps = 0
min_net_edge_bps = 1
[venues.binance_spot]
taker_fee_bps = 0
maker_fee_bps = 0
[venues.bybit_spot]
taker_fee_bps = 0
maker_fee_bps = 0
"""
#: Internalize-or-hedge on the spot sample against seeded synthetic client flow.
INTERNALIZE_CONFIG = """\
[strategies.internalize]
venue = "binance_spot"
symbol = "BTC/USDT"
source = "synthetic"
synthetic_mean_qty = 0.02
"""


@pytest.mark.parametrize(("strategy", "data", "config", "min_fills"), [
    ("arbitrage", f"{SAMPLE_SPOT},{SAMPLE_USDM}@bybit_spot:BTC/USDT", ARBITRAGE_CONFIG, 10),
    ("internalize", str(SAMPLE_SPOT), INTERNALIZE_CONFIG, 0),
])
def test_the_other_strategies_decide_alike_on_a_max_speed_replay_and_a_backtest(
    tmp_path: Path, strategy: str, data: str, config: str, min_fills: int,
) -> None:
    """Two files merged and relabelled (arbitrage), and client flow delivered between
    market events (internalize): the same log both ways."""
    expected = backtest(data, tmp_path / "backtest", config, strategy)
    _, replayed = action(data, tmp_path / "action", config, strategy=strategy)
    assert_same_log(replayed, expected, min_fills)
    if strategy == "internalize":  # client fills decided, the same ones
        client = [r for r in expected if r["type"] == "decision"
                  and (r.get("inputs") or {}).get("trigger") == "client_fill"]
        assert len(client) > 20


def test_a_paced_replay_runs_the_live_loop_and_says_so(tmp_path: Path) -> None:
    """At `--speed N` the replay is paced like the venue: the strategy runs the live loop,
    on a conflating bus subscription (a burst of quotes of one market reaches it as the
    newest one, as live). The summary says which dispatch ran."""
    figures, _ = action(SAMPLE_SPOT, tmp_path / "paced", BTC_CONFIG, "50", "--duration", "3")
    assert figures["dispatch"] == "conflated (live loop)"
    assert figures["delivered"] + figures["conflated"] <= figures["events"]


def shifted_sample(path: Path, start_ns: int) -> Path:
    """The shipped spot sample with its receive times moved to start at `start_ns`."""
    lines = gzip.decompress(SAMPLE_SPOT.read_bytes()).splitlines()
    shift = start_ns - int(lines[0].split(b" ", 1)[0])
    stamped = (b"%d %s" % (int(stamp) + shift, frame)
               for stamp, frame in (line.split(b" ", 1) for line in lines))
    path.write_bytes(gzip.compress(b"\n".join(stamped) + b"\n"))
    return path


def test_a_replay_starts_from_the_recording_alone_not_the_live_ring_snapshot(
    tmp_path: Path,
) -> None:
    """A live run left its ring snapshot in the data dir, newer than the recording being
    replayed (both within retention). The replay reloaded it: every replayed row was then
    older than the ring's newest and was clamped to that time, the volatility window stayed
    empty, and the strategy never quoted (1 decision against the backtest's ~100). A replay
    starts cold, as a backtest does, and leaves the live snapshot as it was."""
    hour = 3_600 * NS_PER_SECOND
    recording = shifted_sample(tmp_path / "recording.gz", time.time_ns() - 2 * hour)
    data_dir = tmp_path / "action"
    live = RingStore(retention_s=86_400.0)
    live_at = time.time_ns() - hour
    append = live.quote_route("binance_spot", "BTC/USDT")
    for n in range(100):
        append(Quote("binance_spot", "BTC/USDT", 61_000.0 + n, 1.0, 61_001.0 + n, 1.0,
                     live_at + n * NS_PER_SECOND, live_at + n * NS_PER_SECOND))
    live.snapshot(data_dir / "ring")
    before = {path.name: path.read_bytes() for path in (data_dir / "ring").iterdir()}
    expected = backtest(recording, tmp_path / "backtest", BTC_CONFIG)
    _, replayed = action(recording, data_dir, BTC_CONFIG)
    assert_same_log(replayed, expected)
    assert {path.name: path.read_bytes() for path in (data_dir / "ring").iterdir()} == before


def test_a_paced_replay_that_runs_to_its_end_closes_its_orders_as_a_backtest(
    tmp_path: Path,
) -> None:
    """The end of the data is the backtest's at any speed: the orders still open are
    cancelled and the cancels let through, then the balances are snapshotted. (Before,
    a replay ended with the cancels sent and never answered: orders open in the log.)"""
    _, records = action(SAMPLE_SPOT, tmp_path / "paced", BTC_CONFIG, "1000")
    orders = {r["client_order_id"] for r in records if r["type"] == "intent"}
    closed = {r["client_order_id"] for r in records
              if r["type"] == "ack" and r["status"] in ("filled", "canceled", "rejected",
                                                        "expired")}
    assert orders and orders <= closed
    last_ack = max(r["ts_ns"] for r in records if r["type"] == "ack")
    balances = [r for r in records if r["type"] == "balance"]
    assert balances[-1]["ts_ns"] >= last_ack
