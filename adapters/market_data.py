"""Live market data: every enabled venue's adapter, run together until cancelled.

`run_live(settings, bus)` is what `--mode watch`, `--mode record` and the strategy modes
run for `--feed live` (the default). Per venue, `feed = "native"` picks our own adapter
(binance_spot, binance_usdm, bybit_spot, bybit_linear) and `feed = "ccxt"` the ccxt.pro
feed (the default for every other ccxt exchange id). Each venue streams the configured
symbols of its market type (`Settings.symbols_for`).

Failure policy: a venue's connection problems are the supervisor's business (retried
with backoff, never raised). Only a problem reconnecting cannot fix (a symbol or topic
the venue rejects, an endpoint that refuses us for good) stops the feed, as a
`ConfigError` naming the venue and what it refused: the operator must fix the setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from adapters.binance.parser import BINANCE_VENUES
from adapters.bybit.parser import BYBIT_VENUES
from adapters.common.errors import FeedError
from adapters.common.events import FeedListener
from adapters.common.stats import stats_for
from config.settings import ConfigError, Settings, VenueSettings
from daemon.core.logs import get_logger
from daemon.market.bus import Bus

if TYPE_CHECKING:
    from adapters.recordings.recorder import Recorder

log = get_logger("live")



def build_adapter(
    venue: str,
    venue_settings: VenueSettings,
    symbols: list[str],
    bus: Bus,
    *,
    recorder: Recorder | None = None,
    listeners: Iterable[FeedListener] = (),
) -> Any:
    """The adapter for one venue (not started): native or ccxt.pro, as its settings say."""
    listeners = list(listeners)
    frame_tap = None
    if recorder is not None:
        recording = recorder.open_venue(venue, symbols)
        frame_tap = recording.write
        listeners.append(recording.on_event)
    stats = stats_for(venue)
    if venue_settings.feed == "native":
        if not venue_settings.ws_url:
            raise ConfigError(f"invalid setting venues.{venue}.ws_url: empty")
        if venue in BINANCE_VENUES:
            from adapters.binance.session import BinanceAdapter

            return BinanceAdapter(venue, venue_settings, symbols, bus, listeners=listeners,
                                  frame_tap=frame_tap, stats=stats)
        if venue in BYBIT_VENUES:
            from adapters.bybit.session import BybitAdapter

            return BybitAdapter(venue, venue_settings, symbols, bus, listeners=listeners,
                                frame_tap=frame_tap, stats=stats)
        raise ConfigError(
            f"invalid setting venues.{venue}.feed: no native adapter for {venue!r} "
            f"(native: {', '.join(BINANCE_VENUES + BYBIT_VENUES)}); use 'ccxt'")
    from adapters.ccxt.feed import CcxtFeed

    if recorder is not None:
        log.warning("not_recorded", venue=venue,
                    reason="the ccxt feed does not expose raw frames; only events are recorded")
    return CcxtFeed(venue, venue_settings, symbols, bus, listeners=listeners, stats=stats)


def build_adapters(settings: Settings, bus: Bus, *, recorder: Recorder | None = None,
                   listeners: Iterable[FeedListener] = ()) -> list[Any]:
    """One adapter per enabled venue that has symbols of its market type."""
    adapters = []
    for venue in settings.enabled_venues():
        symbols = settings.symbols_for(venue)
        if not symbols:
            log.warning("venue_without_symbols", venue=venue,
                        market_type=settings.venues[venue].market_type,
                        symbols=settings.symbols)
            continue
        adapters.append(build_adapter(venue, settings.venues[venue], symbols, bus,
                                      recorder=recorder, listeners=listeners))
    return adapters


async def run_live(settings: Settings, bus: Bus, *, recorder: Recorder | None = None,
                   listeners: Iterable[FeedListener] = ()) -> None:
    """Run every enabled venue's adapter until cancelled.

    Raises `ConfigError` when no venue can run, or when a venue fails in a way retrying
    cannot fix (the other venues are stopped too: a half-configured feed is a mistake).
    """
    adapters = build_adapters(settings, bus, recorder=recorder, listeners=listeners)
    if not adapters:
        raise ConfigError(
            "invalid setting venues: no enabled venue has symbols of its market type "
            f"(enabled: {', '.join(settings.enabled_venues()) or 'none'}; "
            f"symbols: {', '.join(settings.symbols)})")
    log.info("live_feed_start", venues=[a.venue for a in adapters])
    tasks = [asyncio.create_task(adapter.run(), name=f"feed:{adapter.venue}")
             for adapter in adapters]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if isinstance(error, FeedError):
                raise ConfigError(f"venue {error}") from error
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for adapter in adapters:
            log.info("feed_stats", **adapter.stats.as_dict())
