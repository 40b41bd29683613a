"""`App`: what every mode gets — settings, the bus with its ring buffer, health, trading
counters, the decision log, and the market-data feed chosen by `--feed`.

The process around it (signals, `--duration`, the operations servers, the clean stop) is
daemon/run.py. Start-up and crash recovery are one path: the ring snapshot is reloaded
(`start_rings`) before any consumer starts.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import Settings
from daemon.bridge.process import Bridge
from daemon.core.clock import now_ns
from daemon.core.logs import get_logger
from daemon.core.routes import Callbacks
from daemon.core.tasks import spawn
from daemon.market.bus import Bus
from daemon.market.ringbuffer import RingStore, snapshot_every
from daemon.market.synthetic import SyntheticQuotes, attach_synthetics
from daemon.ops.health import Health, HealthReport
from daemon.ops.metrics import TradingStats
from daemon.postmortem.writer import DecisionLogWriter
from daemon.trading.killswitch import KillSwitch

log = get_logger("app")


@dataclass
class App:
    """What every mode gets: settings, the bus with its ring buffer, and the feed to run."""

    settings: Settings
    args: argparse.Namespace
    run_id: str
    bus: Bus = field(default_factory=Bus)
    rings: RingStore | None = None
    #: The configured synthetic markets on the bus (`start_rings` attaches them).
    synthetics: SyntheticQuotes | None = None
    #: Replay frames published between two yields to the event loop. A live socket yields
    #: on every frame; strategy modes set 1 so a paced replay conflates no more than live
    #: traffic would (and one at max speed, in step with the strategy, still lets the
    #: decision-log writer and signals in). Viewers keep a large batch: they only need the
    #: latest state.
    replay_yield_every: int = 2048
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    #: Behind /healthz: required feeds and the kill switch (trip it via health.trip_kill_switch).
    health: Health = field(default_factory=Health)
    #: Decision/order/fill/P&L counters for /metrics (daemon/ops/metrics.py says how to feed them).
    trading: TradingStats = field(default_factory=TradingStats)
    #: The decision log writer of a strategy mode (its counters go to /metrics).
    decision_log: DecisionLogWriter | None = None
    #: This process's NATS connection and the parts running on it (daemon/bridge); not
    #: joined unless given a NATS address (`--bus-publish`, `--feed nats://`).
    bridge: Bridge = field(default_factory=Bridge)
    #: The trading kill switch of a strategy mode (action sets it): `kill` trips it.
    kill_switch: KillSwitch | None = None

    @property
    def replaying(self) -> bool:
        """Market data comes from recordings (`--feed sample|replay:...`) or another
        process (`--feed nats://`): the feed's clock is the data's receive time, not the
        wall clock (daemon/bridge/market_in.py says why for NATS)."""
        return getattr(self.args, "feed", "live") != "live"

    @property
    def ring_dir(self) -> Path:
        return self.settings.data_dir / "ring"

    def attach_decision_log(self, writer: DecisionLogWriter) -> None:
        """The strategy mode's decision log: its counters to /metrics, its write failures
        to /healthz."""
        self.decision_log = writer
        self.health.decision_log_failing = lambda: writer.failing
        if self.bridge.joined and self.settings.nats.ship_decision_log:
            self.bridge.ship_decision_log(writer, self.settings.nats)  # dlog.<run_id>.<kind>

    def health_report(self) -> HealthReport:
        """What /healthz answers now (heartbeats on the bus carry its summary)."""
        return self.health.evaluate(self.bus.view, replaying=self.replaying)

    def kill(self, why: str) -> tuple[bool, bool]:
        """Trip the kill switch (an operator's request, e.g. `ctl.<process>.kill`): the
        trading one when a strategy runs here, else /healthz's. Returns (tripped now, a
        trading kill switch was tripped)."""
        if self.kill_switch is not None:
            return self.kill_switch.fire(why), True
        tripped = self.health.kill_switch_reason is None
        self.health.trip_kill_switch(why)
        return tripped, False

    def start_rings(self, *, warm: bool = True) -> RingStore:
        """Reload the last snapshot (dropping rows past retention) and attach to the bus.

        `warm=False`: a fresh store that neither reads nor writes the snapshot, as a
        backtest's (a strategy on a replay: its history is the recording's; a live
        snapshot newer than the recording would clamp every replayed row to its own last
        time, and the replay's rows must not become the next live start's history).

        The configured synthetic markets (`synthetic.crosses`) are published from here on
        (watch, action); a backtest attaches them to its own bus."""
        settings = self.settings
        self.synthetics = attach_synthetics(self.bus, settings)
        if not warm:
            rings = RingStore(retention_s=settings.retention,
                              max_rate_hz=settings.ring.max_rate_hz)
            self.bus.add_sink(rings)
            return rings
        self.rings = RingStore.load(
            self.ring_dir, retention_s=settings.retention, now_ns=now_ns(),
            max_rate_hz=settings.ring.max_rate_hz,
        )
        self.bus.add_sink(self.rings)
        self._background.append(spawn(
            snapshot_every(self.rings, self.ring_dir, settings.ring.snapshot_interval_s),
            name="ring-snapshots",
        ))
        return self.rings

    async def stop_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def snapshot_rings(self) -> None:
        """The last snapshot, at stop. A disk that refuses it costs the next start its warm
        history, not the stop: logged in one line, the previous snapshot kept."""
        if self.rings is None:
            return
        try:
            self.rings.snapshot(self.ring_dir)
        except OSError as exc:
            log.error("snapshot_failed", path=str(self.ring_dir), error=repr(exc))

    def warm_up_kernels(self) -> None:
        """Compile or load every numba kernel a strategy uses, before any market data: the
        first call of each would otherwise pay for it (up to seconds with a cold cache)
        inside the first quote's callback."""
        from daemon.market.ringbuffer import warm_up_kernels
        from strategies.kernels_mm import warm_up

        started = time.perf_counter()
        warm_up_kernels()
        warm_up()
        log.info("kernels_ready", seconds=round(time.perf_counter() - started, 3))

    def market_data(self, replay_to: Callbacks | None = None) -> Awaitable[object]:
        """The feed chosen by `--feed`: live adapters, the shipped sample, or recordings.
        `replay_to`: a replay's events go there, which publishes them (daemon/feeds.py)."""
        from daemon.feeds import run_feed

        return run_feed(self.args.feed, self.settings, self.bus, speed=self.args.speed,
                        yield_every=self.replay_yield_every, replay_to=replay_to,
                        nats=self.bridge.client)
