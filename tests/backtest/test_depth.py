"""Backtest taker fills walk the recorded book (issue 14 item 5).

A test strategy sends one IOC buy 25 bps through the ask, several times the touch's size,
into a backtest of the shared Bybit `orderbook.500` recording; its fills must be the
recorded ask levels, best first, at their recorded sizes, up to the limit. The book the
fills are checked against is built here from the file with the Bybit parser alone: every
frame received up to the order's arrival.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import strategies
from adapters.bybit.parser import BybitParser
from adapters.recordings.replay import SAMPLE_FILES, ReplaySpec
from config.settings import load_settings
from daemon.backtest.depth import DepthRecorder, RecordedDepth, UndeclaredBook
from daemon.backtest.engine import Backtest
from daemon.core.model import Decision, Fill, OrderIntent, OrderType, Quote, Side
from daemon.core.routes import Callbacks
from daemon.core.vocabulary import Action
from strategies.base import StrategyBase

VENUE = "bybit_linear"
SYMBOL = "XRP/USDT:USDT"
OB500 = "bybit_linear_xrpusdt_ob500_20241201.jsonl"
QTY = 40_000.0  # XRP: ~5x the touch's size in this file
THROUGH = 25e-4  # the arbitrage unwind's 25 bps
AT_NS = 1_733_011_201_000_000_000  # 2024-12-01 00:00:01 UTC, a second into the file


class OneTaker(StrategyBase):
    """On its first quote received at or after `at_ns`, one IOC of `qty` priced THROUGH
    beyond the touch (a buy above the ask, a sell below the bid)."""

    name = "one-taker"

    def __init__(self, venue: str = VENUE, symbol: str = SYMBOL, side: Side = Side.BUY,
                 qty: float = QTY, at_ns: int = AT_NS) -> None:
        self.market_keys = frozenset({(venue, symbol)})
        self.venue, self.symbol, self.side, self.qty, self.at_ns = venue, symbol, side, qty, at_ns
        self.limit = 0.0
        self.fills: list[Fill] = []

    def on_quote(self, quote: Quote) -> Decision | None:
        if self.limit or quote.local_ts_ns < self.at_ns:
            return None
        buying = self.side is Side.BUY
        self.limit = round(quote.ask * (1 + THROUGH) if buying else quote.bid * (1 - THROUGH),
                           2 if quote.bid > 100 else 4)
        intent = OrderIntent(self.venue, self.symbol, self.side, OrderType.IOC, self.qty,
                             self.limit, strategy=self.name)
        return Decision(self.name, quote.local_ts_ns, Action.UNWIND, "walk the book",
                        intents=[intent])

    def on_fill(self, fill: Fill) -> Decision | None:
        self.fills.append(fill)
        return None


def settings_for(data_dir: Path, **overrides: Any) -> Any:
    return load_settings({
        "data_dir": data_dir,
        "venues": {VENUE: {"enabled": True, "taker_fee_bps": 5.5,
                           "balances": {"USDT": 1_000_000.0}},
                   "binance_spot": {"balances": {"BTC": 20.0, "USDT": 1_000_000.0}}},
        "risk": {"max_order_notional": 1_000_000.0},
        **overrides,
    }, env_file=None)


async def run_one_taker(data_dir: Path, path: Path, monkeypatch: pytest.MonkeyPatch,
                        taker: OneTaker | None = None, **overrides: Any,
                        ) -> tuple[OneTaker, Any]:
    taker = taker or OneTaker()
    monkeypatch.setitem(strategies.STRATEGIES, taker.name, lambda settings: taker)
    engine = Backtest(settings_for(data_dir, **overrides), taker.name, [ReplaySpec(path)],
                      "depth-walk")
    result = await engine.run()
    return taker, result


def recorded_asks(path: Path, until_ns: int) -> list[tuple[float, float]]:
    """The ask levels of the recorded book after every frame received by `until_ns`."""
    parser = BybitParser(VENUE, Callbacks())
    for line in path.read_bytes().splitlines():
        received_ns = orjson.loads(line)["ts"] * 1_000_000
        if received_ns > until_ns:
            break
        parser.feed(line, received_ns)
    book = parser.book("orderbook.500.XRPUSDT")
    assert book is not None
    return book.levels("ask")


def assert_walked_the_recorded_asks(taker: OneTaker, path: Path) -> None:
    """The taker's fills are the recorded ask levels at its arrival, best first, each at
    its recorded size (the last one in part), up to its limit."""
    assert taker.fills
    arrival = taker.fills[0].ts_ns
    expected, left = [], QTY
    for price, size in recorded_asks(path, arrival):
        if price > taker.limit or left <= 0:
            break
        expected.append((price, min(size, left)))
        left -= min(size, left)
    assert len(expected) >= 3  # several levels: the touch alone was not enough
    assert [(f.price, f.qty) for f in taker.fills] == [
        (price, pytest.approx(qty)) for price, qty in expected]
    assert all(f.liquidity == "taker" for f in taker.fills)
    assert {f.ts_ns for f in taker.fills} == {arrival}


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "frames"])
async def test_a_taker_larger_than_the_touch_fills_across_the_recorded_levels(
    shared_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    cache: bool,
) -> None:
    path = shared_file(OB500)
    taker, result = await run_one_taker(tmp_path, path, monkeypatch,
                                        backtest={"cache": cache})
    assert result.fills == len(taker.fills)
    assert_walked_the_recorded_asks(taker, path)


async def test_without_depth_the_same_taker_takes_only_the_touch(
    shared_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = shared_file(OB500)
    taker, _ = await run_one_taker(tmp_path, path, monkeypatch,
                                   execution={"walk_depth": False})
    assert len(taker.fills) == 1
    touch_price, touch_size = recorded_asks(path, taker.fills[0].ts_ns)[0]
    assert (taker.fills[0].price, taker.fills[0].qty) == (touch_price, touch_size)


async def test_the_depth_beside_the_cache_is_read_back_and_a_damaged_one_rebuilt(
    shared_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = shared_file(OB500)
    first, built = await run_one_taker(tmp_path / "a", path, monkeypatch)
    assert built.cache == "built"
    cache_dir = tmp_path / "a" / "cache" / "backtest"
    depth_files = list(cache_dir.glob("*.depth"))
    assert len(depth_files) == 1
    shutil.copytree(cache_dir, tmp_path / "b" / "cache" / "backtest")
    second, hit = await run_one_taker(tmp_path / "b", path, monkeypatch)
    assert hit.cache == "hit"
    assert [(f.price, f.qty) for f in second.fills] == [(f.price, f.qty) for f in first.fills]
    # Overwritten bytes in the depth file: the cache is rebuilt, the fills are the same.
    damaged = tmp_path / "c" / "cache" / "backtest"
    shutil.copytree(cache_dir, damaged)
    depth_file = next(damaged.glob("*.depth"))
    raw = bytearray(depth_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    depth_file.write_bytes(bytes(raw))
    third, rebuilt = await run_one_taker(tmp_path / "c", path, monkeypatch)
    assert rebuilt.cache == "built"
    assert [(f.price, f.qty) for f in third.fills] == [(f.price, f.qty) for f in first.fills]


async def test_action_on_a_replay_walks_the_same_recorded_levels_as_the_backtest(
    shared_file: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--mode action` on paper keeps the replay's depth books on the bus and the paper
    executor walks them, on its own clock: the same fills as the backtest's."""
    from daemon.app import App
    from daemon.cli import build_parser
    from daemon.modes.action import run_action
    from daemon.run import _supervise

    path = shared_file(OB500)
    backtested, _ = await run_one_taker(tmp_path / "backtest", path, monkeypatch)
    taker = OneTaker()
    monkeypatch.setitem(strategies.STRATEGIES, "inventory-mm", lambda settings: taker)
    args = build_parser().parse_args(["--mode", "action", "--strategy", "inventory-mm",
                                      "--feed", f"replay:{path}", "--speed", "max",
                                      "--run-id", "action-walk"])
    settings = settings_for(tmp_path / "action", metrics={"enabled": False})
    app = App(settings=settings, args=args, run_id="action-walk")
    assert await _supervise(app, run_action) == 0
    assert_walked_the_recorded_asks(taker, path)
    assert [(f.price, f.qty, f.ts_ns) for f in taker.fills] == [
        (f.price, f.qty, f.ts_ns) for f in backtested.fills]


async def test_a_sell_through_the_binance_bid_walks_the_depth_book_the_same_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Binance: the touch from bookTicker, the levels beyond it from the @depth book (REST
    snapshot + diffs); frame by frame and from the cache, the same fills."""
    fills = {}
    for cache in (False, True):
        taker = OneTaker("binance_spot", "BTC/USDT", Side.SELL, 8.0,
                         at_ns=1_723_161_284_000_000_000)  # 30 s into the sample
        taker, result = await run_one_taker(tmp_path / str(cache), SAMPLE_FILES[0],
                                            monkeypatch, taker, backtest={"cache": cache})
        assert result.cache == ("built" if cache else "off")
        fills[cache] = [(f.price, f.qty, f.ts_ns) for f in taker.fills]
    assert fills[True] == fills[False]
    prices = [price for price, _, _ in fills[True]]
    assert len(prices) >= 3 and prices == sorted(prices, reverse=True)
    assert len(set(prices)) == len(prices) and prices[-1] >= taker.limit


def test_recorded_depth_applies_a_markets_changes_in_order_up_to_the_row_and_the_clock() -> None:
    """The same book from the columns as frame by frame: changes emitted by the row being
    run, in order, up to the first one received after the clock; a lost book is empty."""
    published: list[object] = []
    recorder = DepthRecorder(published)
    now = [0]
    live = RecordedDepth(lambda: now[0])
    changes = [  # (events published before, time, reset, bids, asks)
        (0, 10, True, [(99.0, 1.0)], [(101.0, 1.0)]),
        (1, 20, False, [], [(101.0, 0.0), (102.0, 2.0)]),
        (1, 30, True, (), ()),  # sync lost
        (2, 40, True, [(98.0, 1.0)], [(103.0, 1.0)]),
    ]
    for pos, ts, reset, bids, asks in changes:
        published[:] = [None] * pos
        recorder("v", "S", ts, reset, bids, asks)
    columns = recorder.columns()
    assert columns is not None and len(columns) == 4 and columns.levels == 6
    columns.check(events=2)
    cached = RecordedDepth(lambda: now[0])
    cached.load(columns)
    emitted = 0
    for at_row, clock, asks in [(0, 5, None), (1, 15, [(101.0, 1.0)]), (1, 25, [(102.0, 2.0)]),
                                (1, 100, None), (2, 100, [(103.0, 1.0)])]:
        now[0] = clock
        while emitted < len(changes) and changes[emitted][0] <= at_row:
            live.apply("v", "S", *changes[emitted][1:])
            emitted += 1
        cached.at_row = at_row
        assert cached.levels("v", "S", "ask") == live.levels("v", "S", "ask") == asks
    assert cached.levels("v", "S", "bid") == [(98.0, 1.0)]


def test_only_the_books_of_the_strategys_markets_are_kept() -> None:
    """An order walks only a market its strategy declared (`Strategy.market_keys`), so the
    other markets' changes are never folded (from the cache that was most of the depth
    work: the USD-M book moves twice as often as spot's), and an order in one of them
    fails loudly rather than taking an empty book."""
    published: list[object] = []
    recorder = DepthRecorder(published)
    for market in ("S", "T"):
        recorder("v", market, 10, True, [(99.0, 1.0)], [(101.0, 1.0)])
    columns = recorder.columns()
    assert columns is not None
    every, declared = RecordedDepth(lambda: 100), RecordedDepth(lambda: 100)
    every.load(columns)
    declared.load(columns, frozenset({("v", "S")}))
    for depth in (every, declared):
        depth.settle(1)
    assert declared.levels("v", "S", "ask") == every.levels("v", "S", "ask") == [(101.0, 1.0)]
    assert every.levels("v", "T", "bid") == [(99.0, 1.0)]
    assert [len(book["bid"][0]) for book in declared._folded] == [1, 0]  # T never folded
    with pytest.raises(UndeclaredBook, match="v T, a market the strategy did not declare"):
        declared.levels("v", "T", "bid")
