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
frame by frame. So both paths walk the same books and write the same decision log. The
changes are read in batches as the rows reach them, and those every later walk will see
are folded into sorted arrays per market (`RecordedDepth.settle`), so a month of depth
never sits in memory.

A run that starts late in the data (a sweep or walk-forward span, an RL episode, a stepped
window) does not read its way there: a market's book as of the first walk is its last
reset (a snapshot) and the changes after it, so the first read (`RecordedDepth._seek`)
looks only at the small `pos`/`ts`/`key`/`reset` columns of the batches up to the first
row asked for (`DepthSource.index_batches`, read column-wise from a cache file) and
starts reading whole batches (`DepthSource.batches_from`) at the earliest change a later
walk can need: each market's last reset among the changes it would already have applied.

Size (the 75 s Binance sample, spot + USD-M, 25,060 events): 2,156 depth changes with
117,866 levels; the depth file (lz4) is 0.92 MB beside the events' 1.78 MB (1.96 MB as
raw float64). From the cache the changes are read with the events and applied only for
the markets walked; `bench/bench_backtest.py` compares runs with and without depth.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple, Protocol

import numpy as np

from daemon.core.routes import Levels
from daemon.market.depth import DepthBooks


class UndeclaredBook(RuntimeError):
    """An order walked the book of a market its strategy did not declare (its changes were
    not kept: `RecordedDepth.load(markets=...)`): the strategy broke its promise."""


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
        for column in (self.pos, self.ts, self.key, self.reset, self.n_bids,
                       self.offsets.astype(np.int32), self.price, self.size):
            digest.update(np.ascontiguousarray(column).view(np.uint8))
        return digest.hexdigest()

    def batches(self) -> Iterator[DepthColumns]:
        """The changes in batches (in memory: one; a cache file's depth: as written)."""
        yield self

    def rows(self, start: int, stop: int) -> DepthColumns:
        """Changes [start, stop), their levels rebased to start at 0 (views but offsets)."""
        low, high = int(self.offsets[start]), int(self.offsets[stop])
        return DepthColumns(self.keys, self.pos[start:stop], self.ts[start:stop],
                            self.key[start:stop], self.reset[start:stop],
                            self.n_bids[start:stop], self.offsets[start:stop + 1] - low,
                            self.price[low:high], self.size[low:high])

    def take(self, changes: np.ndarray) -> DepthColumns:
        """These changes (indices, in order), with their levels."""
        counts = np.diff(self.offsets)[changes]
        levels = _spans(self.offsets[changes], counts)
        return DepthColumns(self.keys, self.pos[changes], self.ts[changes],
                            self.key[changes], self.reset[changes], self.n_bids[changes],
                            np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
                            self.price[levels], self.size[levels])

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
    published so far (the length of `published`), to build `DepthColumns`.

    With a `sink` (a cache being built), the changes go to it in parts of ~`_PACK_LEVELS`
    levels as they come (`flush()` hands over the last), and nothing is kept."""

    def __init__(self, published: Sized,
                 sink: Callable[[DepthColumns], None] | None = None) -> None:
        self._published = published
        self._sink = sink
        self._keys: dict[tuple[str, str], int] = {}
        self._pos: list[int] = []
        self._ts: list[int] = []
        self._key: list[int] = []
        self._reset: list[bool] = []
        self._n_bids: list[int] = []
        self._ends: list[int] = [0]
        self._price: list[float] = []
        self._size: list[float] = []
        #: What was recorded before the lists above, as arrays: a level in a list costs
        #: ~64 bytes (two float objects), in an array 16.
        self._parts: list[DepthColumns] = []

    @property
    def keys(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._keys)

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
        if len(price) >= _PACK_LEVELS:
            self.flush()

    def flush(self) -> None:
        """Pack the lists into arrays: a part kept, or handed to the sink."""
        if not self._pos:
            return
        part = DepthColumns(
            keys=self.keys, pos=np.array(self._pos, dtype=np.int64),
            ts=np.array(self._ts, dtype=np.int64), key=np.array(self._key, dtype=np.int32),
            reset=np.array(self._reset, dtype=np.bool_),
            n_bids=np.array(self._n_bids, dtype=np.int32),
            offsets=np.array(self._ends, dtype=np.int64),
            price=np.array(self._price, dtype=np.float64),
            size=np.array(self._size, dtype=np.float64),
        )
        self._pos, self._ts, self._key, self._reset, self._n_bids = [], [], [], [], []
        self._ends, self._price, self._size = [0], [], []
        if self._sink is not None:
            self._sink(part)
        else:
            self._parts.append(part)

    def columns(self) -> DepthColumns | None:
        """What was recorded (without a sink), None if nothing was."""
        self.flush()
        if not self._parts:
            return None
        whole = joined_depth(self._parts, self.keys)
        if whole.levels >= 2**31:
            raise ValueError(f"depth: {whole.levels} levels, more than an Arrow list holds")
        return whole


def joined_depth(parts: list[DepthColumns], keys: tuple[tuple[str, str], ...]
                 ) -> DepthColumns:
    """Runs of changes as one, in order (offsets rebased)."""
    if len(parts) == 1:
        return dataclasses.replace(parts[0], keys=keys)
    ends = np.cumsum([part.levels for part in parts])
    offsets = [parts[0].offsets] + [part.offsets[1:] + end
                                    for part, end in zip(parts[1:], ends[:-1], strict=True)]

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    return DepthColumns(keys, column("pos"), column("ts"), column("key"), column("reset"),
                        column("n_bids"), np.concatenate(offsets), column("price"),
                        column("size"))


def _spans(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices start[i] .. start[i] + count[i] - 1 of every i, in order."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(total) - np.repeat(ends - counts - starts, counts)


#: The recorder packs its lists into arrays every this many levels.
_PACK_LEVELS = 1 << 18


class RecordedDepth(DepthBooks):
    """The backtest's `DepthProvider` (see the module docstring): fed frame by frame
    through `apply` (a `DepthBooks` on the executor's clock), or from saved changes
    through `load` (`DepthColumns`, or a cache file's depth read batch by batch) and
    `at_row`.

    From saved changes, memory stays bounded however long the data: the changes are
    read as the rows reach them, and those every later walk will have applied (emitted
    by the first row not yet run, `settle`, and received by the executor's clock, which
    never goes back) are folded into each market's book, kept as sorted arrays (the last
    size written at each price since the last reset, the sizes of 0 removed: what
    applying them one by one leaves). A walk folds what it may see and reads the book.
    The first read seeks past what no walk from there on needs (`_seek`): a late window
    reads from its markets' last resets, not from the start of the data."""

    def __init__(self, clock: Callable[[], int] = lambda: 0) -> None:
        super().__init__(clock)
        #: The event row being run: changes with pos <= at_row have been emitted.
        self.at_row = 0
        self._batches: Iterator[DepthColumns] | None = None
        self._key_ids: dict[tuple[str, str], int] = {}
        self._batch: DepthColumns | None = None
        self._taken = 0  # changes of `_batch` moved to `_pending`
        #: Per key: changes read, not folded yet (in order), and the folded book per side.
        self._unfolded: list[list[DepthColumns]] = []
        self._folded: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        #: The saved changes loaded, until the first read seeks into them (`_seek`).
        self._source: DepthColumns | DepthSource | None = None
        #: Per key: whether an order may walk its book (else its changes are dropped).
        self._walked: list[bool] = []

    # -- from saved changes --------------------------------------------------------------

    def load(self, columns: DepthColumns | DepthSource,
             markets: frozenset[tuple[str, str]] | None = None) -> None:
        """Walk these saved changes; nothing is read until the first walk or `settle`.
        `markets`: the only ones an order can walk (the strategy's declared markets);
        the other markets' changes are never folded. None: every market's are."""
        self._source = columns
        self._batches = iter(())
        self._key_ids = {key: index for index, key in enumerate(columns.keys)}
        self._walked = [markets is None or key in markets for key in columns.keys]
        self._batch, self._taken = None, 0
        self._unfolded = [[] for _ in columns.keys]
        self._folded = [{"bid": (_NO_LEVELS, _NO_LEVELS), "ask": (_NO_LEVELS, _NO_LEVELS)}
                       for _ in columns.keys]

    def settle(self, row: int) -> None:
        """Fold every market's changes emitted by `row` (the first row not run yet: later
        walks run at or after it) and received by the clock (called between chunks).
        Before the first walk nothing is read: that walk reads from each market's last
        reset (`_seek`), so a run whose orders never walk reads no depth at all."""
        if self._batches is None or self._source is not None:
            return
        self._take(row)
        now = self.clock()  # type: ignore[misc]
        for index, pending in enumerate(self._unfolded):
            if pending:
                self._fold(index, row, now)

    def _take(self, row: int) -> None:
        """Move the changes with pos <= row out of the batches, per key."""
        assert self._batches is not None
        if self._source is not None:
            self._seek(row, self.clock())  # type: ignore[misc]
        while True:
            batch = self._batch
            if batch is None or self._taken >= len(batch):
                batch = next(self._batches, None)
                if batch is None:
                    self._batch = None
                    return
                self._batch, self._taken = batch, 0
            end = int(batch.pos.searchsorted(row, side="right"))
            if end > self._taken:
                part = batch.rows(self._taken, end)
                for index in np.unique(part.key).tolist():
                    if self._walked[index]:
                        self._unfolded[index].append(
                            part.take(np.flatnonzero(part.key == index)))
                self._taken = end
            if end < len(batch):
                return

    def _seek(self, row: int, now: int) -> None:
        """Start reading at the earliest change a walk from (`row`, `now`) on can need.

        A fold applies a market's changes in order up to the first not emitted by the row
        or not received by the clock, from the last reset among them; row and clock never
        go back. So every later fold of a market applies at least the changes ready now,
        and the book it builds starts at or after the last reset among those: the changes
        before it are never looked at, nor any change before every market's such reset
        (a market without one is read from its first change). To find it, the batches
        whose changes are all ready are looked at through their summaries (`summaries`,
        a cache file's), the others up to `row` through their index columns alone."""
        source, self._source = self._source, None
        assert source is not None
        blocked: set[int] = set()  # markets with a change not ready: later ones wait
        #: Per market: (batch, change) of the first of its changes a later fold applies.
        floors: dict[int, tuple[int, int]] = {}
        # The batches all of whose changes are ready, from their summaries (nothing read).
        start = 0
        for summary in getattr(source, "summaries", None) or ():
            if summary.last_pos > row or summary.last_ts > now:
                break
            for key, change in summary.firsts.items():
                if self._walked[key]:
                    floors.setdefault(key, (start, change))
            floors.update((key, (start, change)) for key, change in summary.resets.items()
                          if self._walked[key])
            start += 1
        for number, index in enumerate(index_batches(source, start), start):
            if not len(index.pos) or int(index.pos[0]) > row:
                break
            ready = (index.pos <= row) & (index.ts <= now)
            for key in np.unique(index.key).tolist():
                if key in blocked or not self._walked[key]:
                    continue
                mine = np.flatnonzero(index.key == key)
                waiting = np.flatnonzero(~ready[mine])
                applied = mine[:int(waiting[0])] if len(waiting) else mine
                resets = applied[index.reset[applied]]
                if len(resets):
                    floors[key] = (number, int(resets[-1]))
                else:
                    floors.setdefault(key, (number, int(mine[0])))
                if len(waiting):
                    blocked.add(key)
            if len(blocked) == sum(self._walked):
                break
        first, skip = min(floors.values()) if floors else (0, 0)
        self._batches = batches_from(source, first, skip)

    def _fold(self, index: int, row: int, now: int) -> None:
        """Fold the key's first changes with pos <= row and ts <= now into its book."""
        pending = self._unfolded[index]
        changes = joined_depth(pending, ()) if len(pending) > 1 else pending[0]
        ready = (changes.pos <= row) & (changes.ts <= now)
        count = len(changes) if ready.all() else int(np.argmin(ready))
        self._unfolded[index] = [changes.rows(count, len(changes))] if count < len(changes) \
            else []
        if not count:
            return
        resets = np.flatnonzero(changes.reset[:count])
        first = int(resets[-1]) if len(resets) else 0
        done = changes.rows(first, count)
        counts = np.diff(done.offsets)
        within = np.arange(done.levels) - np.repeat(done.offsets[:-1], counts)
        is_bid = within < np.repeat(done.n_bids, counts)
        book = self._folded[index]
        for side, mask in (("bid", is_bid), ("ask", ~is_bid)):
            prices, sizes = book[side] if not len(resets) else (_NO_LEVELS, _NO_LEVELS)
            prices = np.concatenate((prices, done.price[mask]))
            sizes = np.concatenate((sizes, done.size[mask]))
            # The last size written at each price (np.unique keeps the first of the
            # reversed order), the removed ones (size 0) dropped.
            unique, last = np.unique(prices[::-1], return_index=True)
            kept = sizes[::-1][last]
            book[side] = (unique[kept > 0.0], kept[kept > 0.0])

    # -- the provider --------------------------------------------------------------------

    def levels(self, exchange: str, symbol: str, side: str) -> list[tuple[float, float]] | None:
        if self._batches is None:
            return super().levels(exchange, symbol, side)
        index = self._key_ids.get((exchange, symbol))
        if index is None:
            return None
        if not self._walked[index]:
            raise UndeclaredBook(f"an order in {exchange} {symbol}, a market the strategy "
                                   "did not declare: its recorded book was not kept")
        self._take(self.at_row)
        if self._unfolded[index]:
            self._fold(index, self.at_row, self.clock())  # type: ignore[misc]
        prices, sizes = self._folded[index][side if side == "bid" else "ask"]
        if not len(prices):
            return None
        if side == "bid":  # best first
            return list(zip(prices[::-1].tolist(), sizes[::-1].tolist(), strict=True))
        return list(zip(prices.tolist(), sizes.tolist(), strict=True))


class DepthSource(Protocol):
    """Saved depth changes read batch by batch (a cache file's depth).

    Optional (`index_batches`, `batches_from` fall back to `batches()`): the index
    columns of each batch from the `first`'th on alone (`index_batches(first)`, cheap to
    read), the batches from the `first`'th on, its first `skip` changes left out
    (`batches_from(first, skip)`), and `summaries`, each batch's `BatchSummary` in order
    (so a seek reads nothing of the batches before the window)."""

    keys: tuple[tuple[str, str], ...]

    def batches(self) -> Iterator[DepthColumns]: ...


class ChangeIndex(NamedTuple):
    """A batch's index columns (those of `DepthColumns`): what a seek reads."""

    pos: np.ndarray
    ts: np.ndarray
    key: np.ndarray
    reset: np.ndarray


class BatchSummary(NamedTuple):
    """What a seek needs of a batch whose changes are all ready (`RecordedDepth._seek`)."""

    last_pos: int
    last_ts: int  # the latest receive time
    firsts: dict[int, int]  # per key in the batch: its first change
    resets: dict[int, int]  # per key with a reset in the batch: its last one


def summarized(batch: DepthColumns | ChangeIndex) -> BatchSummary:
    """The batch's summary."""
    keys, firsts = np.unique(batch.key, return_index=True)
    resets = np.flatnonzero(batch.reset)
    # np.unique keeps each key's first place in the reversed resets: its last one.
    reset_keys, lasts = np.unique(batch.key[resets][::-1], return_index=True)
    return BatchSummary(int(batch.pos[-1]), int(batch.ts.max()),
                        dict(zip(keys.tolist(), firsts.tolist(), strict=True)),
                        dict(zip(reset_keys.tolist(), resets[::-1][lasts].tolist(),
                                 strict=True)))


def index_batches(source: DepthColumns | DepthSource, first: int = 0
                  ) -> Iterator[ChangeIndex]:
    """Each batch's index columns from the `first`'th on, in order: without their levels
    (and without reading the batches before) where the source can."""
    read = getattr(source, "index_batches", None)
    if read is not None:
        yield from read(first)
        return
    for batch in islice(source.batches(), first, None):
        yield ChangeIndex(batch.pos, batch.ts, batch.key, batch.reset)


def batches_from(source: DepthColumns | DepthSource, first: int, skip: int = 0
                 ) -> Iterator[DepthColumns]:
    """The source's batches from the `first`'th on, the first `skip` changes of that one
    left out (the batches before unread where the source can)."""
    read = getattr(source, "batches_from", None)
    if read is not None:
        return iter(read(first, skip))
    return skipped(islice(source.batches(), first, None), skip)


def skipped(batches: Iterable[DepthColumns], skip: int) -> Iterator[DepthColumns]:
    """The batches with the first one's first `skip` changes left out."""
    for batch in batches:
        yield batch.rows(skip, len(batch)) if skip else batch
        skip = 0


_NO_LEVELS = np.zeros(0, dtype=np.float64)
