"""The risk gate: every intent is checked here before any executor sees it.

`RiskGate.check(intent, now_ns)` returns None (go) or the reason for refusing, one line
that starts with the name of the limit it hit:

- `daily loss limit:`  realised + unrealised P&L since 00:00 UTC (feed clock), marked at
  mid, at or below -`daily_loss_limit`. Once hit it stays hit for the day; the gated
  executor also fires the kill switch.
- `non-finite value:`  the P&L or a position is NaN or infinite (a fill at a price of
  inf, a position whose value overflows): no limit can be checked against it, so it is a
  breach like the loss limit (the kill switch fires), never a silent pass.
- `synthetic market:`  the intent's venue is `SYNTHETIC_VENUE`: a derived quote
  (daemon/market/synthetic.py) has no order book; trade its legs instead.
- `stale quote:`       no quote for the market, a quote flagged stale by the feed, or one
  older than `stale_quote_s` on the feed clock.
- `price collar:`      the limit price is more than `price_collar_bps` from mid.
- `max order notional:` qty x price (mid for market orders) above `max_order_notional`.
- `max position:`      the position in the base asset would exceed `max_position[asset]`
  (or `"*"`) in absolute value if this order and every open order on the same side
  filled. Orders that reduce the exposure always pass.
- `max open orders:`   `max_open_orders` orders already open (in flight or resting).
- `order rate:`        more than `max_orders_per_s` accepted orders per second (token
  bucket on the feed clock; only accepted orders take a token).

Positions are what trading did since start, per base asset, summed over venues, spot and
perps (a spot long hedged by a perp short is flat), not the account balances: a market
maker funded with 0.5 BTC holds no position until it trades. Client trades the desk took
(`on_client_fill`, internalize) count too, booked in a market of their own
(`CLIENT_VENUE`, the symbol) marked at the latest mid of that symbol on any venue: a
client buy hedged on a venue is flat, so the hedge is not refused as new exposure and a
price move does not count as a loss. P&L is in quote currency;
markets quoted in different stablecoins are summed as if they were one. A fee charged in a
third asset (BNB on Binance) is converted at the mid of that asset's market against the
fill's quote currency when the gate sees its quotes (e.g. BNB/USDT subscribed); otherwise
it is left out of the P&L, added to `unpriced_fees` and warned about once per asset.

The gate learns from the events it sees: quotes (`on_quote`), accepted submissions
(`on_submitted`), acks and fills (`on_ack`, `on_fill`), client fills (`on_client_fill`).
`GatedExecutor` (daemon/trading/gate.py) wires all of that in front of an executor.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from config.settings import RiskSettings
from daemon.core.clock import NS_PER_DAY, NS_PER_SECOND
from daemon.core.logs import get_logger
from daemon.core.model import (
    ClientFill,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Quote,
    Side,
    split_symbol,
)
from daemon.core.quiet import QuietRows
from daemon.core.vocabulary import Action
from daemon.market.synthetic import SYNTHETIC_VENUE
from daemon.trading.kernels import (
    LOSS_BAND,
    LOSS_DAY,
    LOSS_LOUD,
    LOSS_NONE,
    first_loss_check_row,
)
from daemon.trading.ratelimit import TokenBucket

log = get_logger("risk")

#: The pseudo-venue of client trades: no orders go there, a flatten leaves it alone.
CLIENT_VENUE = "client"


@dataclass(slots=True)
class _Market:
    """Trading in one (venue, symbol): P&L = cash + qty x mark."""

    asset: str
    qty: float = 0.0
    cash: float = 0.0
    mark: float = 0.0  # mid of the latest quote, else the last fill price


@dataclass(slots=True)
class _Pending:
    """An accepted order not yet finished: its worst-case contribution to the position."""

    asset: str
    buy: bool
    qty: float  # remaining


class RiskGate:
    """Pre-trade limits and the day's P&L; see the module docstring for each rule."""

    def __init__(self, risk: RiskSettings) -> None:
        self.settings = risk
        self._stale_ns = int(risk.stale_quote_s * NS_PER_SECOND)
        self._collar = risk.price_collar_bps * 1e-4
        self._rate = TokenBucket(risk.max_orders_per_s, risk.max_orders_per_s)
        self._quotes: dict[str, dict[str, Quote]] = {}
        self._markets: dict[tuple[str, str], _Market] = {}
        #: `_markets` by venue, then symbol (the per-quote lookup builds no key tuple).
        self._markets_by_venue: dict[str, dict[str, _Market]] = {}
        #: The client-trade markets of `_markets` by symbol (looked up on every quote).
        self._client_markets: dict[str, _Market] = {}
        self._daily_loss_limit = risk.daily_loss_limit
        self._positions: dict[str, float] = {}
        self._pending: dict[str, _Pending] = {}
        self._pending_buy: dict[str, float] = {}
        self._pending_sell: dict[str, float] = {}
        self._day = -1
        #: [start, end) of `_day` in ns: a per-quote comparison instead of a division.
        self._day_start_ns = 1
        self._day_end_ns = 0
        self._day_start_pnl = 0.0
        #: Set once the daily loss limit is hit; cleared at the next UTC day.
        self.loss_breach: str | None = None
        #: A non-finite P&L or position: no new day makes the books sound again.
        self._lasting_breach: str | None = None
        #: Fees in a third asset with no market to price them: not in the P&L.
        self.unpriced_fees: Counter[str] = Counter()

    # --- events ---------------------------------------------------------------------------

    def on_quote(self, quote: Quote) -> str | None:
        """Remember the quote; re-mark P&L if we trade this market. Returns a new breach.

        A backtest skips quotes of markets its strategy does not trade
        (daemon/backtest/skip.py); that is exact as long as the gate reads stored quotes only of
        markets with our orders, of the client flow's symbol and of fee assets. Keep it so.
        """
        # Every quote of a traded market comes here: Quote.mid is written out and client
        # markets are looked up by symbol alone (no key tuple to build).
        exchange, symbol = quote.exchange, quote.symbol
        venue_quotes = self._quotes.get(exchange)
        if venue_quotes is None:
            venue_quotes = self._quotes[exchange] = {}
        venue_quotes[symbol] = quote
        markets = self._markets
        if not markets or quote.stale:
            return None
        mid = (quote.bid + quote.ask) * 0.5
        client = self._client_markets.get(symbol) if self._client_markets else None
        if client is not None:
            client.mark = mid
        venue_markets = self._markets_by_venue.get(exchange)
        market = venue_markets.get(symbol) if venue_markets is not None else None
        if market is not None:
            market.mark = mid
        else:
            market = client
        if market is None or not market.qty:
            return None
        now_ns = quote.local_ts_ns
        if (len(markets) == 1 and self.loss_breach is None
                and self._day_start_ns <= now_ns < self._day_end_ns):
            # `_check_loss` with one market on the same day, written out: P&L as `pnl`
            # computes it (the market's mark is the mid just set), nothing to report
            # unless it crossed the limit (then the full check words the breach).
            daily = market.cash + market.qty * mid + 0.0 - self._day_start_pnl
            if -self._daily_loss_limit < daily < math.inf:  # NaN and +inf: the full check
                return None
        return self._check_loss(now_ns)

    def first_loud(self, rows: QuietRows, start: int, stop: int) -> int:
        """The first of rows [start, stop) whose quote the loss check must see as an event
        (daemon/core/quiet.py): `on_quote` would report a breach, roll the day or weigh
        several markets there. Before it, a quote only becomes its market's latest."""
        if self._client_markets:
            return start
        markets = self._markets
        if not any(market.qty for market in markets.values()):
            return stop  # no position: no loss to check
        modes = np.full(len(rows.keys), LOSS_NONE, dtype=np.int8)
        qty = np.zeros(len(rows.keys))
        cash = np.zeros(len(rows.keys))
        for key_id, key in enumerate(rows.keys):
            market = markets.get(key)
            if market is None or not market.qty:
                continue
            qty[key_id], cash[key_id] = market.qty, market.cash
            if self.loss_breach is not None:
                modes[key_id] = LOSS_DAY  # `_check_loss` says nothing more until the day ends
            else:
                modes[key_id] = LOSS_BAND if len(markets) == 1 else LOSS_LOUD
        return first_loss_check_row(rows.kind, rows.key, rows.local_ts_ns, rows.price, rows.ask,
                                    rows.stale, start, stop, modes, qty, cash,
                                    self._day_start_pnl, self._daily_loss_limit,
                                    self._day_start_ns, self._day_end_ns)

    def on_submitted(self, intent: OrderIntent) -> None:
        """An intent passed the gate and went to the executor: count it as open."""
        pending = _Pending(_base_asset(intent.symbol), intent.side == Side.BUY, intent.qty)
        self._pending[intent.client_order_id] = pending
        totals = self._pending_buy if pending.buy else self._pending_sell
        totals[pending.asset] = totals.get(pending.asset, 0.0) + intent.qty

    def on_ack(self, ack: OrderAck) -> None:
        if ack.status.is_terminal:
            pending = self._pending.pop(ack.client_order_id, None)
            if pending is not None:
                self._release_pending(pending, pending.qty)

    def on_fill(self, fill: Fill) -> str | None:
        """Book the fill into positions and P&L. Returns a new loss-limit breach, if any."""
        sign = 1.0 if fill.side == Side.BUY else -1.0
        key = (fill.venue, fill.symbol)
        market = self._markets.get(key)
        if market is None:
            market = self._new_market(key, fill.symbol)
        market.qty += sign * fill.qty
        market.cash -= sign * fill.price * fill.qty + self._fee_in_quote(fill)
        quote = self._quotes.get(fill.venue, {}).get(fill.symbol)
        market.mark = quote.mid if quote is not None and not quote.stale else fill.price
        self._positions[market.asset] = self._positions.get(market.asset, 0.0) + sign * fill.qty
        pending = self._pending.get(fill.client_order_id)
        if pending is not None:
            self._release_pending(pending, min(fill.qty, pending.qty))
        return self._check_position_finite(market.asset, fill.ts_ns) or self._check_loss(
            fill.ts_ns)

    def on_client_fill(self, fill: ClientFill) -> str | None:
        """Book a client trade (the desk's side of it). Returns a new breach, if any."""
        key = (CLIENT_VENUE, fill.symbol)
        market = self._markets.get(key)
        if market is None:
            market = self._new_market(key, fill.symbol)
            self._client_markets[fill.symbol] = market
        delta = fill.desk_base_delta
        market.qty += delta
        market.cash -= delta * fill.price
        mid = self._latest_mid(fill.symbol)
        market.mark = mid if mid is not None else fill.price
        self._positions[market.asset] = self._positions.get(market.asset, 0.0) + delta
        return self._check_position_finite(market.asset, fill.ts_ns) or self._check_loss(
            fill.ts_ns)

    def _new_market(self, key: tuple[str, str], symbol: str) -> _Market:
        market = self._markets[key] = _Market(_base_asset(symbol))
        self._markets_by_venue.setdefault(key[0], {})[key[1]] = market
        return market

    def _fee_in_quote(self, fill: Fill) -> float:
        """The fill's fee in its market's quote currency (0 when it cannot be priced)."""
        if not fill.fee:
            return 0.0
        base, quote_asset = split_symbol(fill.symbol)
        if fill.fee_asset == quote_asset:
            return fill.fee
        if fill.fee_asset == base:  # Binance charges buys in the asset received
            return fill.fee * fill.price
        rate = self._latest_mid(f"{fill.fee_asset}/{quote_asset}")
        if rate is not None:
            return fill.fee * rate
        if not self.unpriced_fees[fill.fee_asset]:
            log.warning("fee_unpriced", asset=fill.fee_asset, quote=quote_asset,
                        hint=f"subscribe {fill.fee_asset}/{quote_asset} to count these fees "
                             "in the daily loss")
        self.unpriced_fees[fill.fee_asset] += fill.fee
        return 0.0

    def _latest_mid(self, symbol: str) -> float | None:
        """Mid of the newest usable quote of a symbol on any venue, if the gate has one."""
        quotes = [quote for venue_quotes in self._quotes.values()
                  if (quote := venue_quotes.get(symbol)) is not None
                  and not quote.stale and quote.mid > 0.0]
        return max(quotes, key=lambda quote: quote.local_ts_ns).mid if quotes else None

    # --- the check ------------------------------------------------------------------------

    def check(self, intent: OrderIntent, now_ns: int) -> str | None:
        """None if the intent may go to the executor, else why not."""
        self._roll_day(now_ns)
        if self.loss_breach is not None:
            return self.loss_breach
        if intent.venue == SYNTHETIC_VENUE:
            return (f"synthetic market: {intent.venue} {intent.symbol} is derived from other "
                    "markets and takes no orders; trade its legs")
        quote = self._quotes.get(intent.venue, {}).get(intent.symbol)
        reason = self._check_quote(intent, quote, now_ns)
        if reason is not None:
            return reason
        assert quote is not None
        mid = quote.mid
        return (
            self._check_collar(intent, mid)
            or self._check_notional(intent, mid)
            or self._check_position(intent)
            or self._check_open_orders()
            or self._check_rate(now_ns)
        )

    def _check_quote(self, intent: OrderIntent, quote: Quote | None, now_ns: int) -> str | None:
        if quote is None:
            return f"stale quote: no quote for {intent.venue} {intent.symbol}"
        if quote.stale:
            return f"stale quote: {intent.venue} {intent.symbol} flagged stale by the feed"
        age_ns = now_ns - quote.local_ts_ns
        if age_ns > self._stale_ns:
            age_s = age_ns / NS_PER_SECOND
            return (f"stale quote: {intent.venue} {intent.symbol} is {age_s:.1f} s "
                    f"old > {self.settings.stale_quote_s:g} s")
        if not quote.mid > 0:
            return f"stale quote: {intent.venue} {intent.symbol} has no valid mid"
        return None

    def _check_collar(self, intent: OrderIntent, mid: float) -> str | None:
        if intent.type == OrderType.MARKET or intent.price is None:
            return None
        distance = abs(intent.price - mid) / mid
        if distance > self._collar:
            return (f"price collar: {intent.price:g} is {distance * 1e4:.1f} bps from mid "
                    f"{mid:g} > {self.settings.price_collar_bps:g} bps")
        return None

    def _check_notional(self, intent: OrderIntent, mid: float) -> str | None:
        price = intent.price if intent.price is not None and intent.type != OrderType.MARKET \
            else mid
        notional = intent.qty * price
        if notional > self.settings.max_order_notional:
            return (f"max order notional: {notional:,.2f} > "
                    f"{self.settings.max_order_notional:,.2f}")
        return None

    def _check_position(self, intent: OrderIntent) -> str | None:
        asset = _base_asset(intent.symbol)
        limit = self.max_position(asset)
        position = self._positions.get(asset, 0.0)
        if intent.side == Side.BUY:
            before = position + self._pending_buy.get(asset, 0.0)
            after = before + intent.qty
        else:
            before = position - self._pending_sell.get(asset, 0.0)
            after = before - intent.qty
        if abs(after) > limit and abs(after) > abs(before):
            return (f"max position: {asset} would reach {after:+g} with open orders "
                    f"(limit {limit:g})")
        return None

    def _check_open_orders(self) -> str | None:
        limit = self.settings.max_open_orders
        if len(self._pending) >= limit:
            return f"max open orders: {len(self._pending)} open (limit {limit})"
        return None

    def _check_rate(self, now_ns: int) -> str | None:
        if not self._rate.try_take(now_ns):
            return f"order rate: more than {self.settings.max_orders_per_s:g} orders/s"
        return None

    # --- P&L --------------------------------------------------------------------------------

    def pnl(self) -> float:
        """Realised + unrealised P&L since start, marked at mid (quote currency)."""
        markets = self._markets
        if len(markets) == 1:
            # What sum() makes of one float (0 + x, which turns -0.0 into 0.0), without the
            # generator: one market is the common case, and the loss check runs per quote.
            (market,) = markets.values()
            return market.cash + market.qty * market.mark + 0.0
        return sum(m.cash + m.qty * m.mark for m in markets.values())

    def daily_pnl(self, now_ns: int) -> float:
        self._roll_day(now_ns)
        return self.pnl() - self._day_start_pnl

    def _roll_day(self, now_ns: int) -> None:
        day = now_ns // NS_PER_DAY
        if day != self._day:
            if self._day != -1:
                self._day_start_pnl = self.pnl()
                self.loss_breach = self._lasting_breach
            self._day = day
            self._day_start_ns = day * NS_PER_DAY
            self._day_end_ns = self._day_start_ns + NS_PER_DAY

    def _check_loss(self, now_ns: int) -> str | None:
        """The breach reason when this event pushed the day's P&L past the limit."""
        # `daily_pnl`, written out (it runs on every quote of a market we hold), and the
        # P&L left alone once the day's breach is known: nothing would come of it.
        if now_ns // NS_PER_DAY != self._day:
            self._roll_day(now_ns)
        if self.loss_breach is not None:
            return None
        daily = self.pnl() - self._day_start_pnl
        if not math.isfinite(daily):
            return self._breach(f"non-finite value: P&L {daily} (a price or position out "
                                "of range)")
        if daily <= -self._daily_loss_limit:
            self.loss_breach = (f"daily loss limit: P&L {daily:,.2f} <= "
                                f"-{self.settings.daily_loss_limit:,.2f}")
            return self.loss_breach
        return None

    def _check_position_finite(self, asset: str, now_ns: int) -> str | None:
        """A position that is not a finite number is a breach (a fill of qty inf)."""
        position = self._positions[asset]
        if math.isfinite(position) or self.loss_breach is not None:
            return None
        self._roll_day(now_ns)
        return self._breach(f"non-finite value: {asset} position {position}")

    def _breach(self, reason: str) -> str:
        """Stop, for good: every check answers this from now, the next day too."""
        log.error("risk_breach", reason=reason)
        self.loss_breach = self._lasting_breach = reason
        return reason

    # --- views ------------------------------------------------------------------------------

    def max_position(self, asset: str) -> float:
        limits = self.settings.max_position
        return limits.get(asset, limits.get("*", float("inf")))

    def position(self, asset: str) -> float:
        return self._positions.get(asset, 0.0)

    def market_positions(self) -> dict[tuple[str, str], float]:
        """Net traded qty per (venue, symbol), non-zero only: what a flatten must undo.
        Client trades are not in it: there is no venue to undo them on."""
        return {key: m.qty for key, m in self._markets.items()
                if abs(m.qty) > 1e-12 and key[0] != CLIENT_VENUE}

    def open_order_count(self) -> int:
        return len(self._pending)

    def quote(self, venue: str, symbol: str) -> Quote | None:
        return self._quotes.get(venue, {}).get(symbol)

    def _release_pending(self, pending: _Pending, qty: float) -> None:
        """Part of an open order filled or all of it ended: less worst-case exposure."""
        pending.qty -= qty
        totals = self._pending_buy if pending.buy else self._pending_sell
        totals[pending.asset] = totals.get(pending.asset, 0.0) - qty


@functools.lru_cache(maxsize=1024)
def _base_asset(symbol: str) -> str:
    return split_symbol(symbol)[0]


def rejection_decision(intent: OrderIntent, reason: str, now_ns: int) -> Decision:
    """The decision record of a refused intent (action "reject"), for the post-mortem log.

    The intent goes into `inputs`, not `intents`, so the decision does not count as taken.
    """
    return Decision(
        strategy=intent.strategy,
        ts_ns=now_ns,
        action=Action.REJECT,
        reason=reason,
        inputs={
            "venue": intent.venue,
            "symbol": intent.symbol,
            "side": str(intent.side),
            "type": str(intent.type),
            "price": intent.price,
            "qty": intent.qty,
            "client_order_id": intent.client_order_id,
            "intent_reason": intent.reason,
        },
    )
