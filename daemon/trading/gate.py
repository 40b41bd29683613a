"""`GatedExecutor`: the risk gate and the kill switch in front of any executor.

This is the one object a runner talks to. It implements the Executor contract (plus the
async facade) and forwards to the paper or live executor behind it:

- `submit` runs the kill switch and `RiskGate.check` first. A refusal never reaches the
  venue: it is answered with a `REJECTED` ack (reason = the gate's reason), recorded as a
  `Decision` (action "reject") when a sink is given, and returned to the caller.
- Quotes, acks and fills flow through the gate (positions, P&L, open orders). A fill or
  quote that pushes the day's P&L past the limit fires the kill switch; so does the flag
  file (polled on the feed clock) and SIGUSR1 (if installed on the switch).
- When the switch fires: cancel all, refuse every intent with "kill switch: <why>",
  cancel any order whose ack arrives later, and with `flatten_on_kill` send market orders
  that undo the net position traded in each market (straight to the executor: the gate
  would refuse them).
"""

from __future__ import annotations

from collections.abc import Mapping

from daemon.core.logs import get_logger
from daemon.core.model import ClientFill, Fill, OrderAck, OrderIntent, OrderType, Quote, Side, Trade
from daemon.core.quiet import QuietRows
from daemon.core.records import RecordSink
from daemon.core.vocabulary import OrderStatus
from daemon.trading.events import ExecutionEvents
from daemon.trading.executor import OrderGateway
from daemon.trading.killswitch import KillSwitch
from daemon.trading.paper import PaperExecutor
from daemon.trading.risk import RiskGate, rejection_decision

log = get_logger("gate")

KILL_STRATEGY = "killswitch"


class GatedExecutor(ExecutionEvents):
    """An executor behind the risk gate and the kill switch (see the module docstring)."""

    def __init__(
        self,
        executor: OrderGateway,
        gate: RiskGate,
        kill_switch: KillSwitch | None = None,
        sink: RecordSink | None = None,
    ) -> None:
        super().__init__()
        self.executor = executor
        self.gate = gate
        self.kill_switch = kill_switch or KillSwitch(gate.settings,
                                                     clock=lambda: executor.now_ns)
        self.sink = sink
        #: The flatten orders this gate sent after the kill switch fired: the one kind of
        #: order that must not be cancelled when acked while the switch is on.
        self._flatten_ids: set[str] = set()
        executor.listener = self  # acks and fills come back through the gate
        self.kill_switch.on_fire(self._on_kill)

    # --- Executor contract ------------------------------------------------------------------

    @property
    def now_ns(self) -> int:
        return self.executor.now_ns

    def assign_client_order_id(self, intent: OrderIntent) -> str:
        return self.executor.assign_client_order_id(intent)

    def submit(self, intent: OrderIntent, now_ns: int) -> str | None:
        """Check and forward. Returns None when forwarded, else the refusal reason."""
        self.assign_client_order_id(intent)
        if self.kill_switch.active:
            reason: str | None = f"kill switch: {self.kill_switch.reason}"
        else:
            reason = self.gate.check(intent, now_ns)
        if reason is not None:
            self._refuse(intent, reason, now_ns)
            return reason
        self.gate.on_submitted(intent)
        self.executor.submit(intent, now_ns)
        return None

    def cancel(self, client_order_id: str, now_ns: int) -> None:
        self.executor.cancel(client_order_id, now_ns)

    def cancel_all(self, now_ns: int, venue: str | None = None) -> None:
        self.executor.cancel_all(now_ns, venue)

    def balances(self, venue: str) -> Mapping[str, float]:
        return self.executor.balances(venue)

    def open_orders(self) -> list[OrderIntent]:
        return self.executor.open_orders()

    def on_quote(self, quote: Quote) -> None:
        breach = self.gate.on_quote(quote)
        self.executor.on_quote(quote)
        kill_switch = self.kill_switch
        if breach is not None:
            kill_switch.fire(breach, quote.local_ts_ns)
        # Without a flag file `poll` has nothing to do: skip the call on the per-event path.
        if kill_switch.flag_file is not None:
            kill_switch.poll(quote.local_ts_ns)

    def on_trade(self, trade: Trade) -> None:
        self.executor.on_trade(trade)
        if self.kill_switch.flag_file is not None:
            self.kill_switch.poll(trade.local_ts_ns)

    @property
    def quiet_rows(self) -> bool:
        """Whether `first_loud` can tell quiet rows: not with a kill-switch flag file to
        poll at every event, and only in front of paper that can."""
        executor = self.executor
        return (self.kill_switch.flag_file is None and isinstance(executor, PaperExecutor)
                and executor.quiet_rows)

    def first_loud(self, rows: QuietRows, start: int, stop: int) -> int:
        """The first of rows [start, stop) the gate or the executor must see as an event
        (daemon/core/quiet.py); `start` if it cannot tell (`quiet_rows`)."""
        if not self.quiet_rows:
            return start
        stop = self.gate.first_loud(rows, start, stop)
        return self.executor.first_loud(rows, start, stop)  # type: ignore[attr-defined]

    def advance(self, now_ns: int) -> None:
        self.executor.advance(now_ns)
        self.kill_switch.poll(now_ns)

    def on_client_fill(self, fill: ClientFill) -> None:
        """A client trade the desk took: positions and P&L, like a fill of ours."""
        breach = self.gate.on_client_fill(fill)
        if breach is not None:
            self.kill_switch.fire(breach, fill.ts_ns)

    # --- ExecutionListener (events from the executor behind) ----------------------------------

    def on_ack(self, ack: OrderAck) -> None:
        self.gate.on_ack(ack)
        if (ack.status is OrderStatus.NEW and self.kill_switch.active
                and ack.client_order_id not in self._flatten_ids):
            # Submitted before the switch fired, accepted after: it must not stay.
            self.executor.cancel(ack.client_order_id, ack.ts_ns)
        self._emit_ack(ack)

    def on_fill(self, fill: Fill) -> None:
        breach = self.gate.on_fill(fill)
        self._emit_fill(fill)
        if breach is not None:
            self.kill_switch.fire(breach, fill.ts_ns)

    # --- internals --------------------------------------------------------------------------

    def _refuse(self, intent: OrderIntent, reason: str, now_ns: int) -> None:
        log.info("intent refused", strategy=intent.strategy, venue=intent.venue,
                 symbol=intent.symbol, client_order_id=intent.client_order_id, reason=reason)
        if self.sink is not None:
            self.sink.record(rejection_decision(intent, reason, now_ns))
        self._emit_ack(OrderAck(intent.client_order_id, intent.venue, intent.symbol,
                                OrderStatus.REJECTED, now_ns, reason=reason))

    def _on_kill(self, why: str, now_ns: int) -> None:
        self.executor.cancel_all(now_ns)
        if self.kill_switch.flatten:
            self._flatten(why, now_ns)

    def _flatten(self, why: str, now_ns: int) -> None:
        for (venue, symbol), qty in self.gate.market_positions().items():
            intent = OrderIntent(
                venue=venue, symbol=symbol, side=Side.SELL if qty > 0 else Side.BUY,
                type=OrderType.MARKET, qty=abs(qty), strategy=KILL_STRATEGY,
                reason=f"flatten on kill: {why}",
            )
            self._flatten_ids.add(self.assign_client_order_id(intent))
            log.warning("flattening", venue=venue, symbol=symbol, qty=-qty,
                        client_order_id=intent.client_order_id)
            if self.sink is not None:
                self.sink.record(intent)
            self.executor.submit(intent, now_ns)
