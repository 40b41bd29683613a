"""The normalised market and trading model shared by every layer.

Adapters produce `Quote` and `Trade`; strategies consume them and return `Decision`s
carrying `OrderIntent`s; executors answer with `OrderAck` and `Fill`. Everything is a
slots dataclass, cheap to create and easy to serialise for the decision log, except the
two records made once per market event: `Quote` and `Trade` are `msgspec.Struct`s, built
in C. Same fields, defaults, positional/keyword construction, mutability and equality;
copy one with `msgspec.structs.replace` (not `dataclasses.replace`). Why: creating a
Quote costs 53 ns against 186 ns for the slots dataclass (Python 3.11, 9 positional
arguments; the dataclass pays a type call plus a Python `__init__`), and the parse-only
pass of bench/bench_ingest.py went from 995 to 832 ns a frame. `gc=False`: they hold
only str, float, int and bool, so the cyclic GC need not track them.

Prices and sizes are float64. Times are integer nanoseconds since the epoch:
`exchange_ts_ns` is the venue's event time (0 when the venue does not send one) and
`local_ts_ns` the local receive time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from daemon.core.vocabulary import OrderStatus

#: Venue ids the daemon knows natively; any ccxt exchange id is accepted besides these.
NATIVE_VENUES = ("binance_spot", "binance_usdm", "bybit_spot", "bybit_linear")


def is_perp_symbol(symbol: str) -> bool:
    """ccxt unified symbols of linear perpetuals carry the settle currency: `BTC/USDT:USDT`."""
    return ":" in symbol


def venue_symbol(symbol: str) -> str:
    """ccxt unified symbol -> the venues' concatenated form: `BTC/USDT:USDT` -> `BTCUSDT`."""
    return symbol.split(":", 1)[0].replace("/", "")


def split_symbol(symbol: str) -> tuple[str, str]:
    """`BTC/USDT` or `BTC/USDT:USDT` -> (`BTC`, `USDT`)."""
    base, _, quote = symbol.split(":", 1)[0].partition("/")
    return base, quote


class Quote(msgspec.Struct, gc=False):
    """Top of book of one (exchange, symbol)."""

    exchange: str
    symbol: str
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    exchange_ts_ns: int
    local_ts_ns: int
    seq: int = 0
    #: Set by the staleness watchdog: no fresh update for too long; never act on it.
    stale: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.exchange, self.symbol)

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) * 0.5

    @property
    def spread(self) -> float:
        return self.ask - self.bid

    @property
    def spread_bps(self) -> float:
        mid = self.mid
        return (self.ask - self.bid) / mid * 1e4 if mid > 0 else float("nan")

    @property
    def crossed(self) -> bool:
        return self.bid >= self.ask


class Trade(msgspec.Struct, gc=False):
    """One public trade print. `side` is the taker's side: "buy" lifted the ask."""

    exchange: str
    symbol: str
    price: float
    qty: float
    side: str
    exchange_ts_ns: int
    local_ts_ns: int
    trade_id: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.exchange, self.symbol)


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"
    IOC = "ioc"
    POST_ONLY = "post_only"


@dataclass(slots=True)
class OrderIntent:
    """What a strategy wants done. The risk gate and an executor decide what happens."""

    venue: str
    symbol: str
    side: Side
    type: OrderType
    qty: float
    price: float | None = None
    client_order_id: str = ""
    strategy: str = ""
    reason: str = ""

    @property
    def notional(self) -> float:
        return self.qty * (self.price or 0.0)


@dataclass(slots=True)
class TransferIntent:
    """A move of `amount` of `asset` between two of our venue accounts (a rebalance).

    Strategies return it as a Decision with action "rebalance" whose `inputs` carry these
    fields under the same names (flat, so the decision log stays plain JSON); the runner
    rebuilds it with `from_inputs` and hands it to the transfer service. `amount` is what
    leaves `from_venue`; the network fee is taken from it by the venue.
    """

    asset: str
    from_venue: str
    to_venue: str
    amount: float
    client_transfer_id: str = ""
    strategy: str = ""
    reason: str = ""

    def as_inputs(self) -> dict[str, Any]:
        return {"asset": self.asset, "from_venue": self.from_venue, "to_venue": self.to_venue,
                "amount": self.amount, "client_transfer_id": self.client_transfer_id}

    @classmethod
    def from_inputs(cls, inputs: dict[str, Any], strategy: str = "",
                    reason: str = "") -> TransferIntent:
        return cls(inputs["asset"], inputs["from_venue"], inputs["to_venue"],
                   float(inputs["amount"]), inputs.get("client_transfer_id", ""),
                   strategy, reason)


@dataclass(slots=True)
class OrderAck:
    """An executor's answer to a submit or cancel."""

    client_order_id: str
    venue: str
    symbol: str
    status: OrderStatus
    ts_ns: int
    exchange_order_id: str = ""
    reason: str = ""
    filled_qty: float = 0.0


@dataclass(slots=True)
class Fill:
    """An execution of (part of) our order."""

    client_order_id: str
    venue: str
    symbol: str
    side: Side
    price: float
    qty: float
    fee: float
    fee_asset: str
    liquidity: str  # "maker" | "taker"
    ts_ns: int
    strategy: str = ""
    trade_id: str = ""

    @property
    def notional(self) -> float:
        return self.price * self.qty


@dataclass(slots=True)
class ClientFill:
    """A client's trade that the desk took the other side of (1inch Fusion fill, OTC trade).

    `side` is the **client's** side: "buy" means the client bought base from the desk, so
    the desk sold and its base inventory falls by `qty`. `qty` is in base units (> 0),
    `price` in quote per base. `client_id` names the client or the source (e.g. a resolver
    address, "synthetic"); `fill_id` identifies the fill (e.g. a tx hash) for the log.
    """

    ts_ns: int
    symbol: str
    side: Side
    qty: float
    price: float
    client_id: str = ""
    fill_id: str = ""

    @property
    def desk_side(self) -> Side:
        return self.side.opposite

    @property
    def desk_base_delta(self) -> float:
        """Change of the desk's base inventory: +qty when the client sells to us."""
        return -self.qty if self.side is Side.BUY else self.qty

    @property
    def notional(self) -> float:
        return self.price * self.qty


@dataclass(slots=True)
class Decision:
    """One decision of a strategy, taken or skipped, with the numbers it was based on.

    `action` is an `Action` (daemon/core/vocabulary.py): "quote", "arbitrage", "hedge", ...;
    `inputs` a flat snapshot of what the strategy looked at; `expected` the edge or cost
    the strategy expected (in quote currency or bps as `inputs` documents).
    """

    strategy: str
    ts_ns: int
    action: str
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)
    expected: float = 0.0
    intents: list[OrderIntent] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)

    @property
    def taken(self) -> bool:
        return bool(self.intents or self.cancels)


@dataclass(slots=True)
class BalanceSnapshot:
    """Balances of one venue account at a moment (periodic, for the decision log).

    `in_transit`: what transfers already sent will credit this venue (amount less the
    network fee, per asset): in no venue's balance until they land, yet still ours."""

    venue: str
    ts_ns: int
    balances: dict[str, float]
    strategy: str = ""
    in_transit: dict[str, float] = field(default_factory=dict)
