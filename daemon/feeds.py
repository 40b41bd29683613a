"""Market data chosen by `--feed`: live venue adapters, the shipped sample, or recordings."""

from __future__ import annotations

import sys

from config.settings import ConfigError, Settings
from daemon.market.bus import Bus

REPLAY_PREFIX = "replay:"


async def run_feed(feed: str, settings: Settings, bus: Bus, *, speed: float | None,
                   yield_every: int) -> object:
    """Run the chosen feed into `bus` until it ends (replay) or is cancelled (live)."""
    if feed == "sample" or feed.startswith(REPLAY_PREFIX):
        return await _run_replay(feed, bus, speed, yield_every)
    if feed == "live":
        from adapters.market_data import run_live

        return await run_live(settings, bus)
    raise ConfigError(
        f"invalid setting feed: {feed!r} (use live, sample or replay:FILE[@VENUE:SYMBOL],...)"
    )


async def _run_replay(feed: str, bus: Bus, speed: float | None, yield_every: int) -> object:
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
        replay = ReplayFeed(specs, bus.publish_quote, bus.publish_trade,
                            speed=speed, yield_every=yield_every, books=depth is not None,
                            publish_depth=depth.apply if depth is not None else None)
        stats = await replay.run()
        damage = stats.damage_summary()
        if damage is not None and stats.usable:
            print(f"cryptopipe: replay damage: {damage}", file=sys.stderr)
        return check_usable(specs, stats)
    except ReplayError as exc:
        raise ConfigError(f"invalid setting feed: {exc}") from None
