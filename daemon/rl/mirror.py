"""Mirrored price paths: the same recording with every price reflected through its start.

Training data augmentation (`strategies.rl_internalize.mirror_prices`): a rally becomes a
sell-off of the same size and speed, so an agent cannot learn "the market went up that
day". Each market's prices p become p0^2 / p, p0 its first mid in the window played
(so the mirrored path starts where the recorded one does). Reflection turns the book
over: the mirrored bid is p0^2 / ask and the mirrored ask p0^2 / bid, with the sizes
going along (the size at the best ask is now at the best bid); a trade's price is
reflected and its aggressor side swapped (a buyer lifting the ask becomes a seller
hitting the bid); the recorded depth books' changes likewise (asks become bids, in the
order a book keeps them). Quantities stay base units; times, sequence numbers and
staleness are untouched.

Where the market's tick is known (`venues.<venue>.markets.<symbol>.tick`) the reflected
prices go back on its grid: bids down, asks up (a quote keeps bid < ask; a level keeps
its side), trades to the nearest tick. Without a tick they are left as computed.

The mirrored data is a new `BacktestData` in memory: the engine runs it like any other,
nothing of it is written to the cache.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from daemon.backtest.cache import QUOTE, BacktestData, EventSource
from daemon.backtest.depth import DepthColumns

Key = tuple[str, str]
#: Slack against float noise when putting a price back on the tick grid (in ticks).
_GRID_SLACK = 1e-7


def first_mids(data: EventSource, start: int = 0) -> dict[Key, float]:
    """Each market's first quote mid at or after row `start` (the mirror's p0)."""
    data = data.in_memory()
    mids: dict[Key, float] = {}
    rows = np.flatnonzero(data.kind[start:] == QUOTE) + start
    keys = data.key[rows]
    for index, key in enumerate(data.keys):
        found = np.flatnonzero(keys == index)
        if len(found):
            row = rows[found[0]]
            mids[key] = 0.5 * (float(data.price[row]) + float(data.ask[row]))
    return mids


def mirror(data: EventSource, p0: Mapping[Key, float],
           ticks: Mapping[Key, float] | None = None) -> BacktestData:
    """`data` with each market in `p0` reflected through p0 (see the module docstring);
    markets not in `p0` are left as they are. In memory (a cache file is read whole)."""
    data = data.in_memory()
    ticks = ticks or {}
    centre = np.array([p0.get(key, math.nan) for key in data.keys] or [math.nan])
    tick = np.array([ticks.get(key, 0.0) for key in data.keys] or [0.0])
    square = (centre * centre)[data.key]
    row_tick = tick[data.key]
    mirrored = np.isfinite(square)
    quote = data.kind == QUOTE
    bid, ask = data.price, data.ask
    new_bid = _reflect(square, ask, row_tick, np.floor)
    new_ask = _reflect(square, bid, row_tick, np.ceil)
    traded = _reflect(square, bid, row_tick, np.round)
    swap = mirrored & quote
    price = np.where(swap, new_bid, np.where(mirrored & ~quote, traded, bid))
    new_ask_column = np.where(swap, new_ask, ask)
    qty = np.where(swap, data.ask_qty, data.qty)
    ask_qty = np.where(swap, data.qty, data.ask_qty)
    side = _swap_sides(data, mirrored & ~quote)
    depth = data.depth
    if depth is not None:
        depth = _mirror_depth(depth, p0, ticks)
    return dataclasses.replace(data, price=price, ask=new_ask_column, qty=qty,
                               ask_qty=ask_qty, side=side, depth=depth)


def _reflect(square: np.ndarray, price: np.ndarray, tick: np.ndarray, to_grid: np.ufunc) -> \
        np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        reflected = square / price
        on_grid = tick > 0.0
        safe_tick = np.where(on_grid, tick, 1.0)
        steps = reflected / safe_tick
        if to_grid is np.floor:
            steps = np.floor(steps + _GRID_SLACK)
        elif to_grid is np.ceil:
            steps = np.ceil(steps - _GRID_SLACK)
        else:
            steps = np.round(steps)
        gridded = _round_to_tick_decimals(steps * safe_tick, safe_tick)
    return np.where(on_grid, gridded, reflected)


def _round_to_tick_decimals(values: np.ndarray, tick: np.ndarray) -> np.ndarray:
    """k * tick as the decimal the venue would print (0.01 * 339002 is not 3390.02)."""
    decimals = np.clip(np.ceil(-np.log10(tick)).astype(np.int64) + 1, 0, 12)
    out = values.copy()
    for digits in np.unique(decimals).tolist():
        chosen = decimals == digits
        out[chosen] = np.round(values[chosen], digits)
    return out


def _swap_sides(data: BacktestData, rows: np.ndarray) -> np.ndarray:
    """Trade aggressor sides buy <-> sell on `rows`; other side names stay."""
    opposite = {"buy": "sell", "sell": "buy"}
    table = np.array([data.sides.index(opposite[name])
                      if name in opposite and opposite[name] in data.sides else index
                      for index, name in enumerate(data.sides)] or [0], dtype=data.side.dtype)
    if not len(data.sides):
        return data.side
    return np.where(rows, table[data.side], data.side)


def _mirror_depth(depth: DepthColumns, p0: Mapping[Key, float],
                  ticks: Mapping[Key, float]) -> DepthColumns:
    """Each change's levels reflected, its asks (now bids) first, then its bids (now
    asks): a side's levels keep the book's order (best first becomes best first)."""
    centre = np.array([p0.get(key, math.nan) for key in depth.keys] or [math.nan])
    tick = np.array([ticks.get(key, 0.0) for key in depth.keys] or [0.0])
    counts = np.diff(depth.offsets).astype(np.int64)
    change = np.repeat(np.arange(len(depth)), counts)  # the change of each level
    local = np.arange(depth.levels) - depth.offsets[:-1].astype(np.int64)[change]
    n_bids = depth.n_bids.astype(np.int64)[change]
    n_asks = counts[change] - n_bids
    was_bid = local < n_bids
    # Old asks first (they are the new bids), then the old bids.
    target = depth.offsets[:-1].astype(np.int64)[change] + np.where(
        was_bid, n_asks + local, local - n_bids)
    key = depth.key[change]
    square = (centre * centre)[key]
    level_tick = tick[key]
    reflected = np.where(was_bid, _reflect(square, depth.price, level_tick, np.ceil),
                         _reflect(square, depth.price, level_tick, np.floor))
    mirrored = np.isfinite(square)
    # Markets not mirrored keep their levels where they were.
    target = np.where(mirrored, target, np.arange(depth.levels))
    price = np.empty_like(depth.price)
    size = np.empty_like(depth.size)
    price[target] = np.where(mirrored, reflected, depth.price)
    size[target] = depth.size
    key_mirrored = np.isfinite(centre)[depth.key] if len(depth) else np.zeros(0, bool)
    new_n_bids = np.where(key_mirrored, counts - depth.n_bids, depth.n_bids).astype(
        depth.n_bids.dtype)
    return dataclasses.replace(depth, price=price, size=size, n_bids=new_n_bids)
