"""Is the daemon fit to trade? The state behind `/healthz`, held by the app, set by others.

Four things make the daemon unhealthy:

- a **required feed is stale**: an enabled venue/symbol whose latest quote is flagged stale
  by the adapter's watchdog, is older than the venue's `stale_after_s`, or has not arrived
  at all for longer than that since start (a feed that never connects is as bad as one
  that stopped);
- the **kill switch is on**: whoever trips it (risk gate, action layer, operator) calls
  `trip_kill_switch(reason)`; it stays on until `clear_kill_switch()`;
- a **task died**: a background task of the daemon ended with an exception (`tasks`, the
  process's `daemon.core.tasks.TaskWatch`, names it);
- the **decision log is not durable**: the disk refuses its writes (`decision_log_failing`,
  set by `App.attach_decision_log`).

**Degraded** is softer: the daemon runs and its feeds are fresh, but a component works below
its capability for a while and an operator should look (an arbitrage halted after an unwind
it could not complete, which resumes by itself after its cooldown). Whoever can be degraded
registers a probe with `watch_degraded(name, probe)`; a probe answers why, or None. While
any probe answers, `/healthz` says `"status": "degraded"` with the reasons under
`"degraded"`, still HTTP 200 unless something above makes it unhealthy (503): degraded is
an alert, not a reason to restart the process.

Live, the required feeds are the configured ones (`Settings.enabled_venues()` x
`symbols_for(venue)`) and ages are measured on the wall clock. In a replay the recording
decides which feeds exist, so every feed seen so far is required, and ages are measured on
the feed's own clock (the newest receive time in the view): a recording from 2024 is not
stale just because it is old.

Nothing here runs on the hot path: the view is read only when someone asks (a scrape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.core.clock import now_ns
from daemon.core.tasks import TaskWatch
from daemon.market.view import ConsolidatedView

if TYPE_CHECKING:
    from config.settings import Settings

Key = tuple[str, str]

#: Stale-after for feeds seen in a replay whose venue has no settings of its own.
DEFAULT_STALE_AFTER_S = 10.0


@dataclass(frozen=True)
class HealthReport:
    """The answer to "healthy?": the verdict, why not, and what each feed looks like."""

    healthy: bool
    reasons: list[str]
    kill_switch: str | None
    feeds: dict[str, dict[str, Any]]
    #: Why something runs below its capability (healthy may still be True): see the doc.
    degraded: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """"unhealthy" (503), "degraded" (200, an operator should look) or "ok"."""
        if not self.healthy:
            return "unhealthy"
        return "degraded" if self.degraded else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reasons": self.reasons,
            "degraded": self.degraded,
            "kill_switch": self.kill_switch,
            "feeds": self.feeds,
        }


@dataclass
class Health:
    """Operational state that components set and `/healthz` reports."""

    #: (venue, symbol) -> stale_after_s for the feeds the daemon cannot do without (live).
    required_feeds: dict[Key, float] = field(default_factory=dict)
    #: Stale-after per venue, used for feeds that show up in a replay.
    stale_after_by_venue: dict[str, float] = field(default_factory=dict)
    kill_switch_reason: str | None = None
    started_ns: int = field(default_factory=now_ns)
    #: Tasks that died (every `spawn` of the process reports here: daemon/run.py).
    tasks: TaskWatch = field(default_factory=TaskWatch)
    #: Why the decision log is not durable (its last write error), None while it is.
    decision_log_failing: Callable[[], str | None] = lambda: None
    #: name -> probe answering why that component is degraded, or None (`watch_degraded`).
    degraded_probes: dict[str, Callable[[], str | None]] = field(default_factory=dict)

    def watch_degraded(self, name: str, probe: Callable[[], str | None]) -> None:
        """Ask `probe` on every evaluation; while it answers, /healthz reports degraded."""
        self.degraded_probes[name] = probe

    def degraded_reasons(self) -> list[str]:
        """`<name>: <why>` for every probe that answers now."""
        reasons = []
        for name, probe in sorted(self.degraded_probes.items()):
            why = probe()
            if why:
                reasons.append(f"{name}: {why}")
        return reasons

    def require_configured_feeds(self, settings: Settings) -> None:
        """Every enabled venue x each of its symbols must stay fresh."""
        self.stale_after_by_venue = {
            venue_id: venue.stale_after_s for venue_id, venue in settings.venues.items()
        }
        self.required_feeds = {
            (venue_id, symbol): settings.venues[venue_id].stale_after_s
            for venue_id in settings.enabled_venues()
            for symbol in settings.symbols_for(venue_id)
        }

    def trip_kill_switch(self, reason: str) -> None:
        if self.kill_switch_reason is None:  # the first reason is the one worth reading
            self.kill_switch_reason = reason

    def clear_kill_switch(self) -> None:
        self.kill_switch_reason = None

    def evaluate(
        self,
        view: ConsolidatedView,
        replaying: bool = False,
        clock: Callable[[], int] = now_ns,
        *,
        every_configured_feed: bool = False,
    ) -> HealthReport:
        """Check every required feed against the view, the kill switch, and what is degraded.

        `replaying`: ages are on the feed's clock and only the markets seen are required
        (a recording has what it has), unless `every_configured_feed` (market data from
        another process, which may never send a configured market). A market with no quote
        at all is waited for on the wall clock."""
        if replaying:
            # The feed's clock: the newest receive time of any quote seen.
            now = max((q.local_ts_ns for q in view.all_quotes()), default=0)
            required = {
                q.key: self.stale_after_by_venue.get(q.exchange, DEFAULT_STALE_AFTER_S)
                for q in view.all_quotes()
            }
            if every_configured_feed:
                required = {**self.required_feeds, **required}
        else:
            now = clock()
            required = self.required_feeds
        reasons: list[str] = []
        feeds: dict[str, dict[str, Any]] = {}
        for (venue, symbol), stale_after_s in sorted(required.items()):
            name = f"{venue} {symbol}"
            quote = view.quote(venue, symbol)
            if quote is None:
                waited_s = (clock() - self.started_ns) / 1e9
                feeds[name] = {"status": "missing", "stale_after_s": stale_after_s}
                if waited_s > stale_after_s:
                    reasons.append(f"{name}: no quote after {waited_s:.1f} s")
                continue
            age_s = max(0.0, (now - quote.local_ts_ns) / 1e9)
            status = "ok"
            if quote.stale:
                status = "stale"
                reasons.append(f"{name}: flagged stale by the feed watchdog")
            elif age_s > stale_after_s:
                status = "stale"
                reasons.append(f"{name}: last quote {age_s:.1f} s old (> {stale_after_s:g} s)")
            feeds[name] = {"status": status, "age_s": round(age_s, 3),
                           "stale_after_s": stale_after_s}
        reasons.extend(self.tasks.reasons())
        log_failure = self.decision_log_failing()
        if log_failure is not None:
            reasons.append(f"decision log not durable: {log_failure}")
        if self.kill_switch_reason is not None:
            reasons.append(f"kill switch on: {self.kill_switch_reason}")
        return HealthReport(not reasons, reasons, self.kill_switch_reason, feeds,
                            self.degraded_reasons())
