"""Issue 18 item 2 for rl-internalize: the environment reads its episodes from the chunked
event cache, a chunk at a time, and mirrors them chunk by chunk as the engine reads, with
the events, decision log and rewards of the whole-array mirror (tiny chunks here, so the
shared recording crosses many chunk and depth-batch boundaries)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium", reason="the RL extra is not installed (pip install -e '.[rl]')")

import daemon.backtest.cache as cache_module
import daemon.backtest.depth as depth_module
from adapters.recordings.replay import ReplaySpec
from daemon.backtest.cache import NUMERIC_COLUMNS, QUOTE, BacktestData, CachedEvents, joined, load
from daemon.backtest.depth import joined_depth
from daemon.backtest.engine import window_rows
from daemon.core.clock import NS_PER_SECOND
from daemon.rl.env import InternalizeEnv
from daemon.rl.mirror import MirroredEvents, first_mids, last_quote_rows, mirror
from tests.backtest.test_cache import exactly
from tests.rl.common import MARKET, SYMBOL, TRAIN_FILE, VENUE, log_bytes, rl_settings

CHUNK = 97  # rows: a prime, so chunks end anywhere among quotes, trades and depth
DEPTH_LEVELS = 2_000  # levels per depth batch (the recorder packs every this many)


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", CHUNK)
    monkeypatch.setattr(depth_module, "_PACK_LEVELS", DEPTH_LEVELS)
    return CHUNK


def cached(data_dir: Path, specs: list[ReplaySpec]) -> CachedEvents:
    data, _ = asyncio.run(load(specs, data_dir, depth=True))
    assert isinstance(data, CachedEvents) and data.depth is not None
    return data


def whole_array_first_mids(data: BacktestData, start: int) -> dict[tuple[str, str], float]:
    """The mirror's p0 as it was found before the chunked path: from the whole columns."""
    mids = {}
    rows = np.flatnonzero(data.kind[start:] == QUOTE) + start
    keys = data.key[rows]
    for index, key in enumerate(data.keys):
        found = np.flatnonzero(keys == index)
        if len(found):
            row = rows[found[0]]
            mids[key] = 0.5 * (float(data.price[row]) + float(data.ask[row]))
    return mids


def never(self: CachedEvents) -> BacktestData:
    raise AssertionError("the whole cache was read into memory")


def same_columns(got: BacktestData, expected: BacktestData) -> None:
    """Every column equal bit for bit, and the events built from them."""
    assert len(got) == len(expected)
    for name in NUMERIC_COLUMNS:
        assert getattr(got, name).tobytes() == getattr(expected, name).tobytes(), name
    assert got.trade_id.equals(expected.trade_id)
    assert exactly(got.all_events()) == exactly(expected.all_events())


def test_first_mids_read_chunk_by_chunk_are_those_of_the_whole_columns(
        tmp_path: Path, shared_file: Callable[[str], Path], tiny_chunks: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [ReplaySpec(shared_file(TRAIN_FILE))]
    whole = cached(tmp_path, specs).in_memory()
    data = cached(tmp_path, specs)
    monkeypatch.setattr(CachedEvents, "in_memory", never)
    last_quotes = last_quote_rows(data.chunks())
    quotes = np.flatnonzero(whole.kind == QUOTE)
    assert last_quotes == {(VENUE, SYMBOL): int(quotes[-1])}
    reads: list[int] = []
    chunks = CachedEvents.chunks

    def counted(self: CachedEvents, start: int = 0, stop: int | None = None):
        for first, chunk in chunks(self, start, stop):
            reads.append(first)
            yield first, chunk

    monkeypatch.setattr(CachedEvents, "chunks", counted)
    for start in (0, 1, CHUNK - 1, CHUNK, len(whole) // 3, int(quotes[-1]), len(whole) - 1,
                  len(whole)):
        expected = whole_array_first_mids(whole, start)
        assert first_mids(data, start) == expected, start
        reads.clear()
        assert first_mids(data, start, last_quotes) == expected, start
        later = quotes[quotes >= start]
        if len(later):  # read up to the chunk of the first quote, no further
            assert reads[0] == start and reads[-1] <= later[0] < reads[-1] + CHUNK, start
        else:  # no market quotes again: nothing looked for, nothing read
            assert not expected and not reads, start


def test_a_mirrored_view_reads_the_whole_array_mirror_chunk_by_chunk(
        tmp_path: Path, shared_file: Callable[[str], Path], tiny_chunks: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The events and depth changes `MirroredEvents` yields, chunk by chunk and batch by
    batch (tiny chunks, small depth batches), are those of `mirror` on the whole columns,
    bit for bit, over the whole data and over a row range cut inside two chunks."""
    specs = [ReplaySpec(shared_file(TRAIN_FILE))]
    whole = cached(tmp_path, specs).in_memory()
    data = cached(tmp_path, specs)
    start = len(whole) // 3 + 5
    p0 = whole_array_first_mids(whole, start)
    ticks = {(VENUE, SYMBOL): MARKET["tick"]}
    monkeypatch.setattr(CachedEvents, "in_memory", never)
    for grid in (ticks, None):
        expected = mirror(whole, p0, grid)
        view = MirroredEvents(data, first_mids(data, start), grid)
        assert (view.keys, view.sides, view.stats) == (data.keys, data.sides, data.stats)
        parts = list(view.chunks())
        assert len(parts) == len(data.batches) > 100
        same_columns(joined([chunk for _, chunk in parts]), expected)
        low, high = CHUNK // 2, 7 * CHUNK + 3
        same_columns(joined([chunk for _, chunk in view.chunks(low, high)]),
                     expected.slice(low, high))
        assert view.depth is not None and expected.depth is not None
        batches = list(view.depth.batches())
        assert len(batches) > 10
        assert joined_depth(batches, view.depth.keys).digest() == expected.depth.digest()
        assert view.rows_received(int(whole.local_ts_ns[50]), int(whole.local_ts_ns[900])) \
            == whole.rows_received(int(whole.local_ts_ns[50]), int(whole.local_ts_ns[900]))
        assert view.window_stats(low, high) == whole.window_stats(low, high)


def play(env: InternalizeEnv, options: dict, actions: np.ndarray) -> tuple[list[float], int]:
    """One episode with these actions in turn: its rewards and events run."""
    env.reset(options=options)
    rewards, done = [], False
    while not done:
        _, reward, done, _, info = env.step(int(actions[len(rewards) % len(actions)]))
        rewards.append(reward)
    return rewards, info["result"].events


def test_an_episode_and_a_mirrored_one_never_hold_the_whole_cache_and_equal_the_old_path(
        tmp_path: Path, shared_file: Callable[[str], Path], tiny_chunks: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment on a cache file whose whole read fails: its plain and mirrored
    episodes write the decision log, and earn the rewards, of the old path (the whole
    columns in memory, mirrored as whole arrays through the window's first mids)."""
    specs = [ReplaySpec(shared_file(TRAIN_FILE))]
    whole = cached(tmp_path / "cache", specs).in_memory()
    times = whole.local_ts_ns
    window = (int(times[0]) + 40 * NS_PER_SECOND, int(times[0]) + 80 * NS_PER_SECOND)
    start, stop = window_rows(whole, *window)
    assert len(whole) // CHUNK > 100 and 0 < start < stop < len(whole)
    actions = np.random.default_rng(18).integers(15, size=64)
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old = InternalizeEnv(rl_settings(old_dir), specs, data=whole, decision_log=True)
    p0 = whole_array_first_mids(whole, start)
    mirrored = InternalizeEnv(rl_settings(old_dir), specs, decision_log=True,
                              data=mirror(whole, p0, old._ticks))
    expected = {
        "plain": play(old, {"window": window, "flow_seed": 5, "run_id": "plain"}, actions),
        "mirrored": play(mirrored, {"window": window, "flow_seed": 6, "run_id": "mirrored",
                                    "mirror": False}, actions),
    }

    monkeypatch.setattr(CachedEvents, "in_memory", never)
    data = cached(tmp_path / "cache", specs)  # a fresh open: nothing of it read yet
    env = InternalizeEnv(rl_settings(new_dir), specs, data=data, decision_log=True)
    got = {
        "plain": play(env, {"window": window, "flow_seed": 5, "run_id": "plain"}, actions),
        "mirrored": play(env, {"window": window, "flow_seed": 6, "run_id": "mirrored",
                               "mirror": True}, actions),
    }
    for name in ("plain", "mirrored"):
        assert got[name] == expected[name], name
        assert got[name][1] == stop - start and len(got[name][0]) > 30
        assert log_bytes(new_dir, name) == log_bytes(old_dir, name) != {}
    # A drawn window, and the mirrored replay of it that follows with mirror_prices.
    settings = rl_settings(new_dir, rl={"episode_s": 30.0, "mirror_prices": True})
    env = InternalizeEnv(settings, specs, data=data)
    env.reset(seed=3)
    assert env._replay_mirrored is not None
    for _ in range(2):
        done = False
        while not done:
            _, _, done, _, _ = env.step(7)
        env.reset()
