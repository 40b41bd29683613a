"""Contracts between the strategy runner and the order gateways (paper and live).

An `Executor` is a non-blocking order gateway, as real venues are: `submit` and `cancel`
return at once and their outcome (ack, reject, fills) arrives later at the
`ExecutionListener` the runner installed. The paper executor answers on the feed's clock
(market events and `advance(now_ns)`), so a backtest on a simulated clock is deterministic
and never sleeps; the live executor answers when the venue does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from daemon.core.model import Fill, OrderAck, OrderIntent, Quote, Trade


class ExecutionListener(Protocol):
    def on_ack(self, ack: OrderAck) -> None: ...

    def on_fill(self, fill: Fill) -> None: ...


class Executor(Protocol):
    """Order gateway. Results of submit/cancel arrive at `listener`, never as return values."""

    listener: ExecutionListener | None

    def submit(self, intent: OrderIntent, now_ns: int) -> str | None:
        """Send the order; a gated executor returns why it refused it instead (else None)."""
        ...

    def cancel(self, client_order_id: str, now_ns: int) -> None: ...

    def cancel_all(self, now_ns: int, venue: str | None = None) -> None: ...

    def balances(self, venue: str) -> Mapping[str, float]: ...

    def open_orders(self) -> list[OrderIntent]: ...

    # Market data and time drive the paper executor (fills, latency); live ignores them.
    def on_quote(self, quote: Quote) -> None: ...

    def on_trade(self, trade: Trade) -> None: ...

    def advance(self, now_ns: int) -> None: ...


class OrderGateway(Executor, Protocol):
    """An Executor that also names its orders and tells its clock (paper, live, gated).

    `assign_client_order_id` gives an intent its deterministic id before submission (so a
    caller can track the order from the start); `now_ns` is the executor's clock: the
    feed clock on paper, the wall clock live.
    """

    @property
    def now_ns(self) -> int: ...

    def assign_client_order_id(self, intent: OrderIntent) -> str: ...
