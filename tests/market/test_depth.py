"""Depth books from the parsers' depth routes: the same levels as the parsers' own books."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapters.recordings.replay import SAMPLE_FILES, ReplayFeed, ReplaySpec
from daemon.market.depth import DepthBooks


def ignore(_event: object) -> None:
    pass


async def replay_depth(specs: list[ReplaySpec]) -> tuple[DepthBooks, ReplayFeed]:
    books = DepthBooks()
    feed = ReplayFeed(specs, ignore, ignore, books=True, publish_depth=books.apply)
    await feed.run()
    return books, feed


async def test_bybit_orderbook_500_reaches_the_depth_books_level_for_level(
    shared_file: Callable[[str], Path],
) -> None:
    path = shared_file("bybit_linear_xrpusdt_ob500_20241201.jsonl")
    books, feed = await replay_depth([ReplaySpec(path)])
    parser = next(iter(feed.parsers.values()))
    book = parser.book("orderbook.500.XRPUSDT")
    assert book is not None and len(book) > 400
    assert books.levels("bybit_linear", "XRP/USDT:USDT", "ask") == book.levels("ask")
    assert books.levels("bybit_linear", "XRP/USDT:USDT", "bid") == book.levels("bid")


async def test_binance_depth_diffs_reach_the_depth_books_once_synced_and_relabelled() -> None:
    spot = SAMPLE_FILES[0]
    books, feed = await replay_depth([ReplaySpec(spot, "paper_spot", "XBT/USDT")])
    parser = next(iter(feed.parsers.values()))
    assert parser.in_sync("BTCUSDT")
    book = parser.book("BTCUSDT")
    assert book is not None
    assert books.levels("paper_spot", "XBT/USDT", "bid") == book.levels("bid")
    assert books.levels("paper_spot", "XBT/USDT", "ask") == book.levels("ask")
    assert ("binance_spot", "BTC/USDT") not in books


def test_a_reset_replaces_the_book_and_size_zero_removes_a_level() -> None:
    books = DepthBooks()
    route = books.route("v", "S")
    route(1, True, [(99.0, 1.0), (98.0, 2.0)], [(101.0, 1.0)])
    route(2, False, [(99.0, 0.0), (97.0, 3.0)], [(102.0, 0.5)])
    assert books.levels("v", "S", "bid") == [(98.0, 2.0), (97.0, 3.0)]
    assert books.levels("v", "S", "ask") == [(101.0, 1.0), (102.0, 0.5)]
    route(3, True, (), ())  # sync lost
    assert books.levels("v", "S", "bid") is None and books.levels("v", "T", "ask") is None
