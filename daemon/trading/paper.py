"""Paper executor: a deterministic exchange simulator driven by market data and the feed clock.

Nothing here sleeps or reads the wall clock. Time moves only with `on_quote` / `on_trade`
(their `local_ts_ns`) and `advance(now_ns)`, so the same code trades on paper next to a
live feed and in a backtest on a simulated clock, with identical results for identical
input.

Order life (all times on the feed clock):

- `submit` at t: the order reaches the venue at t + `submit_latency_ms`. Only then is it
  validated (lot/tick rounding, minimum notional, post-only, balance), acked and
  matched. Before that it cannot fill, whatever the market does.
- `cancel` at t: takes effect at t + `cancel_latency_ms` (never before the order itself
  arrived). Until then the order can still fill; a cancel that comes too late is answered
  with the order's status and a "cancel rejected:" reason.

Fill rules:

- Marketable on arrival (market, IOC, or a limit that crosses): takes the displayed
  opposite touch up to its size, at the touch price (taker). With a depth provider that
  has levels for the market (`execution.walk_depth`: Binance `@depth` books, Bybit
  `orderbook.N`, live or recorded) it walks the book instead, one fill per level,
  bounded by the limit price (a market order by nothing but the book): the touch is the
  quote's (price and size), the levels beyond it are the depth book's. What is left
  expires (market, IOC) or rests at the limit price (limit). Post-only that would cross
  is rejected.
- Resting limit: fills at its own price (maker) when the opposite touch reaches it (size
  up to the displayed opposite size), or when a public trade prints at or through its
  price (size up to the print's size; the rest of the order stays).
- Liquidity is shared and not reused: one displayed size or one print is split among our
  orders in price priority, and what we took at a price level stays taken until the touch
  moves past that level (our paper fills never show up in the real feed, so without this
  the same displayed size would fill us again on every quote). A walk of the depth book
  remembers, per level, the size the level showed when we took from it. While the level
  shows that size or less, what we took stays taken (size gone since went to others:
  shown - taken is what would be left had our fills been real); once it shows more, the
  level was refilled and what we took is forgotten (new orders there are taken as
  replacing ours). The touch moving past a level forgets it too. Without depth nothing
  is refilled: the touch rule above, as before.
- Optional `queue_position=True`: an order that joins an existing price level waits
  behind the size displayed there when it arrived; prints exactly at its price eat that
  queue first, and an opposite touch merely equal to its price does not fill it. Orders
  placed behind the touch fill only on prints or quotes through their price. Off by
  default (the issue's rules); on, it is the conservative choice for market makers.
- `execution.queue_model = "probabilistic"` (settings; "none" is the default and the rules
  above): the queue above, plus cancellations. While an order's level is the touch, a drop
  of its displayed size that the prints at its price since the last quote do not explain
  (`cancelled = prev - new - printed`) is cancellations, and we move up by the share of
  them expected in front of us. That is hftbacktest's `ProbQueueModel` with its power
  function (https://github.com/nkaz001/hftbacktest, `PowerProbQueueFunc`): with `front`
  the size ahead of us and `back` the size behind (the level after the prints, less
  `front`), the chance a cancel came from behind is `prob = back^n / (back^n + front^n)`
  (`n = execution.queue_power`) and `front' = min(front - (1 - prob) * cancelled +
  min(back - prob * cancelled, 0), new)`. One deliberate difference: hftbacktest takes
  `back = prev - front`, counting the printed size as behind us; here it is taken out.
  Like hftbacktest this applies the expected advance, not a random draw, so a backtest is
  reproducible without a seed. A level that grows leaves us where we were (capped at the
  new size); a level that empties (the touch moves behind our price) puts us at the
  front; an order placed behind the touch joins the queue at the size shown when the
  touch reaches its price.

Accounting, per venue: balances start from `VenueSettings.balances`. Spot: a buy locks
quote (qty x limit price, plus the larger fee rate), a sell locks base; a fill moves base
and quote exactly and charges the maker or taker fee in the quote asset. Linear perps
(symbol with ":"): no base asset changes hands; the position per symbol (signed qty,
average entry) is tracked, realised P&L and fees settle in the quote currency. An order
locks, as margin, its fee plus notional / `leverage` for the part that adds to the
current position (an order that only reduces it needs just the fee; other open orders
are not netted); the open position's margin (size x entry / leverage) is not free either.
No funding, no liquidation.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from types import MappingProxyType

import numpy as np

from config.settings import ExecutionSettings, Settings, VenueSettings
from daemon.core.clock import NS_PER_MS
from daemon.core.logs import get_logger
from daemon.core.model import (
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Quote,
    Side,
    Trade,
    is_perp_symbol,
    split_symbol,
)
from daemon.core.quiet import QuietRows
from daemon.core.vocabulary import OrderStatus
from daemon.trading.events import ExecutionEvents
from daemon.trading.kernels import NO_LIMITS, first_crossing_row
from daemon.trading.order_ids import ClientOrderIds, run_prefix

log = get_logger("paper")

#: (venue, symbol, "bid" | "ask") -> best-first (price, size) levels, or None without depth.
DepthProvider = Callable[[str, str, str], Sequence[tuple[float, float]] | None]

_ARRIVE = 0
_CANCEL = 1
_CALL = 2
#: Finished orders remembered for late cancels and duplicate-id checks.
_DONE_MEMORY = 10_000
_INF = math.inf


class MarketRules:
    """Tick, lot and minimum notional of one market. Quantities round down to the lot;
    prices to the tick in the passive direction (buys down, sells up), never more
    aggressive than asked; an order worth less than `min_notional` (quote currency; 0 =
    none) is refused, as the venue's notional filter would."""

    __slots__ = ("_lot_decimals", "_tick_decimals", "lot", "min_notional", "tick")

    def __init__(self, tick: float, lot: float, min_notional: float = 0.0) -> None:
        if not (tick > 0 and lot > 0):
            raise ValueError(f"tick and lot must be positive, got tick={tick} lot={lot}")
        self.tick = tick
        self.lot = lot
        self.min_notional = min_notional
        # Rounding the product to the step's decimals removes binary noise (0.30000000000000004).
        self._tick_decimals = _decimals(tick)
        self._lot_decimals = _decimals(lot)

    def round_qty(self, qty: float) -> float:
        steps = math.floor(qty / self.lot + 1e-9)
        return round(steps * self.lot, self._lot_decimals)

    def round_price(self, price: float, side: Side) -> float:
        ratio = price / self.tick
        steps = math.floor(ratio + 1e-9) if side is Side.BUY else math.ceil(ratio - 1e-9)
        return round(steps * self.tick, self._tick_decimals)

    def __repr__(self) -> str:
        return f"MarketRules(tick={self.tick:g}, lot={self.lot:g})"


def _decimals(step: float) -> int:
    exponent = Decimal(repr(step)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


#: Used for markets without configured rules: effectively no rounding.
_FINE_RULES = MarketRules(tick=1e-8, lot=1e-8)


class _Order:
    """One paper order from submit to its terminal state."""

    __slots__ = (
        "base", "cancel_pending", "duplicate", "exchange_order_id", "filled", "intent",
        "kind", "level_printed", "level_qty", "live_at", "perp", "price", "qty", "queue_ahead",
        "quote", "reserve_asset", "reserved", "side", "status", "symbol", "venue",
    )  # fmt: skip

    def __init__(self, intent: OrderIntent, live_at: int) -> None:
        self.intent = intent
        self.venue = intent.venue
        self.symbol = intent.symbol
        side, kind = intent.side, intent.type
        self.side = side if type(side) is Side else Side(side)
        self.kind = kind if type(kind) is OrderType else OrderType(kind)
        self.base, self.quote, self.perp = _symbol_assets(intent.symbol)
        self.price = intent.price if intent.price is not None else math.nan
        self.qty = intent.qty
        self.filled = 0.0
        self.live_at = live_at
        self.status: OrderStatus | None = None  # None: in flight to the venue
        self.reserved = 0.0
        self.reserve_asset = ""
        self.queue_ahead = 0.0
        # queue_model "probabilistic": the size last shown at our level (NaN: not seen yet)
        # and what printed at our price since.
        self.level_qty = math.nan
        self.level_printed = 0.0
        self.cancel_pending = False
        self.duplicate = False
        self.exchange_order_id = ""

    @property
    def remaining(self) -> float:
        return self.qty - self.filled


@functools.lru_cache(maxsize=1024)
def _symbol_assets(symbol: str) -> tuple[str, str, bool]:
    """(base, quote, is linear perp) of a unified symbol; cached, it runs per order."""
    base, quote = split_symbol(symbol)
    return base, quote, is_perp_symbol(symbol)


def _price(order: _Order) -> float:
    return order.price


def _minus_price(order: _Order) -> float:
    return -order.price


class _Book:
    """What we know of one market: the last quote, our resting orders, liquidity we took."""

    __slots__ = ("best_buy", "best_sell", "buys", "highest_taken_bid", "lowest_taken_ask",
                 "quote", "sells", "shown_asks", "shown_bids", "taken_asks", "taken_bids")

    def __init__(self) -> None:
        self.quote: Quote | None = None
        self.buys: list[_Order] = []  # best (highest) price first, then time
        self.sells: list[_Order] = []  # best (lowest) price first, then time
        self.best_buy = -_INF
        self.best_sell = _INF
        # Size we took per price level; change them through `take` and `forget_passed`,
        # which keep the lowest taken ask and highest taken bid (NaN levels left out).
        self.taken_asks: dict[float, float] = {}
        self.taken_bids: dict[float, float] = {}
        self.lowest_taken_ask = _INF
        self.highest_taken_bid = -_INF
        # Depth walks only: the size a level showed when we took from it (see `taken_at`).
        self.shown_asks: dict[float, float] = {}
        self.shown_bids: dict[float, float] = {}

    def take(self, buying: bool, price: float, qty: float, shown: float | None = None) -> None:
        """We took `qty` at `price`: from the asks when buying, from the bids when selling.
        `shown`: the size the depth book showed there (a walk), remembered with it."""
        if buying:
            self.taken_asks[price] = self.taken_asks.get(price, 0.0) + qty
            if price < self.lowest_taken_ask:
                self.lowest_taken_ask = price
            if shown is not None:
                self.shown_asks.setdefault(price, shown)
        else:
            self.taken_bids[price] = self.taken_bids.get(price, 0.0) + qty
            if price > self.highest_taken_bid:
                self.highest_taken_bid = price
            if shown is not None:
                self.shown_bids.setdefault(price, shown)

    def taken_at(self, buying: bool, price: float, shown: float) -> float:
        """What we took at a level the depth book now shows `shown` at: 0 once the level
        was refilled (it shows more than when we took), and then forgotten."""
        taken, sizes = ((self.taken_asks, self.shown_asks) if buying
                        else (self.taken_bids, self.shown_bids))
        qty = taken.get(price, 0.0)
        if qty and shown > sizes.get(price, shown):
            del taken[price], sizes[price]
            if buying:
                self.lowest_taken_ask = _lowest(taken)
            else:
                self.highest_taken_bid = _highest(taken)
            return 0.0
        return qty

    def forget_passed(self, ask: float, bid: float) -> None:
        """Drop what we took at levels the touch has moved past: that liquidity is gone.

        Some taken ask lies below the new ask exactly when the lowest one does, so
        `on_quote` calls this only then: most quotes cost two comparisons instead of a
        look at every level (12-20 a side in the inventory-mm backtest, more in a trending
        market: 617 -> 131 ns for a quote with 21 levels held and none passed).
        """
        if ask > self.lowest_taken_ask:
            taken = self.taken_asks
            for price in [p for p in taken if p < ask]:
                del taken[price]
                self.shown_asks.pop(price, None)
            self.lowest_taken_ask = _lowest(taken)
        if bid < self.highest_taken_bid:
            taken = self.taken_bids
            for price in [p for p in taken if p > bid]:
                del taken[price]
                self.shown_bids.pop(price, None)
            self.highest_taken_bid = _highest(taken)

    def add(self, order: _Order) -> None:
        # insort puts an order after those at the same price: time priority within a price.
        if order.side is Side.BUY:
            bisect.insort(self.buys, order, key=_minus_price)
        else:
            bisect.insort(self.sells, order, key=_price)
        self._refresh()

    def remove(self, order: _Order) -> None:
        side = self.buys if order.side is Side.BUY else self.sells
        if order in side:
            side.remove(order)
            self._refresh()

    def _refresh(self) -> None:
        self.best_buy = self.buys[0].price if self.buys else -_INF
        self.best_sell = self.sells[0].price if self.sells else _INF


@dataclass(slots=True)
class PerpPosition:
    qty: float = 0.0  # signed base units
    entry_price: float = 0.0


class _Account:
    """Balances of one venue: totals, amounts locked by open orders, perp positions."""

    __slots__ = ("locked", "maker_fee", "positions", "taker_fee", "total", "view")

    def __init__(self, venue: VenueSettings) -> None:
        self.total: dict[str, float] = dict(venue.balances)
        self.locked: dict[str, float] = {}
        self.positions: dict[str, PerpPosition] = {}
        self.maker_fee = venue.maker_fee_bps * 1e-4
        self.taker_fee = venue.taker_fee_bps * 1e-4
        self.view = MappingProxyType(self.total)

    def free(self, asset: str, leverage: float) -> float:
        free = self.total.get(asset, 0.0) - self.locked.get(asset, 0.0)
        for symbol, position in self.positions.items():
            if position.qty and split_symbol(symbol)[1] == asset:
                free -= abs(position.qty) * position.entry_price / leverage
        return free

    def add(self, asset: str, amount: float) -> None:
        self.total[asset] = self.total.get(asset, 0.0) + amount

    def lock(self, asset: str, amount: float) -> None:
        self.locked[asset] = self.locked.get(asset, 0.0) + amount


class PaperExecutor(ExecutionEvents):
    """Simulated venues behind the Executor contract; see the module docstring for rules."""

    def __init__(
        self,
        venues: Mapping[str, VenueSettings],
        execution: ExecutionSettings | None = None,
        prefix: str | None = None,
        *,
        depth: DepthProvider | None = None,
        queue_position: bool = False,
        leverage: float = 1.0,
    ) -> None:
        super().__init__()
        execution = execution or ExecutionSettings()
        self._ids = ClientOrderIds(prefix or run_prefix("paper"))
        self._submit_latency_ns = int(execution.submit_latency_ms * NS_PER_MS)
        self._cancel_latency_ns = int(execution.cancel_latency_ms * NS_PER_MS)
        self._depth = depth
        probabilistic = execution.queue_model == "probabilistic"
        self._queue_position = queue_position or probabilistic
        #: n of the power queue model; None: no cancel advance (queue_model "none").
        self._queue_power = execution.queue_power if probabilistic else None
        if leverage <= 0:
            raise ValueError("leverage must be positive")
        self._leverage = leverage
        self._accounts = {venue_id: _Account(venue) for venue_id, venue in venues.items()}
        self._rules = {
            venue_id: {
                symbol: MarketRules(tick=float(rule["tick"]), lot=float(rule["lot"]),
                                    min_notional=float(rule.get("min_notional", 0.0)))
                for symbol, rule in venue.markets.items()
            }
            for venue_id, venue in venues.items()
        }
        self._books: dict[str, dict[str, _Book]] = {}
        self._open: dict[str, _Order] = {}
        self._done: OrderedDict[str, _Order] = OrderedDict()
        self._events: list[tuple[int, int, int, object]] = []
        self._seq = 0
        self._order_seq = 0
        self._fill_seq = 0
        self._now = 0

    @classmethod
    def from_settings(cls, settings: Settings, run_id: str, **options: object) -> PaperExecutor:
        venues = {v: s for v, s in settings.venues.items() if s.enabled}
        return cls(venues, settings.execution, run_prefix(run_id), **options)  # type: ignore[arg-type]

    # --- Executor contract ------------------------------------------------------------------

    @property
    def now_ns(self) -> int:
        """The feed clock: the latest event time seen."""
        return self._now

    @property
    def depth(self) -> DepthProvider | None:
        """The depth books marketable orders walk, or None (the touch only)."""
        return self._depth

    def assign_client_order_id(self, intent: OrderIntent) -> str:
        return self._ids.assign(intent)

    def submit(self, intent: OrderIntent, now_ns: int) -> None:
        client_order_id = self._ids.assign(intent)
        order = _Order(intent, max(now_ns, self._now) + self._submit_latency_ns)
        if client_order_id in self._open or client_order_id in self._done:
            order.duplicate = True  # the venue refuses it on arrival, as Binance does
        else:
            self._open[client_order_id] = order
        self._schedule(order.live_at, _ARRIVE, order)

    def cancel(self, client_order_id: str, now_ns: int) -> None:
        effective = max(now_ns, self._now) + self._cancel_latency_ns
        order = self._open.get(client_order_id)
        if order is not None:
            if order.cancel_pending:
                return
            order.cancel_pending = True
            # A cancel never overtakes its order: the venue would answer "unknown order".
            effective = max(effective, order.live_at)
        self._schedule(effective, _CANCEL, client_order_id)

    def cancel_all(self, now_ns: int, venue: str | None = None) -> None:
        for client_order_id, order in list(self._open.items()):
            if venue is None or order.venue == venue:
                self.cancel(client_order_id, now_ns)

    def balances(self, venue: str) -> Mapping[str, float]:
        """Total balance per asset (free + locked by open orders); read-only view."""
        account = self._accounts.get(venue)
        return account.view if account is not None else MappingProxyType({})

    def free_balance(self, venue: str, asset: str) -> float:
        account = self._accounts.get(venue)
        return account.free(asset, self._leverage) if account is not None else 0.0

    def positions(self, venue: str) -> dict[str, PerpPosition]:
        """Open linear-perp positions of a venue by symbol (copies)."""
        account = self._accounts.get(venue)
        if account is None:
            return {}
        return {s: replace(p) for s, p in account.positions.items() if p.qty}

    def open_orders(self) -> list[OrderIntent]:
        """Orders in flight or resting, with their remaining qty and (rounded) price."""
        return [
            replace(o.intent, qty=o.remaining,
                    price=None if math.isnan(o.price) else o.price)
            for o in self._open.values()
        ]

    def open_order_count(self) -> int:
        return len(self._open)

    @property
    def next_event_ns(self) -> int | None:
        """Feed time of the earliest pending arrival, cancel or `call_at` callback; None
        when nothing is pending. Until then a market event of a market we have no order in
        changes nothing here but the clock (a backtest skips such events on that basis,
        daemon/backtest/skip.py)."""
        events = self._events
        return events[0][0] if events else None

    def on_quote(self, quote: Quote) -> None:
        now = quote.local_ts_ns
        if self._events and self._events[0][0] <= now:
            self._run_due(now)
        elif now > self._now:
            self._now = now
        venue_books = self._books.get(quote.exchange)
        if venue_books is None:
            venue_books = self._books[quote.exchange] = {}
        book = venue_books.get(quote.symbol)
        if book is None:
            book = venue_books[quote.symbol] = _Book()
        book.quote = quote
        if quote.stale:
            return
        if quote.ask > book.lowest_taken_ask or quote.bid < book.highest_taken_bid:
            book.forget_passed(quote.ask, quote.bid)
        if self._queue_power is not None:
            self._watch_queues(book, quote, self._queue_power)
        if quote.ask <= book.best_buy:
            self._cross_resting(book, book.buys, quote.ask, quote.ask_qty)
        if quote.bid >= book.best_sell:
            self._cross_resting(book, book.sells, quote.bid, quote.bid_qty)

    def on_trade(self, trade: Trade) -> None:
        now = trade.local_ts_ns
        if self._events and self._events[0][0] <= now:
            self._run_due(now)
        elif now > self._now:
            self._now = now
        venue_books = self._books.get(trade.exchange)
        book = venue_books.get(trade.symbol) if venue_books is not None else None
        if book is None:
            return
        if self._queue_power is not None:
            _note_print(book, trade)
        if trade.price <= book.best_buy:
            self._trade_through(book, book.buys, trade)
        if trade.price >= book.best_sell:
            self._trade_through(book, book.sells, trade)

    def advance(self, now_ns: int) -> None:
        """Move the feed clock: process arrivals, cancels and timers due by `now_ns`."""
        self._run_due(now_ns)

    def print_reaches_orders(self, venue: str, symbol: str, price: float) -> bool:
        """Would a public trade at `price` fill one of our resting orders in this market
        (the test `on_trade` makes)? If not, a trade changes nothing here but the clock."""
        venue_books = self._books.get(venue)
        book = venue_books.get(symbol) if venue_books is not None else None
        return book is not None and (price <= book.best_buy or price >= book.best_sell)

    @property
    def quiet_rows(self) -> bool:
        """Whether `first_loud` can tell quiet rows: not with queue positions, which every
        quote and print of a market with our orders may move."""
        return self._queue_power is None

    def first_loud(self, rows: QuietRows, start: int, stop: int) -> int:
        """The first of rows [start, stop) this executor must see as an event
        (daemon/core/quiet.py): a quote that crosses a resting order or passes a level we
        took, a print at or through a resting order. Before it, a quote only becomes its
        market's book quote and the clock moves (what is due by time the caller bounds,
        `next_event_ns`). `start` if it cannot tell (`quiet_rows`)."""
        if not self.quiet_rows:
            return start
        limits = np.empty((len(rows.keys), 4))
        limits[:] = NO_LIMITS
        for key_id, (venue, symbol) in enumerate(rows.keys):
            venue_books = self._books.get(venue)
            book = venue_books.get(symbol) if venue_books is not None else None
            if book is not None:
                limits[key_id] = (book.best_buy, book.best_sell, book.lowest_taken_ask,
                                  book.highest_taken_bid)
        return first_crossing_row(rows.kind, rows.key, rows.price, rows.ask, rows.stale, start,
                                  stop, limits)

    def note_time(self, now_ns: int) -> None:
        """Move the feed clock to `now_ns` and land nothing: what a market event of a
        market without our orders does when nothing is due by its own time (a backtest
        that skipped such events catches the clock up with this). Unlike `advance`, an
        event due at exactly the clock's newest time waits for the next market event,
        as it would have."""
        if now_ns > self._now:
            self._now = now_ns

    # --- hooks for the other paper components (transfers, tests) ----------------------------

    def call_at(self, at_ns: int, callback: Callable[[int], None]) -> None:
        """Run `callback(feed_time)` when the feed clock reaches `at_ns`, in order with
        order arrivals and cancels (paper transfers arrive this way)."""
        self._schedule(at_ns, _CALL, callback)

    def credit(self, venue: str, asset: str, amount: float) -> None:
        """Add (or with a negative amount, remove) balance outside trading (transfers)."""
        self._account(venue).add(asset, amount)

    def quote(self, venue: str, symbol: str) -> Quote | None:
        book = self._books.get(venue, {}).get(symbol)
        return book.quote if book is not None else None

    def market_rules(self, venue: str, symbol: str) -> MarketRules:
        return self._rules.get(venue, {}).get(symbol, _FINE_RULES)

    # --- events ---------------------------------------------------------------------------

    def _schedule(self, at_ns: int, kind: int, payload: object) -> None:
        heapq.heappush(self._events, (at_ns, self._seq, kind, payload))
        self._seq += 1

    def _run_due(self, now_ns: int) -> None:
        events = self._events
        while events and events[0][0] <= now_ns:
            at_ns, _, kind, payload = heapq.heappop(events)
            if at_ns > self._now:
                self._now = at_ns
            if kind == _ARRIVE:
                self._arrive(payload)  # type: ignore[arg-type]
            elif kind == _CANCEL:
                self._apply_cancel(payload)  # type: ignore[arg-type]
            else:
                payload(at_ns)  # type: ignore[operator]
        if now_ns > self._now:
            self._now = now_ns

    def _account(self, venue: str) -> _Account:
        account = self._accounts.get(venue)
        if account is None:  # a venue with no configured balances starts empty
            account = self._accounts[venue] = _Account(VenueSettings())
        return account

    def _book(self, venue: str, symbol: str) -> _Book:
        venue_books = self._books.setdefault(venue, {})
        book = venue_books.get(symbol)
        if book is None:
            book = venue_books[symbol] = _Book()
        return book

    # --- arrival ----------------------------------------------------------------------------

    def _arrive(self, order: _Order) -> None:
        """The order reaches the venue: validate, ack, match, rest or expire."""
        reason = self._validate(order)
        book = self._book(order.venue, order.symbol)
        plan: list[tuple[float, float, float]] = []
        if reason is None:
            quote = book.quote
            crosses = self._crosses(order, quote)
            if order.kind is OrderType.POST_ONLY and crosses:
                reason = f"post-only would cross: {_touch_text(order, quote)}"
            elif order.kind is OrderType.MARKET and quote is None:
                reason = "no market data for a market order"
            elif crosses:
                plan = self._plan_take(order, book)
            if reason is None:
                reason = self._reserve(order, plan)
        if reason is not None:
            self._reject(order, reason)
            return
        self._order_seq += 1
        order.exchange_order_id = f"paper-{self._order_seq}"
        order.status = OrderStatus.NEW
        self._ack(order, OrderStatus.NEW)
        buying = order.side is Side.BUY
        for price, qty, shown in plan:
            book.take(buying, price, qty, None if shown != shown else shown)  # NaN: no depth
            self._fill(order, price, qty, "taker")
        if order.status in (OrderStatus.FILLED, OrderStatus.CANCELED):
            return
        if order.kind in (OrderType.MARKET, OrderType.IOC):
            self._finish(order, OrderStatus.EXPIRED, "unfilled remainder of an IOC/market order")
            return
        self._rest(order, book)

    def _validate(self, order: _Order) -> str | None:
        if order.duplicate:
            return f"duplicate client order id {order.intent.client_order_id}"
        rules = self.market_rules(order.venue, order.symbol)
        qty = rules.round_qty(order.qty)
        if qty <= 0:
            return f"qty {order.qty:g} rounds to 0 at lot {rules.lot:g}"
        order.qty = qty
        if order.kind is not OrderType.MARKET:
            if not order.price > 0:  # also catches NaN (no price given)
                return f"{order.kind} order needs a positive price"
            order.price = rules.round_price(order.price, order.side)
        if rules.min_notional:
            return self._below_min_notional(order, rules.min_notional)
        return None

    def _below_min_notional(self, order: _Order, min_notional: float) -> str | None:
        """A market order is valued at the opposite touch (not checked without a quote)."""
        price = order.price
        if order.kind is OrderType.MARKET:
            quote = self._book(order.venue, order.symbol).quote
            price = (quote.ask if order.side is Side.BUY else quote.bid) if quote else math.nan
        notional = order.qty * price
        if notional < min_notional:  # False for NaN: no price, no check
            return f"notional {notional:g} below the market's minimum {min_notional:g}"
        return None

    @staticmethod
    def _crosses(order: _Order, quote: Quote | None) -> bool:
        if order.kind is OrderType.MARKET:
            return True
        if quote is None:
            return False
        return order.price >= quote.ask if order.side is Side.BUY else order.price <= quote.bid

    def _plan_take(self, order: _Order, book: _Book) -> list[tuple[float, float, float]]:
        """Taker fills on arrival, as (price, qty, size shown or NaN): the touch (or the
        depth walk), less what we already took."""
        quote = book.quote
        assert quote is not None
        buying = order.side is Side.BUY
        touch, touch_qty = (quote.ask, quote.ask_qty) if buying else (quote.bid, quote.bid_qty)
        levels: Sequence[tuple[float, float]] | None = None
        if self._depth is not None:
            levels = self._depth(order.venue, order.symbol, "ask" if buying else "bid")
        limit = order.price if order.kind is not OrderType.MARKET else (
            _INF if buying else -_INF)
        if not levels:
            taken = book.taken_asks if buying else book.taken_bids
            if touch > limit if buying else touch < limit:
                return []
            available = touch_qty - taken.get(touch, 0.0)
            qty = min(order.qty, available)
            return [(touch, qty, math.nan)] if qty > 0.0 else []
        plan: list[tuple[float, float, float]] = []
        left = order.qty
        # The quote's touch first, then the book's levels beyond it: a depth book that
        # lags the quote (Binance's @depth@100ms behind bookTicker) never fills better.
        for price, size in _beyond(touch, touch_qty, levels, buying):
            if price > limit if buying else price < limit:
                break
            available = size - book.taken_at(buying, price, size)
            if available <= 0.0:
                continue
            qty = min(left, available)
            plan.append((price, qty, size))
            left -= qty
            if left <= 0.0:
                break
        return plan

    def _reserve(self, order: _Order, plan: list[tuple[float, float, float]]) -> str | None:
        """Lock what the order may spend; None if the balance covers it, else the reason."""
        account = self._account(order.venue)
        fee_rate = max(account.maker_fee, account.taker_fee)
        if order.kind is OrderType.MARKET:
            notional = sum(price * qty for price, qty, _ in plan)
        else:
            notional = order.price * order.qty
        if order.perp:
            # Margin only for what the order adds to the position: closing must always work.
            position = account.positions.get(order.symbol)
            held = position.qty if position is not None else 0.0
            signed = order.qty if order.side is Side.BUY else -order.qty
            added = max(0.0, abs(held + signed) - abs(held)) / order.qty
            asset = order.quote
            need = notional * added / self._leverage + notional * fee_rate
        elif order.side is Side.BUY:
            asset, need = order.quote, notional * (1.0 + fee_rate)
        else:
            asset, need = order.base, order.qty
        free = account.free(asset, self._leverage)
        if need > free + 1e-12:
            return f"insufficient balance: need {need:.8g} {asset}, free {free:.8g}"
        account.lock(asset, need)
        order.reserved = need
        order.reserve_asset = asset
        return None

    def _rest(self, order: _Order, book: _Book) -> None:
        if self._queue_position:
            order.queue_ahead = _queue_ahead(order, book.quote)
            if self._queue_power is not None and order.queue_ahead != _INF:
                order.level_qty = order.queue_ahead  # at the touch; 0 better than it
        book.add(order)

    @staticmethod
    def _watch_queues(book: _Book, quote: Quote, power: float) -> None:
        """Queue model "probabilistic": follow the size shown at our orders' levels. Orders
        behind the touch see nothing of their level, so only those at or better than it
        (a level that emptied: shown size 0) are looked at."""
        for order in book.buys:
            if order.price < quote.bid:
                break
            _level_moved(order, quote.bid_qty if order.price == quote.bid else 0.0, power)
        for order in book.sells:
            if order.price > quote.ask:
                break
            _level_moved(order, quote.ask_qty if order.price == quote.ask else 0.0, power)

    # --- matching against market data -------------------------------------------------------

    def _cross_resting(self, book: _Book, orders: list[_Order], touch: float,
                       displayed: float) -> None:
        """The opposite touch reached resting orders: fill them at their own prices."""
        buying = orders is book.buys  # our buys take the asks
        taken = book.taken_asks if buying else book.taken_bids
        available = displayed - taken.get(touch, 0.0)
        if available <= 0.0:
            return
        queue = self._queue_position
        for order in tuple(orders):
            if (touch > order.price) if order.side is Side.BUY else (touch < order.price):
                break
            if queue and touch == order.price and order.queue_ahead > 0.0:
                continue  # locked at our price with others ahead: not filled yet
            qty = min(order.remaining, available)
            book.take(buying, touch, qty)
            available -= qty
            self._fill(order, order.price, qty, "maker")
            if available <= 0.0:
                break

    def _trade_through(self, book: _Book, orders: list[_Order], trade: Trade) -> None:
        """A print at or through resting orders fills them, sharing the print's size."""
        left = trade.qty
        queue = self._queue_position
        for order in tuple(orders):
            if (trade.price > order.price) if order.side is Side.BUY else (
                    trade.price < order.price):
                break
            if queue and trade.price == order.price and order.queue_ahead > 0.0:
                eaten = min(order.queue_ahead, left)
                order.queue_ahead -= eaten
                left -= eaten
                if left <= 0.0:
                    break
            qty = min(order.remaining, left)
            if qty <= 0.0:
                break
            left -= qty
            self._fill(order, order.price, qty, "maker")
            if left <= 0.0:
                break

    # --- fills and the ledger -----------------------------------------------------------------

    def _fill(self, order: _Order, price: float, qty: float, liquidity: str) -> None:
        account = self._account(order.venue)
        fee = price * qty * (account.maker_fee if liquidity == "maker" else account.taker_fee)
        release = order.reserved * qty / order.remaining
        order.reserved -= release
        account.lock(order.reserve_asset, -release)
        if order.perp:
            self._settle_perp(account, order, price, qty, fee)
        elif order.side is Side.BUY:
            account.add(order.quote, -(price * qty + fee))
            account.add(order.base, qty)
        else:
            account.add(order.base, -qty)
            account.add(order.quote, price * qty - fee)
        order.filled += qty
        self._fill_seq += 1
        intent = order.intent
        self._emit_fill(Fill(
            intent.client_order_id, order.venue, order.symbol, order.side, price, qty, fee,
            order.quote, liquidity, self._now, intent.strategy, f"paper-{self._fill_seq}",
        ))
        if order.remaining <= order.qty * 1e-9:
            self._finish(order, OrderStatus.FILLED)
        else:
            order.status = OrderStatus.PARTIALLY_FILLED

    def _settle_perp(self, account: _Account, order: _Order, price: float, qty: float,
                     fee: float) -> None:
        position = account.positions.get(order.symbol)
        if position is None:
            position = account.positions[order.symbol] = PerpPosition()
        signed = qty if order.side is Side.BUY else -qty
        realised = 0.0
        if position.qty == 0.0 or (position.qty > 0) == (signed > 0):
            size = abs(position.qty) + qty
            position.entry_price = (abs(position.qty) * position.entry_price + qty * price) / size
            position.qty += signed
        else:
            closing = min(qty, abs(position.qty))
            direction = 1.0 if position.qty > 0 else -1.0
            realised = closing * (price - position.entry_price) * direction
            position.qty += signed
            if abs(position.qty) <= qty * 1e-9:
                position.qty = 0.0
                position.entry_price = 0.0
            elif (position.qty > 0) != (direction > 0):  # flipped: the rest opened at price
                position.entry_price = price
        account.add(order.quote, realised - fee)

    # --- terminal states ----------------------------------------------------------------------

    def _apply_cancel(self, client_order_id: str) -> None:
        order = self._open.get(client_order_id)
        if order is None:
            done = self._done.get(client_order_id)
            if done is None:
                self._emit_ack(OrderAck(client_order_id, "", "", OrderStatus.REJECTED, self._now,
                                        reason="cancel rejected: unknown order"))
            else:
                self._ack(done, done.status or OrderStatus.REJECTED,
                          f"cancel rejected: order already {done.status}")
            return
        self._finish(order, OrderStatus.CANCELED, "canceled on request")

    def _reject(self, order: _Order, reason: str) -> None:
        log.debug("order rejected", client_order_id=order.intent.client_order_id, reason=reason)
        self._finish(order, OrderStatus.REJECTED, reason)

    def _finish(self, order: _Order, status: OrderStatus, reason: str = "") -> None:
        """Leave the book: release what is still locked, remember the order, ack."""
        if order.reserved:
            self._account(order.venue).lock(order.reserve_asset, -order.reserved)
            order.reserved = 0.0
        if order.status is not None:  # it was live: it may rest in the book
            self._book(order.venue, order.symbol).remove(order)
        order.status = status
        client_order_id = order.intent.client_order_id
        if not order.duplicate:
            self._open.pop(client_order_id, None)
            self._done[client_order_id] = order
            if len(self._done) > _DONE_MEMORY:
                self._done.popitem(last=False)
        self._ack(order, status, reason)

    def _ack(self, order: _Order, status: OrderStatus, reason: str = "") -> None:
        self._emit_ack(OrderAck(
            order.intent.client_order_id, order.venue, order.symbol, status, self._now,
            order.exchange_order_id, reason, order.filled,
        ))


def _lowest(prices: dict[float, float]) -> float:
    """The lowest key, NaN left out (it compares false, as in `forget_passed`); inf if none."""
    lowest = _INF
    for price in prices:
        if price < lowest:
            lowest = price
    return lowest


def _highest(prices: dict[float, float]) -> float:
    """The highest key, NaN left out; -inf if none."""
    highest = -_INF
    for price in prices:
        if price > highest:
            highest = price
    return highest


def _beyond(touch: float, touch_qty: float, levels: Sequence[tuple[float, float]],
            buying: bool) -> Iterator[tuple[float, float]]:
    """The touch, then the book's levels strictly worse than it (best first)."""
    yield touch, touch_qty
    for price, size in levels:
        if price > touch if buying else price < touch:
            yield price, size


def _queue_ahead(order: _Order, quote: Quote | None) -> float:
    """Size ahead of a new resting order at its price level, as far as the touch shows."""
    if quote is None:
        return _INF
    touch, size = (quote.bid, quote.bid_qty) if order.side is Side.BUY else (
        quote.ask, quote.ask_qty)
    if order.price == touch:
        return size
    better = order.price > touch if order.side is Side.BUY else order.price < touch
    return 0.0 if better else _INF


def _note_print(book: _Book, trade: Trade) -> None:
    """Remember a print at our orders' price: it explains that much of the level's drop."""
    price = trade.price
    for order in book.buys:
        if order.price < price:
            break
        if order.price == price:
            order.level_printed += trade.qty
    for order in book.sells:
        if order.price > price:
            break
        if order.price == price:
            order.level_printed += trade.qty


def _level_moved(order: _Order, shown: float, power: float) -> None:
    """The size shown at the order's level is now `shown`: move its queue (hftbacktest's
    ProbQueueModel with the power function, see the module docstring)."""
    previous, printed = order.level_qty, order.level_printed
    order.level_qty = shown
    order.level_printed = 0.0
    front = order.queue_ahead
    cancelled = previous - shown - printed  # NaN when the level was not seen before
    if not cancelled > 0.0 or front <= 0.0:
        order.queue_ahead = min(front, shown)  # grew, or all explained: only the cap
        return
    back = max(previous - printed - front, 0.0)
    behind = back**power
    prob = behind / (behind + front**power)
    ahead = front - (1.0 - prob) * cancelled + min(back - prob * cancelled, 0.0)
    order.queue_ahead = max(0.0, min(ahead, shown))


def _touch_text(order: _Order, quote: Quote | None) -> str:
    if quote is None:
        return "no quote"
    if order.side is Side.BUY:
        return f"price {order.price:g} >= ask {quote.ask:g}"
    return f"price {order.price:g} <= bid {quote.bid:g}"
