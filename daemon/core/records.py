"""Where the runner sends every record: decisions, intents, acks, fills, balance snapshots.

The post-mortem writer is the durable sink; `MemorySink` keeps records in a list (tests).
"""

from __future__ import annotations

from typing import Protocol

from daemon.core.model import BalanceSnapshot, Decision, Fill, OrderAck, OrderIntent

Record = Decision | OrderIntent | OrderAck | Fill | BalanceSnapshot


class RecordSink(Protocol):
    def record(self, record: Record) -> None: ...


class MemorySink:
    """Keeps every record in order; handy in tests and for small backtests."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def record(self, record: Record) -> None:
        self.records.append(record)

    def of_type(self, kind: type) -> list:
        return [r for r in self.records if isinstance(r, kind)]
