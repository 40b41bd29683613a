"""Replay feed: counts, ordering, relabelling, the shipped sample, damage, pacing.

Pacing runs on an injected fake clock and sleep: no test sleeps for real.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from adapters.recordings.replay import (
    MIN_SLEEP_S,
    SAMPLE_FILES,
    FrameMeta,
    ReplayError,
    ReplayFeed,
    ReplaySpec,
    ReplayStats,
    iter_frames,
    parse_spec,
    parse_specs,
    sample_specs,
    venue_from_filename,
)
from daemon.core.model import Quote, Trade
from tests.helpers.days import shifted_copies

SPOT = "binance_spot_btcusdt_20240808.gz"
USDM = "binance_usdm_btcusdt_20240808.gz"
BYBIT = "bybit_linear_xrpusdt_ob500_20241201.jsonl"

SharedFile = Callable[[str], Path]


class Published:
    def __init__(self) -> None:
        self.quotes: list[Quote] = []
        self.trades: list[Trade] = []
        self.events: list[Quote | Trade] = []

    def quote(self, quote: Quote) -> None:
        self.quotes.append(quote)
        self.events.append(quote)

    def trade(self, trade: Trade) -> None:
        self.trades.append(trade)
        self.events.append(trade)


async def replay(specs: list[ReplaySpec], **kwargs: object) -> tuple[ReplayStats, Published]:
    out = Published()
    feed = ReplayFeed(specs, out.quote, out.trade, **kwargs)  # type: ignore[arg-type]
    return await feed.run(), out


def sample_lines(index: int, count: int | None = None) -> list[bytes]:
    with gzip.open(SAMPLE_FILES[index]) as lines:
        return [line for _, line in zip(range(count or 10**9), lines, strict=False)]


def write_gz(path: Path, lines: list[bytes]) -> Path:
    with gzip.open(path, "wb") as out:
        out.writelines(lines)
    return path


# --- counts and order --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "venue", "quotes", "trades", "diffs"), [
    (SPOT, "binance_spot", 28_040, 9_757, 3_451),
    (USDM, "binance_usdm", 66_089, 21_313, 6_551),
])
async def test_a_recording_replays_with_the_readme_counts(
    shared_file: SharedFile, name: str, venue: str, quotes: int, trades: int, diffs: int
) -> None:
    stats, out = await replay([ReplaySpec(shared_file(name))], books=True)
    assert stats.counts == {"quote": quotes, "trade": trades, "depth": diffs, "snapshot": 1}
    assert stats.dropped == {}
    assert stats.frames == quotes + trades + diffs + 1
    assert (stats.quotes, stats.trades) == (len(out.quotes), len(out.trades)) == (quotes, trades)
    (file,) = stats.files
    assert file.venues == {venue} and file.damage is None and file.corrupt_lines == 0
    assert 344 < stats.recorded_seconds < 347  # 23:54:13 to 24:00:00
    local = [event.local_ts_ns for event in out.events]
    assert local == sorted(local)


async def test_files_merge_by_receive_time(shared_file: SharedFile) -> None:
    stats, out = await replay([ReplaySpec(shared_file(SPOT)), ReplaySpec(shared_file(USDM))])
    assert stats.quotes == 28_040 + 66_089 and stats.trades == 9_757 + 21_313
    local = [event.local_ts_ns for event in out.events]
    assert local == sorted(local)
    exchanges = [q.exchange for q in out.quotes[:2000]]
    assert "binance_spot" in exchanges and "binance_usdm" in exchanges  # interleaved


async def test_bybit_jsonl_uses_the_message_time(shared_file: SharedFile) -> None:
    path = shared_file(BYBIT)
    stats, out = await replay([ReplaySpec(path)])
    assert stats.counts == {"snapshot": 1, "delta": 49, "quote": 48}
    assert stats.files[0].venues == {"bybit_linear"}  # the file-name prefix
    first = orjson.loads(path.read_bytes().splitlines()[0])
    assert out.quotes[0].local_ts_ns == first["ts"] * 1_000_000
    assert {(q.exchange, q.symbol) for q in out.quotes} == {("bybit_linear", "XRP/USDT:USDT")}


async def test_bybit_venue_comes_from_the_file_name_prefix(
    shared_file: SharedFile, tmp_path: Path
) -> None:
    spot = shutil.copy(shared_file(BYBIT), tmp_path / "bybit_spot_xrpusdt.jsonl")
    anonymous = shutil.copy(shared_file(BYBIT), tmp_path / "book.jsonl")
    _, out = await replay([ReplaySpec(Path(spot))])
    assert {(q.exchange, q.symbol) for q in out.quotes} == {("bybit_spot", "XRP/USDT")}
    _, out = await replay([ReplaySpec(Path(anonymous))])
    assert {q.exchange for q in out.quotes} == {"bybit_linear"}  # the default


# --- relabelling and specs ---------------------------------------------------------------


async def test_relabel_presents_a_file_as_another_venue_and_symbol() -> None:
    specs = parse_specs(f"replay:{SAMPLE_FILES[0]},{SAMPLE_FILES[1]}@bybit_spot:BTC/USDT")
    stats, out = await replay(specs)
    keys = {(q.exchange, q.symbol) for q in out.quotes}
    assert keys == {("binance_spot", "BTC/USDT"), ("bybit_spot", "BTC/USDT")}
    assert {(t.exchange, t.symbol) for t in out.trades} == keys
    # The USD-M frames were still read by the USD-M parser (shape-detected).
    assert stats.files[1].venues == {"binance_usdm"}
    relabelled = [q for q in out.quotes if q.exchange == "bybit_spot"]
    assert len(relabelled) == stats.files[1].counts["quote"] == 14_343
    assert all(q.exchange_ts_ns > 0 for q in relabelled)  # USD-M's T, kept


@pytest.mark.parametrize(("text", "expected"), [
    ("a.gz", ReplaySpec(Path("a.gz"))),
    ("replay:a.gz", ReplaySpec(Path("a.gz"))),
    ("a.gz@bybit_spot:BTC/USDT", ReplaySpec(Path("a.gz"), "bybit_spot", "BTC/USDT")),
    ("a.gz@binance_usdm:BTC/USDT:USDT",
     ReplaySpec(Path("a.gz"), "binance_usdm", "BTC/USDT:USDT")),
    ("a.gz@okx", ReplaySpec(Path("a.gz"), "okx", None)),
    ("a.gz@:ETH/USDT", ReplaySpec(Path("a.gz"), None, "ETH/USDT")),
    ("/data/run@2/a.gz", ReplaySpec(Path("/data/run@2/a.gz"))),
    ("/data/me@host/a.gz@bybit_linear", ReplaySpec(Path("/data/me@host/a.gz"), "bybit_linear")),
])
def test_parse_spec(text: str, expected: ReplaySpec) -> None:
    assert parse_spec(text) == expected


@pytest.mark.parametrize("text", ["", "replay:", "@bybit_spot:BTC/USDT", "a.gz@bybit_spot:BTCUSDT"])
def test_bad_specs_raise_replay_error(text: str) -> None:
    with pytest.raises(ReplayError):
        parse_spec(text)


def test_parse_specs_splits_on_commas() -> None:
    assert parse_specs("replay:a.gz,b.gz@bybit_spot:BTC/USDT") == [
        ReplaySpec(Path("a.gz")), ReplaySpec(Path("b.gz"), "bybit_spot", "BTC/USDT")]


def test_venue_from_filename() -> None:
    assert venue_from_filename(Path("x/bybit_spot_btcusdt.gz")) == "bybit_spot"
    assert venue_from_filename(Path("binance_usdm.gz")) == "binance_usdm"
    assert venue_from_filename(Path("binance_spotty.gz")) is None
    assert venue_from_filename(Path("book.jsonl")) is None


# --- the shipped sample ------------------------------------------------------------------


async def test_the_sample_replays_without_shared_data() -> None:
    specs = sample_specs()
    assert all("shared" not in spec.path.parts for spec in specs)
    assert sum(path.stat().st_size for path in SAMPLE_FILES) < 2_000_000
    stats, out = await replay(specs, books=True)
    assert [f.counts for f in stats.files] == [
        {"quote": 6_299, "trade": 1_556, "depth": 749, "snapshot": 1},
        {"quote": 14_343, "trade": 2_862, "depth": 1_413, "snapshot": 1},
    ]
    assert stats.dropped == {} and stats.damaged_files == []
    assert 74 < stats.recorded_seconds <= 75
    assert {(q.exchange, q.symbol) for q in out.quotes} == {
        ("binance_spot", "BTC/USDT"), ("binance_usdm", "BTC/USDT:USDT")}


def test_iter_frames_yields_time_frame_and_venue() -> None:
    rows = list(iter_frames(SAMPLE_FILES[1]))
    assert len(rows) == 18_619
    ts, frame, meta = rows[0]
    assert isinstance(ts, int) and frame.startswith(b'{"stream":"btcusdt@depth@0ms"')
    assert meta == FrameMeta("binance_usdm", str(SAMPLE_FILES[1]))
    assert all(m is meta for _, _, m in rows)  # one shared instance: no allocation per frame


# --- damage ------------------------------------------------------------------------------


def test_missing_file_raises_replay_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.gz"
    with pytest.raises(ReplayError, match=r"nope\.gz"):
        ReplayFeed([ReplaySpec(missing)], print, print)
    with pytest.raises(ReplayError, match=r"nope\.gz"):
        iter_frames(missing)
    with pytest.raises(ReplayError, match=r"(?i)is a directory"):
        iter_frames(tmp_path)
    monkeypatch.setattr("adapters.recordings.replay.SAMPLE_FILES", (missing,))
    with pytest.raises(ReplayError, match=r"nope\.gz"):
        sample_specs()


async def test_truncated_gzip_is_read_up_to_the_damage(tmp_path: Path) -> None:
    whole = SAMPLE_FILES[0].read_bytes()
    cut = tmp_path / "binance_spot_crashed.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    stats, out = await replay([ReplaySpec(cut)])
    (file,) = stats.files
    assert file.damage is not None and "truncated" in file.damage
    full = sample_lines(0)
    assert len(full) // 3 < file.frames < len(full)
    assert file.corrupt_lines <= 1  # the torn last line, if the cut fell mid-line
    assert stats.dropped == {}  # every line handed to the parser was complete
    expected = [orjson.loads(line.split(b" ", 1)[1]) for line in full[: file.frames]]
    assert len(out.quotes) == sum(1 for m in expected if "bookTicker" in m.get("stream", ""))


async def test_corrupt_gzip_data_is_read_up_to_the_damage(tmp_path: Path) -> None:
    whole = bytearray(SAMPLE_FILES[0].read_bytes())
    middle = len(whole) // 2
    whole[middle : middle + 64] = bytes(64)  # a zeroed block in the deflate stream
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(bytes(whole))
    stats, _ = await replay([ReplaySpec(damaged)])
    (file,) = stats.files
    assert file.damage is not None and "corrupt" in file.damage
    assert file.frames > len(sample_lines(0)) // 3


async def test_corrupt_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    lines = sample_lines(0, 20)
    broken = [
        *lines[:5],
        b"not-a-timestamp " + lines[5].split(b" ", 1)[1],
        b"1723161254000000000\n",  # a time and no frame
        b"\n",
        lines[6].split(b" ", 1)[0] + b' {"stream":"btcusdt@bookTicker","data":{"u":5\n',  # torn
        *lines[7:],
    ]
    path = write_gz(tmp_path / "binance_spot_corrupt.gz", broken)
    stats, _ = await replay([ReplaySpec(path)])
    (file,) = stats.files
    assert file.corrupt_lines == 2
    assert file.frames == 5 + 1 + 13  # the good lines and the torn frame
    assert stats.dropped == {"malformed_json": 1}


async def test_gzip_members_appended_by_a_restarted_recorder_are_all_read(
    tmp_path: Path,
) -> None:
    lines = sample_lines(1, 400)
    path = tmp_path / "binance_usdm_appended.gz"
    path.write_bytes(gzip.compress(b"".join(lines[:150])) + gzip.compress(b"".join(lines[150:])))
    stats, _ = await replay([ReplaySpec(path)])
    assert stats.frames == 400 and stats.damaged_files == []


# --- recorder meta lines -----------------------------------------------------------------


async def test_recorder_meta_lines_set_the_venue_and_a_reconnect_restarts_parsers(
    shared_file: SharedFile, tmp_path: Path
) -> None:
    frames = [line for line in shared_file(BYBIT).read_bytes().splitlines() if line]
    start = orjson.loads(frames[0])["ts"] * 1_000_000

    def line(offset: int, payload: bytes) -> bytes:
        return b"%d %s\n" % (start + offset, payload)

    session = orjson.dumps({"cryptopipe": "session", "venue": "bybit_spot",
                            "symbols": ["XRP/USDT"]})
    recording = [
        line(0, session),
        *(line(i + 1, frame) for i, frame in enumerate(frames[:10])),
        # the recorder reconnected: the new connection replays the snapshot and deltas
        line(20, orjson.dumps({"cryptopipe": "disconnect", "venue": "bybit_spot",
                               "reason": "silence"})),
        line(21, orjson.dumps({"cryptopipe": "connect", "venue": "bybit_spot",
                               "url": "wss://stream.bybit.com/v5/public/spot"})),
        *(line(22 + i, frame) for i, frame in enumerate(frames[:5])),
    ]
    path = write_gz(tmp_path / "recording.gz", recording)
    stats, out = await replay([ReplaySpec(path)])
    (file,) = stats.files
    assert file.meta_lines == 3 and file.frames == 15
    assert stats.dropped == {}  # the second snapshot and its deltas apply after the reset
    assert stats.counts["snapshot"] == 2 and stats.counts["delta"] == 9 + 4
    assert {(q.exchange, q.symbol) for q in out.quotes} == {("bybit_spot", "XRP/USDT")}
    metas = [meta for _, _, meta in iter_frames(path) if meta.session is not None]
    assert [m.session["cryptopipe"] for m in metas if m.session] == [
        "session", "disconnect", "connect"]
    assert {m.venue for m in metas} == {"bybit_spot"}


# --- pacing (fake clock, no real sleep) ----------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("speed", [1.0, 10.0])
async def test_paced_replay_follows_the_recorded_times(tmp_path: Path, speed: float) -> None:
    path = write_gz(tmp_path / "binance_spot_head.gz", sample_lines(0, 3000))
    fake = FakeClock()
    out = Published()
    published_at: list[tuple[float, int]] = []

    def on_quote(quote: Quote) -> None:
        published_at.append((fake.now, quote.local_ts_ns))
        out.quote(quote)

    feed = ReplayFeed([ReplaySpec(path)], on_quote, out.trade, speed=speed,
                      sleep=fake.sleep, clock=fake.clock)
    stats = await feed.run()
    span = stats.recorded_seconds
    assert span > 5
    assert all(s >= 0 for s in fake.sleeps)
    assert sum(fake.sleeps) == pytest.approx(span / speed, abs=MIN_SLEEP_S)
    first_wall, first_ts = 1000.0, stats.first_ts_ns
    for wall, ts in published_at:
        # never early by more than the sleep granularity, never late (nothing else runs)
        due = first_wall + (ts - first_ts) / 1e9 / speed
        assert due - MIN_SLEEP_S <= wall <= due + 1e-9


async def test_max_speed_yields_to_the_loop_every_few_thousand_frames() -> None:
    fake = FakeClock()
    stats, _ = await replay([ReplaySpec(SAMPLE_FILES[0])], sleep=fake.sleep, clock=fake.clock,
                            yield_every=1000)
    assert fake.sleeps == [0] * (stats.frames // 1000)


async def test_other_tasks_run_during_a_max_speed_replay() -> None:
    out = Published()
    feed = ReplayFeed(sample_specs(), out.quote, out.trade)
    seen_mid_replay: list[int] = []

    async def watcher() -> None:
        while True:
            seen_mid_replay.append(len(out.quotes))
            await asyncio.sleep(0)

    task = asyncio.create_task(watcher())
    stats = await feed.run()
    task.cancel()
    assert any(0 < seen < stats.quotes for seen in seen_mid_replay)


def test_bad_speed_is_refused() -> None:
    with pytest.raises(ReplayError):
        ReplayFeed(sample_specs(), print, print, speed=0)
    with pytest.raises(ReplayError):
        ReplayFeed([], print, print)


async def test_a_fast_paced_replay_still_yields_to_the_loop() -> None:
    """At 10,000x almost no frame is 1 ms ahead of schedule: yield every N frames anyway."""
    fake = FakeClock()
    stats, _ = await replay([ReplaySpec(SAMPLE_FILES[0])], speed=10_000.0, sleep=fake.sleep,
                            clock=fake.clock, yield_every=500)
    pauses = len(fake.sleeps)
    assert pauses >= stats.frames // 500
    assert sum(fake.sleeps) == pytest.approx(stats.recorded_seconds / 10_000, abs=MIN_SLEEP_S)


async def test_a_connect_event_resets_sequence_checks(tmp_path: Path) -> None:
    """Frames after a reconnect are judged afresh: here the same 50 bookTicker/trade lines
    again, which a continuing parser would drop as old update ids."""
    lines = [line for line in sample_lines(0, 200) if b"@bookTicker" in line[:60]][:50]
    connect = b"%s %s\n" % (lines[-1].split(b" ", 1)[0],
                            orjson.dumps({"cryptopipe": "connect", "venue": "binance_spot"}))
    path = write_gz(tmp_path / "binance_spot_btcusdt_reconnect.gz", [*lines, connect, *lines])
    stats, out = await replay([ReplaySpec(path)])
    assert stats.dropped == {} and len(out.quotes) == 100
    without = write_gz(tmp_path / "binance_spot_btcusdt_overlap.gz", [*lines, *lines])
    stats, out = await replay([ReplaySpec(without)])
    assert stats.dropped == {"backwards_seq": 49, "duplicate_seq": 1}
    assert len(out.quotes) == 50


async def test_days_of_one_market_are_read_in_time_order_one_file_at_a_time(
    tmp_path: Path,
) -> None:
    """Issue 18 item 2: files of one market follow each other by their first event's
    time, not their names, and only the files of the same time are open at once (one day
    of spot beside the USD-M file of that day), so reading does not grow with the days."""
    spot, usdm = SAMPLE_FILES
    # Day 0 is named last, day 2 first: name order is not time order.
    days = shifted_copies(spot, tmp_path, ["binance_spot_btcusdt_c.gz",
                                           "binance_spot_btcusdt_a.gz",
                                           "binance_spot_btcusdt_b.gz"])
    specs = [ReplaySpec(path) for path in sorted(days)] + [ReplaySpec(usdm)]
    out = Published()
    feed = ReplayFeed(specs, out.quote, out.trade)
    await feed.run()
    (day, _), (futures, _) = await replay([ReplaySpec(spot)]), await replay([ReplaySpec(usdm)])
    assert len(out.events) == 3 * (day.quotes + day.trades) + futures.quotes + futures.trades
    spot_times = [e.local_ts_ns for e in out.events if e.exchange == "binance_spot"]
    assert spot_times == sorted(spot_times)  # day 0, then 1, then 2
    assert feed.most_open == 2  # day 0 beside USD-M; then one day at a time
    # The same events as all files merged at once (heapq.merge of every file).
    merged = [e.local_ts_ns for e in out.events]
    assert merged == sorted(merged)
