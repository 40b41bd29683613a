"""Bus bridge in: `--feed nats://HOST:PORT` takes market data from NATS onto the local bus.

`NatsMarketFeed` plays an adapter's part for every enabled venue and its symbols
(`Settings.symbols_for`): it subscribes to `md.<venue>.<SYMBOL>.*` (quotes and trades)
of exactly those keys (the server filters; nothing else crosses the wire), decodes each
message into the `Quote`/`Trade` that was published (daemon/bridge/codec.py) and hands it
to the key's bus route, as a parser does. Conflation, the ring buffer, the consolidated
view, synthetic markets and strategies work unchanged.

- **Late joiner.** Once subscribed, the latest quote of every key is fetched from the
  market-data stream (`nats.md_stream`, one direct "last message on subject" request per
  key) and published unless a live quote of that key already came: a strategy that
  starts after the feed has the whole book at once. A kept quote older than the venue's
  `stale_after_s` (by the server's receive time) is published and flagged stale at once.
- **Staleness.** As a live adapter's quote-age watchdog does (adapters/common/watchdogs.py),
  a key that has gone silent for `venues.<venue>.stale_after_s` of wall time — its feed
  process died, the server went away — is flagged stale on the bus (`Bus.mark_stale`);
  the next quote clears it. Wall time, not the data's: a feed process replaying a
  recording sends recorded receive times, and a stopped feed stops that clock too.
- **Clock.** The data's own receive times (`local_ts_ns`, set by the feed process) are
  the strategy's clock: `--feed nats://` counts as a replaying feed (`App.replaying`), so
  a strategy runs on the newest event's receive time (`FeedClock`). Fed by a live feed
  process that is the wall time it received the data, within the bus's fraction of a
  millisecond; fed by one replaying a recording it is the recording's time, and the
  strategy decides as it would on the replay itself. A wall clock would make every
  replayed quote two years old (stale) and would add the two hosts' clock skew to every
  quote's age.
- **Counters.** Each venue's `VenueStats` (as its adapter's): messages as frames, bodies
  that do not decode as parse errors (`bad_body`, dropped), stale events, connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from adapters.common.stats import VenueStats, stats_for
from adapters.common.watchdogs import check_interval
from config.settings import ConfigError, Settings
from daemon.bridge.codec import (
    QUOTE,
    CodecError,
    decode_quote,
    decode_trade,
    key_filter,
    subject,
)
from daemon.bridge.connection import flush_all
from daemon.core.clock import NS_PER_SECOND, now_ns
from daemon.core.logs import get_logger
from daemon.core.routes import Callbacks, MarketSink
from daemon.market.bus import Bus

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = get_logger("nats_md_in")

Key = tuple[str, str]
QUOTE_SUFFIX = "." + QUOTE


class _KeyFeed:
    """One (venue, symbol): its routes, when it last spoke, whether we flagged it."""

    __slots__ = ("flagged", "last_rx_ns", "quote_route", "quoted", "stale_ns", "stats",
                 "symbol", "trade_route", "venue", "warned_no_quotes")

    def __init__(self, venue: str, symbol: str, sink: MarketSink, stats: VenueStats,
                 stale_ns: int, started_ns: int) -> None:
        self.venue, self.symbol = venue, symbol
        self.quote_route = sink.quote_route(venue, symbol)
        self.trade_route = sink.trade_route(venue, symbol)
        self.stats = stats
        self.stale_ns = stale_ns
        self.last_rx_ns = started_ns  # monotonic: silence is counted from our start
        self.flagged = False
        self.quoted = False
        self.warned_no_quotes = False


def feed_keys(settings: Settings) -> list[Key]:
    """Every enabled venue x its symbols: the keys this process takes from NATS."""
    return [(venue, symbol) for venue in settings.enabled_venues()
            for symbol in settings.symbols_for(venue)]


class NatsMarketFeed:
    """Market data of the enabled venues and symbols from NATS; `run()` until cancelled."""

    def __init__(self, client: Client, settings: Settings, bus: Bus, *,
                 publish: Callbacks | None = None,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        keys = feed_keys(settings)
        if not keys:
            raise ConfigError(
                "invalid setting venues: --feed nats:// takes the enabled venues' symbols "
                f"and none has any (enabled: {', '.join(settings.enabled_venues()) or 'none'};"
                f" symbols: {', '.join(settings.symbols)})")
        self.client = client
        self.bus = bus
        self.stream = settings.nats.md_stream
        self._monotonic_ns = monotonic_ns
        sink: MarketSink = publish or bus
        started = monotonic_ns()
        self.keys: dict[Key, _KeyFeed] = {
            (venue, symbol): _KeyFeed(
                venue, symbol, sink, stats_for(venue),
                int(settings.venues[venue].stale_after_s * NS_PER_SECOND), started)
            for venue, symbol in keys}
        self._check_s = check_interval(min(k.stale_ns for k in self.keys.values()) / 1e9)
        self._subscriptions: list[Subscription] = []
        #: Quotes a late join took from the stream (not received live).
        self.late_quotes = 0

    async def run(self) -> None:
        try:
            await self._subscribe()
            await self._late_join()
            log.info("nats_feed_start", keys=[f"{v} {s}" for v, s in self.keys],
                     late_quotes=self.late_quotes)
            while True:
                await asyncio.sleep(self._check_s)
                self.check(self._monotonic_ns())
        finally:
            await self._unsubscribe()
            for stats in {id(k.stats): k.stats for k in self.keys.values()}.values():
                stats.connected = False
                log.info("feed_stats", **stats.as_dict())

    # -- live subscriptions ---------------------------------------------------------------------

    async def _subscribe(self) -> None:
        # One subscription per key for both kinds: one task delivers them, so a key's
        # quotes and trades reach the bus in the order they were published.
        for key in self.keys.values():
            self._subscriptions.append(
                await self.client.subscribe(key_filter(key.venue, key.symbol),
                                            cb=self._handler(key)))
            key.stats.connects += 1
            key.stats.connected = self.client.is_connected
        await flush_all(self.client)  # the server has them all before the late join looks

    def _handler(self, key: _KeyFeed) -> Callable[[Msg], Awaitable[None]]:
        venue, symbol, stats, monotonic_ns = key.venue, key.symbol, key.stats, self._monotonic_ns
        quote_route, trade_route = key.quote_route, key.trade_route

        async def on_message(msg: Msg) -> None:
            stats.frames += 1
            try:
                if msg.subject.endswith(QUOTE_SUFFIX):
                    quote = decode_quote(venue, symbol, msg.data)
                    key.last_rx_ns = monotonic_ns()
                    key.quoted = True
                    quote_route(quote)
                else:
                    trade_route(decode_trade(venue, symbol, msg.data))
            except CodecError:
                stats.drop("bad_body")

        return on_message

    async def _unsubscribe(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            with contextlib.suppress(Exception):  # a closed connection has none left
                await subscription.unsubscribe()

    # -- late join: the latest quote of every key, at once ----------------------------------------

    async def _late_join(self) -> None:
        from nats.js.errors import NotFoundError

        js = self.client.jetstream()
        keys = list(self.keys.values())
        answers = await asyncio.gather(
            *(js.get_last_msg(self.stream, subject(k.venue, k.symbol, QUOTE), direct=False)
              for k in keys), return_exceptions=True)
        for key, answer in zip(keys, answers, strict=True):
            if isinstance(answer, NotFoundError):
                continue  # nothing kept for this key (yet)
            if isinstance(answer, BaseException):
                log.warning("late_join_unavailable", venue=key.venue, symbol=key.symbol,
                            stream=self.stream, error=f"{type(answer).__name__}: {answer}")
                continue
            self._deliver_kept(key, answer.data or b"", answer.time)

    def _deliver_kept(self, key: _KeyFeed, body: bytes, stored: datetime | None) -> None:
        if key.quoted or self.bus.view.quote(key.venue, key.symbol) is not None:
            return  # a live quote came first: it is newer
        try:
            quote = decode_quote(key.venue, key.symbol, body)
        except CodecError:
            key.stats.drop("bad_body")
            return
        age_ns = 0
        if stored is not None:
            stored_utc = stored if stored.tzinfo else stored.replace(tzinfo=UTC)
            age_ns = max(0, now_ns() - int(stored_utc.timestamp() * NS_PER_SECOND))
        key.last_rx_ns = self._monotonic_ns() - age_ns
        key.quoted = True
        key.quote_route(quote)
        self.late_quotes += 1
        if age_ns > key.stale_ns:  # kept from a feed that has been silent too long
            self._flag(key, "kept quote too old", age_ns)

    # -- the silence watchdog ------------------------------------------------------------------

    def check(self, now_mono_ns: int) -> None:
        """Flag each key silent for longer than its venue's `stale_after_s` (one pass)."""
        connected = self.client.is_connected
        wall = now_ns()
        for key in self.keys.values():
            key.stats.connected = connected
            silent_ns = now_mono_ns - key.last_rx_ns
            if key.quoted:
                key.stats.last_frame_ns = wall - silent_ns
            if silent_ns > key.stale_ns:
                if not key.quoted:
                    self._warn_no_quotes(key, silent_ns)
                elif not key.flagged:
                    self._flag(key, "silent" if connected else "server away", silent_ns)
            elif key.flagged:
                latest = self.bus.view.quote(key.venue, key.symbol)
                if latest is not None and not latest.stale:
                    key.flagged = False
                    log.info("fresh", venue=key.venue, symbol=key.symbol)

    def _warn_no_quotes(self, key: _KeyFeed, waited_ns: int) -> None:
        """Once: no feed process publishes this key (or not to this server)."""
        if not key.warned_no_quotes:
            key.warned_no_quotes = True
            log.warning("no_quotes", venue=key.venue, symbol=key.symbol, source="nats",
                        waited_s=round(waited_ns / 1e9, 3),
                        subject=subject(key.venue, key.symbol, QUOTE))

    def _flag(self, key: _KeyFeed, reason: str, silent_ns: int) -> None:
        key.flagged = True
        if self.bus.mark_stale(key.venue, key.symbol) is None:
            return  # quoted only through the lockstep callbacks: nothing on this bus
        key.stats.stale_events += 1
        log.warning("stale", venue=key.venue, symbol=key.symbol, reason=reason,
                    silent_s=round(silent_ns / 1e9, 3), source="nats")


async def run_nats_feed(client: Client | None, settings: Settings, bus: Bus, *,
                        publish: Callbacks | None = None) -> None:
    """`--feed nats://...`: run until cancelled (daemon/feeds.py)."""
    if client is None:
        raise ConfigError("invalid setting feed: --feed nats:// needs the NATS connection")
    await NatsMarketFeed(client, settings, bus, publish=publish).run()
