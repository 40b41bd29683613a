"""Whether the market data carries the markets a strategy trades.

A strategy set to a symbol the recording or the feed does not carry would sit silent and
report nothing: the backtest refuses it before running (`--data: no data for ...`), and
action mode warns once, a few seconds of feed time in (`QuoteWatch`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from config.settings import Settings
from daemon.core.clock import NS_PER_SECOND
from daemon.core.logs import get_logger
from daemon.market.bus import Bus, Key
from strategies.base import Strategy

log = get_logger("coverage")

#: Feed time after the first event by which every traded market should have quoted.
QUOTE_GRACE_NS = 5 * NS_PER_SECOND


def traded_markets(strategy: Strategy, settings: Settings) -> frozenset[Key] | None:
    """The strategy's declared markets, plus the market its client flow is priced off;
    None when the strategy does not declare them."""
    declared = strategy.market_keys
    if declared is None:
        return None
    markets = set(declared)
    if strategy.takes_client_flow:
        own = settings.strategies.internalize
        markets.add((own.venue, own.symbol))  # client fills are priced off its mid
    return frozenset(markets)


def market_names(markets: Iterable[Key]) -> str:
    """`venue SYMBOL, ...` in a stable order, for one line of output."""
    return ", ".join(f"{venue} {symbol}" for venue, symbol in sorted(markets)) or "none"


class QuoteWatch:
    """Action mode: warns once when a traded market has had no quote `QUOTE_GRACE_NS` of
    feed time after the first event while other markets have. Checked from the trading
    loop's tick, never per event."""

    def __init__(self, strategy: str, markets: frozenset[Key], bus: Bus) -> None:
        self.strategy = strategy
        self.markets = markets
        self.bus = bus
        self.due_ns: int | None = None  # set by the first event's time

    def check(self, first_ns: int, now_ns: int) -> bool:
        """Warn if it is time and a market is missing; True once nothing is left to do."""
        if not first_ns:
            return False
        if self.due_ns is None:
            self.due_ns = first_ns + QUOTE_GRACE_NS
        if now_ns < self.due_ns:
            return False
        quoted = self.bus.quoted_keys()
        if not quoted:  # nothing quotes at all: the feed's problem, not this market's
            self.due_ns = now_ns + QUOTE_GRACE_NS
            return False
        missing = self.markets - quoted
        if missing:
            seconds = (now_ns - first_ns) / NS_PER_SECOND
            log.warning("market_without_data", strategy=self.strategy,
                        missing=sorted(f"{v} {s}" for v, s in missing),
                        quoting=sorted(f"{v} {s}" for v, s in quoted),
                        feed_seconds=round(seconds, 1))
            print(f"cryptopipe: warning: no quote for {market_names(missing)} after "
                  f"{seconds:.0f} s of feed (markets quoting: {market_names(quoted)})",
                  file=sys.stderr)
        return True
