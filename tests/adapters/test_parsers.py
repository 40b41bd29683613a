"""Venue frame parsers against the real recordings in ../shared/data, plus malformed input.

Tests that need a few messages take them by name from tests/fixtures/ (cut from the same
recordings, in the repository, so they never skip); whole-file tests read ../shared/data.

Malformed cases are real frames with one thing broken (a venue message is never invented
when a real one exists); the expected counts are the README's and what the files hold.
"""

from __future__ import annotations

import bisect
import gzip
import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.recordings.replay import SAMPLE_FILES
from adapters.venues import (
    BinanceParser,
    BybitParser,
    L2Book,
    derive_unified_symbol,
    detect_binance_market,
    make_parser,
)
from daemon.core.model import Quote, Trade
from daemon.core.routes import Callbacks
from tests.fixtures import load_fixture, load_fixture_lines

SPOT = "binance_spot_btcusdt_20240808.gz"
USDM = "binance_usdm_btcusdt_20240808.gz"
BYBIT = "bybit_linear_xrpusdt_ob500_20241201.jsonl"
BYBIT_TOPIC = "orderbook.500.XRPUSDT"

SharedFile = Callable[[str], Path]


def read_binance(path: Path) -> list[tuple[int, bytes]]:
    with gzip.open(path) as lines:
        return [(int(ts), frame) for ts, frame in (line.rstrip(b"\n").split(b" ", 1)
                                                   for line in lines)]


def read_bybit(path: Path) -> list[bytes]:
    return [line.rstrip(b"\n") for line in path.read_bytes().splitlines() if line.strip()]


class Collected:
    """Callbacks that keep what a parser publishes."""

    def __init__(self) -> None:
        self.quotes: list[Quote] = []
        self.trades: list[Trade] = []
        self.resyncs: list[str] = []

    def binance(self, venue: str = "binance_spot", **kwargs: Any) -> BinanceParser:
        return BinanceParser(venue, Callbacks(self.quotes.append, self.trades.append),
                             on_resync=self.resyncs.append, **kwargs)

    def bybit(self, venue: str = "bybit_linear", **kwargs: Any) -> BybitParser:
        return BybitParser(venue, Callbacks(self.quotes.append, self.trades.append),
                           on_resync=self.resyncs.append, **kwargs)


@pytest.fixture(scope="module")
def spot_frames(shared_file: SharedFile) -> list[tuple[int, bytes]]:
    return read_binance(shared_file(SPOT))


@pytest.fixture(scope="module")
def usdm_frames(shared_file: SharedFile) -> list[tuple[int, bytes]]:
    return read_binance(shared_file(USDM))


@pytest.fixture(scope="module")
def bybit_frames(shared_file: SharedFile) -> list[bytes]:
    return read_bybit(shared_file(BYBIT))


def sample_frames(index: int) -> list[tuple[int, bytes]]:
    """Frames of the shipped sample (works without ../shared): 0 spot, 1 USD-M."""
    return read_binance(SAMPLE_FILES[index])


def first(frames: list[tuple[int, bytes]], marker: bytes) -> dict[str, Any]:
    """The first real frame whose start contains `marker`, decoded."""
    return next(orjson.loads(frame) for _, frame in frames if marker in frame[:48])


# --- whole recordings ----------------------------------------------------------------------

# (file, venue, quotes, trades, depth diffs, applied, stale before snapshot, buffered)
BINANCE_FILES = [
    (SPOT, "binance_spot", 28_040, 9_757, 3_451, 3_449, 2, 3),
    (USDM, "binance_usdm", 66_089, 21_313, 6_551, 6_547, 4, 6),
]


@pytest.mark.parametrize(("name", "venue", "quotes", "trades", "diffs", "applied", "stale",
                          "buffered"), BINANCE_FILES)
def test_every_binance_frame_parses_with_the_readme_counts(
    shared_file: SharedFile, name: str, venue: str, quotes: int, trades: int, diffs: int,
    applied: int, stale: int, buffered: int,
) -> None:
    out = Collected()
    parser = out.binance(venue, books=True)
    for ts, frame in read_binance(shared_file(name)):
        parser.feed(frame, ts)
    assert parser.counts == {"quote": quotes, "trade": trades, "depth": diffs, "snapshot": 1}
    # The recordings are clean: no backwards or repeated bookTicker u, no depth gap.
    assert parser.dropped == {}
    assert len(out.quotes) == quotes and len(out.trades) == trades
    # Diffs that came before the REST snapshot were buffered; those older than it dropped;
    # the straddling one bridged; every later one applied in sequence.
    assert parser.depth_stats == {"applied": applied, "stale": stale, "buffered": buffered,
                                  "snapshot_requests": 1}
    assert applied + stale == diffs
    assert parser.in_sync("BTCUSDT")
    assert out.resyncs == ["BTCUSDT"]  # the first diff asked for the snapshot, nothing else
    symbol = "BTC/USDT" if venue == "binance_spot" else "BTC/USDT:USDT"
    assert {(q.exchange, q.symbol) for q in out.quotes} == {(venue, symbol)}
    assert all(q.bid < q.ask for q in out.quotes)
    seqs = [q.seq for q in out.quotes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.parametrize(("name", "venue", "quotes", "trades", "diffs"),
                         [row[:5] for row in BINANCE_FILES])
def test_top_of_book_path_skips_depth_without_decoding(
    shared_file: SharedFile, name: str, venue: str, quotes: int, trades: int, diffs: int
) -> None:
    parser = Collected().binance(venue)  # books=False: the default
    for ts, frame in read_binance(shared_file(name)):
        parser.feed(frame, ts)
    assert parser.counts == {"quote": quotes, "trade": trades, "depth_skipped": diffs,
                             "snapshot": 1}
    assert parser.dropped == {}
    assert parser.book("BTCUSDT") is None


def test_spot_and_usdm_differ_in_shape_and_timestamps(
    spot_frames: list[tuple[int, bytes]], usdm_frames: list[tuple[int, bytes]]
) -> None:
    spot, usdm = Collected(), Collected()
    spot_parser, usdm_parser = spot.binance("binance_spot"), usdm.binance("binance_usdm")
    for ts, frame in spot_frames[:200]:
        spot_parser.feed(frame, ts)
    for ts, frame in usdm_frames[:200]:
        usdm_parser.feed(frame, ts)
    # Spot bookTicker has no event time; USD-M's carries T (matching-engine time).
    assert all(q.exchange_ts_ns == 0 for q in spot.quotes)
    ticker = first(usdm_frames, b"@bookTicker")["data"]
    assert usdm.quotes[0].exchange_ts_ns == ticker["T"] * 1_000_000
    assert usdm.quotes[0].seq == ticker["u"]
    # Every frame kind tells the market apart.
    for frames, market in ((spot_frames, "binance_spot"), (usdm_frames, "binance_usdm")):
        for _, frame in frames[:100]:
            assert detect_binance_market(frame) == market


def test_binance_trade_fields(spot_frames: list[tuple[int, bytes]]) -> None:
    out = Collected()
    parser = out.binance("binance_spot")
    raw = [orjson.loads(frame)["data"] for _, frame in spot_frames if b"@trade" in frame[:40]]
    for ts, frame in spot_frames:
        parser.feed(frame, ts)
    assert len(raw) == len(out.trades)
    for wire, trade in zip(raw[:500], out.trades[:500], strict=True):
        assert trade.price == float(wire["p"]) and trade.qty == float(wire["q"])
        # m: the buyer is the maker, so the taker sold.
        assert trade.side == ("sell" if wire["m"] else "buy")
        assert trade.exchange_ts_ns == wire["T"] * 1_000_000
        assert trade.trade_id == str(wire["t"])
    assert {t.side for t in out.trades} == {"buy", "sell"}


def rebuild_binance_book(frames: list[tuple[int, bytes]], usdm: bool
                         ) -> tuple[dict[float, float], dict[float, float], int]:
    """Independent rebuild: snapshot + every diff from the one straddling it, in order."""
    snapshot = next(orjson.loads(f) for _, f in frames if f.startswith(b'{"lastUpdateId"'))
    diffs = [orjson.loads(f)["data"] for _, f in frames if b"@depth" in f[:40]]
    last_id = snapshot["lastUpdateId"]
    bids = {float(p): float(q) for p, q in snapshot["bids"]}
    asks = {float(p): float(q) for p, q in snapshot["asks"]}
    target = last_id if usdm else last_id + 1
    start = next(i for i, d in enumerate(diffs) if d["U"] <= target <= d["u"])
    previous = None
    for diff in diffs[start:]:
        if previous is not None:
            assert (diff["pu"] == previous) if usdm else (diff["U"] == previous + 1)
        for side, levels in ((bids, diff["b"]), (asks, diff["a"])):
            for price, size in levels:
                if float(size) == 0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = float(size)
        previous = diff["u"]
    return bids, asks, previous


@pytest.mark.parametrize(("name", "venue"), [(SPOT, "binance_spot"), (USDM, "binance_usdm")])
def test_depth_book_equals_an_independent_rebuild(
    shared_file: SharedFile, name: str, venue: str
) -> None:
    frames = read_binance(shared_file(name))
    parser = Collected().binance(venue, books=True)
    for ts, frame in frames:
        parser.feed(frame, ts)
    bids, asks, last_u = rebuild_binance_book(frames, usdm=venue == "binance_usdm")
    book = parser.book("BTCUSDT")
    assert book is not None
    assert book.bids == bids and book.asks == asks
    assert book.update_id == last_u
    assert book.best_bid == (max(bids), bids[max(bids)])
    assert book.best_ask == (min(asks), asks[min(asks)])
    assert book.levels("bid", 3) == sorted(bids.items(), reverse=True)[:3]
    assert book.levels("ask") == sorted(asks.items())


@pytest.mark.parametrize(("name", "venue"), [(SPOT, "binance_spot"), (USDM, "binance_usdm")])
def test_depth_top_agrees_with_book_ticker_at_the_same_update_id(
    shared_file: SharedFile, name: str, venue: str
) -> None:
    """After each diff (final id u), the book's top equals the last bookTicker with
    update id <= u: both streams share one update-id sequence and bookTicker fires on
    every top change. Compared by update id, not by arrival, because the two streams
    arrive independently. Holds for every diff in both recordings."""
    tickers, tops = Collected(), Collected()
    ticker_parser = tickers.binance(venue)
    depth_parser = tops.binance(venue, depth_quotes=True)
    for ts, frame in read_binance(shared_file(name)):
        if b"@bookTicker" in frame[:40]:
            ticker_parser.feed(frame, ts)
        else:
            depth_parser.feed(frame, ts)
    ticker_ids = [q.seq for q in tickers.quotes]
    compared = 0
    for top in tops.quotes:
        index = bisect.bisect_right(ticker_ids, top.seq) - 1
        assert index >= 0
        ticker = tickers.quotes[index]
        assert (top.bid, top.bid_qty, top.ask, top.ask_qty) == (
            ticker.bid, ticker.bid_qty, ticker.ask, ticker.ask_qty)
        compared += 1
    assert compared == depth_parser.depth_stats["applied"] > 3000


def test_depth_gap_marks_the_book_out_of_sync_and_asks_for_a_snapshot(
    spot_frames: list[tuple[int, bytes]],
) -> None:
    out = Collected()
    parser = out.binance("binance_spot", books=True)
    depth_seen = 0
    for ts, frame in spot_frames:
        if b"@depth" in frame[:40]:
            depth_seen += 1
            if depth_seen == 100:  # lose one diff after the book is in sync
                continue
        parser.feed(frame, ts)
        if depth_seen == 101 and b"@depth" in frame[:40]:
            assert not parser.in_sync("BTCUSDT")
    assert parser.dropped["depth_gap"] == 1
    assert out.resyncs == ["BTCUSDT", "BTCUSDT"]  # initial snapshot, then the gap
    assert not parser.in_sync("BTCUSDT")  # no second snapshot in the file
    # The top-of-book stream is unaffected by the depth gap.
    assert parser.counts["quote"] == 28_040


@pytest.mark.parametrize(("name", "venue"), [(SPOT, "binance_spot"), (USDM, "binance_usdm")])
def test_repeated_depth_diffs_are_dropped_without_a_resync(
    shared_file: SharedFile, name: str, venue: str
) -> None:
    """Issue 13 item 9: every 20th diff arrives twice; a diff whose u is not past the
    last applied id is dropped and counted, the book stays in sync and equals the clean
    rebuild (today: a depth_gap and a REST resync per repeat)."""
    frames = read_binance(shared_file(name))
    out = Collected()
    parser = out.binance(venue, books=True)
    depth_seen = repeats = 0
    synced = False
    for ts, frame in frames:
        parser.feed(frame, ts)
        synced = synced or parser.in_sync("BTCUSDT")
        if b"@depth" in frame[:40]:
            depth_seen += 1
            if depth_seen % 20 == 0 and synced:
                parser.feed(frame, ts)
                repeats += 1
    assert repeats > 100
    assert parser.dropped == {"duplicate_seq": repeats}
    assert out.resyncs == ["BTCUSDT"]  # the initial snapshot only
    bids, asks, last_u = rebuild_binance_book(frames, usdm=venue == "binance_usdm")
    book = parser.book("BTCUSDT")
    assert parser.in_sync("BTCUSDT") and book is not None
    assert book.bids == bids and book.asks == asks and book.update_id == last_u


def test_a_fresh_snapshot_resyncs_after_a_gap(usdm_frames: list[tuple[int, bytes]]) -> None:
    parser = Collected().binance("binance_usdm", books=True)
    diffs = [(ts, f) for ts, f in usdm_frames if b"@depth" in f[:40]]
    snapshot_frame = next(f for _, f in usdm_frames if f.startswith(b'{"lastUpdateId"'))
    for ts, frame in diffs[:30]:
        parser.feed(frame, ts)
    parser.feed(snapshot_frame, 0)
    assert parser.in_sync("BTCUSDT")
    for ts, frame in diffs[31:60]:  # diffs[30] lost
        parser.feed(frame, ts)
    assert not parser.in_sync("BTCUSDT") and parser.dropped["depth_gap"] == 1
    # A "refetched" snapshot: the real one relabelled as taken right after diff 40.
    refetched = orjson.loads(snapshot_frame)
    refetched["lastUpdateId"] = orjson.loads(diffs[40][1])["data"]["u"]
    parser.feed_snapshot("BTCUSDT", orjson.dumps(refetched))
    assert parser.in_sync("BTCUSDT")
    assert parser.book("BTCUSDT").update_id == orjson.loads(diffs[59][1])["data"]["u"]


def test_snapshot_older_than_every_buffered_diff_is_refused() -> None:
    out = Collected()
    parser = out.binance("binance_spot", books=True)
    snapshot = orjson.loads(load_fixture("binance/rest_depth_snapshot.json"))
    snapshot["lastUpdateId"] -= 1_000  # as if fetched well before the stream started
    for frame in load_fixture_lines("binance/ws_depth_updates.jsonl")[:3]:  # before it
        parser.feed(frame, 0)
    parser.feed(orjson.dumps(snapshot), 0)
    assert parser.dropped["snapshot_too_old"] == 1
    assert not parser.in_sync("BTCUSDT")
    assert out.resyncs == ["BTCUSDT", "BTCUSDT"]


def test_walk_averages_through_the_levels() -> None:
    snapshot = orjson.loads(load_fixture("binance/rest_depth_snapshot.json"))
    book = L2Book()
    book.load([(float(p), float(q)) for p, q in snapshot["bids"]],
              [(float(p), float(q)) for p, q in snapshot["asks"]], snapshot["lastUpdateId"])
    asks = sorted((float(p), float(q)) for p, q in snapshot["asks"])
    qty = asks[0][1] + asks[1][1] / 2
    expected = (asks[0][0] * asks[0][1] + asks[1][0] * asks[1][1] / 2) / qty
    assert book.walk("buy", qty) == pytest.approx(expected, rel=1e-12)
    assert book.walk("buy", asks[0][1] / 2) == pytest.approx(asks[0][0], rel=1e-15)
    bids = sorted(((float(p), float(q)) for p, q in snapshot["bids"]), reverse=True)
    assert book.walk("sell", bids[0][1]) == pytest.approx(bids[0][0])
    assert book.walk("buy", sum(q for _, q in asks) * 2) is None  # deeper than the book
    assert book.walk("buy", 0.0) is None


# --- Bybit ---------------------------------------------------------------------------------


#: The snapshot and the ten deltas after it: the first 11 lines of the Bybit recording.
BYBIT_HEAD = [load_fixture("bybit/ws_orderbook_snapshot.json"),
              *load_fixture_lines("bybit/ws_orderbook_deltas.jsonl")]


def rebuild_bybit_top(frames: list[bytes]) -> tuple[float, float, float, float]:
    """Independent rebuild: plain dicts of decimal strings, size "0" deletes."""
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    for frame in frames:
        message = orjson.loads(frame)
        if message["type"] == "snapshot":
            bids.clear()
            asks.clear()
        for side, levels in ((bids, message["data"]["b"]), (asks, message["data"]["a"])):
            for price, size in levels:
                if float(size) == 0:
                    side.pop(price, None)
                else:
                    side[price] = size
    best_bid = max(bids, key=float)
    best_ask = min(asks, key=float)
    return float(best_bid), float(bids[best_bid]), float(best_ask), float(asks[best_ask])


def test_bybit_update_id_moves_by_one_per_message(bybit_frames: list[bytes]) -> None:
    """What the real file shows and the parser's gap check relies on."""
    ids = [orjson.loads(frame)["data"]["u"] for frame in bybit_frames]
    assert [b - a for a, b in itertools.pairwise(ids)] == [1] * (len(ids) - 1)
    kinds = [orjson.loads(frame)["type"] for frame in bybit_frames]
    assert kinds == ["snapshot"] + ["delta"] * (len(ids) - 1)


def test_bybit_book_top_equals_an_independent_rebuild(bybit_frames: list[bytes]) -> None:
    out = Collected()
    parser = out.bybit("bybit_linear")
    for frame in bybit_frames:
        parser.feed(frame, 0)
    assert parser.counts == {"snapshot": 1, "delta": 49, "quote": 48}
    assert parser.dropped == {}
    assert out.resyncs == []
    last = out.quotes[-1]
    assert (last.bid, last.bid_qty, last.ask, last.ask_qty) == rebuild_bybit_top(bybit_frames)
    assert last.exchange == "bybit_linear" and last.symbol == "XRP/USDT:USDT"
    final = orjson.loads(bybit_frames[-1])
    assert last.exchange_ts_ns == final["cts"] * 1_000_000
    assert last.seq == final["data"]["seq"]
    # A quote only when the top changed: consecutive quotes always differ.
    tops = [(q.bid, q.bid_qty, q.ask, q.ask_qty) for q in out.quotes]
    assert all(a != b for a, b in itertools.pairwise(tops))
    book = parser.book(BYBIT_TOPIC)
    assert book is not None and len(book.bids) == 500 and len(book.asks) == 500


def test_bybit_top_after_every_message_matches_the_rebuild(bybit_frames: list[bytes]) -> None:
    out = Collected()
    parser = out.bybit()
    for count, frame in enumerate(bybit_frames, 1):
        parser.feed(frame, 0)
        top = out.quotes[-1]
        assert (top.bid, top.bid_qty, top.ask, top.ask_qty) == rebuild_bybit_top(
            bybit_frames[:count])


def with_u(frame: bytes, update_id: int) -> bytes:
    message = orjson.loads(frame)
    message["data"]["u"] = update_id
    return orjson.dumps(message)


def snapshot_as_of(frames: list[bytes]) -> bytes:
    """A Bybit snapshot message of the book after `frames` (unbroken), with their last u."""
    reference = Collected().bybit()
    for frame in frames:
        reference.feed(frame, 0)
    book = reference.book(BYBIT_TOPIC)
    assert book is not None and reference.in_sync(BYBIT_TOPIC)
    message = orjson.loads(frames[0])
    message["data"].update(b=[[str(p), str(q)] for p, q in book.levels("bid")],
                           a=[[str(p), str(q)] for p, q in book.levels("ask")],
                           u=book.update_id)
    return orjson.dumps(message)


def test_bybit_gap_resyncs_until_the_next_snapshot(bybit_frames: list[bytes]) -> None:
    out = Collected()
    parser = out.bybit()
    for frame in bybit_frames[:10] + bybit_frames[11:20]:  # message 10 lost
        parser.feed(frame, 0)
    assert parser.dropped == {"depth_gap": 1, "delta_before_snapshot": 8}
    assert out.resyncs == [BYBIT_TOPIC]  # once per episode, not per dropped delta
    assert not parser.in_sync(BYBIT_TOPIC)
    # Resubscribing brings a snapshot of the book as of message 19 (rebuilt from the
    # unbroken messages; the snapshot of message 0 would leave the book crossed once
    # message 20 is applied to it, which now resyncs again).
    parser.feed(snapshot_as_of(bybit_frames[:20]), 0)
    parser.feed(bybit_frames[20], 0)
    assert parser.in_sync(BYBIT_TOPIC) and parser.counts["delta"] == 9 + 1


def test_bybit_delta_before_any_snapshot_is_dropped() -> None:
    out = Collected()
    parser = out.bybit()
    for frame in BYBIT_HEAD[1:4]:
        parser.feed(frame, 0)
    assert parser.dropped == {"delta_before_snapshot": 3}
    assert out.resyncs == [BYBIT_TOPIC] and out.quotes == []


def test_bybit_restart_snapshot_with_u1_resets_the_book() -> None:
    out = Collected()
    parser = out.bybit()
    for frame in BYBIT_HEAD[:5]:
        parser.feed(frame, 0)
    parser.feed(with_u(BYBIT_HEAD[0], 1), 0)  # service restart: snapshot with u=1
    parser.feed(with_u(BYBIT_HEAD[1], 2), 0)
    assert parser.dropped == {} and parser.in_sync(BYBIT_TOPIC)
    assert parser.book(BYBIT_TOPIC).update_id == 2
    assert parser.counts["snapshot"] == 2
    # A replayed old delta is dropped without a resync: the book is still right.
    parser.feed(with_u(BYBIT_HEAD[2], 2), 0)
    assert parser.dropped == {"backwards_seq": 1} and out.resyncs == []


# Real Bybit v5 messages as documented (bybit-exchange.github.io/docs/v5/websocket), for
# the kinds ../shared/data has no recording of.
BYBIT_TRADE = (b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":'
               b'[{"T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50",'
               b'"L":"PlusTick","i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false}]}')
BYBIT_SUBSCRIBED = (b'{"success":true,"ret_msg":"","conn_id":"2324d924-aa4d-45b0-a858-'
                    b'7b8be29ab52b","req_id":"10001","op":"subscribe"}')
BYBIT_PONG = (b'{"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-'
              b'ff7f55e0b16a","op":"ping"}')


def test_bybit_trades_and_control_replies() -> None:
    out = Collected()
    parser = out.bybit("bybit_spot")
    for frame in (BYBIT_SUBSCRIBED, BYBIT_PONG, BYBIT_TRADE):
        parser.feed(frame, 7)
    assert parser.counts == {"control": 2, "trade": 1}
    assert parser.dropped == {}  # an ack or a pong is not a drop
    (trade,) = out.trades
    assert trade == Trade("bybit_spot", "BTC/USDT", 16578.5, 0.001, "buy",
                          1672304486865 * 1_000_000, 7, "20f43950-d8dd-5b31-9112-a178eb6023af")


def mutate_bybit_trade(change: Callable[[dict[str, Any]], None]) -> bytes:
    message = orjson.loads(BYBIT_TRADE)
    change(message)
    return orjson.dumps(message)


@pytest.mark.parametrize(("frame", "reason"), [
    (BYBIT_SUBSCRIBED.replace(b"true", b"false"), "control_error"),
    (BYBIT_TRADE.replace(b"publicTrade", b"tickers"), "unknown_topic"),
    (mutate_bybit_trade(lambda m: m["data"][0].update(S="Hold")), "bad_value"),
    (mutate_bybit_trade(lambda m: m["data"][0].update(p="abc")), "bad_value"),
    (mutate_bybit_trade(lambda m: m["data"][0].update(v="-1")), "bad_value"),
    (mutate_bybit_trade(lambda m: m["data"][0].pop("T")), "missing_key"),
    (mutate_bybit_trade(lambda m: m.update(data={"T": 1})), "bad_value"),
    (BYBIT_TRADE[:-20], "malformed_json"),
    (b"\x9f\x00garbage", "binary"),
    (b'"pong"', "not_an_object"),
    (b'{"hello":1}', "unknown_message"),
])
def test_bybit_malformed_frames_are_counted_by_reason(frame: bytes, reason: str) -> None:
    out = Collected()
    parser = out.bybit()
    parser.feed(frame, 0)
    assert parser.dropped == {reason: 1}
    assert out.trades == [] and out.quotes == []


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("b", "abc", "bad_value"),
    ("b", [["1.9", "NaN"]], "bad_value"),
    ("a", [["-1.9", "5"]], "bad_value"),
    ("a", [["1.9", "-5"]], "bad_value"),
    ("u", "x", "bad_value"),
    ("s", None, "bad_value"),
])
def test_bybit_bad_book_values_are_dropped(
    field: str, value: Any, reason: str
) -> None:
    parser = Collected().bybit()
    message = orjson.loads(BYBIT_HEAD[0])
    message["data"][field] = value
    parser.feed(orjson.dumps(message), 0)
    assert parser.dropped == {reason: 1}


def test_bybit_crossed_delta_resets_the_book_and_resyncs() -> None:
    """Issue 13 item 8: counting the drop is not enough. A delta that would cross the
    book is not kept: the book is reset and a fresh snapshot asked for at once; deltas
    until that snapshot are dropped, and the snapshot restores publishing."""
    out = Collected()
    parser = out.bybit()
    parser.feed(BYBIT_HEAD[0], 0)
    delta = orjson.loads(BYBIT_HEAD[1])
    delta["data"]["b"] = [["2.5", "100"]]  # a bid above every ask
    parser.feed(orjson.dumps(delta), 0)
    assert parser.dropped == {"crossed": 1} and len(out.quotes) == 1
    assert out.resyncs == [BYBIT_TOPIC] and not parser.in_sync(BYBIT_TOPIC)
    assert parser.book(BYBIT_TOPIC) is not None and len(parser.book(BYBIT_TOPIC)) == 0
    for frame in BYBIT_HEAD[2:5]:  # in flight before the resubscribe answers
        parser.feed(frame, 0)
    assert out.resyncs == [BYBIT_TOPIC]  # one request per episode
    assert len(out.quotes) == 1
    parser.feed(BYBIT_HEAD[0], 0)  # the fresh snapshot
    assert parser.in_sync(BYBIT_TOPIC) and len(out.quotes) == 2
    reference = Collected().bybit()
    reference.feed(BYBIT_HEAD[0], 0)
    assert parser.book(BYBIT_TOPIC).top() == reference.book(BYBIT_TOPIC).top()


# --- Binance malformed input ---------------------------------------------------------------


def mutated(frame: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> bytes:
    copy = orjson.loads(orjson.dumps(frame))
    change(copy)
    return orjson.dumps(copy)


@pytest.fixture(scope="module")
def spot_ticker() -> dict[str, Any]:
    return orjson.loads(load_fixture("binance/ws_book_ticker.json"))


@pytest.fixture(scope="module")
def spot_trade() -> dict[str, Any]:
    return orjson.loads(load_fixture("binance/ws_trade.json"))


def set_data(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda frame: frame["data"].update(fields)


def drop_data(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda frame: frame["data"].pop(key)


TICKER_CASES = [
    (set_data(b="abc"), "bad_value"),
    (set_data(b="NaN"), "bad_value"),
    (set_data(a="inf"), "bad_value"),
    (set_data(b="-61837.63"), "bad_value"),
    (set_data(a="0"), "bad_value"),
    (set_data(B="-1"), "bad_value"),
    (set_data(b=None), "bad_value"),
    (set_data(u="next"), "bad_value"),
    (set_data(b="61837.64"), "crossed"),  # bid == ask: locked counts as crossed
    (set_data(b="70000"), "crossed"),
    (drop_data("a"), "missing_key"),
    (drop_data("u"), "missing_key"),
    (lambda f: f.update(data=[1, 2]), "bad_value"),
    (lambda f: f.pop("data"), "missing_key"),
    (lambda f: f.update(stream="btcusdt@kline_1m"), "unknown_stream"),
    (lambda f: f.update(stream=7), "bad_value"),
]


@pytest.mark.parametrize(("change", "reason"), TICKER_CASES)
def test_binance_malformed_book_ticker_is_counted_by_reason(
    spot_ticker: dict[str, Any], change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    out = Collected()
    parser = out.binance("binance_spot")
    parser.feed(mutated(spot_ticker, change), 0)
    assert parser.dropped == {reason: 1}
    assert out.quotes == []


@pytest.mark.parametrize(("change", "reason"), [
    (set_data(p="abc"), "bad_value"),
    (set_data(q="0"), "bad_value"),
    (set_data(q="-0.02"), "bad_value"),
    (set_data(m="yes"), "bad_value"),
    (set_data(T=-5), "bad_value"),
    (drop_data("T"), "missing_key"),
])
def test_binance_malformed_trade_is_counted_by_reason(
    spot_trade: dict[str, Any], change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    out = Collected()
    parser = out.binance("binance_spot")
    parser.feed(mutated(spot_trade, change), 0)
    assert parser.dropped == {reason: 1}
    assert out.trades == []


def test_binance_not_json_at_all_is_counted_by_reason(spot_ticker: dict[str, Any]) -> None:
    parser = Collected().binance()
    whole = orjson.dumps(spot_ticker)
    for frame in (whole[:40], whole[:-1], b"", b"   ", "not json", b"[1, 2]", b"42",
                  b"\xff\xfe\x00\x01", bytearray(b"\x80abc"), "\udcff{}"):
        parser.feed(frame, 0)
    assert parser.dropped == {"malformed_json": 5, "not_an_object": 2, "binary": 3}


def test_binance_sequence_checks(spot_frames: list[tuple[int, bytes]]) -> None:
    tickers = [f for _, f in spot_frames if b"@bookTicker" in f[:40]][:3]
    out = Collected()
    parser = out.binance()
    parser.feed(tickers[1], 0)
    parser.feed(tickers[0], 0)  # u goes backwards
    parser.feed(tickers[1], 0)  # the same u again
    parser.feed(tickers[2], 0)
    assert parser.dropped == {"backwards_seq": 1, "duplicate_seq": 1}
    assert [q.seq for q in out.quotes] == [orjson.loads(tickers[i])["data"]["u"] for i in (1, 2)]
    parser.reset()  # a new connection: sequences start over
    parser.feed(tickers[0], 0)
    assert len(out.quotes) == 3


def test_binance_control_replies_and_errors() -> None:
    parser = Collected().binance()
    parser.feed(b'{"result":null,"id":1}', 0)
    parser.feed(b'{"result":["btcusdt@bookTicker"],"id":3}', 0)
    parser.feed(b'{"error":{"code":2,"msg":"Invalid request"},"id":2}', 0)
    assert parser.counts == {"control": 2}
    assert parser.dropped == {"control_error": 1}


def test_binance_raw_endpoint_frames(
    spot_frames: list[tuple[int, bytes]], usdm_frames: list[tuple[int, bytes]]
) -> None:
    """The raw /ws endpoint sends the `data` object alone (spot bookTicker: no "e")."""
    for frames, venue in ((spot_frames, "binance_spot"), (usdm_frames, "binance_usdm")):
        combined, raw = Collected(), Collected()
        combined_parser = combined.binance(venue, books=True)
        raw_parser = raw.binance(venue, books=True)
        for ts, frame in frames[:3000]:
            combined_parser.feed(frame, ts)
            message = orjson.loads(frame)
            raw_parser.feed(orjson.dumps(message.get("data", message)), ts)
        assert raw_parser.counts == combined_parser.counts
        assert raw.quotes == combined.quotes and raw.trades == combined.trades
        assert raw_parser.book("BTCUSDT").bids == combined_parser.book("BTCUSDT").bids


def test_key_order_and_text_frames_do_not_matter(spot_ticker: dict[str, Any]) -> None:
    out = Collected()
    parser = out.binance()
    reordered = {"data": dict(reversed(list(spot_ticker["data"].items()))),
                 "stream": spot_ticker["stream"]}
    parser.feed(orjson.dumps(reordered), 1)
    parser.feed(orjson.dumps(spot_ticker).decode(), 2)  # a str frame
    assert parser.dropped == {"duplicate_seq": 1}
    assert len(out.quotes) == 1 and out.quotes[0].bid == float(spot_ticker["data"]["b"])


def test_symbols_unknown_to_an_explicit_mapping_are_dropped(spot_ticker: dict[str, Any]) -> None:
    out = Collected()
    parser = BinanceParser("binance_spot", Callbacks(out.quotes.append, out.trades.append),
                           symbols={"ETHUSDT": "ETH/USDT"})
    parser.feed(orjson.dumps(spot_ticker), 0)
    assert parser.dropped == {"unknown_symbol": 1}
    mapped = BinanceParser("binance_spot", Callbacks(out.quotes.append, out.trades.append),
                           symbols={"BTCUSDT": "XBT/USDT"})
    mapped.feed(orjson.dumps(spot_ticker), 0)
    assert out.quotes[-1].symbol == "XBT/USDT"


@pytest.mark.parametrize(("venue", "venue_symbol", "unified"), [
    ("binance_spot", "BTCUSDT", "BTC/USDT"),
    ("binance_usdm", "BTCUSDT", "BTC/USDT:USDT"),
    ("binance_spot", "ETHBTC", "ETH/BTC"),
    ("binance_spot", "BTCFDUSD", "BTC/FDUSD"),
    ("binance_spot", "BTCTUSD", "BTC/TUSD"),
    ("binance_spot", "BNBEUR", "BNB/EUR"),
    ("binance_spot", "USDTTRY", "USDT/TRY"),
    ("binance_usdm", "1000PEPEUSDT", "1000PEPE/USDT:USDT"),
    ("bybit_linear", "XRPUSDT", "XRP/USDT:USDT"),
    ("bybit_linear", "BTCPERP", "BTC/USDC:USDC"),
    ("bybit_spot", "ETHUSDC", "ETH/USDC"),
    ("binance_spot", "USDT", None),
    ("binance_spot", "BTCXYZ", None),
    ("binance_usdm", "BTCUSDT_240927", None),
])
def test_unified_symbol_derivation(venue: str, venue_symbol: str, unified: str | None) -> None:
    assert derive_unified_symbol(venue, venue_symbol) == unified


def test_make_parser_picks_the_venue_parser() -> None:
    assert isinstance(make_parser("binance_usdm", Callbacks()), BinanceParser)
    assert isinstance(make_parser("bybit_spot", Callbacks()), BybitParser)
    with pytest.raises(ValueError, match="kraken"):
        make_parser("kraken", Callbacks())


# --- never raise: generated garbage ------------------------------------------------------

json_values = st.recursive(
    # orjson serialises 64-bit integers only
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["NaN", "inf", "-1", "0", "1e400", "abc", ""]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
wire_keys = st.sampled_from(["u", "s", "b", "B", "a", "A", "E", "T", "U", "pu", "p", "q", "m",
                             "t", "e", "lastUpdateId", "bids", "asks", "stream", "data",
                             "topic", "type", "ts", "cts", "S", "v", "i", "seq", "op"])


def _corpus() -> list[bytes]:
    """Real frames of every kind and venue to mutate (the shipped sample + Bybit docs)."""
    frames: list[bytes] = []
    for index in (0, 1):
        seen: set[bytes] = set()
        for _, frame in sample_frames(index):
            kind = frame[:40].split(b"@")[-1][:5] if b"@" in frame[:40] else frame[:8]
            if kind not in seen:
                seen.add(kind)
                frames.append(frame)
    return [*frames, BYBIT_TRADE, BYBIT_SUBSCRIBED]


CORPUS = _corpus()


def parsers() -> Iterator[BinanceParser | BybitParser]:
    sink = Collected()
    yield sink.binance("binance_spot", books=True)
    yield sink.binance("binance_usdm", books=True, depth_quotes=True)
    yield sink.binance("binance_usdm")
    yield sink.bybit("bybit_linear")
    yield sink.bybit("bybit_spot")


def feed_everywhere(frame: bytes | str) -> None:
    for parser in parsers():
        before = sum(parser.counts.values()) + sum(parser.dropped.values())
        parser.feed(frame, 1)
        # Every frame is accounted for: parsed as something or dropped for a reason.
        assert sum(parser.counts.values()) + sum(parser.dropped.values()) > before


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(frame: bytes) -> None:
    feed_everywhere(frame)


@FUZZ
@given(st.text(max_size=200))
def test_random_text_never_raises(frame: str) -> None:
    feed_everywhere(frame)


@FUZZ
@given(json_values, st.sampled_from(["btcusdt@bookTicker", "btcusdt@trade",
                                     "btcusdt@depth@100ms", "btcusdt@aggTrade", "x@y"]))
def test_random_json_in_a_stream_envelope_never_raises(data: Any, stream: str) -> None:
    feed_everywhere(orjson.dumps({"stream": stream, "data": data}))
    feed_everywhere(orjson.dumps(data))
    feed_everywhere(orjson.dumps({"topic": "orderbook.1.BTCUSDT", "type": "delta",
                                  "ts": 1, "data": data}))


@FUZZ
@given(st.sampled_from(CORPUS), wire_keys, json_values, st.booleans())
def test_mutated_real_frames_never_raise(frame: bytes, key: str, value: Any,
                                         delete: bool) -> None:
    message = orjson.loads(frame)
    targets = [message]
    if isinstance(message.get("data"), dict):
        targets.append(message["data"])
    elif isinstance(message.get("data"), list) and message["data"]:
        targets.append(message["data"][0])
    for target in targets:
        if delete:
            target.pop(key, None)
        else:
            target[key] = value
    feed_everywhere(orjson.dumps(message))


@FUZZ
@given(st.sampled_from(CORPUS), st.integers(min_value=0, max_value=400),
       st.binary(min_size=1, max_size=4))
def test_truncated_and_spliced_real_frames_never_raise(frame: bytes, cut: int,
                                                       splice: bytes) -> None:
    feed_everywhere(frame[:cut])
    feed_everywhere(frame[:cut] + splice + frame[cut + len(splice):])


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "-0", "0E0"])
def test_non_finite_and_zero_prices_in_depth_are_dropped(value: str) -> None:
    out = Collected()
    parser = out.binance("binance_spot", books=True)
    depth = orjson.loads(load_fixture("binance/ws_depth_update.json"))
    depth["data"]["b"][0][0] = value
    parser.feed(orjson.dumps(depth), 0)
    assert parser.dropped == {"bad_value": 1}
    assert math.isfinite(sum(parser.counts.values()))


def test_set_symbols_stops_a_dropped_symbol_and_renames_a_kept_one(
    spot_ticker: dict[str, Any],
) -> None:
    """A symbol taken out of the set is not published any more, even though the parser
    remembers a route for it; the symbols that stay keep their sequence state."""
    out = Collected()
    parser = BinanceParser("binance_spot", Callbacks(out.quotes.append, out.trades.append),
                           symbols={"BTCUSDT": "BTC/USDT"})
    frame = orjson.dumps(spot_ticker)
    parser.feed(frame, 0)
    assert [q.symbol for q in out.quotes] == ["BTC/USDT"]

    parser.set_symbols({"ETHUSDT": "ETH/USDT"})
    newer = {**spot_ticker, "data": {**spot_ticker["data"], "u": spot_ticker["data"]["u"] + 1}}
    parser.feed(orjson.dumps(newer), 1)
    assert parser.dropped == {"unknown_symbol": 1}
    assert len(out.quotes) == 1

    parser.set_symbols({"BTCUSDT": "XBT/USDT"})
    parser.feed(orjson.dumps(newer), 2)
    assert [q.symbol for q in out.quotes] == ["BTC/USDT", "XBT/USDT"]


def test_bybit_set_symbols_stops_a_dropped_symbol() -> None:
    out = Collected()
    parser = BybitParser("bybit_spot", Callbacks(out.quotes.append, out.trades.append),
                         symbols={"BTCUSDT": "BTC/USDT"})
    trade = {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1,
             "data": [{"T": 1, "s": "BTCUSDT", "S": "Buy", "v": "0.1", "p": "60000",
                       "i": "t-1", "BT": False}]}
    parser.feed(orjson.dumps(trade), 0)
    parser.set_symbols({})
    parser.feed(orjson.dumps(trade), 1)
    assert [t.symbol for t in out.trades] == ["BTC/USDT"]
    assert parser.dropped == {"unknown_symbol": 1}
