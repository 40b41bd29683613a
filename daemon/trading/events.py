"""Event delivery shared by every executor, and the small async facade built on it.

Executors report through `_emit_ack` / `_emit_fill`: the installed `ExecutionListener`
hears everything first (the runner's path), then any awaiting caller:

    ack = await executor.submit_and_wait(intent)      # the order's first ack
    async for fill in executor.fills():                # every fill from now on
        ...

Acks of one order, in order: `NEW` (accepted; `REJECTED` instead when refused), then
fills, then one terminal ack when it leaves the book: `FILLED`, `CANCELED`, or `EXPIRED`
(an IOC or market remainder). A cancel that cannot be done answers with the order's
current status and a reason starting "cancel rejected:". `submit_and_wait` returns the
first ack, so it never waits for fills.

On paper the ack comes when the feed clock passes submit time + latency, so someone must
keep driving the clock (the runner's feed loop, or `advance`) while a caller awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from daemon.core.model import Fill, OrderAck, OrderIntent
from daemon.trading.executor import ExecutionListener


class FillStream(AsyncIterator[Fill]):
    """Fills delivered after the stream was opened; unbounded (fills are rare events)."""

    def __init__(self, owner: ExecutionEvents) -> None:
        self._owner = owner
        self._queue: asyncio.Queue[Fill] = asyncio.Queue()
        owner._fill_queues.append(self._queue)

    def __aiter__(self) -> FillStream:
        return self

    async def __anext__(self) -> Fill:
        return await self._queue.get()

    def get_nowait(self) -> Fill | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        if self._queue in self._owner._fill_queues:
            self._owner._fill_queues.remove(self._queue)

    def __enter__(self) -> FillStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ExecutionEvents:
    """Listener fan-out plus `submit_and_wait` / `fills`; executors inherit it."""

    listener: ExecutionListener | None

    def __init__(self, listener: ExecutionListener | None = None) -> None:
        self.listener = listener
        self._ack_waiters: dict[str, list[asyncio.Future[OrderAck]]] = {}
        self._fill_queues: list[asyncio.Queue[Fill]] = []

    # Subclasses provide these (the Executor protocol).
    def submit(self, intent: OrderIntent, now_ns: int) -> object:
        raise NotImplementedError

    def assign_client_order_id(self, intent: OrderIntent) -> str:
        raise NotImplementedError

    @property
    def now_ns(self) -> int:
        raise NotImplementedError

    # --- delivery -------------------------------------------------------------------------

    def _emit_ack(self, ack: OrderAck) -> None:
        if self.listener is not None:
            self.listener.on_ack(ack)
        if self._ack_waiters:
            for waiter in self._ack_waiters.pop(ack.client_order_id, ()):
                if not waiter.done():
                    waiter.set_result(ack)

    def _emit_fill(self, fill: Fill) -> None:
        if self.listener is not None:
            self.listener.on_fill(fill)
        for queue in self._fill_queues:
            queue.put_nowait(fill)

    # --- async facade ---------------------------------------------------------------------

    async def submit_and_wait(
        self, intent: OrderIntent, now_ns: int | None = None, timeout_s: float | None = None
    ) -> OrderAck:
        """Submit and return the order's first ack (NEW or REJECTED)."""
        client_order_id = self.assign_client_order_id(intent)
        waiter: asyncio.Future[OrderAck] = asyncio.get_running_loop().create_future()
        self._ack_waiters.setdefault(client_order_id, []).append(waiter)
        try:
            self.submit(intent, self.now_ns if now_ns is None else now_ns)
            async with asyncio.timeout(timeout_s):  # wait_for can swallow a cancel on 3.11
                return await waiter
        finally:
            waiting = self._ack_waiters.get(client_order_id)
            if waiting and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._ack_waiters[client_order_id]

    def fills(self) -> FillStream:
        """An async iterator over fills from now on; `close()` it (or use `with`) when done."""
        return FillStream(self)
