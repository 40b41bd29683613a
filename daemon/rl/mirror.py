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

An episode mirrors as the engine reads (`MirroredEvents`, issue 18: many days in bounded
memory): a view of the event source (a cache file read a chunk at a time, or columns in
memory) whose chunks and depth batches are reflected as they are read, nothing kept and
nothing written to the cache; p0 is found by reading chunks from the window's first row
until each market has quoted (`first_mids`). The reflection is elementwise (a depth
change's levels stay within their change), so chunk by chunk it gives, value for value,
what `mirror` gives on the whole columns (tests and tools).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from adapters.recordings.replay import ReplayStats
from daemon.backtest.cache import QUOTE, BacktestData, EventSource
from daemon.backtest.depth import (
    BatchSummary,
    ChangeIndex,
    DepthColumns,
    DepthSource,
    batches_from,
    index_batches,
)

Key = tuple[str, str]
#: Slack against float noise when putting a price back on the tick grid (in ticks).
_GRID_SLACK = 1e-7


def first_mids(data: EventSource, start: int = 0,
               last_quotes: Mapping[Key, int] | None = None) -> dict[Key, float]:
    """Each market's first quote mid at or after row `start` (the mirror's p0), read a
    chunk at a time from `start` until every market has quoted.

    `last_quotes`: each market's last quote row, if known (`last_quote_rows`): the markets
    that quote no more after `start` are not looked for, so the read stops at the last
    market's first quote instead of running to the end of the data for them."""
    keys = data.keys
    sought = {index for index, key in enumerate(keys)
              if last_quotes is None or last_quotes.get(key, -1) >= start}
    found: dict[int, float] = {}
    if sought:
        for _, chunk in data.chunks(start):
            rows = np.flatnonzero(chunk.kind == QUOTE)
            firsts, at = np.unique(chunk.key[rows], return_index=True)
            for index, row in zip(firsts.tolist(), rows[at].tolist(), strict=True):
                if index in sought and index not in found:
                    found[index] = 0.5 * (float(chunk.price[row]) + float(chunk.ask[row]))
            if len(found) == len(sought):
                break
    return {keys[index]: found[index] for index in sorted(found)}


def last_quote_rows(chunks: Iterable[tuple[int, BacktestData]]) -> dict[Key, int]:
    """Each market's last quote row in these chunks (for `first_mids`)."""
    last: dict[Key, int] = {}
    for first, chunk in chunks:
        rows = np.flatnonzero(chunk.kind == QUOTE)
        if not len(rows):
            continue
        # np.unique keeps each key's first place in the reversed rows: its last quote.
        lasts, at = np.unique(chunk.key[rows][::-1], return_index=True)
        for index, row in zip(lasts.tolist(), rows[::-1][at].tolist(), strict=True):
            last[chunk.keys[index]] = first + row
    return last


def mirror(data: EventSource, p0: Mapping[Key, float],
           ticks: Mapping[Key, float] | None = None) -> BacktestData:
    """`data` with each market in `p0` reflected through p0 (see the module docstring);
    markets not in `p0` are left as they are. In memory, whole (tests and tools; an
    episode reads `MirroredEvents` instead)."""
    data = data.in_memory()
    ticks = ticks or {}
    depth = data.depth
    if depth is not None:
        depth = _mirror_depth(depth, p0, ticks)
    return _mirror_columns(data, *_tables(data.keys, p0, ticks), depth)


class MirroredEvents:
    """`source` with each market in `p0` reflected through p0, read as the engine reads
    any event source (`chunks`, `depth.batches()`, `rows_received`, `window_stats`): each
    chunk and depth batch is reflected when read (see the module docstring), so memory
    holds what the source's reading holds. `Backtest.open` runs it as it runs the source.
    """

    def __init__(self, source: EventSource, p0: Mapping[Key, float],
                 ticks: Mapping[Key, float] | None = None) -> None:
        self.source = source
        self.p0 = dict(p0)
        self.ticks = dict(ticks or {})
        self.keys = source.keys
        self.sides = source.sides
        self.stats = source.stats  # counts and times: the same mirrored
        self._centre, self._tick = _tables(self.keys, self.p0, self.ticks)
        self.depth = MirroredDepth(source.depth, self.p0, self.ticks) \
            if source.depth is not None else None

    def __len__(self) -> int:
        return len(self.source)

    def chunks(self, start: int = 0, stop: int | None = None
               ) -> Iterator[tuple[int, BacktestData]]:
        """(first row, mirrored columns) of the rows [start, stop), as the source's chunks."""
        for first, chunk in self.source.chunks(start, stop):
            yield first, _mirror_columns(chunk, self._centre, self._tick, self.depth)

    def rows_received(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        return self.source.rows_received(start_ns, end_ns)  # times are not mirrored

    def window_stats(self, start: int, stop: int) -> ReplayStats:
        return self.source.window_stats(start, stop)  # nor kinds

    def in_memory(self) -> BacktestData:
        """The whole mirrored columns (tests and tools)."""
        return mirror(self.source, self.p0, self.ticks)


class MirroredDepth:
    """A depth source (`keys`, `batches()`: what `RecordedDepth.load` reads) with each
    batch of changes reflected as it is read."""

    def __init__(self, source: DepthSource, p0: Mapping[Key, float],
                 ticks: Mapping[Key, float]) -> None:
        self.source = source
        self.keys = source.keys
        self.p0 = p0
        self.ticks = ticks

    def batches(self) -> Iterator[DepthColumns]:
        return self.batches_from(0)

    def batches_from(self, first: int, skip: int = 0) -> Iterator[DepthColumns]:
        """The batches from the `first`'th on, its first `skip` changes left out, mirrored;
        those before are neither read nor mirrored (an episode's depth seeks to its
        markets' last book resets: `RecordedDepth._seek`)."""
        for batch in batches_from(self.source, first, skip):
            yield _mirror_depth(batch, self.p0, self.ticks)

    def index_batches(self, first: int = 0) -> Iterator[ChangeIndex]:
        """The source's index columns: mirroring moves only levels, never these."""
        return index_batches(self.source, first)

    @property
    def summaries(self) -> list[BatchSummary] | None:
        """The source's batch summaries, if it has them (nor these)."""
        return getattr(self.source, "summaries", None)


def _tables(keys: Sequence[Key], p0: Mapping[Key, float], ticks: Mapping[Key, float]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per key index: its p0 (NaN: not mirrored) and its tick (0: none known)."""
    centre = np.array([p0.get(key, math.nan) for key in keys] or [math.nan])
    tick = np.array([ticks.get(key, 0.0) for key in keys] or [0.0])
    return centre, tick


def _mirror_columns(data: BacktestData, centre: np.ndarray, tick: np.ndarray,
                    depth: DepthColumns | MirroredDepth | None) -> BacktestData:
    """The rows of `data` reflected (elementwise: any run of rows mirrors alone), `depth`
    the mirrored changes beside them (a chunk carries its source's depth, read apart)."""
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
