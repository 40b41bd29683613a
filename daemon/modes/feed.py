"""`--mode feed`: a feed-only process — venue adapters or a replay, the bus, the NATS publisher.

    python main.py --mode feed --venues binance_spot --symbols BTC/USDT --bus-publish nats://127.0.0.1:4222
    python main.py --mode feed --feed replay:FILE --speed 10 --bus-publish nats://127.0.0.1:4222

No strategy and no ring buffer: the bus only normalises the venues' frames and hands every
quote and trade to the publisher (daemon/bridge/market_out.py), which the bridge started
because this mode lives on the bus (without `--bus-publish` it publishes to `nats.url`).
`/metrics` and `/healthz` are served as in watch mode (the feeds' staleness, the
publisher's counts). A replay ends the process when its data does, after what is
buffered has gone out; live venues run until Ctrl-C, SIGTERM or `--duration`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from config.settings import ConfigError
from daemon.bridge.process import is_nats_url
from daemon.core.logs import get_logger

if TYPE_CHECKING:
    from daemon.app import App

log = get_logger("feed")

#: Replay frames published between two yields: small, so the publisher task takes its
#: turn before its buffer fills (a replay at --speed max outruns any publisher).
FEED_YIELD_EVERY = 64


async def run_feed_mode(app: App) -> int:
    if is_nats_url(app.args.feed):
        raise ConfigError(f"invalid setting feed: --mode feed publishes venues or recordings "
                          f"on NATS; it does not take {app.args.feed!r}")
    if not app.bridge.joined:  # start_bridge joins every feed process; this says why not
        raise ConfigError("invalid setting nats.url: --mode feed needs a NATS server")
    app.replay_yield_every = FEED_YIELD_EVERY
    log.info("feed_publishing", venues=app.settings.enabled_venues(),
             symbols=app.settings.symbols, feed=app.args.feed, process=app.bridge.name)
    try:
        await app.market_data()
    finally:
        log.info("feed_stopped", bus=app.bus.counters(),
                 nats={metric.name: metric.read() for metric in app.bridge.metrics()})
    return 0
