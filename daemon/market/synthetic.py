"""Synthetic quotes: markets derived from others, published on the bus as markets of their own.

Two kinds: cross rates (`CrossRate`, below) and consolidated best bid/offer over venues
(`ConsolidatedBBO`, its own docstring), configured under `synthetic.crosses` and
`synthetic.consolidated`.

A cross rate, e.g. ETH/BTC from an ETH/USDT leg and a BTC/USDT leg (on any venues), is the
price at which the desk could trade the cross by trading both legs at their touches:

- selling 1 ETH for BTC = sell ETH at the ETH/USDT bid, buy BTC at the BTC/USDT ask:
  bid = base.bid / quote.ask
- buying 1 ETH with BTC = sell BTC at the BTC/USDT bid, buy ETH at the ETH/USDT ask:
  ask = base.ask / quote.bid

Net of fees (`net_of_fees`), both legs pay their venue's taker fee: the bid shrinks by
(1 - f_base)(1 - f_quote) and the ask grows by the inverse of it. Sizes are in base units
of the cross (ETH) and limited by both legs: the bid size is the smaller of the base leg's
bid size and the ETH the quote leg's ask size buys, ask likewise.

The cross is published under the venue `SYNTHETIC_VENUE` ("synthetic") and its symbol, so
the ring, the view, `watch`, `/book` and strategies see it like any market. Its times are
the newer leg's (exchange and local). No order may go to it: the risk gate refuses any
intent on `SYNTHETIC_VENUE`.

It is recomputed only when a leg's quote is published: `SyntheticQuotes` is a bus sink
whose route is a real callback for the legs' keys only (`ignore` for every other key,
which the bus leaves out of the channel, so other markets pay nothing). A cross is
published from inside its leg's publish, so subscribers see the cross just before the leg
quote that moved it.

Staleness follows the bus: when a leg is flagged stale (`Bus.mark_stale`, by the feed's
watchdog or a disconnect) the market is repriced: a cross is flagged stale too, and no
cross is published while either leg is stale or missing; the next good quote of both
legs publishes a fresh one.
Leg quotes that cannot price a cross (a non-positive price) are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import CrossRateSettings, Settings
from daemon.core.logs import get_logger
from daemon.core.model import Quote
from daemon.core.routes import QuoteCallback, TradeCallback, ignore
from daemon.market.bus import Bus
from daemon.market.view import ConsolidatedView

log = get_logger("synthetic")

#: The venue of every synthetic market: a name no exchange uses, so no order reaches one.
SYNTHETIC_VENUE = "synthetic"

Key = tuple[str, str]


def parse_leg(leg: str) -> Key:
    """ "venue:SYMBOL" -> (venue, symbol); the symbol may hold a colon (ETH/USDT:USDT)."""
    venue, sep, symbol = leg.partition(":")
    if not sep or not venue or not symbol:
        raise ValueError(f"synthetic leg {leg!r}: expected 'venue:SYMBOL'")
    return venue, symbol


@dataclass(slots=True)
class CrossRate:
    """One cross: `symbol` priced from `base_leg` / `quote_leg` (fees as fractions)."""

    symbol: str
    base_leg: Key
    quote_leg: Key
    base_fee: float = 0.0
    quote_fee: float = 0.0
    seq: int = 0
    #: Leg quotes that could not price the cross (non-positive prices), dropped.
    dropped: int = 0

    @property
    def legs(self) -> tuple[Key, Key]:
        return (self.base_leg, self.quote_leg)

    def derive(self, view: ConsolidatedView) -> Quote | str | None:
        """The cross now; STALE when a leg is stale; None before both legs quoted."""
        base, quote = view.quote(*self.base_leg), view.quote(*self.quote_leg)
        if base is None or quote is None:
            return None
        if base.stale or quote.stale:
            return STALE
        return self.price(base, quote)

    def price(self, base: Quote, quote: Quote) -> Quote | None:
        """The cross from the legs' touches, or None when they cannot price it."""
        if not (base.bid > 0 and base.ask > 0 and quote.bid > 0 and quote.ask > 0):
            self.dropped += 1
            return None
        keep = (1.0 - self.base_fee) * (1.0 - self.quote_fee)
        bid = base.bid / quote.ask * keep
        ask = base.ask / quote.bid / keep
        # The ETH the quote leg's touch can pay for (selling) or fund (buying).
        bid_qty = min(base.bid_qty, quote.ask_qty * quote.ask / base.bid)
        ask_qty = min(base.ask_qty, quote.bid_qty * quote.bid / base.ask)
        self.seq += 1
        return Quote(
            SYNTHETIC_VENUE, self.symbol, bid, bid_qty, ask, ask_qty,
            max(base.exchange_ts_ns, quote.exchange_ts_ns),
            max(base.local_ts_ns, quote.local_ts_ns),
            seq=self.seq,
        )


#: What `derive` returns when the market must be flagged stale (a leg is).
STALE = "stale"


@dataclass(slots=True)
class ConsolidatedBBO:
    """The best bid and offer of one instrument over its `legs` (venue, symbol) markets.

    bid = the highest bid of the fresh legs, its size the sum of the sizes of every fresh
    leg bidding that price (ask likewise); times of the newest fresh leg. A stale leg is
    left out (the other venues still make a market); stale only when every leg is. A
    crossed result (one venue's bid above another's ask) is published as it is: it is the
    market's state, an opportunity, not bad data."""

    symbol: str
    legs: tuple[Key, ...]
    seq: int = 0

    def derive(self, view: ConsolidatedView) -> Quote | str | None:
        fresh = [q for q in (view.quote(*leg) for leg in self.legs)
                 if q is not None and not q.stale and q.bid > 0 and q.ask > 0]
        if not fresh:
            seen = any(view.quote(*leg) is not None for leg in self.legs)
            return STALE if seen else None
        bid = max(q.bid for q in fresh)
        ask = min(q.ask for q in fresh)
        self.seq += 1
        return Quote(
            SYNTHETIC_VENUE, self.symbol,
            bid, sum(q.bid_qty for q in fresh if q.bid == bid),
            ask, sum(q.ask_qty for q in fresh if q.ask == ask),
            max(q.exchange_ts_ns for q in fresh), max(q.local_ts_ns for q in fresh),
            seq=self.seq,
        )


SyntheticMarket = CrossRate | ConsolidatedBBO


class SyntheticQuotes:
    """The configured synthetic markets on one bus: a sink on their legs' keys, and a
    listener of the legs' stale flags."""

    def __init__(self, bus: Bus, markets: list[SyntheticMarket]) -> None:
        self.bus = bus
        self.markets = markets
        self._by_leg: dict[Key, list[SyntheticMarket]] = {}
        for market in markets:
            for leg in market.legs:
                self._by_leg.setdefault(leg, []).append(market)
        bus.add_sink(self)
        bus.on_stale(self._reprice_leg)

    @property
    def crosses(self) -> list[CrossRate]:
        return [m for m in self.markets if isinstance(m, CrossRate)]

    @property
    def legs(self) -> list[Key]:
        """Every market some synthetic market is derived from."""
        return list(self._by_leg)

    def market_legs(self) -> dict[Key, list[Key]]:
        """Each synthetic market's key and the markets it is derived from."""
        return {(SYNTHETIC_VENUE, market.symbol): list(market.legs) for market in self.markets}

    def deliver_to(self, on_quote: QuoteCallback) -> None:
        """Hand every synthetic quote to `on_quote` as it is published (a backtest's or a
        lockstep replay's runner, which is called directly rather than through a bus
        subscription): from inside the leg's publish, just before the leg, in the order a
        live subscription sees them."""
        self.bus.add_sink(_SyntheticOnly(on_quote))

    # -- the bus sink (MarketSink) ------------------------------------------------------

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback:
        markets = self._by_leg.get((exchange, symbol))
        if not markets:
            return ignore
        return lambda _quote: self._reprice(markets)

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback:
        return ignore

    # -- pricing ------------------------------------------------------------------------

    def _reprice(self, markets: list[SyntheticMarket]) -> None:
        bus = self.bus
        for market in markets:
            derived = market.derive(bus.view)
            if isinstance(derived, Quote):
                bus.publish_quote(derived)
            elif derived == STALE:
                bus.mark_stale(SYNTHETIC_VENUE, market.symbol)

    def _reprice_leg(self, exchange: str, symbol: str) -> None:
        markets = self._by_leg.get((exchange, symbol))
        if markets:
            self._reprice(markets)


class _SyntheticOnly:
    """A bus sink passing the synthetic markets' quotes to one callback, nothing else."""

    def __init__(self, on_quote: QuoteCallback) -> None:
        self._on_quote = on_quote

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback:
        return self._on_quote if exchange == SYNTHETIC_VENUE else ignore

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback:
        return ignore


def build_cross(spec: CrossRateSettings, settings: Settings) -> CrossRate:
    """A configured cross; with `net_of_fees`, each leg's venue must be configured."""
    base_leg, quote_leg = parse_leg(spec.base_leg), parse_leg(spec.quote_leg)
    fees = [0.0, 0.0]
    if spec.net_of_fees:
        for index, (venue, _symbol) in enumerate((base_leg, quote_leg)):
            venue_settings = settings.venues.get(venue)
            if venue_settings is None:
                raise ValueError(f"synthetic cross {spec.symbol}: net_of_fees needs the "
                                 f"taker fee of venue {venue!r}, which is not configured")
            fees[index] = venue_settings.taker_fee_bps / 1e4
    return CrossRate(spec.symbol, base_leg, quote_leg, fees[0], fees[1])


def attach_synthetics(bus: Bus, settings: Settings) -> SyntheticQuotes | None:
    """Publish the configured synthetic markets on `bus` (None when none is configured)."""
    own = settings.synthetic
    markets: list[SyntheticMarket] = [build_cross(spec, settings) for spec in own.crosses]
    markets += [ConsolidatedBBO(spec.symbol, tuple(parse_leg(leg) for leg in spec.legs))
                for spec in own.consolidated]
    if not markets:
        return None
    log.info("synthetic_markets", markets=[m.symbol for m in markets])
    return SyntheticQuotes(bus, markets)
