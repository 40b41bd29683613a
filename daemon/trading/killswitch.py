"""The kill switch: one latch that stops all trading for the rest of the run.

It fires on the daily loss limit (the gated executor calls `fire`), on SIGUSR1
(`install_signal_handler`), or when the flag file `RiskSettings.kill_switch_file`
appears (`poll` on the feed clock, or the `watch` task on the wall clock). Firing is
idempotent: the first reason wins and is logged at error level; every handler registered
with `on_fire` then runs once (the gated executor cancels all orders and optionally
flattens; the runner tells strategies `on_kill`). The runner checks `active` before
asking strategies for quotes; the gate refuses intents with "kill switch: <why>".

It never re-arms by itself: restart the daemon (after removing the flag file) to trade
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path

from config.settings import RiskSettings
from daemon.core.clock import NS_PER_SECOND
from daemon.core.clock import now_ns as wall_clock_ns
from daemon.core.logs import get_logger

log = get_logger("killswitch")

KillHandler = Callable[[str, int], None]  # (why, now_ns)


class KillSwitch:
    def __init__(
        self,
        risk: RiskSettings | None = None,
        *,
        clock: Callable[[], int] = wall_clock_ns,
        poll_interval_s: float = 1.0,
    ) -> None:
        risk = risk or RiskSettings()
        self.flag_file: Path | None = risk.kill_switch_file
        self.flatten = risk.flatten_on_kill
        self._clock = clock
        self._poll_interval_ns = int(poll_interval_s * NS_PER_SECOND)
        self._next_poll_ns = -1
        self._handlers: list[KillHandler] = []
        self._signal_loop: asyncio.AbstractEventLoop | None = None
        self.active = False
        self.reason = ""
        self.fired_at_ns = 0

    def on_fire(self, handler: KillHandler) -> None:
        """Run `handler(why, now_ns)` when the switch fires (at once if it already has)."""
        self._handlers.append(handler)
        if self.active:
            self._run(handler)

    def fire(self, why: str, now_ns: int | None = None) -> bool:
        """Trip the switch; True if this call tripped it, False if it already was."""
        if self.active:
            return False
        self.active = True
        self.reason = why
        self.fired_at_ns = self._clock() if now_ns is None else now_ns
        log.error("kill switch fired: cancelling all orders, quoting stopped", reason=why,
                  flatten=self.flatten)
        for handler in self._handlers:
            self._run(handler)
        return True

    def _run(self, handler: KillHandler) -> None:
        # One failing handler must not keep the others (cancel all!) from running.
        try:
            handler(self.reason, self.fired_at_ns)
        except Exception:
            log.exception("kill switch handler failed", handler=getattr(handler, "__qualname__",
                                                                         repr(handler)))

    # --- flag file ------------------------------------------------------------------------

    def poll(self, now_ns: int) -> bool:
        """Check the flag file at most once per poll interval of the given clock."""
        if self.active or self.flag_file is None or now_ns < self._next_poll_ns:
            return self.active
        self._next_poll_ns = now_ns + self._poll_interval_ns
        return self.check_flag_file(now_ns)

    @property
    def next_poll_ns(self) -> int | None:
        """Feed time from which `poll` next looks at the flag file; None when it never will
        (no flag file, or the switch has fired)."""
        if self.active or self.flag_file is None:
            return None
        return self._next_poll_ns

    def check_flag_file(self, now_ns: int | None = None) -> bool:
        if not self.active and self.flag_file is not None and self.flag_file.exists():
            self.fire(f"flag file {self.flag_file} present", now_ns)
        return self.active

    async def watch(self, interval_s: float | None = None) -> None:
        """Live mode: poll the flag file on the wall clock until fired (or cancelled)."""
        interval = interval_s if interval_s is not None else self._poll_interval_ns / NS_PER_SECOND
        while not self.check_flag_file():
            await asyncio.sleep(interval)

    # --- SIGUSR1 ----------------------------------------------------------------------------

    def install_signal_handler(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Fire on SIGUSR1. False where the platform has no SIGUSR1 (Windows)."""
        sigusr1 = getattr(signal, "SIGUSR1", None)
        if sigusr1 is None:
            return False
        loop = loop or asyncio.get_running_loop()
        try:
            loop.add_signal_handler(sigusr1, self.fire, "SIGUSR1 received")
        except (NotImplementedError, RuntimeError):
            return False
        self._signal_loop = loop
        return True

    def remove_signal_handler(self) -> None:
        if self._signal_loop is not None and hasattr(signal, "SIGUSR1"):
            with contextlib.suppress(Exception):
                self._signal_loop.remove_signal_handler(signal.SIGUSR1)
            self._signal_loop = None

    def __repr__(self) -> str:
        state = f"active: {self.reason}" if self.active else "armed"
        return f"KillSwitch({state})"
