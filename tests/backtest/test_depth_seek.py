"""A run that starts late in many days of data with depth (a sweep or walk-forward span, an
RL episode, a stepped window) reads the recorded books from each market's last reset (a
snapshot) at or before its first row, not every change since the start of the data: the
depth batches before are not read (their index columns aside), and the books, fills and
decision log are those of reading everything."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import daemon.backtest.cache as cache_module
import daemon.backtest.depth as depth_module
import strategies
from adapters.recordings.replay import SAMPLE_FILES, ReplaySpec
from daemon.backtest.cache import CachedEvents, DepthFile, load
from daemon.backtest.depth import (
    ChangeIndex,
    DepthColumns,
    DepthRecorder,
    RecordedDepth,
    skipped,
    summarized,
)
from daemon.backtest.engine import Backtest
from daemon.backtest.span import Span
from daemon.core.model import Side
from tests.backtest.test_depth import OneTaker, settings_for
from tests.helpers.days import shifted_copies

DAYS = 4
DEPTH_LEVELS = 20_000  # levels per depth batch: the 4 days' depth in ~24 batches
CHUNK = 997  # event rows per chunk: the books are settled between chunks too


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(depth_module, "_PACK_LEVELS", DEPTH_LEVELS)
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", CHUNK)


@pytest.fixture
def days(tmp_path: Path) -> list[ReplaySpec]:
    """DAYS consecutive copies of the spot and USD-M samples (each a book snapshot first)."""
    specs = []
    for path in SAMPLE_FILES:
        stem = path.name.removesuffix("_sample.gz").rsplit("_", 1)[0]  # binance_spot_btcusdt
        names = [f"{stem}_day{k}.gz" for k in range(DAYS)]
        specs += [ReplaySpec(copy) for copy in
                  shifted_copies(path, tmp_path / "days" / stem, names)]
    return specs


@pytest.fixture
def read_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first change position of every depth batch read whole from a cache file by a
    run (not by the check of every batch when the cache is opened)."""
    read: list[int] = []
    opening = [False]
    part, open_file = DepthFile._part, DepthFile.open.__func__  # type: ignore[attr-defined]

    def counted(self: DepthFile, batch: Any) -> DepthColumns:
        columns = part(self, batch)
        if not opening[0]:
            read.append(int(columns.pos[0]))
        return columns

    def checked(cls: type[DepthFile], *args: Any) -> DepthFile:
        opening[0] = True
        try:
            return open_file(cls, *args)
        finally:
            opening[0] = False

    monkeypatch.setattr(DepthFile, "_part", counted)
    monkeypatch.setattr(DepthFile, "open", classmethod(checked))
    return read


def read_everything(self: RecordedDepth, row: int, now: int) -> None:
    """The read before the seek: every batch from the first, every change folded."""
    source, self._source = self._source, None
    assert source is not None
    self._batches = iter(source.batches())


def needed_from(source: DepthFile, row: int,
                markets: frozenset[tuple[str, str]] | None = None) -> tuple[int, int]:
    """(batch, change) of the earliest of the markets' last resets emitted by `row`: of
    those whose books are walked (`markets`; None: all)."""
    firsts = np.concatenate(([0], np.cumsum([len(b.pos) for b in source.batches()])))
    depth = source.in_memory()
    resets = [int(np.flatnonzero((depth.key == key) & depth.reset & (depth.pos <= row))[-1])
              for key, market in enumerate(depth.keys) if markets is None or market in markets]
    change = min(resets)
    batch = int(np.searchsorted(firsts, change, side="right")) - 1
    return batch, change


async def run_late_taker(tmp_path: Path, specs: list[ReplaySpec], span: Span, name: str,
                         monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], bytes]:
    """A sell of 8 BTC through the spot bid 10 s into the span (it walks several levels of
    the recorded book), in `tmp_path / name` on the cache built in `tmp_path`: its fills
    and the run's decision log."""
    shutil.copytree(tmp_path / "cache", tmp_path / name / "cache")
    taker = OneTaker("binance_spot", "BTC/USDT", Side.SELL, 8.0,
                     at_ns=span.start_ns + 10 * 10**9)
    monkeypatch.setitem(strategies.STRATEGIES, taker.name, lambda settings: taker)
    result = await Backtest(settings_for(tmp_path / name), taker.name, specs, "late",
                            span=span).run()
    assert result.cache == "hit"
    log = b"".join(path.read_bytes() for path in result.log_files)
    return [(f.price, f.qty, f.ts_ns) for f in taker.fills], log


async def test_a_late_span_reads_the_depth_from_the_markets_last_resets_with_the_same_log(
    tmp_path: Path, days: list[ReplaySpec], small_batches: None, read_batches: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, _ = await load(days, tmp_path)
    assert isinstance(data, CachedEvents) and data.depth is not None
    depth = data.depth.in_memory()
    firsts = [int(batch.pos[0]) for batch in data.depth.batches()]
    assert len(firsts) > 20
    times = data.in_memory().local_ts_ns
    first_row = int(len(times) * 0.85)  # in the last day
    span = Span(int(times[first_row]), int(times[-1]) + 1)
    start_row = int(np.searchsorted(np.maximum.accumulate(times), span.start_ns))
    # Only the taker's market: the other market's book is never walked, nor kept.
    batch, change = needed_from(data.depth, start_row, frozenset({("binance_spot", "BTC/USDT")}))
    assert batch >= 0.6 * len(firsts)  # the last day's snapshots, late in the file

    folded: list[tuple[int, int, bool]] = []  # (pos, key, reset) of the first change folded
    fold = RecordedDepth._fold

    def noted(self: RecordedDepth, index: int, row: int, now: int) -> None:
        first = self._unfolded[index][0]
        folded.append((int(first.pos[0]), int(first.key[0]), bool(first.reset[0])))
        fold(self, index, row, now)

    monkeypatch.setattr(RecordedDepth, "_fold", noted)
    index_read: list[int] = []
    index_batches = getattr(DepthFile, "index_batches", None)

    def counted_index(self: DepthFile, first: int = 0) -> Iterator[Any]:
        assert index_batches is not None
        for index in index_batches(self, first):
            index_read.append(int(index.pos[0]))
            yield index

    monkeypatch.setattr(DepthFile, "index_batches", counted_index, raising=False)
    read_batches.clear()
    fills, log = await run_late_taker(tmp_path, days, span, "seek", monkeypatch)
    # Only the batches from the one holding the earliest of the markets' last resets (the
    # span runs to the end of the data: every one after it).
    assert read_batches == firsts[batch:]
    # The batches before the window's are looked at through their summaries alone.
    assert 1 <= len(index_read) <= 2 and index_read[0] >= firsts[batch]
    # Folding starts at that reset: nothing before it is applied.
    assert folded and min(folded) >= (int(depth.pos[change]), 0, False)
    assert (int(depth.pos[change]), int(depth.key[change]), True) in folded

    monkeypatch.setattr(RecordedDepth, "_seek", read_everything)
    read_batches.clear()
    everything_fills, everything_log = await run_late_taker(tmp_path, days, span, "full",
                                                            monkeypatch)
    assert read_batches == firsts
    assert len(fills) >= 3  # several levels of the book walked
    assert fills == everything_fills
    assert log == everything_log


async def test_a_mirrored_episodes_depth_seeks_too_and_walks_the_mirror_of_the_books(
    tmp_path: Path, days: list[ReplaySpec], small_batches: None, read_batches: list[int],
) -> None:
    pytest.importorskip("gymnasium", reason="the RL extra is not installed")
    from daemon.rl.mirror import MirroredDepth, mirror

    data, _ = await load(days, tmp_path / "cache")
    assert isinstance(data, CachedEvents) and data.depth is not None
    p0 = {key: 50_000.0 for key in data.keys}
    whole = mirror(data, p0).depth
    assert whole is not None
    firsts = [int(batch.pos[0]) for batch in data.depth.batches()]
    row = int(len(data) * 0.9)
    batch, _ = needed_from(data.depth, row)
    read_batches.clear()
    now = [0]
    seeking, everything = RecordedDepth(lambda: now[0]), RecordedDepth(lambda: now[0])
    seeking.load(MirroredDepth(data.depth, p0, {}))
    everything.load(whole)
    for at_row in range(row, len(data), 301):
        now[0] = int(data.in_memory().local_ts_ns[at_row])
        for depth in (seeking, everything):
            depth.at_row = at_row
            if at_row % 2:
                depth.settle(at_row)
        for key in data.depth.keys:
            for side in ("bid", "ask"):
                assert seeking.levels(*key, side) == everything.levels(*key, side)
    assert read_batches and read_batches[0] == firsts[batch]


def test_a_source_without_index_columns_is_read_whole_once_and_skipped_in_folding() -> None:
    """A depth source with `batches()` alone (tests, tools) still gives the same books."""

    class Plain:
        def __init__(self, parts: list[DepthColumns]) -> None:
            self.keys = parts[0].keys
            self.parts = parts

        def batches(self) -> Iterator[DepthColumns]:
            return iter(self.parts)

    keys = (("v", "A"),)
    parts = []
    for batch in range(3):  # a snapshot first in every batch, then a change
        pos = np.array([10 * batch, 10 * batch + 5], dtype=np.int64)
        parts.append(DepthColumns(
            keys, pos, pos * 100, np.zeros(2, np.int32), np.array([True, False]),
            np.array([1, 1], np.int32), np.array([0, 2, 3]),
            np.array([100.0 + batch, 101.0 + batch, 99.0 + batch]), np.array([1.0, 2.0, 3.0])))
    seeking = RecordedDepth(lambda: 10**9)
    seeking.load(Plain(parts))
    seeking.at_row = 26
    assert seeking.levels("v", "A", "bid") == [(102.0, 1.0), (101.0, 3.0)]
    assert seeking.levels("v", "A", "ask") == [(103.0, 2.0)]


class Summarized:
    """A depth source with every optional part: summaries, index columns, a seek."""

    def __init__(self, keys: tuple[tuple[str, str], ...], parts: list[DepthColumns]) -> None:
        self.keys = keys
        self.parts = parts
        self.summaries = [summarized(part) for part in parts]

    def batches(self) -> Iterator[DepthColumns]:
        return iter(self.parts)

    def batches_from(self, first: int, skip: int = 0) -> Iterator[DepthColumns]:
        return skipped(self.parts[first:], skip)

    def index_batches(self, first: int = 0) -> Iterator[ChangeIndex]:
        for part in self.parts[first:]:
            yield ChangeIndex(part.pos, part.ts, part.key, part.reset)


@pytest.mark.parametrize("seed", range(10))
def test_a_seek_from_any_row_and_clock_gives_the_books_of_reading_everything(
    seed: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Random changes of three markets (resets, receive times out of order within a
    market, a clock behind some of them, batches of any size): from any first row and
    clock on, the books with the seek are those of reading every change from the first."""
    rng = np.random.default_rng(seed)
    published: list[object] = []
    parts: list[DepthColumns] = []
    recorder = DepthRecorder(published, parts.append)
    keys = [("v", "A/B"), ("w", "A/B"), ("x", "C/D")]
    for pos in range(600):
        key = keys[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        prices = rng.integers(90, 110, size=rng.integers(0, 6)).astype(float)
        levels = [(float(p), float(rng.choice([0.0, 1.0, 2.5]))) for p in prices]
        published[:] = [None] * (pos // 2)
        ts = pos * 10 + int(rng.integers(-150, 150))  # out of order now and then
        recorder(*key, ts, bool(rng.random() < 0.15),
                 [level for level in levels if level[0] < 100],
                 [level for level in levels if level[0] >= 100])
        if rng.random() < 0.04:
            recorder.flush()  # a batch boundary
    recorder.flush()
    assert len(parts) > 5
    seek = RecordedDepth._seek
    for start in rng.integers(0, 300, size=8).tolist():
        lag = int(rng.integers(0, 200))  # the clock behind the rows' changes by this much
        books = []
        for method in (read_everything, seek):
            monkeypatch.setattr(RecordedDepth, "_seek", method)
            now = [0]
            depth = RecordedDepth(lambda: now[0])  # noqa: B023 (read while `now` is this one)
            depth.load(Summarized(recorder.keys, parts))
            seen = []
            for at_row in range(start, 310, 7):
                now[0] = at_row * 20 - lag
                if at_row % 3 == 0:
                    depth.settle(at_row)
                depth.at_row = at_row
                seen.append([depth.levels(*key, side) for key in recorder.keys
                             for side in ("bid", "ask")])
            books.append(seen)
        assert books[0] == books[1], (start, lag)


async def test_a_run_whose_orders_never_walk_reads_no_depth(
    tmp_path: Path, days: list[ReplaySpec], small_batches: None, read_batches: list[int],
) -> None:
    """inventory-mm rests post-only quotes: nothing walks a book, so no depth batch is read
    (from the cache that was ~8 % of an 80-day backtest), and the log is the one a run
    without depth writes."""
    data, _ = await load(days, tmp_path / "with")
    assert isinstance(data, CachedEvents) and data.depth is not None
    read_batches.clear()
    logs = []
    for name, walk in (("with", True), ("without", False)):
        settings = settings_for(tmp_path / name, execution={"walk_depth": walk})
        result = await Backtest(settings, "inventory-mm", days, "rest").run()
        assert result.orders > 50
        logs.append(b"".join(path.read_bytes() for path in result.log_files))
    assert read_batches == []
    assert logs[0] == logs[1]
