"""Rows of historical files -> (local time, frame) for the replay merge, and frames ->
Quote / Trade for its subscribers. Layouts and their sources: schemas.py.

What is local_ts_ns (the time events are merged and replayed by):
- Binance public data has no receive time. bookTicker: `event_time` (when Binance sent
  the update, the nearest to a receive time) and `transaction_time` is the exchange time,
  as the live parser does with the stream's E and T; trades and aggTrades carry one time
  (the match), used as both.
- Tardis.dev: `local_timestamp` (Tardis's arrival time) and `timestamp` the exchange time.

A frame is one row, except in `incremental_book_L2`, where the rows of one exchange
message (same local_timestamp, consecutive) are one frame, so a book change is published
once, when the whole message is applied, never half-applied. The book publishes a Quote
when its top (prices or sizes) changes; so does book_snapshot_25.

Bad input never raises: a row whose column count or time is wrong is a corrupt line of the
file (`FileStats.corrupt_lines`); a row whose values are wrong (a price that is not a
positive number, a side that is not bid/ask) is dropped and counted by reason
(`HistoricalParser.dropped`, summed into the file's and the replay's `dropped`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from adapters.common.parsing import L2Book
from adapters.historical.schemas import (
    AGG_TRADES,
    BINANCE,
    BOOK_L2,
    BOOK_TICKER,
    MICROS_FROM,
    QUOTES,
    SNAPSHOT_25,
    TARDIS,
    TRADES,
    HistoricalError,
    Layout,
    binance_layout,
    is_binance_csv,
    is_binance_name,
    is_tardis_csv,
    tardis_layout,
    tardis_market,
)
from daemon.core.model import Quote, Trade
from daemon.core.routes import MarketSink

_NS_PER_US = 1_000
_NS_PER_MS = 1_000_000
_TRUE = frozenset({b"true", b"True", b"TRUE"})
_FALSE = frozenset({b"false", b"False", b"FALSE"})


class LineCounts(Protocol):
    """What a reader counts of a file (replay's `FileStats`)."""

    lines: int
    corrupt_lines: int


def is_historical(path: Path, first_line: bytes) -> bool:
    """Whether a file is historical data rather than a recording: by its shape."""
    return (path.suffix == ".zip" or is_binance_name(path) or is_tardis_csv(first_line)
            or is_binance_csv(first_line))


def read_rows(path: Path, first_line: bytes, lines: Iterator[bytes], stats: LineCounts,
              symbol: str | None = None) -> tuple[Layout, Iterator[tuple[int, bytes]]]:
    """The file's layout and its (local_ts_ns, frame) in file order. `lines` starts with
    `first_line`; `symbol` (unified, from `@VENUE:SYMBOL`) is used only when a Binance
    file's name has none. HistoricalError when the file cannot be read as a whole."""
    if is_tardis_csv(first_line):
        layout = tardis_layout(path, first_line)
        next(lines, None)
        stats.lines += 1  # the header row
        first_row = next(lines, None)
        if first_row is None:
            return layout, iter(())
        layout = _with_market(path, layout, first_row)
        return layout, _tardis_rows(layout, itertools.chain((first_row,), lines), stats)
    if not is_binance_csv(first_line):
        raise HistoricalError(f"{path}: neither Binance public data nor a Tardis.dev CSV "
                              f"(first line {first_line[:60]!r})")
    layout = binance_layout(path, first_line, symbol)
    return layout, _binance_rows(layout, lines, stats)


def _us_or_ms_ns(value: int) -> int:
    """Binance times: milliseconds, or microseconds (spot from 2025), by magnitude."""
    return value * _NS_PER_US if value >= MICROS_FROM else value * _NS_PER_MS


def _timed_lines(layout: Layout, lines: Iterator[bytes], stats: LineCounts,
                 header: bool) -> Iterator[tuple[int, bytes]]:
    """(the layout's time column as read, the line) of every line of the layout's width;
    the others are counted as corrupt (blank lines aside, and with `header` a first line
    whose time is not a number: the header row)."""
    width, column = layout.width, layout.time_column
    for line in lines:
        stats.lines += 1
        fields = line.split(b",")
        if len(fields) != width:
            if line.strip():
                stats.corrupt_lines += 1
            continue
        try:
            ts = int(fields[column])
        except ValueError:
            if not header:
                stats.corrupt_lines += 1
            header = False
            continue
        header = False
        yield ts, line


def _binance_rows(layout: Layout, lines: Iterator[bytes], stats: LineCounts
                  ) -> Iterator[tuple[int, bytes]]:
    for ts, line in _timed_lines(layout, lines, stats, header=True):
        yield _us_or_ms_ns(ts), line


def _with_market(path: Path, layout: Layout, first_row: bytes) -> Layout:
    """The layout with the venue and symbol of the file's first row (a Tardis file is one
    exchange and symbol); HistoricalError when that market is refused. A malformed first
    row leaves the layout as it is (each row names its market anyway)."""
    fields = first_row.split(b",")
    if len(fields) != layout.width:
        return layout
    symbol = fields[layout.columns["symbol"]].decode(errors="replace")
    venue, unified = tardis_market(path, fields[layout.columns["exchange"]].decode(
        errors="replace"), symbol)
    return dataclasses.replace(layout, venue=venue, symbol=symbol, unified=unified)


def _tardis_rows(layout: Layout, lines: Iterator[bytes], stats: LineCounts
                 ) -> Iterator[tuple[int, bytes]]:
    """Rows in microseconds; an L2 file's rows of one message (one time) as one group."""
    group: list[bytes] = []
    group_ts = -1
    grouped = layout.kind == BOOK_L2
    for us, line in _timed_lines(layout, lines, stats, header=False):
        ts = us * _NS_PER_US
        if not grouped:
            yield ts, line
        elif ts == group_ts:
            group.append(line)
        else:
            if group:
                yield group_ts, b"\n".join(group)
            group, group_ts = [line], ts
    if group:
        yield group_ts, b"\n".join(group)


# --- rows -> Quote / Trade ---------------------------------------------------------------


def _price(value: bytes) -> float:
    price = float(value)
    if not 0.0 < price < math.inf:
        raise ValueError("price must be a positive number")
    return price


def _size(value: bytes) -> float:
    size = float(value)
    if not 0.0 <= size < math.inf:
        raise ValueError("size must be a non-negative number")
    return size


def _taker_side(buyer_is_maker: bytes) -> str:
    """Binance isBuyerMaker: the buyer was the maker, so the taker sold."""
    flag = buyer_is_maker.strip()
    if flag in _TRUE:
        return "sell"
    if flag in _FALSE:
        return "buy"
    raise ValueError("isBuyerMaker must be true or false")


class HistoricalParser:
    """The rows of one historical file in, Quote / Trade callbacks out; never raises on
    bad input (counts it in `dropped`). The same interface as the venue parsers."""

    def __init__(self, layout: Layout, sink: MarketSink) -> None:
        self.layout = layout
        self.sink = sink
        self.counts: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._markets: dict[tuple[bytes, bytes], tuple[str, str] | None] = {}
        self._books: dict[tuple[str, str], _Book] = {}
        self._tops: dict[tuple[str, str], tuple[float, ...]] = {}
        readers: dict[tuple[str, str], Callable[[bytes, int], Quote | Trade | None]] = {
            (BINANCE, BOOK_TICKER): self._binance_book_ticker,
            (BINANCE, TRADES): self._binance_trade,
            (BINANCE, AGG_TRADES): self._binance_agg_trade,
            (TARDIS, QUOTES): self._tardis_quote,
            (TARDIS, TRADES): self._tardis_trade,
            (TARDIS, BOOK_L2): self._tardis_book_l2,
            (TARDIS, SNAPSHOT_25): self._tardis_snapshot,
        }
        self._read = readers[(layout.provider, layout.kind)]

    def feed(self, frame: bytes, local_ts_ns: int) -> None:
        """Publish what the frame carries, or count why it is dropped."""
        try:
            event = self._read(frame, local_ts_ns)
        except (ValueError, IndexError, UnicodeDecodeError):
            self.dropped["malformed_row"] += 1
            return
        if event is None:
            return
        if type(event) is Quote:
            self.counts["quote"] += 1
            self.sink.quote_route(event.exchange, event.symbol)(event)
        else:
            self.counts["trade"] += 1
            self.sink.trade_route(event.exchange, event.symbol)(event)  # type: ignore[arg-type]

    def reset(self) -> None:
        """Forget the books (a new file section starts from its own snapshot)."""
        self._books.clear()
        self._tops.clear()

    # --- Binance ----------------------------------------------------------------------------

    def _binance_book_ticker(self, frame: bytes, local_ts_ns: int) -> Quote:
        f = frame.split(b",")
        layout = self.layout
        return Quote(layout.venue, layout.unified, _price(f[1]), _size(f[2]), _price(f[3]),
                     _size(f[4]), _us_or_ms_ns(int(f[5])), local_ts_ns, int(f[0]))

    def _binance_trade(self, frame: bytes, local_ts_ns: int) -> Trade:
        f = frame.split(b",")
        layout = self.layout
        return Trade(layout.venue, layout.unified, _price(f[1]), _size(f[2]),
                     _taker_side(f[5]), local_ts_ns, local_ts_ns, str(int(f[0])))

    def _binance_agg_trade(self, frame: bytes, local_ts_ns: int) -> Trade:
        f = frame.split(b",")
        layout = self.layout
        # "a" prefix, as the live aggTrade stream: an aggregate id is not a trade id.
        return Trade(layout.venue, layout.unified, _price(f[1]), _size(f[2]),
                     _taker_side(f[6]), local_ts_ns, local_ts_ns, f"a{int(f[0])}")

    # --- Tardis.dev -------------------------------------------------------------------------

    def _market(self, fields: list[bytes]) -> tuple[str, str] | None:
        """(venue, unified) of a row's exchange and symbol, None (counted) if unsupported."""
        columns = self.layout.columns
        key = (fields[columns["exchange"]], fields[columns["symbol"]])
        try:
            return self._markets[key]
        except KeyError:
            pass
        try:
            market: tuple[str, str] | None = tardis_market(
                Path(""), key[0].decode(), key[1].decode())
        except HistoricalError:
            market = None
        if len(self._markets) < 10_000:
            self._markets[key] = market
        return market

    def _tardis_quote(self, frame: bytes, local_ts_ns: int) -> Quote | None:
        f = frame.split(b",")
        c = self.layout.columns
        market = self._market(f)
        if market is None:
            self.dropped["unsupported_market"] += 1
            return None
        if not (f[c["bid_price"]] and f[c["ask_price"]]):
            self.dropped["one_sided_quote"] += 1
            return None
        return Quote(market[0], market[1], _price(f[c["bid_price"]]), _size(f[c["bid_amount"]]),
                     _price(f[c["ask_price"]]), _size(f[c["ask_amount"]]),
                     int(f[c["timestamp"]]) * _NS_PER_US, local_ts_ns)

    def _tardis_trade(self, frame: bytes, local_ts_ns: int) -> Trade | None:
        f = frame.split(b",")
        c = self.layout.columns
        market = self._market(f)
        if market is None:
            self.dropped["unsupported_market"] += 1
            return None
        side = f[c["side"]]
        if side not in (b"buy", b"sell"):
            self.dropped["unknown_side"] += 1
            return None
        return Trade(market[0], market[1], _price(f[c["price"]]), _size(f[c["amount"]]),
                     side.decode(), int(f[c["timestamp"]]) * _NS_PER_US, local_ts_ns,
                     f[c["id"]].decode())

    def _tardis_book_l2(self, frame: bytes, local_ts_ns: int) -> Quote | None:
        """One exchange message (its rows): apply it to the symbol's book, then the top."""
        c = self.layout.columns
        rows = [line.split(b",") for line in frame.split(b"\n")]
        market = self._market(rows[0])
        if market is None:
            self.dropped["unsupported_market"] += 1
            return None
        book = self._books.get(market) or self._books.setdefault(market, _Book())
        if not book.apply(rows, c):
            self.dropped["before_snapshot"] += 1
            return None
        top = book.book.top()
        exchange_ts_ns = int(rows[-1][c["timestamp"]]) * _NS_PER_US
        return self._top_quote(market, top, exchange_ts_ns, local_ts_ns)

    def _tardis_snapshot(self, frame: bytes, local_ts_ns: int) -> Quote | None:
        f = frame.split(b",")
        c = self.layout.columns
        market = self._market(f)
        if market is None:
            self.dropped["unsupported_market"] += 1
            return None
        bid, ask = f[c["bids[0].price"]], f[c["asks[0].price"]]
        top = None
        if bid and ask:
            top = (_price(bid), _size(f[c["bids[0].amount"]]), _price(ask),
                   _size(f[c["asks[0].amount"]]))
        return self._top_quote(market, top, int(f[c["timestamp"]]) * _NS_PER_US, local_ts_ns)

    def _top_quote(self, market: tuple[str, str], top: tuple[float, float, float, float] | None,
                   exchange_ts_ns: int, local_ts_ns: int) -> Quote | None:
        """A Quote of the book's top when it changed; None (counted) when it did not or a
        side is empty."""
        if top is None:
            self.dropped["one_sided_book"] += 1
            return None
        if self._tops.get(market) == top:
            self.counts["top_unchanged"] += 1
            return None
        self._tops[market] = top
        return Quote(market[0], market[1], top[0], top[1], top[2], top[3], exchange_ts_ns,
                     local_ts_ns)


class _Book:
    """One symbol's incremental_book_L2 book. Tardis: skip updates before the first
    snapshot; a snapshot after updates replaces the book."""

    __slots__ = ("book", "in_snapshot", "synced")

    def __init__(self) -> None:
        self.book = L2Book()
        self.synced = False
        self.in_snapshot = False

    def apply(self, rows: list[list[bytes]], c: dict[str, int]) -> bool:
        """Apply one message's rows; False when the book has no snapshot yet. Every
        value is checked before anything changes (a bad row drops the message whole)."""
        levels = [(row[c["is_snapshot"]] == b"true", row[c["side"]], _price(row[c["price"]]),
                   _size(row[c["amount"]])) for row in rows]
        if any(side not in (b"bid", b"ask") for _, side, _, _ in levels):
            raise ValueError("side must be bid or ask")
        for snapshot, side, price, size in levels:
            if snapshot and not self.in_snapshot:
                self.book.clear()
                self.synced = True
            self.in_snapshot = snapshot
            if not self.synced:
                continue
            if side == b"bid":
                self.book.apply_bids(((price, size),))
            else:
                self.book.apply_asks(((price, size),))
        return self.synced
