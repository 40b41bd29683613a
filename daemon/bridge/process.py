"""A process's place on the NATS bus, started beside the operations servers (daemon/run.py).

A process joins the bus when it is given a NATS address: `--bus-publish nats://...`
(publish its market data), `--feed nats://...` (take its market data from the bus), or a
mode that lives on the bus (`--mode feed`, `--mode archive`). Joined, it keeps one
connection for all its parts (market publisher, heartbeats, control, decision-log
shipping) and closes them, newest first, when it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from config.settings import Settings
from daemon.core.logs import get_logger

if TYPE_CHECKING:  # nats-py loads only in a process that joins the bus
    from nats.aio.client import Client

    from config.settings import NatsSettings
    from daemon.bridge.dlog_ship import DurableLog

log = get_logger("bridge")

NATS_SCHEMES = ("nats://", "tls://")

#: Modes that exist only on the bus: they join it even without a flag (settings.nats.url).
BUS_MODES = frozenset({"feed", "archive"})


class Joinable(Protocol):
    settings: Settings
    args: argparse.Namespace
    run_id: str


def is_nats_url(value: str | None) -> bool:
    return value is not None and value.startswith(NATS_SCHEMES)


def bridge_url(args: argparse.Namespace, settings: Settings) -> str | None:
    """The server this process talks to, or None when it stays on its own."""
    publish = getattr(args, "bus_publish", None)
    if publish:
        return publish
    feed = getattr(args, "feed", None)
    if is_nats_url(feed):
        return feed
    if getattr(args, "mode", None) in BUS_MODES:
        return settings.nats.url
    return None


def process_name(app: Joinable) -> str:
    """`settings.nats.process_name`, else `<mode>-<strategy or venues>-<pid>`."""
    if app.settings.nats.process_name:
        return app.settings.nats.process_name
    mode = getattr(app.args, "mode", None) or "process"
    what = getattr(app.args, "strategy", None) or "-".join(app.settings.enabled_venues())
    return "-".join(part for part in (mode, what, str(os.getpid())) if part)


@dataclass
class Bridge:
    """The connection and the parts running on it; `aclose` stops parts, then drains."""

    client: Client | None = None
    name: str = ""
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: The parts' counters (heartbeats, decision-log shipping, archiving), for /metrics.
    _counters: list[Callable[[], dict[str, float]]] = field(default_factory=list)

    @property
    def joined(self) -> bool:
        return self.client is not None

    def add_counters(self, counters: Callable[[], dict[str, float]]) -> None:
        self._counters.append(counters)

    def counters(self) -> dict[str, float]:
        """Every part's counters, merged (exported as `cryptopipe_nats_<name>`)."""
        merged: dict[str, float] = {}
        for counters in self._counters:
            merged.update(counters())
        return merged

    def ship_decision_log(self, writer: DurableLog, settings: NatsSettings) -> None:
        """Ship `writer`'s durable records to `dlog.<run_id>.<kind>` until the bridge
        closes (after the writer has: the rest is shipped then)."""
        from daemon.bridge.dlog_ship import DecisionLogShipper

        assert self.client is not None
        shipper = DecisionLogShipper(self.client, writer, settings)
        shipper.start()
        self.on_close(shipper.aclose)
        self.add_counters(shipper.counters)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    async def aclose(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:  # one part failing to stop must not keep the others running
                log.exception("bridge_part_close_failed")
        self._closers.clear()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.drain()


async def start_bridge(app: Joinable) -> Bridge:
    """Join the bus if this process was given a NATS address; else an empty `Bridge`.
    Raises `NatsUnavailable` (exit 2 with its line) when the server cannot be reached."""
    url = bridge_url(app.args, app.settings)
    if url is None:
        return Bridge()
    from daemon.bridge.connection import connect

    name = process_name(app)
    bridge = Bridge(await connect(app.settings.nats, url=url, name=name), name)
    if hasattr(app, "health_report"):  # heartbeats on hb.<name>, kill on ctl.<name>.kill
        from daemon.bridge.control import Control

        assert bridge.client is not None
        control = Control(bridge.client, name, app, app.settings.nats)  # type: ignore[arg-type]
        try:
            await control.start()
        except BaseException:
            await bridge.aclose()
            raise
        bridge.on_close(control.aclose)
        bridge.add_counters(control.counters)
    return bridge
