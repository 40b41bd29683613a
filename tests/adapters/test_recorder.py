"""Recorder: the shared-data format, hourly rotation, crash safety, and recordings that
replay (through adapters/recordings/replay.py) to exactly the quotes the live stream published."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import sys
import threading
from pathlib import Path

import orjson
import pytest

from adapters.binance.session import BinanceAdapter
from adapters.bybit.session import BybitAdapter
from adapters.common.stats import VenueStats
from adapters.common.timings import BackoffPolicy, FeedTimings
from adapters.recordings.recorder import NS_PER_HOUR, Recorder, recording_path
from adapters.recordings.replay import FileStats, ReplayFeed, ReplaySpec, iter_frames
from config.settings import VenueSettings, load_settings
from daemon.core.model import Quote, Trade
from daemon.market.bus import Bus
from tests.helpers.venue_servers import (
    BinanceServer,
    BybitServer,
    Fault,
    binance_tape,
    bybit_events_from_binance,
    running,
    wait_until,
)

SPOT_FILE = "binance_spot_btcusdt_20240808.gz"
REPO = Path(__file__).resolve().parents[2]
HOUR_23 = 1_723_158_000 * 1_000_000_000  # 2024-08-08T23:00:00Z
FAST = FeedTimings(silence_timeout_s=5.0, stale_after_s=5.0,
                   backoff=BackoffPolicy(initial_s=0.01, max_s=0.05))


@pytest.fixture(scope="module")
def spot_tape(request: pytest.FixtureRequest) -> list:
    return binance_tape(request.getfixturevalue("shared_file")(SPOT_FILE))[0]


def lines_of(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as handle:
        return handle.read().splitlines()


def gzip_members(path: Path) -> int:
    """Number of gzip members (each flush appends one)."""
    import zlib

    data, members = path.read_bytes(), 0
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        inflater.decompress(data)
        data = inflater.unused_data
        members += 1
    return members


def test_file_name_and_line_format(tmp_path: Path) -> None:
    assert recording_path(tmp_path, "bybit_spot", ["BTC/USDT"], HOUR_23).name == (
        "bybit_spot_btcusdt_20240808T23.gz")
    assert recording_path(tmp_path, "binance_usdm", ["BTC/USDT:USDT", "ETH/USDT:USDT"],
                          HOUR_23).name == "binance_usdm_multi_20240808T23.gz"
    recorder = Recorder(tmp_path, run_id="run-1", fsync=False)
    recording = recorder.open_venue("binance_spot", ["BTC/USDT"])
    recording.write(b'{"stream":"btcusdt@trade","data":{}}', HOUR_23 + 5)
    recording.write(b'{"a":\n1}', HOUR_23 + 6)  # a raw newline must not split the line
    recorder.flush_now()
    recording.write(b'{"result":null,"id":1}', HOUR_23 + 7)
    recorder.close()
    path = tmp_path / "binance_spot_btcusdt_20240808T23.gz"
    lines = lines_of(path)
    assert len(lines) == 4 and gzip_members(path) == 2
    session = orjson.loads(lines[0].partition(b" ")[2])
    assert session["cryptopipe"] == "session" and session["venue"] == "binance_spot"
    assert session["symbols"] == ["BTC/USDT"] and session["run_id"] == "run-1"
    assert lines[1] == b'%d {"stream":"btcusdt@trade","data":{}}' % (HOUR_23 + 5)
    assert lines[2] == b'%d {"a": 1}' % (HOUR_23 + 6)


def test_rotates_hourly_on_receive_time(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, fsync=False)
    recording = recorder.open_venue("bybit_spot", ["BTC/USDT"])
    recording.write(b'{"topic":"x"}', HOUR_23 + NS_PER_HOUR - 1)
    recording.write(b'{"topic":"y"}', HOUR_23 + NS_PER_HOUR)  # next hour, next day
    recorder.close()
    first, second = recorder.paths()
    assert first.name == "bybit_spot_btcusdt_20240808T23.gz"
    assert second.name == "bybit_spot_btcusdt_20240809T00.gz"
    for path in (first, second):  # each file opens with its own session line
        assert b'"cryptopipe":"session"' in lines_of(path)[0]
        assert len(lines_of(path)) == 2


def test_binary_frames_become_meta_lines(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, fsync=False)
    recording = recorder.open_venue("binance_spot", ["BTC/USDT"])
    recording.write(b"\x89\xff\x00garbage", HOUR_23)
    recording.write('{"price":"café"}'.encode(), HOUR_23 + 1)  # UTF-8 is fine
    recorder.close()
    lines = lines_of(recorder.paths()[0])
    assert b'"cryptopipe":"undecodable_frame"' in lines[1]
    assert lines[2].endswith('{"price":"café"}'.encode())
    assert recording.skipped_binary == 1


def test_a_crash_loses_at_most_the_last_member(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, fsync=False)
    recording = recorder.open_venue("binance_spot", ["BTC/USDT"])
    for second in range(5):  # five flushes: five members
        for i in range(100):
            recording.write(b'{"stream":"btcusdt@trade","data":{"i":%d}}' % i,
                            HOUR_23 + second * 1_000_000_000 + i)
        recorder.flush_now()
    path = recorder.paths()[0]
    size_before_last = path.stat().st_size
    for i in range(100):
        recording.write(b'{"stream":"btcusdt@trade","data":{"i":%d}}' % i, HOUR_23 + 9 + i)
    recorder.close()
    # The crash: the last member is cut in the middle of being written.
    data = path.read_bytes()
    path.write_bytes(data[: size_before_last + (len(data) - size_before_last) // 2])
    stats = FileStats(str(path))
    frames = [f for _, f, meta in iter_frames(path, stats) if meta.session is None]
    assert len(frames) >= 500  # every earlier flush is intact
    assert stats.damage is not None


async def test_a_flush_cancelled_before_its_write_starts_still_writes(tmp_path: Path) -> None:
    """Stopping the flush loop while the writer thread is busy must not drop the batch it
    had just taken (the asyncio cancel used to cancel the queued write: lost frames)."""
    recorder = Recorder(tmp_path, fsync=False)
    recording = recorder.open_venue("binance_spot", ["BTC/USDT"])
    for i in range(100):
        recording.write(b'{"stream":"btcusdt@trade","data":{"i":%d}}' % i, HOUR_23 + i)
    writer_busy = threading.Event()
    recorder._writer.submit(writer_busy.wait, 10)  # an earlier write still in progress
    flush = asyncio.create_task(recorder.flush())
    await asyncio.sleep(0.01)  # the batch is taken and queued behind the busy write
    flush.cancel()
    await asyncio.gather(flush, return_exceptions=True)
    writer_busy.set()
    recorder.close()
    frames = [f for _, f, meta in iter_frames(recorder.paths()[0]) if meta.session is None]
    assert len(frames) == 100


async def test_recording_replays_to_the_same_quotes_binance(spot_tape, tmp_path: Path) -> None:
    tape = spot_tape[:8_000]
    recorder = Recorder(tmp_path / "recordings", fsync=False, flush_interval_s=0.05)
    bus = Bus()
    live_quotes: list[Quote] = []
    live_trades: list[Trade] = []
    bus.add_sink(on_quote=live_quotes.append, on_trade=live_trades.append)
    async with BinanceServer(tape, faults={3_000: Fault("drop")}) as server:
        settings = VenueSettings(enabled=True, feed="native", market_type="spot",
                                 ws_url=server.ws_url, rest_url=server.rest_url)
        recording = recorder.open_venue("binance_spot", ["BTC/USDT"])
        adapter = BinanceAdapter("binance_spot", settings, ["BTC/USDT"], bus, timings=FAST,
                                 frame_tap=recording.write, listeners=[recording.on_event],
                                 stats=VenueStats("binance_spot"))
        flusher = asyncio.create_task(recorder.run())
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 30)
            await wait_until(lambda: live_quotes and live_quotes[-1].seq == _last_u(tape),
                             what="the last quote")
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
    replayed = await _replay(recorder.paths())
    assert _quote_rows(replayed[0]) == _quote_rows(live_quotes)
    assert [(t.price, t.qty, t.side, t.trade_id, t.local_ts_ns) for t in replayed[1]] == [
        (t.price, t.qty, t.side, t.trade_id, t.local_ts_ns) for t in live_trades]
    kinds = [meta.session["cryptopipe"] for _, _, meta in iter_frames(recorder.paths()[0])
             if meta.session is not None]
    assert kinds[:2] == ["session", "connect"]
    assert kinds.count("connect") == 2 and "disconnect" in kinds


async def test_recording_replays_to_the_same_quotes_bybit(spot_tape, tmp_path: Path) -> None:
    events = bybit_events_from_binance(spot_tape[:6_000])
    recorder = Recorder(tmp_path, fsync=False)
    bus = Bus()
    live_quotes: list[Quote] = []
    bus.add_sink(on_quote=live_quotes.append)
    async with BybitServer(events) as server:
        settings = VenueSettings(enabled=True, feed="native", market_type="spot",
                                 ws_url=server.ws_url)
        recording = recorder.open_venue("bybit_spot", ["BTC/USDT"])
        adapter = BybitAdapter("bybit_spot", settings, ["BTC/USDT"], bus, timings=FAST,
                               frame_tap=recording.write, listeners=[recording.on_event],
                               stats=VenueStats("bybit_spot"))
        async with running(adapter):
            await asyncio.wait_for(server.finished.wait(), 30)
            await asyncio.sleep(0.05)
    recorder.close()
    assert recorder.paths()[0].name.startswith("bybit_spot_btcusdt_")
    replayed, _ = await _replay(recorder.paths())
    assert len(live_quotes) > 1_000
    assert _quote_rows(replayed) == _quote_rows(live_quotes)


async def test_record_mode_end_to_end_from_the_command_line(spot_tape, tmp_path: Path) -> None:
    """`main.py --mode record` with the venue URL from the environment, as documented."""
    async with BinanceServer(spot_tape[:40_000], rate_hz=5_000) as server:
        env = dict(os.environ,
                   CRYPTOPIPE_VENUES__BINANCE_SPOT__WS_URL=server.ws_url,
                   CRYPTOPIPE_DATA_DIR=str(tmp_path), CRYPTOPIPE_METRICS__ENABLED="false")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "main.py", "--mode", "record", "--venues", "binance_spot",
            "--symbols", "BTC/USDT", "--duration", "3", cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    files = sorted((tmp_path / "recordings").glob("binance_spot_btcusdt_*.gz"))
    assert files, err.decode()[-2000:]
    quotes, _ = await _replay(files)
    assert len(quotes) > 100
    assert server.subscribed_paths[0] == "/stream?streams=btcusdt@bookTicker/btcusdt@trade"


def test_settings_take_the_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOPIPE_VENUES__BINANCE_USDM__WS_URL", "ws://127.0.0.1:9/ws")
    settings = load_settings({"venues": {"binance_usdm": {"enabled": True}}}, env_file=None)
    assert settings.venues["binance_usdm"].ws_url == "ws://127.0.0.1:9/ws"
    assert settings.venues["binance_usdm"].feed == "native"


async def test_run_record_refuses_a_replay_feed(tmp_path: Path) -> None:
    from config.settings import ConfigError
    from daemon.app import App
    from daemon.modes.record import run_record

    settings = load_settings({"data_dir": str(tmp_path)}, env_file=None)
    app = App(settings=settings, args=argparse.Namespace(feed="sample"), run_id="t")
    with pytest.raises(ConfigError, match="record"):
        await run_record(app)


async def _replay(paths: list[Path]) -> tuple[list[Quote], list[Trade]]:
    quotes: list[Quote] = []
    trades: list[Trade] = []
    feed = ReplayFeed([ReplaySpec(path) for path in paths], quotes.append, trades.append)
    await feed.run()
    return quotes, trades


def _quote_rows(quotes: list[Quote]) -> list[tuple]:
    return [(q.exchange, q.symbol, q.bid, q.bid_qty, q.ask, q.ask_qty, q.exchange_ts_ns,
             q.local_ts_ns, q.seq) for q in quotes]


def _last_u(tape: list) -> int:
    last = next(f for f in reversed(tape) if f.stream.endswith("@bookTicker"))
    return orjson.loads(last.raw)["u"]
