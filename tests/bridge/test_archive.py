"""The archiver against a real server: records land where their offsets say, byte for
byte; a redelivery, a resend or a record that comes early never writes a line twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson

from config.settings import NatsSettings
from daemon.bridge.archive import Archiver
from daemon.bridge.connection import connect
from daemon.bridge.dlog_ship import STREAM, dlog_headers, ensure_dlog_stream, subject_token


def _line(kind: str, n: int) -> bytes:
    return orjson.dumps({"v": 1, "type": kind, "run_id": "r1", "ts_ns": n, "n": n}) + b"\n"


async def _publish(js, run_id: str, day: str, offset: int, line: bytes, *, msg_id: str = ""):
    headers = dlog_headers(run_id, day, offset)
    if msg_id:  # a resend the server cannot recognise (e.g. after its duplicate window)
        headers["Nats-Msg-Id"] = msg_id
    await js.publish(f"dlog.{subject_token(run_id)}.x", line, stream=STREAM, headers=headers)


async def _run(archiver: Archiver):
    task = asyncio.create_task(archiver.run())
    await asyncio.sleep(0)
    return task


async def _stop(archiver: Archiver, task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await archiver.aclose()


async def _until(condition, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_records_are_placed_by_offset_once_each(nats_server, tmp_path: Path):
    settings = NatsSettings(url=nats_server.url)
    client = await connect(settings, name="t")
    js = client.jetstream()
    await ensure_dlog_stream(js, settings)
    lines = [_line("decision", 1), _line("intent", 2), _line("fill", 3)]
    offsets = [0, len(lines[0]), len(lines[0]) + len(lines[1])]
    archiver = Archiver(client, settings, tmp_path / "archive", batch=10)
    task = await _run(archiver)
    try:
        await _publish(js, "r1", "2024-08-08", offsets[0], lines[0])
        await _publish(js, "r1", "2024-08-08", offsets[2], lines[2])  # early: 2 is missing
        await _publish(js, "r1", "2024-08-08", offsets[0], lines[0], msg_id="late-resend")
        await _publish(js, "r1", "2024-08-08", offsets[1], lines[1])
        await _until(lambda: archiver.stats.archived_records == 3)
        await _publish(js, "r1", "2024-08-08", offsets[1], lines[1], msg_id="another-resend")
        await _until(lambda: archiver.stats.duplicates == 2)
    finally:
        await _stop(archiver, task)
        await client.close()
    archived = tmp_path / "archive" / "decisions" / "2024-08-08" / "r1.jsonl"
    assert archived.read_bytes() == b"".join(lines)
    assert archiver.stats.out_of_order >= 1
    assert archiver.runs == {"r1"}


async def test_a_crash_between_write_and_ack_costs_nothing_and_duplicates_nothing(
        nats_server, tmp_path: Path, monkeypatch):
    """The first archiver writes and fsyncs but dies before acking: the server offers the
    records again to the restarted one, which finds them already there."""
    from nats.aio.msg import Msg

    settings = NatsSettings(url=nats_server.url)
    publisher = await connect(settings, name="p")
    js = publisher.jetstream()
    await ensure_dlog_stream(js, settings)
    lines = [_line("decision", n) for n in range(5)]
    offset = 0
    for line in lines:
        await _publish(js, "r1", "2024-08-08", offset, line)
        offset += len(line)

    async def lost_ack(self: Msg) -> None:  # the process died before its acks left
        return None

    crashed = await connect(settings, name="a1")
    archiver = Archiver(crashed, settings, tmp_path / "archive", ack_wait_s=1.0)
    with monkeypatch.context() as patch:
        patch.setattr(Msg, "ack", lost_ack)
        task = await _run(archiver)
        await _until(lambda: archiver.stats.archived_records == 5)
        await _stop(archiver, task)
    await crashed.close()
    # A torn line as well: the dying archiver was writing one more record.
    archived = tmp_path / "archive" / "decisions" / "2024-08-08" / "r1.jsonl"
    with archived.open("ab") as handle:
        handle.write(b'{"v":1,"type":"dec')
    await _publish(js, "r1", "2024-08-08", offset, _line("run_end", 9))

    client = await connect(settings, name="a2")
    restarted = Archiver(client, settings, tmp_path / "archive", ack_wait_s=1.0)
    task = await _run(restarted)
    try:
        await _until(lambda: restarted.stats.duplicates == 5
                     and restarted.stats.archived_records == 1)
    finally:
        await _stop(restarted, task)
        await client.close()
        await publisher.close()
    assert archived.read_bytes() == b"".join(lines) + _line("run_end", 9)
    assert restarted.stats.torn_tails_cut == 1


async def test_a_message_that_cannot_be_placed_is_dropped_and_counted(nats_server, tmp_path):
    settings = NatsSettings(url=nats_server.url)
    client = await connect(settings, name="t")
    js = client.jetstream()
    await ensure_dlog_stream(js, settings)
    archiver = Archiver(client, settings, tmp_path / "archive")
    task = await _run(archiver)
    try:
        await js.publish("dlog.r1.x", b"no headers\n", stream=STREAM)
        await _publish(js, "../etc", "2024-08-08", 0, _line("decision", 1))  # not a run id
        await _publish(js, "r1", "2024-08-08", 0, b"two\nlines\n")
        await _until(lambda: archiver.stats.malformed == 3)
    finally:
        await _stop(archiver, task)
        await client.close()
    assert not (tmp_path / "archive" / "decisions").exists() or not list(
        (tmp_path / "archive" / "decisions").rglob("*.jsonl"))


async def test_a_record_whose_predecessor_never_comes_waits_and_is_reported(
        nats_server, tmp_path: Path, monkeypatch, capsys):
    import daemon.bridge.archive as archive

    monkeypatch.setattr(archive, "GAP_RETRY_S", 0.01)
    monkeypatch.setattr(archive, "GAP_ALERT_DELIVERIES", 3)
    settings = NatsSettings(url=nats_server.url)
    client = await connect(settings, name="t")
    js = client.jetstream()
    await ensure_dlog_stream(js, settings)
    archiver = Archiver(client, settings, tmp_path / "archive")
    task = await _run(archiver)
    try:
        await _publish(js, "r1", "2024-08-08", 100, _line("fill", 2))  # bytes 0-99 lost
        await _until(lambda: archiver.stats.out_of_order >= 4)
    finally:
        await _stop(archiver, task)
        await client.close()
    assert archiver.stats.archived_records == 0
    assert not (tmp_path / "archive" / "decisions" / "2024-08-08" / "r1.jsonl").exists()
    logged = capsys.readouterr()  # stdout or stderr, as an earlier test configured logging
    assert (logged.out + logged.err).count('"archive_gap"') + (
        logged.out + logged.err).count(" archive_gap ") == 1
