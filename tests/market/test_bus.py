"""Bus semantics: synchronous publish, per-subscriber conflation, bounded trade queues."""

from __future__ import annotations

import asyncio
import inspect

from daemon.core.model import Quote, Trade
from daemon.market.bus import Bus


def quote(exchange: str, symbol: str, bid: float, ts: int) -> Quote:
    return Quote(exchange, symbol, bid, 1.0, bid + 1.0, 1.0, ts, ts, seq=ts)


def trade(exchange: str, price: float, ts: int) -> Trade:
    return Trade(exchange, "BTC/USDT", price, 0.1, "buy", ts, ts, str(ts))


def test_publish_is_synchronous() -> None:
    assert not inspect.iscoroutinefunction(Bus.publish_quote)
    assert not inspect.iscoroutinefunction(Bus.publish_trade)
    assert not inspect.iscoroutinefunction(Bus.mark_stale)


async def test_slow_subscriber_sees_only_newest_quote_per_key_and_conflation_is_exact() -> None:
    bus = Bus()
    slow = bus.subscribe("slow")
    fast = bus.subscribe("fast")
    fast_seen: list[Quote] = []
    for i in range(100):
        bus.publish_quote(quote("binance_spot", "BTC/USDT", 100.0 + i, i))
        bus.publish_quote(quote("bybit_spot", "BTC/USDT", 200.0 + i, i))
        while (event := fast.get_nowait()) is not None:
            fast_seen.append(event)
    events = slow.drain()
    assert [(q.exchange, q.bid) for q in events] == [("binance_spot", 199.0), ("bybit_spot", 299.0)]
    assert slow.conflated == 198
    assert fast.conflated == 0 and len(fast_seen) == 200
    counters = bus.counters()
    assert counters["published_quotes"] == 200
    assert counters["conflated"] == 198
    assert counters["delivered"] == 202


async def test_events_come_in_publish_order_with_conflated_quote_at_its_newest_position() -> None:
    bus = Bus()
    sub = bus.subscribe("s")
    bus.publish_quote(quote("a", "BTC/USDT", 1.0, 1))
    bus.publish_trade(trade("a", 5.0, 2))
    bus.publish_quote(quote("b", "BTC/USDT", 2.0, 3))
    bus.publish_quote(quote("a", "BTC/USDT", 3.0, 4))  # conflates the first, moves after b
    events = sub.drain()
    assert [type(e).__name__ for e in events] == ["Trade", "Quote", "Quote"]
    assert [getattr(e, "bid", None) for e in events] == [None, 2.0, 3.0]


async def test_trades_are_not_conflated_and_overflow_is_counted() -> None:
    bus = Bus(trade_queue_size=10)
    sub = bus.subscribe("s")
    for i in range(25):
        bus.publish_trade(trade("a", 100.0 + i, i))
    events = sub.drain()
    assert [t.price for t in events] == [115.0 + i for i in range(10)]
    assert sub.trades_dropped == 15
    assert bus.counters()["trades_dropped"] == 15


async def test_quote_only_subscriber_gets_no_trades() -> None:
    bus = Bus()
    sub = bus.subscribe("quotes", trades=False)
    bus.publish_trade(trade("a", 1.0, 1))
    assert sub.get_nowait() is None


async def test_sinks_see_every_quote_even_when_subscribers_conflate() -> None:
    bus = Bus()
    seen: list[float] = []
    bus.add_sink(on_quote=lambda q: seen.append(q.bid))
    bus.subscribe("slow")
    for i in range(50):
        bus.publish_quote(quote("a", "BTC/USDT", float(i), i))
    assert seen == [float(i) for i in range(50)]


async def test_waiting_subscriber_wakes_on_publish() -> None:
    bus = Bus()
    sub = bus.subscribe("s")
    getter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert not getter.done()
    bus.publish_quote(quote("a", "BTC/USDT", 1.0, 1))
    event = await asyncio.wait_for(getter, 1.0)
    assert isinstance(event, Quote) and event.bid == 1.0


async def test_mark_stale_flags_the_latest_quote_and_a_fresh_one_clears_it() -> None:
    bus = Bus()
    ring: list[Quote] = []
    bus.add_sink(on_quote=ring.append)
    sub = bus.subscribe("s")
    bus.publish_quote(quote("a", "BTC/USDT", 1.0, 1))
    stale = bus.mark_stale("a", "BTC/USDT")
    assert stale is not None and stale.stale and stale.bid == 1.0
    assert bus.view.quote("a", "BTC/USDT").stale
    assert bus.mark_stale("a", "BTC/USDT") is stale  # idempotent, not counted twice
    assert bus.stale_marks == 1
    assert [e.stale for e in sub.drain()] == [True]
    assert len(ring) == 1  # a stale mark is not new market data
    bus.publish_quote(quote("a", "BTC/USDT", 2.0, 2))
    assert not bus.view.quote("a", "BTC/USDT").stale
    assert bus.mark_stale("x", "BTC/USDT") is None


def test_consolidated_view_has_the_crypto_pipe_shape() -> None:
    bus = Bus()
    bus.publish_quote(Quote("binance_spot", "BTC/USDT", 61685.99, 1.25869, 61686.0, 2.44807,
                            0, 1_723_161_599_999_231_384, 1))
    bus.publish_quote(Quote("bybit_spot", "BTC/USDT", 61680.5, 0.5, 61681.0, 0.25,
                            0, 1_723_161_599_000_000_000, 2))
    view = bus.view.to_dict("BTC/USDT")
    assert view == {
        "event_time": 1_723_161_599_999,
        "binance_spot": {"symbol": "BTC/USDT", "top_bid": "61685.99",
                         "top_bid_quantity": "1.25869", "top_ask": "61686.0",
                         "top_ask_quantity": "2.44807"},
        "bybit_spot": {"symbol": "BTC/USDT", "top_bid": "61680.5", "top_bid_quantity": "0.5",
                       "top_ask": "61681.0", "top_ask_quantity": "0.25"},
    }
    assert next(iter(view)) == "event_time"


def test_counters_stay_monotonic_when_a_subscriber_leaves() -> None:
    bus = Bus()
    sub = bus.subscribe("s")
    for i in range(3):
        bus.publish_quote(quote("a", "BTC/USDT", float(i), i))
    sub.drain()
    bus.unsubscribe(sub)
    assert bus.counters()["delivered"] == 1 and bus.counters()["conflated"] == 2


def test_a_key_route_is_the_same_path_as_publish() -> None:
    """What a parser publishes through its key's route reaches the view, every sink
    (including one added after the route was handed out) and the subscribers, and is
    counted, exactly as through publish_quote / publish_trade."""
    bus = Bus()
    early: list[Quote | Trade] = []
    bus.add_sink(on_quote=early.append, on_trade=early.append)
    sub = bus.subscribe("s")
    publish_quote = bus.quote_route("binance_spot", "BTC/USDT")
    publish_trade = bus.trade_route("binance_spot", "BTC/USDT")
    late: list[Quote | Trade] = []
    bus.add_sink(on_quote=late.append)

    first = quote("binance_spot", "BTC/USDT", 1.0, 1)
    second = quote("binance_spot", "BTC/USDT", 2.0, 2)
    publish_quote(first)
    publish_trade(trade("binance_spot", 5.0, 3))
    bus.publish_quote(second)

    assert bus.view.quote("binance_spot", "BTC/USDT") is second
    assert [type(e).__name__ for e in early] == ["Quote", "Trade", "Quote"]
    assert late == [first, second]
    assert [e.local_ts_ns for e in sub.drain()] == [3, 2]  # the quote conflated
    counters = bus.counters()
    assert (counters["published_quotes"], counters["published_trades"]) == (2, 1)
