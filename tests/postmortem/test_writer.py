"""Decision log writer: schema, crash safety (SIGKILL), torn tails, back-pressure, determinism."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from daemon.core.model import (
    BalanceSnapshot,
    Decision,
    Fill,
    OrderAck,
    OrderIntent,
    OrderType,
    Side,
)
from daemon.core.vocabulary import OrderStatus
from daemon.postmortem.writer import DecisionLogWriter

REPO = Path(__file__).resolve().parents[2]
DAY_NS = 1_723_161_253_000_000_000  # 2024-08-08T23:54:13Z
LOG_DAY = "2024-08-08"


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Tests that ran `main()` leave structlog writing to a stream pytest has closed."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def numbered_fill(i: int) -> Fill:
    """Record number i carries i in qty and in its trade id, so order and loss are visible."""
    return Fill(f"c{i}", "binance_spot", "BTC/USDT", Side.BUY, 60_000.0, float(i), 0.0,
                "USDT", "maker", DAY_NS + i, "inventory_mm", f"t{i}")


def read_lines(path: Path) -> tuple[list[dict], int]:
    """Independent reader: parsed records and the number of lines that do not parse."""
    records, corrupt = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            corrupt += 1
    return records, corrupt


def log_path(data_dir: Path, run_id: str, day: str = LOG_DAY) -> Path:
    return data_dir / "decisions" / day / f"{run_id}.jsonl"


def test_every_record_type_is_written_with_envelope_and_schema(tmp_path: Path) -> None:
    intent = OrderIntent("binance_spot", "BTC/USDT", Side.SELL, OrderType.POST_ONLY, 0.5,
                         60_010.0, "mm-1", "inventory_mm", "ask")
    decision = Decision("inventory_mm", DAY_NS, "quote", "requote",
                        {"mid": 60_000.0, "inventory": 0.1}, 1.5, [intent], ["mm-0"])
    records = [
        decision,
        intent,
        OrderAck("mm-1", "binance_spot", "BTC/USDT", OrderStatus.NEW, DAY_NS + 5, "x1"),
        numbered_fill(7),
        BalanceSnapshot("binance_spot", DAY_NS + 9, {"BTC": 1.0, "USDT": 10.0}, "inventory_mm"),
    ]
    with DecisionLogWriter(tmp_path, "run-a", synchronous=True) as writer:
        for record in records:
            writer.record(record)
    written, corrupt = read_lines(log_path(tmp_path, "run-a"))
    assert corrupt == 0
    assert [r["type"] for r in written] == ["decision", "intent", "ack", "fill", "balance"]
    assert all(r["v"] == 1 and r["run_id"] == "run-a" for r in written)
    # An intent has no time of its own: it takes its decision's.
    assert [r["ts_ns"] for r in written] == [DAY_NS, DAY_NS, DAY_NS + 5, DAY_NS + 7, DAY_NS + 9]
    assert written[0]["intents"][0]["order_type"] == "post_only"
    assert written[0]["inputs"] == {"mid": 60_000.0, "inventory": 0.1}
    assert written[0]["cancels"] == ["mm-0"]
    assert written[1]["order_type"] == "post_only" and written[1]["side"] == "sell"
    assert written[2]["status"] == "new"
    assert written[3]["qty"] == 7.0 and written[3]["liquidity"] == "maker"
    assert written[4]["balances"] == {"BTC": 1.0, "USDT": 10.0}


def test_records_go_to_the_utc_day_of_their_time(tmp_path: Path) -> None:
    next_day = DAY_NS + 600 * 10**9  # 00:04:13 on 2024-08-09
    with DecisionLogWriter(tmp_path, "run-b", synchronous=True) as writer:
        writer.record(numbered_fill(1))
        writer.record(Decision("arbitrage", next_day, "skip", "no edge"))
        writer.record(numbered_fill(2))  # late: stays in the newest day's file
    assert len(read_lines(log_path(tmp_path, "run-b"))[0]) == 1
    assert len(read_lines(log_path(tmp_path, "run-b", "2024-08-09"))[0]) == 2


def test_same_records_give_byte_identical_logs(tmp_path: Path) -> None:
    def write(data_dir: Path) -> bytes:
        with DecisionLogWriter(data_dir, "det", synchronous=True, queue_size=7) as writer:
            for i in range(100):
                writer.record(numbered_fill(i))
                writer.record(Decision("inventory_mm", DAY_NS + i, "quote", "r",
                                       {"mid": 1.0 + i / 3, "nan": float("nan")}))
        return log_path(data_dir, "det").read_bytes()

    assert write(tmp_path / "one") == write(tmp_path / "two")


def test_a_run_id_that_is_not_a_file_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run id"):
        DecisionLogWriter(tmp_path, "../escape")


def test_recording_after_close_is_an_error_not_a_silent_loss(tmp_path: Path) -> None:
    writer = DecisionLogWriter(tmp_path, "closed", synchronous=True)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.record(numbered_fill(1))


CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from daemon.core.logs import configure_logging
    from daemon.core.model import Fill, Side
    from daemon.postmortem.writer import DecisionLogWriter

    async def main(data_dir):
        configure_logging("crash", "warning", "json")  # logs to stderr: stdout is the pipe
        writer = DecisionLogWriter(Path(data_dir), "crash", flush_interval_ms=5)
        await writer.start()
        reported, i = -1, 0
        while True:
            writer.record(Fill(f"c{i}", "binance_spot", "BTC/USDT", Side.BUY, 60000.0,
                               float(i), 0.0, "USDT", "maker", {day_ns} + i, "mm", f"t{i}"))
            i += 1
            if i % 20 == 0:
                await asyncio.sleep(0)  # the writer task runs between events, as live
                if writer.durable_records != reported:
                    reported = writer.durable_records
                    print(reported, flush=True)

    asyncio.run(main(sys.argv[1]))
""").replace("{day_ns}", str(DAY_NS))


def _run_child_until_durable(data_dir: Path, at_least: int) -> int:
    """Start a writer process, read its fsync'd count from a pipe, SIGKILL it mid-stream."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    durable = 0
    deadline = time.monotonic() + 60
    try:
        assert child.stdout is not None
        while durable < at_least and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            durable = int(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert durable >= at_least, "the child never reported enough durable records"
    return durable


def test_sigkill_loses_nothing_that_was_fsynced_and_next_run_survives_a_torn_tail(
    tmp_path: Path,
) -> None:
    durable = _run_child_until_durable(tmp_path, at_least=5_000)
    path = log_path(tmp_path, "crash")
    records, corrupt = read_lines(path)
    assert corrupt <= 1  # at most the line being written when the kill landed
    # Every record fsync'd before the kill reads back, in order, none missing.
    assert len(records) >= durable
    assert [r["qty"] for r in records] == [float(i) for i in range(len(records))]

    # Simulate a torn last record (power cut mid-write), then the next run of this run id.
    with open(path, "ab") as handle:
        handle.write(b'{"v":1,"type":"fill","run_id":"crash","ts_ns":17232')
    with DecisionLogWriter(tmp_path, "crash", synchronous=True) as writer:
        for i in range(10):
            writer.record(numbered_fill(1_000_000 + i))
    assert writer.torn_tails_repaired == 1
    after, corrupt_after = read_lines(path)
    assert corrupt_after == corrupt + 1  # only the torn line is lost...
    assert after[: len(records)] == records
    assert [r["qty"] for r in after[len(records):]] == [1_000_000.0 + i for i in range(10)]


async def test_slow_disk_blocks_producers_with_an_alert_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.03)  # a disk far slower than the producer
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writer = DecisionLogWriter(tmp_path, "slow", flush_interval_ms=5, queue_size=64)
    most_queued = 0
    with capture_logs() as logs:
        async with writer:
            for i in range(2_000):
                writer.record(numbered_fill(i))
                most_queued = max(most_queued, writer.queued)
                if i % 10 == 0:
                    await asyncio.sleep(0)
    assert writer.backpressure_blocks > 0
    assert writer.backpressure_blocked_ns > 0
    assert most_queued < 64  # the bound holds: the producer was made to wait
    assert any(entry["event"] == "decision_log_backpressure" for entry in logs)
    records, corrupt = read_lines(log_path(tmp_path, "slow"))
    assert corrupt == 0
    assert [r["qty"] for r in records] == [float(i) for i in range(2_000)]


async def test_wait_room_lets_a_cooperative_producer_yield_instead_of_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.01)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writer = DecisionLogWriter(tmp_path, "polite", flush_interval_ms=5, queue_size=200)
    with capture_logs() as logs:
        async with writer:
            for i in range(3_000):
                await writer.wait_room()
                writer.record(numbered_fill(i))
    assert writer.backpressure_waits > 0
    assert writer.backpressure_blocks == 0  # it never had to be stopped the hard way
    assert any(entry["event"] == "decision_log_backpressure" for entry in logs)
    records, _ = read_lines(log_path(tmp_path, "polite"))
    assert len(records) == 3_000


async def test_a_failing_disk_keeps_records_in_order_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_write = os.write
    failures = {"left": 3, "short": False}

    def flaky_write(fd: int, data: bytes) -> int:
        """A short write, then ENOSPC on the call that follows it, three times over."""
        if failures["left"] > 0 and len(data) > 10:
            if failures["short"]:
                failures["short"] = False
                failures["left"] -= 1
                raise OSError(28, "No space left on device")
            failures["short"] = True
            return real_write(fd, bytes(data[: len(data) // 2]))
        return real_write(fd, data)

    writer = DecisionLogWriter(tmp_path, "flaky", flush_interval_ms=5)
    async with writer:
        monkeypatch.setattr(os, "write", flaky_write)
        for i in range(300):
            writer.record(numbered_fill(i))
            await asyncio.sleep(0.0005)
        deadline = time.monotonic() + 30
        while failures["left"] and writer.queued and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    monkeypatch.setattr(os, "write", real_write)
    assert writer.write_errors >= 1
    records, corrupt = read_lines(log_path(tmp_path, "flaky"))
    assert corrupt == 0
    assert [r["qty"] for r in records] == [float(i) for i in range(300)]


async def test_a_disk_that_refuses_every_write_is_reported_and_nothing_blocks_or_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    from daemon.postmortem.writer import DecisionLogNotDurable

    def disk_full(self: DecisionLogWriter, batch: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    told: list[str] = []
    writer = DecisionLogWriter(tmp_path, "full", flush_interval_ms=5, queue_size=100)
    await writer.start()
    writer.on_not_durable(told.append)
    monkeypatch.setattr(DecisionLogWriter, "_write_all", disk_full)
    for i in range(50):
        writer.record(numbered_fill(i))
    deadline = time.monotonic() + 30
    while writer.failing is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert writer.failing is not None and "No space left" in writer.failing
    assert len(told) == 1
    for i in range(50, 1_000):  # far past queue_size: kept in memory, never raised
        writer.record(numbered_fill(i))
        await writer.wait_room()  # returns: waiting would stall the loop
    assert writer.queued == 1_000 and writer.durable_records == 0
    monkeypatch.undo()  # the disk is back: everything is written, in order
    deadline = time.monotonic() + 30
    # Written (queued 0) comes before durable (the fsync that clears `failing`), in the
    # writer's thread: wait for both, or a slow fsync fails the test.
    while (writer.queued or writer.failing is not None) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert writer.failing is None
    monkeypatch.setattr(DecisionLogWriter, "_write_all", disk_full)
    writer.record(numbered_fill(1_000))
    with pytest.raises(DecisionLogNotDurable) as refused:
        await writer.aclose()
    assert str(refused.value).count("\n") == 0
    assert "1 record(s) could not be written" in str(refused.value)
    assert "No space left on device" in str(refused.value)
    records, corrupt = read_lines(log_path(tmp_path, "full"))
    assert corrupt == 0 and [r["qty"] for r in records] == [float(i) for i in range(1_000)]


def test_end_run_is_the_last_record_and_counts_the_records_before_it(tmp_path: Path) -> None:
    with DecisionLogWriter(tmp_path, "ended", synchronous=True) as writer:
        writer.record(numbered_fill(1))
        writer.record(numbered_fill(2))
        writer.end_run()
    records, _ = read_lines(log_path(tmp_path, "ended"))
    assert records[-1] == {"v": 1, "type": "run_end", "run_id": "ended", "ts_ns": DAY_NS + 2,
                           "status": "stopped", "written": 2}
