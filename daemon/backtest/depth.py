"""Recorded depth for a backtest: the books the paper executor walks, as of each order.

A replay with depth (Binance `@depth` diffs on a REST snapshot, Bybit `orderbook.N`) hands
every change of a synced book to a depth route before the events it moves, with the
receive time of its frame (`daemon.core.routes.DepthCallback`). A walk sees a market's
changes in the order they came, up to the first one received after the order reached
the venue (the executor's clock at arrival): a frame received later is not in the book
the order walks, even the one whose event lands the order (its quote is not yet the
touch either).

Frame by frame, `RecordedDepth` takes the changes as the parsers emit them, a
`daemon.market.depth.DepthBooks` on the executor's clock (those of the future wait in a
short queue per market). From the cache, the changes are kept
beside the event columns (`DepthColumns`, one row per change: `pos`, the number of events
published before it, its time, the key, whether it resets the book, and its levels) and
applied lazily: when the executor asks for a market's levels while the engine runs event
row r (`at_row`), that market's changes with `pos <= r` are the ones emitted so far, as
frame by frame. So both paths walk the same books and write the same decision log, and
markets nobody walks cost nothing at run time.

Size (the 75 s Binance sample, spot + USD-M, 25,060 events): 2,156 depth changes with
117,866 levels; the depth file (lz4) is 0.92 MB beside the events' 1.78 MB (1.96 MB as
raw float64). From the cache the changes are read with the events and applied only for
the markets walked; `bench/bench_backtest.py` compares runs with and without depth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from daemon.core.routes import Levels
from daemon.market.depth import DepthBooks


@dataclass(frozen=True, slots=True, eq=False)
class DepthColumns:
    """Depth changes in emission order; the levels of change i are rows
    `offsets[i]:offsets[i + 1]` of `price`/`size`, its `n_bids` first ones the bids."""

    keys: tuple[tuple[str, str], ...]
    pos: np.ndarray  # int64, non-decreasing
    ts: np.ndarray  # int64, local receive time
    key: np.ndarray  # int32, index into keys
    reset: np.ndarray  # bool
    n_bids: np.ndarray  # int32
    offsets: np.ndarray  # int32 (Arrow list offsets), len(pos) + 1
    price: np.ndarray  # float64
    size: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    @property
    def levels(self) -> int:
        return int(self.price.shape[0])

    def digest(self) -> str:
        """SHA-256 of the keys and every column's values."""
        digest = hashlib.sha256(repr(self.keys).encode())
        for column in (self.pos, self.ts, self.key, self.reset, self.n_bids, self.offsets,
                       self.price, self.size):
            digest.update(np.ascontiguousarray(column).view(np.uint8))
        return digest.hexdigest()

    def check(self, events: int) -> None:
        """The invariants the recorder guarantees; raises ValueError naming the broken one."""
        n = len(self)
        if not n:
            raise ValueError("depth: no changes (an empty depth table is not kept)")
        if not (self.key.shape[0] == self.reset.shape[0] == self.n_bids.shape[0]
                == self.ts.shape[0] == n
                and self.offsets.shape[0] == n + 1 and self.size.shape == self.price.shape):
            raise ValueError("depth: column lengths disagree")
        if self.offsets[0] != 0 or self.offsets[-1] != self.levels or np.any(
                np.diff(self.offsets) < 0):
            raise ValueError("depth: level offsets out of order")
        if np.any(np.diff(self.pos) < 0) or self.pos[0] < 0 or self.pos[-1] > events:
            raise ValueError("depth: positions out of order or past the events")
        if self.key.min() < 0 or self.key.max() >= len(self.keys):
            raise ValueError("depth: key index out of range")
        if np.any(self.n_bids < 0) or np.any(self.n_bids > np.diff(self.offsets)):
            raise ValueError("depth: bid counts out of range")
        if not (np.isfinite(self.price).all() and np.isfinite(self.size).all()):
            raise ValueError("depth: a value that is not finite")
        if np.any(self.price <= 0.0) or np.any(self.size < 0.0):
            raise ValueError("depth: price <= 0 or negative size")


class DepthRecorder:
    """A `KeyedDepthCallback` that keeps every change with its position among the events
    published so far (the length of `published`), to build `DepthColumns`."""

    def __init__(self, published: list[object]) -> None:
        self._published = published
        self._keys: dict[tuple[str, str], int] = {}
        self._pos: list[int] = []
        self._ts: list[int] = []
        self._key: list[int] = []
        self._reset: list[bool] = []
        self._n_bids: list[int] = []
        self._ends: list[int] = [0]
        self._price: list[float] = []
        self._size: list[float] = []

    def __call__(self, exchange: str, symbol: str, local_ts_ns: int, reset: bool,
                 bids: Levels, asks: Levels) -> None:
        self._pos.append(len(self._published))
        self._ts.append(local_ts_ns)
        self._key.append(self._keys.setdefault((exchange, symbol), len(self._keys)))
        self._reset.append(reset)
        price, size = self._price, self._size
        start = len(price)
        for side, levels in enumerate((bids, asks)):
            # One unzip per side instead of two appends per level.
            prices, sizes = zip(*levels, strict=True) if levels else ((), ())
            price.extend(prices)
            size.extend(sizes)
            if side == 0:
                self._n_bids.append(len(price) - start)
        self._ends.append(len(price))

    def columns(self) -> DepthColumns | None:
        """What was recorded, None if nothing was."""
        if not self._pos:
            return None
        if self._ends[-1] >= 2**31:
            raise ValueError(f"depth: {self._ends[-1]} levels, more than an Arrow list holds")
        return DepthColumns(
            keys=tuple(self._keys), pos=np.array(self._pos, dtype=np.int64),
            ts=np.array(self._ts, dtype=np.int64), key=np.array(self._key, dtype=np.int32),
            reset=np.array(self._reset, dtype=np.bool_),
            n_bids=np.array(self._n_bids, dtype=np.int32),
            offsets=np.array(self._ends, dtype=np.int32),
            price=np.array(self._price, dtype=np.float64),
            size=np.array(self._size, dtype=np.float64),
        )


class RecordedDepth(DepthBooks):
    """The backtest's `DepthProvider` (see the module docstring): fed frame by frame
    through `apply` (a `DepthBooks` on the executor's clock), or from `DepthColumns`
    through `load` and `at_row`."""

    def __init__(self, clock: Callable[[], int] = lambda: 0) -> None:
        super().__init__(clock)
        #: The event row being run: changes with pos <= at_row have been emitted.
        self.at_row = 0
        self._columns: DepthColumns | None = None
        self._key_ids: dict[tuple[str, str], int] = {}
        self._changes: list[list[int]] = []  # per key: its change indices
        self._applied: list[int] = []  # per key: how many of them are applied

    # -- from the cache ------------------------------------------------------------------

    def load(self, columns: DepthColumns) -> None:
        self._columns = columns
        self._key_ids = {key: index for index, key in enumerate(columns.keys)}
        self._changes = [np.flatnonzero(columns.key == index).tolist()
                         for index in range(len(columns.keys))]
        self._applied = [0] * len(columns.keys)

    def _catch_up(self, exchange: str, symbol: str, now: int) -> None:
        index = self._key_ids.get((exchange, symbol))
        if index is None:
            return
        columns = self._columns
        assert columns is not None
        changes = self._changes[index]
        done = self._applied[index]
        book = self.book(exchange, symbol)
        pos, ts, offsets, n_bids, reset = (columns.pos, columns.ts, columns.offsets,
                                           columns.n_bids, columns.reset)
        at_row = self.at_row
        while done < len(changes):
            change = changes[done]
            if pos.item(change) > at_row or ts.item(change) > now:
                break
            start, end = offsets.item(change), offsets.item(change + 1)
            middle = start + n_bids.item(change)
            levels = list(zip(columns.price[start:end].tolist(),
                              columns.size[start:end].tolist(), strict=True))
            book.apply(ts.item(change), reset.item(change), levels[:middle - start],
                       levels[middle - start:])
            done += 1
        self._applied[index] = done

    # -- the provider --------------------------------------------------------------------

    def levels(self, exchange: str, symbol: str, side: str) -> list[tuple[float, float]] | None:
        if self._columns is not None:
            self._catch_up(exchange, symbol, self.clock())  # type: ignore[misc]
        return super().levels(exchange, symbol, side)
