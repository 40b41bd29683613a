"""The internalizing desk's portfolio: balances, mark-to-market P&L, per-trade hedge vs warehouse.

Pure bookkeeping (no I/O except `write_results`, which daemon code calls at the end of a
run): the internalize strategy feeds it every client fill and every hedge fill, and the
mids it sees; it keeps

- balances per asset, starting from the configured initial balances (default 100 ETH +
  100,000 USDT), moved by client fills (the desk takes the other side) and hedge fills
  (fees taken from the asset the venue charged);
- the inventory: base balance minus the initial base balance (what the flow left us with);
- mark-to-market equity in the quote currency, and two P&Ls: `pnl_trading` (equity minus
  the initial balances valued at the *same* mid: what the flow and hedging made) and
  `pnl_total` (equity minus the initial equity at the first mid: including the market
  move on the initial holding);
- per client fill, what the strategy did and the two alternatives the seed study compares
  (its flow_internalization_results.csv):
  - the hedge the strategy sent right after the fill, as it executed: `hedge_qty` sent,
    `hedge_filled_qty`, `hedge_price` (the volume-weighted price of that order's fills, as
    the executor reported them, NaN if none) and `hedge_fee` (their fees, in quote);
    `expected_hedge_price` / `expected_hedge_fee` are what the strategy estimated (formula
    or walked depth) for offsetting the whole fill, kept beside the fill for comparison;
  - `hedge_pnl` = offset at once: the client's edge against the always-hedge price minus
    its fee, per unit times the fill's quantity. The price comes, best first, from the
    always-hedge twin's fills for this very client fill (`always_hedge_source`
    "always_hedge": the same flow through the same executor, see strategies/internalize.py),
    from the strategy's own fills when it hedged the whole fill ("own_hedge"), else from
    the estimate ("estimate": nothing executed to price it);
  - `warehouse_pnl` = hold until the horizon (edge against the mid one horizon later: the
    mark-out).

Signs: the desk's side is the opposite of the client's; `desk_sign` is +1 when the desk
bought base. All money amounts are in the quote currency of the symbol.
"""

from __future__ import annotations

import csv
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import ClientFill, Fill, Side, split_symbol

INTERNALIZATION_CSV = "flow_internalization_results.csv"
PORTFOLIO_CSV = "portfolio_tracking_results.csv"


@dataclass(slots=True)
class TradeOutcome:
    """One client fill: what hedging at once vs warehousing to the horizon earned (quote)."""

    ts_ns: int
    fill_id: str
    client_id: str
    symbol: str
    client_side: str
    qty: float
    client_price: float
    #: Hedge venue mid when the fill arrived (NaN without a quote).
    mid: float
    #: The strategy's choice: hedge, partial_hedge or warehouse.
    outcome: str
    #: Base quantity the strategy sent to hedge right after this fill.
    hedge_qty: float
    #: The strategy's estimate of offsetting the whole fill at once (touch + slippage, or
    #: the walked depth) and its taker fee: what it decided on, not what it got.
    expected_hedge_price: float
    expected_hedge_fee: float
    #: What that hedge order actually filled: base, notional and fees (quote).
    hedge_filled_qty: float = 0.0
    hedge_notional: float = 0.0
    hedge_fee: float = 0.0
    #: The always-hedge twin's fills for this client fill (set by `adopt_baseline`).
    always_hedge_filled_qty: float = 0.0
    always_hedge_notional: float = 0.0
    always_hedge_fee_paid: float = 0.0
    #: desk_sign * qty * (markout_mid - client_price); NaN until marked.
    warehouse_pnl: float = math.nan
    markout_mid: float = math.nan
    markout_ts_ns: int = 0
    #: False when the run ended before the horizon: marked at the last mid instead.
    markout_complete: bool = False

    @property
    def desk_sign(self) -> float:
        """+1 when the desk bought base (the client sold)."""
        return 1.0 if self.client_side == Side.SELL else -1.0

    @property
    def hedge_price(self) -> float:
        """Volume-weighted price of the fills of the hedge sent for this fill; NaN if none."""
        if self.hedge_filled_qty <= 0.0:
            return math.nan
        return self.hedge_notional / self.hedge_filled_qty

    def add_hedge_fill(self, qty: float, price: float, fee_quote: float) -> None:
        """One execution of the hedge order this client fill triggered."""
        self.hedge_filled_qty += qty
        self.hedge_notional += qty * price
        self.hedge_fee += fee_quote

    @property
    def always_hedge_source(self) -> str:
        """Where the always-hedge price comes from: "always_hedge" (the twin's fills),
        "own_hedge" (this strategy hedged the whole fill), "estimate", or "" (none)."""
        if self.always_hedge_filled_qty > 0.0:
            return "always_hedge"
        if self.outcome == "hedge" and self.hedge_filled_qty > 0.0:
            return "own_hedge"
        return "estimate" if math.isfinite(self.expected_hedge_price) else ""

    def _always_hedge(self) -> tuple[float, float]:
        """(average price, fee per base unit) of offsetting this fill at once."""
        source = self.always_hedge_source
        if source == "always_hedge":
            filled = self.always_hedge_filled_qty
            return self.always_hedge_notional / filled, self.always_hedge_fee_paid / filled
        if source == "own_hedge":
            filled = self.hedge_filled_qty
            return self.hedge_notional / filled, self.hedge_fee / filled
        if source == "estimate":
            return self.expected_hedge_price, self.expected_hedge_fee / self.qty
        return math.nan, math.nan

    @property
    def always_hedge_price(self) -> float:
        return self._always_hedge()[0]

    @property
    def always_hedge_fee(self) -> float:
        """The always-hedge fee for the whole fill (per unit paid times the fill's qty)."""
        return self._always_hedge()[1] * self.qty

    @property
    def hedge_pnl(self) -> float:
        """desk_sign * qty * (always_hedge_price - client_price) - always_hedge_fee."""
        price, fee_per_unit = self._always_hedge()
        return self.desk_sign * self.qty * (price - self.client_price) - fee_per_unit * self.qty

    @property
    def better_in_hindsight(self) -> str:
        hedge_pnl = self.hedge_pnl
        if math.isnan(self.warehouse_pnl) or math.isnan(hedge_pnl):
            return ""
        return "hedge" if hedge_pnl > self.warehouse_pnl else "warehouse"


#: flow_internalization_results.csv, in order (properties included, running sums not).
TRADE_COLUMNS = (
    "ts_ns", "fill_id", "client_id", "symbol", "client_side", "qty", "client_price", "mid",
    "outcome", "hedge_qty", "hedge_filled_qty", "hedge_price", "hedge_fee",
    "expected_hedge_price", "expected_hedge_fee", "always_hedge_price", "always_hedge_fee",
    "always_hedge_filled_qty", "always_hedge_source", "hedge_pnl", "warehouse_pnl",
    "markout_mid", "markout_ts_ns", "markout_complete", "better_in_hindsight",
)


@dataclass(slots=True)
class PortfolioRow:
    """The portfolio after one event (one row of portfolio_tracking_results.csv)."""

    ts_ns: int
    event: str  # client_fill | hedge_fill | mark
    side: str  # the desk's side for fills, "" for marks
    qty: float
    price: float
    fee: float
    base_balance: float
    quote_balance: float
    inventory: float
    mid: float
    equity: float
    pnl_trading: float
    pnl_total: float


class Portfolio:
    """Balances and P&L of the desk for one symbol (`BASE/QUOTE`)."""

    def __init__(
        self,
        symbol: str,
        initial_balances: Mapping[str, float],
        horizon_s: float,
    ) -> None:
        self.symbol = symbol
        self.base, self.quote = split_symbol(symbol)
        self.initial_balances = dict(initial_balances)
        self.balances: dict[str, float] = dict(initial_balances)
        self.balances.setdefault(self.base, 0.0)
        self.balances.setdefault(self.quote, 0.0)
        self.initial_base = self.balances[self.base]
        self.initial_quote = self.balances[self.quote]
        self.horizon_ns = int(horizon_s * NS_PER_SECOND)
        self.trades: list[TradeOutcome] = []
        self.rows: list[PortfolioRow] = []
        #: Sums per asset of what client fills and hedge fills moved (fees included in
        #: `fees`), so `reconcile` can show balances = initial + flows.
        self.client_flow: dict[str, float] = {self.base: 0.0, self.quote: 0.0}
        self.hedge_flow: dict[str, float] = {self.base: 0.0, self.quote: 0.0}
        self.fees: dict[str, float] = {}
        #: Hedge executions booked and their fees in the quote currency.
        self.hedge_fills = 0
        self.hedge_fees = 0.0
        self.first_mid = math.nan
        self.last_mid = math.nan
        self.last_ts_ns = 0
        self._awaiting_markout: deque[TradeOutcome] = deque()

    # -- state -----------------------------------------------------------------------------

    @property
    def inventory(self) -> float:
        """Base units the flow left us with (balance minus the initial balance)."""
        return self.balances[self.base] - self.initial_base

    def equity(self, mid: float) -> float:
        """Base and quote balances valued in the quote currency (other assets excluded)."""
        return self.balances[self.quote] + self.balances[self.base] * mid

    def pnl_trading(self, mid: float) -> float:
        """Equity minus the initial balances valued at the same mid."""
        return self.equity(mid) - (self.initial_quote + self.initial_base * mid)

    def pnl_total(self, mid: float) -> float:
        """Equity minus the initial equity at the first mid seen."""
        return self.equity(mid) - (self.initial_quote + self.initial_base * self.first_mid)

    # -- events ----------------------------------------------------------------------------

    def on_client_fill(
        self,
        fill: ClientFill,
        mid: float,
        outcome: str,
        hedge_qty: float,
        expected_price: float,
        expected_fee: float,
    ) -> TradeOutcome:
        """Book a client fill; `expected_price`/`expected_fee`: the strategy's estimate of
        offsetting all of it at once. The hedge's real fills come through `on_hedge_fill`."""
        desk_base = fill.desk_base_delta
        self._move(self.client_flow, self.base, desk_base)
        self._move(self.client_flow, self.quote, -desk_base * fill.price)
        trade = TradeOutcome(
            ts_ns=fill.ts_ns, fill_id=fill.fill_id, client_id=fill.client_id,
            symbol=fill.symbol, client_side=str(fill.side), qty=fill.qty,
            client_price=fill.price, mid=mid, outcome=outcome, hedge_qty=hedge_qty,
            expected_hedge_price=expected_price, expected_hedge_fee=expected_fee,
        )
        self.trades.append(trade)
        self._awaiting_markout.append(trade)
        self._note_mid(fill.ts_ns, mid)
        self._record(fill.ts_ns, "client_fill", str(fill.desk_side), fill.qty, fill.price, 0.0)
        return trade

    def on_hedge_fill(self, fill: Fill, trade: TradeOutcome | None = None) -> None:
        """Book one execution of a hedge order on the venue; `trade`: the client fill that
        order was sent for (None for a hedge of warehoused inventory)."""
        signed_qty = fill.qty if fill.side is Side.BUY else -fill.qty
        self._move(self.hedge_flow, self.base, signed_qty)
        self._move(self.hedge_flow, self.quote, -signed_qty * fill.price)
        if fill.fee:
            self.balances[fill.fee_asset] = self.balances.get(fill.fee_asset, 0.0) - fill.fee
            self.fees[fill.fee_asset] = self.fees.get(fill.fee_asset, 0.0) + fill.fee
        fee_quote = self.fee_in_quote(fill)
        self.hedge_fills += 1
        self.hedge_fees += fee_quote
        if trade is not None:
            trade.add_hedge_fill(fill.qty, fill.price, fee_quote)
        self._record(fill.ts_ns, "hedge_fill", str(fill.side), fill.qty, fill.price, fill.fee)

    def mark(self, ts_ns: int, mid: float, record: bool = False) -> None:
        """A new mid: mature the mark-outs whose horizon has passed; optionally log a row."""
        if not mid > 0.0:
            return
        self._note_mid(ts_ns, mid)
        pending = self._awaiting_markout
        while pending and pending[0].ts_ns + self.horizon_ns <= ts_ns:
            self._markout(pending.popleft(), ts_ns, mid, complete=True)
        if record:
            self._record(ts_ns, "mark", "", 0.0, 0.0, 0.0)

    def close(self) -> None:
        """End of run: mark the fills younger than the horizon at the last mid."""
        while self._awaiting_markout:
            self._markout(self._awaiting_markout.popleft(), self.last_ts_ns, self.last_mid,
                          complete=False)

    def fee_in_quote(self, fill: Fill) -> float:
        """A fill's fee in the quote currency (a base-asset fee at the fill's price)."""
        if not fill.fee or fill.fee_asset == self.quote:
            return fill.fee
        if fill.fee_asset == self.base:
            return fill.fee * fill.price
        return math.nan  # a third asset (BNB): no price for it here

    def adopt_baseline(self, baseline: Portfolio) -> None:
        """Take the always-hedge twin's executed hedge of each client fill (by fill id) as
        the price of this portfolio's hedge-at-once alternative."""
        twins = {trade.fill_id: trade for trade in baseline.trades}
        for trade in self.trades:
            twin = twins.get(trade.fill_id)
            if twin is not None:
                trade.always_hedge_filled_qty = twin.hedge_filled_qty
                trade.always_hedge_notional = twin.hedge_notional
                trade.always_hedge_fee_paid = twin.hedge_fee

    def reconcile(self) -> dict[str, float]:
        """Per asset: balance - (initial + client flow + hedge flow - fees); all ~0."""
        assets = set(self.balances) | set(self.fees)
        return {
            asset: self.balances.get(asset, 0.0) - (
                self.initial_balances.get(asset, 0.0) + self.client_flow.get(asset, 0.0)
                + self.hedge_flow.get(asset, 0.0) - self.fees.get(asset, 0.0)
            )
            for asset in sorted(assets)
        }

    # -- internals -------------------------------------------------------------------------

    def _move(self, ledger: dict[str, float], asset: str, amount: float) -> None:
        self.balances[asset] += amount
        ledger[asset] += amount

    def _note_mid(self, ts_ns: int, mid: float) -> None:
        if mid > 0.0:
            if math.isnan(self.first_mid):
                self.first_mid = mid
            self.last_mid = mid
        self.last_ts_ns = max(self.last_ts_ns, ts_ns)

    def _markout(self, trade: TradeOutcome, ts_ns: int, mid: float, complete: bool) -> None:
        trade.markout_mid = mid
        trade.markout_ts_ns = ts_ns
        trade.markout_complete = complete
        trade.warehouse_pnl = trade.desk_sign * trade.qty * (mid - trade.client_price)

    def _record(self, ts_ns: int, event: str, side: str, qty: float, price: float,
                fee: float) -> None:
        mid = self.last_mid
        base_balance = self.balances[self.base]
        quote_balance = self.balances[self.quote]
        equity = quote_balance + base_balance * mid
        # Positional: this runs once per fill, and keyword construction costs twice as much.
        self.rows.append(PortfolioRow(
            ts_ns, event, side, qty, price, fee, base_balance, quote_balance,
            base_balance - self.initial_base, mid, equity,
            equity - (self.initial_quote + self.initial_base * mid),
            equity - (self.initial_quote + self.initial_base * self.first_mid),
        ))


def write_results(portfolio: Portfolio, directory: Path) -> tuple[Path, Path]:
    """Write flow_internalization_results.csv and portfolio_tracking_results.csv.

    Fills younger than the horizon are marked at the last mid first (`markout_complete`
    says which). Returns the two paths. The only I/O of this module: the daemon or the
    post-mortem report calls it, never a strategy callback.
    """
    portfolio.close()
    directory.mkdir(parents=True, exist_ok=True)
    trades_path = directory / INTERNALIZATION_CSV
    with open(trades_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRADE_COLUMNS)
        for trade in portfolio.trades:
            writer.writerow([getattr(trade, name) for name in TRADE_COLUMNS])
    rows_path = directory / PORTFOLIO_CSV
    row_columns = [f.name for f in fields(PortfolioRow)]
    with open(rows_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(row_columns)
        for row in portfolio.rows:
            writer.writerow([getattr(row, name) for name in row_columns])
    return trades_path, rows_path
