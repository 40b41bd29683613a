"""Tick and lot of the recorded markets, from the recorded prices and sizes.

A replay or backtest of a symbol the settings have no `markets` entry for takes its rules
from the data (daemon/trading/markets.py applies them, settings winning): the first
`SAMPLE_EVENTS` quotes and trades of each file go through the live parsers (with the
file's `@VENUE:SYMBOL` relabelling), and per market the finest decimal step of the prices
is the tick, of the sizes the lot. The same files give the same rules, so an action replay
and a backtest of one file round alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.recordings.replay import (
    ReplayError,
    ReplaySpec,
    _relabelled,
    iter_frames,
    make_frame_parser,
)
from daemon.core.model import Quote, Trade
from daemon.core.routes import Callbacks
from daemon.trading.markets import FoundRules, Key, decimal_step

#: Quotes and trades read per file (a few seconds of a busy market).
SAMPLE_EVENTS = 20_000
SOURCE = "recorded data"


@dataclass(slots=True)
class _Seen:
    prices: set[float] = field(default_factory=set)
    sizes: set[float] = field(default_factory=set)
    mid: float | None = None


def sample_market_rules(specs: list[ReplaySpec], events: int = SAMPLE_EVENTS
                        ) -> dict[Key, FoundRules]:
    """(venue, symbol) -> tick and lot seen in the first `events` quotes and trades of each
    file. Unreadable files give nothing here: the replay itself reports them."""
    seen: dict[Key, _Seen] = {}
    for spec in specs:
        try:
            _sample_file(spec, seen, events)
        except (ReplayError, OSError):
            continue
    found = {}
    for key, market in seen.items():
        tick, lot = decimal_step(market.prices), decimal_step(market.sizes)
        if tick and lot:
            found[key] = FoundRules(tick, lot, SOURCE, mid=market.mid)
    return found


def _sample_file(spec: ReplaySpec, seen: dict[Key, _Seen], limit: int) -> None:
    count = 0

    def market(exchange: str, symbol: str) -> _Seen:
        nonlocal count
        count += 1
        return seen.get((exchange, symbol)) or seen.setdefault((exchange, symbol), _Seen())

    def on_quote(quote: Quote) -> None:
        entry = market(quote.exchange, quote.symbol)
        entry.prices.update((quote.bid, quote.ask))
        entry.sizes.update((quote.bid_qty, quote.ask_qty))
        if entry.mid is None:
            entry.mid = quote.mid

    def on_trade(trade: Trade) -> None:
        entry = market(trade.exchange, trade.symbol)
        entry.prices.add(trade.price)
        entry.sizes.add(trade.qty)

    publish_quote: Callable[[Quote], None] = on_quote
    publish_trade: Callable[[Trade], None] = on_trade
    if spec.venue is not None or spec.symbol is not None:
        publish_quote, publish_trade = _relabelled(spec, on_quote, on_trade)
    parsers = {}
    for ts_ns, frame, meta in iter_frames(spec.path, symbol=spec.symbol):
        if meta.session is not None:
            continue
        parser = parsers.get(meta.venue)
        if parser is None:
            try:
                parser = parsers[meta.venue] = make_frame_parser(
                    meta, Callbacks(publish_quote, publish_trade))
            except ValueError:
                continue
        parser.feed(frame, ts_ns)
        if count >= limit:
            return
