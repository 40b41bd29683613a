"""Issue 18 item 2: the event cache in chunks, and a backtest that holds one chunk of
events at a time (tiny chunks here, so the sample's events cross many boundaries)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from structlog.testing import capture_logs

import daemon.backtest.cache as cache_module
import daemon.backtest.engine as engine_module
from adapters.recordings.replay import SAMPLE_FILES, ReplaySpec
from config.settings import load_settings
from daemon.backtest.cache import BacktestData, CachedEvents, CacheStatus, cache_path, load
from daemon.backtest.depth import DepthColumns, DepthRecorder, RecordedDepth
from daemon.backtest.engine import Backtest
from daemon.core.model import Quote
from tests.backtest.test_cache import exactly, parsed, same_stats
from tests.backtest.test_engine import run_engine

CHUNK = 997  # rows: a prime, so chunks end anywhere among quotes, trades and depth


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", CHUNK, raising=False)
    return CHUNK


@pytest.fixture
def specs(tmp_path: Path) -> list[ReplaySpec]:
    copies = []
    for path in SAMPLE_FILES:
        copy = tmp_path / "recordings" / path.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy2(path, copy)
        copies.append(ReplaySpec(copy))
    return copies


async def test_the_chunked_cache_gives_the_parsed_events_across_chunk_boundaries(
    specs: list[ReplaySpec], tmp_path: Path, tiny_chunks: int,
) -> None:
    events, stats = await parsed(specs)
    expected = exactly(events)
    built, status = await load(specs, tmp_path / "data")
    assert status is CacheStatus.BUILT and isinstance(built, CachedEvents)
    read, status = await load(specs, tmp_path / "data")
    assert status is CacheStatus.HIT and isinstance(read, CachedEvents)
    assert len(read.batches) == -(-len(events) // tiny_chunks) > 20
    for data in (built, read):
        assert same_stats(data.stats, stats)
        chunks = list(data.chunks())
        assert [len(chunk) for _, chunk in chunks[:-1]] == [tiny_chunks] * (len(chunks) - 1)
        assert [first for first, _ in chunks] == list(range(0, len(events), tiny_chunks))
        assert exactly([e for _, chunk in chunks for e in chunk.all_events()]) == expected
        # A range cut inside two chunks, as a stepped window or a sweep span reads it.
        start, stop = tiny_chunks // 2, 5 * tiny_chunks + 3
        ranged = [e for _, chunk in data.chunks(start, stop) for e in chunk.all_events()]
        assert exactly(ranged) == expected[start:stop]
        assert exactly(data.in_memory().all_events()) == expected
    # Rows by receive time: the same from the chunks as from the whole column.
    whole = read.in_memory()
    times = whole.local_ts_ns
    for start_ns, end_ns in ((times[0], times[-1]), (times[3000] + 1, times[12_345]),
                             (0, times[0]), (times[-1] + 1, times[-1] + 2)):
        assert read.rows_received(int(start_ns), int(end_ns)) == whole.rows_received(
            int(start_ns), int(end_ns))
    assert read.window_stats(100, 9000) == whole.window_stats(100, 9000)


async def test_a_corrupt_chunk_is_found_and_the_cache_rebuilt(
    specs: list[ReplaySpec], tmp_path: Path, tiny_chunks: int,
) -> None:
    data_dir = tmp_path / "data"
    good, _ = await load(specs, data_dir)
    assert good is not None
    path = cache_path(data_dir, specs)
    content = bytearray(path.read_bytes())
    # One receive time of chunk 7, xor'ed in the file's bytes (Arrow still reads it).
    value = good.in_memory().local_ts_ns[7 * tiny_chunks + 5].tobytes()
    at = content.find(value)
    assert at > 0
    content[at + 2] ^= 0x5A
    path.write_bytes(bytes(content))
    batches = pa.ipc.open_file(pa.py_buffer(bytes(content))).num_record_batches
    assert batches == len(good.batches) + 1  # the summary last
    with capture_logs() as logs:
        data, status = await load(specs, data_dir)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["backtest_cache_unusable"]
    assert "chunk 7" in warnings[0]["error"]
    assert status is CacheStatus.BUILT and data is not None
    assert exactly(data.in_memory().all_events()) == exactly(good.in_memory().all_events())
    assert (await load(specs, data_dir))[1] is CacheStatus.HIT


@pytest.mark.parametrize("skip", [True, False])
async def test_tiny_chunks_give_the_decision_log_of_the_frames(
    specs: list[ReplaySpec], tmp_path: Path, tiny_chunks: int, skip: bool,
) -> None:
    frames, frames_log = await run_engine(tmp_path / "frames", "inventory-mm", specs,
                                          cache=False)
    for name in ("built", "hit"):
        result, log = await run_engine(tmp_path / "cached", "inventory-mm", specs,
                                       cache=True, skip=skip, run_id=f"parity-{name}")
        assert result.cache == name
        assert log.replace(f'"parity-{name}"'.encode(), b'"parity"') == frames_log
        assert (result.events, result.quotes, result.trades) == (
            frames.events, frames.quotes, frames.trades)


def quotes_held_in_lists() -> int:
    """Quote objects referenced by live lists (a Quote is not tracked by the collector,
    a list of them is): the events built ahead of their use."""
    import gc

    return sum(len(o) for o in gc.get_objects()
               if type(o) is list and o and type(o[0]) is Quote)


@pytest.mark.parametrize("quiet", [False, True])
async def test_a_backtest_holds_one_chunk_of_events_at_a_time(
    specs: list[ReplaySpec], tmp_path: Path, tiny_chunks: int, monkeypatch: pytest.MonkeyPatch,
    quiet: bool,
) -> None:
    """Memory does not grow with the data: every event dispatched (skip off; every one
    built, or the quiet ones checked in bulk), the events built ahead of use never exceed
    one chunk's rows, and the file is read as the run goes (a chunk read when reached).
    Structural, not measured: counted objects."""
    monkeypatch.setattr(engine_module, "YIELD_EVERY_ROWS", 500)
    monkeypatch.setattr(engine_module, "PROGRESS_EVERY", 500)
    settings = load_settings({"data_dir": tmp_path / "data"}, env_file=None)
    data, _ = await load(specs, settings.data_dir)
    assert isinstance(data, CachedEvents)
    reads: list[int] = []  # the rows of each chunk the run read, as it read them
    chunks = CachedEvents.chunks

    def counted(self: CachedEvents, start: int = 0, stop: int | None = None,
                ) -> Iterator[tuple[int, BacktestData]]:
        for first, chunk in chunks(self, start, stop):
            reads.append(len(chunk))
            yield first, chunk

    def never(self: CachedEvents) -> BacktestData:
        raise AssertionError("the engine read the whole file")

    monkeypatch.setattr(CachedEvents, "chunks", counted)
    monkeypatch.setattr(CachedEvents, "in_memory", never)
    held: list[tuple[int, int, int]] = []  # (events done, chunks read, quotes held)

    def progress(events: int, feed_ns: int) -> None:
        held.append((events, len(reads), quotes_held_in_lists()))

    backtest = Backtest(settings, "inventory-mm", specs, "bounded", progress=progress,
                        skip=False, quiet=quiet)
    result = await backtest.run()
    assert result.cache == "hit" and result.processed + result.quiet == result.events == len(data)
    assert (result.quiet > 0) is quiet
    assert len(held) > 30
    assert max(quotes for _, _, quotes in held) <= tiny_chunks
    for events, chunks_read, _ in held:  # read as reached, not ahead
        assert chunks_read <= events // tiny_chunks + 2
    assert reads == [len(chunk) for _, chunk in chunks(data)] and np.sum(reads) == len(data)


def test_recorded_depth_read_in_batches_and_folded_walks_the_books_of_the_frames() -> None:
    """Depth changes read batch by batch and folded into sorted arrays as the rows pass
    (`settle`) give the levels applying every change one by one gives, at every row and
    clock (resets, removals, levels written twice in one change included)."""
    rng = np.random.default_rng(18)
    published: list[object] = []
    parts: list[DepthColumns] = []
    recorder = DepthRecorder(published, parts.append)
    live = RecordedDepth(lambda: now[0])
    changes = []
    for pos in range(400):
        key = ("v", "A/B") if rng.random() < 0.7 else ("w", "A/B")
        prices = rng.integers(90, 110, size=rng.integers(0, 6)).astype(float)
        levels = [(float(p), float(rng.choice([0.0, 1.0, 2.5]))) for p in prices]
        bids = [level for level in levels if level[0] < 100]
        asks = [level for level in levels if level[0] >= 100]
        change = (pos // 3, pos * 10, bool(rng.random() < 0.03), bids, asks)
        changes.append((key, change))
        published[:] = [None] * change[0]
        recorder(*key, *change[1:])
        if pos % 37 == 36:
            recorder.flush()  # a batch boundary
    recorder.flush()
    assert len(parts) > 10
    source = DepthSourceOf(tuple(recorder.keys), parts)
    cached = RecordedDepth(lambda: now[0])
    cached.load(source)
    now = [0]
    emitted = 0
    for at_row in range(0, 140, 3):
        now[0] = at_row * 30 - 15
        while emitted < len(changes) and changes[emitted][1][0] <= at_row:
            key, change = changes[emitted]
            live.apply(*key, *change[1:])
            emitted += 1
        if at_row % 2:
            cached.settle(at_row)
        cached.at_row = at_row
        for exchange in ("v", "w"):
            for side in ("bid", "ask"):
                assert cached.levels(exchange, "A/B", side) == live.levels(exchange, "A/B", side)


class DepthSourceOf:
    def __init__(self, keys: tuple[tuple[str, str], ...], parts: list[DepthColumns]) -> None:
        self.keys = keys
        self.parts = parts

    def batches(self) -> Iterator[DepthColumns]:
        return iter(self.parts)
