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
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from msgspec.structs import replace

from daemon.logs import get_logger
from daemon.model import Quote, Trade
from daemon.view import ConsolidatedView

log = get_logger("bus")

QuoteSink = Callable[[Quote], None]
TradeSink = Callable[[Trade], None]
Key = tuple[str, str]


class Subscription:
    """One consumer's view of the bus: latest quote per key plus a bounded trade queue."""

    __slots__ = (
        "_pending_quotes",
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
        self.conflated = 0
        self.delivered = 0
        self.trades_dropped = 0

    def _offer_quote(self, seq: int, quote: Quote) -> None:
        pending = self._pending_quotes
        key = (quote.exchange, quote.symbol)
        if pending.pop(key, None) is not None:
            self.conflated += 1
        pending[key] = (seq, quote)
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
            self._wakeup.clear()
            await self._wakeup.wait()

    def drain(self) -> list[Quote | Trade]:
        """Everything pending, in publish order (for consumers that work in batches)."""
        events: list[Quote | Trade] = []
        while (event := self.get_nowait()) is not None:
            events.append(event)
        return events

    async def wait(self) -> None:
        """Return once at least one event is pending."""
        while not self.pending:
            self._wakeup.clear()
            await self._wakeup.wait()

    def __aiter__(self) -> AsyncIterator[Quote | Trade]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Quote | Trade]:
        while True:
            yield await self.get()


class Bus:
    """Fan-out of normalised market data from adapters to sinks, the view and subscribers."""

    def __init__(self, trade_queue_size: int = 10_000) -> None:
        self.trade_queue_size = trade_queue_size
        self.view = ConsolidatedView()
        self._quote_sinks: list[QuoteSink] = []
        self._trade_sinks: list[TradeSink] = []
        self._subscriptions: list[Subscription] = []
        self._trade_subscriptions: list[Subscription] = []
        self._seq = 0
        #: Delivery counters of subscriptions that have gone (totals stay monotonic).
        self._departed = {"delivered": 0, "conflated": 0, "trades_dropped": 0}
        self.published_quotes = 0
        self.published_trades = 0
        self.stale_marks = 0

    # -- wiring ---------------------------------------------------------------------------

    def add_sink(
        self, on_quote: QuoteSink | None = None, on_trade: TradeSink | None = None
    ) -> None:
        """Synchronous consumers run on every publish, before subscribers (ring, recorder)."""
        if on_quote is not None:
            self._quote_sinks.append(on_quote)
        if on_trade is not None:
            self._trade_sinks.append(on_trade)

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

    # -- hot path -------------------------------------------------------------------------

    def publish_quote(self, quote: Quote) -> None:
        self.published_quotes += 1
        self.view.update(quote)
        for sink in self._quote_sinks:
            sink(quote)
        if self._subscriptions:
            self._seq += 1
            for subscription in self._subscriptions:
                subscription._offer_quote(self._seq, quote)

    def publish_trade(self, trade: Trade) -> None:
        self.published_trades += 1
        for sink in self._trade_sinks:
            sink(trade)
        if self._trade_subscriptions:
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
        self._seq += 1
        for subscription in self._subscriptions:
            subscription._offer_quote(self._seq, stale)
        return stale

    # -- counters -------------------------------------------------------------------------

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
