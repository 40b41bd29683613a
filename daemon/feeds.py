"""Market-data feeds selected by `--feed`: live venue adapters or recorded files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from config.settings import ConfigError

if TYPE_CHECKING:
    from daemon.app import App

REPLAY_PREFIX = "replay:"


async def build_feed(app: App) -> object:
    """Run the chosen feed until it ends (replay) or is cancelled (live)."""
    feed = app.args.feed
    if feed == "sample" or feed.startswith(REPLAY_PREFIX):
        return await _run_replay(app, feed)
    if feed == "live":
        try:
            from adapters.market_data import run_live
        except ModuleNotFoundError:
            raise ConfigError(
                "live venue adapters are not in this build yet: use --feed sample "
                "or --feed replay:FILE[@VENUE:SYMBOL]"
            ) from None
        return await run_live(app.settings, app.bus)
    raise ConfigError(
        f"invalid setting feed: {feed!r} (use live, sample or replay:FILE[@VENUE:SYMBOL],...)"
    )


async def _run_replay(app: App, feed: str) -> object:
    from adapters.recordings.replay import ReplayError, ReplayFeed, parse_specs, sample_specs

    try:
        specs = sample_specs() if feed == "sample" else parse_specs(feed)
        replay = ReplayFeed(specs, app.bus.publish_quote, app.bus.publish_trade,
                            speed=app.args.speed, yield_every=app.replay_yield_every)
        return await replay.run()
    except ReplayError as exc:
        raise ConfigError(f"invalid setting feed: {exc}") from None
