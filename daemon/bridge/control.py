"""Health and control on the bus: every process heartbeats on `hb.<process>` and answers
`ctl.<process>.kill`.

Heartbeat (every `nats.heartbeat_interval_s`, core NATS, one small JSON object):

    {"process": "action-inventory-mm-4242", "run_id": "...", "mode": "action",
     "strategy": "inventory-mm", "uptime_s": 12.5, "status": "ok",
     "feeds": {"ok": 2, "stale": 0, "missing": 0}, "kill_switch": null, "reasons": []}

`status`, `feeds`, `kill_switch` and `reasons` are /healthz's (daemon/ops/health.py), cut
to a few reasons.

Kill (request/reply): the request is JSON `{"token": "...", "reason": "..."}`; the token
must equal `nats.control_token` (compared in constant time; unset: every request is
refused). A good one trips the kill switch: the trading one in a strategy process
(`App.kill_switch`: orders cancelled, quoting stopped, /healthz 503), else /healthz's (a
feed or archive process reports unhealthy). The reply says what happened:

    {"ok": true, "process": "...", "tripped": true, "kill_switch": "operator ...",
     "trading": true}
    {"ok": false, "process": "...", "error": "refused: bad token"}

A refusal is logged with the reason, never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from config.settings import NatsSettings
from daemon.bridge.dlog_ship import subject_token
from daemon.core.logs import get_logger
from daemon.core.tasks import spawn

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = get_logger("control")

#: Reasons a heartbeat carries at most (it stays small; /healthz has them all).
MAX_REASONS = 5


class Report(Protocol):
    status: str
    reasons: list[str]
    kill_switch: str | None
    feeds: dict[str, dict[str, Any]]


class Controlled(Protocol):
    """What control reads of the app (daemon.app.App), without importing it."""

    run_id: str
    args: Any
    replaying: bool

    def health_report(self) -> Report: ...

    def kill(self, why: str) -> tuple[bool, bool]: ...


def heartbeat_subject(name: str) -> str:
    return f"hb.{subject_token(name)}"


def kill_subject(name: str) -> str:
    return f"ctl.{subject_token(name)}.kill"


class Control:
    """Heartbeats and the kill endpoint of one process."""

    def __init__(self, client: Client, name: str, app: Controlled,
                 settings: NatsSettings) -> None:
        self._client = client
        self.name = name
        self._app = app
        self._settings = settings
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self.heartbeats = 0
        self.heartbeat_failures = 0
        self.kills_accepted = 0
        self.kills_refused = 0

    async def start(self) -> None:
        self._subscription = await self._client.subscribe(kill_subject(self.name),
                                                          cb=self._on_kill)
        self._task = spawn(self._beat(), name=f"heartbeat:{self.name}")
        log.info("control_ready", heartbeat=heartbeat_subject(self.name),
                 kill=kill_subject(self.name),
                 kill_enabled=self._settings.control_token is not None)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    def counters(self) -> dict[str, float]:
        return {"heartbeats": self.heartbeats, "heartbeat_failures": self.heartbeat_failures,
                "kill_requests_accepted": self.kills_accepted,
                "kill_requests_refused": self.kills_refused}

    def heartbeat(self) -> dict[str, Any]:
        app, report = self._app, self._app.health_report()
        counts = {"ok": 0, "stale": 0, "missing": 0}
        for feed in report.feeds.values():
            status = feed.get("status", "missing")
            counts[status] = counts.get(status, 0) + 1
        return {"process": self.name, "run_id": app.run_id,
                "mode": getattr(app.args, "mode", None),
                "strategy": getattr(app.args, "strategy", None),
                "uptime_s": round(time.monotonic() - self._started, 3),
                "status": report.status, "feeds": counts, "kill_switch": report.kill_switch,
                "reasons": report.reasons[:MAX_REASONS]}

    async def _beat(self) -> None:
        subject = heartbeat_subject(self.name)
        while True:
            try:
                await self._client.publish(subject, orjson.dumps(self.heartbeat()))
                self.heartbeats += 1
            except Exception as exc:  # a missed beat is what a watcher sees
                self.heartbeat_failures += 1
                if self.heartbeat_failures == 1:
                    log.warning("heartbeat_failed", error=type(exc).__name__)
            await asyncio.sleep(self._settings.heartbeat_interval_s)

    async def _on_kill(self, message: Msg) -> None:
        answer = self.answer_kill(message.data)
        if message.reply:
            with contextlib.suppress(Exception):
                await message.respond(orjson.dumps(answer))

    def answer_kill(self, payload: bytes) -> dict[str, Any]:
        """Check the request's token, trip the kill switch, say what happened."""
        try:
            request = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            return self._refuse("refused: the request is not a JSON object")
        expected = self._settings.control_token
        if expected is None:
            return self._refuse("refused: control is off here (nats.control_token unset)")
        token = request.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), expected.get_secret_value().encode()):
            return self._refuse("refused: bad token")
        reason = str(request.get("reason") or "no reason given")[:200]
        why = f"operator kill via {kill_subject(self.name)}: {reason}"
        tripped, trading = self._app.kill(why)
        self.kills_accepted += 1
        state = self._app.health_report().kill_switch
        log.error("kill_requested_on_bus", process=self.name, reason=reason, tripped=tripped,
                  trading=trading)
        return {"ok": True, "process": self.name, "tripped": tripped, "kill_switch": state,
                "trading": trading}

    def _refuse(self, error: str) -> dict[str, Any]:
        self.kills_refused += 1
        log.warning("kill_request_refused", process=self.name, error=error)
        return {"ok": False, "process": self.name, "error": error}
