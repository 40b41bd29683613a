"""Internalize-or-hedge: for each client fill, offset it on a venue now or warehouse it.

The desk has taken the other side of a client's trade (a 1inch Fusion fill, an OTC
trade). Its inventory `q` (base units, + long) can be offset at once by crossing a hedge
venue's touch, or held in the hope that opposite client flow offsets it for free.

Costs, all in the quote currency (USDT), for a hedge of `h` base units:

- **hedge cost** `C(h) = c*h + k*h^2`: crossing from the mid to the touch and paying the
  taker fee on the average price, which the formulaic model moves by
  `slippage_coefficient * h` (a fraction of the touch per base unit):
  `avg = touch * (1 + sign * coefficient * h)` (sign +1 buying, -1 selling), so
  `c = sign*(touch - mid) + fee*touch` (quote per base) and
  `k = (1 + sign*fee) * coefficient * touch` (quote per base^2). When the market view can
  walk the venue's depth (`DepthMarketView.walk`), the walked average price replaces the
  formula (and sets an effective coefficient for the optimisation).
- **warehouse cost** `W(q) = A * max(0, |q| - o)^2` over the horizon: the inventory risk
  `A*q^2` with `A = gamma * sigma_price^2 * horizon_s` (gamma: risk aversion per quote
  unit; sigma_price = mid * sigma, sigma the std of log mid returns per sqrt-second), minus
  the value of the expected natural offset `o`: the part of the inventory that recent net
  client flow, if opposite to it, should offset within the horizon. The flow is an
  exponentially weighted rate (base/s) whose forecast fades with its own half-life.

The hedge minimising `C(h) + W(q - h)` has a closed form (`optimal_hedge_qty`); the desk
hedges that (partial hedge: the part of the inventory beyond what is optimal to hold),
more if the inventory limit requires it. Outcomes: "warehouse" (no hedge), "hedge" (at
least the whole fill is offset), "partial_hedge" (less). Hedges are IOC orders at the
touch; an unfilled remainder expires and the inventory is re-evaluated on the timer and
on quotes (throttled), as are warehoused positions when prices move.

**The inventory limit without a market.** A client fill that would take the inventory
past `max_inventory` is hedged back to it at once, which needs a fresh quote on a hedge
venue. Without one (or after the kill switch, which stops hedging) such a fill is
refused before anything books it (`client_fill_refusal`): the ingest endpoint answers
the client with an error, and the runner, for every source, records a "reject" Decision
instead of booking it. It is never warehoused past the limit with no mid to price the
risk. Fills within the limit, and fills that reduce the inventory, are always taken.

**Policies.** `policy = "optimal"` is the above; `"always_hedge"` offsets the whole
inventory on every client fill (and what an IOC left unfilled on the next re-evaluation):
the baseline policy, forced.

**The always-hedge baseline: a twin, not a formula.** What warehousing saved is only
meaningful against an always-hedge desk priced by the same fill model as ours: the
executor's real (paper or live) fills, never the formula above, which the executor does not
charge. `from_settings` therefore gives the strategy a twin, `baseline`: an
InternalizeStrategy with `policy = "always_hedge"` named `<name>.always-hedge`. The trading
session (daemon/trading/session.py) runs it beside the strategy, on a paper executor of
its own with the same settings and its own risk gate, and its runner is fed the very same
quotes, trades, client fills and time as the strategy's, in the same process; its
records go to the same decision log under its own name. So the twin *is* a run of the
forced always-hedge policy on the same flow and the same executor rules: the post-mortem
computes its P&L with the same code as the strategy's, and "saved vs always-hedge" compares
like with like. Why a twin and not a second backtest pass: it costs one more strategy on
the events the strategy already sees (no second replay), it works the same in `--mode
action` (paper or live: there the baseline is the paper model, the only one that can
execute a policy not traded), and it needs no second copy of the client flow. Each
policy is alone in its own book: the twin does not see the strategy's taken liquidity,
nor the strategy the twin's, as two separate runs would not. Off with
`always_hedge_baseline = false` (the post-mortem then has no baseline to show).

**Hedge prices are fills.** Every hedge order is matched to the client fill it was sent
for (by client order id); its executions, as the executor reported them, are what the
results CSV shows (`strategies/portfolio.py`), beside the estimate the strategy decided on.

The runner drives `on_client_fill` for every client fill it takes (one Decision each,
always: action "hedge" | "partial_hedge" | "warehouse"); `on_timer` and `on_quote` return a
Decision only when they hedge. Decision `inputs` (flat; money in quote, sizes in base):
trigger (client_fill | timer | quote | kill), client_side/qty/price/id, fill_id,
inventory_before/after (including hedges in flight), bid/ask/mid and hedge_venue, sigma
(log return per sqrt-second), sigma_price (quote per base per sqrt-second),
risk_per_base2 (A), flow_rate (base/s), expected_flow and expected_offset (base),
inventory_risk and offset_value (quote), hedge_cost (offsetting the fill, or for timer and
quote the whole inventory, now), warehouse_cost (for a fill: W(after) - W(before); else
W(inventory)), slippage_model and slippage_coefficient, hedge_qty, target_inventory,
forced (the limit decided), hedge_cost_chosen, expected_cost (= `Decision.expected`: cost
of the chosen plan, C(hedge) + W(what stays)), outcome.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from daemon.core.clock import NS_PER_SECOND, Clock
from daemon.core.model import (
    ClientFill,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Quote,
    Side,
    Trade,
)
from daemon.core.vocabulary import BASELINE_SUFFIX, Action
from strategies.base import AccountView, MarketView, StrategyBase
from strategies.portfolio import Portfolio, TradeOutcome

FEE_PER_BPS = 1e-4
OPTIMAL = "optimal"
ALWAYS_HEDGE = "always_hedge"
LN2 = math.log(2.0)
#: +1 buying, -1 selling; a dict lookup is several times cheaper than the `Side.sign` property
#: on the per-fill path.
_SIGN = {Side.BUY: 1.0, Side.SELL: -1.0}


@runtime_checkable
class DepthMarketView(Protocol):
    """Optional extra of a market view that keeps depth books."""

    def walk(self, exchange: str, symbol: str, side: str, qty: float) -> float | None:
        """Average price for a taker `side` ("buy" lifts asks) of `qty`; None if too thin."""
        ...


# --- pure maths ---------------------------------------------------------------------------


def formula_price(side: Side, qty: float, bid: float, ask: float, coefficient: float) -> float:
    """Average price of taking `qty` base: the touch moved by `coefficient * qty` (fraction)."""
    if side is Side.BUY:
        return ask * (1.0 + coefficient * qty)
    return bid * (1.0 - coefficient * qty)


def crossing_cost(side: Side, qty: float, avg_price: float, mid: float,
                  fee_rate: float) -> tuple[float, float]:
    """(cost, fee) in quote of taking `qty` at `avg_price` against the mid; fee on notional."""
    fee = fee_rate * qty * avg_price
    return _SIGN[side] * (avg_price - mid) * qty + fee, fee


def expected_offset(inventory: float, expected_flow: float) -> float:
    """Base units of `inventory` that an expected desk-side flow (base) would offset."""
    if inventory > 0.0:
        return min(inventory, max(0.0, -expected_flow))
    if inventory < 0.0:
        return min(-inventory, max(0.0, expected_flow))
    return 0.0


def warehouse_cost(inventory: float, risk_per_base2: float, expected_flow: float) -> float:
    """A * (|q| - offset)^2: the inventory risk minus the value of the expected offset."""
    residual = abs(inventory) - expected_offset(inventory, expected_flow)
    return risk_per_base2 * residual * residual


def optimal_hedge_qty(inventory: float, unit_cost: float, impact: float,
                      risk_per_base2: float, offset: float) -> float:
    """Base units to hedge now (>= 0, reducing |inventory|) minimising C(h) + W(q - h).

    For h below |q| - o the derivative is c + 2*k*h - 2*A*(|q| - o - h), zero at
    h* = (2*A*(|q| - o) - c) / (2*(k + A)); beyond |q| - o warehousing costs nothing more
    and hedging only adds cost. Unknown risk (A NaN or inf) hedges everything.
    """
    if not math.isfinite(risk_per_base2):
        return abs(inventory)
    excess = abs(inventory) - offset
    if excess <= 0.0:
        return 0.0
    denominator = 2.0 * (impact + risk_per_base2)
    if denominator <= 0.0:
        return 0.0
    hedge = (2.0 * risk_per_base2 * excess - unit_cost) / denominator
    return min(max(hedge, 0.0), excess)


class FlowImbalance:
    """Exponentially weighted net client flow from the desk's view (base per second).

    Each fill adds `desk_qty / tau` and the rate decays as exp(-dt / tau), tau =
    half-life / ln 2. The forecast over a horizon H assumes the imbalance keeps fading:
    expected flow = rate * tau * (1 - exp(-H / tau)) base units.
    """

    __slots__ = ("_rate", "_tau_ns", "_tau_s", "_ts_ns")

    def __init__(self, halflife_s: float) -> None:
        self._tau_s = halflife_s / LN2
        self._tau_ns = self._tau_s * NS_PER_SECOND
        self._rate = 0.0
        self._ts_ns = 0

    def rate(self, now_ns: int) -> float:
        if self._rate == 0.0 or now_ns <= self._ts_ns:
            return self._rate
        return self._rate * math.exp((self._ts_ns - now_ns) / self._tau_ns)

    def add(self, now_ns: int, desk_qty: float) -> None:
        self._rate = self.rate(now_ns) + desk_qty / self._tau_s
        self._ts_ns = max(self._ts_ns, now_ns)

    def expected(self, now_ns: int, horizon_s: float) -> float:
        return self.rate(now_ns) * self._tau_s * (1.0 - math.exp(-horizon_s / self._tau_s))


# --- the strategy -------------------------------------------------------------------------


@dataclass(slots=True)
class PendingHedge:
    """A hedge order sent and not finished: `remaining` is the base delta still to come."""

    intent: OrderIntent
    remaining: float
    sent_ns: int
    #: The client fill this hedge was sent for (None: a hedge of warehoused inventory).
    trade: TradeOutcome | None = None


@dataclass(slots=True)
class _Touch:
    """The hedge venue chosen for a side: its quote and what crossing it costs."""

    venue: str
    side: Side
    bid: float
    ask: float
    mid: float
    touch: float
    fee_rate: float


@dataclass(slots=True)
class _Plan:
    """The hedge-or-warehouse answer for one inventory."""

    inventory: float
    hedge_qty: float
    touch: _Touch | None
    sigma: float
    risk_per_base2: float
    expected_flow: float
    offset: float
    #: W(inventory): what keeping all of it costs over the horizon (quote).
    warehouse_cost: float
    coefficient: float
    slippage_model: str
    forced: bool
    reason: str


class InternalizeStrategy(StrategyBase):
    """Hedge-or-warehouse for client flow on one symbol, hedged on one or more venues."""

    takes_client_flow = True

    def __init__(
        self,
        symbol: str,
        hedge_venues: Mapping[str, float],
        *,
        gamma: float,
        horizon_s: float,
        max_inventory: float,
        slippage_coefficient: float,
        initial_balances: Mapping[str, float],
        volatility_window_s: float = 360.0,
        flow_halflife_s: float = 120.0,
        reevaluate_interval_s: float = 5.0,
        quote_throttle_s: float = 1.0,
        lot: float = 0.0,
        pending_timeout_s: float = 30.0,
        max_order_notional: float = math.inf,
        flatten_on_kill: bool = False,
        policy: str = OPTIMAL,
        name: str = "internalize",
    ) -> None:
        """`hedge_venues`: venue id -> taker fee in bps. `gamma`: risk aversion per quote
        unit (1/USDT). `slippage_coefficient`: fractional price impact per base unit.
        `lot`: hedge sizes are rounded to it (0: no rounding). `max_order_notional` (quote):
        one hedge order is capped at it, as the risk gate would refuse more; the rest
        follows on the next re-evaluation. `policy`: "optimal" or "always_hedge"."""
        if not hedge_venues:
            raise ValueError("InternalizeStrategy needs at least one hedge venue")
        if policy not in (OPTIMAL, ALWAYS_HEDGE):
            raise ValueError(f"internalize policy {policy!r}: expected {OPTIMAL!r} or "
                             f"{ALWAYS_HEDGE!r}")
        self.policy = policy
        #: The always-hedge twin the session runs beside this strategy (None: no baseline).
        self.baseline: InternalizeStrategy | None = None
        self.name = name
        self.symbol = symbol
        self.timer_interval_s: float | None = reevaluate_interval_s
        self.gamma = gamma
        self.horizon_s = horizon_s
        self.max_inventory = max_inventory
        self.slippage_coefficient = slippage_coefficient
        self.volatility_window_s = volatility_window_s
        self.lot = lot
        self._pending_timeout_ns = int(pending_timeout_s * NS_PER_SECOND)
        self.max_order_notional = max_order_notional
        self.flatten_on_kill = flatten_on_kill
        self._fee_rates = {venue: bps * FEE_PER_BPS for venue, bps in hedge_venues.items()}
        # The hedge markets: on_quote ignores any other market, on_trade every trade.
        self.market_keys: frozenset[tuple[str, str]] | None = frozenset(
            (venue, symbol) for venue in hedge_venues)
        # Quotes only: on_trade returns None, and no trade statistics are read.
        self.reads_trades = False
        self._primary_venue = next(iter(hedge_venues))
        self._throttle_ns = int(quote_throttle_s * NS_PER_SECOND)
        self.portfolio = Portfolio(symbol, initial_balances, horizon_s)
        self.flow = FlowImbalance(flow_halflife_s)
        #: Hedge orders in flight, oldest first.
        self.pending: list[PendingHedge] = []
        self.killed = False
        self._market: MarketView | None = None
        self._walk: Any = None
        self._clock: Clock = _unbound_clock
        self._sigma = math.nan
        self._sigma_ts_ns = -1
        self._last_quote_eval_ns = -(2**62)

    @classmethod
    def from_settings(cls, settings: Any, name: str = "internalize") -> InternalizeStrategy:
        """Build from the daemon `Settings` (duck-typed: strategies never import config)."""
        own = settings.strategies.internalize
        if own.venue not in settings.venues:
            raise ValueError(f"strategies.internalize.venue {own.venue!r} is not a configured "
                             "venue")
        venue = settings.venues[own.venue]
        lot = float(venue.markets.get(own.symbol, {}).get("lot", 0.0))

        def build(policy: str, strategy_name: str) -> InternalizeStrategy:
            return cls(
                own.symbol, {own.venue: venue.taker_fee_bps}, gamma=own.gamma,
                horizon_s=own.horizon_s, max_inventory=own.max_inventory,
                slippage_coefficient=own.slippage_coefficient,
                initial_balances=own.initial_balances,
                volatility_window_s=own.volatility_window_s,
                flow_halflife_s=own.flow_halflife_s,
                reevaluate_interval_s=own.reevaluate_interval_s, lot=lot,
                max_order_notional=settings.risk.max_order_notional,
                flatten_on_kill=settings.risk.flatten_on_kill, policy=policy,
                name=strategy_name,
            )

        strategy = build(own.policy, name)
        if own.always_hedge_baseline and own.policy != ALWAYS_HEDGE:
            strategy.baseline = build(ALWAYS_HEDGE, name + BASELINE_SUFFIX)
        return strategy

    # -- contract ----------------------------------------------------------------------------

    def bind(self, market: MarketView, account: AccountView, clock: Clock) -> None:
        self._market = market
        self._walk = market.walk if isinstance(market, DepthMarketView) else None
        self._clock = clock

    @property
    def inventory(self) -> float:
        """Base units held because of client flow, hedge fills included."""
        return self.portfolio.inventory

    @property
    def position(self) -> float:
        """Inventory plus hedges in flight: what the next decision works on."""
        return self.portfolio.inventory + sum(hedge.remaining for hedge in self.pending)

    def write_exports(self, out_dir: Path) -> list[Path]:
        """The desk portfolio: flow_internalization_results.csv, portfolio_tracking_results.csv;
        each client fill's hedge-at-once alternative priced by the twin's fills, if any."""
        from strategies.portfolio import write_results

        if self.baseline is not None:
            self.portfolio.adopt_baseline(self.baseline.portfolio)
        return list(write_results(self.portfolio, out_dir))

    def summary_lines(self) -> list[str]:
        """For the end-of-run summary: the desk's P&L and, with a twin, the baseline's, each
        from its own fills, marked at its last mid."""
        desk = self.portfolio
        pnl = desk.pnl_trading(desk.last_mid)
        lines = [f"desk P&L {pnl:+,.2f} {desk.quote} at the last mid: {len(desk.trades):,} "
                 f"client fills, {desk.hedge_fills:,} hedge fills ({desk.hedge_fees:,.2f} "
                 "fees)"]
        if self.baseline is not None:
            twin = self.baseline.portfolio
            base = twin.pnl_trading(twin.last_mid)
            lines.append(f"always-hedge twin {self.baseline.name} (same flow, same fill "
                         f"model; its records are in the counts above): P&L {base:+,.2f}, "
                         f"{twin.hedge_fills:,} hedge fills; saved vs always-hedge "
                         f"{pnl - base:+,.2f}")
        return lines

    def client_fill_refusal(self, fill: ClientFill,
                            queued_desk_delta: float = 0.0) -> str | None:
        """Why the desk cannot take this fill, or None: past `max_inventory` with nothing to
        hedge it back on (no fresh quote on any hedge venue, or the kill switch fired).

        `queued_desk_delta`: the desk's side of fills accepted but not yet delivered (the
        ingest endpoint answers before the runner books), counted as already held.
        """
        before = self.position + queued_desk_delta
        after = before + fill.desk_base_delta
        if abs(after) <= self.max_inventory or abs(after) <= abs(before):
            return None
        limit = (f"inventory limit {self.max_inventory:g}: this fill would take the "
                 f"inventory to {after:+g}")
        if self.killed:
            return f"{limit} and the kill switch stopped hedging"
        if self._best_touch(Side.SELL if after > 0.0 else Side.BUY, abs(after)) is None:
            return f"{limit} with no fresh quote on any hedge venue to hedge it back"
        return None

    def on_client_fill(self, fill: ClientFill) -> Decision:
        """Always exactly one Decision: hedge, partial_hedge or warehouse."""
        now = self._clock()
        before = self.position
        delta = fill.desk_base_delta
        after = before + delta
        self.flow.add(now, delta)
        plan = self._plan(after, now)
        touch = plan.touch
        fill_cost, expected_price, expected_fee = self._fill_hedge_cost(fill, touch, plan)
        hedged = plan.hedge_qty
        if self.killed:
            hedged, reason = 0.0, "kill switch: not hedging"
        else:
            reason = plan.reason
        outcome = _fill_outcome(hedged, fill.qty, self.lot)
        mid = touch.mid if touch is not None else math.nan
        trade = self.portfolio.on_client_fill(fill, mid, outcome, hedged, expected_price,
                                              expected_fee)
        inputs = self._inputs(plan, now, "client_fill", hedged, outcome)
        warehouse_marginal = plan.warehouse_cost - warehouse_cost(
            before, plan.risk_per_base2, plan.expected_flow)
        inputs.update(
            client_side=str(fill.side), client_qty=fill.qty, client_price=fill.price,
            client_id=fill.client_id, fill_id=fill.fill_id, fill_ts_ns=fill.ts_ns,
            inventory_before=before, inventory_after=after,
            hedge_cost=fill_cost, warehouse_cost=warehouse_marginal,
        )
        return self._decision(now, outcome, reason, plan, hedged, inputs, trade)

    def on_quote(self, quote: Quote) -> Decision | None:
        """Mark the portfolio and re-evaluate warehoused inventory, at most once a throttle."""
        if quote.symbol != self.symbol or quote.exchange not in self._fee_rates or quote.stale:
            return None
        now = self._clock()
        if now - self._last_quote_eval_ns < self._throttle_ns:
            return None
        self._last_quote_eval_ns = now
        self.portfolio.mark(now, quote.mid)
        return self._reevaluate(now, "quote")

    def on_trade(self, trade: Trade) -> Decision | None:
        return None

    def on_fill(self, fill: Fill) -> Decision | None:
        """A hedge executed: book it; the in-flight amount shrinks by what filled."""
        hedge = self._pending_for(fill.client_order_id)
        if hedge is not None:
            hedge.remaining -= fill.qty if fill.side is Side.BUY else -fill.qty
            if abs(hedge.remaining) <= 1e-9 * hedge.intent.qty:
                self.pending.remove(hedge)
        self.portfolio.on_hedge_fill(fill, hedge.trade if hedge is not None else None)
        return None

    def on_ack(self, ack: OrderAck) -> Decision | None:
        """An IOC that is final will not fill any more (a fill already left `pending`)."""
        if ack.status.is_terminal:
            hedge = self._pending_for(ack.client_order_id)
            if hedge is not None:
                self.pending.remove(hedge)
        return None

    def on_timer(self, now_ns: int) -> Decision | None:
        self.portfolio.mark(now_ns, self._mid(), record=True)
        return self._reevaluate(now_ns, "timer")

    def on_kill(self, reason: str) -> Decision | None:
        """Stop hedging for good; with flatten_on_kill, offset the whole inventory once."""
        self.killed = True
        position = self.position
        if not self.flatten_on_kill or position == 0.0:
            return None
        now = self._clock()
        plan = self._plan(position, now)
        if plan.touch is None:
            return None
        plan.hedge_qty = self._round_lot(min(abs(position),
                                             self.max_order_notional / plan.touch.touch),
                                         up=False)
        plan.reason = f"kill switch ({reason}): flatten the inventory"
        inputs = self._inputs(plan, now, "kill", plan.hedge_qty, "hedge")
        return self._decision(now, Action.HEDGE, plan.reason, plan, plan.hedge_qty, inputs)

    # -- planning ----------------------------------------------------------------------------

    def _reevaluate(self, now: int, trigger: str) -> Decision | None:
        """Hedge warehoused inventory that is no longer worth holding; None otherwise."""
        self._expire_pending(now)
        position = self.position
        if self.killed or self.pending or position == 0.0:
            return None
        plan = self._plan(position, now)
        if plan.hedge_qty <= 0.0:
            return None
        outcome = _fill_outcome(plan.hedge_qty, abs(position), self.lot)
        inputs = self._inputs(plan, now, trigger, plan.hedge_qty, outcome)
        hedge_all = self._hedge_cost(plan.touch, abs(position), plan)[0]  # type: ignore[arg-type]
        inputs.update(inventory_before=position, inventory_after=position, hedge_cost=hedge_all,
                      warehouse_cost=plan.warehouse_cost)
        return self._decision(now, outcome, plan.reason, plan, plan.hedge_qty, inputs)

    def _plan(self, position: float, now: int) -> _Plan:
        side = Side.SELL if position > 0.0 else Side.BUY
        touch = self._best_touch(side, abs(position))
        sigma = self._sigma_at(now)
        expected_flow = self.flow.expected(now, self.horizon_s)
        offset = expected_offset(position, expected_flow)
        if touch is None:
            return _Plan(position, 0.0, None, sigma, math.nan, expected_flow, offset, math.nan,
                         self.slippage_coefficient, "none", False,
                         "no fresh quote on any hedge venue: warehoused until one arrives")
        sigma_price = sigma * touch.mid
        risk = self.gamma * sigma_price * sigma_price * self.horizon_s
        coefficient, model = self._coefficient(touch, abs(position))
        hedge, reason = self._policy_hedge(position, touch, coefficient, risk, offset)
        forced = abs(position) - hedge > self.max_inventory
        if forced:
            hedge = abs(position) - self.max_inventory
            reason = f"inventory limit {self.max_inventory:g}: hedge back to it"
        hedge = self._round_lot(hedge, up=forced)
        if hedge * touch.touch > self.max_order_notional:
            hedge = self._round_lot(self.max_order_notional / touch.touch * (1.0 - 1e-9),
                                    up=False)
            reason += f"; capped at the max order notional {self.max_order_notional:g}"
        residual = abs(position) - offset
        return _Plan(position, hedge, touch, sigma, risk, expected_flow, offset,
                     risk * residual * residual, coefficient, model, forced, reason)

    def _policy_hedge(self, position: float, touch: _Touch, coefficient: float, risk: float,
                      offset: float) -> tuple[float, str]:
        """What the policy hedges of `position` before the limit, lot and notional caps."""
        if self.policy == ALWAYS_HEDGE:  # to the nearest lot: what is left is within half one
            lot = self.lot
            hedge = round(abs(position) / lot) * lot if lot > 0.0 else abs(position)
            return hedge, "always hedge: offset the whole inventory"
        return self._optimal(position, touch, coefficient, risk, offset)

    @staticmethod
    def _optimal(position: float, touch: _Touch, coefficient: float, risk: float,
                 offset: float) -> tuple[float, str]:
        """The hedge minimising C(h) + W(q - h), and why."""
        sign = _SIGN[touch.side]
        unit_cost = sign * (touch.touch - touch.mid) + touch.fee_rate * touch.touch
        impact = (1.0 + sign * touch.fee_rate) * coefficient * touch.touch
        hedge = optimal_hedge_qty(position, unit_cost, impact, risk, offset)
        reason = ("flat: nothing to hedge" if position == 0.0
                  else "volatility unknown: risk cannot be priced, hedge all"
                  if math.isnan(risk)
                  else "hedge beats warehousing" if hedge > 0.0
                  else "warehousing beats hedging")
        return hedge, reason

    def _best_touch(self, side: Side, qty: float) -> _Touch | None:
        """The fresh venue with the lowest formulaic cost for `qty` on `side`."""
        market = self._market
        if market is None:
            return None
        best: _Touch | None = None
        best_cost = math.inf
        for venue, fee_rate in self._fee_rates.items():
            quote = market.quote(venue, self.symbol)
            if quote is None or quote.stale or not quote.bid < quote.ask or quote.bid <= 0.0:
                continue
            touch = quote.ask if side is Side.BUY else quote.bid
            candidate = _Touch(venue, side, quote.bid, quote.ask, quote.mid, touch, fee_rate)
            price = formula_price(side, qty, quote.bid, quote.ask, self.slippage_coefficient)
            cost = crossing_cost(side, qty, price, 0.0, fee_rate)[0]  # vs 0: comparable
            if cost < best_cost:
                best, best_cost = candidate, cost
        return best

    def _coefficient(self, touch: _Touch, qty: float) -> tuple[float, str]:
        """Slippage per base unit (fraction): walked from depth when possible, else the setting."""
        if self._walk is not None and qty > 0.0:
            walked = self._walk(touch.venue, self.symbol, str(touch.side), qty)
            if walked is not None and walked > 0.0:
                return max(0.0, _SIGN[touch.side] * (walked / touch.touch - 1.0) / qty), "depth"
        return self.slippage_coefficient, "formula"

    def _hedge_cost(self, touch: _Touch, qty: float, plan: _Plan) -> tuple[float, float, float]:
        """(cost, average price, fee) of hedging `qty` at `touch`'s venue now."""
        price = None
        if plan.slippage_model == "depth" and self._walk is not None:
            price = self._walk(touch.venue, self.symbol, str(touch.side), qty)
        if price is None:
            price = formula_price(touch.side, qty, touch.bid, touch.ask, self.slippage_coefficient)
        cost, fee = crossing_cost(touch.side, qty, price, touch.mid, touch.fee_rate)
        return cost, price, fee

    def _fill_hedge_cost(self, fill: ClientFill, touch: _Touch | None,
                         plan: _Plan) -> tuple[float, float, float]:
        """Cost of offsetting just this fill at once: the desk redoes the client's side."""
        if touch is None:
            return math.nan, math.nan, math.nan
        side = fill.side
        fill_touch = _Touch(touch.venue, side, touch.bid, touch.ask, touch.mid,
                            touch.ask if side is Side.BUY else touch.bid, touch.fee_rate)
        return self._hedge_cost(fill_touch, fill.qty, plan)

    def _sigma_at(self, now: int) -> float:
        """Volatility per sqrt-second from the market view, refreshed at most once a second."""
        if now - self._sigma_ts_ns >= NS_PER_SECOND or self._sigma_ts_ns < 0:
            market = self._market
            self._sigma = (market.volatility(self._primary_venue, self.symbol,
                                             self.volatility_window_s)
                           if market is not None else math.nan)
            self._sigma_ts_ns = now
        return self._sigma

    def _mid(self) -> float:
        market = self._market
        quote = market.quote(self._primary_venue, self.symbol) if market is not None else None
        return quote.mid if quote is not None and not quote.stale else math.nan

    def _round_lot(self, qty: float, up: bool) -> float:
        lot = self.lot
        if lot <= 0.0 or qty <= 0.0:
            return max(qty, 0.0)
        lots = qty / lot
        lots = math.ceil(lots - 1e-9) if up else math.floor(lots + 1e-9)
        return lots * lot

    # -- output ------------------------------------------------------------------------------

    def _inputs(self, plan: _Plan, now: int, trigger: str, hedged: float,
                outcome: str) -> dict[str, Any]:
        touch = plan.touch
        position = plan.inventory
        target = position - math.copysign(hedged, position) if hedged else position
        risk = plan.risk_per_base2
        return {
            "trigger": trigger, "symbol": self.symbol, "outcome": outcome,
            "hedge_venue": touch.venue if touch else "", "bid": touch.bid if touch else math.nan,
            "ask": touch.ask if touch else math.nan, "mid": touch.mid if touch else math.nan,
            "sigma": plan.sigma, "sigma_price": plan.sigma * touch.mid if touch else math.nan,
            "gamma": self.gamma, "horizon_s": self.horizon_s, "risk_per_base2": risk,
            "flow_rate": self.flow.rate(now), "expected_flow": plan.expected_flow,
            "expected_offset": plan.offset, "inventory_risk": risk * position * position,
            "offset_value": risk * position * position - plan.warehouse_cost,
            "slippage_model": plan.slippage_model, "slippage_coefficient": plan.coefficient,
            "hedge_qty": hedged, "target_inventory": target, "forced": plan.forced,
            "max_inventory": self.max_inventory,
        }

    def _decision(self, now: int, outcome: Action, reason: str, plan: _Plan, hedged: float,
                  inputs: dict[str, Any], trade: TradeOutcome | None = None) -> Decision:
        """The Decision with its IOC hedge (if any) at the chosen venue's touch."""
        touch = plan.touch
        intents: list[OrderIntent] = []
        expected = plan.warehouse_cost
        if hedged > 0.0 and touch is not None:
            side = Side.SELL if plan.inventory > 0.0 else Side.BUY
            hedge_touch = _Touch(touch.venue, side, touch.bid, touch.ask, touch.mid,
                                 touch.ask if side is Side.BUY else touch.bid, touch.fee_rate)
            cost = self._hedge_cost(hedge_touch, hedged, plan)[0]
            remaining = plan.inventory + _SIGN[side] * hedged
            expected = cost + warehouse_cost(remaining, plan.risk_per_base2, plan.expected_flow)
            inputs["hedge_cost_chosen"] = cost
            intents.append(self._hedge_intent(hedge_touch, hedged, reason, trade))
        inputs["expected_cost"] = expected
        return Decision(self.name, now, outcome, reason, inputs, expected, intents)

    def _hedge_intent(self, touch: _Touch, qty: float, reason: str,
                      trade: TradeOutcome | None) -> OrderIntent:
        intent = OrderIntent(touch.venue, self.symbol, touch.side, OrderType.IOC, qty,
                             touch.touch, "", self.name, reason)
        self.pending.append(PendingHedge(intent, qty * _SIGN[touch.side], self._clock(),
                                         trade))
        return intent

    def _pending_for(self, client_order_id: str) -> PendingHedge | None:
        """The hedge an ack or fill is about. The executor names our intents when it takes
        them; one refused before that (risk gate) comes back with the empty id."""
        for hedge in self.pending:
            if hedge.intent.client_order_id == client_order_id:
                return hedge
        return None

    def _expire_pending(self, now: int) -> None:
        """Forget hedges whose outcome never came (a lost ack): they must not block for ever."""
        while self.pending and now - self.pending[0].sent_ns > self._pending_timeout_ns:
            self.pending.pop(0)


def _unbound_clock() -> int:
    """The clock before `bind`: a plain function, so an unbound strategy (a twin) pickles."""
    return 0


def _fill_outcome(hedged: float, fill_qty: float, lot: float) -> Action:
    """Classify against the fill: within one lot of its size counts as hedging all of it."""
    if hedged <= 0.0:
        return Action.WAREHOUSE
    full = hedged >= fill_qty - max(lot, fill_qty * 1e-9)
    return Action.HEDGE if full else Action.PARTIAL_HEDGE
