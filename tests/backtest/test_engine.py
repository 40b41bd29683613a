"""`--mode backtest`: deterministic replays through the live strategy code, reported by
the post-mortem exactly like a live run."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import strategies
from adapters.recordings.replay import ReplaySpec
from config.settings import load_settings
from daemon.backtest.engine import (
    Backtest,
    BacktestResult,
    ClientFlow,
    SimulatedClock,
)
from daemon.backtest.skip import UndeclaredMarket
from daemon.core.model import ClientFill, Side
from daemon.postmortem.reader import LogFilter
from daemon.postmortem.report import build_report
from tests.helpers.damaged_files import truncated_recording, unusable_recordings

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "adapters" / "recordings" / "samples"
SAMPLE_SPOT = SAMPLES / "binance_spot_btcusdt_20240808_sample.gz"
SAMPLE_USDM = SAMPLES / "binance_usdm_btcusdt_20240808_sample.gz"


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
    # Quotes inside the fees (opted out of the fee floor): the 75 s sample then fills,
    # and fills are what this reconciles.
    backtest(data_dir, "inventory-mm", "mm", SAMPLE_SPOT,
             CRYPTOPIPE_STRATEGIES__INVENTORY_MM__ALLOW_QUOTES_INSIDE_FEES="true")
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
                        if r["type"] == "decision" and "client_qty" in r["inputs"]
                        and r["strategy"] == "internalize"]  # not its always-hedge twin's
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
    from daemon.modes.progress import RunProgress

    plain = RunProgress("backtest", lambda: None, terminal=False)
    plain.__enter__()
    assert plain._bar is None  # progress lines instead (tests/modes/test_progress.py)
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


# -- the fast path: decoded-event cache and exact skip (issue #8) ---------------------------


async def run_engine(data_dir: Path, strategy: str, specs: list[ReplaySpec], *,
                     cache: bool, skip: bool = True, quiet: bool = False,
                     run_id: str = "parity", **overrides: Any) -> tuple[BacktestResult, bytes]:
    """One in-process backtest; its result and decision log (all files, in order). Quiet
    rows (daemon/core/quiet.py) only when asked for: these tests pin the event paths."""
    settings = load_settings({"data_dir": data_dir, "backtest": {"cache": cache},
                              **overrides}, env_file=None)
    result = await Backtest(settings, strategy, specs, run_id, skip=skip, quiet=quiet).run()
    return result, b"".join(path.read_bytes() for path in result.log_files)


async def assert_fast_path_is_exact(tmp_path: Path, strategy: str, specs: list[ReplaySpec],
                                    **overrides: Any) -> dict[str, BacktestResult]:
    """Frame by frame without the cache, building the cache, reading it (with and without
    the skip, event by event and with quiet rows checked in bulk): the same decision log,
    byte for byte, and the same counts."""
    results: dict[str, BacktestResult] = {}
    logs: dict[str, bytes] = {}
    runs = (("frames", False, True, False), ("built", True, True, False),
            ("hit", True, True, False), ("hit, no skip", True, False, False),
            ("hit, quiet", True, True, True), ("hit, no skip, quiet", True, False, True))
    for name, cache, skip, quiet in runs:
        data_dir = tmp_path / name.replace(", ", "-").replace(" ", "-")
        if name.startswith("hit"):  # the cache built by the run before, nothing else
            shutil.copytree(tmp_path / "built" / "cache", data_dir / "cache")
        results[name], logs[name] = await run_engine(data_dir, strategy, specs, cache=cache,
                                                     skip=skip, quiet=quiet, **overrides)
    assert [r.cache for r in results.values()] == ["off", "built"] + ["hit"] * 4
    assert logs["frames"], "no decision log"
    for name in ("built", "hit", "hit, no skip", "hit, quiet", "hit, no skip, quiet"):
        assert logs[name] == logs["frames"], f"{strategy}: {name} differs from the frames"
        for figure in ("events", "quotes", "trades", "records", "first_ts_ns", "last_ts_ns",
                       "corrupt_lines", "dropped", "client_fills", "client_fills_unpriced"):
            assert getattr(results[name], figure) == getattr(results["frames"], figure), figure
    assert results["frames"].processed == results["frames"].events
    assert results["hit, no skip"].processed == results["hit"].events
    for name in ("hit, quiet", "hit, no skip, quiet"):
        quiet = results[name]  # a strategy that can tell its quiet rows skips nothing
        assert quiet.skipped == 0 or quiet.quiet == 0
    return results


async def test_inventory_mm_decides_the_same_from_the_cache_with_the_skip(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    specs = [ReplaySpec(shared_file("binance_spot_btcusdt_20240808.gz")),
             ReplaySpec(shared_file("binance_usdm_btcusdt_20240808.gz"))]
    results = await assert_fast_path_is_exact(tmp_path, "inventory-mm", specs)
    hit = results["hit"]
    assert hit.events == 125_199
    # The 87k USD-M events hardly ever run, nor the 9.8k spot trades (k is set, so only
    # the paper executor looks at them): only where a timer, order or snapshot was due,
    # or a trade printed through a resting order. Every one of the 28k spot quotes runs.
    assert 28_040 < hit.processed < 30_000
    # Checked in bulk, most of them change nothing but the clocks and the latest quotes:
    # only those where the strategy, the paper executor or the risk gate acts, or where
    # something is due, run as events (with each quiet stretch's last quote per market).
    for name in ("hit, quiet", "hit, no skip, quiet"):
        assert results[name].processed < 3_000 and results[name].skipped == 0


async def test_arbitrage_decides_the_same_from_the_cache(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    specs = [ReplaySpec(shared_file("binance_spot_btcusdt_20240808.gz")),
             ReplaySpec(shared_file("binance_usdm_btcusdt_20240808.gz"), "bybit_spot",
                        "BTC/USDT")]
    results = await assert_fast_path_is_exact(tmp_path, "arbitrage", specs)
    hit = results["hit"]  # both markets are its legs: every quote runs, trades rarely
    assert hit.quotes <= hit.processed < hit.quotes + 1_000


@pytest.mark.parametrize("k", [9.0, "auto"])
async def test_inventory_mm_on_the_sample_decides_the_same_with_or_without_trades(
    tmp_path: Path, k: float | str,
) -> None:
    """With k set the strategy reads no trades: its market's trades run only where they
    fill a resting order or something is due. With k fitted from trades, all of them run."""
    specs = [ReplaySpec(SAMPLE_SPOT), ReplaySpec(SAMPLE_USDM)]
    results = await assert_fast_path_is_exact(
        tmp_path, "inventory-mm", specs, strategies={"inventory_mm": {"k_bps": k}})
    hit = results["hit"]
    spot_events = 6_299 + 1_556  # the spot sample's quotes and trades
    if k == "auto":
        assert spot_events < hit.processed < spot_events + 300
    else:
        assert hit.processed < spot_events - 1_000


async def test_internalize_with_client_flow_decides_the_same_from_the_cache(
    tmp_path: Path,
) -> None:
    flow = {"symbol": "BTC/USDT", "synthetic_mean_qty": 0.02, "synthetic_rate_hz": 1.0}
    specs = [ReplaySpec(SAMPLE_SPOT), ReplaySpec(SAMPLE_USDM)]
    results = await assert_fast_path_is_exact(
        tmp_path, "internalize", specs, strategies={"internalize": flow})
    hit = results["hit"]
    assert hit.client_fills > 20 and hit.processed < hit.events


@pytest.mark.parametrize("latency_ms", [20.0, 0.0])
async def test_out_of_order_receive_times_are_skipped_exactly(tmp_path: Path,
                                                              latency_ms: float) -> None:
    """Receive times that step back now and then (say two connections writing one file),
    in a file that also carries a market the strategy does not trade: the clocks that the
    skipped events would have moved are caught up (without landing an order sent at the
    latest time with no latency: only an event at or after that time lands it), and a
    row whose own time is early is never taken for one at which something is due."""
    lines = gzip.decompress(SAMPLE_SPOT.read_bytes()).splitlines(keepends=True)
    for index in range(len(lines)):
        stamp, _, frame = lines[index].partition(b" ")
        if index % 3 == 0:  # a third of the frames become ETHUSDT: skipped
            frame = frame.replace(b'"s":"BTCUSDT"', b'"s":"ETHUSDT"')
        if index % 7 == 0:  # 30 ms back
            stamp = b"%d" % (int(stamp) - 30_000_000)
        lines[index] = b"%s %s" % (stamp, frame)
    mixed = tmp_path / "binance_spot_mixed.gz"
    mixed.write_bytes(gzip.compress(b"".join(lines)))
    specs = [ReplaySpec(mixed), ReplaySpec(SAMPLE_USDM)]
    latency = {"submit_latency_ms": latency_ms, "cancel_latency_ms": latency_ms}
    results = await assert_fast_path_is_exact(tmp_path / "runs", "inventory-mm", specs,
                                              execution=latency)
    assert results["hit"].processed < results["hit"].events


async def test_a_strategy_that_reads_a_market_it_did_not_declare_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def mislabelled(settings: Any) -> Any:
        strategy = strategies.build_inventory_mm(settings)
        strategy.market_keys = frozenset({("binance_usdm", "BTC/USDT:USDT")})
        return strategy

    monkeypatch.setitem(strategies.STRATEGIES, "inventory-mm", mislabelled)
    specs = [ReplaySpec(SAMPLE_SPOT), ReplaySpec(SAMPLE_USDM)]
    with pytest.raises(UndeclaredMarket, match="binance_spot BTC/USDT"):
        await run_engine(tmp_path, "inventory-mm", specs, cache=True)
    # Without the skip nothing is refused: the promise only matters to it.
    result, _ = await run_engine(tmp_path / "no-skip", "inventory-mm", specs, cache=True,
                                 skip=False)
    assert result.processed == result.events


def test_the_mode_says_whether_the_cache_was_built_hit_or_off(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    built = backtest(data_dir, "inventory-mm", "one", SAMPLE_SPOT, SAMPLE_USDM)
    assert "cache built" in built.stdout
    hit = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "two",
                    "--format", "json", "--data", str(SAMPLE_SPOT), str(SAMPLE_USDM)], data_dir)
    figures = orjson.loads(hit.stdout)
    assert figures["cache"] == "hit" and figures["events"] == 25_060
    assert figures["processed"] + figures["quiet"] + figures["skipped"] == figures["events"]
    assert figures["quiet"] > 20_000  # most events change nothing (quiet rows, on by default)
    skipping = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "four",
                         "--format", "json", "--data", str(SAMPLE_SPOT), str(SAMPLE_USDM)],
                        data_dir, CRYPTOPIPE_BACKTEST__QUIET_ROWS="false")
    figures = orjson.loads(skipping.stdout)
    assert figures["processed"] + figures["skipped"] == figures["events"]
    assert figures["skipped"] > 10_000 and figures["quiet"] == 0  # most USD-M events
    off = backtest(data_dir, "inventory-mm", "three", SAMPLE_SPOT, SAMPLE_USDM,
                   CRYPTOPIPE_BACKTEST__CACHE="false")
    assert "cache off" in off.stdout and " 0 skipped" in off.stdout


def test_a_client_flow_file_with_bad_rows_is_reported_in_the_summary(tmp_path: Path) -> None:
    """Issue 13 item 3: a non-UTF-8 row, qty 1e308, time 1e300: skipped, counted, reported
    in the run summary; never a traceback."""
    flow = tmp_path / "flow.csv"
    flow.write_bytes(b"time,side,qty,price\n"
                     b"2024-08-08T00:00:01Z,buy,0.01,60000\n"
                     b"2024-08-08T00:00:02Z,buy,0.01,6\xe90000\n"
                     b"2024-08-08T00:00:03Z,sell,1e308,60000\n"
                     b"1e300,sell,0.01,60000\n")
    done = backtest(tmp_path / "data", "internalize", "badrows", SAMPLE_SPOT,
                    CRYPTOPIPE_STRATEGIES__INTERNALIZE__SYMBOL="BTC/USDT",
                    CRYPTOPIPE_STRATEGIES__INTERNALIZE__SOURCE="file",
                    CRYPTOPIPE_STRATEGIES__INTERNALIZE__FILE=str(flow))
    assert "Traceback" not in done.stderr
    assert "client fills skipped (unusable rows): 3 (1 encoding, 1 qty, 1 time)" in done.stdout


@pytest.mark.parametrize("damage", ["negative ask", "flipped bytes"])
async def test_a_cache_file_with_overwritten_bytes_is_rebuilt_not_used(
    tmp_path: Path, damage: str,
) -> None:
    """Issue 13 item 10: bytes overwritten inside a cache file's columns still parse as
    Arrow, and a "cache hit" gave another decision log. The file now fails its checks:
    a warning, the cache rebuilt, and the decision log of the clean run."""
    from structlog.testing import capture_logs

    from daemon.backtest.cache import BacktestData, cache_path

    specs = [ReplaySpec(SAMPLE_SPOT), ReplaySpec(SAMPLE_USDM)]
    clean, clean_log = await run_engine(tmp_path / "clean", "inventory-mm", specs, cache=True)
    assert clean.cache == "built" and clean_log
    data_dir = tmp_path / "damaged"
    shutil.copytree(tmp_path / "clean" / "cache", data_dir / "cache")
    path = cache_path(data_dir, specs)
    content = bytearray(path.read_bytes())
    data = BacktestData.read(path)
    quotes = np.flatnonzero(data.kind == 0)
    if damage == "negative ask":  # the ask of 50 quotes from the middle on, negated
        for row in quotes[len(quotes) // 2:][:50].tolist():
            value = struct.pack("<d", data.ask[row])
            at = content.find(value)
            content[at:at + 8] = struct.pack("<d", -data.ask[row])
    else:  # one byte of a bid and of a receive time, xor'ed
        for column in (data.price, data.local_ts_ns):
            value = column[quotes[len(quotes) // 2]].tobytes()
            at = content.find(value)
            content[at + 5] ^= 0x5A
    del data
    path.write_bytes(bytes(content))
    with capture_logs() as logs:
        result, log = await run_engine(data_dir, "inventory-mm", specs, cache=True)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["backtest_cache_unusable"]
    assert result.cache == "built"
    assert log == clean_log
    hit, again = await run_engine(data_dir, "inventory-mm", specs, cache=True, run_id="again")
    assert hit.cache == "hit" and again.replace(b'"again"', b'"parity"') == clean_log


@pytest.mark.parametrize("damage", ["random bytes", "text file", "truncated gzip"])
@pytest.mark.parametrize("cache", ["true", "false"])
def test_a_backtest_of_nothing_usable_exits_2_with_its_damage(
    tmp_path: Path, damage: str, cache: str,
) -> None:
    """Issue 13 item 10: such a backtest exited 0 in silence with 0 events. Now it exits 2
    with one line naming the file and its damage counters, and writes no decision log."""
    path = unusable_recordings(tmp_path / "files")[damage]
    data_dir = tmp_path / "data"
    for _ in range(2):  # the second run from the cache the first one built
        done = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id",
                         "bad", "--data", str(path)], data_dir, CRYPTOPIPE_BACKTEST__CACHE=cache)
        assert done.returncode == 2, done.stderr[-2000:]
        message = done.stderr.strip().splitlines()[-1]
        assert message.startswith(f"cryptopipe: --data: nothing usable in {path}")
        assert "0 quotes, 0 trades" in message and "Traceback" not in done.stderr
        assert log_bytes(data_dir, "bad") == {}


def test_a_backtest_of_a_recording_cut_short_reports_its_damage(tmp_path: Path) -> None:
    path = truncated_recording(tmp_path / "files")
    done = backtest(tmp_path / "data", "inventory-mm", "cut", path)
    damage = [line for line in done.stderr.splitlines()
              if line.startswith("cryptopipe: replay damage:")]
    assert len(damage) == 1 and "truncated gzip stream" in damage[0]
    figures = orjson.loads(run_main(["--strategy", "inventory-mm", "--mode", "backtest",
                                     "--run-id", "cut-json", "--format", "json", "--data",
                                     str(path)], tmp_path / "data").stdout)
    assert "truncated gzip stream" in figures["damage"] and figures["events"] > 100


#: tick and lot for ETH/USDT (the recording has none of it), BTC/USDT kept.
ETH_MARKETS = ('{"BTC/USDT": {"tick": 0.01, "lot": 0.00001},'
               ' "ETH/USDT": {"tick": 0.01, "lot": 0.0001}}')


@pytest.mark.parametrize("cache", ["true", "false"])
def test_backtest_of_a_market_not_in_the_data_exits_2_naming_what_is_there(
    tmp_path: Path, cache: str,
) -> None:
    """A strategy on ETH/USDT over a BTC/USDT recording: one line, exit 2, no summary."""
    done = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "eth",
                     "--data", str(SAMPLE_SPOT)], tmp_path / "data",
                    CRYPTOPIPE_STRATEGIES__INVENTORY_MM__SYMBOL="ETH/USDT",
                    CRYPTOPIPE_VENUES__BINANCE_SPOT__MARKETS=ETH_MARKETS,
                    CRYPTOPIPE_BACKTEST__CACHE=cache)
    assert done.returncode == 2, done.stderr[-2000:]
    assert (f"cryptopipe: --data: no data for binance_spot ETH/USDT in {SAMPLE_SPOT.name} "
            "(markets there: binance_spot BTC/USDT)") in done.stderr
    assert "Traceback" not in done.stderr


def test_backtest_with_some_markets_missing_runs_and_warns_naming_them(tmp_path: Path) -> None:
    """arbitrage trades binance_spot and bybit_spot; the spot sample has only the first."""
    done = backtest(tmp_path / "data", "arbitrage", "half", SAMPLE_SPOT)
    assert (f"cryptopipe: warning: --data: no data for bybit_spot BTC/USDT in {SAMPLE_SPOT.name}"
            " (markets there: binance_spot BTC/USDT)") in done.stderr


async def test_a_backtest_publishes_configured_crosses_from_legs_it_would_skip(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    # inventory-mm trades the spot market only: without the cross, the exact skip leaves
    # the USD-M quotes out; as a leg of a cross, every one of them must reach the bus.
    specs = [ReplaySpec(shared_file("binance_spot_btcusdt_20240808.gz")),
             ReplaySpec(shared_file("binance_usdm_btcusdt_20240808.gz"))]
    cross = {"symbol": "BTC/BTCPERP", "base_leg": "binance_spot:BTC/USDT",
             "quote_leg": "binance_usdm:BTC/USDT:USDT"}
    published = {}
    for name, cache in (("frames", False), ("built", True), ("hit", True)):
        data_dir = tmp_path / name
        if name == "hit":
            shutil.copytree(tmp_path / "built" / "cache", data_dir / "cache")
        settings = load_settings({"data_dir": data_dir, "backtest": {"cache": cache},
                                  "synthetic": {"crosses": [cross]}}, env_file=None)
        engine = Backtest(settings, "inventory-mm", specs, "cross")
        await engine.run()
        published[name] = engine.bus.published_by("synthetic")
        assert engine.rings is not None and engine.bus.view.quote("synthetic", "BTC/BTCPERP")
    assert published["frames"] > 10_000
    assert published["built"] == published["hit"] == published["frames"]
