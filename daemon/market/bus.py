"""The normalised top-of-book bus.

`publish_quote` / `publish_trade` are synchronous and never block the adapter that calls
them. On every publish the bus first updates the consolidated view, runs its sinks (the ring
buffer: history stays complete whatever the subscribers do), then offers the event to every
subscription:

- quotes are conflated per subscriber: a subscriber that falls behind sees only the newest
  quote per (exchange, symbol); each overwritten quote is counted as conflated;
- trades are never conflated: each subscriber has a bounded queue; on overflow the oldest
  trade is dropped, counted and logged.

A subscriber receives quotes and trades in the order they were published, except that a
conflated quote takes the place of the newest update for its key.

Each (exchange, symbol) has a channel that holds that path resolved in advance: the view's
slot for the key and each sink's route for it (the key's ring). Parsers publish through
the channel of the key (`quote_route` / `trade_route`, the bus is a `MarketSink`), which
skips every per-event key lookup; `publish_quote` / `publish_trade` take any key and find
its channel. Why: per quote, the lookups and calls between a parser and the ring cost more
than the ring's own write (bench/bench_ingest.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from msgspec.structs import replace

from daemon.core.logs import get_logger
from daemon.core.model import Quote, Trade
from daemon.core.routes import (
    Callbacks,
    DepthCallback,
    MarketSink,
    QuoteCallback,
    TradeCallback,
    ignore,
)
from daemon.market.depth import DepthBooks
from daemon.market.view import ConsolidatedView

log = get_logger("bus")

Key = tuple[str, str]


class Subscription:
    """One consumer's view of the bus: latest quote per key plus a bounded trade queue."""

    __slots__ = (
        "_pending_quotes",
        "_signalled",
        "_trades",
        "_wakeup",
        "conflated",
        "delivered",
        "name",
        "trade_capacity",
        "trades_dropped",
        "wants_trades",
    )

    def __init__(self, name: str, wants_trades: bool, trade_capacity: int) -> None:
        self.name = name
        self.wants_trades = wants_trades
        self.trade_capacity = trade_capacity
        # key -> (publish sequence, quote); re-inserted on update so dict order = publish order
        self._pending_quotes: dict[Key, tuple[int, Quote]] = {}
        self._trades: deque[tuple[int, Trade]] = deque()
        self._wakeup = asyncio.Event()
        # Mirrors "_wakeup is set": a publish skips the set() call when it is already set.
        self._signalled = False
        self.conflated = 0
        self.delivered = 0
        self.trades_dropped = 0

    def _offer_quote(self, seq: int, key: Key, quote: Quote) -> None:
        pending = self._pending_quotes
        if pending.pop(key, None) is not None:
            self.conflated += 1
        pending[key] = (seq, quote)
        if not self._signalled:
            self._signalled = True
            self._wakeup.set()

    def _offer_trade(self, seq: int, trade: Trade) -> None:
        trades = self._trades
        if len(trades) >= self.trade_capacity:
            trades.popleft()
            self.trades_dropped += 1
            if self.trades_dropped == 1 or self.trades_dropped % 1000 == 0:
                log.warning("trade_queue_overflow", subscriber=self.name,
                            dropped=self.trades_dropped, capacity=self.trade_capacity)
        trades.append((seq, trade))
        if not self._signalled:
            self._signalled = True
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._pending_quotes) + len(self._trades)

    def get_nowait(self) -> Quote | Trade | None:
        """The next event in publish order, or None when nothing is pending."""
        quotes, trades = self._pending_quotes, self._trades
        if quotes:
            first_key = next(iter(quotes))
            quote_seq = quotes[first_key][0]
            if trades and trades[0][0] < quote_seq:
                event: Quote | Trade = trades.popleft()[1]
            else:
                event = quotes.pop(first_key)[1]
        elif trades:
            event = trades.popleft()[1]
        else:
            return None
        self.delivered += 1
        return event

    async def get(self) -> Quote | Trade:
        """Wait for the next event."""
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            await self._sleep()

    def drain(self) -> list[Quote | Trade]:
        """Everything pending, in publish order (for consumers that work in batches)."""
        events: list[Quote | Trade] = []
        while (event := self.get_nowait()) is not None:
            events.append(event)
        return events

    async def wait(self) -> None:
        """Return once at least one event is pending."""
        while not self.pending:
            await self._sleep()

    async def _sleep(self) -> None:
        self._signalled = False
        self._wakeup.clear()
        await self._wakeup.wait()

    def __aiter__(self) -> AsyncIterator[Quote | Trade]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Quote | Trade]:
        while True:
            yield await self.get()


class QuoteChannel:
    """The quote path of one (exchange, symbol): view slot, sink routes, subscribers."""

    __slots__ = ("_bus", "_latest", "exchange", "key", "published", "routes")

    def __init__(self, bus: Bus, exchange: str, symbol: str) -> None:
        self._bus = bus
        self.exchange = exchange
        self.key = (exchange, symbol)
        self._latest = bus.view.slot(symbol)
        self.routes: tuple[QuoteCallback, ...] = ()
        self.published = 0

    def publish(self, quote: Quote) -> None:
        """Publish a quote of this channel's key (the parser's hot path)."""
        self.published += 1
        self._latest[self.exchange] = quote
        for route in self.routes:
            route(quote)
        if self._bus._subscriptions:
            self._bus._offer_quote(self.key, quote)


class TradeChannel:
    """The trade path of one (exchange, symbol): sink routes, subscribers."""

    __slots__ = ("_bus", "published", "routes")

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.routes: tuple[TradeCallback, ...] = ()
        self.published = 0

    def publish(self, trade: Trade) -> None:
        """Publish a trade of this channel's key."""
        self.published += 1
        for route in self.routes:
            route(trade)
        if self._bus._trade_subscriptions:
            self._bus._offer_trade(trade)


class Bus:
    """Fan-out of normalised market data from adapters to sinks, the view and subscribers."""

    def __init__(self, trade_queue_size: int = 10_000) -> None:
        self.trade_queue_size = trade_queue_size
        self.view = ConsolidatedView()
        self._sinks: list[MarketSink] = []
        # exchange -> symbol -> channel: two str-keyed lookups are cheaper than hashing a
        # (exchange, symbol) tuple built for the purpose.
        self._quote_channels: dict[str, dict[str, QuoteChannel]] = {}
        self._trade_channels: dict[str, dict[str, TradeChannel]] = {}
        self._subscriptions: list[Subscription] = []
        self._trade_subscriptions: list[Subscription] = []
        self._seq = 0
        #: Delivery counters of subscriptions that have gone (totals stay monotonic).
        self._departed = {"delivered": 0, "conflated": 0, "trades_dropped": 0}
        self.stale_marks = 0
        #: Depth books from the parsers that keep them; None: depth not wanted (the
        #: parsers' depth routes are None and cost nothing). See `keep_depth`.
        self.depth: DepthBooks | None = None
        #: Called with (exchange, symbol) after a key is flagged stale (synthetic markets
        #: follow their legs); stale flags skip the sinks, so they need their own hook.
        self._stale_listeners: list[Callable[[str, str], None]] = []

    # -- wiring ---------------------------------------------------------------------------

    def add_sink(
        self,
        sink: MarketSink | None = None,
        *,
        on_quote: QuoteCallback | None = None,
        on_trade: TradeCallback | None = None,
    ) -> None:
        """A synchronous consumer of every event, run before subscribers (ring, recorder).

        Either a `MarketSink` (its route for each key is asked for once) or plain
        callbacks for every key.
        """
        if sink is None:
            sink = Callbacks(on_quote or ignore, on_trade or ignore)
        self._sinks.append(sink)
        self.refresh_routes()

    def refresh_routes(self) -> None:
        """Ask every sink for its routes again (one that changed which keys it takes)."""
        for exchange, channels in self._quote_channels.items():
            for symbol, channel in channels.items():
                channel.routes = self._quote_routes(exchange, symbol)
        for exchange, trade_channels in self._trade_channels.items():
            for symbol, trade_channel in trade_channels.items():
                trade_channel.routes = self._trade_routes(exchange, symbol)

    def listened(self, exchange: str, symbol: str) -> bool:
        """Whether anything but the view takes this key's events: a sink's route, or any
        subscriber (a backtest may then not leave out events of the key: quiet rows)."""
        return bool(self._quote_routes(exchange, symbol) or self._trade_routes(exchange, symbol)
                    or self._subscriptions or self._trade_subscriptions)

    def keep_depth(self, clock: Callable[[], int] | None = None) -> DepthBooks:
        """Keep the depth books parsers send (the paper executor walks them). Call it
        before the feed starts: a parser asks for a key's depth route once."""
        if self.depth is None:
            self.depth = DepthBooks(clock)
        return self.depth

    def depth_route(self, exchange: str, symbol: str) -> DepthCallback | None:
        """Where a parser sends one key's depth changes; None unless `keep_depth`."""
        return self.depth.route(exchange, symbol) if self.depth is not None else None

    def on_stale(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(exchange, symbol)` each time a key is newly flagged stale."""
        self._stale_listeners.append(listener)

    def subscribe(
        self, name: str, trades: bool = True, trade_queue_size: int | None = None
    ) -> Subscription:
        subscription = Subscription(name, trades, trade_queue_size or self.trade_queue_size)
        self._subscriptions.append(subscription)
        if trades:
            self._trade_subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
            for name in self._departed:
                self._departed[name] += getattr(subscription, name)
        if subscription in self._trade_subscriptions:
            self._trade_subscriptions.remove(subscription)

    # -- channels (the bus as a MarketSink) -------------------------------------------------

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback:
        """The publish function for quotes of one key (what parsers call)."""
        return self._quote_channel(exchange, symbol).publish

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback:
        """The publish function for trades of one key."""
        return self._trade_channel(exchange, symbol).publish

    def published_by(self, exchange: str) -> int:
        """Quotes and trades of `exchange` published so far (every symbol): whether a
        connection delivered market data, for the reconnect backoff."""
        quotes = self._quote_channels.get(exchange, {}).values()
        trades = self._trade_channels.get(exchange, {}).values()
        return sum(c.published for c in quotes) + sum(c.published for c in trades)

    def _quote_channel(self, exchange: str, symbol: str) -> QuoteChannel:
        channels = self._quote_channels.setdefault(exchange, {})
        channel = channels.get(symbol)
        if channel is None:
            channel = channels[symbol] = QuoteChannel(self, exchange, symbol)
            channel.routes = self._quote_routes(exchange, symbol)
        return channel

    def _trade_channel(self, exchange: str, symbol: str) -> TradeChannel:
        channels = self._trade_channels.setdefault(exchange, {})
        channel = channels.get(symbol)
        if channel is None:
            channel = channels[symbol] = TradeChannel(self)
            channel.routes = self._trade_routes(exchange, symbol)
        return channel

    # Each sink's route for a key, leaving out the sinks that ignore the kind.

    def _quote_routes(self, exchange: str, symbol: str) -> tuple[QuoteCallback, ...]:
        routes = (sink.quote_route(exchange, symbol) for sink in self._sinks)
        return tuple(route for route in routes if route is not ignore)

    def _trade_routes(self, exchange: str, symbol: str) -> tuple[TradeCallback, ...]:
        routes = (sink.trade_route(exchange, symbol) for sink in self._sinks)
        return tuple(route for route in routes if route is not ignore)

    # -- hot path -------------------------------------------------------------------------

    def publish_quote(self, quote: Quote) -> None:
        """Publish a quote of any key (a parser holding its key's route skips the lookup)."""
        try:
            channel = self._quote_channels[quote.exchange][quote.symbol]
        except KeyError:
            channel = self._quote_channel(quote.exchange, quote.symbol)
        channel.publish(quote)

    def publish_trade(self, trade: Trade) -> None:
        """Publish a trade of any key."""
        try:
            channel = self._trade_channels[trade.exchange][trade.symbol]
        except KeyError:
            channel = self._trade_channel(trade.exchange, trade.symbol)
        channel.publish(trade)

    def _offer_quote(self, key: Key, quote: Quote) -> None:
        self._seq += 1
        for subscription in self._subscriptions:
            subscription._offer_quote(self._seq, key, quote)

    def _offer_trade(self, trade: Trade) -> None:
        self._seq += 1
        for subscription in self._trade_subscriptions:
            subscription._offer_trade(self._seq, trade)

    def mark_stale(self, exchange: str, symbol: str) -> Quote | None:
        """Flag the latest quote of a key stale; strategies see it and stop acting on it.

        The stale copy goes to the view and subscribers, not to the sinks: it is not new
        market data. The next good quote for the key clears the flag.
        """
        latest = self.view.quote(exchange, symbol)
        if latest is None or latest.stale:
            return latest
        stale = replace(latest, stale=True)
        self.stale_marks += 1
        self.view.update(stale)
        self._offer_quote((exchange, symbol), stale)
        for listener in self._stale_listeners:
            listener(exchange, symbol)
        return stale

    # -- counters -------------------------------------------------------------------------

    @property
    def published_quotes(self) -> int:
        return sum(c.published for cs in self._quote_channels.values() for c in cs.values())

    @property
    def published_trades(self) -> int:
        return sum(c.published for cs in self._trade_channels.values() for c in cs.values())

    def quoted_keys(self) -> set[Key]:
        """The markets that have published at least one quote (not for the hot path)."""
        return {(exchange, symbol) for exchange, channels in self._quote_channels.items()
                for symbol, channel in channels.items() if channel.published}

    def published_keys(self) -> set[Key]:
        """The markets that have published a quote or a trade (not for the hot path)."""
        traded = {(exchange, symbol) for exchange, channels in self._trade_channels.items()
                  for symbol, channel in channels.items() if channel.published}
        return self.quoted_keys() | traded

    def counters(self) -> dict[str, int]:
        subs = self._subscriptions
        gone = self._departed
        return {
            "published_quotes": self.published_quotes,
            "published_trades": self.published_trades,
            "delivered": gone["delivered"] + sum(s.delivered for s in subs),
            "conflated": gone["conflated"] + sum(s.conflated for s in subs),
            "trades_dropped": gone["trades_dropped"] + sum(s.trades_dropped for s in subs),
            "stale_marks": self.stale_marks,
        }

