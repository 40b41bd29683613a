"""Market data chosen by `--feed`: live venue adapters, the shipped sample, or recordings."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from config.settings import ConfigError, Settings
from daemon.bridge.process import is_nats_url
from daemon.core.logs import get_logger
from daemon.core.routes import Callbacks
from daemon.market.bus import Bus
from daemon.trading.markets import FoundRules, apply_market_rules, missing_rules, wanted_markets

if TYPE_CHECKING:
    from nats.aio.client import Client

    from adapters.recordings.replay import ReplaySpec

log = get_logger("feeds")

REPLAY_PREFIX = "replay:"


async def run_feed(feed: str, settings: Settings, bus: Bus, *, speed: float | None,
                   yield_every: int, replay_to: Callbacks | None = None,
                   nats: Client | None = None) -> object:
    """Run the chosen feed into `bus` until it ends (replay) or is cancelled (live, NATS).

    `replay_to`: a replay (or a NATS feed) hands each event to these callbacks instead of
    publishing it, and they publish it on the bus themselves (an action replay that steps
    the strategy with each event, as a backtest does). Live feeds always publish on the
    bus. `nats`: the process's NATS connection, for `--feed nats://HOST:PORT`
    (daemon/bridge/market_in.py)."""
    if feed == "sample" or feed.startswith(REPLAY_PREFIX):
        publish = replay_to or Callbacks(bus.publish_quote, bus.publish_trade)
        return await _run_replay(feed, bus, publish, speed, yield_every)
    if feed == "live":
        from adapters.market_data import run_live

        return await run_live(settings, bus)
    if is_nats_url(feed):
        from daemon.bridge.market_in import run_nats_feed

        return await run_nats_feed(nats, settings, bus, publish=replay_to)
    raise ConfigError(
        f"invalid setting feed: {feed!r} (use live, sample, replay:FILE[@VENUE:SYMBOL],... "
        "or nats://HOST:PORT)"
    )


async def _run_replay(feed: str, bus: Bus, publish: Callbacks, speed: float | None,
                      yield_every: int) -> object:
    """Replay the files once. What was lost on the way is printed on stderr (one line);
    files that gave not one quote or trade are an input error (ConfigError: exit 2),
    never a silent success."""
    from adapters.recordings.replay import (
        ReplayError,
        ReplayFeed,
        check_usable,
        parse_specs,
        sample_specs,
    )

    try:
        specs = sample_specs() if feed == "sample" else parse_specs(feed)
        depth = bus.depth  # kept when a paper executor walks it (--mode action)
        replay = ReplayFeed(specs, publish.on_quote, publish.on_trade,
                            speed=speed, yield_every=yield_every, books=depth is not None,
                            publish_depth=depth.apply if depth is not None else None)
        stats = await replay.run()
        damage = stats.damage_summary()
        if damage is not None and stats.usable:
            print(f"cryptopipe: replay damage: {damage}", file=sys.stderr)
        return check_usable(specs, stats)
    except ReplayError as exc:
        raise ConfigError(f"invalid setting feed: {exc}") from None


async def resolve_markets(settings: Settings, *, feed: str = "live",
                          specs: list[ReplaySpec] | None = None,
                          strategy: str | None = None) -> Settings:
    """`settings` completed with the tick and lot (and paper balances) of the markets it
    says nothing about: from the recordings (`specs`, or those of a replay `feed`) or, on
    a live feed, from each venue's markets through ccxt (daemon/trading/markets.py)."""
    from adapters.recordings.replay import ReplayError, parse_specs, sample_specs

    paper = settings.execution.mode != "live"
    # From NATS the markets are the venues' own, as live (only what settings lack).
    if specs is None and feed != "live" and not is_nats_url(feed):
        try:
            specs = sample_specs() if feed == "sample" else parse_specs(feed)
        except ReplayError:
            return settings  # the feed itself reports the problem
    if specs is not None:
        from adapters.recordings.market_rules import sample_market_rules

        found = await asyncio.to_thread(sample_market_rules, specs)
        return apply_market_rules(settings, found, paper=paper)
    return apply_market_rules(settings, await _venue_market_rules(settings, strategy),
                              paper=paper)


async def _venue_market_rules(settings: Settings, strategy: str | None
                              ) -> dict[tuple[str, str], FoundRules]:
    from adapters.ccxt.exchange import MARKETS_SOURCE, fetch_market_rules
    from adapters.common.errors import FeedError

    by_venue: dict[str, list[str]] = {}
    for venue, symbol in missing_rules(settings, wanted_markets(settings, strategy)):
        by_venue.setdefault(venue, []).append(symbol)
    found: dict[tuple[str, str], FoundRules] = {}
    for venue, symbols in by_venue.items():
        try:
            rules = await fetch_market_rules(venue, settings.venues[venue], symbols)
        except (FeedError, ValueError) as exc:
            log.warning("markets_unavailable", venue=venue, symbols=symbols, error=str(exc),
                        note=f"set venues.{venue}.markets (tick, lot) for {', '.join(symbols)}")
            continue
        for symbol in symbols:
            if symbol not in rules:
                log.warning("market_not_listed", venue=venue, symbol=symbol,
                            note=f"{venue} does not list {symbol}; set venues.{venue}.markets")
                continue
            rule = rules[symbol]
            found[(venue, symbol)] = FoundRules(rule["tick"], rule["lot"], MARKETS_SOURCE,
                                                min_notional=rule.get("min_notional"))
    return found
