"""`--mode watch`: JSON lines in the crypto-pipe shape, the table, clean shutdown."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from daemon.core.model import Quote
from daemon.market.bus import Bus
from daemon.modes.watch import render_table
from tests.helpers.damaged_files import truncated_recording, unusable_recordings

REPO = Path(__file__).resolve().parents[2]
VIEW_KEYS = {"symbol", "top_bid", "top_bid_quantity", "top_ask", "top_ask_quantity"}


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    env.update(CRYPTOPIPE_DATA_DIR=str(tmp_path / "data"), CRYPTOPIPE_METRICS__PORT="0")
    return env


def watch(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "main.py"), "--mode", "watch", *args],
                          cwd=cwd or tmp_path, env=environment(tmp_path), capture_output=True,
                          timeout=300)


def last_book_ticker(path: Path) -> dict:
    last = None
    with gzip.open(path, "rb") as handle:
        for line in handle:
            if b"@bookTicker" in line[:80]:
                last = line
    assert last is not None
    return orjson.loads(last.split(b" ", 1)[1])["data"]


def test_json_watch_of_a_replay_prints_every_update_and_ends_on_the_last_book_ticker(
    tmp_path: Path, shared_file: Callable[[str], Path]
) -> None:
    spot = shared_file("binance_spot_btcusdt_20240808.gz")
    done = watch(tmp_path, "--feed", f"replay:{spot}", "--speed", "max", "--format", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 28_040  # one per bookTicker quote, none conflated away
    views = [orjson.loads(line) for line in (lines[0], lines[-1])]
    for view in views:
        assert next(iter(view)) == "event_time" and set(view["binance_spot"]) == VIEW_KEYS
    last, expected = views[1]["binance_spot"], last_book_ticker(spot)
    assert float(last["top_bid"]) == float(expected["b"])
    assert float(last["top_bid_quantity"]) == float(expected["B"])
    assert float(last["top_ask"]) == float(expected["a"])
    assert float(last["top_ask_quantity"]) == float(expected["A"])


def test_watch_sample_with_duration_works_without_shared_data(tmp_path: Path) -> None:
    """From a copy of the package files only: no ../shared next to it."""
    checkout = tmp_path / "checkout"
    for package in ("adapters", "config", "daemon", "strategies"):
        shutil.copytree(REPO / package, checkout / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "main.py", checkout / "main.py")
    assert not (checkout.parent / "shared").exists()
    done = subprocess.run(
        [sys.executable, str(checkout / "main.py"), "--mode", "watch", "--feed", "sample",
         "--duration", "5", "--format", "json"],
        cwd=tmp_path, env=environment(tmp_path), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines, "five seconds of the sample at real time give updates"
    view = orjson.loads(lines[-1])
    assert {"binance_spot", "binance_usdm"} & set(view)
    assert (tmp_path / "data" / "ring").is_dir()  # snapshot written at shutdown


def test_sigterm_stops_watch_cleanly_with_a_snapshot(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), "--mode", "watch", "--feed", "sample",
         "--format", "json"],
        cwd=tmp_path, env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # running and publishing
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-2000:]
    assert b"snapshot_written" in stderr and b"Traceback" not in stderr


def test_table_shows_each_venue_and_the_cross_venue_spread() -> None:
    bus = Bus()
    now = 1_000_000_000_000
    bus.publish_quote(Quote("binance_spot", "BTC/USDT", 100.0, 1.0, 100.1, 2.0, 0, now - 5_000_000))
    bus.publish_quote(Quote("bybit_spot", "BTC/USDT", 100.2, 1.0, 100.3, 2.0, 0, now))
    bus.mark_stale("binance_spot", "BTC/USDT")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(bus.view, now))
    text = console.export_text()
    assert "binance_spot" in text and "bybit_spot" in text and "5 ms STALE" in text
    # only bybit is fresh, so no cross-venue figure is claimed
    assert "n/a" in text


def test_a_bad_replay_spec_or_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    for feed in ("replay:@bybit_spot:BTC/USDT", f"replay:{tmp_path / 'missing.gz'}"):
        done = watch(tmp_path, "--feed", feed, "--format", "json")
        assert done.returncode == 2, done.stderr[-2000:]
        message = done.stderr.decode().strip().splitlines()[-1]
        assert message.startswith("cryptopipe: invalid setting feed:")
        assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("damage", ["random bytes", "text file", "truncated gzip"])
def test_a_replay_that_gives_nothing_usable_exits_2_with_its_damage(
    tmp_path: Path, damage: str,
) -> None:
    """Issue 13 item 10: such a replay exited 0 in silence. Now it exits 2 with one line
    naming the file and its damage counters."""
    path = unusable_recordings(tmp_path / "files")[damage]
    done = watch(tmp_path, "--feed", f"replay:{path}", "--speed", "max", "--format", "json")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == b""
    message = done.stderr.decode().strip().splitlines()[-1]
    assert message.startswith(f"cryptopipe: invalid setting feed: nothing usable in {path}")
    assert "0 quotes, 0 trades" in message and "corrupt lines" in message
    assert b"Traceback" not in done.stderr


def test_a_replay_cut_short_prints_its_damage_and_what_it_read(tmp_path: Path) -> None:
    path = truncated_recording(tmp_path / "files")
    done = watch(tmp_path, "--feed", f"replay:{path}", "--speed", "max", "--format", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) > 100
    damage = [line for line in done.stderr.decode().splitlines()
              if line.startswith("cryptopipe: replay damage:")]
    assert len(damage) == 1 and "truncated gzip stream" in damage[0]
