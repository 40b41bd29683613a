"""The decision log of a backtest holds a bounded number of bytes, not a number of records
(issue 18, item 2: memory flat in days).

A backtest writes its log synchronously (daemon/postmortem/writer.py), `queue_size`
records at a time (8,192 in the engine): the bytes waiting grew with the size of the
records (8,192 of inventory-mm's ~570-byte records: 4.7 MB; a strategy logging larger
inputs, more). They now go to the file every `SYNCHRONOUS_WRITE_BYTES`, and are still
fsync'd every `queue_size` records, so the file holds the same bytes as before.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from daemon.core.model import Decision
from daemon.postmortem.writer import SYNCHRONOUS_WRITE_BYTES, DecisionLogWriter

DAY_NS = 1_723_075_200_000_000_000  # 2024-08-08T00:00:00Z
MB = 1 << 20


def decision(i: int) -> Decision:
    """A decision of ~1.5 kB, as a quoting strategy logs with its inputs."""
    inputs = {f"level_{k}": 60_000.0 + i + k / 7 for k in range(40)}
    return Decision("inventory_mm", DAY_NS + i, "quote", "requote", inputs)


def test_the_bytes_waiting_are_bounded_whatever_the_queue(tmp_path: Path) -> None:
    with DecisionLogWriter(tmp_path, "bounded", synchronous=True, queue_size=8_192) as writer:
        writer.record(decision(0))
        tracemalloc.start()
        try:
            for i in range(1, 8_000):  # ~12 MB of lines, fewer than a queue's records
                writer.record(decision(i))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < SYNCHRONOUS_WRITE_BYTES + 2 * MB
    lines = (tmp_path / "decisions" / "2024-08-08" / "bounded.jsonl").read_bytes()
    assert lines.count(b"\n") == 8_000
    assert len(lines) > 8 * MB  # so the bound above is not the records' own size


def test_records_are_still_fsynced_every_queue_size(tmp_path: Path) -> None:
    with DecisionLogWriter(tmp_path, "cadence", synchronous=True, queue_size=2_000) as writer:
        for i in range(5_000):
            writer.record(decision(i))
            # Written a few hundred at a time, made durable a queue's records at a time.
            assert i + 1 - writer.durable_records <= 2_000
        assert writer.durable_records < 5_000
    assert writer.durable_records == 5_000
