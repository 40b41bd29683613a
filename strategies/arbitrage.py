"""Cross-exchange arbitrage: sell at one venue's bid, buy at another's ask, after all costs.

For every symbol quoted on two or more venues, each quote update evaluates both
directions of every venue pair. Per unit of base, in quote currency:

    gross          = bid_sell - ask_buy
    fees           = ask_buy * taker_buy + bid_sell * taker_sell
    slippage       = (ask_buy + bid_sell) * slippage_bps            (estimate, both legs)
    transfer mode only (buy now, move the coins, sell on arrival):
    transfer_fee   = network fee (base) * bid_sell / qty            (fixed fee per move)
    price_risk     = z * sigma_log * sqrt(transfer_s) * bid_sell    (the sale waits)
    net            = gross - fees - slippage - transfer_fee - price_risk

Edges are quoted in bps of the buy price (`net_edge_bps = net / ask_buy * 1e4`) and the
strategy acts when `net_edge_bps >= min_net_edge_bps`. sigma_log is the market view's
volatility of log mid returns per sqrt-second over the last 6 minutes (the seed's BTC
transfer time). Size = min(displayed sizes, quote balance on the buy venue / price, base
balance on the sell venue (inventory mode), max_notional / price), floored to the
coarser lot of the two venues.

Modes:
- "inventory" (pre-funded on both venues): both legs go out together as IOC orders
  `slippage_bps` through the touch (the slippage the net edge paid for) in one Decision
  ("arbitrage"). When both are final, any base left unmatched
  (a leg rejected or partly filled) is hedged with an IOC on the venue with the better
  price ("unwind"), limited `unwind_tolerance_bps` through the touch; each retry goes
  `unwind_tolerance_step_bps` further, up to `unwind_tolerance_max_bps` (a venue fills an
  IOC through the levels down to its limit). After `unwind_attempts` the strategy halts
  ("unwind_failed", the alert): the residual stays its position (inputs `residual`,
  valued at `mid`), `degraded()` says why (/healthz reports degraded), and after
  `halt_cooldown_s` of the feed clock it resumes ("resume"): it retries the unwind with
  fresh attempts, then trades on. A halt never ends the run's trading for good; only the
  kill switch does. On the timer, when a venue's share of an asset drifts more than
  `rebalance_threshold` from an even split, a transfer from the richest to the poorest
  venue is requested ("rebalance").
- "transfer": the buy leg goes out alone ("arbitrage"); once final, the bought base is
  moved to the sell venue ("rebalance"), and sold when it has arrived ("transfer_sell").

Guards: stale, crossed or aged quotes are never traded; nothing is sent while any leg,
unwind or transfer of ours is unsettled; after acting, a venue pair of a symbol cools
down for `cooldown_s` so one opportunity is not taken twice.

Decisions: "arbitrage", "unwind", "unwind_failed", "resume", "transfer_sell", "rebalance" (no
intents: the runner builds a `daemon.core.model.TransferIntent` from `inputs` with
`TransferIntent.from_inputs` and routes it to the transfer service) and "skip" (logged
when the best cross-venue edge or the blocking reason of a symbol changes, net edge
rounded to 0.1 bps). `Decision.expected` is the expected profit in quote currency;
`inputs` repeat the net edge as `expected_edge_bps` and the buy venue's mid as `mid`,
the names the post-mortem report reads (daemon/postmortem/schema.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

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
    TransferIntent,
    is_perp_symbol,
    split_symbol,
)
from daemon.core.vocabulary import Action
from strategies.base import AccountView, MarketView, StrategyBase
from strategies.order_ids import OrderIds

if TYPE_CHECKING:  # settings are data handed in by the factory; no runtime dependency
    from config.settings import ArbitrageSettings, VenueSettings

BPS = 1e-4
#: Window of the volatility behind the transfer price risk: the seed's BTC transfer time.
VOLATILITY_WINDOW_S = 360.0
#: The 6-minute volatility is re-read from the market view at most this often.
VOLATILITY_TTL_NS = NS_PER_SECOND
#: Transfers of an asset are not repeated before the last one can have arrived.
DEFAULT_TRANSFER_S = 600.0
#: A size this close to zero is "nothing" when no lot is configured for the venue.
_DUST = 1e-12


@dataclass(slots=True)
class Leg:
    """One IOC order of ours; final at its terminal ack."""

    client_order_id: str
    venue: str
    side: Side
    qty: float
    price: float
    filled: float = 0.0  # from fills
    ack_filled: float = 0.0  # cumulative fill the terminal ack reports
    fee_base: float = 0.0  # fees charged in the base asset (reduce what can be moved)
    done: bool = False

    @property
    def filled_qty(self) -> float:
        return max(self.filled, self.ack_filled)


@dataclass(slots=True)
class Execution:
    """Orders sent in one Decision: both arbitrage legs, an unwind, or a transfer sale."""

    kind: Action  # ARBITRAGE | UNWIND | TRANSFER_SELL: the decision that sent it
    symbol: str
    legs: list[Leg]
    sell_venue: str = ""  # transfer mode: where the bought base goes

    @property
    def done(self) -> bool:
        return all(leg.done for leg in self.legs)

    @property
    def net_base(self) -> float:
        return sum(leg.side.sign * leg.filled_qty for leg in self.legs)


@dataclass(slots=True)
class PendingSale:
    """Transfer mode: base on its way to `venue`, to be sold once it has arrived."""

    venue: str
    qty: float
    ready_ns: int


@dataclass(slots=True)
class Opportunity:
    """One direction of one venue pair, costed. Money per unit of base in quote currency."""

    symbol: str
    buy: Quote
    sell: Quote
    qty: float
    size_limit: str
    gross: float
    fees: float
    slippage: float
    transfer_fee: float = 0.0
    price_risk: float = 0.0
    sigma_log: float = math.nan
    transfer_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def net(self) -> float:
        return self.gross - self.fees - self.slippage - self.transfer_fee - self.price_risk

    def bps(self, per_unit: float) -> float:
        return per_unit / self.buy.ask / BPS

    @property
    def net_edge_bps(self) -> float:
        return self.bps(self.net)


class ArbitrageStrategy(StrategyBase):
    """Cross-venue taker arbitrage with leg-risk unwinds, cooldowns and rebalancing."""

    name = "arbitrage"
    timer_interval_s: float | None = 1.0
    #: Quotes only: on_trade returns None, and no trade statistics are read.
    reads_trades = False

    def __init__(
        self,
        settings: ArbitrageSettings,
        venues: Mapping[str, VenueSettings],
        symbols: list[str],
        transfer_time_s: Mapping[str, float] | None = None,
        transfer_fee: Mapping[str, float] | None = None,
    ) -> None:
        """`venues`: the venues to trade (id -> settings: taker fees, lots, staleness).
        `transfer_time_s` / `transfer_fee`: per asset, seconds and base units of a move
        (the factory passes the execution settings)."""
        self.settings = settings
        self.venues = dict(venues)
        self.symbols = list(symbols)
        self.transfer_time_s = dict(transfer_time_s or {})
        self.transfer_fee = dict(transfer_fee or {})
        #: Why the strategy does not trade now (a failed unwind, the kill switch), or None.
        self.halted_reason: str | None = None
        #: Feed time the halt ends (a failed unwind's cooldown); None: for good (kill switch).
        self._halted_until: int | None = None
        self._venues_of = {s: [v for v, vs in self.venues.items()
                               if (vs.market_type == "linear") == is_perp_symbol(s)]
                           for s in self.symbols}
        # Every leg it may trade: on_quote ignores any other market, on_trade every trade.
        self.market_keys: frozenset[tuple[str, str]] | None = frozenset(
            (venue, symbol) for symbol, venues in self._venues_of.items() for venue in venues)
        # Per-event constants, looked up once here rather than on every quote.
        self._assets_of = {s: split_symbol(s) for s in self.symbols}
        self._taker_fee = {v: vs.taker_fee_bps * BPS for v, vs in self.venues.items()}
        self._max_age_ns = {v: vs.stale_after_s * NS_PER_SECOND for v, vs in self.venues.items()}
        self._lots = {(v, s): float(vs.markets.get(s, {}).get("lot", 0.0))
                      for v, vs in self.venues.items() for s in self.symbols}
        self._dusts = {s: max(min((self._lots[(v, s)] for v in venues), default=0.0)
                              * (1.0 - 1e-9), _DUST)
                       for s, venues in self._venues_of.items()}
        self._quotes: dict[str, dict[str, Quote]] = {s: {} for s in self.symbols}
        self._last_skip: dict[str, tuple[object, ...]] = {}
        self._cooldown_until: dict[tuple[str, str, str], int] = {}
        self._executions: dict[str, Execution] = {}  # client order id -> its execution
        self._residual: dict[str, float] = {s: 0.0 for s in self.symbols}
        self._unwind_attempts: dict[str, int] = {s: 0 for s in self.symbols}
        self._pending_sales: dict[str, PendingSale] = {}
        self._rebalance_until: dict[str, int] = {}
        self._sigma_cache: dict[tuple[str, str], tuple[int, float]] = {}
        self._market: MarketView | None = None
        self._account: AccountView | None = None
        self._clock: Clock = lambda: 0
        self._ids = OrderIds(self.name, 0)

    # -- Strategy contract -------------------------------------------------------------------

    def bind(self, market: MarketView, account: AccountView, clock: Clock) -> None:
        self._market, self._account, self._clock = market, account, clock
        self._ids = OrderIds(self.name, clock())

    def on_quote(self, quote: Quote) -> Decision | None:
        book = self._quotes.get(quote.symbol)
        if book is None or quote.exchange not in self._venues_of[quote.symbol]:
            return None
        book[quote.exchange] = quote
        now = self._clock()
        if self.halted_reason is not None:
            if self._halt_over(now):
                return self._resume(now)
            return self._skip(quote.symbol, now, ("halted",), self.halted_reason)
        if self._executions:
            return self._skip(quote.symbol, now, ("in flight",), "orders in flight")
        symbol = quote.symbol
        if abs(self._residual[symbol]) > self._dust(symbol):
            return self._unwind(symbol, now)
        sale = self._pending_sales.get(symbol)
        if sale is not None:
            return self._transfer_sell(symbol, sale, now)
        return self._evaluate(symbol, now)

    def on_trade(self, trade: Trade) -> Decision | None:
        return None

    def on_fill(self, fill: Fill) -> Decision | None:
        execution = self._executions.get(fill.client_order_id)
        if execution is None:
            return None
        leg = next(leg for leg in execution.legs if leg.client_order_id == fill.client_order_id)
        leg.filled += fill.qty
        if fill.fee_asset == self._assets_of[execution.symbol][0]:
            leg.fee_base += fill.fee
        return None

    def on_ack(self, ack: OrderAck) -> Decision | None:
        execution = self._executions.get(ack.client_order_id)
        if execution is None or not ack.status.is_terminal:
            return None
        leg = next(leg for leg in execution.legs if leg.client_order_id == ack.client_order_id)
        leg.done = True
        leg.ack_filled = max(leg.ack_filled, ack.filled_qty)
        if not execution.done:
            return None
        for settled in execution.legs:
            del self._executions[settled.client_order_id]
        return self._settle(execution, self._clock())

    def on_timer(self, now_ns: int) -> Decision | None:
        if self.halted_reason is not None and self._halt_over(now_ns):
            return self._resume(now_ns)
        if self.halted_reason is not None or self._executions:
            return None
        if self.settings.mode == "inventory" and not any(
                abs(r) > _DUST for r in self._residual.values()):
            return self._rebalance(now_ns)
        return None

    def on_kill(self, reason: str) -> Decision | None:
        # IOC legs do not rest; the runner cancels anything open. Stop for good.
        self.halted_reason = f"kill switch: {reason}"
        self._halted_until = None
        return None

    def degraded(self) -> str | None:
        """Halted after a failed unwind (until the cooldown ends): /healthz says degraded.
        The kill switch is not "degraded": /healthz already reports it as unhealthy."""
        if self.halted_reason is None or self._halted_until is None:
            return None
        return self.halted_reason

    # -- opportunity -----------------------------------------------------------------------

    def _evaluate(self, symbol: str, now: int) -> Decision | None:
        book = self._quotes[symbol]
        usable = {v: q for v, q in book.items() if self._unusable(q, now) is None}
        if len(book) < 2:
            return None
        if len(usable) < 2:
            bad = sorted(f"{v}: {self._unusable(q, now)}" for v, q in book.items()
                         if v not in usable)
            return self._skip(symbol, now, ("unusable", *bad), "no tradable pair (" +
                              "; ".join(bad) + ")")
        # Rank the directions on their per-unit net after fees and slippage, then size
        # and cost only the best (the size-dependent network fee of the transfer mode
        # could reorder directions only when their edges are nearly equal).
        slippage = self.settings.slippage_bps * BPS
        best_pair: tuple[Quote, Quote] | None = None
        best_unit_net = -math.inf
        for buy_venue, buy in usable.items():
            cost = buy.ask * (1.0 + self._taker_fee[buy_venue] + slippage)
            for sell_venue, sell in usable.items():
                if buy_venue == sell_venue:
                    continue
                unit_net = sell.bid * (1.0 - self._taker_fee[sell_venue] - slippage) - cost
                if unit_net > best_unit_net:
                    best_pair, best_unit_net = (buy, sell), unit_net
        if best_pair is None:  # only with non-finite prices, which parsers drop anyway
            return self._skip(symbol, now, ("unpriced",), "no finite price to compare")
        opportunity = self._cost(symbol, best_pair[0], best_pair[1], now)
        if opportunity is None:
            return self._skip(symbol, now, ("no volatility",),
                              "transfer price risk unknown (no volatility)")
        return self._decide(opportunity, now)

    def _decide(self, opportunity: Opportunity, now: int) -> Decision | None:
        s = self.settings
        symbol = opportunity.symbol
        pair = self._pair_key(symbol, opportunity.buy.exchange, opportunity.sell.exchange)
        net_bps = opportunity.net_edge_bps
        direction = (opportunity.buy.exchange, opportunity.sell.exchange)
        if net_bps < s.min_net_edge_bps:
            return self._skip(symbol, now, ("edge", *direction, round(net_bps, 1)),
                              f"net edge {net_bps:.2f} bps below {s.min_net_edge_bps:g} bps",
                              opportunity)
        if opportunity.qty <= self._dust(symbol):
            return self._skip(symbol, now, ("size", *direction, opportunity.size_limit),
                              f"size below lot (limited by {opportunity.size_limit})",
                              opportunity)
        if now < self._cooldown_until.get(pair, 0):
            return self._skip(symbol, now, ("cooldown", *direction),
                              f"cooldown on {pair[1]}/{pair[2]}", opportunity)
        self._cooldown_until[pair] = now + int(s.cooldown_s * NS_PER_SECOND)
        return self._send_arbitrage(opportunity, now)

    def _cost(self, symbol: str, buy: Quote, sell: Quote, now: int) -> Opportunity | None:
        """Cost one direction at the size we could trade; None if its risk is unknown."""
        fee_buy = self._taker_fee[buy.exchange]
        fee_sell = self._taker_fee[sell.exchange]
        qty, size_limit, extra = self._size(symbol, buy, sell, fee_buy)
        opportunity = Opportunity(
            symbol, buy, sell, qty, size_limit,
            gross=sell.bid - buy.ask,
            fees=buy.ask * fee_buy + sell.bid * fee_sell,
            slippage=(buy.ask + sell.bid) * self.settings.slippage_bps * BPS,
            extra=extra,
        )
        if self.settings.mode == "transfer":
            base = self._assets_of[symbol][0]
            transfer_s = self.transfer_time_s.get(base, DEFAULT_TRANSFER_S)
            sigma_log = self._volatility(sell.exchange, symbol, now)
            if not sigma_log >= 0.0:
                sigma_log = self._volatility(buy.exchange, symbol, now)
            if not sigma_log >= 0.0:
                return None
            # The fixed network fee, spread over the size (at displayed size if we have none).
            sized = qty if qty > 0 else max(min(buy.ask_qty, sell.bid_qty), _DUST)
            opportunity.transfer_fee = self.transfer_fee.get(base, 0.0) * sell.bid / sized
            opportunity.price_risk = (self.settings.transfer_risk_z * sigma_log
                                      * math.sqrt(transfer_s) * sell.bid)
            opportunity.sigma_log, opportunity.transfer_s = sigma_log, transfer_s
        return opportunity

    def _size(self, symbol: str, buy: Quote, sell: Quote,
              fee_buy: float) -> tuple[float, str, dict[str, float]]:
        """Largest size both books, both balances and the notional cap allow, to the lot."""
        base, quote_asset = self._assets_of[symbol]
        quote_available = self._balances(buy.exchange).get(quote_asset, 0.0)
        base_available = self._balances(sell.exchange).get(base, 0.0)
        size, size_limit = buy.ask_qty, "displayed ask"
        for limit, name in ((sell.bid_qty, "displayed bid"),
                            (quote_available / (buy.ask * (1.0 + fee_buy)),
                             "buy venue quote balance"),
                            (self.settings.max_notional / buy.ask, "max notional")):
            if limit < size:
                size, size_limit = limit, name
        # Transfer mode sells what it moves: the sell venue's base does not bind.
        if self.settings.mode == "inventory" and base_available < size:
            size, size_limit = base_available, "sell venue base balance"
        lot = max(self._lots[(buy.exchange, symbol)], self._lots[(sell.exchange, symbol)])
        qty = max(0.0, _floor_to(size, lot))
        extra = {"buy_quote_balance": quote_available, "sell_base_balance": base_available}
        return qty, size_limit, extra

    # -- sending -----------------------------------------------------------------------------

    def _send_arbitrage(self, opportunity: Opportunity, now: int) -> Decision:
        symbol, qty = opportunity.symbol, opportunity.qty
        buy, sell = opportunity.buy, opportunity.sell
        # Each IOC is priced through the touch by the slippage the net edge already paid
        # for: a touch that moves within that budget before the leg lands still fills it,
        # and the worst fill still leaves at least the minimum net edge.
        through = 1.0 + self.settings.slippage_bps * BPS
        legs = [Leg(self._next_id(), buy.exchange, Side.BUY, qty, buy.ask * through)]
        if self.settings.mode == "inventory":
            legs.append(Leg(self._next_id(), sell.exchange, Side.SELL, qty,
                            sell.bid / through))
        execution = Execution(Action.ARBITRAGE, symbol, legs, sell_venue=sell.exchange)
        intents = [self._register(execution, leg, "arbitrage leg") for leg in legs]
        inputs = self._opportunity_inputs(opportunity)
        reason = (f"net edge {opportunity.net_edge_bps:.2f} bps >= "
                  f"{self.settings.min_net_edge_bps:g} bps")
        return Decision(self.name, now, Action.ARBITRAGE, reason, inputs,
                        expected=opportunity.net * qty, intents=intents)

    def _settle(self, execution: Execution, now: int) -> Decision | None:
        """All legs of an execution are final: book the net base and hedge what is left."""
        symbol = execution.symbol
        if execution.kind is Action.TRANSFER_SELL:
            sale = self._pending_sales[symbol]
            sale.qty -= execution.legs[0].filled_qty
            if sale.qty <= self._dust(symbol):
                del self._pending_sales[symbol]
            return None
        if execution.kind is Action.ARBITRAGE and self.settings.mode == "transfer":
            return self._start_transfer(execution, now)
        # Base fees (a venue charging the buy fee in base) are left out on purpose: they
        # are a cost, not exposure worth a hedge order.
        self._residual[symbol] += execution.net_base
        if abs(self._residual[symbol]) <= self._dust(symbol):
            self._residual[symbol] = 0.0
            self._unwind_attempts[symbol] = 0
            return None
        return self._unwind(symbol, now)

    def _unwind(self, symbol: str, now: int) -> Decision | None:
        """Hedge the unmatched base with a protected IOC on the venue paying best, each
        attempt further through the touch; halt for a cooldown when none is left."""
        residual = self._residual[symbol]
        attempts = self._unwind_attempts[symbol]
        inputs: dict[str, object] = {"symbol": symbol, "residual": residual,
                                     "attempt": attempts + 1}
        if attempts >= self.settings.unwind_attempts:
            return self._halt(symbol, residual, now, inputs)
        side = Side.SELL if residual > 0 else Side.BUY
        venue, price = self._best_unwind_venue(symbol, side, abs(residual), now)
        if venue is None:
            why = "no usable, funded venue to unwind on now"
            return self._skip(symbol, now, ("unwind blocked",), why, extra=inputs)
        qty = _floor_to(abs(residual), self._lot(venue, symbol))
        self._unwind_attempts[symbol] = attempts + 1
        tolerance_bps = self._unwind_tolerance_bps(attempts)
        tolerance = tolerance_bps * BPS
        limit = price * (1.0 - tolerance) if side is Side.SELL else price * (1.0 + tolerance)
        leg = Leg(self._next_id(), venue, side, qty, limit)
        intent = self._register(Execution(Action.UNWIND, symbol, [leg]), leg, "unwind residual")
        inputs.update(venue=venue, side=str(side), qty=qty, touch=price, limit=limit,
                      tolerance_bps=tolerance_bps)
        return Decision(self.name, now, Action.UNWIND,
                        f"hedge {residual:+g} {symbol} left by a failed or partial leg",
                        inputs, intents=[intent])

    def _unwind_tolerance_bps(self, attempts_made: int) -> float:
        """How far through the touch the next attempt goes: widening, capped."""
        s = self.settings
        return min(s.unwind_tolerance_bps + attempts_made * s.unwind_tolerance_step_bps,
                   s.unwind_tolerance_max_bps)

    def _halt(self, symbol: str, residual: float, now: int,
              inputs: dict[str, object]) -> Decision:
        """Every unwind attempt failed: keep the residual as the position it is, say so
        (the alert), and stop trading until the cooldown ends."""
        s = self.settings
        attempts = self._unwind_attempts[symbol]
        widest = self._unwind_tolerance_bps(attempts - 1)
        self._halted_until = now + int(s.halt_cooldown_s * NS_PER_SECOND)
        self.halted_reason = (
            f"unwind failed: {residual:+g} {symbol} unhedged after {attempts} attempts (up to "
            f"{widest:g} bps through the touch); kept as position, resuming in "
            f"{s.halt_cooldown_s:g} s")
        mid = self._mid(symbol, now)
        inputs.update(attempts=attempts, widest_tolerance_bps=widest, mid=mid,
                      position_value=residual * mid if mid is not None else None,
                      cooldown_s=s.halt_cooldown_s, resume_ns=self._halted_until)
        return Decision(self.name, now, Action.UNWIND_FAILED, self.halted_reason, inputs)

    def _halt_over(self, now: int) -> bool:
        return self._halted_until is not None and now >= self._halted_until

    def _resume(self, now: int) -> Decision:
        """The cooldown after a failed unwind is over: trade again, first unwinding the
        residuals still carried, with a fresh set of attempts."""
        carried = {s: r for s, r in self._residual.items() if abs(r) > self._dust(s)}
        halted_for = self.halted_reason
        self.halted_reason, self._halted_until = None, None
        self._last_skip.clear()  # the first skip after a halt is news again
        for symbol in self._unwind_attempts:
            self._unwind_attempts[symbol] = 0
        inputs: dict[str, object] = {"residuals": carried, "halted_for": halted_for,
                                     "cooldown_s": self.settings.halt_cooldown_s}
        if len(carried) == 1:
            ((symbol, residual),) = carried.items()
            inputs.update(symbol=symbol, residual=residual)
        plan = ("unwinding " + ", ".join(f"{r:+g} {s}" for s, r in carried.items()) + " first"
                if carried else "nothing left to unwind")
        return Decision(self.name, now, Action.RESUME,
                        f"cooldown of {self.settings.halt_cooldown_s:g} s over: trading again, "
                        f"{plan}", inputs)

    def _mid(self, symbol: str, now: int) -> float | None:
        """The mean mid of the usable venues quoting the symbol (None if none is)."""
        mids = [q.mid for q in self._quotes[symbol].values() if self._unusable(q, now) is None]
        return sum(mids) / len(mids) if mids else None

    def _best_unwind_venue(self, symbol: str, side: Side, qty: float,
                           now: int) -> tuple[str | None, float]:
        """Venue with the best price after its taker fee that has the balance to trade."""
        base, quote_asset = split_symbol(symbol)
        best_venue, best_price, best_value = None, 0.0, -math.inf
        for venue, quote in self._quotes[symbol].items():
            if self._unusable(quote, now) is not None:
                continue
            fee = self.venues[venue].taker_fee_bps * BPS
            balances = self._balances(venue)
            if side is Side.SELL:
                price, value = quote.bid, quote.bid * (1.0 - fee)
                funded = balances.get(base, 0.0) >= qty
            else:
                price, value = quote.ask, -quote.ask * (1.0 + fee)
                funded = balances.get(quote_asset, 0.0) >= qty * quote.ask * (1.0 + fee)
            tradable = _floor_to(qty, self._lot(venue, symbol)) > _DUST
            if funded and tradable and value > best_value:
                best_venue, best_price, best_value = venue, price, value
        return best_venue, best_price

    # -- transfer mode -----------------------------------------------------------------------

    def _start_transfer(self, execution: Execution, now: int) -> Decision | None:
        symbol = execution.symbol
        buy_leg = execution.legs[0]
        amount = buy_leg.filled_qty - buy_leg.fee_base
        if amount <= self._dust(symbol):
            return None  # nothing bought: nothing to move
        base = split_symbol(symbol)[0]
        transfer_s = self.transfer_time_s.get(base, DEFAULT_TRANSFER_S)
        fee = self.transfer_fee.get(base, 0.0)
        self._pending_sales[symbol] = PendingSale(
            execution.sell_venue, amount - fee, now + int(transfer_s * NS_PER_SECOND))
        transfer = TransferIntent(base, buy_leg.venue, execution.sell_venue, amount,
                                  self._next_id(), self.name, "transfer arbitrage")
        inputs = transfer.as_inputs()
        inputs.update(symbol=symbol, transfer_fee=fee, transfer_s=transfer_s,
                      bought_qty=buy_leg.filled_qty)
        return Decision(self.name, now, Action.REBALANCE,
                        f"move {amount:g} {base} bought on {buy_leg.venue} to "
                        f"{execution.sell_venue} for sale", inputs)

    def _transfer_sell(self, symbol: str, sale: PendingSale, now: int) -> Decision | None:
        quote = self._quotes[symbol].get(sale.venue)
        base = split_symbol(symbol)[0]
        available = self._balances(sale.venue).get(base, 0.0)
        if now < sale.ready_ns or quote is None or available <= self._dust(symbol):
            return self._skip(symbol, now, ("awaiting transfer",),
                              f"awaiting {sale.qty:g} {base} at {sale.venue}")
        unusable = self._unusable(quote, now)
        if unusable is not None:
            return self._skip(symbol, now, ("sale blocked", unusable),
                              f"cannot sell transferred {base}: {unusable}")
        qty = _floor_to(min(sale.qty, available), self._lot(sale.venue, symbol))
        if qty <= _DUST:
            del self._pending_sales[symbol]  # dust below the lot: nothing sellable
            return None
        limit = quote.bid * (1.0 - self.settings.unwind_tolerance_bps * BPS)
        leg = Leg(self._next_id(), sale.venue, Side.SELL, qty, limit)
        intent = self._register(Execution(Action.TRANSFER_SELL, symbol, [leg]), leg,
                                "sell transferred base")
        inputs = {"symbol": symbol, "venue": sale.venue, "qty": qty, "bid": quote.bid,
                  "bid_qty": quote.bid_qty, "limit": limit, "pending_qty": sale.qty}
        return Decision(self.name, now, Action.TRANSFER_SELL,
                        f"{base} arrived on {sale.venue}: sell it", inputs,
                        expected=qty * quote.bid, intents=[intent])

    # -- inventory-mode rebalancing ------------------------------------------------------------

    def _rebalance(self, now: int) -> Decision | None:
        """Even out an asset across venues once a venue's share drifts past the threshold."""
        for asset, venues in self._assets().items():
            if len(venues) < 2 or now < self._rebalance_until.get(asset, 0):
                continue
            held = {v: self._balances(v).get(asset, 0.0) for v in venues}
            total = sum(held.values())
            if total <= 0.0:
                continue
            even_share = 1.0 / len(venues)
            drift = max(abs(amount / total - even_share) for amount in held.values())
            if drift <= self.settings.rebalance_threshold:
                continue
            richest = max(held, key=held.__getitem__)
            poorest = min(held, key=held.__getitem__)
            amount = min(held[richest] - total * even_share, total * even_share - held[poorest])
            fee = self.transfer_fee.get(asset, 0.0)
            if amount <= fee:
                continue
            transfer_s = self.transfer_time_s.get(asset, DEFAULT_TRANSFER_S)
            self._rebalance_until[asset] = now + int(
                (transfer_s + self.settings.cooldown_s) * NS_PER_SECOND)
            transfer = TransferIntent(asset, richest, poorest, amount, self._next_id(),
                                      self.name, "inventory rebalance")
            inputs = transfer.as_inputs()
            inputs.update(share_from=held[richest] / total, share_to=held[poorest] / total,
                          even_share=even_share, threshold=self.settings.rebalance_threshold,
                          transfer_fee=fee, transfer_s=transfer_s, total=total)
            return Decision(self.name, now, Action.REBALANCE,
                            f"{asset} share drifted {drift:.2f} from even", inputs)
        return None

    def _assets(self) -> dict[str, list[str]]:
        """Asset -> venues that trade it in one of our symbols."""
        assets: dict[str, list[str]] = {}
        for symbol, venues in self._venues_of.items():
            for asset in split_symbol(symbol):
                known = assets.setdefault(asset, [])
                known.extend(v for v in venues if v not in known)
        return assets

    # -- helpers -----------------------------------------------------------------------------

    def _unusable(self, quote: Quote, now: int) -> str | None:
        # The feed watchdog flags stale quotes; the age check covers a watchdog that lags.
        if quote.stale or now - quote.local_ts_ns > self._max_age_ns[quote.exchange]:
            return "stale"
        if quote.crossed:
            return "crossed"
        return None

    def _skip(self, symbol: str, now: int, key: tuple[object, ...], reason: str,
              opportunity: Opportunity | None = None,
              extra: dict[str, object] | None = None) -> Decision | None:
        """A skip is logged only when the symbol's best edge or blocking reason changes."""
        if self._last_skip.get(symbol) == key:
            return None
        self._last_skip[symbol] = key
        inputs: dict[str, object] = {"symbol": symbol}
        if opportunity is not None:
            inputs.update(self._opportunity_inputs(opportunity))
        if extra:
            inputs.update(extra)
        expected = opportunity.net * opportunity.qty if opportunity is not None else 0.0
        return Decision(self.name, now, Action.SKIP, reason, inputs, expected=expected)

    def _opportunity_inputs(self, o: Opportunity) -> dict[str, object]:
        """Flat snapshot: prices in quote currency, sizes in base, edges in bps of ask_buy."""
        inputs: dict[str, object] = {
            "symbol": o.symbol, "mode": self.settings.mode,
            "buy_venue": o.buy.exchange, "sell_venue": o.sell.exchange,
            "buy_bid": o.buy.bid, "buy_ask": o.buy.ask, "buy_ask_qty": o.buy.ask_qty,
            "sell_bid": o.sell.bid, "sell_ask": o.sell.ask, "sell_bid_qty": o.sell.bid_qty,
            "buy_quote_ts_ns": o.buy.local_ts_ns, "sell_quote_ts_ns": o.sell.local_ts_ns,
            "qty": o.qty, "size_limit": o.size_limit,
            "gross_edge_bps": o.bps(o.gross), "fee_bps": o.bps(o.fees),
            "slippage_bps": o.bps(o.slippage), "transfer_fee_bps": o.bps(o.transfer_fee),
            "price_risk_bps": o.bps(o.price_risk),
            "cost_bps": o.bps(o.fees + o.slippage + o.transfer_fee + o.price_risk),
            "net_edge_bps": o.net_edge_bps, "min_net_edge_bps": self.settings.min_net_edge_bps,
            "expected_profit": o.net * o.qty,
            # The post-mortem's names: the edge it aggregates, the mid that marks positions.
            "expected_edge_bps": o.net_edge_bps, "mid": o.buy.mid,
        }
        if self.settings.mode == "transfer":
            inputs.update(sigma_log=o.sigma_log, transfer_s=o.transfer_s,
                          transfer_risk_z=self.settings.transfer_risk_z)
        inputs.update(o.extra)
        return inputs

    def _register(self, execution: Execution, leg: Leg, reason: str) -> OrderIntent:
        self._executions[leg.client_order_id] = execution
        return OrderIntent(leg.venue, execution.symbol, leg.side, OrderType.IOC, leg.qty,
                           leg.price, leg.client_order_id, self.name, reason)

    def _volatility(self, venue: str, symbol: str, now: int) -> float:
        cached = self._sigma_cache.get((venue, symbol))
        if cached is not None and now - cached[0] < VOLATILITY_TTL_NS:
            return cached[1]
        sigma = self._market.volatility(venue, symbol, VOLATILITY_WINDOW_S) \
            if self._market is not None else math.nan
        self._sigma_cache[(venue, symbol)] = (now, sigma)
        return sigma

    def _balances(self, venue: str) -> Mapping[str, float]:
        return self._account.balances(venue) if self._account is not None else {}

    def _lot(self, venue: str, symbol: str) -> float:
        """The venue's lot for the symbol; 0 (no rounding) when the market is not configured."""
        return self._lots[(venue, symbol)]

    def _dust(self, symbol: str) -> float:
        """Below the smallest lot of any venue: too small to trade, treated as zero."""
        return self._dusts[symbol]

    @staticmethod
    def _pair_key(symbol: str, venue_a: str, venue_b: str) -> tuple[str, str, str]:
        first, second = sorted((venue_a, venue_b))
        return symbol, first, second

    def _next_id(self) -> str:
        return self._ids.next()


def _floor_to(value: float, step: float) -> float:
    """Largest multiple of `step` <= value; no rounding when step is 0 (lot unknown)."""
    if step <= 0.0:
        return value
    return round(math.floor(value / step + 1e-9) * step, _decimals(step))


@cache
def _decimals(step: float) -> int:
    return max(0, round(-math.log10(step))) + 2
