"""Synthetic quotes: markets derived from others, published on the bus as markets of their own.

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
watchdog or a disconnect) the cross is flagged stale too, and no cross is published while
either leg is stale or missing; the next good quote of both legs publishes a fresh one.
Leg quotes that cannot price a cross (a non-positive price) are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import CrossRateSettings, Settings
from daemon.core.logs import get_logger
from daemon.core.model import Quote
from daemon.core.routes import QuoteCallback, TradeCallback, ignore
from daemon.market.bus import Bus

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


class SyntheticQuotes:
    """The configured crosses on one bus: a sink on their legs' keys, a stale listener."""

    def __init__(self, bus: Bus, crosses: list[CrossRate]) -> None:
        self.bus = bus
        self.crosses = crosses
        self._by_leg: dict[Key, list[CrossRate]] = {}
        for cross in crosses:
            for leg in (cross.base_leg, cross.quote_leg):
                self._by_leg.setdefault(leg, []).append(cross)
        bus.add_sink(self)
        bus.on_stale(self._on_leg_stale)

    @property
    def legs(self) -> list[Key]:
        """Every market some cross is priced from."""
        return list(self._by_leg)

    # -- the bus sink (MarketSink) ------------------------------------------------------

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback:
        crosses = self._by_leg.get((exchange, symbol))
        if not crosses:
            return ignore
        return lambda _quote: self._reprice(crosses)

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback:
        return ignore

    # -- pricing ------------------------------------------------------------------------

    def _reprice(self, crosses: list[CrossRate]) -> None:
        view = self.bus.view
        for cross in crosses:
            base = view.quote(*cross.base_leg)
            quote = view.quote(*cross.quote_leg)
            if base is None or quote is None:
                continue  # not priced until both legs have quoted
            if base.stale or quote.stale:
                self.bus.mark_stale(SYNTHETIC_VENUE, cross.symbol)
                continue
            priced = cross.price(base, quote)
            if priced is not None:
                self.bus.publish_quote(priced)

    def _on_leg_stale(self, exchange: str, symbol: str) -> None:
        for cross in self._by_leg.get((exchange, symbol), ()):
            self.bus.mark_stale(SYNTHETIC_VENUE, cross.symbol)


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
    specs = settings.synthetic.crosses
    if not specs:
        return None
    crosses = [build_cross(spec, settings) for spec in specs]
    log.info("synthetic_crosses", crosses=[c.symbol for c in crosses])
    return SyntheticQuotes(bus, crosses)
