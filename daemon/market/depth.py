"""Depth books as the market data carries them, for the paper executor's book walk.

Parsers that keep order books (Binance `@depth` diffs + REST snapshot, Bybit
`orderbook.N`) hand every change of a synced book to their sink's depth route
(`daemon.core.routes.DepthCallback`); `DepthBooks` keeps those levels per (exchange,
symbol) and answers the paper executor's `DepthProvider` question: the best-first levels
of one side. A key with no book, or an empty side, answers None: the executor then fills
at the touch only.
"""

from __future__ import annotations

from daemon.core.routes import DepthCallback, Levels


class SideBooks:
    """Both sides of one key's book: price -> size."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}

    def apply(self, local_ts_ns: int, reset: bool, bids: Levels, asks: Levels) -> None:
        """One change (the `DepthCallback` contract; live, its time does not matter)."""
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
    """Depth books per (exchange, symbol), fed through `route` / `apply`."""

    def __init__(self) -> None:
        self._books: dict[tuple[str, str], SideBooks] = {}

    def book(self, exchange: str, symbol: str) -> SideBooks:
        key = (exchange, symbol)
        book = self._books.get(key)
        if book is None:
            book = self._books[key] = SideBooks()
        return book

    def route(self, exchange: str, symbol: str) -> DepthCallback:
        """The depth route of one key (what a sink's `depth_route` hands a parser)."""
        return self.book(exchange, symbol).apply

    def apply(self, exchange: str, symbol: str, local_ts_ns: int, reset: bool, bids: Levels,
              asks: Levels) -> None:
        """A change of any key (a `KeyedDepthCallback`)."""
        self.book(exchange, symbol).apply(local_ts_ns, reset, bids, asks)

    def levels(self, exchange: str, symbol: str, side: str) -> list[tuple[float, float]] | None:
        """Best-first (price, size) of "bid" or "ask"; None without a book (the paper
        executor's `DepthProvider`)."""
        book = self._books.get((exchange, symbol))
        return book.levels(side) if book is not None else None

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._books
