"""Depth books as the market data carries them, for the paper executor's book walk.

Parsers that keep order books (Binance `@depth` diffs + REST snapshot, Bybit
`orderbook.N`) hand every change of a synced book to their sink's depth route
(`daemon.core.routes.DepthCallback`); `DepthBooks` keeps those levels per (exchange,
symbol) and answers the paper executor's `DepthProvider` question: the best-first levels
of one side. A key with no book, or an empty side, answers None: the executor then fills
at the touch only.

With a `clock` (the paper executor's feed clock), a change received after the clock's
time waits, in order, until the clock reaches it: an order walks the book as it stood
when the order arrived, not as frames parsed ahead of the trading loop (a replay parses
ahead; live, changes are never from the future and apply at once).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial

from daemon.core.routes import DepthCallback, Levels

_Change = tuple[int, bool, list[tuple[float, float]], list[tuple[float, float]]]


class SideBooks:
    """Both sides of one key's book: price -> size."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}

    def apply(self, local_ts_ns: int, reset: bool, bids: Levels, asks: Levels) -> None:
        """One change (the `DepthCallback` contract)."""
        if reset:
            self.bids.clear()
            self.asks.clear()
        _update(self.bids, bids)
        _update(self.asks, asks)

    def levels(self, side: str) -> list[tuple[float, float]] | None:
        book = self.bids if side == "bid" else self.asks
        if not book:
            return None
        return sorted(book.items(), reverse=side == "bid")


def _update(book: dict[float, float], levels: Levels) -> None:
    for price, size in levels:
        if size > 0.0:
            book[price] = size
        else:
            book.pop(price, None)


class DepthBooks:
    """Depth books per (exchange, symbol), fed through `route` / `apply` (see the module
    docstring for `clock`)."""

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self.clock = clock
        self._books: dict[tuple[str, str], SideBooks] = {}
        #: Per key, changes received after the clock's time, oldest first.
        self._pending: dict[tuple[str, str], deque[_Change]] = {}

    def book(self, exchange: str, symbol: str) -> SideBooks:
        key = (exchange, symbol)
        book = self._books.get(key)
        if book is None:
            book = self._books[key] = SideBooks()
        return book

    def route(self, exchange: str, symbol: str) -> DepthCallback:
        """The depth route of one key (what a sink's `depth_route` hands a parser)."""
        if self.clock is None:
            return self.book(exchange, symbol).apply
        return partial(self.apply, exchange, symbol)

    def apply(self, exchange: str, symbol: str, local_ts_ns: int, reset: bool, bids: Levels,
              asks: Levels) -> None:
        """A change of any key (a `KeyedDepthCallback`): applied at once if its time has
        come and nothing waits before it, else queued (its levels copied)."""
        if self.clock is None:
            self.book(exchange, symbol).apply(local_ts_ns, reset, bids, asks)
            return
        key = (exchange, symbol)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = deque()
        now = self.clock()
        if pending:
            self._flush(key, pending, now)
        if not pending and local_ts_ns <= now:
            self.book(exchange, symbol).apply(local_ts_ns, reset, bids, asks)
        else:
            pending.append((local_ts_ns, reset, list(bids), list(asks)))

    def _flush(self, key: tuple[str, str], pending: deque[_Change], now: int) -> None:
        book = self.book(*key)
        while pending and pending[0][0] <= now:
            book.apply(*pending.popleft())

    def levels(self, exchange: str, symbol: str, side: str) -> list[tuple[float, float]] | None:
        """Best-first (price, size) of "bid" or "ask"; None without a book (the paper
        executor's `DepthProvider`)."""
        key = (exchange, symbol)
        pending = self._pending.get(key)
        if pending and self.clock is not None:
            self._flush(key, pending, self.clock())
        book = self._books.get(key)
        return book.levels(side) if book is not None else None

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._books
