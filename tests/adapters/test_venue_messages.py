"""Real venue messages by name (tests/fixtures/) through the product's parsers.

Each fixture is a frame cut verbatim from ../shared/data (tests/fixtures/README.md says
which line). It goes through the public registry, `adapters.venues.make_parser`, and what
comes out is compared field by field with the numbers read from the message itself, so
the test says what each wire field becomes: bid/ask and sizes, update id, venue time,
trade id, and the taker side (Binance `m`: the buyer is the maker, so the taker sold).

The recordings hold no subscription acks, pongs, raw (non-combined) Binance frames,
aggTrades or Bybit trades, so there are no fixtures of those kinds; test_parsers.py covers
them with hand-written or documented messages.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.venues import BinanceParser, BybitParser, detect_binance_market, make_parser
from daemon.core.model import Quote, Trade
from daemon.core.routes import Callbacks
from tests.fixtures import FIXTURES_DIR, load_fixture, load_fixture_lines

NS_PER_MS = 1_000_000
#: The receive time handed to `feed`; it must come out unchanged as `local_ts_ns`.
LOCAL_TS_NS = 1_723_161_254_087_891_268

SPOT, USDM, BYBIT = "binance_spot", "binance_usdm", "bybit_linear"
UNIFIED = {SPOT: "BTC/USDT", USDM: "BTC/USDT:USDT", BYBIT: "XRP/USDT:USDT"}


class Published:
    """The sink handed to the parser: keeps every Quote, Trade and resync request."""

    def __init__(self) -> None:
        self.quotes: list[Quote] = []
        self.trades: list[Trade] = []
        self.resyncs: list[str] = []

    def parser(self, venue: str, *, books: bool = False,
               symbols: dict[str, str] | None = None) -> BinanceParser | BybitParser:
        return make_parser(venue, Callbacks(on_quote=self.quotes.append,
                                            on_trade=self.trades.append),
                           symbols, on_resync=self.resyncs.append, books=books)


def message(name: str) -> dict[str, Any]:
    return orjson.loads(load_fixture(name))


def levels(pairs: list[list[str]]) -> dict[float, float]:
    """Absolute sizes by price, as the venue sent them (size 0 would delete a level)."""
    return {float(price): float(size) for price, size in pairs}


def apply(book: dict[float, float], pairs: list[list[str]]) -> None:
    for price, size in levels(pairs).items():
        if size == 0.0:
            book.pop(price, None)
        else:
            book[price] = size


def top(bids: dict[float, float], asks: dict[float, float]) -> tuple[float, ...]:
    bid, ask = max(bids), min(asks)
    return bid, bids[bid], ask, asks[ask]


# --- every fixture is a real frame, and every one is tested here -------------------------

BINANCE_FIXTURES = {  # name -> the market whose recording it was cut from
    "binance/ws_book_ticker.json": SPOT,
    "binance/ws_trade.json": SPOT,
    "binance/ws_trade_taker_buy.json": SPOT,
    "binance/ws_depth_update.json": SPOT,
    "binance/ws_depth_updates.jsonl": SPOT,
    "binance/rest_depth_snapshot.json": SPOT,
    "binance/ws_book_ticker_usdm.json": USDM,
    "binance/ws_trade_usdm.json": USDM,
    "binance/ws_trade_usdm_taker_sell.json": USDM,
    "binance/ws_depth_update_usdm.json": USDM,
    "binance/rest_depth_snapshot_usdm.json": USDM,
}
BYBIT_FIXTURES = ["bybit/ws_orderbook_snapshot.json", "bybit/ws_orderbook_delta.json",
                  "bybit/ws_orderbook_deltas.jsonl"]
RECORDING = {SPOT: "binance_spot_btcusdt_20240808.gz", USDM: "binance_usdm_btcusdt_20240808.gz",
             BYBIT: "bybit_linear_xrpusdt_ob500_20241201.jsonl"}


def frames_of(name: str) -> list[bytes]:
    return load_fixture_lines(name) if name.endswith(".jsonl") else [load_fixture(name)]


def test_the_fixture_folder_holds_exactly_the_tested_messages() -> None:
    """A fixture added without a test here (or a test of a removed one) fails."""
    on_disk = {str(path.relative_to(FIXTURES_DIR)) for folder in ("binance", "bybit")
               for path in (FIXTURES_DIR / folder).iterdir()}
    assert on_disk == set(BINANCE_FIXTURES) | set(BYBIT_FIXTURES)
    for name in on_disk:
        for frame in frames_of(name):
            assert isinstance(orjson.loads(frame), dict), name
            assert not frame.endswith((b"\n", b"\r")), name


@pytest.mark.parametrize("name", sorted(BINANCE_FIXTURES))
def test_binance_fixtures_are_told_apart_by_shape(name: str) -> None:
    for frame in frames_of(name):
        assert detect_binance_market(frame) == BINANCE_FIXTURES[name]


@pytest.mark.parametrize("name", [*sorted(BINANCE_FIXTURES), *BYBIT_FIXTURES])
def test_each_fixture_is_a_line_of_its_recording_byte_for_byte(
    shared_file: Callable[[str], Path], name: str
) -> None:
    """Provenance: nothing in a fixture was edited (skips without ../shared/data)."""
    venue = BINANCE_FIXTURES.get(name, BYBIT)
    path = shared_file(RECORDING[venue])
    if path.suffix == ".gz":
        with gzip.open(path) as lines:
            recorded = {line.rstrip(b"\r\n").split(b" ", 1)[1] for line in lines}
    else:
        recorded = {line.rstrip(b"\r\n") for line in path.read_bytes().splitlines()}
    for frame in frames_of(name):
        assert frame in recorded


# --- Binance: bookTicker and trade -------------------------------------------------------


@pytest.mark.parametrize(("name", "venue"), [("binance/ws_book_ticker.json", SPOT),
                                             ("binance/ws_book_ticker_usdm.json", USDM)])
def test_book_ticker_becomes_one_quote_with_the_message_numbers(name: str, venue: str) -> None:
    out = Published()
    parser = out.parser(venue)
    parser.feed(load_fixture(name), LOCAL_TS_NS)
    wire = message(name)
    data = wire["data"]
    assert wire["stream"] == "btcusdt@bookTicker"
    # Spot's bookTicker carries no time at all; USD-M's T is the matching-engine time.
    venue_ms = data["T"] if venue == USDM else 0
    assert ("T" in data) == (venue == USDM)
    assert out.quotes == [Quote(venue, UNIFIED[venue], float(data["b"]), float(data["B"]),
                                float(data["a"]), float(data["A"]), venue_ms * NS_PER_MS,
                                LOCAL_TS_NS, data["u"])]
    assert out.trades == []
    assert parser.counts == {"quote": 1}
    assert parser.dropped == {}


@pytest.mark.parametrize(("name", "venue", "taker"), [
    ("binance/ws_trade.json", SPOT, "sell"),
    ("binance/ws_trade_taker_buy.json", SPOT, "buy"),
    ("binance/ws_trade_usdm.json", USDM, "buy"),
    ("binance/ws_trade_usdm_taker_sell.json", USDM, "sell"),
])
def test_trade_becomes_one_trade_with_the_message_numbers(name: str, venue: str,
                                                          taker: str) -> None:
    out = Published()
    parser = out.parser(venue)
    parser.feed(load_fixture(name), LOCAL_TS_NS)
    data = message(name)["data"]
    assert data["e"] == "trade"
    # m: the buyer is the maker, so the taker sold; the fixture's name says which it is.
    assert data["m"] is (taker == "sell")
    assert out.trades == [Trade(venue, UNIFIED[venue], float(data["p"]), float(data["q"]),
                                taker, data["T"] * NS_PER_MS, LOCAL_TS_NS, str(data["t"]))]
    assert out.quotes == []
    assert parser.counts == {"trade": 1}
    assert parser.dropped == {}


def test_an_explicit_symbol_map_names_what_is_published() -> None:
    out = Published()
    parser = out.parser(SPOT, symbols={"BTCUSDT": "XBT/USDT"})
    parser.feed(load_fixture("binance/ws_book_ticker.json"), 1)
    parser.feed(load_fixture("binance/ws_trade.json"), 2)
    assert [q.symbol for q in out.quotes] == [t.symbol for t in out.trades] == ["XBT/USDT"]
    unmapped = out.parser(SPOT, symbols={"ETHUSDT": "ETH/USDT"})
    unmapped.feed(load_fixture("binance/ws_book_ticker.json"), 3)
    assert unmapped.dropped == {"unknown_symbol": 1} and len(out.quotes) == 1


# --- Binance: depth diffs and the REST snapshot ------------------------------------------


@pytest.mark.parametrize(("name", "venue"), [("binance/ws_depth_update.json", SPOT),
                                             ("binance/ws_depth_update_usdm.json", USDM)])
def test_depth_diff_is_skipped_without_books_and_buffered_with_them(name: str,
                                                                    venue: str) -> None:
    top_of_book = Published()
    skipping = top_of_book.parser(venue)
    skipping.feed(load_fixture(name), LOCAL_TS_NS)
    assert skipping.counts == {"depth_skipped": 1} and skipping.dropped == {}

    out = Published()
    parser = out.parser(venue, books=True)
    parser.feed(load_fixture(name), LOCAL_TS_NS)
    data = message(name)["data"]
    assert data["e"] == "depthUpdate" and data["U"] <= data["u"]
    assert ("pu" in data) == (venue == USDM)  # USD-M chains diffs by the previous u
    # No snapshot yet: the diff waits for one, and the parser asks for it.
    assert parser.counts == {"depth": 1} and parser.dropped == {}
    assert parser.depth_stats == {"buffered": 1, "snapshot_requests": 1}
    assert out.resyncs == ["BTCUSDT"] and not parser.in_sync("BTCUSDT")
    assert out.quotes == out.trades == top_of_book.quotes == top_of_book.trades == []


@pytest.mark.parametrize(("name", "venue"), [("binance/rest_depth_snapshot.json", SPOT),
                                             ("binance/rest_depth_snapshot_usdm.json", USDM)])
def test_rest_snapshot_loads_the_book_of_the_symbol_it_is_fetched_for(name: str,
                                                                      venue: str) -> None:
    out = Published()
    parser = out.parser(venue, books=True)
    assert isinstance(parser, BinanceParser)
    parser.feed_snapshot("BTCUSDT", load_fixture(name))  # as a live adapter hands it over
    body = message(name)
    assert ("T" in body) == (venue == USDM)
    book = parser.book("BTCUSDT")
    assert book is not None
    assert book.bids == levels(body["bids"]) and book.asks == levels(body["asks"])
    assert book.update_id == body["lastUpdateId"]
    assert parser.counts == {"snapshot": 1} and parser.dropped == {}
    assert out.quotes == out.trades == []
    # Loaded, but not in sync until a diff bridges it.
    assert not parser.in_sync("BTCUSDT")


def test_spot_depth_syncs_from_the_recorded_diffs_and_snapshot() -> None:
    """The first four spot diffs, with the REST snapshot where it arrived (after the
    third): two are older than the snapshot, the third straddles lastUpdateId + 1, the
    fourth follows it. The book is then the snapshot plus those two diffs."""
    diffs = load_fixture_lines("binance/ws_depth_updates.jsonl")
    snapshot = load_fixture("binance/rest_depth_snapshot.json")
    assert diffs[0] == load_fixture("binance/ws_depth_update.json")
    wire = [orjson.loads(frame)["data"] for frame in diffs]
    body = orjson.loads(snapshot)
    last_id = body["lastUpdateId"]
    # What the fixture is for (Binance's spot procedure), read off the messages.
    assert all(b["U"] == a["u"] + 1 for a, b in itertools.pairwise(wire))
    assert wire[0]["u"] < wire[1]["u"] < last_id + 1
    assert wire[2]["U"] <= last_id + 1 <= wire[2]["u"]

    out = Published()
    parser = BinanceParser(SPOT, Callbacks(out.quotes.append, out.trades.append),
                           on_resync=out.resyncs.append, depth_quotes=True)
    for index, frame in enumerate(diffs):
        if index == 3:
            parser.feed(snapshot, LOCAL_TS_NS)  # a REST body fed as the replay feeds it
        parser.feed(frame, LOCAL_TS_NS + index)
    assert parser.counts == {"depth": 4, "snapshot": 1} and parser.dropped == {}
    assert parser.depth_stats == {"buffered": 3, "stale": 2, "applied": 2,
                                  "snapshot_requests": 1}
    assert out.resyncs == ["BTCUSDT"] and parser.in_sync("BTCUSDT")

    bids, asks = levels(body["bids"]), levels(body["asks"])
    expected: list[Quote] = []
    for index in (2, 3):
        apply(bids, wire[index]["b"])
        apply(asks, wire[index]["a"])
        # depth_quotes: the book's top after each applied diff; spot diffs carry only E.
        expected.append(Quote(SPOT, UNIFIED[SPOT], *top(bids, asks),
                              wire[index]["E"] * NS_PER_MS, LOCAL_TS_NS + index,
                              wire[index]["u"]))
    book = parser.book("BTCUSDT")
    assert book is not None
    assert book.bids == bids and book.asks == asks and book.update_id == wire[3]["u"]
    assert out.quotes == expected and out.trades == []


# --- Bybit: order-book snapshot and deltas -----------------------------------------------

BYBIT_TOPIC = "orderbook.500.XRPUSDT"


def test_bybit_snapshot_becomes_the_book_and_one_quote_of_its_top() -> None:
    out = Published()
    parser = out.parser(BYBIT)
    parser.feed(load_fixture("bybit/ws_orderbook_snapshot.json"), LOCAL_TS_NS)
    wire = message("bybit/ws_orderbook_snapshot.json")
    data = wire["data"]
    assert (wire["topic"], wire["type"], data["s"]) == (BYBIT_TOPIC, "snapshot", "XRPUSDT")
    bids, asks = levels(data["b"]), levels(data["a"])
    assert len(bids) == len(asks) == 500
    # cts: the matching-engine time of the book; seq: the cross sequence.
    assert out.quotes == [Quote(BYBIT, UNIFIED[BYBIT], *top(bids, asks),
                                wire["cts"] * NS_PER_MS, LOCAL_TS_NS, data["seq"])]
    assert parser.counts == {"snapshot": 1, "quote": 1} and parser.dropped == {}
    book = parser.book(BYBIT_TOPIC)
    assert book is not None and book.bids == bids and book.asks == asks
    assert book.update_id == data["u"] and parser.in_sync(BYBIT_TOPIC)


def test_bybit_delta_without_its_snapshot_is_dropped_and_asks_for_one() -> None:
    out = Published()
    parser = out.parser(BYBIT)
    parser.feed(load_fixture("bybit/ws_orderbook_delta.json"), LOCAL_TS_NS)
    assert message("bybit/ws_orderbook_delta.json")["type"] == "delta"
    assert parser.dropped == {"delta_before_snapshot": 1}
    assert out.resyncs == [BYBIT_TOPIC] and out.quotes == []


def test_bybit_snapshot_then_deltas_publish_each_new_top() -> None:
    """The snapshot and the ten deltas recorded after it: each delta's u is the previous
    one plus one; a Quote is published exactly when the best levels change, carrying the
    numbers of an independent rebuild and the time and sequence of that delta."""
    snapshot = load_fixture("bybit/ws_orderbook_snapshot.json")
    deltas = load_fixture_lines("bybit/ws_orderbook_deltas.jsonl")
    assert deltas[0] == load_fixture("bybit/ws_orderbook_delta.json")
    wire = [orjson.loads(frame) for frame in (snapshot, *deltas)]
    assert [m["type"] for m in wire] == ["snapshot"] + ["delta"] * len(deltas)
    assert [m["data"]["u"] for m in wire] == list(range(wire[0]["data"]["u"],
                                                        wire[0]["data"]["u"] + len(wire)))

    out = Published()
    parser = out.parser(BYBIT)
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    expected: list[Quote] = []
    for index, (frame, sent) in enumerate(zip((snapshot, *deltas), wire, strict=True)):
        parser.feed(frame, LOCAL_TS_NS + index)
        apply(bids, sent["data"]["b"])
        apply(asks, sent["data"]["a"])
        best = top(bids, asks)
        if not expected or best != (expected[-1].bid, expected[-1].bid_qty,
                                    expected[-1].ask, expected[-1].ask_qty):
            expected.append(Quote(BYBIT, UNIFIED[BYBIT], *best, sent["cts"] * NS_PER_MS,
                                  LOCAL_TS_NS + index, sent["data"]["seq"]))
        assert out.quotes == expected
    assert 1 < len(expected) <= len(wire)
    assert parser.counts == {"snapshot": 1, "delta": len(deltas), "quote": len(expected)}
    assert parser.dropped == {} and out.resyncs == [] and out.trades == []
    book = parser.book(BYBIT_TOPIC)
    assert book is not None and book.bids == bids and book.asks == asks
    assert book.update_id == wire[-1]["data"]["u"]
