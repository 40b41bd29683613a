"""Fakes for strategy tests: clock, market and account views, a fill simulator, a driver.

`Driver` plays the runner's part as `daemon/trading/runner.py` describes it (market events first
to the exchange, then to the strategy; acks and fills queued so no callback nests in
another; the timer fired from event time), without the risk gate or the decision log,
so strategy tests do not depend on the action layer's progress.
"""

from __future__ import annotations

import gzip
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon.core.model import (
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Quote,
    Side,
    Trade,
    split_symbol,
)
from daemon.core.routes import Callbacks
from daemon.core.vocabulary import OrderStatus

NS = 1_000_000_000
START_NS = 1_723_161_600 * NS  # 2024-08-09 00:00:00 UTC


class FakeClock:
    def __init__(self, now_ns: int = START_NS) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> int:
        self.now_ns += int(seconds * NS)
        return self.now_ns


class RollingVolatility:
    """Realised volatility of log mids per sqrt-second over a trailing window (incremental)."""

    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * NS)
        self._returns: deque[tuple[int, float]] = deque()
        self._sum_sq = 0.0
        self._last: tuple[int, float] | None = None
        self._first_ts: int | None = None

    def add(self, ts_ns: int, mid: float) -> None:
        if self._last is not None and mid != self._last[1]:
            squared = math.log(mid / self._last[1]) ** 2
            self._returns.append((ts_ns, squared))
            self._sum_sq += squared
        if self._first_ts is None:
            self._first_ts = ts_ns
        self._last = (ts_ns, mid)
        while self._returns and self._returns[0][0] < ts_ns - self.window_ns:
            self._sum_sq -= self._returns.popleft()[1]

    def value(self) -> float:
        if self._last is None or self._first_ts is None or len(self._returns) < 2:
            return math.nan
        start = max(self._first_ts, self._last[0] - self.window_ns)
        elapsed_s = (self._last[0] - start) / NS
        return math.sqrt(max(self._sum_sq, 0.0) / elapsed_s) if elapsed_s > 0 else math.nan


class FakeMarket:
    """MarketView: quotes as published, volatility fixed per key or rolling from quotes."""

    def __init__(self) -> None:
        self.quotes: dict[tuple[str, str], Quote] = {}
        self.sigma: dict[tuple[str, str], float] = {}
        self.rolling: dict[tuple[str, str], RollingVolatility] = {}
        self.volatility_calls = 0

    def publish(self, quote: Quote) -> None:
        self.quotes[quote.key] = quote
        rolling = self.rolling.get(quote.key)
        if rolling is not None and not quote.crossed:
            rolling.add(quote.local_ts_ns, quote.mid)

    def quote(self, exchange: str, symbol: str) -> Quote | None:
        return self.quotes.get((exchange, symbol))

    def volatility(self, exchange: str, symbol: str, window_s: float) -> float:
        self.volatility_calls += 1
        rolling = self.rolling.get((exchange, symbol))
        if rolling is not None:
            return rolling.value()
        return self.sigma.get((exchange, symbol), math.nan)

    def trade_rate(self, exchange: str, symbol: str, window_s: float) -> float:
        return math.nan


class FakeAccount:
    """AccountView over plain dicts: venue -> asset -> balance."""

    def __init__(self, balances: dict[str, dict[str, float]] | None = None) -> None:
        self.by_venue = {venue: dict(assets) for venue, assets in (balances or {}).items()}

    def balances(self, venue: str) -> dict[str, float]:
        return self.by_venue.setdefault(venue, {})

    def add(self, venue: str, asset: str, amount: float) -> None:
        assets = self.balances(venue)
        assets[asset] = assets.get(asset, 0.0) + amount


@dataclass
class _Resting:
    intent: OrderIntent
    remaining: float
    filled: float = 0.0


@dataclass
class FakeExchange:
    """A small fill simulator behind the Executor contract, answering at once.

    Marketable orders (market, IOC, crossing limit) take the displayed touch at the touch
    price, times `fill_ratio` of the venue; post-only orders that would cross are
    rejected; resting orders fill at their price when the opposite touch reaches them
    or a public trade prints at or through them. Fees in the quote asset; balances move.
    """

    account: FakeAccount
    fee_bps: float = 10.0
    fill_ratio: dict[str, float] = field(default_factory=dict)
    reject_venues: set[str] = field(default_factory=set)
    listener: object = None
    quotes: dict[tuple[str, str], Quote] = field(default_factory=dict)
    resting: dict[str, _Resting] = field(default_factory=dict)
    submitted: list[OrderIntent] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    now_ns: int = 0

    def submit(self, intent: OrderIntent, now_ns: int) -> None:
        self.submitted.append(intent)
        if intent.venue in self.reject_venues:
            self._ack(intent, OrderStatus.REJECTED, 0.0, "venue rejects")
            return
        quote = self.quotes.get((intent.venue, intent.symbol))
        touch = None if quote is None else (quote.ask if intent.side is Side.BUY else quote.bid)
        marketable = touch is not None and (
            intent.type is OrderType.MARKET or intent.price is None
            or (intent.side is Side.BUY and intent.price >= touch)
            or (intent.side is Side.SELL and intent.price <= touch))
        if intent.type is OrderType.POST_ONLY and marketable:
            self._ack(intent, OrderStatus.REJECTED, 0.0, "post-only would cross")
            return
        self._ack(intent, OrderStatus.NEW, 0.0)
        filled = 0.0
        if marketable and quote is not None and touch is not None:
            displayed = quote.ask_qty if intent.side is Side.BUY else quote.bid_qty
            filled = min(intent.qty, displayed) * self.fill_ratio.get(intent.venue, 1.0)
            if filled > 0:
                self._fill(intent, touch, filled, "taker")
        if intent.type in (OrderType.MARKET, OrderType.IOC):
            status = OrderStatus.FILLED if filled >= intent.qty * (1 - 1e-9) \
                else OrderStatus.EXPIRED
            self._ack(intent, status, filled)
        elif filled < intent.qty:
            self.resting[intent.client_order_id] = _Resting(intent, intent.qty - filled, filled)
        else:
            self._ack(intent, OrderStatus.FILLED, filled)

    def cancel(self, client_order_id: str, now_ns: int) -> None:
        order = self.resting.pop(client_order_id, None)
        if order is not None:
            self._ack(order.intent, OrderStatus.CANCELED, order.filled)

    def cancel_all(self, now_ns: int, venue: str | None = None) -> None:
        for client_order_id in list(self.resting):
            self.cancel(client_order_id, now_ns)

    def balances(self, venue: str) -> dict[str, float]:
        return self.account.balances(venue)

    def open_orders(self) -> list[OrderIntent]:
        return [order.intent for order in self.resting.values()]

    def on_quote(self, quote: Quote) -> None:
        self.quotes[quote.key] = quote
        self.now_ns = quote.local_ts_ns
        for order in list(self.resting.values()):
            intent = order.intent
            if intent.venue != quote.exchange or intent.symbol != quote.symbol:
                continue
            price = intent.price or 0.0
            if intent.side is Side.BUY and quote.ask <= price:
                self._fill_resting(order, min(order.remaining, quote.ask_qty))
            elif intent.side is Side.SELL and quote.bid >= price:
                self._fill_resting(order, min(order.remaining, quote.bid_qty))

    def on_trade(self, trade: Trade) -> None:
        self.now_ns = trade.local_ts_ns
        for order in list(self.resting.values()):
            intent = order.intent
            if intent.venue != trade.exchange or intent.symbol != trade.symbol:
                continue
            price = intent.price or 0.0
            if (intent.side is Side.BUY and trade.side == "sell" and trade.price <= price) or (
                    intent.side is Side.SELL and trade.side == "buy" and trade.price >= price):
                self._fill_resting(order, min(order.remaining, trade.qty))

    def advance(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def _fill_resting(self, order: _Resting, qty: float) -> None:
        if qty <= 0:
            return
        self._fill(order.intent, order.intent.price or 0.0, qty, "maker")
        order.remaining -= qty
        order.filled += qty
        if order.remaining <= order.intent.qty * 1e-9:
            del self.resting[order.intent.client_order_id]
            self._ack(order.intent, OrderStatus.FILLED, order.filled)

    def _fill(self, intent: OrderIntent, price: float, qty: float, liquidity: str) -> None:
        base, quote_asset = split_symbol(intent.symbol)
        fee = price * qty * self.fee_bps * 1e-4
        sign = intent.side.sign
        self.account.add(intent.venue, base, sign * qty)
        self.account.add(intent.venue, quote_asset, -sign * price * qty - fee)
        fill = Fill(intent.client_order_id, intent.venue, intent.symbol, intent.side, price, qty,
                    fee, quote_asset, liquidity, self.now_ns, intent.strategy)
        self.fills.append(fill)
        if self.listener is not None:
            self.listener.on_fill(fill)

    def _ack(self, intent: OrderIntent, status: OrderStatus, filled: float,
             reason: str = "") -> None:
        if self.listener is not None:
            self.listener.on_ack(OrderAck(intent.client_order_id, intent.venue, intent.symbol,
                                          status, self.now_ns, reason=reason,
                                          filled_qty=filled))


class Driver:
    """The runner's event path in miniature; every Decision is kept in `decisions`."""

    def __init__(self, strategy: object, exchange: FakeExchange, market: FakeMarket,
                 account: FakeAccount, clock: FakeClock) -> None:
        self.strategy = strategy
        self.exchange = exchange
        self.market = market
        self.clock = clock
        self.decisions: list[Decision] = []
        self.after_event: Callable[[], None] | None = None
        self._queue: deque[Callable[[], Decision | None]] = deque()
        self._busy = False
        interval = strategy.timer_interval_s  # type: ignore[attr-defined]
        self._timer_ns = int(interval * NS) if interval else 0
        self._next_timer_ns = 0
        exchange.listener = self
        strategy.bind(market, account, clock)  # type: ignore[attr-defined]

    def feed(self, events: Iterable[Quote | Trade]) -> None:
        for event in events:
            if isinstance(event, Quote):
                self.quote(event)
            else:
                self.trade(event)

    def quote(self, quote: Quote) -> None:
        self.clock.now_ns = max(self.clock.now_ns, quote.local_ts_ns)
        self.market.publish(quote)
        self.exchange.on_quote(quote)
        self._dispatch(lambda: self.strategy.on_quote(quote))  # type: ignore[attr-defined]
        self._timer(quote.local_ts_ns)

    def trade(self, trade: Trade) -> None:
        self.clock.now_ns = max(self.clock.now_ns, trade.local_ts_ns)
        self.exchange.on_trade(trade)
        self._dispatch(lambda: self.strategy.on_trade(trade))  # type: ignore[attr-defined]
        self._timer(trade.local_ts_ns)

    def on_ack(self, ack: OrderAck) -> None:
        self._dispatch(lambda: self.strategy.on_ack(ack))  # type: ignore[attr-defined]

    def on_fill(self, fill: Fill) -> None:
        self._dispatch(lambda: self.strategy.on_fill(fill))  # type: ignore[attr-defined]

    def _timer(self, now_ns: int) -> None:
        if not self._timer_ns or now_ns < self._next_timer_ns:
            return
        if self._next_timer_ns:
            self._dispatch(lambda: self.strategy.on_timer(now_ns))  # type: ignore[attr-defined]
        self._next_timer_ns = now_ns + self._timer_ns

    def _dispatch(self, callback: Callable[[], Decision | None]) -> None:
        self._queue.append(callback)
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                self._apply(self._queue.popleft()())
                if self.after_event is not None:
                    self.after_event()
        finally:
            self._busy = False

    def _apply(self, decision: Decision | None) -> None:
        if decision is None:
            return
        self.decisions.append(decision)
        now = self.clock()
        for client_order_id in decision.cancels:
            self.exchange.cancel(client_order_id, now)
        for intent in decision.intents:
            self.exchange.submit(intent, now)

    def actions(self, action: str) -> list[Decision]:
        return [d for d in self.decisions if d.action == action]


# --- recorded data -------------------------------------------------------------------------


def load_binance_recording(path: Path, venue: str = "binance_spot",
                           limit: int | None = None) -> list[Quote | Trade]:
    """Quotes and trades of a `<local ns> <frame json>` gzip recording, in file order.

    Uses the project's `BinanceParser` when it is importable; otherwise a minimal reader
    of the two combined-stream frame kinds the strategies need (bookTicker, trade).
    """
    events: list[Quote | Trade] = []
    try:
        from adapters.binance.parser import BinanceParser
    except ImportError:
        for local_ns, frame in _lines(path, limit):
            event = _minimal_parse(venue, local_ns, frame)
            if event is not None:
                events.append(event)
        return events
    parser = BinanceParser(venue, Callbacks(events.append, events.append))
    for local_ns, frame in _lines(path, limit):
        parser.feed(frame, local_ns)
    return events


def _lines(path: Path, limit: int | None) -> Iterator[tuple[int, bytes]]:
    with gzip.open(path, "rb") as handle:
        for count, line in enumerate(handle):
            if limit is not None and count >= limit:
                return
            stamp, _, frame = line.rstrip(b"\n").partition(b" ")
            if stamp.isdigit() and frame:
                yield int(stamp), frame


def _minimal_parse(venue: str, local_ns: int, frame: bytes) -> Quote | Trade | None:
    import orjson

    message = orjson.loads(frame)
    stream = message.get("stream", "") if isinstance(message, dict) else ""
    data = message.get("data", {}) if stream else {}
    if stream.endswith("@bookTicker"):
        return Quote(venue, "BTC/USDT", float(data["b"]), float(data["B"]), float(data["a"]),
                     float(data["A"]), 0, local_ns, int(data["u"]))
    if stream.endswith("@trade"):
        return Trade(venue, "BTC/USDT", float(data["p"]), float(data["q"]),
                     "sell" if data["m"] else "buy", int(data["T"]) * 1_000_000, local_ns,
                     str(data["t"]))
    return None
