"""The backtest's decoded-event cache: decode once, rebuild the very same events many times."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pytest
from structlog.testing import capture_logs

from adapters.recordings.replay import SAMPLE_FILES, ReplayFeed, ReplaySpec, ReplayStats
from daemon.backtest.cache import (
    QUOTE,
    BacktestData,
    CacheStatus,
    UncacheableEvents,
    cache_path,
    load,
    prune,
)
from daemon.core.model import Quote, Trade


def exactly(events: list[Quote | Trade]) -> list[tuple[str, list[tuple[str, object, type]]]]:
    """Each event as its kind and (field, value, type) triples: equal only if identical."""
    return [(type(e).__name__, [(name, value, type(value)) for name, value
                                in msgspec.structs.asdict(e).items()]) for e in events]


def same_stats(a: ReplayStats, b: ReplayStats) -> bool:
    return {**vars_of(a), "wall_seconds": 0} == {**vars_of(b), "wall_seconds": 0}


def vars_of(stats: ReplayStats) -> dict[str, object]:
    return {name: getattr(stats, name) for name in stats.__slots__}  # type: ignore[attr-defined]


@pytest.fixture
def specs(tmp_path: Path) -> list[ReplaySpec]:
    """The shipped sample, copied (tests touch the files), USD-M also relabelled."""
    copies = []
    for path in SAMPLE_FILES:
        copy = tmp_path / "recordings" / path.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy2(path, copy)
        copies.append(copy)
    spot, usdm = copies
    return [ReplaySpec(spot), ReplaySpec(usdm), ReplaySpec(usdm, "bybit_spot", "BTC/USDT")]


async def parsed(specs: list[ReplaySpec]) -> tuple[list[Quote | Trade], ReplayStats]:
    events: list[Quote | Trade] = []
    # With depth books kept, as the cache decodes by default (execution.walk_depth).
    stats = await ReplayFeed(specs, events.append, events.append, books=True).run()
    return events, stats


async def test_events_rebuilt_from_the_cache_equal_the_parsed_ones(
    specs: list[ReplaySpec], tmp_path: Path,
) -> None:
    events, stats = await parsed(specs)
    built, status = await load(specs, tmp_path / "data")
    assert status is CacheStatus.BUILT and built is not None
    read, status = await load(specs, tmp_path / "data")
    assert status is CacheStatus.HIT and read is not None
    expected = exactly(events)
    assert {e.key for e in events} >= {("bybit_spot", "BTC/USDT"), ("binance_usdm",
                                                                    "BTC/USDT:USDT")}
    for data in (built, read):
        assert exactly(data.all_events()) == expected
        assert same_stats(data.stats, stats)
        # The other ways in: one row at a time, and a subset of each kind.
        rows = [0, 1, len(data) // 2, len(data) - 1]
        assert exactly([data.event(row) for row in rows]) == [expected[row] for row in rows]
        quotes = np.flatnonzero(data.kind == QUOTE)[::7]
        trades = np.flatnonzero(data.kind != QUOTE)[::7]
        assert exactly(data.quotes(quotes)) == [expected[row] for row in quotes.tolist()]
        assert exactly(data.trades(trades)) == [expected[row] for row in trades.tolist()]


async def test_touching_or_changing_a_recording_rebuilds_the_cache(
    specs: list[ReplaySpec], tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = cache_path(data_dir, specs)
    assert (await load(specs, data_dir))[1] is CacheStatus.BUILT
    assert (await load(specs, data_dir))[1] is CacheStatus.HIT
    spot = specs[0].path
    stat = spot.stat()
    os.utime(spot, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    assert cache_path(data_dir, specs) != first
    assert (await load(specs, data_dir))[1] is CacheStatus.BUILT
    # Cut to its first half: another size, other events.
    spot.write_bytes(spot.read_bytes()[: stat.st_size // 2])
    data, status = await load(specs, data_dir)
    assert status is CacheStatus.BUILT and data is not None
    events, _ = await parsed(specs)
    assert exactly(data.all_events()) == exactly(events)
    # Presenting a file as another venue is another cache too.
    relabelled = [specs[0], ReplaySpec(specs[1].path, "bybit_linear")]
    assert cache_path(data_dir, relabelled) != cache_path(data_dir, specs[:2])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other version"])
async def test_an_unusable_cache_file_is_logged_and_rebuilt(
    specs: list[ReplaySpec], tmp_path: Path, damage: str,
) -> None:
    data_dir = tmp_path / "data"
    good, _ = await load(specs, data_dir)
    assert good is not None
    path = cache_path(data_dir, specs)
    content = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not arrow at all" * 100)
    elif damage == "truncated":
        path.write_bytes(content[: len(content) // 3])
    else:
        stale = pa.ipc.open_file(pa.py_buffer(content))
        schema = stale.schema.with_metadata({**stale.schema.metadata,
                                             b"cryptopipe.backtest_cache": b"0"})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_table(stale.read_all().cast(schema))
    with capture_logs() as logs:
        data, status = await load(specs, data_dir)
    assert status is CacheStatus.BUILT and data is not None
    assert [log["event"] for log in logs if log["log_level"] == "warning"] == [
        "backtest_cache_unusable"]
    assert exactly(data.all_events()) == exactly(good.all_events())
    assert (await load(specs, data_dir))[1] is CacheStatus.HIT  # the rebuilt file is good


async def test_a_cache_that_cannot_be_saved_still_runs(specs: list[ReplaySpec],
                                                       tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cache").write_text("a file where the cache directory would go")
    with capture_logs() as logs:
        data, status = await load(specs, data_dir)
    assert status is CacheStatus.UNSAVED and data is not None
    assert "backtest_cache_not_saved" in [log["event"] for log in logs]


def test_events_the_columns_cannot_carry_exactly_are_refused() -> None:
    stats = ReplayStats([])
    fine = Quote("x", "A/B", 1.0, 2.0, 3.0, 4.0, 5, 6, 7)
    assert len(BacktestData.from_events([fine], stats)) == 1
    for bad in (Quote("x", "A/B", 1, 2.0, 3.0, 4.0, 5, 6),  # an int price would come back float
                Quote("x", "A/B", 1.0, 2.0, 3.0, 4.0, 5, 6, 2**64),  # beyond int64
                Trade("x", "A/B", 1.0, 2.0, "buy", 5, 6, 7)):  # type: ignore[arg-type]
        with pytest.raises(UncacheableEvents):
            BacktestData.from_events([fine, bad], stats)


@pytest.mark.parametrize("bad", [
    Quote("x", "A/B", 3.0, 2.0, 3.0, 4.0, 5, 6, 7),  # bid == ask
    Quote("x", "A/B", -1.0, 2.0, 3.0, 4.0, 5, 6, 7),  # a negative price
    Quote("x", "A/B", 1.0, 2.0, float("inf"), 4.0, 5, 6, 7),
    Quote("x", "A/B", 1.0, float("nan"), 3.0, 4.0, 5, 6, 7),
    Trade("x", "A/B", 1.0, 0.0, "buy", 5, 6, "7"),  # a trade of nothing
])
def test_values_no_parser_publishes_are_not_cached(bad: Quote | Trade) -> None:
    """Issue 13 item 10: the value checks a cache file must pass on reading hold when it
    is written, so a file failing them can only be damage."""
    fine = Quote("x", "A/B", 1.0, 2.0, 3.0, 4.0, 5, 6, 7)
    with pytest.raises(UncacheableEvents):
        BacktestData.from_events([fine, bad], ReplayStats([]))


async def test_the_cache_keeps_under_its_size_dropping_the_least_recently_used(
    specs: list[ReplaySpec], tmp_path: Path,
) -> None:
    """Three entries under a limit that holds the newest two: the one used least recently
    goes (a hit counts as a use) and the entry just built always stays."""
    data_dir = tmp_path / "data"
    spot, usdm, both = [specs[0]], [specs[1]], specs[:2]
    await load(both, tmp_path / "probe")  # only to learn the size of that entry
    both_size = entry_size(cache_path(tmp_path / "probe", both))
    assert (await load(usdm, data_dir))[1] is CacheStatus.BUILT
    assert (await load(spot, data_dir))[1] is CacheStatus.BUILT
    os.utime(cache_path(data_dir, usdm), ns=(1, 1))  # long unused...
    assert (await load(usdm, data_dir))[1] is CacheStatus.HIT  # ...until now
    limit = entry_size(cache_path(data_dir, usdm)) + both_size
    assert (await load(both, data_dir, limit))[1] is CacheStatus.BUILT
    kept = {path.name for path in cache_path(data_dir, both).parent.iterdir()}
    # An entry is its events file and the depth file beside it, kept or dropped together.
    assert kept == {name for spec in (usdm, both)
                    for name in entry_names(cache_path(data_dir, spec))}

    newest = cache_path(data_dir, both)
    assert prune(newest.parent, 0, keep=newest) == [cache_path(data_dir, usdm)]
    assert sorted(path.name for path in newest.parent.iterdir()) == entry_names(newest)


def entry_names(path: Path) -> list[str]:
    return sorted([path.name, path.stem + ".depth"])


def entry_size(path: Path) -> int:
    return path.stat().st_size + path.with_name(path.stem + ".depth").stat().st_size


def test_a_use_right_after_a_build_is_strictly_later(tmp_path: Path) -> None:
    """Files written or touched within one tick of the kernel's coarse clock share an mtime;
    the cache stamps its own, finer time, so "least recently used" is never a tie."""
    from daemon.backtest.cache import _touch

    built, used = tmp_path / "a.arrow", tmp_path / "b.arrow"
    for _ in range(50):
        used.write_bytes(b"x")
        built.write_bytes(b"x")
        _touch(built)
        _touch(used)
        assert used.stat().st_mtime_ns > built.stat().st_mtime_ns
