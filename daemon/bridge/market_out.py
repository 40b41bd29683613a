"""Bus bridge out: every Quote and Trade of this process's bus onto NATS.

`MarketPublisher` is a bus sink (`daemon.market.bus`, `add_sink`): the bus asks it once per
(venue, symbol) for a route, and the route, built with the key's subject already
computed (`md.<venue>.<SYMBOL>.quote|trade`, daemon/bridge/codec.py), only appends the
event to a bounded buffer and wakes the publisher task. The adapter that published never
awaits the network: when the buffer is full the event is dropped and counted
(`cryptopipe_nats_md_dropped`, a warning at most every `DROP_LOG_INTERVAL_S`).

The task encodes (msgpack) and hands each event to nats-py, which writes in the
background. A slow server makes nats-py's flush wait: the task waits, the buffer fills,
the feed goes on. While the connection is down (nats-py reconnecting) events are dropped
and counted (`server_away`) rather than left in nats-py's reconnect buffer: a quote held
for minutes and delivered in a burst after the reconnect would reach strategies as if it
were new; a gap is what they can handle (their NATS feed flags the keys stale meanwhile,
and the next quote clears it). The local ring and recorder of the feed process keep
everything.

Core NATS publish, captured by a JetStream stream on `md.>` (`ensure_market_stream`,
created or updated at start: max age `nats.md_max_age_s`, max bytes `nats.md_max_bytes`):
the server stores every message for a later replay, and the publisher waits for no
acknowledgement. A JetStream publish waits one round trip per message for its
acknowledgement, or holds a future per message in flight (publish_async): bench/bench_bridge.py
measures both against core publish (README "Past one process (NATS)"); core wins by an
order of magnitude for data whose loss is already tolerated (a quote is replaced within
milliseconds, the local ring keeps the history) and which needs no per-message receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from nats import errors as nats_errors

from config.settings import NatsSettings, Settings
from daemon.bridge.codec import MD_PREFIX, QUOTE, TRADE, encode_quote, encode_trade, subject
from daemon.core.logs import get_logger
from daemon.core.model import Quote, Trade
from daemon.core.routes import QuoteCallback, TradeCallback, ignore
from daemon.core.tasks import spawn
from daemon.market.bus import Bus
from daemon.market.synthetic import SYNTHETIC_VENUE

if TYPE_CHECKING:
    import argparse

    from nats.aio.client import Client

    from daemon.bridge.process import Bridge

log = get_logger("nats_md_out")

#: A warning about dropped events at most this often (the counter says the rest).
DROP_LOG_INTERVAL_S = 10.0
#: The publisher task yields to the event loop after this many events, so a long backlog
#: never keeps the adapters from their sockets.
PUBLISH_BATCH = 256
#: At stop, what is still buffered gets this long to reach the server.
FLUSH_AT_STOP_S = 2.0
#: Modes with market data on their bus: these publish it when given `--bus-publish`.
MARKET_MODES = frozenset({"watch", "record", "action", "feed"})

Event = Quote | Trade


class MarketPublisher:
    """A bus sink that publishes every quote and trade on NATS from a task of its own."""

    def __init__(self, client: Client, capacity: int) -> None:
        self._client = client
        self.capacity = capacity
        self._buffer: deque[tuple[str, Callable[[Any], bytes], Event]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Events handed to the NATS client (sent, or held by it during a reconnect).
        self.published = 0
        #: Events dropped, by reason: buffer_full (the task fell behind), server_away
        #: (the connection was down, or nats-py refused more), closed (we are stopping).
        self.dropped_by: Counter[str] = Counter()
        self._dropped_logged = 0
        self._last_drop_log = -DROP_LOG_INTERVAL_S

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by.values())

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # -- the sink: one route per key, the subject computed here once -----------------------

    def quote_route(self, exchange: str, symbol: str) -> QuoteCallback:
        if exchange == SYNTHETIC_VENUE:  # derived here from the legs, as every process can
            return ignore
        return self._route(subject(exchange, symbol, QUOTE), encode_quote)

    def trade_route(self, exchange: str, symbol: str) -> TradeCallback:
        if exchange == SYNTHETIC_VENUE:
            return ignore
        return self._route(subject(exchange, symbol, TRADE), encode_trade)

    def _route(self, key_subject: str, encode: Callable[[Any], bytes]) -> Callable[[Any], None]:
        buffer, capacity, wakeup = self._buffer, self.capacity, self._wakeup

        def offer(event: Event) -> None:
            if len(buffer) >= capacity:
                self._drop("buffer_full")
                return
            buffer.append((key_subject, encode, event))
            if not wakeup.is_set():
                wakeup.set()

        return offer

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped_by[reason] += count
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            total = self.dropped
            log.warning("md_publish_dropped", reason=reason, dropped=total,
                        since_last_warning=total - self._dropped_logged,
                        capacity=self.capacity,
                        connected=self._client.is_connected)
            self._last_drop_log, self._dropped_logged = now, total

    # -- the task ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = spawn(self._run(), name="nats-md-publisher")

    async def _run(self) -> None:
        client, buffer = self._client, self._buffer
        publish = client.publish
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            sent = 0
            while buffer:
                key_subject, encode, event = buffer.popleft()
                if not client.is_connected:  # see the module doc: a gap, not a late burst
                    self._drop("server_away", 1 + len(buffer))
                    buffer.clear()
                    break
                try:
                    await publish(key_subject, encode(event))
                except nats_errors.OutboundBufferLimitError:
                    self._drop("server_away")
                except (nats_errors.ConnectionClosedError, nats_errors.ConnectionDrainingError):
                    self._drop("closed", 1 + len(buffer))
                    buffer.clear()
                    break
                else:
                    self.published += 1
                sent += 1
                if sent % PUBLISH_BATCH == 0:
                    await asyncio.sleep(0)

    async def aclose(self) -> None:
        """Give what is buffered a moment to go out, then stop the task."""
        deadline = time.monotonic() + FLUSH_AT_STOP_S
        while (self._buffer and self._task is not None and not self._task.done()
               and self._client.is_connected and time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._buffer:
            self._drop("closed", len(self._buffer))
            self._buffer.clear()
        with contextlib.suppress(Exception):
            await self._client.flush(timeout=FLUSH_AT_STOP_S)
        log.info("md_publisher_stopped", published=self.published,
                 dropped=dict(self.dropped_by))


async def ensure_market_stream(client: Client, settings: NatsSettings) -> bool:
    """Create the stream that keeps `md.>` (or bring an existing one to these limits).
    False, with a warning, when the server has no JetStream: the live stream still flows,
    only the history is missing."""
    from nats.js import api
    from nats.js.errors import BadRequestError

    config = api.StreamConfig(
        name=settings.md_stream, subjects=[f"{MD_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD,
        storage=api.StorageType.FILE, max_age=settings.md_max_age_s,
        max_bytes=settings.md_max_bytes)
    js = client.jetstream()
    try:
        try:
            await js.add_stream(config)
        except BadRequestError:  # it exists with other limits: these settings win
            await js.update_stream(config)
    except Exception as exc:  # no JetStream, no permission: publish anyway, say so
        log.warning("md_stream_unavailable", stream=settings.md_stream,
                    error=f"{type(exc).__name__}: {exc}",
                    note="market data is published but not kept for replay")
        return False
    log.info("md_stream_ready", stream=settings.md_stream, subjects=f"{MD_PREFIX}.>",
             max_age_s=settings.md_max_age_s, max_bytes=settings.md_max_bytes)
    return True


class MarketApp(Protocol):
    settings: Settings
    args: argparse.Namespace
    bus: Bus


def wants_market_out(args: argparse.Namespace) -> bool:
    """Publish this bus: a market-data mode given `--bus-publish` (or `--mode feed`), not
    fed from NATS itself (that data is on the bus already; publishing it again would loop)."""
    mode = getattr(args, "mode", None)
    if mode not in MARKET_MODES or not (getattr(args, "bus_publish", None) or mode == "feed"):
        return False
    feed = getattr(args, "feed", "live") or "live"
    if feed.startswith(("nats://", "tls://")):
        log.info("md_not_republished", reason="the market data comes from NATS (--feed)")
        return False
    return True


async def start_market_out(app: MarketApp, bridge: Bridge) -> MarketPublisher | None:
    """Publish `app.bus` on the bridge's connection when this process should (see
    `wants_market_out`); the publisher stops with the bridge."""
    if bridge.client is None or not wants_market_out(app.args):
        return None
    await ensure_market_stream(bridge.client, app.settings.nats)
    publisher = MarketPublisher(bridge.client, app.settings.nats.md_publish_buffer)
    app.bus.add_sink(publisher)
    publisher.start()
    bridge.on_close(publisher.aclose)
    bridge.add_metric("md_published", "Market events handed to the NATS client.",
                      lambda: publisher.published)
    bridge.add_metric("md_dropped", "Market events dropped: the publish buffer was full, "
                      "or the connection to the server was down.",
                      lambda: publisher.dropped)
    bridge.add_metric("md_buffered", "Market events waiting for the publisher task now.",
                      lambda: publisher.buffered, counter=False)
    log.info("md_publishing", subjects=f"{MD_PREFIX}.<venue>.<SYMBOL>.quote|trade",
             buffer=publisher.capacity)
    return publisher
