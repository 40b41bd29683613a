"""Live executor through real ccxt against a fake Binance on 127.0.0.1 (tests/fake_binance.py)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest
import structlog

from adapters.ccxt.exchange import build_exchange, classify, redirect_urls, should_retry, wrap_error
from adapters.ccxt.executor import LiveExecutor
from config.settings import ExecutionSettings, RiskSettings, Settings, VenueSettings
from daemon.core.model import Decision, Fill, OrderAck, OrderIntent, OrderType, Quote, Side
from daemon.core.records import MemorySink
from daemon.core.vocabulary import OrderStatus
from daemon.trading.errors import (
    ErrorKind,
    ExecutionError,
    LiveTradingRefused,
    Redactor,
)
from daemon.trading.gate import GatedExecutor
from daemon.trading.order_ids import run_prefix
from daemon.trading.risk import RiskGate
from tests.helpers.fake_binance import FakeBinance

# The example credentials of Binance's API documentation ("SIGNED endpoint examples").
API_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
API_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
VENUE = "binance_spot"
SYMBOL = "BTC/USDT"
#: Short enough that a held response times out quickly, long enough for a loaded machine.
TIMEOUT_MS = 300


class Recorder:
    def __init__(self) -> None:
        self.acks: list[OrderAck] = []
        self.fills: list[Fill] = []

    def on_ack(self, ack: OrderAck) -> None:
        self.acks.append(ack)

    def on_fill(self, fill: Fill) -> None:
        self.fills.append(fill)

    def statuses(self, client_order_id: str) -> list[OrderStatus]:
        return [a.status for a in self.acks if a.client_order_id == client_order_id]


@pytest.fixture
async def server() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance(API_KEY, API_SECRET)
    await fake.start()
    yield fake
    await fake.close()


def venue_settings(url: str, secret: str = API_SECRET) -> VenueSettings:
    return VenueSettings(enabled=True, ccxt_id="binance", market_type="spot", rest_url=url,
                         api_key=API_KEY, api_secret=secret)  # type: ignore[arg-type]


def make_executor(url: str, reconcile: str = "cancel", secret: str = API_SECRET,
                  execution_overrides: dict[str, Any] | None = None,
                  **options: Any) -> tuple[LiveExecutor, Recorder]:
    execution = ExecutionSettings(mode="live", reconcile=reconcile,  # type: ignore[arg-type]
                                  **(execution_overrides or {}))
    options.setdefault("websocket", False)
    executor = LiveExecutor(
        {VENUE: venue_settings(url, secret)}, execution, run_prefix("live-test"),
        # Fast for tests: no ccxt throttle wait, no 250 ms linger on close.
        ccxt_overrides={"timeout": TIMEOUT_MS, "rateLimit": 1, "timeout_on_exit": 0},
        orders_per_s=1_000.0, poll_interval_s=0.02, **options,
    )
    recorder = Recorder()
    executor.listener = recorder
    return executor, recorder


def limit_buy(qty: float = 0.01, price: float = 59_000.0) -> OrderIntent:
    return OrderIntent(VENUE, SYMBOL, Side.BUY, OrderType.LIMIT, qty, price, strategy="mm")


# --- refusal ----------------------------------------------------------------------------------


def test_live_trading_is_refused_without_an_explicit_opt_in() -> None:
    venues = {VENUE: venue_settings("http://127.0.0.1:9")}
    with pytest.raises(LiveTradingRefused) as refused:
        LiveExecutor(venues, ExecutionSettings(mode="paper"), run_prefix("x"))
    message = str(refused.value)
    assert message.startswith("live trading refused: pass --live") and "\n" not in message
    settings = Settings(venues={VENUE: {"enabled": True, "api_key": API_KEY,
                                        "api_secret": API_SECRET}},
                        _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(LiveTradingRefused):
        LiveExecutor.from_settings(settings, "run")


def test_live_trading_is_refused_without_keys_even_with_the_flag() -> None:
    venues = {VENUE: VenueSettings(enabled=True, ccxt_id="binance")}
    with pytest.raises(LiveTradingRefused, match="no api_key/api_secret for binance_spot"):
        LiveExecutor(venues, ExecutionSettings(), run_prefix("x"), live=True)


# --- orders -------------------------------------------------------------------------------------


async def test_orders_are_placed_and_cancelled_with_our_client_order_ids(
        server: FakeBinance) -> None:
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        assert executor.balances(VENUE) == {"BTC": 1.0, "USDT": 100_000.0}
        order = limit_buy()
        ack = await executor.submit_and_wait(order, timeout_s=5)
        assert ack.status is OrderStatus.NEW and ack.exchange_order_id
        assert order.client_order_id.startswith(run_prefix("live-test") + "-mm-")
        (resting,) = server.open_orders()
        assert (resting.client_order_id, resting.price, resting.orig_qty) == (
            order.client_order_id, Decimal("59000.00"), Decimal("0.01"))
        executor.cancel(order.client_order_id, executor.now_ns)
        await executor.drain()
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW, OrderStatus.CANCELED]
        assert server.open_orders() == [] and executor.open_orders() == []
    finally:
        await executor.close()


async def test_prices_and_quantities_are_rounded_to_the_market_rules(
        server: FakeBinance) -> None:
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        buy = limit_buy(qty=0.0123456, price=59_000.019)
        sell = OrderIntent(VENUE, SYMBOL, Side.SELL, OrderType.POST_ONLY, 0.01, 61_000.011,
                           strategy="mm")
        tiny = limit_buy(qty=0.000001)
        for order in (buy, sell, tiny):
            executor.submit(order, executor.now_ns)
        await executor.drain()
        placed = {o.client_order_id: (o.price, o.orig_qty, o.type)
                  for o in server.open_orders()}
        assert placed == {
            buy.client_order_id: (Decimal("59000.01"), Decimal("0.01234"), "LIMIT"),
            sell.client_order_id: (Decimal("61000.02"), Decimal("0.01"), "LIMIT_MAKER")}
        assert seen.statuses(tiny.client_order_id) == [OrderStatus.REJECTED]
    finally:
        await executor.close()


async def test_fills_are_followed_by_polling_with_maker_fees(server: FakeBinance) -> None:
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        order = limit_buy(qty=0.01, price=59_000.0)
        await executor.submit_and_wait(order, timeout_s=5)
        server.fill(order.client_order_id, "0.004")
        await executor.poll_once(VENUE)
        server.fill(order.client_order_id, "0.006")
        await executor.poll_once(VENUE)
        assert [(f.qty, f.price, f.liquidity) for f in seen.fills] == [
            (pytest.approx(0.004), pytest.approx(59_000.0), "maker"),
            (pytest.approx(0.006), pytest.approx(59_000.0), "maker")]
        # Polling sees no fee: estimated at the venue's 10 bps maker fee, in USDT.
        assert [round(f.fee, 6) for f in seen.fills] == [0.236, 0.354]
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW, OrderStatus.FILLED]
        assert executor.balances(VENUE)["BTC"] == pytest.approx(1.0 + 0.01 * 0.999)
    finally:
        await executor.close()


async def test_marketable_orders_fill_at_once_with_the_venues_fee(server: FakeBinance) -> None:
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        order = OrderIntent(VENUE, SYMBOL, Side.BUY, OrderType.MARKET, 0.01, strategy="arb")
        await executor.submit_and_wait(order, timeout_s=5)
        await executor.drain()
        (fill,) = seen.fills
        assert (fill.price, fill.qty, fill.liquidity) == (60_000.01, 0.01, "taker")
        assert (fill.fee, fill.fee_asset) == (pytest.approx(0.00001), "BTC")
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW, OrderStatus.FILLED]
    finally:
        await executor.close()


async def test_background_polling_delivers_fills_to_the_async_stream(
        server: FakeBinance) -> None:
    executor, _ = make_executor(server.url)
    await executor.start()
    try:
        with executor.fills() as fills:
            order = limit_buy()
            await executor.submit_and_wait(order, timeout_s=5)
            server.fill(order.client_order_id, "0.01")
            fill = await asyncio.wait_for(anext(fills), 5)
        assert (fill.client_order_id, fill.qty) == (order.client_order_id, pytest.approx(0.01))
    finally:
        await executor.close()


async def test_a_failing_order_stream_falls_back_to_polling(server: FakeBinance) -> None:
    executor, seen = make_executor(server.url)
    exchange = executor.exchange(VENUE)
    attempts = 0

    async def broken_watch_orders(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        nonlocal attempts
        attempts += 1
        raise ccxt.NetworkError("binance websocket closed")

    exchange.has["watchOrders"] = True
    exchange.watch_orders = broken_watch_orders
    await executor.start()
    try:
        order = limit_buy()
        await executor.submit_and_wait(order, timeout_s=5)
        server.fill(order.client_order_id, "0.01")
        for _ in range(250):
            if seen.fills:
                break
            await asyncio.sleep(0.02)
        assert [f.client_order_id for f in seen.fills] == [order.client_order_id]
        assert attempts >= 1
    finally:
        await executor.close()


# --- retries: never a second order --------------------------------------------------------------


def orders_with(server: FakeBinance, client_order_id: str) -> list[Any]:
    return [o for o in server.orders.values() if o.client_order_id == client_order_id]


async def test_a_response_delayed_past_the_timeout_is_retried_with_the_same_id(
        server: FakeBinance) -> None:
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        server.order_faults = ["hold"]  # first POST waits until released
        order = limit_buy()
        executor.submit(order, executor.now_ns)
        await executor.drain()  # timeout, lookup (absent), retry with the same id: placed
        server.release()
        await server.idle()  # the held first attempt now arrives: a duplicate, refused
        assert server.posted_client_ids() == [order.client_order_id] * 2
        assert len(orders_with(server, order.client_order_id)) == 1
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW]
    finally:
        await executor.close()


async def test_a_dropped_response_is_found_by_looking_the_id_up(server: FakeBinance) -> None:
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        server.order_faults = ["drop"]  # placed, then the connection dies
        order = limit_buy()
        executor.submit(order, executor.now_ns)
        await executor.drain()
        assert server.posted_client_ids() == [order.client_order_id]
        assert len(orders_with(server, order.client_order_id)) == 1
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW]
        assert executor.open_orders()[0].client_order_id == order.client_order_id
    finally:
        await executor.close()


async def test_a_failed_lookup_is_retried_instead_of_the_order(server: FakeBinance) -> None:
    # Before issue 13 a failed lookup counted as "not there" and the order was sent again
    # (here a duplicate saved the day only because a resting limit order is still open).
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        server.order_faults = ["drop"]
        server.lookup_faults = ["unavailable"]  # the executor cannot tell yet: it asks again
        order = limit_buy()
        executor.submit(order, executor.now_ns)
        await executor.drain()
        assert server.posted_client_ids() == [order.client_order_id]
        assert len(orders_with(server, order.client_order_id)) == 1
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW]
        assert seen.acks[0].exchange_order_id == str(orders_with(server,
                                                                 order.client_order_id)[0].order_id)
    finally:
        await executor.close()


# --- unknown outcomes: exactly one order at the venue ------------------------------------------

#: The three kinds of order that fill at once, so that Binance's duplicate check (open
#: orders only) cannot stop a second one: a limit through the touch, an IOC, a market.
MARKETABLE = {
    "marketable limit": (OrderType.LIMIT, 60_010.0),
    "ioc": (OrderType.IOC, 60_010.0),
    "market": (OrderType.MARKET, None),
}


def gated_live(url: str, max_open_orders: int = 1,
               **options: Any) -> tuple[GatedExecutor, LiveExecutor, Recorder]:
    """The live executor behind the risk gate, with a fresh quote at the fake's touch."""
    executor, _ = make_executor(url, **options)
    gated = GatedExecutor(executor, RiskGate(RiskSettings(max_open_orders=max_open_orders)),
                          sink=MemorySink())
    seen = Recorder()
    gated.listener = seen
    return gated, executor, seen


def quote_now(gated: GatedExecutor) -> None:
    now = gated.now_ns
    gated.on_quote(Quote(VENUE, SYMBOL, 60_000.0, 1.0, 60_000.01, 1.0, now, now))


def position_at_venue(server: FakeBinance) -> float:
    return float(server.position("BTC"))


@pytest.mark.parametrize("kind", MARKETABLE, ids=list(MARKETABLE))
async def test_a_lost_response_with_failing_lookups_never_fills_twice(
        server: FakeBinance, kind: str) -> None:
    gated, executor, seen = gated_live(server.url)
    await executor.start(background=False)
    try:
        quote_now(gated)
        server.order_faults = ["drop"]  # the order is created and fills; the answer is lost
        server.lookup_delay_s = 1.0
        server.lookup_faults = ["unavailable", "timeout", "unavailable"]  # then it answers
        order_type, price = MARKETABLE[kind]
        order = OrderIntent(VENUE, SYMBOL, Side.BUY, order_type, 0.01, price, strategy="arb")
        assert gated.submit(order, gated.now_ns) is None
        await executor.drain()
        assert server.posted_client_ids() == [order.client_order_id]
        assert len(orders_with(server, order.client_order_id)) == 1
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW, OrderStatus.FILLED]
        assert position_at_venue(server) == pytest.approx(0.01)
        assert gated.gate.position("BTC") == pytest.approx(position_at_venue(server))
        assert gated.gate.open_order_count() == 0
    finally:
        await executor.close()


@pytest.mark.parametrize("kind", MARKETABLE, ids=list(MARKETABLE))
async def test_an_unknown_order_is_held_open_flagged_and_resolved_never_resent(
        server: FakeBinance, kind: str) -> None:
    gated, executor, seen = gated_live(
        server.url, execution_overrides={"unknown_order_timeout_s": 0.5})
    await executor.start(background=False)
    try:
        quote_now(gated)
        server.order_faults = ["drop"]
        server.lookup_outage = "unavailable"  # the venue cannot say, for longer than the bound
        order_type, price = MARKETABLE[kind]
        order = OrderIntent(VENUE, SYMBOL, Side.BUY, order_type, 0.01, price, strategy="arb")
        gated.submit(order, gated.now_ns)
        await executor.drain()
        cid = order.client_order_id
        # Flagged, not resent: one UNKNOWN ack saying so, counted for the operator.
        assert server.posted_client_ids() == [cid]
        assert seen.statuses(cid) == [OrderStatus.UNKNOWN]
        assert "not resent" in seen.acks[-1].reason
        assert executor.unknown_orders_flagged == 1
        # Open at full size for the risk gate and in flight for the strategy.
        assert gated.gate.open_order_count() == 1
        assert [o.client_order_id for o in executor.open_orders()] == [cid]
        quote_now(gated)
        another = limit_buy(price=59_900.0)
        assert gated.submit(another, gated.now_ns).startswith("max open orders")
        await executor.poll_once(VENUE)  # the venue still cannot say: nothing changes
        assert seen.statuses(cid) == [OrderStatus.UNKNOWN] and seen.fills == []
        # The venue answers again: reconciliation resolves the order, fills booked once.
        server.lookup_outage = ""
        await executor.poll_once(VENUE)
        assert seen.statuses(cid) == [OrderStatus.UNKNOWN, OrderStatus.NEW, OrderStatus.FILLED]
        assert server.posted_client_ids() == [cid]
        assert gated.gate.position("BTC") == pytest.approx(position_at_venue(server)) == 0.01
        assert gated.gate.open_order_count() == 0 and executor.open_orders() == []
    finally:
        await executor.close()


async def test_an_unknown_order_that_never_reached_the_venue_is_rejected_after_the_bound(
        server: FakeBinance) -> None:
    gated, executor, seen = gated_live(
        server.url, execution_overrides={"unknown_order_timeout_s": 0.3})
    await executor.start(background=False)
    try:
        quote_now(gated)
        server.order_faults = ["unavailable"] * 10  # 503: nothing created, nothing retried
        server.lookup_outage = "unavailable"
        order = limit_buy(price=59_900.0)
        assert gated.submit(order, gated.now_ns) is None
        await executor.drain()
        cid = order.client_order_id
        assert seen.statuses(cid) == [OrderStatus.UNKNOWN]
        server.lookup_outage = ""
        await executor.poll_once(VENUE)  # the venue answers: there is no such order
        assert seen.statuses(cid) == [OrderStatus.UNKNOWN, OrderStatus.REJECTED]
        assert server.posted_client_ids() == [cid] and server.orders == {}
        assert gated.gate.open_order_count() == 0
    finally:
        await executor.close()


async def test_a_503_before_processing_is_retried_once(server: FakeBinance) -> None:
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        server.order_faults = ["unavailable"]
        order = limit_buy()
        executor.submit(order, executor.now_ns)
        await executor.drain()
        assert server.posted_client_ids() == [order.client_order_id] * 2
        assert len(orders_with(server, order.client_order_id)) == 1
        assert seen.statuses(order.client_order_id) == [OrderStatus.NEW]
    finally:
        await executor.close()


async def test_insufficient_funds_is_rejected_without_retry(server: FakeBinance) -> None:
    executor, _ = make_executor(server.url)
    await executor.start(background=False)
    try:
        order = limit_buy(qty=10.0)  # 590,000 USDT
        ack = await executor.submit_and_wait(order, timeout_s=5)
        assert ack.status is OrderStatus.REJECTED
        assert ack.reason.startswith("InsufficientFunds:")
        assert server.posted_client_ids() == [order.client_order_id]
    finally:
        await executor.close()


# --- cancel-all on stop and on the kill switch: every cancel confirmed ----------------------------


async def place_resting(gated: GatedExecutor, executor: LiveExecutor, count: int) -> list[str]:
    quote_now(gated)
    intents = [limit_buy(qty=0.001, price=59_900.0 - 10 * i) for i in range(count)]
    for intent in intents:
        assert gated.submit(intent, gated.now_ns) is None
    await executor.drain()
    return [i.client_order_id for i in intents]


async def test_a_stop_cancels_every_order_before_the_executor_closes(server: FakeBinance) -> None:
    # The action mode's stop: cancel_all, then close at once. Before issue 13 close()
    # cancelled the cancel tasks before their requests went out: the orders stayed.
    gated, executor, seen = gated_live(server.url, max_open_orders=10)
    await executor.start(background=False)
    try:
        placed = await place_resting(gated, executor, 3)
        assert len(server.open_orders()) == 3
        server.cancel_faults = ["unavailable"]
        gated.cancel_all(gated.now_ns)
    finally:
        await executor.close()
    assert server.open_orders() == []
    for cid in placed:
        assert seen.statuses(cid)[-1] is OrderStatus.CANCELED


async def test_a_stop_while_a_submit_is_in_flight_cancels_that_order_too(
        server: FakeBinance) -> None:
    gated, executor, seen = gated_live(server.url, max_open_orders=10)
    await executor.start(background=False)
    try:
        quote_now(gated)
        in_flight = limit_buy(qty=0.001, price=59_800.0)  # sent just before the stop
        gated.submit(in_flight, gated.now_ns)
        gated.cancel_all(gated.now_ns)  # before issue 13: AttributeError on an order in flight
    finally:
        await executor.close()
    assert server.open_orders() == []
    assert seen.statuses(in_flight.client_order_id) == [OrderStatus.NEW, OrderStatus.CANCELED]


async def test_the_kill_switch_cancel_all_is_retried_until_each_cancel_is_confirmed(
        server: FakeBinance) -> None:
    gated, executor, seen = gated_live(server.url, max_open_orders=10)
    await executor.start(background=False)
    try:
        placed = await place_resting(gated, executor, 3)
        # More 503s than the cancels' own retries: before issue 13 the orders stayed.
        server.cancel_faults = ["unavailable"] * 16
        gated.kill_switch.fire("test: daily loss")
        await executor.drain()
        assert server.open_orders() == []
        assert [seen.statuses(cid)[-1] for cid in placed] == [OrderStatus.CANCELED] * 3
        assert executor.cancels_unconfirmed == 0
    finally:
        await executor.close()


async def test_a_cancel_all_leaves_orders_sent_after_it_alone(server: FakeBinance) -> None:
    # A flatten on kill is sent right after the kill switch's cancel-all.
    executor, seen = make_executor(server.url)
    await executor.start(background=False)
    try:
        before = limit_buy(qty=0.001)
        await executor.submit_and_wait(before, timeout_s=5)
        server.cancel_faults = ["unavailable"]  # the cancel-all is still busy ...
        executor.cancel_all(executor.now_ns)
        after = limit_buy(qty=0.001, price=58_000.0)
        executor.submit(after, executor.now_ns)  # ... when this one is sent
        await executor.drain()
        assert [o.client_order_id for o in server.open_orders()] == [after.client_order_id]
        assert seen.statuses(after.client_order_id) == [OrderStatus.NEW]
    finally:
        await executor.close()


async def test_cancels_the_venue_does_not_confirm_are_reported_by_client_order_id(
        server: FakeBinance) -> None:
    gated, executor, seen = gated_live(server.url, max_open_orders=10,
                                       execution_overrides={"shutdown_cancel_timeout_s": 0.5})
    await executor.start(background=False)
    try:
        placed = await place_resting(gated, executor, 2)
        server.cancel_faults = ["unavailable"] * 10_000
        server.lookup_outage = "unavailable"
        gated.kill_switch.fire("test: flag file")
        assert sorted(await executor.wait_cancel_all()) == sorted(placed)
        assert executor.cancels_unconfirmed == 2
        for cid in placed:
            last = [a for a in seen.acks if a.client_order_id == cid][-1]
            assert last.reason.startswith("cancel not confirmed within 0.5 s")
    finally:
        server.cancel_faults = []
        await executor.close()


# --- reconciliation ------------------------------------------------------------------------------


async def test_reconcile_cancels_our_leftover_orders_and_leaves_others(
        server: FakeBinance) -> None:
    earlier_run = run_prefix("an-earlier-run")
    server.add_open_order(f"{earlier_run}-mm-7", "BUY", "0.01", "58000.00")
    server.add_open_order("web_8c1f2a9d", "SELL", "0.02", "62000.00")
    executor, seen = make_executor(server.url, reconcile="cancel")
    await executor.start(background=False)
    try:
        assert executor.reconciled[VENUE] == {"canceled": [f"{earlier_run}-mm-7"],
                                              "adopted": [], "foreign": 1}
        assert [o.client_order_id for o in server.open_orders()] == ["web_8c1f2a9d"]
        assert seen.acks == [] and executor.open_orders() == []
    finally:
        await executor.close()


async def test_reconcile_adopts_our_leftover_orders_and_follows_them(server: FakeBinance) -> None:
    earlier_run = run_prefix("an-earlier-run")
    left = f"{earlier_run}-inventory_mm-7"
    server.add_open_order(left, "SELL", "0.02", "62000.00")
    server.add_open_order("web_8c1f2a9d", "SELL", "0.02", "63000.00")
    executor, seen = make_executor(server.url, reconcile="adopt")
    await executor.start(background=False)
    try:
        assert executor.reconciled[VENUE]["adopted"] == [left]
        assert [(a.client_order_id, a.status, a.reason) for a in seen.acks] == [
            (left, OrderStatus.NEW, "adopted at start")]
        (adopted,) = executor.open_orders()
        assert (adopted.side, adopted.qty, adopted.price, adopted.strategy) == (
            Side.SELL, 0.02, 62_000.0, "inventory_mm")
        server.fill(left, "0.005")
        await executor.poll_once(VENUE)
        assert [(f.qty, f.liquidity) for f in seen.fills] == [(pytest.approx(0.005), "maker")]
        executor.cancel(left, executor.now_ns)
        await executor.drain()
        assert seen.statuses(left)[-1] is OrderStatus.CANCELED
        assert [o.client_order_id for o in server.open_orders()] == ["web_8c1f2a9d"]
    finally:
        await executor.close()


# --- URLs, errors --------------------------------------------------------------------------------


async def test_rest_url_overrides_ccxt_endpoints_only_for_a_foreign_host() -> None:
    exchange = build_exchange(VENUE, venue_settings("https://api.binance.com"), websocket=True,
                              overrides={"timeout_on_exit": 0})
    try:
        assert exchange.urls["api"]["public"] == "https://api.binance.com/api/v3"
        assert redirect_urls(exchange, rest_url="http://127.0.0.1:8080/proxy")
        assert exchange.urls["api"]["public"] == "http://127.0.0.1:8080/proxy/api/v3"
        assert exchange.urls["api"]["sapi"] == "http://127.0.0.1:8080/proxy/sapi/v1"
        ws = exchange.urls["api"]["ws"]
        assert all("127.0.0.1" not in str(url) for url in ws.values())
    finally:
        await exchange.close()


@pytest.mark.parametrize(
    ("error", "kind", "retry"),
    [
        (ccxt.RequestTimeout("timeout"), ErrorKind.AMBIGUOUS, True),
        (ccxt.ExchangeNotAvailable("503"), ErrorKind.AMBIGUOUS, True),
        (TimeoutError(), ErrorKind.AMBIGUOUS, True),
        (ccxt.OperationFailed('{"code":-1006,"msg":"execution status unknown"}'),
         ErrorKind.AMBIGUOUS, True),
        (ccxt.RateLimitExceeded("-1003"), ErrorKind.RATE_LIMIT, True),
        (ccxt.DDoSProtection("429"), ErrorKind.RATE_LIMIT, True),
        (ccxt.InvalidNonce("-1021"), ErrorKind.CLOCK, True),
        (ccxt.InvalidOrder('binance {"code":-2010,"msg":"Duplicate order sent."}'),
         ErrorKind.DUPLICATE, False),
        (ccxt.InvalidOrder("bybit OrderLinkedID is duplicate"), ErrorKind.DUPLICATE, False),
        (ccxt.InsufficientFunds("balance"), ErrorKind.REJECTED, False),
        (ccxt.InvalidOrder("LOT_SIZE"), ErrorKind.REJECTED, False),
        (ccxt.OrderNotFound("-2013"), ErrorKind.NOT_FOUND, False),
        (ccxt.AuthenticationError("-2015"), ErrorKind.AUTH, False),
        (ValueError("bug"), ErrorKind.UNKNOWN, False),
    ],
)
def test_error_taxonomy(error: BaseException, kind: ErrorKind, retry: bool) -> None:
    assert classify(error) is kind
    assert should_retry(error) is retry


def test_redactor_removes_every_secret() -> None:
    redact = Redactor(API_KEY, API_SECRET, None, "")
    text = f"key={API_KEY}&secret={API_SECRET}"
    assert redact(text) == "key=***&secret=***"
    assert API_KEY not in repr(redact)
    wrapped = wrap_error(ccxt.AuthenticationError(f"bad key {API_KEY}"), redact)
    assert API_KEY not in str(wrapped) and wrapped.kind is ErrorKind.AUTH


# --- credentials never leak ----------------------------------------------------------------------


async def test_api_keys_never_appear_in_logs_errors_reprs_or_decisions(
        server: FakeBinance, caplog: pytest.LogCaptureFixture) -> None:
    captured = io.StringIO()
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=captured),
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    try:
        executor, seen = make_executor(server.url)
        sink = MemorySink()
        gated = GatedExecutor(executor, RiskGate(RiskSettings(max_order_notional=1_000.0)),
                              sink=sink)
        await executor.start(background=False)
        now = executor.now_ns
        gated.on_quote(Quote(VENUE, SYMBOL, 60_000.0, 1.0, 60_000.01, 1.0, now, now))
        gated.submit(limit_buy(qty=1.0), now)  # refused by the gate: recorded decision
        server.order_faults = ["hold"]
        executor.submit(limit_buy(qty=0.01), now)  # times out, looked up, retried
        executor.submit(limit_buy(qty=10.0, price=59_000.0), now)  # insufficient funds
        await executor.drain()
        server.release()
        await server.idle()
        texts += [repr(executor), repr(gated), repr(seen.acks), repr(seen.fills),
                  repr(sink.records), str(executor.__dict__.get("_redact"))]
        await executor.close()

        wrong, _ = make_executor(server.url, secret="W" * 64)
        with pytest.raises(ExecutionError) as failed:
            await wrong.start(background=False)
        await wrong.close()
        texts += [str(failed.value), repr(failed.value), repr(wrong)]
        assert failed.value.kind is ErrorKind.AUTH
    finally:
        structlog.configure(**saved)
    logs = captured.getvalue()
    assert "submit not confirmed" in logs and "intent refused" in logs  # we did capture
    # ccxt logs request headers at DEBUG: the key is there, scrubbed.
    assert "'X-MBX-APIKEY': '***'" in caplog.text
    assert any(isinstance(r, Decision) for r in sink.records)
    everything = "\n".join([logs, caplog.text, *texts])
    assert API_KEY not in everything
    assert API_SECRET not in everything
    assert "W" * 64 not in everything
