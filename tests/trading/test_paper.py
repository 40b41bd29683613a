"""Paper executor: fill rules on hand-built books and on recorded Binance trades."""

from __future__ import annotations

import asyncio
import functools
import gzip
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from adapters.recordings.replay import ReplaySpec
from config.settings import ExecutionSettings, VenueSettings, load_settings
from daemon.backtest.engine import Backtest
from daemon.core.model import Fill, OrderAck, OrderIntent, OrderType, Quote, Side, Trade
from daemon.core.routes import Callbacks
from daemon.core.vocabulary import OrderStatus
from daemon.trading.order_ids import is_ours, run_prefix
from daemon.trading.paper import MarketRules, PaperExecutor

MS = 1_000_000
T0 = 1_723_161_254_000 * MS  # 2024-08-08 23:54:14 UTC
VENUE = "binance_spot"
SYMBOL = "BTC/USDT"
SAMPLE_SPOT = (Path(__file__).resolve().parents[2] / "adapters" / "recordings" / "samples"
               / "binance_spot_btcusdt_20240808_sample.gz")
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "binance_spot_btcusdt_20240808.gz"


class Recorder:
    """ExecutionListener that keeps everything, in order."""

    def __init__(self) -> None:
        self.events: list[OrderAck | Fill] = []

    def on_ack(self, ack: OrderAck) -> None:
        self.events.append(ack)

    def on_fill(self, fill: Fill) -> None:
        self.events.append(fill)

    @property
    def acks(self) -> list[OrderAck]:
        return [e for e in self.events if isinstance(e, OrderAck)]

    @property
    def fills(self) -> list[Fill]:
        return [e for e in self.events if isinstance(e, Fill)]

    def statuses(self, client_order_id: str) -> list[OrderStatus]:
        return [a.status for a in self.acks if a.client_order_id == client_order_id]


def venue(**overrides: object) -> VenueSettings:
    settings: dict[str, object] = {
        "enabled": True,
        "maker_fee_bps": 10.0,
        "taker_fee_bps": 10.0,
        "balances": {"BTC": 1.0, "USDT": 100_000.0},
        "markets": {SYMBOL: {"tick": 0.01, "lot": 0.00001}},
    }
    settings.update(overrides)
    return VenueSettings(**settings)  # type: ignore[arg-type]


def paper(submit_ms: float = 20.0, cancel_ms: float = 20.0,
          venue_settings: VenueSettings | None = None,
          **options: object) -> tuple[PaperExecutor, Recorder]:
    execution = ExecutionSettings(submit_latency_ms=submit_ms, cancel_latency_ms=cancel_ms)
    executor = PaperExecutor({VENUE: venue_settings or venue()}, execution,
                             run_prefix("test-run"), **options)  # type: ignore[arg-type]
    recorder = Recorder()
    executor.listener = recorder
    return executor, recorder


def quote(t_ms: float, bid: float, bid_qty: float, ask: float, ask_qty: float,
          symbol: str = SYMBOL) -> Quote:
    ts = T0 + int(t_ms * MS)
    return Quote(VENUE, symbol, bid, bid_qty, ask, ask_qty, ts, ts)


def trade(t_ms: float, price: float, qty: float, side: str = "sell") -> Trade:
    ts = T0 + int(t_ms * MS)
    return Trade(VENUE, SYMBOL, price, qty, side, ts, ts)


def intent(side: Side, kind: OrderType, qty: float, price: float | None = None,
           symbol: str = SYMBOL, strategy: str = "mm") -> OrderIntent:
    return OrderIntent(VENUE, symbol, side, kind, qty, price, strategy=strategy)


def at(t_ms: float) -> int:
    return T0 + int(t_ms * MS)


# --- marketable orders --------------------------------------------------------------------


def test_crossing_limit_takes_the_touch_up_to_its_size_then_rests_and_fills_as_maker() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 0.5))
    order = intent(Side.BUY, OrderType.LIMIT, 1.0, 102.0)
    executor.submit(order, at(0))
    executor.on_quote(quote(30, 100.0, 1.0, 101.0, 0.5))  # same displayed size: not reused
    assert [(f.price, f.qty, f.liquidity) for f in seen.fills] == [(101.0, 0.5, "taker")]
    assert seen.statuses(order.client_order_id) == [OrderStatus.NEW]
    executor.on_quote(quote(40, 100.0, 1.0, 101.5, 2.0))  # the ask moves; still through 102
    assert [(f.price, f.qty, f.liquidity) for f in seen.fills] == [
        (101.0, 0.5, "taker"), (102.0, 0.5, "maker")]
    assert seen.statuses(order.client_order_id) == [OrderStatus.NEW, OrderStatus.FILLED]
    # 10 bps each: 50.50 + 0.0505 taker, 51.00 + 0.0510 maker.
    assert [f.fee for f in seen.fills] == pytest.approx([0.0505, 0.051], abs=1e-12)
    assert executor.balances(VENUE)["USDT"] == pytest.approx(99_898.3985, abs=1e-9)
    assert executor.balances(VENUE)["BTC"] == pytest.approx(2.0, abs=1e-12)
    assert executor.free_balance(VENUE, "USDT") == pytest.approx(99_898.3985, abs=1e-9)
    assert executor.open_orders() == []


def test_ioc_takes_the_displayed_size_and_expires_the_rest() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 0.3))
    order = intent(Side.BUY, OrderType.IOC, 1.0, 101.0)
    executor.submit(order, at(0))
    executor.advance(at(20))
    assert [(f.price, f.qty) for f in seen.fills] == [(101.0, 0.3)]
    expired = seen.acks[-1]
    assert expired.status is OrderStatus.EXPIRED and expired.filled_qty == pytest.approx(0.3)
    assert executor.open_orders() == []
    # Nothing stays locked: the unfilled part of the reservation was released.
    assert executor.free_balance(VENUE, "USDT") == pytest.approx(100_000 - 30.3 - 0.0303)


def test_market_sell_hits_the_bid_up_to_displayed_size() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.0, 0.25, 101.0, 3.0))
    order = intent(Side.SELL, OrderType.MARKET, 0.4)
    executor.submit(order, at(0))
    executor.advance(at(20))
    assert [(f.side, f.price, f.qty, f.liquidity) for f in seen.fills] == [
        (Side.SELL, 100.0, 0.25, "taker")]
    assert seen.statuses(order.client_order_id) == [OrderStatus.NEW, OrderStatus.EXPIRED]
    assert executor.balances(VENUE)["BTC"] == pytest.approx(0.75)
    assert executor.balances(VENUE)["USDT"] == pytest.approx(100_000 + 25.0 - 0.025, abs=1e-9)


def test_depth_provider_walks_levels_with_price_impact_bounded_by_the_limit() -> None:
    asks = [(101.0, 0.2), (101.5, 0.3), (102.0, 1.0)]
    executor, seen = paper(depth=lambda v, s, side: asks if side == "ask" else [(100.0, 5.0)])
    executor.on_quote(quote(0, 100.0, 5.0, 101.0, 0.2))
    order = intent(Side.BUY, OrderType.IOC, 0.6, 101.6)
    executor.submit(order, at(0))
    executor.advance(at(20))
    assert [(f.price, f.qty) for f in seen.fills] == [(101.0, 0.2), (101.5, 0.3)]
    assert seen.acks[-1].status is OrderStatus.EXPIRED
    # A second taker right after finds those levels already taken, only 102 is left.
    second = intent(Side.BUY, OrderType.MARKET, 0.4)
    executor.submit(second, at(20))
    executor.advance(at(40))
    assert [(f.price, f.qty) for f in seen.fills if f.client_order_id == second.client_order_id] \
        == [(102.0, 0.4)]


class Depth:
    """A DepthProvider over a mutable book: price -> size per side."""

    def __init__(self, bids: dict[float, float], asks: dict[float, float]) -> None:
        self.book = {"bid": bids, "ask": asks}

    def __call__(self, venue: str, symbol: str, side: str) -> list[tuple[float, float]]:
        return sorted(self.book[side].items(), reverse=side == "bid")


def test_depth_walk_remembers_what_it_took_per_level_until_the_level_is_refilled() -> None:
    """Issue 14 item 5, by hand: three IOC buys on one book. The first takes 101.0 and
    101.5, the second finds both taken and takes 102.0, the third comes after the 101.5
    level grew (refilled: taken again) and 102.0 shrank (others took some of what we
    left: only shown - taken is there)."""
    depth = Depth({100.0: 5.0}, {101.0: 0.2, 101.5: 0.3, 102.0: 1.0})
    executor, seen = paper(depth=depth)
    executor.on_quote(quote(0, 100.0, 5.0, 101.0, 0.2))

    def buy(t_ms: float, qty: float, limit: float) -> list[tuple[float, float]]:
        order = intent(Side.BUY, OrderType.IOC, qty, limit)
        executor.submit(order, at(t_ms))
        executor.advance(at(t_ms + 20))
        assert seen.statuses(order.client_order_id)[-1] in (OrderStatus.FILLED,
                                                              OrderStatus.EXPIRED)
        return [(f.price, f.qty) for f in seen.fills
                if f.client_order_id == order.client_order_id]

    assert buy(0, 0.6, 101.6) == [(101.0, 0.2), (101.5, 0.3)]  # 102 is past the limit
    assert buy(20, 0.6, 102.5) == [(102.0, 0.6)]  # 101.0 and 101.5 still taken
    depth.book["ask"][101.5] = 0.4  # 0.3 when we took it all: refilled
    depth.book["ask"][102.0] = 0.8  # 1.0 when we took 0.6: 0.2 gone to others
    third = buy(40, 1.0, 102.0)
    assert third == [(101.5, 0.4), (102.0, pytest.approx(0.2))]  # 0.8 - 0.6 at 102
    # 0.2*101 + 0.3*101.5 + 0.6*102 + 0.4*101.5 + 0.2*102 = 172.85, 10 bps taker fee.
    assert executor.balances(VENUE)["USDT"] == pytest.approx(100_000 - 172.85 - 0.17285)
    assert executor.balances(VENUE)["BTC"] == pytest.approx(1.0 + 1.7)


def test_an_ioc_priced_through_a_taken_touch_walks_the_book_instead_of_failing() -> None:
    """The arbitrage unwind of issue 14: a sell IOC 25 bps through the bid after our
    earlier order took the whole touch fills on the levels below it, not nothing."""
    depth = Depth({100.0: 0.5, 99.9: 0.3, 99.8: 0.4, 99.7: 9.0}, {100.1: 5.0})
    executor, seen = paper(depth=depth)
    executor.on_quote(quote(0, 100.0, 0.5, 100.1, 5.0))
    first = intent(Side.SELL, OrderType.IOC, 0.5, 100.0)
    executor.submit(first, at(0))
    executor.advance(at(20))
    unwind = intent(Side.SELL, OrderType.IOC, 0.45, 100.0 * (1 - 25e-4))  # 99.75
    executor.submit(unwind, at(20))
    executor.advance(at(40))
    assert [(f.price, f.qty) for f in seen.fills if f.client_order_id == unwind.client_order_id
            ] == [(99.9, 0.3), (99.8, pytest.approx(0.15))]
    assert seen.statuses(unwind.client_order_id) == [OrderStatus.NEW, OrderStatus.FILLED]


def test_a_depth_book_behind_the_quote_never_fills_better_than_the_touch() -> None:
    """Binance's @depth@100ms lags bookTicker: levels better than the quote's touch are
    gone, the touch's size is the quote's, and the walk goes on past it in the book."""
    depth = Depth({100.0: 5.0}, {100.5: 3.0, 101.0: 3.0, 101.5: 1.0})
    executor, seen = paper(depth=depth)
    executor.on_quote(quote(0, 100.0, 5.0, 101.0, 0.5))
    order = intent(Side.BUY, OrderType.MARKET, 1.0)
    executor.submit(order, at(0))
    executor.advance(at(20))
    assert [(f.price, f.qty) for f in seen.fills] == [(101.0, 0.5), (101.5, 0.5)]


def test_without_depth_a_taker_takes_only_the_touch_as_before() -> None:
    for depth in (None, Depth({}, {})):  # no provider, or one with no levels for the market
        executor, seen = paper(depth=depth)
        executor.on_quote(quote(0, 100.0, 5.0, 101.0, 0.2))
        order = intent(Side.BUY, OrderType.IOC, 1.0, 105.0)
        executor.submit(order, at(0))
        executor.advance(at(20))
        again = intent(Side.BUY, OrderType.IOC, 1.0, 105.0)
        executor.on_quote(quote(30, 100.0, 5.0, 101.0, 0.3))  # another size: still taken
        executor.submit(again, at(30))
        executor.advance(at(60))
        assert [(f.price, f.qty) for f in seen.fills] == [(101.0, 0.2),
                                                          (101.0, pytest.approx(0.1))]


def test_post_only_that_would_cross_is_rejected_and_one_that_does_not_rests() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 1.0))
    crossing = intent(Side.BUY, OrderType.POST_ONLY, 0.1, 101.0)
    passive = intent(Side.BUY, OrderType.POST_ONLY, 0.1, 100.5)
    executor.submit(crossing, at(0))
    executor.submit(passive, at(0))
    executor.advance(at(20))
    rejected = [a for a in seen.acks if a.client_order_id == crossing.client_order_id]
    assert [a.status for a in rejected] == [OrderStatus.REJECTED]
    assert rejected[0].reason.startswith("post-only would cross")
    assert seen.statuses(passive.client_order_id) == [OrderStatus.NEW]
    assert seen.fills == []
    assert [o.client_order_id for o in executor.open_orders()] == [passive.client_order_id]


def test_an_order_below_the_markets_min_notional_is_rejected_as_the_venue_would() -> None:
    """min notional 10 USDT (Binance's NOTIONAL filter, taken from the venue's markets):
    0.09 at 100.5 = 9.045 is refused; 0.1 at 100.5 = 10.05 rests; a market sell of 0.05 at
    a 100 bid (5 USDT) is refused too."""
    markets = {SYMBOL: {"tick": 0.01, "lot": 0.00001, "min_notional": 10.0}}
    executor, seen = paper(venue_settings=venue(markets=markets))
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 1.0))
    small = intent(Side.BUY, OrderType.LIMIT, 0.09, 100.5)
    enough = intent(Side.BUY, OrderType.LIMIT, 0.1, 100.5)
    market = intent(Side.SELL, OrderType.MARKET, 0.05)
    for order in (small, enough, market):
        executor.submit(order, at(0))
    executor.advance(at(20))
    for refused in (small, market):
        (ack,) = [a for a in seen.acks if a.client_order_id == refused.client_order_id]
        assert ack.status is OrderStatus.REJECTED
        assert ack.reason.startswith("notional") and "below the market's minimum 10" in ack.reason
    assert seen.statuses(enough.client_order_id) == [OrderStatus.NEW]
    assert seen.fills == []


# --- resting orders -----------------------------------------------------------------------


def test_trade_through_fills_partially_by_print_size_and_the_rest_stays() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.5, 1.0, 101.0, 1.0))
    order = intent(Side.BUY, OrderType.LIMIT, 1.0, 100.0)
    executor.submit(order, at(0))
    executor.on_trade(trade(30, 100.01, 5.0))  # above our price: not ours
    executor.on_trade(trade(31, 100.0, 0.3))  # at our price: 0.3 of 1.0
    assert [(f.price, f.qty, f.liquidity) for f in seen.fills] == [(100.0, 0.3, "maker")]
    assert executor.open_orders()[0].qty == pytest.approx(0.7)
    executor.on_trade(trade(32, 99.9, 2.0))  # through: the remaining 0.7 at our price
    assert [(f.price, f.qty) for f in seen.fills] == [(100.0, 0.3), (100.0, 0.7)]
    assert seen.statuses(order.client_order_id) == [OrderStatus.NEW, OrderStatus.FILLED]
    assert executor.balances(VENUE)["USDT"] == pytest.approx(100_000 - 100.0 - 0.1, abs=1e-9)


def test_opposite_touch_crossing_a_resting_sell_fills_at_the_limit_price() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.0, 1.0, 100.5, 1.0))
    order = intent(Side.SELL, OrderType.LIMIT, 0.5, 100.4)
    executor.submit(order, at(0))
    executor.on_quote(quote(25, 100.3, 0.2, 100.4, 1.0))  # bid below our ask: nothing
    assert seen.fills == []
    executor.on_quote(quote(26, 100.45, 0.2, 100.5, 1.0))  # bid through 100.4: 0.2 shown
    executor.on_quote(quote(27, 100.45, 0.2, 100.5, 1.0))  # same 0.2 again: already taken
    assert [(f.price, f.qty, f.liquidity) for f in seen.fills] == [(100.4, 0.2, "maker")]
    executor.on_quote(quote(28, 100.6, 1.0, 100.7, 1.0))  # touch moved: fresh liquidity
    assert [(f.price, f.qty) for f in seen.fills] == [(100.4, 0.2), (100.4, 0.3)]


def test_one_print_is_shared_among_our_orders_in_price_priority() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.5, 1.0, 101.0, 1.0))
    worse = intent(Side.BUY, OrderType.LIMIT, 1.0, 99.5)
    better = intent(Side.BUY, OrderType.LIMIT, 1.0, 100.0)
    executor.submit(worse, at(0))
    executor.submit(better, at(0))
    executor.on_trade(trade(30, 99.0, 1.5))
    assert [(f.client_order_id, f.qty) for f in seen.fills] == [
        (better.client_order_id, 1.0), (worse.client_order_id, 0.5)]


def test_queue_position_makes_prints_at_our_price_eat_the_queue_ahead_first() -> None:
    executor, seen = paper(queue_position=True)
    executor.on_quote(quote(0, 100.0, 2.0, 100.5, 1.0))
    order = intent(Side.BUY, OrderType.LIMIT, 1.0, 100.0)  # joins 2.0 already at 100
    executor.submit(order, at(0))
    executor.advance(at(20))
    executor.on_trade(trade(30, 100.0, 1.5))
    assert seen.fills == []
    executor.on_trade(trade(31, 100.0, 1.0))  # 0.5 of queue left, then 0.5 to us
    assert [(f.price, f.qty) for f in seen.fills] == [(100.0, 0.5)]
    executor.on_trade(trade(32, 99.99, 0.2))  # through: no queue matters
    assert [f.qty for f in seen.fills] == pytest.approx([0.5, 0.2])


# --- queue model setting (execution.queue_model) -----------------------------------------


def queued(model: str, power: float = 2.0) -> tuple[PaperExecutor, Recorder, OrderIntent]:
    """A buy of 1 @ 100 resting behind the 5.0 shown at the bid, under `model`."""
    execution = ExecutionSettings(submit_latency_ms=0.0, cancel_latency_ms=0.0,
                                  queue_model=model, queue_power=power)  # type: ignore[arg-type]
    executor = PaperExecutor({VENUE: venue()}, execution, run_prefix("queue-test"))
    recorder = Recorder()
    executor.listener = recorder
    executor.on_quote(quote(0, 100.0, 5.0, 100.5, 1.0))
    order = intent(Side.BUY, OrderType.LIMIT, 1.0, 100.0)
    executor.submit(order, at(0))
    executor.advance(at(0))
    return executor, recorder, order


def test_queue_model_none_fills_a_resting_order_on_the_first_print_as_before() -> None:
    executor, seen, order = queued("none")
    executor.on_trade(trade(10, 100.0, 0.4))
    assert [(f.client_order_id, f.price, f.qty, f.liquidity) for f in seen.fills] == [
        (order.client_order_id, 100.0, 0.4, "maker")]


def test_probabilistic_queue_fills_only_after_the_size_ahead_has_printed() -> None:
    executor, seen, _ = queued("probabilistic")
    executor.on_trade(trade(10, 100.0, 2.0))
    executor.on_quote(quote(11, 100.0, 3.0, 100.5, 1.0))  # the drop is the print: no advance
    executor.on_trade(trade(20, 100.0, 2.0))
    assert seen.fills == []  # 1.0 still ahead
    executor.on_trade(trade(30, 100.0, 1.5))  # 1.0 of queue, then 0.5 to us
    assert [(f.price, f.qty) for f in seen.fills] == [(100.0, 0.5)]


@pytest.mark.parametrize(("power", "ahead"), [
    # Level 7 -> 5 with front 3, back 4 (4 joined behind us): prob = 4^n / (4^n + 3^n),
    # front' = 3 - (1 - prob) * 2.
    (1.0, 3 - (1 - 4 / 7) * 2),  # 2.142857
    (2.0, 3 - (1 - 16 / 25) * 2),  # 2.28
    (3.0, 3 - (1 - 64 / 91) * 2),  # 2.406593
])
def test_probabilistic_queue_moves_up_by_the_expected_share_of_cancels_ahead(
    power: float, ahead: float,
) -> None:
    executor, seen, _ = queued("probabilistic", power)
    # 5 -> 3 with nothing printed: 2 cancelled; nobody behind us (back 0), so prob = 0 and
    # all of it was ahead: front 5 -> 3.
    executor.on_quote(quote(10, 100.0, 3.0, 100.5, 1.0))
    executor.on_quote(quote(20, 100.0, 7.0, 100.5, 1.0))  # 4 join behind: front stays 3
    executor.on_quote(quote(30, 100.0, 5.0, 100.5, 1.0))  # 2 more cancelled
    executor.on_trade(trade(40, 100.0, 3.0))  # eats `ahead`, the rest fills us
    assert [f.qty for f in seen.fills] == pytest.approx([3.0 - ahead], abs=1e-9)


def test_probabilistic_queue_puts_us_first_when_our_level_empties() -> None:
    executor, seen, _ = queued("probabilistic")
    executor.on_quote(quote(10, 99.99, 2.0, 100.5, 1.0))  # 100 is gone: nobody ahead
    executor.on_trade(trade(20, 100.0, 0.3))
    assert [(f.price, f.qty) for f in seen.fills] == [(100.0, 0.3)]


def test_probabilistic_queue_joins_a_level_behind_the_touch_when_it_becomes_the_touch() -> None:
    executor, seen, _ = queued("probabilistic")
    behind = intent(Side.BUY, OrderType.LIMIT, 1.0, 99.0)
    executor.submit(behind, at(5))
    executor.on_quote(quote(10, 99.0, 2.0, 99.5, 1.0))  # the touch falls to 99: 2.0 ahead
    executor.on_trade(trade(20, 99.0, 2.5))
    assert [(f.price, f.qty) for f in seen.fills
            if f.client_order_id == behind.client_order_id] == [(99.0, 0.5)]


async def test_probabilistic_queue_in_a_backtest_fills_no_more_maker_orders_than_none(
    tmp_path: Path,
) -> None:
    """execution.queue_model through the settings, on the shipped 75 s sample, with
    inventory-mm quoting at the touch (inside the fees) so that it gets maker fills."""
    maker_qty: dict[str, float] = {}
    for model in ("none", "probabilistic"):
        settings = load_settings({
            "data_dir": tmp_path / model, "backtest": {"cache": False},
            "execution": {"queue_model": model},
            "strategies": {"inventory_mm": {"allow_quotes_inside_fees": True}},
        }, env_file=None)
        result = await Backtest(settings, "inventory-mm", [ReplaySpec(SAMPLE_SPOT)],
                                "queue").run()
        log = b"".join(path.read_bytes() for path in result.log_files)
        maker_qty[model] = sum(r["qty"] for r in map(orjson.loads, log.splitlines())
                               if r["type"] == "fill" and r["liquidity"] == "maker")
    assert maker_qty["none"] > 0
    # On this sample the two are equal today (0.001 each): inventory-mm's quotes rest off
    # the touch and fill when the market trades through them, which no queue holds back.
    assert maker_qty["probabilistic"] <= maker_qty["none"]


async def test_probabilistic_queue_holds_back_maker_fills_at_the_touch_on_the_btc_recording(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    """random-inventory rests its post-only orders at the touch, where the queue ahead is
    the whole shown size: on the shared BTCUSDT recording the probabilistic queue fills it
    less and later than `none`, which puts it first in line."""
    recording = shared_file("binance_spot_btcusdt_20240808.gz")
    fills: dict[str, list[dict]] = {}
    for model in ("none", "probabilistic"):
        settings = load_settings({"data_dir": tmp_path / model,
                                  "execution": {"queue_model": model}}, env_file=None)
        result = await Backtest(settings, "random-inventory", [ReplaySpec(recording)],
                                "queue").run()
        log = b"".join(path.read_bytes() for path in result.log_files)
        fills[model] = [r for r in map(orjson.loads, log.splitlines()) if r["type"] == "fill"]
    first_in_line, queued = fills["none"], fills["probabilistic"]
    assert all(f["liquidity"] == "maker" for f in first_in_line + queued)
    assert len(first_in_line) > 20
    assert len(queued) < len(first_in_line)
    assert sum(f["qty"] for f in queued) < sum(f["qty"] for f in first_in_line)
    assert queued[0]["ts_ns"] > first_in_line[0]["ts_ns"]


def test_queue_model_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYPTOPIPE_EXECUTION__QUEUE_MODEL", "probabilistic")
    monkeypatch.setenv("CRYPTOPIPE_EXECUTION__SUBMIT_LATENCY_MS", "0")
    settings = load_settings({"venues": {VENUE: venue()}}, env_file=None)
    assert settings.execution.queue_model == "probabilistic"
    assert settings.execution.queue_power == 2.0
    executor = PaperExecutor.from_settings(settings, "queue-env")
    seen = Recorder()
    executor.listener = seen
    executor.on_quote(quote(0, 100.0, 5.0, 100.5, 1.0))
    executor.submit(intent(Side.BUY, OrderType.LIMIT, 1.0, 100.0), at(0))
    executor.on_trade(trade(10, 100.0, 4.0))  # 1.0 still ahead
    assert seen.fills == []


# --- latency ------------------------------------------------------------------------------


def test_no_fill_before_the_order_is_live_and_it_meets_the_book_of_its_arrival() -> None:
    executor, seen = paper(submit_ms=20.0)
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 1.0))
    order = intent(Side.BUY, OrderType.LIMIT, 0.5, 101.0)  # crosses the ask at submit time
    executor.submit(order, at(0))
    executor.on_trade(trade(5, 99.0, 10.0))  # through our price, but we are not live yet
    executor.on_quote(quote(10, 100.5, 1.0, 101.5, 1.0))  # ask moves away before arrival
    assert seen.events == []
    executor.on_quote(quote(30, 100.5, 1.0, 101.5, 1.0))
    assert seen.fills == []  # arrived at 20 ms against ask 101.5: rests
    assert [(a.status, a.ts_ns) for a in seen.acks] == [(OrderStatus.NEW, at(20))]
    executor.on_trade(trade(31, 101.0, 0.1))
    assert [(f.price, f.qty, f.liquidity, f.ts_ns) for f in seen.fills] == [
        (101.0, 0.1, "maker", at(31))]


def test_an_order_can_fill_while_its_cancel_is_in_flight() -> None:
    executor, seen = paper(submit_ms=20.0, cancel_ms=50.0)
    executor.on_quote(quote(0, 100.5, 1.0, 101.0, 1.0))
    order = intent(Side.BUY, OrderType.LIMIT, 1.0, 100.0)
    executor.submit(order, at(0))
    executor.advance(at(20))
    executor.cancel(order.client_order_id, at(100))  # effective at 150 ms
    executor.on_trade(trade(120, 100.0, 0.4))
    assert [f.qty for f in seen.fills] == [0.4]
    executor.advance(at(149))
    assert seen.statuses(order.client_order_id) == [OrderStatus.NEW]
    executor.advance(at(150))
    canceled = seen.acks[-1]
    assert (canceled.status, canceled.ts_ns) == (OrderStatus.CANCELED, at(150))
    assert canceled.filled_qty == pytest.approx(0.4)
    executor.on_trade(trade(151, 99.0, 5.0))
    assert len(seen.fills) == 1
    # The 0.6 that did not fill is unlocked again.
    assert executor.free_balance(VENUE, "USDT") == pytest.approx(100_000 - 40.0 - 0.04)


def test_a_cancel_that_comes_too_late_is_answered_with_the_fill() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.5, 1.0, 101.0, 1.0))
    order = intent(Side.BUY, OrderType.LIMIT, 0.2, 100.0)
    executor.submit(order, at(0))
    executor.advance(at(20))
    executor.cancel(order.client_order_id, at(21))
    executor.on_trade(trade(30, 99.0, 1.0))
    executor.advance(at(41))
    last = seen.acks[-1]
    assert last.status is OrderStatus.FILLED and last.reason.startswith("cancel rejected")


def test_cancel_never_overtakes_its_order_and_cancel_all_covers_orders_in_flight() -> None:
    executor, seen = paper(submit_ms=50.0, cancel_ms=5.0)
    executor.on_quote(quote(0, 100.5, 1.0, 101.0, 1.0))
    orders = [intent(Side.BUY, OrderType.LIMIT, 0.1, 100.0 - i) for i in range(3)]
    for order in orders:
        executor.submit(order, at(0))
    executor.cancel_all(at(1))
    executor.advance(at(60))
    for order in orders:
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW, OrderStatus.CANCELED]
    assert executor.open_orders() == []
    assert executor.free_balance(VENUE, "USDT") == pytest.approx(100_000)


# --- rounding, balances, ids ---------------------------------------------------------------


def test_market_rules_round_qty_down_and_prices_passively() -> None:
    rules = MarketRules(tick=0.01, lot=0.00001)
    assert rules.round_qty(0.123456) == 0.12345
    assert rules.round_qty(0.3) == 0.3
    assert rules.round_price(100.019, Side.BUY) == 100.01
    assert rules.round_price(100.011, Side.SELL) == 100.02
    assert rules.round_price(100.01, Side.SELL) == 100.01


def test_qty_that_rounds_to_zero_is_rejected_and_others_are_rounded() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 1.0))
    tiny = intent(Side.BUY, OrderType.LIMIT, 0.000004, 99.0)
    odd = intent(Side.BUY, OrderType.LIMIT, 0.123456, 99.019)
    executor.submit(tiny, at(0))
    executor.submit(odd, at(0))
    executor.advance(at(20))
    assert seen.acks[0].status is OrderStatus.REJECTED
    assert "rounds to 0" in seen.acks[0].reason
    (resting,) = executor.open_orders()
    assert (resting.qty, resting.price) == (0.12345, 99.01)


def test_spot_sells_need_base_and_open_orders_lock_it() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 1.0))
    too_big = intent(Side.SELL, OrderType.LIMIT, 1.5, 105.0)
    first = intent(Side.SELL, OrderType.LIMIT, 0.6, 105.0)
    second = intent(Side.SELL, OrderType.LIMIT, 0.6, 106.0)  # only 0.4 BTC left free
    for order in (too_big, first, second):
        executor.submit(order, at(0))
    executor.advance(at(20))
    by_id = {a.client_order_id: a for a in seen.acks}
    assert by_id[too_big.client_order_id].status is OrderStatus.REJECTED
    assert by_id[too_big.client_order_id].reason.startswith("insufficient balance")
    assert by_id[first.client_order_id].status is OrderStatus.NEW
    assert by_id[second.client_order_id].status is OrderStatus.REJECTED
    assert executor.balances(VENUE)["BTC"] == 1.0
    assert executor.free_balance(VENUE, "BTC") == pytest.approx(0.4)


def test_buys_need_quote_including_the_fee() -> None:
    executor, seen = paper(venue_settings=venue(balances={"USDT": 100.0}))
    executor.on_quote(quote(0, 99.0, 1.0, 101.0, 1.0))
    exact = intent(Side.BUY, OrderType.LIMIT, 1.0, 100.0)  # needs 100.10 with the fee
    executor.submit(exact, at(0))
    executor.advance(at(20))
    assert seen.acks[0].status is OrderStatus.REJECTED


def test_linear_perp_tracks_a_position_with_quote_margin_and_realises_pnl() -> None:
    perp = "BTC/USDT:USDT"
    settings = venue(balances={"USDT": 10_000.0}, maker_fee_bps=2.0, taker_fee_bps=5.0,
                     markets={perp: {"tick": 0.1, "lot": 0.001}})
    executor, _ = paper(venue_settings=settings)
    executor.on_quote(quote(0, 60_000.0, 1.0, 60_000.1, 1.0, symbol=perp))
    short = intent(Side.SELL, OrderType.MARKET, 0.1, symbol=perp)  # no BTC needed
    executor.submit(short, at(0))
    executor.advance(at(20))
    position = executor.positions(VENUE)[perp]
    assert (position.qty, position.entry_price) == (-0.1, 60_000.0)
    # Taker 5 bps of 6,000 = 3.00; margin 6,000 (leverage 1) is not free.
    assert executor.balances(VENUE)["USDT"] == pytest.approx(9_997.0, abs=1e-9)
    assert executor.free_balance(VENUE, "USDT") == pytest.approx(3_997.0, abs=1e-9)
    executor.on_quote(quote(30, 58_999.9, 1.0, 59_000.0, 1.0, symbol=perp))
    cover = intent(Side.BUY, OrderType.MARKET, 0.1, symbol=perp)
    executor.submit(cover, at(30))
    executor.advance(at(50))
    assert executor.positions(VENUE) == {}
    # +100.00 realised, 2.95 taker fee: 9,997.00 + 100.00 - 2.95.
    assert executor.balances(VENUE)["USDT"] == pytest.approx(10_094.05, abs=1e-9)
    assert "BTC" not in executor.balances(VENUE)


def test_client_order_ids_are_deterministic_and_prefixed() -> None:
    first, _ = paper()
    second, _ = paper()
    ids = []
    for executor in (first, second):
        orders = [intent(Side.BUY, OrderType.LIMIT, 0.1, 99.0, strategy=s)
                  for s in ("inventory-mm", "arb", "inventory-mm")]
        for order in orders:
            executor.submit(order, at(0))
        ids.append([o.client_order_id for o in orders])
    assert ids[0] == ids[1]
    prefix = run_prefix("test-run")
    assert ids[0] == [f"{prefix}-inventory_mm-1", f"{prefix}-arb-2", f"{prefix}-inventory_mm-3"]
    assert all(is_ours(i) and len(i) <= 36 for i in ids[0])
    given = intent(Side.BUY, OrderType.LIMIT, 0.1, 99.0)
    given.client_order_id = "mine-1"
    first.submit(given, at(0))
    assert given.client_order_id == "mine-1"


def test_a_reused_client_order_id_is_rejected_by_the_venue() -> None:
    executor, seen = paper()
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 1.0))
    for _ in range(2):
        order = intent(Side.BUY, OrderType.LIMIT, 0.1, 99.0)
        order.client_order_id = "same"
        executor.submit(order, at(0))
    executor.advance(at(20))
    assert [a.status for a in seen.acks] == [OrderStatus.NEW, OrderStatus.REJECTED]
    assert len(executor.open_orders()) == 1


async def test_async_facade_returns_the_ack_and_streams_fills() -> None:
    executor, _ = paper()
    executor.on_quote(quote(0, 100.0, 1.0, 101.0, 1.0))
    fills = executor.fills()

    async def feed() -> None:
        await asyncio.sleep(0)
        executor.advance(at(20))

    feeder = asyncio.create_task(feed())
    ack = await executor.submit_and_wait(intent(Side.BUY, OrderType.MARKET, 0.5), at(0),
                                         timeout_s=1.0)
    await feeder
    assert ack.status is OrderStatus.NEW
    fill = await asyncio.wait_for(anext(fills), 1.0)
    assert (fill.price, fill.qty) == (101.0, 0.5)
    fills.close()


# --- recorded market data ----------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def recorded_events() -> tuple[Quote | Trade, ...]:
    """Quotes and trades of the recorded Binance spot session, in receive order."""
    if not DATA.exists():
        pytest.skip(f"recorded data not found at {DATA} (../shared/data is not mounted)")
    events: list[Quote | Trade] = []
    try:
        from adapters.binance.parser import BinanceParser
    except ImportError:
        parser = None
    else:
        parser = BinanceParser(VENUE, Callbacks(events.append, events.append))
    with gzip.open(DATA, "rb") as handle:
        for line in handle:
            stamp, _, frame = line.rstrip(b"\n").partition(b" ")
            if parser is not None:
                parser.feed(frame, int(stamp))
            else:
                events.extend(_parse_minimal(frame, int(stamp)))
    return tuple(events)


def _parse_minimal(frame: bytes, local_ts_ns: int) -> list[Quote | Trade]:
    """Fallback when the shared parser is not there: bookTicker and trade frames only."""
    message = orjson.loads(frame)
    stream = message.get("stream", "") if isinstance(message, dict) else ""
    data = message.get("data", {}) if stream else {}
    if stream.endswith("@bookTicker"):
        return [Quote(VENUE, SYMBOL, float(data["b"]), float(data["B"]), float(data["a"]),
                      float(data["A"]), 0, local_ts_ns, int(data["u"]))]
    if stream.endswith("@trade"):
        return [Trade(VENUE, SYMBOL, float(data["p"]), float(data["q"]),
                      "sell" if data["m"] else "buy", int(data["T"]) * MS, local_ts_ns,
                      str(data["t"]))]
    return []


def replay(executor: PaperExecutor, events: tuple[Quote | Trade, ...], start: int = 0,
           until_ns: int | None = None) -> int:
    """Feed events from index `start`; return the index after the last one fed."""
    index = start
    for index in range(start, len(events)):
        event = events[index]
        if until_ns is not None and event.local_ts_ns > until_ns:
            return index
        if isinstance(event, Quote):
            executor.on_quote(event)
        else:
            executor.on_trade(event)
    return len(events)


def recorded_venue() -> VenueSettings:
    return venue(balances={"BTC": 1.0, "USDT": 100_000.0})


def test_recorded_resting_bid_fills_at_the_first_print_or_ask_through_its_price() -> None:
    events = recorded_events()
    executor, seen = paper(venue_settings=recorded_venue())
    first_quote = next(i for i, e in enumerate(events) if isinstance(e, Quote))
    start = events[first_quote]
    assert isinstance(start, Quote)
    executor.on_quote(start)
    price = round(start.bid - 15.0, 2)
    order = intent(Side.BUY, OrderType.LIMIT, 0.05, price)
    executor.submit(order, start.local_ts_ns)
    live_at = start.local_ts_ns + 20 * MS
    # Independent expectation: the first event after arrival that reaches our price.
    expected = next(
        e for e in events[first_quote + 1:]
        if e.local_ts_ns >= live_at and (
            (isinstance(e, Trade) and e.price <= price)
            or (isinstance(e, Quote) and e.ask <= price))
    )
    replay(executor, events, first_quote + 1, until_ns=expected.local_ts_ns)
    assert seen.fills, "the recorded session trades through a bid 15 USDT below the touch"
    fill = seen.fills[0]
    assert fill.ts_ns == expected.local_ts_ns
    assert (fill.price, fill.liquidity) == (price, "maker")
    shown = expected.qty if isinstance(expected, Trade) else expected.ask_qty
    assert fill.qty == pytest.approx(min(0.05, shown))
    spent = sum(f.price * f.qty + f.fee for f in seen.fills)
    assert executor.balances(VENUE)["USDT"] == pytest.approx(100_000 - spent, abs=0.005)
    assert round(fill.fee, 8) == round(price * fill.qty * 0.001, 8)


def test_recorded_market_buy_pays_the_ask_seen_at_arrival_not_at_submit() -> None:
    events = recorded_events()
    quotes = [e for e in events if isinstance(e, Quote)]
    # A moment where the ask changes within the 20 ms the order is in flight.
    index = next(
        i for i in range(len(quotes) - 1)
        if quotes[i + 1].ask != quotes[i].ask
        and quotes[i + 1].local_ts_ns - quotes[i].local_ts_ns < 20 * MS
        and (i + 2 == len(quotes) or quotes[i + 2].local_ts_ns - quotes[i].local_ts_ns > 20 * MS)
    )
    submit_quote, arrival_quote = quotes[index], quotes[index + 1]
    executor, seen = paper(venue_settings=recorded_venue())
    start = events.index(submit_quote)
    replay(executor, events, 0, until_ns=submit_quote.local_ts_ns)
    order = intent(Side.BUY, OrderType.MARKET, 0.01)
    executor.submit(order, submit_quote.local_ts_ns)
    replay(executor, events, start + 1, until_ns=submit_quote.local_ts_ns + 20 * MS)
    executor.advance(submit_quote.local_ts_ns + 20 * MS)
    taker = [f for f in seen.fills if f.client_order_id == order.client_order_id]
    assert [f.price for f in taker] == [arrival_quote.ask] != [submit_quote.ask]
    qty = min(0.01, arrival_quote.ask_qty)
    assert taker[0].qty == pytest.approx(qty)
    cost = arrival_quote.ask * qty
    fee = cost * 0.001
    assert round(taker[0].fee, 2) == round(fee, 2)
    assert round(executor.balances(VENUE)["USDT"], 2) == round(100_000 - cost - fee, 2)
    assert executor.balances(VENUE)["BTC"] == pytest.approx(1.0 + qty, abs=1e-12)


def test_recorded_session_replays_deterministically_with_resting_quotes() -> None:
    events = recorded_events()[:6000]

    def run() -> list[tuple[object, ...]]:
        executor, seen = paper(venue_settings=recorded_venue())
        next_quote_ns = 0
        for event in events:
            if isinstance(event, Quote):
                executor.on_quote(event)
                if event.local_ts_ns >= next_quote_ns:  # requote every second, 2 bps away
                    next_quote_ns = event.local_ts_ns + 1_000 * MS
                    executor.cancel_all(event.local_ts_ns)
                    bid, ask = event.mid * (1 - 2e-4), event.mid * (1 + 2e-4)
                    for side, price in ((Side.BUY, bid), (Side.SELL, ask)):
                        executor.submit(intent(side, OrderType.LIMIT, 0.002, price),
                                        event.local_ts_ns)
            else:
                executor.on_trade(event)
        return [(f.client_order_id, f.price, f.qty, f.ts_ns) for f in seen.fills]

    first, second = run(), run()
    assert first == second
    assert first, "a 2 bps quote gets filled in a busy BTCUSDT minute"


def test_taken_liquidity_is_kept_exactly_until_the_touch_moves_past_it() -> None:
    """Quotes at the touch on a busy recorded minute: after every quote, the levels still
    marked taken are the ones the touch has not passed, and the book's lowest taken ask /
    highest taken bid (which spare `on_quote` a look at every level) are their extremes."""
    events = recorded_events()[:6000]
    executor, _ = paper(venue_settings=recorded_venue())
    next_quote_ns = 0
    levels_seen = 0
    for event in events:
        if not isinstance(event, Quote):
            executor.on_trade(event)
            continue
        executor.on_quote(event)
        book = executor._books[VENUE][SYMBOL]
        assert all(price >= event.ask for price in book.taken_asks)
        assert all(price <= event.bid for price in book.taken_bids)
        assert book.lowest_taken_ask == min(book.taken_asks, default=float("inf"))
        assert book.highest_taken_bid == max(book.taken_bids, default=float("-inf"))
        levels_seen = max(levels_seen, len(book.taken_asks) + len(book.taken_bids))
        if event.local_ts_ns >= next_quote_ns:  # join the touch every 200 ms
            next_quote_ns = event.local_ts_ns + 200 * MS
            executor.cancel_all(event.local_ts_ns)
            for side, price in ((Side.BUY, event.bid), (Side.SELL, event.ask)):
                executor.submit(intent(side, OrderType.LIMIT, 0.002, price), event.local_ts_ns)
    assert levels_seen > 1, "orders at the touch take liquidity at several levels"
