"""Inventory market making on one venue and symbol (Avellaneda & Stoikov 2008).

Each evaluation turns the market into two passive quotes:

1. sigma: the market view's rolling volatility of log mid returns (per sqrt-second),
   converted to price units, sigma_abs = mid * sigma_log, as the model wants;
2. k: set per bps of mid (`k_bps`, so one value suits any price level; the kernel gets
   k = k_bps / (mid * 1e-4) in 1/price), or "auto": fitted to the rates at which public
   trades print at or beyond each distance (in bps) from the mid our quotes were priced at
   (at most one requote interval old), lambda(delta) = A exp(-k delta)
   (`fit_arrival_decay`), never below `k_auto_floor_bps`; until `k_auto_min_trades` have
   been seen it skips (logged again as the count grows), and every decision's inputs carry
   `k_state` and `k_trades`;
3. `as_quotes_rolling_horizon` with a constant rolling horizon tau = `horizon_s` (a 24/7
   market has no session end). The model's unit of inventory is one order of `order_qty`
   (Delta), as in the paper where each fill moves q by one: the kernel gets q / Delta
   lots and gamma * Delta, which gives, per base unit,
       r      = mid - q gamma sigma^2 tau                      (q in base units)
       spread = gamma Delta sigma^2 tau + (2 / (gamma Delta)) ln(1 + gamma Delta / k).
   Passing q in base units with gamma unscaled would price the spread term per
   (base unit)^2: for BTC it would be hundreds of dollars at any useful gamma, or the
   inventory skew would vanish;
4. the fee floor: each quote at least maker fee + `min_edge_bps` from the mid (unless
   `allow_quotes_inside_fees`), so every fill earns an edge after fees; then
   prices to the venue tick (bid down, ask up, never through the opposite touch, so a
   post-only order rests); sizes `order_qty`, shrunk as exp(-size_decay q / max_inventory)
   on the side that adds risk, capped so no fill can take |q| past `max_inventory`,
   floored to the lot;
5. resting orders within `delta_price_bps` / `delta_size` of the target, and not inside
   the fee floor, are kept: a
   Decision carries cancels and new intents only for the sides that changed;
6. the direction flip (seed market-making-rebalancing): after more than
   `one_sided_fills_limit` quote fills in a row on one side (an order's partial fills count
   once), only the side that reduces the inventory is quoted, at most |q| of it, until
   |q| <= `flip_release_inventory` * max_inventory. The decision that starts it reads
   "direction flip: ...", the one that ends it "direction flip over: ..."; every quote's
   inputs carry `quoting_sides` ("both" | "ask only" | "bid only") and `fill_streak`.

Units: prices in quote currency per base unit, inventory q in base units (the net of this
strategy's quoting fills; portfolio-rebalancing trades move P&L but not q), P&L in quote
currency marked at mid (rebalances in other markets at their latest mids), times in
seconds of the injected clock.

Decisions (`inputs` documented on `_quote_inputs`):
- "quote": new intents and/or cancels; "hold": orders already at target (returned by
  `on_timer` only, so holds are logged once per interval, not per quote);
- "skip": no quoting, with the reason (stale, crossed or too narrow market, volatility or
  k unknown); resting orders are cancelled; logged when the reason changes. The spread
  filter has hysteresis: after a narrow market it quotes again only once the spread is
  `min_market_spread_margin_bps` past the minimum, or has held at or above it for
  `min_market_spread_hold_s` (a spread hovering at the threshold would otherwise flip
  quote/skip many times a minute and spend the order-rate limit on it);
- "max_loss_exit": P&L below the loss limit: cancel all, flatten with a market order,
  stop. The limit is `max_loss`, or `max_loss_pct` % of the starting equity (the venue
  portfolio at the first usable quote) when that is smaller; the inputs carry
  `loss_limit`, `loss_limit_source` ("max_loss" | "max_loss_pct") and `starting_equity`;
- "portfolio_rebalance": a trade back to the target weights (`target_weights`, asset ->
  share of the venue portfolio, the quote asset holding the rest; `target_base_weight` is
  its one-asset case): the asset furthest from its target, when past
  `rebalance_threshold`, one IOC at the touch of its market against the quote asset (the
  quoted symbol for the base, ASSET/QUOTE for the others, which join `market_keys`), at
  most the touch's size and the risk gate's `max_order_notional`: a big drift trades in
  slices, one per timer tick once the previous one is done. An asset without market
  rules or a usable quote is reported in a "skip" naming it (once per reason, quotes
  untouched) and nothing is rebalanced until it has one. Not "rebalance", which is a
  transfer between venues that the runner routes to the transfer service;
- "flatten": after the kill switch, a market order closing the inventory (only when built
  with `flatten_on_kill`; the runner itself logs the kill and cancels the orders).
`Decision.expected`, in quote currency: for "quote"/"hold" the spread captured against the
mid if both target orders fill; for "max_loss_exit" the P&L the exit locks in.

positions.csv (`POSITION_COLUMNS`) is appended during the run, through the sink the mode
attaches (the run's report folder), every `positions_every_fills` fills or
`positions_every_s` seconds of the feed clock, and once at the end: one row per market.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from daemon.core.clock import NS_PER_SECOND, Clock
from daemon.core.model import (
    Decision,
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
from daemon.core.vocabulary import Action, OrderStatus
from strategies.base import AccountView, ExportSink, MarketView, StrategyBase
from strategies.kernels_mm import (
    NO_SKIP,
    SKIP_CROSSED,
    SKIP_NARROW,
    SKIP_STALE,
    QuoteCheck,
    as_quotes,
    as_quotes_rolling_horizon,
    first_requote_row,
    fit_arrival_decay,
    trades_since,
)
from strategies.order_ids import OrderIds

if TYPE_CHECKING:  # settings are data handed in by the factory; no runtime dependency
    from config.settings import InventoryMMSettings, VenueSettings

__all__ = ["InventoryMMStrategy", "as_quotes", "as_quotes_rolling_horizon"]

BPS = 1e-4
#: k auto: distances from the quoting mid at which arrival rates are counted, in bps.
ARRIVAL_GRID_BPS = np.arange(1, 81) * 0.25
#: k auto: ring of (time, distance) of the latest trades; at 200 trades/s it spans 5 min.
TRADE_HISTORY = 1 << 16
#: A move of the mid re-evaluates at most every requote_interval / this.
REQUOTE_SPACING_DIVISOR = 10
#: Why a quote of the market is not quoted on (besides a narrow spread).
STALE_QUOTE = "stale quote"
CROSSED_QUOTE = "crossed quote"
#: Client order ids remembered after their order closed, so a late fill is still booked.
KNOWN_ORDER_IDS = 10_000
#: The positions export (appended during the run) and its columns: one row per market of
#: the strategy per snapshot. position/cash/fees_paid/fills/pnl are this strategy's own
#: trades in that market (pnl = cash + position * mark, fees in); inventory is the quoted
#: q (the quoted market only); base/quote_balance the venue's balances; trigger says why
#: the row was written ("start", "fills", "interval", "end").
POSITIONS_CSV = "positions.csv"
POSITION_COLUMNS = ("ts", "ts_ns", "venue", "symbol", "position", "inventory", "cash",
                    "base_balance", "quote_balance", "mark", "pnl", "fees_paid", "fills",
                    "total_pnl", "trigger")


@dataclass(slots=True)
class WorkingOrder:
    """One of our orders until its terminal ack; `qty` is what is still open."""

    client_order_id: str
    side: Side
    price: float
    qty: float
    kind: str = "quote"  # "quote" | "flatten" | "rebalance"
    cancelling: bool = False
    symbol: str = ""  # "" = the quoted symbol; set for a rebalance in another market


@dataclass(slots=True)
class MarketBook:
    """This strategy's trades in a market it only rebalances in (not the quoted one)."""

    symbol: str
    asset: str
    lot: float
    position: float = 0.0  # base units bought minus sold (base fees deducted)
    cash: float = 0.0  # quote currency received minus paid, quote fees deducted
    fees_paid: float = 0.0
    fills: int = 0
    mark: float = math.nan  # latest usable mid (NaN: none yet)

    @property
    def value(self) -> float:
        """P&L of these trades at the mark (0 while nothing is held)."""
        held = self.position * self.mark if self.position else 0.0
        return self.cash + held


def floor_to_step(value: float, step: float) -> float:
    """Largest multiple of `step` <= value (a hair of slack absorbs float noise)."""
    per_unit = _steps_per_unit(step)
    if per_unit:  # 0.01 -> n / 100: the double nearest the decimal, no 0.1 + 0.2 noise
        return math.floor(value * per_unit + 1e-9) / per_unit
    return math.floor(value / step + 1e-9) * step


def ceil_to_step(value: float, step: float) -> float:
    """Smallest multiple of `step` >= value."""
    per_unit = _steps_per_unit(step)
    if per_unit:
        return math.ceil(value * per_unit - 1e-9) / per_unit
    return math.ceil(value / step - 1e-9) * step


def _blank_nan(value: float) -> float | str:
    """A CSV cell: the number, or blank when it is not known (NaN)."""
    return "" if math.isnan(value) else value


@cache
def _steps_per_unit(step: float) -> int:
    """1/step when it is a whole number (ticks and lots like 0.01, 0.5, 1e-5), else 0."""
    per_unit = round(1.0 / step)
    return per_unit if per_unit >= 1 and abs(per_unit * step - 1.0) < 1e-9 else 0


class InventoryMMStrategy(StrategyBase):
    """Avellaneda-Stoikov quoting with inventory limits, max-loss exit and rebalancing."""

    name = "inventory-mm"

    def __init__(self, settings: InventoryMMSettings, venue: VenueSettings,
                 flatten_on_kill: bool = False,
                 max_order_notional: float = math.inf) -> None:
        rules = venue.markets.get(settings.symbol, {})
        if not rules.get("tick") or not rules.get("lot"):
            raise ValueError(f"venues.{settings.venue}.markets[{settings.symbol!r}] needs a "
                             "tick and a lot to round quotes")
        if settings.k_bps != "auto" and not settings.k_bps > 0:
            raise ValueError("strategies.inventory_mm.k_bps must be > 0 or 'auto', "
                             f"got {settings.k_bps}")
        self.settings = settings
        self.venue = settings.venue
        self.symbol = settings.symbol
        self.base_asset, self.quote_asset = split_symbol(settings.symbol)
        self._perp = is_perp_symbol(settings.symbol)
        # Portfolio rebalancing: asset -> target weight (the quote asset holds the rest),
        # each asset's market against the quote asset, and our trades in the markets other
        # than the quoted one.
        self.target_weights = self._rebalance_targets(settings)
        self.rebalance_markets = {asset: self._market_of(asset, venue)
                                  for asset in self.target_weights}
        self.books: dict[str, MarketBook] = {}
        for asset, symbol in self.rebalance_markets.items():
            other = venue.markets.get(symbol, {})
            if symbol != settings.symbol and other.get("tick") and other.get("lot"):
                self.books[symbol] = MarketBook(symbol, asset, float(other["lot"]))
        # The market it quotes and those it rebalances in: on_quote/on_trade return None for
        # any other (a rebalance market's quote only updates its mark).
        self.market_keys: frozenset[tuple[str, str]] | None = frozenset(
            {(settings.venue, settings.symbol)}
            | {(settings.venue, symbol) for symbol in self.rebalance_markets.values()})
        self.tick = float(rules["tick"])
        self.lot = float(rules["lot"])
        self.stale_after_ns = int(venue.stale_after_s * NS_PER_SECOND)
        self.flatten_on_kill = flatten_on_kill
        # The risk gate's per-order cap: a rebalance trades in slices under it, rather than
        # sending an order the gate refuses on every timer tick.
        self.max_order_notional = max_order_notional
        self.timer_interval_s: float | None = settings.requote_interval_s
        self._requote_ns = int(settings.requote_interval_s * NS_PER_SECOND)
        # Per-quote constants of `on_quote`'s quick checks (the same values the full
        # checks compute each time).
        self._requote_spacing_ns = self._requote_ns // REQUOTE_SPACING_DIVISOR
        self._price_tolerance = settings.delta_price_bps * BPS
        self._min_spread_bps = settings.min_market_spread_bps
        # Spread filter hysteresis: narrow until the spread clears min + margin, or has
        # stayed at or above min for the hold time (since `_wide_since_ns`).
        self._spread_narrow = False
        self._wide_since_ns: int | None = None
        self._spread_hold_ns = int(settings.min_market_spread_hold_s * NS_PER_SECOND)
        self._narrow_reason = (
            f"market spread below minimum {settings.min_market_spread_bps:g} bps (quoting "
            f"again at {settings.min_market_spread_bps + settings.min_market_spread_margin_bps:g}"
            f" bps, or after {settings.min_market_spread_hold_s:g} s at the minimum)")
        # Fee floor: the nearest a quote may rest to the mid, as a fraction of it.
        self.min_half_spread_bps = 0.0 if settings.allow_quotes_inside_fees else \
            venue.maker_fee_bps + settings.min_edge_bps
        self._floor_bid = math.inf  # this evaluation's floor prices (bid at most, ask at
        self._floor_ask = -math.inf  # least), which also bound the orders kept
        # Max loss: max_loss, or max_loss_pct of the starting equity once the first usable
        # quote has valued it, whichever is smaller (`_loss_limit`).
        self.starting_equity: float | None = None
        self.loss_limit = settings.max_loss
        self.loss_limit_source = "max_loss"
        self._loss_floor = -settings.max_loss
        self._k_auto = settings.k_bps == "auto"
        # Trades feed only the fit of k: with k set, on_trade returns None untouched.
        self.reads_trades = self._k_auto
        # `first_loud` mirrors this class's callbacks (a subclass's may act otherwise),
        # with k set: fitting k, each trade of the market is an event (its distance from
        # the mid of the moment), stretches a few rows long, slower than every row run.
        cls = type(self)
        self.quiet_rows = (not self._k_auto and cls.on_quote is InventoryMMStrategy.on_quote
                           and cls.on_trade is InventoryMMStrategy.on_trade)
        # Account of this strategy's own trades (quote currency, base units).
        self.inventory = 0.0  # q: net base from quoting and flatten fills
        self.position = 0.0  # all fills, including portfolio rebalancing
        self.cash = 0.0  # quote currency received minus paid, fees in quote deducted
        self.fees_paid = 0.0  # in quote currency (base fees valued at the fill price)
        self.fills = 0  # fills in the quoted market (books count their own)
        self._books_value = 0.0  # sum of the rebalance books' P&L at their marks
        # Direction flip: the run of fills on one side (an order's partial fills count
        # once), and the one side quoted while the flip holds (None: both).
        self.fill_streak = 0
        self.fill_streak_side: Side | None = None
        self._streak_order = ""
        self.flip_side: Side | None = None
        self._flip_band = settings.flip_release_inventory * settings.max_inventory
        self._last_rebalance_report: str | None = None
        # positions.csv: where rows go (attached by the mode), and when the next is due.
        self._exports: ExportSink | None = None
        self._positions_on = settings.positions_every_fills > 0 or settings.positions_every_s > 0
        self._positions_every_ns = int(settings.positions_every_s * NS_PER_SECOND)
        self._positions_due_ns: int | None = None  # None: no snapshot yet (the first: "start")
        self._fills_at_snapshot = 0
        self.orders: dict[str, WorkingOrder] = {}
        # Every recent client order id -> kind, oldest first. An OrderedDict because
        # popping the head of a plain dict again and again degrades to O(n) per pop.
        self._order_kinds: OrderedDict[str, str] = OrderedDict()
        self.stopped_reason: str | None = None
        self._market: MarketView | None = None
        self._account: AccountView | None = None
        self._clock: Clock = lambda: 0
        self._order_ids = OrderIds(self.name, 0)
        self._last_quote: Quote | None = None
        self._dirty = True  # inventory or state changed: re-evaluate on the next quote
        self._last_eval_ns = -(1 << 62)
        self._last_eval_mid = math.nan
        self._last_skip: str | None = None
        self._sigma_log = math.nan
        self._sigma_ts_ns = -(1 << 62)
        self._k_bps = math.nan if self._k_auto else float(settings.k_bps)
        self._k_state = "warming up" if self._k_auto else "configured"
        self._k_trades = 0  # trades in the fit's window at its last refresh
        self._k_ts_ns = -(1 << 62)
        self._arrival_grid = ARRIVAL_GRID_BPS
        # The mid our quotes were priced at, renewed at most every requote interval: a
        # trade's distance from it is how far a quote must rest not to be hit by it.
        self._anchor_mid = math.nan
        self._anchor_ts_ns = -(1 << 62)
        self._trade_ts = np.full(TRADE_HISTORY, -1, dtype=np.int64)
        self._trade_distance = np.zeros(TRADE_HISTORY)
        self._trade_count = 0
        #: `first_loud`: per tuple of a backtest's keys, which are rebalance markets.
        self._marked_keys: dict[tuple[tuple[str, str], ...], np.ndarray] = {}

    # -- Strategy contract -------------------------------------------------------------------

    def bind(self, market: MarketView, account: AccountView, clock: Clock) -> None:
        self._market, self._account, self._clock = market, account, clock
        self._order_ids = OrderIds(self.name, clock())

    def on_quote(self, quote: Quote) -> Decision | None:
        if quote.exchange != self.venue or quote.symbol != self.symbol:
            book = self.books.get(quote.symbol) if quote.exchange == self.venue else None
            if book is not None and not quote.crossed and quote.bid > 0.0:
                book.mark = quote.mid
                self._books_value = sum(other.value for other in self.books.values())
            return None
        self._last_quote = quote
        if self.stopped_reason is not None:
            return None
        now = self._clock()
        # Most quotes change nothing: the market is usable, no max-loss exit, no requote
        # due. Those checks written out on the quote's fields, with the very arithmetic of
        # Quote.mid/spread_bps, `_unusable_reason`, `_check_max_loss` and `_due` (they
        # were half of this callback's time, which runs for every quote of the market);
        # when any of them fails, the full path below decides.
        bid, ask = quote.bid, quote.ask
        mid = (bid + ask) * 0.5
        elapsed = now - self._last_eval_ns
        if (not quote.stale and now - quote.local_ts_ns <= self.stale_after_ns and bid < ask
                and not self._spread_narrow
                and not (self._min_spread_bps > 0.0 and mid > 0
                         and (ask - bid) / mid * 1e4 < self._min_spread_bps)
                and self.cash + self.position * mid + self._books_value >= self._loss_floor
                and not self._dirty and elapsed < self._requote_ns
                and not (elapsed >= self._requote_spacing_ns
                         and abs(mid - self._last_eval_mid) > self._price_tolerance * mid)):
            return None
        unusable = self._unusable_reason(quote, now)
        if unusable is not None:
            return self._skip(now, unusable, quote)
        exit_decision = self._check_max_loss(now, quote)
        if exit_decision is not None:
            return exit_decision
        if not self._due(now, quote.mid):
            return None
        return self._requote(now, quote, log_hold=False)

    def first_loud(self, rows: QuietRows, start: int, stop: int) -> int:
        """Where `on_quote`'s quick check first fails (or a rebalance market's quote comes)
        in rows [start, stop) (daemon/core/quiet.py)."""
        if not self.quiet_rows:
            return start
        marked_keys = self._marked_keys.get(rows.keys)
        if marked_keys is None:  # the rebalance markets (their quotes move `_books_value`)
            marked_keys = self._marked_keys[rows.keys] = np.array(
                [exchange == self.venue and symbol in self.books for exchange, symbol in rows.keys],
                dtype=bool)
        check = QuoteCheck(
            quoted_key=rows.key_id(self.venue, self.symbol),
            stopped=self.stopped_reason is not None,
            must_evaluate=self._dirty or self._spread_narrow,
            repeated_skip=self._repeated_skip(),
            stale_after_ns=self.stale_after_ns, min_spread_bps=float(self._min_spread_bps),
            loss_floor=float(self._loss_floor), cash=float(self.cash),
            position=float(self.position), books_value=float(self._books_value),
            last_eval_ns=self._last_eval_ns, last_eval_mid=float(self._last_eval_mid),
            requote_ns=self._requote_ns, requote_spacing_ns=self._requote_spacing_ns,
            price_tolerance=float(self._price_tolerance))
        return first_requote_row(rows.kind, rows.key, rows.local_ts_ns, rows.clock_ns,
                                 rows.price, rows.ask, rows.stale, start, stop, marked_keys,
                                 tuple(check))

    def _repeated_skip(self) -> int:
        """The skip a quote leaves as it was (`_skip` logs nothing, cancels nothing, and
        `_unusable_reason` changes nothing): the last one logged, with every quote order
        cancelled already (and for a narrow market, no wide spell begun)."""
        if not self._dirty or any(not order.cancelling and order.kind == "quote"
                                  for order in self.orders.values()):
            return NO_SKIP
        if self._last_skip == STALE_QUOTE:
            return SKIP_STALE
        if self._last_skip == CROSSED_QUOTE:
            return SKIP_CROSSED
        if (self._last_skip == self._narrow_reason and self._spread_narrow
                and self._wide_since_ns is None):
            return SKIP_NARROW
        return NO_SKIP

    def on_trade(self, trade: Trade) -> Decision | None:
        if not self._k_auto:  # only the k fit looks at trades
            return None
        quote = self._last_quote
        if (trade.exchange != self.venue or trade.symbol != self.symbol or quote is None
                or quote.crossed):
            return None
        if (trade.local_ts_ns - self._anchor_ts_ns >= self._requote_ns
                or not self._anchor_mid > 0.0):
            self._anchor_mid, self._anchor_ts_ns = quote.mid, trade.local_ts_ns
        mid = self._anchor_mid
        # In bps of the mid, signed by the taker: a buy lifting offers prints above it.
        offset = trade.price - mid if trade.side == "buy" else mid - trade.price
        distance = offset / mid * 1e4
        slot = self._trade_count % TRADE_HISTORY
        self._trade_ts[slot] = trade.local_ts_ns
        self._trade_distance[slot] = distance
        self._trade_count += 1
        return None

    def on_fill(self, fill: Fill) -> Decision | None:
        kind = self._order_kinds.get(fill.client_order_id)
        if kind is None:
            return None
        self._book_fill(fill, kind)
        if kind == "quote":
            self._count_one_sided(fill)
        self._export_positions_if_due(self._clock(), by_fills=True)
        if self.stopped_reason is not None:
            return None
        self._dirty = True
        quote = self._last_quote
        now = self._clock()
        if quote is None or self._unusable_reason(quote, now) is not None:
            return None
        exit_decision = self._check_max_loss(now, quote)
        if exit_decision is not None:
            return exit_decision
        return self._requote(now, quote, log_hold=False)

    def on_ack(self, ack: OrderAck) -> Decision | None:
        order = self.orders.get(ack.client_order_id)
        if order is None:
            return None
        if ack.reason.startswith("cancel rejected") and ack.status is OrderStatus.REJECTED:
            # The cancel failed, not the order (e.g. it raced the order to the venue):
            # the order may still rest, so let the next evaluation decide about it again.
            order.cancelling = False
        elif ack.status.is_terminal:
            del self.orders[ack.client_order_id]
        # A rejected quote is simply re-placed at the next evaluation; no Decision here,
        # the runner already logged the ack (and the gate's reason if it refused it).
        return None

    def on_timer(self, now_ns: int) -> Decision | None:
        self._export_positions_if_due(now_ns, by_fills=False)  # after a stop too
        if self.stopped_reason is not None:
            return None
        quote = self._last_quote
        if quote is None:
            return self._skip(now_ns, "no quote yet", None)
        unusable = self._unusable_reason(quote, now_ns)
        if unusable is not None:
            return self._skip(now_ns, unusable, quote)
        exit_decision = self._check_max_loss(now_ns, quote)
        if exit_decision is not None:
            return exit_decision
        self._refresh_sigma(now_ns, force=True)
        self._refresh_k(now_ns, force=True)
        rebalance = self._rebalance(now_ns, quote)
        if rebalance is not None:
            return rebalance
        return self._requote(now_ns, quote, log_hold=True)

    def on_kill(self, reason: str) -> Decision | None:
        """Stop for good. The runner has logged the kill and cancelled every open order;
        all that is left to decide is whether to flatten the inventory."""
        if self.stopped_reason is not None:
            return None  # already stopped (max-loss exit): flat or flattening
        self.stopped_reason = f"kill switch: {reason}"
        for order in self.orders.values():
            order.cancelling = True
        flatten = self._flatten_intent("kill switch") if self.flatten_on_kill else None
        if flatten is None:
            return None
        return Decision(self.name, self._clock(), Action.FLATTEN, self.stopped_reason,
                        inputs=self._account_inputs(), intents=[flatten])

    # -- evaluation ------------------------------------------------------------------------

    def _due(self, now: int, mid: float) -> bool:
        """Re-evaluate on a fill, every requote interval, or when the mid moved a tolerance
        (at most every tenth of the interval: in a fast market chasing every move would
        send orders faster than the risk gate's order-rate limit lets through)."""
        elapsed = now - self._last_eval_ns
        if self._dirty or elapsed >= self._requote_ns:
            return True
        return (elapsed >= self._requote_ns // REQUOTE_SPACING_DIVISOR
                and abs(mid - self._last_eval_mid) > self.settings.delta_price_bps * BPS * mid)

    def _unusable_reason(self, quote: Quote, now: int) -> str | None:
        if quote.stale or now - quote.local_ts_ns > self.stale_after_ns:
            return STALE_QUOTE
        if quote.crossed:
            return CROSSED_QUOTE
        return self._narrow_market_reason(quote, now)

    def _narrow_market_reason(self, quote: Quote, now: int) -> str | None:
        """The spread filter, with hysteresis so a spread hovering at the threshold does
        not flip quote/skip on every tick. One reason for the whole narrow spell, so the
        skip is logged once (the spread itself is in the skip's inputs)."""
        s = self.settings
        if quote.spread_bps < s.min_market_spread_bps:
            # A market tighter than this leaves no edge over adverse selection.
            self._spread_narrow, self._wide_since_ns = True, None
            return self._narrow_reason
        if not self._spread_narrow:
            return None
        if self._wide_since_ns is None:
            self._wide_since_ns = now
        if (quote.spread_bps >= s.min_market_spread_bps + s.min_market_spread_margin_bps
                or now - self._wide_since_ns >= self._spread_hold_ns):
            self._spread_narrow, self._wide_since_ns = False, None
            return None
        return self._narrow_reason

    def _requote(self, now: int, quote: Quote, log_hold: bool) -> Decision | None:
        self._refresh_sigma(now)
        self._refresh_k(now)
        if not self._sigma_log > 0.0:
            return self._skip(now, "volatility unknown", quote)
        if not self._k_bps > 0.0:
            # The count in the reason: each step of the warm-up is logged (once), so the
            # log and `--mode watch` show its progress, not just its start.
            return self._skip(now, f"k not estimated yet (warming up: {self._k_trades} "
                              f"trades in the window, {self.settings.k_auto_min_trades} "
                              "needed, and decaying arrival rates)", quote)
        mid = quote.mid
        sigma = mid * self._sigma_log  # price per sqrt(second), as the model wants
        s = self.settings
        # One order is the model's unit of inventory (see the module docstring).
        model_bid, model_ask = as_quotes_rolling_horizon(
            mid, self.inventory / s.order_qty, s.horizon_s, sigma, s.gamma * s.order_qty,
            self._k_bps / (mid * BPS))
        if not s.allow_quotes_inside_fees:  # opted out: the floors stay at -/+ infinity
            self._floor_bid = mid * (1.0 - self.min_half_spread_bps * BPS)
            self._floor_ask = mid * (1.0 + self.min_half_spread_bps * BPS)
        bid_price, ask_price = self._round_passive(min(model_bid, self._floor_bid),
                                                   max(model_ask, self._floor_ask), quote)
        flip_note = self._update_flip()
        wanted_bid, wanted_ask = self._target_sizes()
        changes: list[str] = [flip_note] if flip_note else []
        cancels: list[str] = []
        intents: list[OrderIntent] = []
        bid_qty, bid_room = self._reconcile(Side.BUY, bid_price, wanted_bid, changes, cancels,
                                            intents)
        ask_qty, ask_room = self._reconcile(Side.SELL, ask_price, wanted_ask, changes, cancels,
                                            intents)
        self._last_eval_ns, self._last_eval_mid, self._dirty = now, mid, False
        self._last_skip = None
        if not (cancels or intents) and not log_hold and flip_note is None:
            return None
        inputs = self._quote_inputs(quote, sigma, model_bid, model_ask, bid_price, ask_price,
                                    bid_qty, ask_qty)
        inputs.update(bid_room=bid_room, ask_room=ask_room)
        # Spread capture against the mid if both targets fill, in quote currency.
        expected = (mid - bid_price) * bid_qty + (ask_price - mid) * ask_qty
        if cancels or intents:
            return Decision(self.name, now, Action.QUOTE, "; ".join(changes), inputs,
                            expected=expected, intents=intents, cancels=cancels)
        hold = "orders within tolerance of target"
        return Decision(self.name, now, Action.HOLD, f"{flip_note}; {hold}" if flip_note else hold,
                        inputs, expected=expected)

    def _round_passive(self, model_bid: float, model_ask: float,
                       quote: Quote) -> tuple[float, float]:
        """Bid down and ask up to the tick, then kept off the opposite touch (post-only)."""
        bid = floor_to_step(model_bid, self.tick)
        ask = ceil_to_step(model_ask, self.tick)
        bid = min(bid, floor_to_step(quote.ask - self.tick, self.tick))
        ask = max(ask, ceil_to_step(quote.bid + self.tick, self.tick))
        return bid, ask

    def _target_sizes(self) -> tuple[float, float]:
        """The exp(-n q) rule: full `order_qty`, shrunk on the side that adds to |q|. During
        a direction flip only the side that reduces |q| is quoted, and at most |q| of it
        (it unwinds, it does not turn the position round)."""
        s = self.settings
        q, q_max = self.inventory, s.max_inventory
        bid_qty = s.order_qty * math.exp(-s.size_decay * q / q_max) if q > 0 else s.order_qty
        ask_qty = s.order_qty * math.exp(s.size_decay * q / q_max) if q < 0 else s.order_qty
        if self.flip_side is Side.SELL:
            return 0.0, min(ask_qty, abs(q))
        if self.flip_side is Side.BUY:
            return min(bid_qty, abs(q)), 0.0
        return bid_qty, ask_qty

    def _count_one_sided(self, fill: Fill) -> None:
        """The run of quote fills on one side, for the direction flip."""
        if fill.client_order_id == self._streak_order:
            return  # another part of the same order: one fill of the run
        self._streak_order = fill.client_order_id
        if fill.side is self.fill_streak_side:
            self.fill_streak += 1
        else:
            self.fill_streak_side, self.fill_streak = fill.side, 1

    def _update_flip(self) -> str | None:
        """Direction flip (seed market-making-rebalancing): after more than
        `one_sided_fills_limit` fills in a row on the side that built the inventory, quote
        only the side that reduces it until |q| is back within `flip_release_inventory` *
        max_inventory.
        Fills that keep coming on one side are a trend running over the quotes; the skew
        alone would keep buying it. Returns a note for the decision when it starts or ends."""
        q = self.inventory
        within = abs(q) <= self._flip_band + self.lot * 1e-6
        if self.flip_side is None:
            limit = self.settings.one_sided_fills_limit
            # Only a run that built the position: sells in a row while long unwind it.
            adding = Side.BUY if q > 0 else Side.SELL
            if (not limit or self.fill_streak <= limit or within
                    or self.fill_streak_side is not adding):
                return None
            self.flip_side = adding.opposite
            label = "ask" if self.flip_side is Side.SELL else "bid"
            return (f"direction flip: {self.fill_streak} {self.fill_streak_side} fills in a row,"
                    f" quoting only the {label} until |inventory| <= {self._flip_band:g}")
        if not within and (q > 0) == (self.flip_side is Side.SELL):
            return None
        self.flip_side = None
        self.fill_streak = 0  # a new run starts from here
        return (f"direction flip over: |inventory| {abs(q):g} within {self._flip_band:g}, "
                "quoting both sides")

    def _quoting_sides(self) -> str:
        if self.flip_side is None:
            return "both"
        return "ask only" if self.flip_side is Side.SELL else "bid only"

    def _side_room(self, side: Side, price: float) -> float:
        """Most one side may have resting: the inventory headroom and the balance; during
        a direction flip, at most |q| on the side that reduces it (reduce only)."""
        q_max = self.settings.max_inventory
        balances = self._account.balances(self.venue) if self._account is not None else {}
        quote_funded = balances.get(self.quote_asset, 0.0) / price
        if side is Side.BUY:
            room = min(q_max - self.inventory, quote_funded)
        elif self._perp:
            # A perp short is margined in the quote currency (unleveraged here, the
            # conservative bound); closing a long needs none. There is no base asset.
            room = min(q_max + self.inventory, max(self.inventory, 0.0) + quote_funded)
        else:
            room = min(q_max + self.inventory, balances.get(self.base_asset, 0.0))
        return min(room, abs(self.inventory)) if side is self.flip_side else room

    def _reconcile(self, side: Side, price: float, wanted: float, changes: list[str],
                   cancels: list[str], intents: list[OrderIntent]) -> tuple[float, float]:
        """Keep one resting order near the target, cancel the rest, place one if none is
        kept. Returns (target size, room) of the side.

        Room: what `max_inventory` (and the balance) leaves once every other order of the
        side that can still fill is counted, those being cancelled included; no sequence
        of fills can then carry |q| past the limit. An order is kept when its price is
        within `delta_price_bps` of the target, all open orders of the side fit in the
        room, and its size is within `delta_size` of the target or no replacement could
        be larger (the orders we cancel still take room until their cancel lands).
        """
        label = "bid" if side is Side.BUY else "ask"
        room = self._side_room(side, price)
        candidates: list[WorkingOrder] = []
        for order in self.orders.values():
            if order.side is side and not order.symbol:  # the quoted market's orders only
                if order.cancelling or order.kind != "quote":
                    room -= order.qty
                else:
                    candidates.append(order)
        target = max(0.0, floor_to_step(min(wanted, room), self.lot))
        left = room - sum(order.qty for order in candidates)
        replacement = max(0.0, floor_to_step(min(target, left), self.lot))
        price_tolerance = self.settings.delta_price_bps * BPS * price
        size_tolerance = self.settings.delta_size * target + 1e-12
        # A resting order the mid has come too close to no longer clears the fee floor.
        sign = side.sign  # +1 buy: at most the floor bid; -1 sell: at least the floor ask
        floor_price = self._floor_bid if side is Side.BUY else self._floor_ask
        kept: WorkingOrder | None = None
        for order in candidates:
            if (kept is None and target >= self.lot and left >= -1e-12
                    and abs(order.price - price) <= price_tolerance
                    and sign * (floor_price - order.price) >= 0.0
                    and (abs(order.qty - target) <= size_tolerance
                         or order.qty >= replacement)):
                kept = order
                continue
            order.cancelling = True
            cancels.append(order.client_order_id)
            changes.append(f"{label} {order.qty:g}@{order.price} off target")
        if kept is not None:
            return target, room
        if replacement < self.lot:
            if changes and changes[-1].startswith(label):  # say why nothing replaces it
                why = ("direction flip" if self.flip_side not in (None, side)
                       else "inventory limit, balance or orders in flight")
                changes.append(f"no {label}: {why}")
            return target, room
        intents.append(self._new_intent(side, OrderType.POST_ONLY, replacement, price, "quote",
                                        label))
        changes.append(f"{label} {replacement:g}@{price}")
        return target, room

    # -- risk ------------------------------------------------------------------------------

    def pnl(self, mid: float) -> float:
        """Mark-to-market P&L of this strategy's trades, quote currency, fees included: the
        quoted market at `mid`, the markets it rebalanced in at their latest marks."""
        return self.cash + self.position * mid + self._books_value

    def _check_max_loss(self, now: int, quote: Quote) -> Decision | None:
        """The max-loss exit: P&L below -(the loss limit) cancels every quote, flattens the
        inventory with a market order and stops for good. A subclass may reuse it as is;
        `_loss_limit` says which limit applies."""
        pnl = self.pnl(quote.mid)
        limit, source = self._loss_limit(quote)
        if pnl >= -limit:
            return None
        why = "max_loss" if source == "max_loss" else \
            f"max_loss_pct {self.settings.max_loss_pct:g} % of {self.starting_equity:.2f}"
        self.stopped_reason = f"max loss: P&L {pnl:.2f} below -{limit:g} ({why})"
        cancels = self._cancel_all()
        flatten = self._flatten_intent("max loss exit")
        inputs = self._account_inputs()
        inputs.update(mid=quote.mid, pnl=pnl, max_loss=self.settings.max_loss,
                      max_loss_pct=self.settings.max_loss_pct,
                      starting_equity=self.starting_equity, loss_limit=limit,
                      loss_limit_source=source)
        return Decision(self.name, now, Action.MAX_LOSS_EXIT, self.stopped_reason, inputs,
                        expected=pnl, intents=[flatten] if flatten else [], cancels=cancels)

    def _loss_limit(self, quote: Quote) -> tuple[float, str]:
        """The loss that stops the strategy and which setting set it: `max_loss`, or
        `max_loss_pct` of the starting equity when that is the smaller loss. The starting
        equity is valued at the first usable quote this is asked at (the venue's base and
        quote balances at its mid, the rebalanced assets at their marks)."""
        pct = self.settings.max_loss_pct
        if pct is not None and self.starting_equity is None:
            self.starting_equity = self._portfolio_value(quote.mid)
            by_pct = pct / 100.0 * self.starting_equity
            if 0.0 < by_pct < self.settings.max_loss:
                self.loss_limit, self.loss_limit_source = by_pct, "max_loss_pct"
                self._loss_floor = -by_pct
        return self.loss_limit, self.loss_limit_source

    def _portfolio_value(self, mid: float) -> float:
        """The venue's base and quote balances at `mid`, plus the rebalanced assets with a
        mark, in quote currency (assets without one are left out)."""
        if self._account is None:
            return 0.0
        balances = self._account.balances(self.venue)
        value = balances.get(self.quote_asset, 0.0) + balances.get(self.base_asset, 0.0) * mid
        for book in self.books.values():
            if book.mark > 0.0:
                value += balances.get(book.asset, 0.0) * book.mark
        return value

    def _flatten_intent(self, reason: str) -> OrderIntent | None:
        qty = floor_to_step(abs(self.inventory), self.lot)
        if qty < self.lot:
            return None
        side = Side.SELL if self.inventory > 0 else Side.BUY
        return self._new_intent(side, OrderType.MARKET, qty, None, "flatten", reason)

    def _cancel_all(self) -> list[str]:
        cancels = []
        for order in self.orders.values():
            if not order.cancelling and order.kind == "quote":
                order.cancelling = True
                cancels.append(order.client_order_id)
        return cancels

    def _skip(self, now: int, reason: str, quote: Quote | None) -> Decision | None:
        """Stop quoting for now; logged once per reason, resting quotes cancelled."""
        cancels = self._cancel_all()
        self._dirty = True  # requote at once when the market is usable again
        if reason == self._last_skip and not cancels:
            return None
        self._last_skip = reason
        inputs = self._account_inputs()
        if quote is not None:
            inputs.update(bid=quote.bid, ask=quote.ask, stale=quote.stale,
                          quote_age_s=(now - quote.local_ts_ns) / NS_PER_SECOND,
                          market_spread_bps=quote.spread_bps)
        inputs.update(self._k_inputs())
        return Decision(self.name, now, Action.SKIP, reason, inputs, cancels=cancels)

    # -- portfolio rebalancing ---------------------------------------------------------------

    def _rebalance_targets(self, settings: InventoryMMSettings) -> dict[str, float]:
        """asset -> target weight of the venue portfolio, the quote asset left out (it holds
        the rest). `target_base_weight` is the one-asset case of `target_weights`."""
        if settings.target_base_weight is not None:
            return {self.base_asset: settings.target_base_weight}
        weights = dict(settings.target_weights)
        quote_weight = weights.pop(self.quote_asset, None)
        if quote_weight is not None and abs(sum(weights.values()) + quote_weight - 1.0) > 1e-6:
            raise ValueError(
                f"strategies.inventory_mm.target_weights lists {self.quote_asset}: the weights "
                f"must then sum to 1 (they sum to {sum(weights.values()) + quote_weight:g}); or "
                f"leave {self.quote_asset} out and it holds the rest")
        return weights

    def _market_of(self, asset: str, venue: VenueSettings) -> str:
        """The market `asset` trades in against the quote asset on this venue: the quoted
        symbol for its base, a configured market, or by default ASSET/QUOTE in the quoted
        symbol's style (`:USDT` for perpetuals), reported later if it has no rules."""
        if asset == self.base_asset:
            return self.symbol
        for symbol in venue.markets:
            if split_symbol(symbol) == (asset, self.quote_asset) and \
                    (":" in symbol) == (":" in self.symbol):
                return symbol
        _, colon, settle = self.symbol.partition(":")
        return f"{asset}/{self.quote_asset}{colon}{settle}"

    def _rebalance_marks(self, now: int, quote: Quote) -> tuple[dict[str, Quote], list[str]]:
        """A usable quote per target asset, and the assets without one and why."""
        marks: dict[str, Quote] = {}
        missing: list[str] = []
        for asset, symbol in self.rebalance_markets.items():
            if symbol == self.symbol:
                marks[asset] = quote
                continue
            if symbol not in self.books:
                missing.append(f"{asset} (no market rules: venues.{self.venue}.markets"
                               f"[{symbol!r}] needs a tick and a lot)")
                continue
            other = self._market.quote(self.venue, symbol) if self._market is not None else None
            if other is None:
                missing.append(f"{asset} (no quote for {symbol})")
                continue
            why = self._unusable_mark(other, now)
            if why is not None:
                missing.append(f"{asset} ({why} for {symbol})")
                continue
            marks[asset] = other
        return marks, missing

    def _unusable_mark(self, quote: Quote, now: int) -> str | None:
        if quote.stale or now - quote.local_ts_ns > self.stale_after_ns:
            return STALE_QUOTE
        if quote.crossed or not quote.bid > 0.0:
            return CROSSED_QUOTE
        return None

    def _rebalance(self, now: int, quote: Quote) -> Decision | None:
        """Trade the venue portfolio back to its target weights: the asset furthest from
        its target, when past `rebalance_threshold`, one IOC at the touch of its market.

        The portfolio is the target assets plus the quote asset, valued at their mids;
        other holdings are left alone. Without a usable quote for every target asset its
        value is unknown: a skip decision names the assets (once per reason, quotes are
        not touched) and nothing trades until they have one.
        """
        if not self.target_weights or self._account is None:
            return None
        if any(order.kind == "rebalance" for order in self.orders.values()):
            return None  # one at a time: balances are not final while it executes
        marks, missing = self._rebalance_marks(now, quote)
        if missing:
            return self._report_unpriced(now, missing)
        self._last_rebalance_report = None
        balances = self._account.balances(self.venue)
        values = {asset: balances.get(asset, 0.0) * marks[asset].mid for asset in marks}
        total_value = sum(values.values()) + balances.get(self.quote_asset, 0.0)
        if total_value <= 0.0:
            return None
        weights = {asset: value / total_value for asset, value in values.items()}
        asset = max(weights, key=lambda name: abs(weights[name] - self.target_weights[name]))
        weight, target = weights[asset], self.target_weights[asset]
        drift = weight - target
        if abs(drift) <= self.settings.rebalance_threshold:
            return None
        mark = marks[asset]
        symbol = self.rebalance_markets[asset]
        lot = self.books[symbol].lot if symbol in self.books else self.lot
        side = Side.SELL if drift > 0 else Side.BUY
        if side is Side.SELL:
            touch_price, touch_qty = mark.bid, mark.bid_qty
            affordable = balances.get(asset, 0.0)
        else:
            touch_price, touch_qty = mark.ask, mark.ask_qty
            affordable = balances.get(self.quote_asset, 0.0) / touch_price
        qty = floor_to_step(min(abs(drift) * total_value / mark.mid, touch_qty, affordable,
                                self.max_order_notional / touch_price), lot)
        if qty < lot:
            return None
        intent = self._new_intent(side, OrderType.IOC, qty, touch_price, "rebalance",
                                  f"{asset} weight {weight:.3f} vs target {target:.3f}",
                                  symbol=symbol)
        inputs: dict[str, object] = {
            "asset": asset, "symbol": symbol, "venue": self.venue, "weight": weight,
            "target_weight": target, "threshold": self.settings.rebalance_threshold,
            "mid": mark.mid, "side": str(side), "qty": qty, "price": touch_price,
            "portfolio_value": total_value,
            "quote_weight": balances.get(self.quote_asset, 0.0) / total_value}
        for name in weights:  # every asset's weight and target, flat
            inputs[f"weight_{name}"] = weights[name]
            inputs[f"target_weight_{name}"] = self.target_weights[name]
        return Decision(self.name, now, Action.PORTFOLIO_REBALANCE, intent.reason, inputs,
                        intents=[intent])

    def _report_unpriced(self, now: int, missing: list[str]) -> Decision | None:
        """A skip naming the target assets without a usable market (once per reason); the
        portfolio is not valued by guessing them, and the quotes stay as they are."""
        reason = (f"portfolio rebalance on {self.venue} waits: no usable market for "
                  f"{', '.join(missing)}")
        if reason == self._last_rebalance_report:
            return None
        self._last_rebalance_report = reason
        inputs: dict[str, object] = {
            "venue": self.venue, "unpriced_assets": ", ".join(missing),
            "target_assets": ", ".join(sorted(self.target_weights))}
        return Decision(self.name, now, Action.SKIP, reason, inputs)

    # -- market estimates ----------------------------------------------------------------

    def _refresh_sigma(self, now: int, force: bool = False) -> None:
        # The 6-minute volatility hardly moves within a requote interval: the timer
        # refreshes it, the quote path only when the timer has not (twice the interval).
        if self._market is None or (not force and now - self._sigma_ts_ns < 2 * self._requote_ns):
            return
        self._sigma_log = self._market.volatility(self.venue, self.symbol,
                                                  self.settings.volatility_window_s)
        self._sigma_ts_ns = now

    def _refresh_k(self, now: int, force: bool = False) -> None:
        """k auto: refit k_bps on the trades of the volatility window; "warming up" until
        there are enough of them and their rates decay, then "fitted", or "floored" when
        the fit fell below `k_auto_floor_bps` (a flat fit would quote absurdly wide)."""
        if not self._k_auto or (not force and now - self._k_ts_ns < 2 * self._requote_ns):
            return
        self._k_ts_ns = now
        s = self.settings
        start_ns = now - int(s.volatility_window_s * NS_PER_SECOND)
        filled = min(self._trade_count, TRADE_HISTORY)
        trade_ts = self._trade_ts[:filled]
        count, oldest_ns = trades_since(trade_ts, start_ns)
        self._k_trades = count
        k_bps = math.nan
        if count >= s.k_auto_min_trades:
            observed_s = max((now - oldest_ns) / NS_PER_SECOND, 1e-3)
            _, k_bps, _ = fit_arrival_decay(trade_ts, self._trade_distance[:filled], start_ns,
                                            observed_s, self._arrival_grid)
        if not k_bps > 0.0:
            self._k_bps, self._k_state = math.nan, "warming up"
        elif k_bps < s.k_auto_floor_bps:
            self._k_bps, self._k_state = s.k_auto_floor_bps, "floored"
        else:
            self._k_bps, self._k_state = k_bps, "fitted"

    def _k_inputs(self) -> dict[str, object]:
        """Where k stands: configured, or auto's warm-up / fitted / floored and its trades."""
        if not self._k_auto:
            return {"k_state": self._k_state}
        return {"k_state": self._k_state, "k_trades": self._k_trades,
                "k_trades_needed": self.settings.k_auto_min_trades}

    # -- bookkeeping -----------------------------------------------------------------------

    def _book_fill(self, fill: Fill, kind: str) -> None:
        sign = fill.side.sign
        base_delta = sign * fill.qty
        cash_delta = -sign * fill.qty * fill.price
        book = self.books.get(fill.symbol) if fill.symbol != self.symbol else None
        base_asset = book.asset if book is not None else self.base_asset
        fee_value = 0.0
        if fill.fee_asset == base_asset:
            base_delta -= fill.fee
            fee_value = fill.fee * fill.price
        elif fill.fee_asset == self.quote_asset:
            cash_delta -= fill.fee
            fee_value = fill.fee
        # Fees in a third asset (BNB) are not marked: we hold no price for it here.
        lot = self.lot
        if book is not None:  # a rebalance in another market
            book.position += base_delta
            book.cash += cash_delta
            book.fees_paid += fee_value
            book.fills += 1
            if not book.mark > 0.0:
                book.mark = fill.price
            self._books_value = sum(other.value for other in self.books.values())
            lot = book.lot
        else:
            self.position += base_delta
            self.cash += cash_delta
            self.fees_paid += fee_value
            self.fills += 1
            if kind != "rebalance":
                self.inventory += base_delta
        order = self.orders.get(fill.client_order_id)
        if order is not None:  # None: the terminal ack came first
            order.qty -= fill.qty
            if order.qty <= lot * 1e-6:
                del self.orders[order.client_order_id]

    def _new_intent(self, side: Side, order_type: OrderType, qty: float,
                    price: float | None, kind: str, reason: str,
                    symbol: str | None = None) -> OrderIntent:
        """An order in the quoted market, or in `symbol` (a rebalance elsewhere)."""
        client_order_id = self._order_ids.next()
        self._order_kinds[client_order_id] = kind
        if len(self._order_kinds) > KNOWN_ORDER_IDS:
            self._order_kinds.popitem(last=False)  # the oldest
        other = symbol if symbol is not None and symbol != self.symbol else ""
        self.orders[client_order_id] = WorkingOrder(client_order_id, side, price or 0.0, qty,
                                                    kind, symbol=other)
        return OrderIntent(self.venue, other or self.symbol, side, order_type, qty, price,
                           client_order_id, self.name, reason)

    # -- positions export ------------------------------------------------------------------

    def attach_exports(self, sink: ExportSink) -> None:
        """positions.csv goes to `sink` (the run's report folder), unless both triggers
        are off."""
        self._exports = sink if self._positions_on else None

    def write_exports(self, out_dir: Path) -> list[Path]:
        """The last positions.csv rows ("end"); the file was appended to during the run."""
        if self._exports is None:
            return []
        self._export_positions(self._clock(), "end")
        path = out_dir / POSITIONS_CSV
        return [path] if path.is_file() else []

    def _export_positions_if_due(self, now: int, by_fills: bool) -> None:
        """A positions.csv snapshot: the first once there is a quote ("start"), then after
        `positions_every_fills` fills (checked on fills) or `positions_every_s` (checked on
        the timer and on fills), whichever comes first."""
        if self._exports is None:
            return
        if self._positions_due_ns is None:
            if self._last_quote is not None:
                self._export_positions(now, "start")
            return
        every_fills = self.settings.positions_every_fills
        if by_fills and every_fills and \
                self._fill_count() - self._fills_at_snapshot >= every_fills:
            self._export_positions(now, "fills")
        elif self._positions_every_ns and now >= self._positions_due_ns:
            self._export_positions(now, "interval")

    def _fill_count(self) -> int:
        return self.fills + sum(book.fills for book in self.books.values())

    def _export_positions(self, now: int, trigger: str) -> None:
        """One row per market (the quoted one, then each rebalanced one), appended and
        flushed by the sink; marks are the latest usable mids (blank when none yet)."""
        if self._exports is None:
            return
        quote = self._last_quote
        mark = quote.mid if quote is not None and not quote.crossed else math.nan
        balances = self._account.balances(self.venue) if self._account is not None else {}
        quote_balance = balances.get(self.quote_asset, 0.0)
        own_pnl = self.cash + (self.position * mark if self.position else 0.0)
        total_pnl = own_pnl + self._books_value
        ts = datetime.fromtimestamp(now / NS_PER_SECOND, tz=UTC).isoformat(
            timespec="milliseconds")
        rows: list[tuple[object, ...]] = [(
            ts, now, self.venue, self.symbol, self.position, self.inventory, self.cash,
            balances.get(self.base_asset, 0.0), quote_balance, _blank_nan(mark),
            _blank_nan(own_pnl), self.fees_paid, self.fills, _blank_nan(total_pnl), trigger)]
        for book in self.books.values():
            rows.append((
                ts, now, self.venue, book.symbol, book.position, 0.0, book.cash,
                balances.get(book.asset, 0.0), quote_balance, _blank_nan(book.mark),
                _blank_nan(book.value), book.fees_paid, book.fills, _blank_nan(total_pnl),
                trigger))
        self._exports.append(POSITIONS_CSV, POSITION_COLUMNS, rows)
        self._fills_at_snapshot = self._fill_count()
        self._positions_due_ns = now + self._positions_every_ns

    def _account_inputs(self) -> dict[str, object]:
        return {"venue": self.venue, "symbol": self.symbol, "inventory": self.inventory,
                "position": self.position, "cash": self.cash, "fees_paid": self.fees_paid,
                "open_orders": len(self.orders)}

    def _quote_inputs(self, quote: Quote, sigma: float, model_bid: float, model_ask: float,
                      bid_price: float, ask_price: float, bid_qty: float,
                      ask_qty: float) -> dict[str, object]:
        """Flat snapshot: prices in quote currency, sigma in price per sqrt-second, k_bps in
        1/bps of mid and k in 1/price (what the kernel got), k_state / k_trades the fit's
        state, min_half_spread_bps the fee floor (0 when opted out), inventory in base
        units (and in orders), horizon in seconds, P&L marked at mid; model_gamma =
        gamma * order_qty is what the kernel got; bid_qty/ask_qty are the target sizes,
        bid_room/ask_room what the limit leaves a side."""
        mid = quote.mid
        return {
            "venue": self.venue, "symbol": self.symbol, "mid": mid,
            "market_bid": quote.bid, "market_ask": quote.ask,
            "market_spread_bps": quote.spread_bps,
            "sigma": sigma, "sigma_log": self._sigma_log, "k_bps": self._k_bps,
            "k": self._k_bps / (mid * BPS), **self._k_inputs(),
            "min_half_spread_bps": self.min_half_spread_bps,
            "gamma": self.settings.gamma, "horizon_s": self.settings.horizon_s,
            "model_gamma": self.settings.gamma * self.settings.order_qty,
            "inventory": self.inventory,
            "inventory_lots": self.inventory / self.settings.order_qty,
            "reservation_price": 0.5 * (model_bid + model_ask),
            "spread": model_ask - model_bid,
            "model_bid": model_bid, "model_ask": model_ask,
            "bid": bid_price, "ask": ask_price, "bid_qty": bid_qty, "ask_qty": ask_qty,
            "pnl": self.pnl(mid),
            "fill_streak": self.fill_streak,
            "fill_streak_side": str(self.fill_streak_side or ""),
            "one_sided_fills_limit": self.settings.one_sided_fills_limit,
            "quoting_sides": self._quoting_sides(),
            "flip_release_inventory": self._flip_band,
        }
