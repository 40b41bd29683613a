"""A backtest's market events decoded once, kept as columns: decode once, backtest many times.

Parsing the recorded frames costs more than backtesting a market maker on them (issue #8:
the parse-only replay of the shared Binance files runs at ~330k events/s). So the events
the parse path yields -- `adapters.recordings.replay.ReplayFeed` through the live parsers, files
merged by receive time, `FILE@VENUE:SYMBOL` relabelling applied -- are decoded once into
columns and saved as one Arrow IPC (Feather) file, `data_dir/cache/backtest/<digest>.arrow`.
Later backtests of the same files read the columns and rebuild each Quote and Trade equal,
field for field and type for type, to the parsed one, in the same order; the replay's
`ReplayStats` are kept with them, so a result is the same from the cache.

Columns, one row per published event: `kind` (QUOTE, TRADE), `key` (index into the
(exchange, symbol) table in the summary), `local_ts_ns`, `exchange_ts_ns`, `price`
(a quote's bid, a trade's price), `qty` (bid size, trade size), `ask`, `ask_qty`, `seq`,
`stale` (quotes), `side` (index into the side table in the summary) and `trade_id`
(trades). A field a kind does not have holds 0, False or "".

Chunks (issue 18: many days in bounded memory). The file is a run of record batches of
`CHUNK_ROWS` rows, written one by one while the replay decodes (`build`: the replay's
events wait in a buffer of one chunk, never all of them), and read back one batch at a
time (`CachedEvents.chunks`), so neither building nor reading holds more than a chunk of
events; the engine turns only the rows it runs into Quote/Trade objects, a chunk at a
time. The batches are read from the file, not memory-mapped: a mapped page once touched
counts in the process's resident memory until unmapped, so a map of a month of events
would grow it with the days. The last batch has no rows: its custom metadata is the
file's summary (keys, sides, replay stats, specs, depth, and per batch its rows, its
largest receive time and the SHA-256 of its values), known only once the replay is done.
In memory (`BacktestData`: tests, the RL mirror, a cache that cannot be saved) the same
columns are cut into chunks as views.

With `execution.walk_depth` (the default) the replay also keeps the depth books' changes
(daemon/backtest/depth.py) and saves them beside the events, `<digest>.depth` (Arrow,
lz4: one row per change, its levels as list columns), in batches as they are emitted
(`_DepthWriter`), read back batch by batch (`DepthFile`); the summary carries their keys,
count and each batch's SHA-256, so a missing or altered depth file has the cache rebuilt.
Whether depth is kept is part of the name.

The name is a digest of `CACHE_FORMAT_VERSION`, of the decoding code's own files (replay,
parsers, model: a parser fix must not be hidden behind an old cache) and, per spec, of its
text, the file's resolved path, size and mtime_ns: a touched or replaced recording gets a
new name, so a stale cache is never read (old files are left in place, not collected). A
cache file that cannot be used (unreadable, truncated, corrupt, another format) is logged
and rebuilt, never fatal. Files are written atomically: temporary file, fsync, rename.

Overwritten bytes inside the columns still parse as Arrow, so Arrow alone cannot tell a
damaged file: each batch's SHA-256 is in the summary, and the summary's own (`digest`) in
it; opening a cache file reads every batch once, checks its digest and its values as the
parsers guarantee them (prices finite and > 0, a quote's bid < ask, sizes finite, a
trade's size > 0), before the backtest sees any event. Events that would fail these
checks are not cached at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.ipc

import adapters
import adapters.recordings.replay
import daemon.core.model
from adapters.recordings.replay import FileStats, ReplayFeed, ReplaySpec, ReplayStats
from daemon.backtest.depth import (
    BatchSummary,
    ChangeIndex,
    DepthColumns,
    DepthRecorder,
    joined_depth,
    skipped,
    summarized,
)
from daemon.core.logs import get_logger
from daemon.core.model import Quote, Trade

log = get_logger("backtest_data")

#: Bump when the columns or metadata change meaning: older cache files are then rebuilt.
CACHE_FORMAT_VERSION = 4  # 2: the digest of the columns in the metadata; 3: depth beside;
#                            4: chunks (record batches), the summary in a last empty one
#: Rows per chunk of a cache file (a record batch): what is decoded or read at a time.
CHUNK_ROWS = 65_536
QUOTE = 0
TRADE = 1
_SUFFIX = ".arrow"
_META_VERSION = b"cryptopipe.backtest_cache"
_META_KEYS = b"keys"
_META_SIDES = b"sides"
_META_STATS = b"stats"
_META_SPECS = b"specs"
_META_DIGEST = b"digest"
_META_DEPTH = b"depth"
_META_BATCHES = b"batches"
#: The depth changes beside a cache file (`<name>.depth`), when the replay had depth.
_DEPTH_SUFFIX = ".depth"
_DEPTH_COMPRESSION: str | None = "lz4"
_DEPTH_SCHEMA = pa.schema([
    pa.field("pos", pa.int64(), nullable=False),
    pa.field("ts", pa.int64(), nullable=False),
    pa.field("key", pa.int32(), nullable=False),
    pa.field("reset", pa.bool_(), nullable=False),
    pa.field("n_bids", pa.int32(), nullable=False),
    pa.field("price", pa.list_(pa.field("item", pa.float64(), nullable=False)),
             nullable=False),
    pa.field("size", pa.list_(pa.field("item", pa.float64(), nullable=False)),
             nullable=False),
])
#: The model's fields this format stores; another model (a new field) cannot be cached.
_QUOTE_FIELDS = ("exchange", "symbol", "bid", "bid_qty", "ask", "ask_qty", "exchange_ts_ns",
                 "local_ts_ns", "seq", "stale")
_TRADE_FIELDS = ("exchange", "symbol", "price", "qty", "side", "exchange_ts_ns",
                 "local_ts_ns", "trade_id")
_SCHEMA = pa.schema([
    pa.field("kind", pa.uint8(), nullable=False),
    pa.field("key", pa.int32(), nullable=False),
    pa.field("local_ts_ns", pa.int64(), nullable=False),
    pa.field("exchange_ts_ns", pa.int64(), nullable=False),
    pa.field("price", pa.float64(), nullable=False),
    pa.field("qty", pa.float64(), nullable=False),
    pa.field("ask", pa.float64(), nullable=False),
    pa.field("ask_qty", pa.float64(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("stale", pa.bool_(), nullable=False),
    pa.field("side", pa.int32(), nullable=False),
    pa.field("trade_id", pa.string(), nullable=False),
])


class CacheStatus(StrEnum):
    """Where a backtest's events came from."""

    HIT = "hit"  # read from a cache file
    BUILT = "built"  # decoded now and saved for next time
    UNSAVED = "unsaved"  # decoded now; saving failed (logged), the run goes on
    OFF = "off"  # no cache: the frames go through the parsers one by one


class UncacheableEvents(ValueError):
    """The events hold something the columns cannot carry exactly (a value of another
    type or range, a model with other fields): the backtest runs without the cache."""


@dataclass(frozen=True, slots=True, eq=False)
class BacktestData:
    """Decoded events in publish order, as columns in memory (see the module docstring):
    a whole run's (tests, tools, the RL mirror) or one chunk of a cache file's."""

    keys: tuple[tuple[str, str], ...]
    sides: tuple[str, ...]
    kind: np.ndarray
    key: np.ndarray
    local_ts_ns: np.ndarray
    exchange_ts_ns: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    ask: np.ndarray
    ask_qty: np.ndarray
    seq: np.ndarray
    stale: np.ndarray
    side: np.ndarray
    #: Arrow strings: most rows are never rebuilt, so they stay out of Python objects.
    trade_id: pa.Array
    stats: ReplayStats
    #: The depth books' changes, when the replay kept them and the data had depth.
    depth: DepthColumns | None = None

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    # -- building events -------------------------------------------------------------

    def quotes(self, rows: np.ndarray) -> list[Quote]:
        """The quotes of these rows (all of kind QUOTE), in the order given."""
        exchanges, symbols = self._labels(rows)
        return list(map(
            Quote, exchanges, symbols, self.price[rows].tolist(), self.qty[rows].tolist(),
            self.ask[rows].tolist(), self.ask_qty[rows].tolist(),
            self.exchange_ts_ns[rows].tolist(), self.local_ts_ns[rows].tolist(),
            self.seq[rows].tolist(), self.stale[rows].tolist(),
        ))

    def trades(self, rows: np.ndarray) -> list[Trade]:
        """The trades of these rows (all of kind TRADE), in the order given."""
        exchanges, symbols = self._labels(rows)
        sides = np.array(self.sides, dtype=object)[self.side[rows]].tolist() if len(rows) \
            else []
        trade_ids = self.trade_id.take(pa.array(rows, type=pa.int64())).to_pylist()
        return list(map(
            Trade, exchanges, symbols, self.price[rows].tolist(), self.qty[rows].tolist(),
            sides, self.exchange_ts_ns[rows].tolist(), self.local_ts_ns[rows].tolist(),
            trade_ids,
        ))

    def event(self, row: int) -> Quote | Trade:
        """The event of one row (one at a time: `quotes`/`trades` build many faster)."""
        exchange, symbol = self.keys[self.key.item(row)]
        if self.kind.item(row) == QUOTE:
            return Quote(exchange, symbol, self.price.item(row), self.qty.item(row),
                         self.ask.item(row), self.ask_qty.item(row),
                         self.exchange_ts_ns.item(row), self.local_ts_ns.item(row),
                         self.seq.item(row), self.stale.item(row))
        return Trade(exchange, symbol, self.price.item(row), self.qty.item(row),
                     self.sides[self.side.item(row)], self.exchange_ts_ns.item(row),
                     self.local_ts_ns.item(row), self.trade_id[row].as_py())

    def all_events(self) -> list[Quote | Trade]:
        """Every event, in publish order (tests, tools; a backtest rebuilds only some)."""
        rows = np.arange(len(self))
        is_quote = self.kind == QUOTE
        quotes = iter(self.quotes(rows[is_quote]))
        trades = iter(self.trades(rows[~is_quote]))
        return [next(quotes) if flag else next(trades) for flag in is_quote.tolist()]

    def _labels(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        if not len(rows):
            return [], []
        keys = self.key[rows]
        exchanges = np.array([exchange for exchange, _ in self.keys], dtype=object)
        symbols = np.array([symbol for _, symbol in self.keys], dtype=object)
        return exchanges[keys].tolist(), symbols[keys].tolist()

    # -- the same interface as a cache file (`CachedEvents`) ---------------------------

    def chunks(self, start: int = 0, stop: int | None = None
               ) -> Iterator[tuple[int, BacktestData]]:
        """(first row, columns) of the rows [start, stop), `CHUNK_ROWS` at a time (views)."""
        stop = len(self) if stop is None else stop
        size = CHUNK_ROWS
        for first in range(start, stop, size):
            yield first, self.slice(first, min(first + size, stop))

    def slice(self, start: int, stop: int) -> BacktestData:
        """The rows [start, stop) as views (no copy); keys, sides, stats and depth kept."""
        columns = {name: getattr(self, name)[start:stop] for name in NUMERIC_COLUMNS}
        return dataclasses.replace(self, trade_id=self.trade_id.slice(start, stop - start),
                                   **columns)

    def in_memory(self) -> BacktestData:
        return self

    def rows_received(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        """The rows from the first whose running max receive time reaches `start_ns` to
        the first that reaches `end_ns` (rows are in publish order: see `window_rows`)."""
        running_max = np.maximum.accumulate(self.local_ts_ns) if len(self) \
            else self.local_ts_ns
        start, stop = running_max.searchsorted([start_ns, end_ns]).tolist()
        return int(start), int(stop)

    def window_stats(self, start: int, stop: int) -> ReplayStats:
        """`stats` with the quotes, trades and times of the rows [start, stop)."""
        if (start, stop) == (0, len(self)):
            return self.stats
        return _window_stats(self.stats, self.chunks(start, stop), stop - start)

    # -- from parsed events ----------------------------------------------------------

    @classmethod
    def from_events(cls, events: list[Quote | Trade], stats: ReplayStats,
                    depth: DepthColumns | None = None, *,
                    key_ids: dict[tuple[str, str], int] | None = None,
                    side_ids: dict[str, int] | None = None) -> BacktestData:
        """Columns of parsed events; raises `UncacheableEvents` if any would not come back
        exactly as it went in (each field is checked to be of its model type).

        `key_ids`/`side_ids`: the tables of the chunks before (extended in place), so a
        key keeps its index across the chunks of one file."""
        if Quote.__struct_fields__ != _QUOTE_FIELDS or Trade.__struct_fields__ != _TRADE_FIELDS:
            raise UncacheableEvents("the model's Quote/Trade fields are not the cached ones")
        quotes = [event for event in events if type(event) is Quote]
        trades = [event for event in events if type(event) is Trade]
        if len(quotes) + len(trades) != len(events):
            raise UncacheableEvents("an event that is neither a Quote nor a Trade")
        is_quote = np.fromiter((type(event) is Quote for event in events), dtype=np.bool_,
                               count=len(events))
        key_ids = {} if key_ids is None else key_ids
        side_ids = {} if side_ids is None else side_ids
        new_keys, new_sides = len(key_ids), len(side_ids)
        keys = [key_ids.setdefault((e.exchange, e.symbol), len(key_ids)) for e in events]
        sides = [side_ids.setdefault(t.side, len(side_ids)) for t in trades]
        trade_ids = [t.trade_id for t in trades]
        _check("exchange, symbol", [part for key in list(key_ids)[new_keys:] for part in key],
               str)
        _check("side", list(side_ids)[new_sides:], str)
        _check("trade_id", trade_ids, str)

        def merged(name: str, dtype: type, of_quotes: list[Any], of_trades: list[Any] | None,
                   kind: type) -> np.ndarray:
            """One column: the quotes' values in quote rows, the trades' in trade rows."""
            _check(name, of_quotes, kind)
            column = np.zeros(len(events), dtype=dtype)
            try:
                column[is_quote] = of_quotes
                if of_trades is not None:
                    _check(name, of_trades, kind)
                    column[~is_quote] = of_trades
            except OverflowError as exc:  # an int beyond int64
                raise UncacheableEvents(f"{name}: {exc}") from None
            return column

        trade_id = [""] * len(events)
        for row, value in zip(np.flatnonzero(~is_quote).tolist(), trade_ids, strict=True):
            trade_id[row] = value
        side = np.zeros(len(events), dtype=np.int32)
        side[~is_quote] = sides
        data = cls(
            keys=tuple(key_ids), sides=tuple(side_ids),
            kind=np.where(is_quote, QUOTE, TRADE).astype(np.uint8),
            key=np.array(keys, dtype=np.int32),
            local_ts_ns=merged("local_ts_ns", np.int64, [q.local_ts_ns for q in quotes],
                               [t.local_ts_ns for t in trades], int),
            exchange_ts_ns=merged("exchange_ts_ns", np.int64,
                                  [q.exchange_ts_ns for q in quotes],
                                  [t.exchange_ts_ns for t in trades], int),
            price=merged("price", np.float64, [q.bid for q in quotes],
                         [t.price for t in trades], float),
            qty=merged("qty", np.float64, [q.bid_qty for q in quotes],
                       [t.qty for t in trades], float),
            ask=merged("ask", np.float64, [q.ask for q in quotes], None, float),
            ask_qty=merged("ask_qty", np.float64, [q.ask_qty for q in quotes], None, float),
            seq=merged("seq", np.int64, [q.seq for q in quotes], None, int),
            stale=merged("stale", np.bool_, [q.stale for q in quotes], None, bool),
            side=side,
            trade_id=pa.array(trade_id, type=pa.string()),
            stats=stats,
            depth=depth,
        )
        try:
            data.check_values()
            if depth is not None:
                depth.check(len(data))
        except ValueError as exc:  # a file failing these is taken for damage: never cache it
            raise UncacheableEvents(str(exc)) from None
        return data

    # -- the file --------------------------------------------------------------------

    def write(self, path: Path, specs: list[ReplaySpec]) -> None:
        """Save atomically as a cache file (one chunk per `CHUNK_ROWS` rows)."""
        with _CacheWriter(path, specs) as writer:
            for _, chunk in self.chunks():
                writer.write_chunk(chunk)
            writer.finish(self.stats, self.depth)

    @classmethod
    def read(cls, path: Path) -> BacktestData:
        """A whole cache file in memory; raises (OSError, ValueError, pyarrow errors) if it
        is unusable."""
        return CachedEvents.open(path).in_memory()

    def record_batch(self) -> pa.RecordBatch:
        return pa.record_batch([*(getattr(self, name) for name in NUMERIC_COLUMNS), self.trade_id],
                               schema=_SCHEMA)

    def columns_digest(self) -> str:
        """SHA-256 of every column's values (a chunk's, in the file's summary)."""
        digest = hashlib.sha256()
        for name in NUMERIC_COLUMNS:
            digest.update(np.ascontiguousarray(getattr(self, name)).view(np.uint8))
        for part in _string_bytes(self.trade_id):
            digest.update(part)
        return digest.hexdigest()

    def check_values(self) -> None:
        """The values the parsers guarantee (see the module docstring); raises ValueError
        naming the first one broken."""
        is_quote = self.kind == QUOTE
        for name in ("price", "qty", "ask", "ask_qty"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name}: a value that is not finite")
        price, qty = self.price, self.qty
        checks = (
            ("price <= 0", price <= 0.0),
            ("bid >= ask", is_quote & (self.ask <= price)),
            ("negative quote size", is_quote & ((qty < 0.0) | (self.ask_qty < 0.0))),
            ("trade size <= 0", ~is_quote & (qty <= 0.0)),
        )
        for what, broken in checks:
            rows = np.flatnonzero(broken)
            if len(rows):
                raise ValueError(f"{what} in {len(rows)} rows (first: row {rows[0]})")

    def check_tables(self) -> None:
        """The few invariants a damaged file could break without Arrow noticing."""
        if len(self) and (self.key.min() < 0 or self.key.max() >= len(self.keys)):
            raise ValueError("key index out of range")
        if len(self) and (self.side.min() < 0 or self.side.max() >= max(len(self.sides), 1)):
            raise ValueError("side index out of range")
        if np.count_nonzero(self.kind > TRADE):
            raise ValueError("unknown event kind")


#: The numeric columns, in file order (`trade_id` comes last).
NUMERIC_COLUMNS = ("kind", "key", "local_ts_ns", "exchange_ts_ns", "price", "qty", "ask", "ask_qty",
            "seq", "stale", "side")


def _window_stats(stats: ReplayStats, chunks: Iterable[tuple[int, BacktestData]],
                  rows: int) -> ReplayStats:
    """`stats` with the quotes, trades and times of the given chunks (the files' damage
    and drops stay those of the whole files)."""
    quotes = 0
    first, last = None, None
    for _, chunk in chunks:
        quotes += int(np.count_nonzero(chunk.kind == QUOTE))
        low, high = int(chunk.local_ts_ns.min()), int(chunk.local_ts_ns.max())
        first = low if first is None else min(first, low)
        last = high if last is None else max(last, high)
    return dataclasses.replace(stats, quotes=quotes, trades=rows - quotes,
                               first_ts_ns=first, last_ts_ns=last)


class CachedEvents:
    """A cache file, opened: the summary in memory, the events read a chunk at a time
    (`chunks`). Opening checks every chunk (digest, tables, values): a damaged file
    raises here, before any event of it is used."""

    def __init__(self, path: Path, keys: tuple[tuple[str, str], ...], sides: tuple[str, ...],
                 stats: ReplayStats, batches: list[tuple[int, int, str]],
                 depth: DepthFile | None) -> None:
        self.path = path
        self.keys = keys
        self.sides = sides
        self.stats = stats
        self.depth = depth
        #: Per chunk: its rows, its largest receive time, its digest.
        self.batches = batches
        counts = np.array([rows for rows, _, _ in batches], dtype=np.int64)
        #: The first row of each chunk, and the row after the last one.
        self.starts: np.ndarray = np.concatenate(([0], np.cumsum(counts)))
        #: The running max receive time at the end of each chunk (sorted).
        self.chunk_max: np.ndarray = np.maximum.accumulate(
            np.array([high for _, high, _ in batches] or [NO_TIME], dtype=np.int64))
        self._whole: BacktestData | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    @classmethod
    def open(cls, path: Path, verify: bool = True) -> CachedEvents:
        """Raises (OSError, ValueError, pyarrow errors) if the file is unusable."""
        with _open(path) as source:
            reader = pa.ipc.open_file(source, memory_pool=_READ_POOL)
            version = (reader.schema.metadata or {}).get(_META_VERSION, b"").decode()
            if version != str(CACHE_FORMAT_VERSION):
                raise ValueError(f"cache format {version!r}, not {CACHE_FORMAT_VERSION}")
            if not reader.schema.equals(_SCHEMA, check_metadata=False):
                raise ValueError(f"unexpected schema {reader.schema}")
            count = reader.num_record_batches
            if count < 1:
                raise ValueError("no summary: the file was not finished")
            trailer = reader.get_batch_with_custom_metadata(count - 1)
            summary = dict(trailer.custom_metadata or {})
            if trailer.batch.num_rows or _summary_digest(summary) != summary.get(_META_DIGEST):
                raise ValueError("checksum mismatch: the summary's bytes were changed")
            keys = tuple((str(exchange), str(symbol))
                         for exchange, symbol in orjson.loads(summary[_META_KEYS]))
            sides = tuple(str(side) for side in orjson.loads(summary[_META_SIDES]))
            stats = _stats_from_json(orjson.loads(summary[_META_STATS]))
            batches = [(int(rows), int(high), str(digest))
                       for rows, high, digest in orjson.loads(summary[_META_BATCHES])]
            if len(batches) != count - 1:
                raise ValueError(f"{count - 1} chunks, the summary lists {len(batches)}")
            if sum(rows for rows, _, _ in batches) != stats.quotes + stats.trades:
                raise ValueError(f"{sum(rows for rows, _, _ in batches)} rows for "
                                 f"{stats.quotes} quotes + {stats.trades} trades")
            events = cls(path, keys, sides, stats, batches, None)
            # The depth file is checked beside the events, in a thread: both mostly
            # decompress and hash, which release the GIL (2.5 -> 1.5 s for 10 M events).
            with ThreadPoolExecutor(1) as pool:
                depth = (pool.submit(DepthFile.open, _depth_path(path),
                                     orjson.loads(summary[_META_DEPTH]), len(events))
                         if _META_DEPTH in summary else None)
                if verify:
                    events._verify(reader)
                if depth is not None:
                    events.depth = depth.result()
        return events

    def _verify(self, reader: pa.ipc.RecordBatchFileReader) -> None:
        """Raises ValueError at the first chunk whose bytes or values are not those the
        summary promises (the digest first: nothing of a damaged chunk is looked at)."""
        for index, (_, chunk) in enumerate(self._read(reader, 0, len(self))):
            rows, high, digest = self.batches[index]
            if chunk.columns_digest() != digest or len(chunk) != rows:
                raise ValueError(f"checksum mismatch in chunk {index}: the file's "
                                 "bytes were changed")
            chunk.check_tables()
            chunk.check_values()
            if int(chunk.local_ts_ns.max()) != high:
                raise ValueError(f"chunk {index}: its times disagree with the summary")

    def chunks(self, start: int = 0, stop: int | None = None
               ) -> Iterator[tuple[int, BacktestData]]:
        """(first row, columns) of the rows [start, stop), a file chunk at a time (the
        first and last cut to the range); each is read when asked for and dropped with it."""
        stop = len(self) if stop is None else stop
        if start >= stop:
            return
        with _open(self.path) as source:
            yield from self._read(pa.ipc.open_file(source, memory_pool=_READ_POOL), start,
                                  stop)

    def _read(self, reader: pa.ipc.RecordBatchFileReader, start: int, stop: int
              ) -> Iterator[tuple[int, BacktestData]]:
        first_chunk = int(self.starts.searchsorted(start, side="right")) - 1
        for index in range(max(first_chunk, 0), len(self.batches)):
            begin = int(self.starts[index])
            if begin >= stop:
                break
            chunk = self._chunk(reader.get_batch(index))
            low, high = max(start - begin, 0), min(stop - begin, len(chunk))
            if (low, high) != (0, len(chunk)):
                chunk = chunk.slice(low, high)
            yield begin + low, chunk

    def _chunk(self, batch: pa.RecordBatch) -> BacktestData:
        columns = {name: _to_numpy(batch.column(index), name)
                   for index, name in enumerate(NUMERIC_COLUMNS)}
        return BacktestData(keys=self.keys, sides=self.sides, stats=self.stats,
                            trade_id=batch.column(len(NUMERIC_COLUMNS)), depth=self.depth,
                            **columns)

    def in_memory(self) -> BacktestData:
        """Every chunk in one `BacktestData` (tests, tools, the RL mirror; a backtest reads
        chunk by chunk): ~65 bytes an event."""
        if self._whole is None:
            parts = [chunk for _, chunk in self.chunks()]
            depth = self.depth.in_memory() if self.depth is not None else None
            if not parts:
                return BacktestData.from_events([], self.stats, depth)
            self._whole = dataclasses.replace(joined(parts), keys=self.keys, sides=self.sides,
                                              stats=self.stats, depth=depth)
        return self._whole

    def __getattr__(self, name: str) -> Any:
        """A whole column or an event builder (`kind`, `all_events`, ...): from
        `in_memory()` (tests and tools; the engine reads chunks)."""
        if name in NUMERIC_COLUMNS or name in _BUILDERS:
            return getattr(self.in_memory(), name)
        raise AttributeError(name)

    def rows_received(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        """As `BacktestData.rows_received`, reading only the chunks the two rows are in."""
        return self._first_reaching(start_ns), self._first_reaching(end_ns)

    def _first_reaching(self, ts_ns: int) -> int:
        index = int(self.chunk_max.searchsorted(ts_ns))
        if index >= len(self.batches):
            return len(self)
        carry = int(self.chunk_max[index - 1]) if index else NO_TIME
        begin = int(self.starts[index])
        _, chunk = next(self.chunks(begin, int(self.starts[index + 1])))
        running_max = np.maximum(np.maximum.accumulate(chunk.local_ts_ns), carry)
        return begin + int(running_max.searchsorted(ts_ns))

    def window_stats(self, start: int, stop: int) -> ReplayStats:
        if (start, stop) == (0, len(self)):
            return self.stats
        return _window_stats(self.stats, self.chunks(start, stop), stop - start)


#: What `CachedEvents` hands on to `in_memory()` (besides the numeric columns).
_BUILDERS = frozenset({"trade_id", "all_events", "event", "quotes", "trades"})
#: Below every receive time (a running max before the first row).
NO_TIME = -(2**63)
#: What `load` gives a backtest: a cache file read chunk by chunk, or columns in memory.
EventSource = BacktestData | CachedEvents


#: Chunks are read into the system allocator's memory: a chunk's buffers are large
#: (~8 MB), so malloc maps them apart and gives them back when the chunk goes, where
#: Arrow's default pool (mimalloc) kept more resident as the days went by (`load` makes
#: it the process's pool: the takes and copies of a chunk's columns go there too).
_READ_POOL = pa.system_memory_pool()


#: glibc's `mallopt` parameter (malloc.h): blocks of at least this many bytes are mapped
#: apart (and unmapped when freed) instead of taken from the heap.
M_MMAP_THRESHOLD = -3
#: Above a chunk's columns (64k rows x 8 bytes, reused from the heap: mapping each anew
#: and faulting its pages in made the run 2.4x slower at 128 kB), below its record batch
#: (~4 MB) and a depth batch's levels (2 MB each).
MMAP_THRESHOLD_BYTES = 1 << 20
_allocator_tuned = False


def _mallopt(param: int, value: int) -> int:
    return int(ctypes.CDLL(None).mallopt(ctypes.c_int(param), ctypes.c_int(value)))


def _set_madvise_hugepage(enabled: bool) -> None:
    """numpy's run-time switch of what `NUMPY_MADVISE_HUGEPAGE` sets at import (numpy
    2's private module; absent elsewhere, then nothing changes)."""
    switch = getattr(getattr(np, "_core", None), "multiarray", None)
    setter = getattr(switch, "_set_madvise_hugepage", None)
    if setter is not None:
        setter(enabled)


def tune_allocator() -> None:
    """Keep glibc's malloc from holding a chunk's freed buffers (once per process, at the
    start of a backtest, a sweep worker's or a training run's: `load` calls it).

    By default glibc raises its mmap threshold to the size of each mapped block freed (up
    to 32 MB). After the first chunk's record batch (~4 MB) is freed, every later chunk's
    buffers come from the heap, between long-lived small blocks (orders, log buffers),
    and the heap gives back only what lies above its last used block: the holes stay
    resident, more of them the more days are read. Measured (16 shifted copies of the
    spot day, warm, 60 s retention): a heap of 84 MB of which 52 MB free, peak RSS 274 MB
    for 219 MB with one copy; with the threshold fixed at 1 MiB (setting it turns the
    dynamic one off), 255 MB, and 258 MB for 32 copies, at the same CPU time within noise.
    Arrow's jemalloc or mimalloc pools for the batches did worse (268 and 280 MB): the
    numpy buffers the engine derives from a chunk stay with malloc whatever the pool.

    Not on other C libraries, and not when `MALLOC_MMAP_THRESHOLD_` is set (the user's
    choice wins). The daemon's live modes never call it.

    Nor does numpy ask for transparent huge pages for its large arrays (it does by
    default where the kernel's THP mode is `madvise`), unless `NUMPY_MADVISE_HUGEPAGE`
    says otherwise: with THP defrag on `madvise` too, the kernel compacts memory
    synchronously to fault a huge page in, and a growing ring's new columns are such
    faults. Measured (16 shifted days of spot + USD-M, every event checked, warm): 640-670 k
    events/s with the advice, 790-840 k without; a 1 M -> 2 M row copy of 6 columns took
    14-440 ms with it, 13-34 ms without."""
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        _set_madvise_hugepage(False)
    if platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    if not _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("malloc_threshold_not_set", threshold=MMAP_THRESHOLD_BYTES)


def _open(path: Path) -> pa.OSFile:
    return pa.OSFile(str(path), memory_pool=_READ_POOL)


def _to_numpy(column: pa.Array, name: str) -> np.ndarray:
    if not len(column):
        return np.array([], dtype=_SCHEMA.field(name).type.to_pandas_dtype())
    # Views into the batch read, except bool (Arrow packs it into bits).
    return column.to_numpy(zero_copy_only=name != "stale")


def _summary_digest(summary: dict[bytes, bytes]) -> bytes:
    """SHA-256 of the summary's entries (the chunks' digests among them)."""
    digest = hashlib.sha256()
    for key in (_META_KEYS, _META_SIDES, _META_STATS, _META_SPECS, _META_DEPTH, _META_BATCHES):
        value = summary.get(key, b"")
        digest.update(len(value).to_bytes(8, "little") + value)
    return digest.hexdigest().encode()


class _CacheWriter:
    """A cache file being written: chunks in, then the summary (`finish`); atomic (a
    temporary file beside `path`, fsync'd, renamed by `finish`; removed on failure)."""

    def __init__(self, path: Path, specs: list[ReplaySpec]) -> None:
        self.path = path
        self.specs = specs
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self.batches: list[list[Any]] = []
        self._sink: Any = None
        self._writer: Any = None

    def __enter__(self) -> _CacheWriter:
        self._sink = pa.OSFile(str(self.tmp), "wb")
        schema = _SCHEMA.with_metadata({_META_VERSION: str(CACHE_FORMAT_VERSION).encode()})
        self._writer = pa.ipc.new_file(self._sink, schema)
        return self

    def write_chunk(self, chunk: BacktestData) -> None:
        digest = chunk.columns_digest()
        self._writer.write_batch(chunk.record_batch())
        self.batches.append([len(chunk), int(chunk.local_ts_ns.max()), digest])

    def finish(self, stats: ReplayStats, depth: DepthColumns | dict[str, Any] | None,
               keys: tuple[tuple[str, str], ...] | None = None,
               sides: tuple[str, ...] | None = None) -> None:
        summary = {
            _META_KEYS: orjson.dumps([list(key) for key in keys or ()]),
            _META_SIDES: orjson.dumps(list(sides or ())),
            _META_STATS: orjson.dumps(_stats_to_json(stats)),
            _META_SPECS: orjson.dumps([str(spec) for spec in self.specs]),
            _META_BATCHES: orjson.dumps(self.batches),
        }
        if isinstance(depth, DepthColumns):  # first: a main file never names a missing one
            writer = _DepthWriter(_depth_path(self.path))
            try:
                writer.write(depth)
                depth = writer.finish(depth.keys)
            finally:
                writer.abandon()
        if depth is not None:
            summary[_META_DEPTH] = orjson.dumps(depth)
        summary[_META_DIGEST] = _summary_digest(summary)
        empty = pa.record_batch([pa.array([], type=field.type) for field in _SCHEMA],
                                schema=_SCHEMA)
        self._writer.write_batch(empty, custom_metadata=summary)
        self._writer.close()
        self._sink.close()
        _fsync(self.tmp)
        os.replace(self.tmp, self.path)
        _fsync(self.path.parent, directory=True)

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._sink.close()
        self.tmp.unlink(missing_ok=True)


class _ChunkedBuild:
    """The replay's publish callback while a cache file is built: events wait in a buffer
    of one chunk, then go to the file as a record batch (`len` counts every event
    published so far: the depth recorder's positions)."""

    def __init__(self, writer: _CacheWriter) -> None:
        self.writer = writer
        self.key_ids: dict[tuple[str, str], int] = {}
        self.side_ids: dict[str, int] = {}
        self._buffer: list[Quote | Trade] = []
        #: The chunk being gathered, as columns (events are ~0.5 kB as objects, ~65 bytes
        #: as columns: a few thousand wait as objects, a chunk as columns).
        self._parts: list[BacktestData] = []
        self._gathered = 0  # rows in `_parts`
        self._written = 0
        self._rows = CHUNK_ROWS
        self._pack = min(_PACK_EVENTS, CHUNK_ROWS)

    def __len__(self) -> int:
        return self._written + self._gathered + len(self._buffer)

    def add(self, event: Quote | Trade) -> None:
        buffer = self._buffer
        buffer.append(event)
        if len(buffer) >= self._pack or len(buffer) + self._gathered >= self._rows:
            self._columns()

    def _columns(self) -> None:
        if self._buffer:
            self._parts.append(BacktestData.from_events(
                self._buffer, _NO_STATS, key_ids=self.key_ids, side_ids=self.side_ids))
            self._gathered += len(self._buffer)
            self._buffer = []
        if self._gathered >= self._rows:
            self.flush()

    def flush(self) -> None:
        """Write what is gathered as one chunk (at the end: the last, shorter one)."""
        if self._buffer:
            self._columns()
        if not self._parts:
            return
        self.writer.write_chunk(joined(self._parts))
        self._written += self._gathered
        self._parts, self._gathered = [], 0


_NO_STATS = ReplayStats([])
#: Building a cache, the replay's events wait as objects this many at a time.
_PACK_EVENTS = 8_192


def joined(parts: list[BacktestData]) -> BacktestData:
    """Runs of rows as one, in order (the tables and stats of the last)."""
    if len(parts) == 1:
        return parts[0]
    columns = {name: np.concatenate([getattr(part, name) for part in parts])
               for name in NUMERIC_COLUMNS}
    return dataclasses.replace(parts[-1], trade_id=pa.concat_arrays(
        [part.trade_id for part in parts]), **columns)


def _string_bytes(array: pa.Array) -> list[memoryview]:
    """The bytes of a string column: its offsets and the characters they span (bounded,
    so damaged offsets cannot make the digest read past the buffer)."""
    if not len(array):
        return []
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32, count=array.offset + len(array) + 1)
    offsets = offsets[array.offset:]
    start, end = int(offsets[0]), int(offsets[-1])
    size = 0 if data_buffer is None else data_buffer.size
    if not 0 <= start <= end <= size:
        raise ValueError("trade_id offsets out of range")
    chars = memoryview(data_buffer)[start:end] if data_buffer is not None else memoryview(b"")
    return [memoryview(offsets - start).cast("B"), chars]


def _depth_path(path: Path) -> Path:
    return path.with_name(path.stem + _DEPTH_SUFFIX)


class _DepthWriter:
    """The depth changes beside a cache file, written in batches as the replay emits them
    (the levels as list columns, lz4), atomically: a temporary file, renamed by `finish`,
    which returns the file's summary (kept in the events file's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self.batches: list[list[Any]] = []
        # lz4: levels repeat (the same prices, sizes that barely change): half the raw
        # float64 size, read back in ~13 ms for the shared 346 s files (zstd: a third
        # of the size but 32 ms, uncompressed twice the size, 1 ms).
        options = pa.ipc.IpcWriteOptions(compression=_DEPTH_COMPRESSION)
        self._sink = pa.OSFile(str(self.tmp), "wb")
        self._writer = pa.ipc.new_file(self._sink, _DEPTH_SCHEMA, options=options)

    def write(self, part: DepthColumns) -> None:
        if not len(part):
            return
        offsets = pa.array(part.offsets, type=pa.int32())
        item = _DEPTH_SCHEMA.field("price").type
        self._writer.write_batch(pa.record_batch([
            part.pos, part.ts, part.key, part.reset, part.n_bids,
            pa.ListArray.from_arrays(offsets, pa.array(part.price), type=item),
            pa.ListArray.from_arrays(offsets, pa.array(part.size), type=item),
        ], schema=_DEPTH_SCHEMA))
        self.batches.append([len(part), _depth_digest(part)])

    def finish(self, keys: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        self._writer.close()
        self._sink.close()
        _fsync(self.tmp)
        os.replace(self.tmp, self.path)
        return {"changes": sum(n for n, _ in self.batches),
                "keys": [list(key) for key in keys], "batches": self.batches}

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._sink.close()
        self.tmp.unlink(missing_ok=True)


def _depth_digest(part: DepthColumns) -> str:
    return dataclasses.replace(part, keys=()).digest()


class DepthFile:
    """The depth changes beside a cache file, opened: read a batch at a time
    (`batches`, what `RecordedDepth.load` takes). Opening checks every batch."""

    def __init__(self, path: Path, summary: dict[str, Any]) -> None:
        self.path = path
        self.keys = tuple((str(exchange), str(symbol)) for exchange, symbol in summary["keys"])
        self.summary = [(int(n), str(digest)) for n, digest in summary["batches"]]
        self.changes = int(summary["changes"])
        #: Each batch's `BatchSummary` (taken as `open` checks them): what a late
        #: window's seek looks at instead of reading the batches before it.
        self.summaries: list[BatchSummary] = []

    def __len__(self) -> int:
        return self.changes

    @classmethod
    def open(cls, path: Path, summary: dict[str, Any], events: int) -> DepthFile:
        """Raises if the file is missing or unusable (which has the whole cache rebuilt)."""
        depth = cls(path, summary)
        last_pos = 0
        count = 0
        for index, part in enumerate(depth.batches()):
            n, digest = depth.summary[index]
            if len(part) != n or _depth_digest(part) != digest:
                raise ValueError("depth checksum mismatch: the depth file's bytes were changed")
            part.check(events)
            if int(part.pos[0]) < last_pos:
                raise ValueError("depth: positions out of order")
            last_pos = int(part.pos[-1])
            count += 1
            depth.summaries.append(summarized(part))
        if count != len(depth.summary) or not count:
            raise ValueError(f"depth: {count} batches, the summary lists {len(depth.summary)}")
        return depth

    def batches(self) -> Iterator[DepthColumns]:
        return self.batches_from(0)

    def batches_from(self, first: int, skip: int = 0) -> Iterator[DepthColumns]:
        """The batches from the `first`'th on, its first `skip` changes left out; those
        before are not read (a late window seeks to its markets' last book resets:
        `RecordedDepth._seek`)."""
        with _open(self.path) as source:
            reader = pa.ipc.open_file(source, memory_pool=_READ_POOL)
            if not reader.schema.equals(_DEPTH_SCHEMA, check_metadata=False):
                raise ValueError(f"unexpected depth schema {reader.schema}")
            yield from skipped((self._part(reader.get_batch(index))
                                for index in range(first, reader.num_record_batches)), skip)

    def index_batches(self, first: int = 0) -> Iterator[ChangeIndex]:
        """Each batch's `pos`/`ts`/`key`/`reset` alone, from the `first`'th on: only those
        columns' buffers are read and decompressed, not the levels (~40 times their size)."""
        options = pa.ipc.IpcReadOptions(included_fields=list(range(len(ChangeIndex._fields))))
        with _open(self.path) as source:
            reader = pa.ipc.open_file(source, options=options, memory_pool=_READ_POOL)
            for index in range(first, reader.num_record_batches):
                batch = reader.get_batch(index)
                if batch.schema.names != list(ChangeIndex._fields):
                    raise ValueError(f"unexpected depth schema {batch.schema}")
                yield ChangeIndex(*(batch.column(column).to_numpy(zero_copy_only=False)
                                    for column in range(batch.num_columns)))

    def _part(self, batch: pa.RecordBatch) -> DepthColumns:
        price, size = batch.column(5), batch.column(6)
        if price.offset or size.offset or not price.offsets.equals(size.offsets):
            raise ValueError("depth: price and size levels disagree")

        def column(index: int) -> np.ndarray:
            return batch.column(index).to_numpy(zero_copy_only=False)

        return DepthColumns(keys=self.keys, pos=column(0), ts=column(1), key=column(2),
                            reset=column(3), n_bids=column(4),
                            offsets=price.offsets.to_numpy(), price=price.values.to_numpy(),
                            size=size.values.to_numpy())

    def in_memory(self) -> DepthColumns:
        return joined_depth(list(self.batches()), self.keys)

    def __getattr__(self, name: str) -> Any:
        """A whole column (`pos`, `price`, ...): from `in_memory()` (tests and tools)."""
        if name in DepthColumns.__dataclass_fields__ and name != "keys":
            return getattr(self.in_memory(), name)
        raise AttributeError(name)


def _check(name: str, values: list[Any], expected: type) -> None:
    found = set(map(type, values))
    if found - {expected}:
        raise UncacheableEvents(f"{name}: {sorted(t.__name__ for t in found)} values, "
                                f"the cache keeps only {expected.__name__}")


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- stats ---------------------------------------------------------------------------------


def _stats_to_json(stats: ReplayStats) -> dict[str, Any]:
    def file_json(file: FileStats) -> dict[str, Any]:
        return {"path": file.path, "lines": file.lines, "frames": file.frames,
                "meta_lines": file.meta_lines, "corrupt_lines": file.corrupt_lines,
                "damage": file.damage, "venues": sorted(file.venues),
                "counts": dict(file.counts), "dropped": dict(file.dropped)}

    return {"files": [file_json(file) for file in stats.files], "frames": stats.frames,
            "quotes": stats.quotes, "trades": stats.trades, "first_ts_ns": stats.first_ts_ns,
            "last_ts_ns": stats.last_ts_ns, "wall_seconds": stats.wall_seconds,
            "counts": dict(stats.counts), "dropped": dict(stats.dropped)}


def _stats_from_json(data: dict[str, Any]) -> ReplayStats:
    files = [FileStats(f["path"], f["lines"], f["frames"], f["meta_lines"], f["corrupt_lines"],
                       f["damage"], set(f["venues"]), Counter(f["counts"]),
                       Counter(f["dropped"])) for f in data["files"]]
    return ReplayStats(files, data["frames"], data["quotes"], data["trades"],
                       data["first_ts_ns"], data["last_ts_ns"], data["wall_seconds"],
                       Counter(data["counts"]), Counter(data["dropped"]))


# -- decoding and the cache ----------------------------------------------------------------


async def decode(specs: list[ReplaySpec], depth: bool = True) -> BacktestData:
    """Run the specs through the parse path once and keep what it published, as columns
    in memory (a cache that cannot be saved; `build` writes them chunk by chunk instead);
    with `depth`, the depth books' changes too (Binance books kept)."""
    events: list[Quote | Trade] = []
    recorder = DepthRecorder(events) if depth else None
    stats = await ReplayFeed(specs, events.append, events.append, speed=None, books=depth,
                             publish_depth=recorder).run()
    return BacktestData.from_events(events, stats,
                                    recorder.columns() if recorder is not None else None)


def _checked(events: Sized, writer: _DepthWriter) -> Callable[[DepthColumns], None]:
    """The depth writer's batches, checked as the parsers guarantee them first."""

    def write(part: DepthColumns) -> None:
        try:
            part.check(len(events))
        except ValueError as exc:  # a file failing these is taken for damage: not cached
            raise UncacheableEvents(str(exc)) from None
        writer.write(part)

    return write


async def build(specs: list[ReplaySpec], path: Path, depth: bool = True) -> CachedEvents:
    """Decode the specs into a cache file at `path`, a chunk at a time as the replay
    publishes (never all the events at once), and open it. Raises `UncacheableEvents`
    (nothing is left behind) or OSError (the file could not be written)."""
    with _CacheWriter(path, specs) as writer:
        chunks = _ChunkedBuild(writer)
        depth_writer = _DepthWriter(_depth_path(path)) if depth else None
        try:
            recorder = DepthRecorder(chunks, _checked(chunks, depth_writer)) \
                if depth_writer is not None else None
            stats = await ReplayFeed(specs, chunks.add, chunks.add, speed=None, books=depth,
                                     publish_depth=recorder).run()
            chunks.flush()
            summary = None
            if recorder is not None and depth_writer is not None:
                recorder.flush()
                if depth_writer.batches:  # first: the events never name a missing file
                    summary = depth_writer.finish(recorder.keys)
            writer.finish(stats, summary, tuple(chunks.key_ids), tuple(chunks.side_ids))
        finally:
            if depth_writer is not None:
                depth_writer.abandon()
    # Just written and fsync'd: not read back to check it.
    return CachedEvents.open(path, verify=False)


def cache_path(data_dir: Path, specs: list[ReplaySpec], depth: bool = True) -> Path:
    """Where the cache of these specs lives (the name changes when any input does, and
    with whether depth is kept)."""
    digest = hashlib.sha256()
    digest.update(f"cryptopipe backtest cache {CACHE_FORMAT_VERSION}\n".encode())
    if depth:
        digest.update(b"depth\n")
    digest.update(_decoder_fingerprint())
    for spec in specs:
        resolved = spec.path.resolve()
        stat = resolved.stat()
        digest.update(orjson.dumps([str(spec), str(resolved), stat.st_size, stat.st_mtime_ns]))
    return data_dir / "cache" / "backtest" / f"{digest.hexdigest()[:32]}{_SUFFIX}"


@cache
def _decoder_fingerprint() -> bytes:
    """Digest of the code that turns frames into events: changing it invalidates caches."""
    root = Path(adapters.__file__).parent
    parsing = [root / "venues.py", root / "common" / "parsing.py",
               *sorted(root.glob("*/parser.py")), *sorted(root.glob("*/schemas.py"))]
    files = [Path(adapters.recordings.replay.__file__), Path(daemon.core.model.__file__),
             *parsing]
    digest = hashlib.sha256(msgspec.__version__.encode())
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.digest()


async def load(specs: list[ReplaySpec], data_dir: Path, max_bytes: float = float("inf"),
               depth: bool = True) -> tuple[EventSource | None, CacheStatus]:
    """The specs' events from the cache, else decoded now (and saved for next time, the
    least recently used entries going beyond `max_bytes`): a `CachedEvents`, read a chunk
    at a time.

    (None, OFF) when the events cannot be cached exactly (logged): the caller replays the
    frames one by one instead. Never raises for a bad cache file: it is rebuilt. A cache
    that cannot be written (logged) is decoded into memory instead (UNSAVED): the run
    goes on, its memory then growing with the events (~65 bytes each).
    """
    path = cache_path(data_dir, specs, depth)
    # 8 days of the spot recording: peak RSS 316 MB with mimalloc, 304 MB with malloc.
    pa.set_memory_pool(_READ_POOL)
    tune_allocator()
    if path.is_file():
        started = time.perf_counter()
        try:
            data = CachedEvents.open(path)
        except Exception as exc:  # anything wrong with the file: rebuild it
            log.warning("backtest_cache_unusable", path=str(path), error=str(exc),
                        action="rebuilding")
        else:
            log.info("backtest_cache_hit", path=str(path), events=len(data),
                     chunks=len(data.batches), seconds=round(time.perf_counter() - started, 4))
            _touch(path)
            return data, CacheStatus.HIT
    started = time.perf_counter()
    try:
        built = await build(specs, path, depth)
    except UncacheableEvents as exc:
        log.warning("backtest_cache_unavailable", reason=str(exc), action="replaying frames")
        return None, CacheStatus.OFF
    except OSError as exc:
        log.warning("backtest_cache_not_saved", path=str(path), error=str(exc))
        try:
            return await decode(specs, depth), CacheStatus.UNSAVED
        except UncacheableEvents as exc:
            log.warning("backtest_cache_unavailable", reason=str(exc),
                        action="replaying frames")
            return None, CacheStatus.OFF
    log.info("backtest_cache_built", path=str(path), events=len(built),
             chunks=len(built.batches), seconds=round(time.perf_counter() - started, 3))
    _touch(path)
    prune(path.parent, max_bytes, keep=path)
    return built, CacheStatus.BUILT


def prune(directory: Path, max_bytes: float, keep: Path) -> list[Path]:
    """Remove the least recently used cache files until the rest fit in `max_bytes`
    (`keep`, the one just built, always stays). Returns what was removed."""
    entries = []
    for path in directory.glob(f"*{_SUFFIX}"):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed meanwhile (another run pruning)
        size = stat.st_size
        with contextlib.suppress(OSError):  # its depth file, if any, goes with it
            size += _depth_path(path).stat().st_size
        entries.append((stat.st_mtime_ns, size, path))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries):  # oldest use first
        if total <= max_bytes:
            break
        if path == keep:
            continue
        try:
            path.unlink()
            _depth_path(path).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("backtest_cache_not_pruned", path=str(path), error=str(exc))
            continue
        total -= size
        removed.append(path)
    if removed:
        log.info("backtest_cache_pruned", removed=len(removed), kept_bytes=total)
    return removed


def _touch(path: Path) -> None:
    """Mark a cache file as just used (its mtime orders the pruning). A read-only cache
    still serves; it just cannot keep its place.

    The time is set explicitly: the kernel stamps a write or a bare `utime` from its
    coarse clock (one tick, ~4 ms), so an entry built and another used within one tick
    would tie, and the pruning would drop the wrong one."""
    now = time.time_ns()
    with contextlib.suppress(OSError):
        os.utime(path, ns=(now, now))
