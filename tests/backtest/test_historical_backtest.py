"""A backtest over Binance public data decides as the backtest over the recording it was
cut from (the issue's must-show), and `--mode backtest` takes such a file on the command
line."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from adapters.recordings.replay import ReplaySpec
from config.settings import load_settings
from daemon.backtest.engine import Backtest
from daemon.feeds import resolve_markets
from tests.helpers.historical_files import (
    BOOK_TICKER_HEADER,
    USDM_TRADES_HEADER,
    Frame,
    book_ticker_rows,
    local_ms,
    recorded_frames,
    trade_rows,
    write_csv,
)

REPO = Path(__file__).resolve().parents[2]
USDM = "binance_usdm_btcusdt_20240808.gz"
DAY = "2024-08-08"
USDM_MM = {"strategies": {"inventory_mm": {"venue": "binance_usdm",
                                           "symbol": "BTC/USDT:USDT"}},
           "venues": {"binance_usdm": {"enabled": True}}}  # paper balances: the default


async def decision_log(data_dir: Path, specs: list[ReplaySpec]) -> tuple[bytes, int]:
    settings = load_settings({"data_dir": data_dir, **USDM_MM}, env_file=None)
    # Tick and lot from the data, as the mode takes them (the same prices and sizes).
    settings = await resolve_markets(settings, specs=specs)
    result = await Backtest(settings, "inventory-mm", specs, "hist").run()
    return b"".join(path.read_bytes() for path in result.log_files), result.events


def reference_recording(path: Path, frames: list[Frame]) -> Path:
    """The cut recording at the resolution a Binance file carries: each frame's receive
    time truncated to the millisecond, and within one millisecond the bookTicker frames
    before the trades (the order the replay merges two files of equal times in)."""
    ordered = sorted(frames, key=lambda f: (local_ms(f), f.kind != "bookTicker"))
    path.write_bytes(gzip.compress(b"".join(
        b"%d %s\n" % (local_ms(f) * 1_000_000, f.line) for f in ordered)))
    return path


async def test_a_backtest_over_binance_files_equals_the_one_over_their_recording(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    """inventory-mm on binance_usdm over the bookTicker and trade frames (all 87,402) of
    the shared USD-M recording, two ways: (1) Binance public data files cut from them, a
    bookTicker and a trades zip whose local-time columns (bookTicker event_time, trades
    time) hold the recorded receive time in ms; (2) the recording itself, those frames
    with their receive times truncated to the ms (all a Binance file can carry) and,
    within a ms, the bookTicker frames first (all two files can say about order). The
    decision logs are byte-identical. What cannot be compared is left out by
    construction: sub-ms receive times, and a trade's exchange time (a trades file has one
    time column, here the receive time, so the trade's own T is not in the file; the
    strategy does not read it and no record logs it)."""
    frames = recorded_frames(shared_file(USDM), 100_000)  # all 87,402
    tickers = write_csv(tmp_path / f"BTCUSDT-bookTicker-{DAY}.zip",
                        book_ticker_rows(frames, event_time=local_ms), BOOK_TICKER_HEADER)
    trades = write_csv(tmp_path / f"BTCUSDT-trades-{DAY}.zip",
                       trade_rows(frames, spot=False, time=local_ms), USDM_TRADES_HEADER)
    reference = reference_recording(tmp_path / "binance_usdm_btcusdt_cut.gz", frames)

    from_files, events = await decision_log(tmp_path / "files",
                                            [ReplaySpec(tickers), ReplaySpec(trades)])
    from_recording, recorded = await decision_log(tmp_path / "recording",
                                                  [ReplaySpec(reference)])
    assert events == recorded == len(frames) == 87_402
    assert from_files.count(b'"type":"decision"') > 300
    assert from_files.count(b'"type":"intent"') > 100
    assert from_files.count(b'"type":"fill"') > 0
    assert from_files == from_recording


def test_the_backtest_mode_takes_a_binance_file_with_its_venue_and_symbol(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    frames = recorded_frames(shared_file(USDM), 3000, ["bookTicker"])
    data = write_csv(tmp_path / "usdm-tickers.csv", book_ticker_rows(frames))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(tmp_path / "data"),
                       CRYPTOPIPE_METRICS__ENABLED="false", CRYPTOPIPE_LOGGING__LEVEL="warning",
                       CRYPTOPIPE_VENUES__BINANCE_USDM__ENABLED="true",
                       CRYPTOPIPE_STRATEGIES__INVENTORY_MM__VENUE="binance_usdm",
                       CRYPTOPIPE_STRATEGIES__INVENTORY_MM__SYMBOL="BTC/USDT:USDT")
    done = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--strategy", "inventory-mm", "--mode",
         "backtest", "--data", f"{data}@binance_usdm:BTC/USDT:USDT"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3,000 events" in done.stdout
