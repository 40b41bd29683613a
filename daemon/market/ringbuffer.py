"""24 h in-memory history: one quote ring and one trade ring per (exchange, symbol).

The bus calls `RingStore.on_quote` / `RingStore.on_trade` synchronously for every event,
before any subscriber, so the history is complete even when a strategy conflates. Rings
are numpy columns written in place. A live ring holds retention x max rate rows from
the start (`np.empty`: Linux commits a page when it is first written) and, once full,
overwrites its oldest row. A backtest's rings are growable, bounded by the retention in
time: a ring starts at 4,096 rows, writes a new row over its oldest one once that row is
older than the retention (keeping the newest such row, the quote prevailing at the
retention's start), and grows fourfold (copying its rows, in order, into new columns) only
when its oldest rows are still within the retention, up to retention x max rate rows; a ring
that full overwrites its oldest row whatever its age (a venue faster than the max rate
keeps the newest rows). So a backtest's memory tracks the rows within the retention, not
the days of data. Live rings do not grow because a growth copies the ring on the
event-loop thread: 0.3 s at 1 M rows, 2 s at 8 M (measured on the shared 2-core machine
under load), a stall no trading loop may take. Window queries bisect the timestamp
column and hand out read-only column views, never a copy of the whole buffer; statistics
run as numba kernels (`daemon.market.kernels`) over those views; the whole store
snapshots to Feather (Arrow IPC) files and reloads at start.

Threading: every write happens on the event-loop thread. Window queries are meant to be
used on that thread too, within one callback: a window's arrays are views into the ring's
columns, valid until the ring overwrites their rows: not before those rows are older than
the retention, or, in a ring at its max capacity, until it has written
`capacity - len(window)` more rows (a ring that grows leaves its old columns as they were:
views into them stay valid). `RingStore.snapshot` may run in a worker thread
(`snapshot_every` does so): it copies the columns chunk by chunk and discards any row the
writer may have overwritten meanwhile (see `_Ring._consistent_chunks`).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple
from urllib.parse import quote as url_quote

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import structlog

from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import Quote, Trade
from daemon.core.routes import ignore
from daemon.market import kernels

log = structlog.get_logger(component="ringbuffer")

DEFAULT_RETENTION_S = 24 * 3600.0
#: Rows per second the quote ring is sized for. Binance USD-M BTCUSDT bookTicker runs at
#: ~190/s; a venue running faster than this keeps less than the retention (newest rows).
DEFAULT_MAX_RATE_HZ = 200.0
#: The recorded Binance USD-M BTCUSDT session prints ~62 trades/s on average.
DEFAULT_MAX_TRADE_RATE_HZ = 100.0

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
#: Format 2 carries a CRC-32 per column per batch (the batch's custom metadata): bytes
#: overwritten on disk that still parse as Arrow are found by it. Format 1 files (before
#: checksums) are still read, but only when every row passes `_Ring.impossible_rows`.
_SNAPSHOT_FORMAT_VERSION = "2"
_UNCHECKSUMMED_FORMAT_VERSION = "1"
_CHECKSUM_KEY = b"cryptopipe.crc32"
_SNAPSHOT_SUFFIX = ".feather"
#: Rows per Arrow record batch in a snapshot: big enough that per-batch overhead vanishes,
#: small enough (48 MB of quotes) that the snapshot thread's copy never holds much memory.
_SNAPSHOT_CHUNK_ROWS = 1 << 20
#: Rows a ring starts with (192 kB of quotes); it grows (`_GROWTH`) while its rows are
#: within the retention. Small enough that thousands of quiet keys cost little, big enough
#: that a busy one grows only a few times on its way to a day.
_INITIAL_ROWS = 4096
#: A growing ring takes this many times its rows. Each growth copies the ring (at 80
#: back-to-back days, x2 copied ~2x the final rows: 5 % of a backtest); the new columns'
#: pages become resident only as rows are written, so the price of a larger step is up to
#: that many times the retained rows written before the ring reuses expired slots.
_GROWTH = 4


class MemoryUsage(NamedTuple):
    """Bytes reserved by ring columns vs bytes holding rows.

    `allocated_bytes` is the rings' current columns: they start small and grow only while
    their rows are within the retention, so it tracks the rows within the retention (at
    most about twice them), up to retention x max rate. Columns from `np.empty`: Linux
    commits a page when first written. Columns a ring grew out of, still referenced by a
    window's views, are not counted.
    """

    allocated_bytes: int
    used_bytes: int
    rows: int


class Volatility(NamedTuple):
    """Realised volatility of log mid returns over a window (see `kernels.realised_volatility`).

    `sigma_per_sqrt_second`: the 1-sigma log move over tau seconds is sigma * sqrt(tau).
    `variance_per_second`: sigma squared, (log return)^2 per second. NaN when the window
    holds fewer than two valid quotes or spans no time.
    """

    sigma_per_sqrt_second: float
    variance_per_second: float
    realised_variance: float
    return_count: int
    elapsed_seconds: float
    last_mid: float

    @property
    def sigma_price_per_sqrt_second(self) -> float:
        """Sigma in price units per sqrt(second), at the window's last mid."""
        return self.sigma_per_sqrt_second * self.last_mid


class Spread(NamedTuple):
    """Mean quoted spread over a window: price units and basis points of the mid."""

    mean_spread: float
    mean_spread_bps: float
    row_count: int


class SnapshotReport(NamedTuple):
    files: int
    rows: int
    bytes_written: int
    seconds: float


@dataclass(frozen=True, slots=True, eq=False)
class QuoteWindow:
    """Quotes with `start_ns <= local_ts_ns <= end_ns`, in time order, read-only columns.

    The arrays are views into the ring (a copy of just the window's two pieces when it
    straddles the wrap point); use them within the callback that asked for them.
    """

    start_ns: int
    end_ns: int
    local_ts_ns: np.ndarray
    exchange_ts_ns: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    bid_qty: np.ndarray
    ask_qty: np.ndarray

    def __len__(self) -> int:
        return int(self.local_ts_ns.shape[0])

    @property
    def mid(self) -> np.ndarray:
        return (self.bid + self.ask) * 0.5

    @property
    def spread(self) -> np.ndarray:
        return self.ask - self.bid


@dataclass(frozen=True, slots=True, eq=False)
class TradeWindow:
    """Trades with `start_ns <= local_ts_ns <= end_ns`, in time order, read-only columns.

    `signed_qty` is positive for a taker buy, negative for a taker sell.
    """

    start_ns: int
    end_ns: int
    local_ts_ns: np.ndarray
    price: np.ndarray
    signed_qty: np.ndarray

    def __len__(self) -> int:
        return int(self.local_ts_ns.shape[0])


def _capacity_for(retention_s: float, max_rate: float) -> int:
    return max(1, math.ceil(retention_s * max_rate))


def _span_ns(seconds: float) -> int:
    if not seconds >= 0:
        raise ValueError(f"window length must be >= 0 seconds, got {seconds!r}")
    if math.isinf(seconds):  # window(math.inf): everything held
        return 2**64
    return round(seconds * NS_PER_SECOND)


def _clip_int64(value: int) -> int:
    return min(max(value, _INT64_MIN), _INT64_MAX)


def _read_only(column: np.ndarray) -> np.ndarray:
    column.flags.writeable = False
    return column


class _Staged:
    """Rows of one ring handed over ahead of their turn (`_Ring.stage`): columns in ring
    order, the replay position of each row, and how many are written already."""

    __slots__ = ("columns", "done", "position", "rows")

    def __init__(self, rows: np.ndarray, columns: list[np.ndarray],
                 position: Callable[[], int]) -> None:
        self.rows = rows
        self.columns = columns
        self.position = position
        self.done = 0


class _Layout:
    """The columns a ring writes: absolute row n lives at physical (n - base) % size.

    A ring that grows gets a new layout; the old one is never written again, and
    `retired_at` (the ring's `_total` when it was replaced, set before the swap) tells a
    snapshot thread still copying from it which rows it holds.
    """

    __slots__ = ("base", "columns", "retired_at", "size", "views")

    def __init__(self, columns: tuple[np.ndarray, ...], base: int) -> None:
        self.columns = columns
        self.size = int(columns[0].shape[0])
        self.base = base
        self.views = tuple(memoryview(column) for column in columns)
        self.retired_at: int | None = None


class _Ring:
    """Shared machinery of the quote and trade rings: columns, bisection, snapshots.

    Invariants. Absolute row number n (0 = first row ever appended) lives at physical
    index (n - base) % size of the current `_Layout`. `_total` counts rows ever appended;
    the ring holds the absolute rows [_first, _total) (at most `size`), which are one
    sorted run of physical slots from (_first - base) % size, or two once they wrap
    around. `local_ts_ns` is non-decreasing in that logical order (see
    `_clamp_backwards`). `_next` == (_total - base) % size is the next physical write
    index, always a free slot; `append` writes up to `_limit` (the end of the free run or
    of the columns) and then calls `_make_room`, which evicts expired rows, grows, or
    wraps: the hot path pays one comparison, as a fixed ring's wrap test did.

    Eviction keeps the newest row older than `newest - retention` (the row prevailing at
    the retention's start, for as-of joins and `arrival_rate`'s observed span), so every
    read of a window within the retention returns what a ring that kept every row would.

    Writers bump `_total` *before* writing a row's fields, so a snapshot thread that reads
    `_total` after copying knows every row that could have been overwritten meanwhile.
    """

    #: (column name, dtype) in storage order; `local_ts_ns` first.
    COLUMNS: ClassVar[tuple[tuple[str, type], ...]]
    KIND: ClassVar[str]

    def __init__(self, exchange: str, symbol: str, capacity: int,
                 retention_s: float = math.inf, growable: bool = False) -> None:
        """`capacity`: the most rows the ring may hold (retention x max rate); `retention_s`:
        rows older than the newest's time minus this may be overwritten (inf: by count
        only, the newest `capacity` rows); `growable`: start at `_INITIAL_ROWS` and grow
        as the module docstring says (backtests), else hold `capacity` rows from the start
        (live: a growth copies the ring on the event loop, 0.3-2 s at 1-8 M rows)."""
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1 row, got {capacity}")
        self.exchange = exchange
        self.symbol = symbol
        self.capacity = capacity
        self._retention_ns: int | None = (
            None if math.isinf(retention_s) else _span_ns(retention_s)
        )
        self._total = 0
        self._first = 0
        self._set_layout(_Layout(self._empty_columns(
            min(capacity, _INITIAL_ROWS) if growable else capacity), base=0))
        self._next = 0
        self._limit = self._size
        self._last_ts_ns = _INT64_MIN
        #: Rows whose local_ts_ns arrived below the previous row's and were clamped.
        self.clamped_rows = 0
        #: Largest backwards step clamped so far, in ns (a few us is normal across streams).
        self.max_clamp_ns = 0
        #: Rows with a field that was not a number, recorded with NaN in that field.
        self.malformed_rows = 0
        #: Rows staged by a backtest, written once its replay reaches them (`stage`).
        self._staged: _Staged | None = None

    # ----------------------------------------------------------------------- layout

    def _empty_columns(self, rows: int) -> tuple[np.ndarray, ...]:
        # np.empty, not np.zeros: a large allocation is an untouched mmap whose pages
        # Linux commits on first write.
        return tuple(np.empty(rows, dtype=dtype) for _, dtype in self.COLUMNS)

    def _set_layout(self, layout: _Layout) -> None:
        """Switch the writer and the readers to `layout` (the event-loop thread only)."""
        self._layout = layout  # one assignment: what a snapshot thread reads first
        self._columns = layout.columns
        self._views = layout.views
        self._local_ts_ns = layout.columns[0]
        self._size = layout.size
        self._base = layout.base

    def _held_from(self) -> int:
        """Absolute number of the oldest held row. A ring at its max capacity overwrites by
        count, as a fixed ring does: its appends leave `_first` behind (no per-row work)."""
        return max(self._first, self._total - self._size)

    def _segments(self) -> tuple[int, int, int]:
        """(physical start of the oldest held row, rows before the columns' end, rows)."""
        first = self._held_from()
        count = self._total - first
        start = (first - self._base) % self._size
        return start, min(count, self._size - start), count

    def _expired_rows(self) -> int:
        """Held rows that may go: older than newest - retention, but the newest of those."""
        if self._retention_ns is None or self._total == self._held_from():
            return 0
        cutoff = _clip_int64(self._last_ts_ns - self._retention_ns)
        return max(0, self._held_count_before(cutoff, "left") - 1)

    def _make_room(self) -> int:
        """Called when `append` reached `_limit`: free the next slot; returns its index.

        A full ring drops its expired rows when there are enough of them (an eighth of its
        size, so a ring rolling its retention does this once per many rows, not per row);
        otherwise it grows (`_GROWTH` times, up to `capacity`); at `capacity` it overwrites its
        oldest row whatever its age, from the next append on (`_held_from`).
        """
        index = (self._total - self._base) % self._size
        if self._total - self._first >= self._size:
            if self._size >= self.capacity:
                self._first = self._total - self._size
                self._limit = self._size  # every slot up to the columns' end is the oldest
                self._next = index
                return index
            expired = self._expired_rows()
            self._first += expired
            if expired < max(1, self._size // 8):
                self._grow(min(_GROWTH * self._size, self.capacity))
            index = (self._total - self._base) % self._size
        free = self._size - (self._total - self._first)
        self._limit = min(self._size, index + free)
        self._next = index
        return index

    def _grow(self, rows: int) -> None:
        """Move the held rows, oldest first, to the start of new columns of `rows` rows."""
        start, head, count = self._segments()
        columns = self._empty_columns(rows)
        if count > 0:
            for new, old in zip(columns, self._columns, strict=True):
                new[:head] = old[start : start + head]
                new[head:count] = old[: count - head]
        layout = _Layout(columns, base=self._first)
        # Before the swap: a snapshot thread that sees the new _total also sees this.
        self._layout.retired_at = self._total
        self._set_layout(layout)

    # ----------------------------------------------------------------------- sizes

    def __len__(self) -> int:
        if self._staged is not None:
            self._sync()
        return self._total - self._held_from()

    @property
    def bytes_per_row(self) -> int:
        return sum(column.itemsize for column in self._columns)

    @property
    def total_rows(self) -> int:
        """Rows ever appended, including those the wrap-around has since overwritten."""
        if self._staged is not None:
            self._sync()
        return self._total

    @property
    def key(self) -> tuple[str, str]:
        return (self.exchange, self.symbol)

    @property
    def oldest_ts_ns(self) -> int | None:
        if self._staged is not None:
            self._sync()
        if self._total == self._first:
            return None
        return int(self._local_ts_ns[(self._held_from() - self._base) % self._size])

    @property
    def newest_ts_ns(self) -> int | None:
        if self._staged is not None:
            self._sync()
        if self._total == self._first:
            return None
        return int(self._local_ts_ns[(self._total - 1 - self._base) % self._size])

    def memory_bytes(self) -> MemoryUsage:
        rows = len(self)  # staged rows reached first
        return MemoryUsage(
            allocated_bytes=sum(column.nbytes for column in self._columns),
            used_bytes=rows * self.bytes_per_row,
            rows=rows,
        )

    # ----------------------------------------------------------------------- writes

    def _clamp_backwards(self, ts_ns: int) -> int:
        """Timestamp to store for a row whose local_ts_ns is below the previous row's.

        Local receive times can be a few us out of order when several connections (or a
        replay merging recordings) feed one key: each stamps its own frames before they
        meet on the bus. (Within one stream the recordings are monotone: 0 of 66,089
        bookTicker and 0 of 21,313 trade rows in the Binance USD-M session.) The ring
        stores max(ts, previous ts), so its timestamp column stays sorted and bisection
        is exact, and the row order stays the publish order, which is what strategies
        saw. The original is not kept: a 7th column (56 instead of 48 bytes a row) to
        preserve an error of microseconds on windows of seconds to hours is not worth it.
        `exchange_ts_ns` is stored as sent; clamps are counted (`clamped_rows`,
        `max_clamp_ns`) so a wall-clock step backwards (which would pin new rows to the
        last stamp until the clock catches up) shows in the metrics.
        """
        self.clamped_rows += 1
        self.max_clamp_ns = max(self.max_clamp_ns, self._last_ts_ns - ts_ns)
        return self._last_ts_ns

    def _reserve_bulk(self, row_count: int, expired_new: int = 0) -> tuple[int, int]:
        """Make room for `row_count` new rows and reserve them; returns (first absolute
        row, rows kept: the newest). `_last_ts_ns` is already the newest new row's, and
        `expired_new` of the new rows are older than it minus the retention.

        The rows kept are the held and the new ones minus the expired but the newest of
        those (as `_expired_rows`) and minus the oldest beyond `capacity`; the ring grows
        (`_GROWTH` times, up to `capacity`) when they do not fit.
        """
        self._first = self._held_from()
        first, held = self._total, self._total - self._first
        drop = 0
        if self._retention_ns is not None:
            cutoff = _clip_int64(self._last_ts_ns - self._retention_ns)
            drop = max(0, self._held_count_before(cutoff, "left") + expired_new - 1)
        drop += max(0, held + row_count - drop - self.capacity)
        # Held rows go first; beyond them, the oldest of the new rows are never written.
        self._first = self._first + drop if drop <= held else first + (drop - held)
        needed = first + row_count - self._first
        if needed > self._size:
            rows = self._size
            while rows < needed:
                rows *= _GROWTH
            self._grow(min(rows, self.capacity))
        self._total = first + row_count  # reserve before writing: see _consistent_chunks
        return first, needed if drop > held else row_count

    def _write_bulk(self, arrays: list[np.ndarray]) -> None:
        """Append whole columns (snapshot reload, backtest preload): clamp, then copy."""
        row_count = int(arrays[0].shape[0])
        if row_count == 0:
            return
        ts = arrays[0]
        clamped = np.maximum.accumulate(np.maximum(ts, self._last_ts_ns))
        backwards = clamped != ts
        if backwards.any():
            self.clamped_rows += int(np.count_nonzero(backwards))
            self.max_clamp_ns = max(self.max_clamp_ns, int((clamped - ts).max()))
        arrays = [clamped, *arrays[1:]]
        self._last_ts_ns = int(clamped[-1])
        expired_new = (
            0 if self._retention_ns is None
            else int(np.searchsorted(clamped, self._last_ts_ns - self._retention_ns, "left"))
        )
        first, kept = self._reserve_bulk(row_count, expired_new)
        skipped = row_count - kept  # expired, or more rows than capacity: the newest fit
        start = (first + skipped - self._base) % self._size
        head = min(kept, self._size - start)
        for column, values in zip(self._columns, arrays, strict=True):
            column[start : start + head] = values[skipped : skipped + head]
            column[: kept - head] = values[skipped + head :]
        self._make_room()  # the slot at _next must be free for `append`

    def stage(self, rows: np.ndarray, columns: list[np.ndarray],
              position: Callable[[], int]) -> None:
        """Take rows ahead of their turn, in bulk (a backtest holds its events as columns):
        `columns` in `COLUMNS` order, `rows` the replay position of each (ascending). The
        ring holds a staged row from the moment `position()` reaches its position: every
        read first writes the rows reached since the last one (`_write_bulk`, the clamp
        and counters as `append` would have them), so readers see exactly the rows up to
        the replay's, as if each had been appended when it was published. Rows staged
        before are written first (all of them: the replay is past them). Why: per row,
        the bus route's call and the element-wise append were ~0.6 us of the ~2.8 us a
        backtest event cost; a bulk copy a read costs next to nothing.

        Appending to a ring with staged rows would put rows out of order: a backtest
        stages a key's rows instead of routing them to `append` (RingStore.feed_in_bulk).
        """
        self.flush_staged()
        typed = [np.asarray(values, dtype=dtype)
                 for values, (_, dtype) in zip(columns, self.COLUMNS, strict=True)]
        self._staged = _Staged(rows, typed, position)

    def flush_staged(self) -> None:
        """Write every staged row (the replay has passed them all) and stop staging."""
        staged = self._staged
        if staged is None:
            return
        self._staged = None
        if staged.done < len(staged.rows):
            self._write_bulk([column[staged.done:] for column in staged.columns])

    def _sync(self) -> None:
        """Write the staged rows the replay has reached since the last read."""
        staged = self._staged
        assert staged is not None
        reached = int(np.searchsorted(staged.rows, staged.position(), "right"))
        if reached > staged.done:
            self._write_bulk([column[staged.done:reached] for column in staged.columns])
            staged.done = reached

    # ----------------------------------------------------------------------- reads

    def _count_before(self, ts_ns: int, side: str) -> int:
        """Logical index where `ts_ns` would be inserted (np.searchsorted semantics).

        The held rows are one sorted run, or two once wrapped; the insertion index is the
        count of rows below (side="left") or at-or-below (side="right") the value, which
        is additive over the two runs: two O(log n) bisections, no copy.
        """
        if self._staged is not None:
            self._sync()
        return self._held_count_before(_clip_int64(ts_ns), side)

    def _held_count_before(self, ts_ns: int, side: str) -> int:
        """`_count_before` without the staged rows' sync (the write path uses it)."""
        start, head, count = self._segments()
        ts = self._local_ts_ns
        below = int(np.searchsorted(ts[start : start + head], ts_ns, side))
        if count > head:
            below += int(np.searchsorted(ts[: count - head], ts_ns, side))
        return below

    def _logical_slice(self, lo: int, hi: int) -> list[np.ndarray]:
        """Columns of logical rows [lo, hi) in time order: views, or one small concat."""
        if self._staged is not None:
            self._sync()
        if hi <= lo:
            return [_read_only(column[:0]) for column in self._columns]
        start, older_len, _ = self._segments()
        if hi <= older_len:
            return [_read_only(column[start + lo : start + hi]) for column in self._columns]
        if lo >= older_len:
            return [_read_only(column[lo - older_len : hi - older_len]) for column in self._columns]
        # The window straddles the wrap point: concatenate just its two pieces.
        return [
            _read_only(np.concatenate((column[start + lo : start + older_len],
                                       column[: hi - older_len])))
            for column in self._columns
        ]

    def _bounds(self, seconds: float, now_ns: int | None) -> tuple[int, int]:
        end_ns = now_ns if now_ns is not None else self.newest_ts_ns
        if end_ns is None:
            end_ns = 0
        return end_ns - _span_ns(seconds), end_ns

    def _rows_between(self, start_ns: int, end_ns: int) -> list[np.ndarray]:
        lo = self._count_before(start_ns, "left")
        hi = self._count_before(end_ns, "right")
        return self._logical_slice(lo, hi)

    # ----------------------------------------------------------------------- snapshots

    def _arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field(name, pa.from_numpy_dtype(dtype), nullable=False)
                for name, dtype in self.COLUMNS
            ],
            metadata={
                "cryptopipe.format_version": _SNAPSHOT_FORMAT_VERSION,
                "cryptopipe.kind": self.KIND,
                "cryptopipe.exchange": self.exchange,
                "cryptopipe.symbol": self.symbol,
            },
        )

    @staticmethod
    def impossible_rows(arrays: list[np.ndarray]) -> int:
        """Rows no feed could have produced (a damaged file); the subclass says which."""
        raise NotImplementedError

    def _consistent_chunks(
        self, chunk_rows: int = _SNAPSHOT_CHUNK_ROWS
    ) -> Iterator[list[np.ndarray]]:
        """Copies of the held rows in time order, safe to take from another thread.

        The layout (columns) and the rows to save are fixed when the iteration starts
        (absolute [first, end), end capped at the layout's `retired_at`: a ring that grew
        since writes new columns, never the old ones). Each chunk is copied, then `_total`
        is read: any row the event-loop thread wrote or was writing into these columns
        during the copy has an absolute number below `_total` (and below `retired_at`),
        and it overwrote the row `size` earlier, so rows below that bound minus `size`
        may be torn and are dropped. Rows are visited oldest first, the order in which
        the writer overwrites them, so dropped rows are always the oldest of the history;
        what is saved stays in time order, every row intact, with at most a gap among
        those oldest rows.
        """
        if self._staged is not None:
            self._sync()
        layout = self._layout  # first: the rows read below are all in these columns
        first = self._first
        end = self._written_into(layout)
        size = layout.size
        row = max(first, end - size)
        while row < end:
            physical = (row - layout.base) % size
            count = min(chunk_rows, end - row, size - physical)
            copies = [column[physical : physical + count].copy() for column in layout.columns]
            overwritten_below = self._written_into(layout) - size
            torn = max(0, min(count, overwritten_below - row))
            if torn < count:
                yield [copy[torn:] for copy in copies]
            row += count

    def _written_into(self, layout: _Layout) -> int:
        """Rows written into `layout` so far, at most: `_total` first, then `retired_at`
        (set before a swap, so a None read after `_total` means no swap before it)."""
        total = self._total
        retired = layout.retired_at
        return total if retired is None else min(total, retired)


class QuoteRing(_Ring):
    """Top-of-book history of one (exchange, symbol): 48 bytes a row."""

    COLUMNS = (
        ("local_ts_ns", np.int64),
        ("exchange_ts_ns", np.int64),
        ("bid", np.float64),
        ("ask", np.float64),
        ("bid_qty", np.float64),
        ("ask_qty", np.float64),
    )
    KIND = "quotes"

    @staticmethod
    def impossible_rows(arrays: list[np.ndarray]) -> int:
        """Quotes with a non-finite or non-positive price or size, or bid above ask."""
        _, _, bid, ask, bid_qty, ask_qty = arrays
        with np.errstate(invalid="ignore"):
            possible = (np.isfinite(bid) & np.isfinite(ask) & np.isfinite(bid_qty)
                        & np.isfinite(ask_qty) & (bid > 0) & (bid <= ask)
                        & (bid_qty > 0) & (ask_qty > 0))
        return int(possible.size - np.count_nonzero(possible))

    # Appends write through memoryviews. Per row, measured on the dev box (Python
    # 3.11, best of 7 runs over 400k quotes, including the loop and a method call):
    #   numpy scalar setitem, 6 columns         338 ns (~55 ns a column)
    #   memoryview setitem, 6 columns           205 ns (~22 ns a column)
    #   struct.pack_into one row-major record   205 ns (but columns would be strided,
    #                                                   and np.searchsorted copies them)
    #   list-of-tuples staging, flushed every 1024 rows into the columns via
    #     np.array(structured)                  338 ns; via zip(*rows)   354 ns
    #   staging the Quote objects, flushed with list comprehensions        280 ns
    #   two flat lists, extend per row, np.array per flush                 277 ns
    #   array.array('q'/'d') staging, np.frombuffer per flush              524 ns
    #   baseline: list.append of the same 6-tuple                          177 ns
    # Direct memoryview writes are the fastest and, with no staging, every read sees
    # every row with no flush to forget. With the clamp and counters, on real quotes
    # (bench/bench_ringbuffer.py): ~260-280 ns a row, ~1.4x that list.append baseline,
    # ~340 ns through RingStore.on_quote; orjson.loads of the frame alone is ~720 ns.
    # (`_Ring._set_layout` keeps one memoryview per column in `_views`.)

    def append(self, quote: Quote) -> None:
        """Record one quote (hot path: the bus calls this for every quote it publishes)."""
        total = self._total
        index = self._next
        try:
            local_ts_ns = quote.local_ts_ns
            if local_ts_ns < self._last_ts_ns:
                local_ts_ns = self._clamp_backwards(local_ts_ns)
            self._total = total + 1  # reserve before writing: see _consistent_chunks
            views = self._views
            views[0][index] = local_ts_ns
            views[1][index] = quote.exchange_ts_ns
            views[2][index] = quote.bid
            views[3][index] = quote.ask
            views[4][index] = quote.bid_qty
            views[5][index] = quote.ask_qty
        except TypeError:
            # An int price, a float timestamp or a None: memoryviews refuse anything but
            # the exact type. Rare by construction (adapters parse to the model's types),
            # so the fast path pays nothing for it (3.11 exceptions are zero-cost).
            self._total = total + 1
            local_ts_ns = self._append_coerced(
                index,
                quote.local_ts_ns,
                quote.exchange_ts_ns,
                (quote.bid, quote.ask, quote.bid_qty, quote.ask_qty),
            )
        self._last_ts_ns = local_ts_ns
        index += 1
        self._next = index if index != self._limit else self._make_room()

    def _append_coerced(
        self, index: int, local_ts_ns: object, exchange_ts_ns: object, prices: tuple[object, ...]
    ) -> int:
        """Slow path of `append`: coerce each field, NaN (or 0 for a timestamp) if invalid."""
        malformed = False
        try:
            ts = int(local_ts_ns)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            ts, malformed = self._last_ts_ns, True
        if ts < self._last_ts_ns:
            ts = self._clamp_backwards(ts)
        try:
            exchange_ts = int(exchange_ts_ns)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            exchange_ts, malformed = 0, True
        self._local_ts_ns[index] = ts
        self._columns[1][index] = exchange_ts
        for column, value in zip(self._columns[2:], prices, strict=True):
            try:
                column[index] = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                column[index], malformed = math.nan, True
        if malformed:
            self.malformed_rows += 1
            if self.malformed_rows & (self.malformed_rows - 1) == 0:  # log 1, 2, 4, 8, ...
                log.warning(
                    "malformed_quote_recorded_as_nan",
                    exchange=self.exchange,
                    symbol=self.symbol,
                    malformed_rows=self.malformed_rows,
                )
        return ts

    def extend_columns(
        self,
        local_ts_ns: np.ndarray,
        exchange_ts_ns: np.ndarray,
        bid: np.ndarray,
        ask: np.ndarray,
        bid_qty: np.ndarray,
        ask_qty: np.ndarray,
    ) -> None:
        """Append many rows at once (snapshot reload, backtest preload), time order."""
        arrays = [
            np.asarray(values, dtype=dtype)
            for values, (_, dtype) in zip(
                (local_ts_ns, exchange_ts_ns, bid, ask, bid_qty, ask_qty), self.COLUMNS, strict=True
            )
        ]
        self._write_bulk(arrays)

    def window(self, seconds: float, now_ns: int | None = None) -> QuoteWindow:
        """Quotes of the last `seconds` up to `now_ns` (default: the newest row), inclusive.

        Pass `now_ns` from the injected clock: without it the window ends at the newest
        quote, which on a quiet feed may be well before now.
        """
        start_ns, end_ns = self._bounds(seconds, now_ns)
        return QuoteWindow(start_ns, end_ns, *self._rows_between(start_ns, end_ns))

    def since(self, ts_ns: int) -> QuoteWindow:
        """Quotes with local_ts_ns >= ts_ns, up to the newest."""
        end_ns = self.newest_ts_ns
        end_ns = _INT64_MAX if end_ns is None else end_ns
        return QuoteWindow(ts_ns, end_ns, *self._rows_between(ts_ns, end_ns))

    def _window_with_prevailing(self, start_ns: int, end_ns: int) -> QuoteWindow:
        """Quotes in [start_ns, end_ns] plus the last one before start_ns (as-of joins)."""
        lo = max(0, self._count_before(start_ns, "left") - 1)
        hi = self._count_before(end_ns, "right")
        return QuoteWindow(start_ns, end_ns, *self._logical_slice(lo, hi))

    def volatility(self, seconds: float, now_ns: int | None = None) -> Volatility:
        """Realised volatility of log mid returns over the window (NaN if < 2 quotes)."""
        window = self.window(seconds, now_ns)
        variance, sigma, realised_variance, return_count, elapsed = kernels.realised_volatility(
            window.local_ts_ns, window.bid, window.ask
        )
        last_mid = 0.5 * float(window.bid[-1] + window.ask[-1]) if len(window) else math.nan
        return Volatility(sigma, variance, realised_variance, return_count, elapsed, last_mid)

    def mean_spread(
        self, seconds: float, now_ns: int | None = None, *, time_weighted: bool = False
    ) -> Spread:
        """Mean spread over the window; row-weighted unless `time_weighted` (NaN if empty)."""
        window = self.window(seconds, now_ns)
        if time_weighted:
            mean_abs, mean_bps, _ = kernels.time_weighted_mean_spread(
                window.local_ts_ns, window.bid, window.ask, window.end_ns
            )
            return Spread(mean_abs, mean_bps, len(window))
        mean_abs, mean_bps, row_count = kernels.mean_spread(window.bid, window.ask)
        return Spread(mean_abs, mean_bps, row_count)


class TradeRing(_Ring):
    """Public trades of one (exchange, symbol): 24 bytes a row, signed by taker side."""

    COLUMNS = (
        ("local_ts_ns", np.int64),
        ("price", np.float64),
        ("signed_qty", np.float64),
    )
    KIND = "trades"

    @staticmethod
    def impossible_rows(arrays: list[np.ndarray]) -> int:
        """Trades with a non-finite or non-positive price, or a non-finite or zero size."""
        _, price, signed_qty = arrays
        with np.errstate(invalid="ignore"):
            possible = (np.isfinite(price) & (price > 0) & np.isfinite(signed_qty)
                        & (signed_qty != 0))
        return int(possible.size - np.count_nonzero(possible))

    def append(self, trade: Trade) -> None:
        """Record one trade print (hot path, same scheme as `QuoteRing.append`)."""
        total = self._total
        index = self._next
        try:
            local_ts_ns = trade.local_ts_ns
            if local_ts_ns < self._last_ts_ns:
                local_ts_ns = self._clamp_backwards(local_ts_ns)
            side = trade.side
            # An unknown aggressor side (some venues do not say) is recorded as 0 qty
            # rather than guessed: it still counts as a trade for the arrival rate.
            signed_qty = trade.qty if side == "buy" else -trade.qty if side == "sell" else 0.0
            self._total = total + 1
            views = self._views
            views[0][index] = local_ts_ns
            views[1][index] = trade.price
            views[2][index] = signed_qty
        except TypeError:
            self._total = total + 1
            local_ts_ns = self._append_coerced(index, trade)
        self._last_ts_ns = local_ts_ns
        index += 1
        self._next = index if index != self._limit else self._make_room()

    def _append_coerced(self, index: int, trade: Trade) -> int:
        malformed = False
        try:
            ts = int(trade.local_ts_ns)
        except (TypeError, ValueError, OverflowError):
            ts, malformed = self._last_ts_ns, True
        if ts < self._last_ts_ns:
            ts = self._clamp_backwards(ts)
        try:
            price = float(trade.price)
        except (TypeError, ValueError):
            price, malformed = math.nan, True
        try:
            qty = float(trade.qty)
            side = trade.side
            signed_qty = qty if side == "buy" else -qty if side == "sell" else 0.0
        except (TypeError, ValueError):
            signed_qty, malformed = math.nan, True
        self._local_ts_ns[index] = ts
        self._columns[1][index] = price
        self._columns[2][index] = signed_qty
        if malformed:
            self.malformed_rows += 1
            if self.malformed_rows & (self.malformed_rows - 1) == 0:
                log.warning(
                    "malformed_trade_recorded_as_nan",
                    exchange=self.exchange,
                    symbol=self.symbol,
                    malformed_rows=self.malformed_rows,
                )
        return ts

    def extend_columns(
        self, local_ts_ns: np.ndarray, price: np.ndarray, signed_qty: np.ndarray
    ) -> None:
        """Append many rows at once (snapshot reload, backtest preload), time order."""
        arrays = [
            np.asarray(values, dtype=dtype)
            for values, (_, dtype) in zip(
                (local_ts_ns, price, signed_qty), self.COLUMNS, strict=True
            )
        ]
        self._write_bulk(arrays)

    def window(self, seconds: float, now_ns: int | None = None) -> TradeWindow:
        """Trades of the last `seconds` up to `now_ns` (default: the newest row), inclusive."""
        start_ns, end_ns = self._bounds(seconds, now_ns)
        return TradeWindow(start_ns, end_ns, *self._rows_between(start_ns, end_ns))

    def since(self, ts_ns: int) -> TradeWindow:
        """Trades with local_ts_ns >= ts_ns, up to the newest."""
        end_ns = self.newest_ts_ns
        end_ns = _INT64_MAX if end_ns is None else end_ns
        return TradeWindow(ts_ns, end_ns, *self._rows_between(ts_ns, end_ns))

    def observed_seconds(self, seconds: float, now_ns: int | None = None) -> float:
        """How much of the window the ring has watched: it starts at its oldest row."""
        oldest_ts_ns = self.oldest_ts_ns
        if oldest_ts_ns is None:
            return 0.0
        start_ns, end_ns = self._bounds(seconds, now_ns)
        return max(0, end_ns - max(start_ns, oldest_ts_ns)) / NS_PER_SECOND

    def arrival_rate(self, seconds: float, now_ns: int | None = None) -> float:
        """Trades per second over the window.

        The denominator is the part of the window the ring has observed (from its oldest
        row, so a ring filled for 10 s does not report a 6-min rate 36x too low). NaN when
        nothing has been observed (empty ring, or one trade at the window's end); 0.0 for
        an observed window without trades. Pass `now_ns`: a quiet market must read as a
        falling rate, not as the rate up to the last print.
        """
        window = self.window(seconds, now_ns)
        oldest_ts_ns = self.oldest_ts_ns
        if oldest_ts_ns is None:
            return math.nan
        observed_start_ns = max(window.start_ns, oldest_ts_ns)
        return kernels.arrival_rate(window.local_ts_ns, observed_start_ns, window.end_ns)

    def arrival_rates_beyond(
        self,
        seconds: float,
        distances: np.ndarray,
        quotes: QuoteRing,
        now_ns: int | None = None,
    ) -> np.ndarray:
        """Trades/s printing at or beyond each distance (price units) from the prevailing mid.

        Input for the Avellaneda-Stoikov intensity lambda(delta) = A exp(-k delta): see
        `kernels.arrival_rates_beyond`. Same denominator as `arrival_rate`.
        """
        window = self.window(seconds, now_ns)
        quote_window = quotes._window_with_prevailing(window.start_ns, window.end_ns)
        return kernels.arrival_rates_beyond(
            window.local_ts_ns,
            window.price,
            window.signed_qty,
            quote_window.local_ts_ns,
            quote_window.bid,
            quote_window.ask,
            np.ascontiguousarray(distances, dtype=np.float64),
            self.observed_seconds(seconds, now_ns),
        )


def _snapshot_path(path_dir: Path, ring: _Ring) -> Path:
    # Symbols carry '/' and ':' (ccxt unified); percent-encoding keeps the name a single
    # path component and unambiguous. The file's metadata, not its name, is authoritative.
    name = f"{url_quote(ring.exchange, safe='')}__{url_quote(ring.symbol, safe='')}"
    return path_dir / f"{name}.{ring.KIND}{_SNAPSHOT_SUFFIX}"


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_ring_snapshot(ring: _Ring, path: Path) -> int:
    """Write one ring atomically: temporary file, fsync, rename. Returns rows written."""
    tmp_path = path.with_name(path.name + ".tmp")
    schema = ring._arrow_schema()
    rows = 0
    # A native OSFile, not a Python file object: Arrow writes without taking the GIL,
    # so a snapshot in a worker thread does not stall the event loop.
    try:
        with pa.OSFile(str(tmp_path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for arrays in ring._consistent_chunks():
                writer.write_batch(pa.record_batch(arrays, schema=schema),
                                   custom_metadata={_CHECKSUM_KEY: _checksums(arrays)})
                rows += int(arrays[0].shape[0])
        _fsync_path(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        # A full or failing disk: no empty or partial temporary file is left behind, and
        # the previous snapshot (if any) stays as it was.
        tmp_path.unlink(missing_ok=True)
        raise
    return rows


def _checksums(arrays: list[np.ndarray]) -> bytes:
    """CRC-32 of each column's bytes, comma-separated hex (zlib releases the GIL)."""
    return b",".join(b"%08x" % zlib.crc32(np.ascontiguousarray(array)) for array in arrays)


def _read_ring_snapshot(
    path: Path,
    retention_s: float,
    now_ns: int,
    quote_capacity: int,
    trade_capacity: int,
) -> _Ring:
    """Read one snapshot file into a fresh ring; raises on anything unexpected."""
    cutoff_ns = now_ns - _span_ns(retention_s)
    with pa.memory_map(str(path), "r") as source:
        reader = pa.ipc.open_file(source)
        metadata = {
            key.decode(): value.decode() for key, value in (reader.schema.metadata or {}).items()
        }
        version = metadata.get("cryptopipe.format_version")
        if version not in (_SNAPSHOT_FORMAT_VERSION, _UNCHECKSUMMED_FORMAT_VERSION):
            raise ValueError(f"unknown snapshot format {version!r}")
        kind = metadata.get("cryptopipe.kind")
        ring_class: type[_Ring]
        if kind == QuoteRing.KIND:
            ring_class, capacity = QuoteRing, quote_capacity
        elif kind == TradeRing.KIND:
            ring_class, capacity = TradeRing, trade_capacity
        else:
            raise ValueError(f"unknown ring kind {kind!r}")
        ring = ring_class(metadata["cryptopipe.exchange"], metadata["cryptopipe.symbol"], capacity,
                          retention_s)
        expected = ring._arrow_schema()
        if not reader.schema.equals(expected, check_metadata=False):
            raise ValueError(f"schema {reader.schema} is not {expected}")
        previous_ts_ns = _INT64_MIN
        for batch_index in range(reader.num_record_batches):
            batch, batch_metadata = reader.get_batch_with_custom_metadata(batch_index)
            batch.validate(full=True)
            if any(column.null_count for column in batch.columns):
                raise ValueError("null values in a snapshot column")
            # Views into the memory map, copied into the ring by _write_bulk below.
            arrays = [column.to_numpy(zero_copy_only=True) for column in batch.columns]
            _check_batch(ring, arrays, version, batch_metadata, batch_index)
            ts = arrays[0]
            if ts.shape[0] and (ts[0] < previous_ts_ns or np.any(ts[1:] < ts[:-1])):
                # The writer only ever saves sorted timestamps: this file is damaged.
                raise ValueError("local_ts_ns not in time order")
            if ts.shape[0]:
                previous_ts_ns = int(ts[-1])
            keep_from = int(np.searchsorted(ts, cutoff_ns, "left"))
            ring._write_bulk([array[keep_from:] for array in arrays])
    return ring


def _check_batch(ring: _Ring, arrays: list[np.ndarray], version: str | None,
                 metadata: pa.KeyValueMetadata | None, batch_index: int) -> None:
    """Raise when a batch is not what the writer wrote: its checksums decide (format 2);
    a format 1 batch must hold only rows a feed could have produced."""
    if version == _UNCHECKSUMMED_FORMAT_VERSION:
        impossible = ring.impossible_rows(arrays)
        if impossible:
            raise ValueError(f"batch {batch_index}: {impossible} rows with impossible values")
        return
    stored = metadata.get(_CHECKSUM_KEY) if metadata is not None else None
    if stored is None:
        raise ValueError(f"batch {batch_index}: no checksum")
    if stored != _checksums(arrays):
        raise ValueError(f"batch {batch_index}: checksum mismatch (bytes overwritten)")


class RingStore:
    """All rings, keyed by (exchange, symbol); the bus's synchronous sink.

    Max capacity per ring = retention x max rate, rounded up: `max_rate_hz` quote rows/s
    (`settings.ring.max_rate_hz`), `max_trade_rate_hz` trade rows/s; a ring holds what is
    within the retention, growing to that capacity only if its rows need it. A quote ring
    appears on the key's first quote, a trade ring on its first trade.
    """

    def __init__(
        self,
        retention_s: float = DEFAULT_RETENTION_S,
        max_rate_hz: float = DEFAULT_MAX_RATE_HZ,
        max_trade_rate_hz: float = DEFAULT_MAX_TRADE_RATE_HZ,
        growable: bool = False,
    ) -> None:
        """`growable`: rings start small and grow within the retention (backtests; see the
        module docstring), else each holds its capacity from the start (live)."""
        self.retention_s = retention_s
        self.growable = growable
        self.quote_capacity = _capacity_for(retention_s, max_rate_hz)
        self.trade_capacity = _capacity_for(retention_s, max_trade_rate_hz)
        self._quote_rings: dict[tuple[str, str], QuoteRing] = {}
        self._trade_rings: dict[tuple[str, str], TradeRing] = {}
        # The hot path looks rings up by exchange, then symbol: two str-keyed dict
        # lookups cost ~33 ns against ~71 ns for building and hashing a (exchange, symbol)
        # tuple key (measured over 400k quotes on 4 keys).
        self._quote_rings_by_exchange: dict[str, dict[str, QuoteRing]] = {}
        self._trade_rings_by_exchange: dict[str, dict[str, TradeRing]] = {}
        # One snapshot at a time: the periodic one may still be running in its worker
        # thread when shutdown asks for the final one; both write the same tmp files.
        self._snapshot_lock = threading.Lock()
        #: Keys whose rows a backtest stages in bulk rather than routes (`feed_in_bulk`).
        self._bulk_keys: frozenset[tuple[str, str]] = frozenset()
        #: Rows staged for rings not created yet (a key's ring appears on its first event,
        #: as without staging): handed to the ring when it is created.
        self._waiting_quotes: dict[tuple[str, str], _Staged] = {}
        self._waiting_trades: dict[tuple[str, str], _Staged] = {}

    # ----------------------------------------------------------------------- bus sink

    # As a `MarketSink` (`daemon.core.routes`), the store's route for a key is the key's ring
    # itself: the bus's channel for the key appends to it with no lookup.

    def quote_route(self, exchange: str, symbol: str) -> Callable[[Quote], None]:
        ring = self._quote_ring(exchange, symbol)
        return ignore if (exchange, symbol) in self._bulk_keys else ring.append

    def trade_route(self, exchange: str, symbol: str) -> Callable[[Trade], None]:
        ring = self._trade_ring(exchange, symbol)
        return ignore if (exchange, symbol) in self._bulk_keys else ring.append

    # ----------------------------------------------------------------------- bulk (backtest)

    def feed_in_bulk(self, keys: frozenset[tuple[str, str]]) -> None:
        """Rows of these keys come staged (`stage_quotes`/`stage_trades`), not through the
        bus: their routes are `ignore` (the bus drops them; call before the bus asks for
        them, or have it ask again). Each event of theirs must be staged, in order."""
        self._bulk_keys = keys

    def stage_quotes(self, exchange: str, symbol: str, rows: np.ndarray,
                     columns: list[np.ndarray], position: Callable[[], int]) -> None:
        """`_Ring.stage` for the quote ring of a bulk key (created by its first quote)."""
        self._stage(self._quote_rings, self._waiting_quotes, (exchange, symbol),
                    _Staged(rows, columns, position))

    def stage_trades(self, exchange: str, symbol: str, rows: np.ndarray,
                     columns: list[np.ndarray], position: Callable[[], int]) -> None:
        """`_Ring.stage` for the trade ring of a bulk key (created by its first trade)."""
        self._stage(self._trade_rings, self._waiting_trades, (exchange, symbol),
                    _Staged(rows, columns, position))

    def flush_staged(self) -> None:
        """Write every staged row: the replay has passed them all (the end of a chunk)."""
        for ring in self._rings():
            ring.flush_staged()
        if self._waiting_quotes or self._waiting_trades:
            # Staged, never published: the ring of such a key was never asked for.
            waiting = sorted({*self._waiting_quotes, *self._waiting_trades})
            raise RuntimeError(f"rows staged for {waiting} but never published")

    @staticmethod
    def _stage(rings: dict[tuple[str, str], _Ring], waiting: dict[tuple[str, str], _Staged],
               key: tuple[str, str], staged: _Staged) -> None:
        if key not in waiting and (ring := rings.get(key)) is not None:
            ring.stage(staged.rows, staged.columns, staged.position)
        elif key in waiting:
            raise RuntimeError(f"rows of {key} staged twice before it was published")
        else:
            waiting[key] = staged

    def on_quote(self, quote: Quote) -> None:
        """Record a quote of any key (the bus never passes its stale markers to sinks)."""
        try:
            ring = self._quote_rings_by_exchange[quote.exchange][quote.symbol]
        except KeyError:
            ring = self._quote_ring(quote.exchange, quote.symbol)
        ring.append(quote)

    def on_trade(self, trade: Trade) -> None:
        """Record a trade of any key."""
        try:
            ring = self._trade_rings_by_exchange[trade.exchange][trade.symbol]
        except KeyError:
            ring = self._trade_ring(trade.exchange, trade.symbol)
        ring.append(trade)

    def _quote_ring(self, exchange: str, symbol: str) -> QuoteRing:
        ring = self._quote_rings.get((exchange, symbol))
        if ring is None:
            ring = self._add_quote_ring(QuoteRing(exchange, symbol, self.quote_capacity,
                                                       self.retention_s, self.growable))
        return ring

    def _trade_ring(self, exchange: str, symbol: str) -> TradeRing:
        ring = self._trade_rings.get((exchange, symbol))
        if ring is None:
            ring = self._add_trade_ring(TradeRing(exchange, symbol, self.trade_capacity,
                                                       self.retention_s, self.growable))
        return ring

    def _add_quote_ring(self, ring: QuoteRing, **context: str) -> QuoteRing:
        self._quote_rings[ring.key] = ring
        self._quote_rings_by_exchange.setdefault(ring.exchange, {})[ring.symbol] = ring
        self._log_ring_added(ring, context)
        if (staged := self._waiting_quotes.pop(ring.key, None)) is not None:
            ring.stage(staged.rows, staged.columns, staged.position)
        return ring

    def _add_trade_ring(self, ring: TradeRing, **context: str) -> TradeRing:
        self._trade_rings[ring.key] = ring
        self._trade_rings_by_exchange.setdefault(ring.exchange, {})[ring.symbol] = ring
        self._log_ring_added(ring, context)
        if (staged := self._waiting_trades.pop(ring.key, None)) is not None:
            ring.stage(staged.rows, staged.columns, staged.position)
        return ring

    @staticmethod
    def _log_ring_added(ring: _Ring, context: dict[str, str]) -> None:
        log.info(
            "ring_added",
            **context,
            kind=ring.KIND,
            exchange=ring.exchange,
            symbol=ring.symbol,
            capacity_rows=ring.capacity,
            rows=len(ring),
            reserved_bytes=ring.memory_bytes().allocated_bytes,
        )

    # ----------------------------------------------------------------------- lookups

    def quotes(self, exchange: str, symbol: str) -> QuoteRing | None:
        return self._quote_rings.get((exchange, symbol))

    def trades(self, exchange: str, symbol: str) -> TradeRing | None:
        return self._trade_rings.get((exchange, symbol))

    def keys(self) -> list[tuple[str, str]]:
        """Every (exchange, symbol) with a quote or a trade ring, sorted."""
        return sorted(self._quote_rings.keys() | self._trade_rings.keys())

    def _rings(self) -> list[_Ring]:
        # list(dict.values()) runs in C under the GIL: safe from a snapshot thread while
        # the event loop adds a ring.
        return [*list(self._quote_rings.values()), *list(self._trade_rings.values())]

    def memory_bytes(self) -> MemoryUsage:
        usages = [ring.memory_bytes() for ring in self._rings()]
        return MemoryUsage(
            allocated_bytes=sum(usage.allocated_bytes for usage in usages),
            used_bytes=sum(usage.used_bytes for usage in usages),
            rows=sum(usage.rows for usage in usages),
        )

    # ----------------------------------------------------------------------- snapshots

    def snapshot(self, path_dir: str | os.PathLike[str]) -> SnapshotReport:
        """Write every ring to `path_dir`, one Feather file per (key, kind), atomically.

        Safe to call from a worker thread while the event loop keeps appending.
        """
        started = time.perf_counter()
        directory = Path(path_dir)
        directory.mkdir(parents=True, exist_ok=True)
        files = rows = bytes_written = 0
        with self._snapshot_lock:
            for ring in self._rings():
                path = _snapshot_path(directory, ring)
                rows += _write_ring_snapshot(ring, path)
                bytes_written += path.stat().st_size
                files += 1
            _fsync_path(directory, directory=True)  # make the renames durable
        report = SnapshotReport(files, rows, bytes_written, time.perf_counter() - started)
        log.info("snapshot_written", path=str(directory), **report._asdict())
        return report

    @classmethod
    def load(
        cls,
        path_dir: str | os.PathLike[str],
        retention_s: float = DEFAULT_RETENTION_S,
        now_ns: int | None = None,
        *,
        max_rate_hz: float = DEFAULT_MAX_RATE_HZ,
        max_trade_rate_hz: float = DEFAULT_MAX_TRADE_RATE_HZ,
    ) -> RingStore:
        """A new store filled from the snapshots in `path_dir`, rows older than the
        retention (before `now_ns - retention_s`) dropped.

        A missing directory, or a corrupt, truncated or unreadable file — or one whose
        bytes were overwritten (checksum mismatch, or a row no feed could produce) — is
        logged and skipped: start-up goes on with whatever history could be read.
        """
        store = cls(retention_s, max_rate_hz, max_trade_rate_hz)
        now_ns = time.time_ns() if now_ns is None else now_ns
        directory = Path(path_dir)
        if not directory.is_dir():
            log.warning("snapshot_dir_missing", path=str(directory))
            return store
        for path in sorted(directory.glob(f"*{_SNAPSHOT_SUFFIX}")):
            try:
                ring = _read_ring_snapshot(
                    path, retention_s, now_ns, store.quote_capacity, store.trade_capacity
                )
            except Exception as error:  # any damage: skip the file, never the start-up
                log.warning("snapshot_file_skipped", path=str(path), error=repr(error))
                continue
            if isinstance(ring, QuoteRing) and ring.key not in store._quote_rings:
                store._add_quote_ring(ring, snapshot=str(path))
            elif isinstance(ring, TradeRing) and ring.key not in store._trade_rings:
                store._add_trade_ring(ring, snapshot=str(path))
            else:
                log.warning("snapshot_file_skipped", path=str(path), error="duplicate key")
        return store


async def snapshot_every(
    store: RingStore,
    path_dir: str | os.PathLike[str],
    interval_s: float,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Snapshot `store` every `interval_s` seconds, in a worker thread, until cancelled.

    A failed snapshot is logged and retried at the next interval: losing one snapshot is
    better than losing the task. Shutdown cancels this task and calls `store.snapshot`
    once more (the store's lock makes it wait for a snapshot still in flight).
    """
    while True:
        await sleep(interval_s)
        try:
            await asyncio.to_thread(store.snapshot, path_dir)
        except Exception as error:
            log.error("snapshot_failed", path=str(path_dir), error=repr(error))


def warm_up_kernels() -> float:
    """Compile (or load from numba's cache) every kernel for the ring's window types.

    Call once at start-up, before strategies run: the first call of each kernel otherwise
    pays the compile (seconds on a cold cache) inside a strategy callback. Windows hand
    out read-only arrays, a distinct numba type, so the warm-up goes through real rings.
    Returns the seconds spent.
    """
    started = time.perf_counter()
    quotes = QuoteRing("warm-up", "WARM/UP", capacity=4)
    trades = TradeRing("warm-up", "WARM/UP", capacity=4)
    for row in range(3):
        quotes.append(Quote("warm-up", "WARM/UP", 1.0 + row, 1.0, 2.0 + row, 1.0, row, row))
        trades.append(Trade("warm-up", "WARM/UP", 1.5, 1.0, "buy", row, row))
    quotes.volatility(1)
    window = quotes.window(1)  # the resumable pass `RingMarketView.volatility` runs
    state = kernels.accumulate_log_returns(window.local_ts_ns, window.bid, window.ask,
                                           0.0, 0, math.nan, 0, 0)
    kernels.volatility_of_returns(state[0], state[1], state[3], state[4])
    quotes.mean_spread(1)
    quotes.mean_spread(1, time_weighted=True)
    trades.arrival_rate(1)
    trades.arrival_rates_beyond(1, np.array([0.0]), quotes)
    return time.perf_counter() - started
