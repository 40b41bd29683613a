"""Mirrored price paths (daemon/rl/mirror.py): p0^2/p on a real recording, the book turned
over, back on the tick grid; an environment with mirror_prices plays each window twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from adapters.recordings.replay import ReplaySpec
from daemon.backtest.cache import QUOTE, TRADE, BacktestData, load
from daemon.rl.mirror import first_mids, mirror
from tests.rl.common import MARKET, SYMBOL, TRAIN_FILE, VENUE, rl_settings

KEY = (VENUE, SYMBOL)
TICK = MARKET["tick"]


def recorded(data_dir: Path, path: Path) -> BacktestData:
    data, _ = asyncio.run(load([ReplaySpec(path)], data_dir, depth=True))
    assert data is not None and data.depth is not None
    return data


def test_a_mirrored_recording_is_reflected_through_its_first_mid_on_the_tick_grid(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    data = recorded(tmp_path, shared_file(TRAIN_FILE))
    start = len(data) // 3  # a window that starts inside the file
    p0 = first_mids(data, start)[KEY]
    flipped = mirror(data, {KEY: p0}, {KEY: TICK})
    quotes = data.kind == QUOTE
    bid, ask = flipped.price[quotes], flipped.ask[quotes]
    assert np.all(bid < ask)
    # Within a tick of p0^2/ask and p0^2/bid: bids rounded down, asks up.
    assert np.all((bid <= p0 * p0 / data.ask[quotes]) & (bid > p0 * p0 / data.ask[quotes] - TICK))
    assert np.all((ask >= p0 * p0 / data.price[quotes]) & (ask < p0 * p0 / data.price[quotes]
                                                           + TICK))
    assert np.allclose(np.round(bid / TICK), bid / TICK, atol=1e-6)
    assert np.array_equal(flipped.qty[quotes], data.ask_qty[quotes])  # sizes go along
    first = np.flatnonzero(quotes[start:])[0] + start
    assert 0.5 * (flipped.price[first] + flipped.ask[first]) == pytest.approx(p0, abs=TICK)
    trades = data.kind == TRADE
    assert np.allclose(flipped.price[trades], p0 * p0 / data.price[trades], atol=TICK / 2 + 1e-9)
    sides = np.array(data.sides)
    assert np.all(sides[flipped.side[trades]] != sides[data.side[trades]])
    assert set(sides[data.side[trades]]) == {"buy", "sell"}
    depth, turned = data.depth, flipped.depth
    assert turned is not None
    levels = np.diff(depth.offsets)
    assert np.array_equal(turned.n_bids, levels - depth.n_bids)
    for change in range(0, len(depth), 97):  # the old asks are the new bids, and back
        old, new = depth.offsets[change], turned.offsets[change]
        old_bids = depth.price[old:old + depth.n_bids[change]]
        old_asks = depth.price[old + depth.n_bids[change]:depth.offsets[change + 1]]
        middle = new + turned.n_bids[change]
        new_bids, new_asks = turned.price[new:middle], turned.price[middle:turned.offsets[
            change + 1]]
        assert np.all((new_bids <= p0 * p0 / old_asks) & (new_bids > p0 * p0 / old_asks - TICK))
        assert np.all((new_asks >= p0 * p0 / old_bids) & (new_asks < p0 * p0 / old_bids + TICK))


def test_mirroring_twice_without_a_grid_gives_the_recording_back(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    data = recorded(tmp_path, shared_file(TRAIN_FILE))
    p0 = first_mids(data)
    twice = mirror(mirror(data, p0), p0)
    for column in ("price", "ask", "qty", "ask_qty", "side"):
        assert np.allclose(getattr(twice, column), getattr(data, column), rtol=1e-12), column
    assert twice.depth is not None and data.depth is not None
    assert np.allclose(twice.depth.price, data.depth.price, rtol=1e-12)
    assert np.array_equal(twice.depth.n_bids, data.depth.n_bids)


def test_with_mirror_prices_each_window_is_played_again_mirrored(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    pytest.importorskip("gymnasium", reason="the RL extra is not installed")
    from daemon.rl.env import InternalizeEnv

    settings = rl_settings(tmp_path, rl={"episode_s": 30.0, "mirror_prices": True})
    env = InternalizeEnv(settings, [ReplaySpec(shared_file(TRAIN_FILE))])
    paths = []
    for episode in range(2):
        # The same flow seed both times, so clients arrive at the same times.
        _, info = env.reset(seed=11 if episode == 0 else None, options={"flow_seed": 5})
        times, mids, done = [info["now_ns"]], [env.strategy._mid()], False
        while not done:
            _, _, done, _, info = env.step(7)  # shade 0, hedge half
            if not done:
                times.append(info["now_ns"])
                mids.append(env.strategy._mid())
        paths.append((times, np.array(mids)))
    (times, mids), (mirrored_times, mirrored_mids) = paths
    assert mirrored_times == times and len(times) > 25  # the same window, decision for decision
    p0 = mids[0]  # ~ the first mid (the decisions start a second into the window)
    assert np.allclose(mirrored_mids, p0 * p0 / mids, rtol=2e-4)
    assert np.corrcoef(np.diff(mids), np.diff(mirrored_mids))[0, 1] < -0.9
