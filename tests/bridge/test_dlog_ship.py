"""Shipping the decision log off the box: from the durable local file, with message ids
that make a resend harmless, resumed after a restart, waiting out an absent server."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from config.settings import NatsSettings
from daemon.bridge.connection import connect
from daemon.bridge.dlog_ship import (
    STREAM,
    DecisionLogShipper,
    record_kind,
    sidecar_path,
    subject_token,
)
from daemon.core.model import Decision
from daemon.postmortem.writer import DecisionLogWriter


@dataclass
class HandWrittenLog:
    """A decision log whose durable mark the test moves by hand."""

    root: Path
    run_id: str
    durable_end: tuple[Path | None, int] = (None, 0)


def _line(kind: str, n: int) -> bytes:
    return orjson.dumps({"v": 1, "type": kind, "run_id": "r1", "ts_ns": n, "n": n}) + b"\n"


def _write(path: Path, *lines: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(b"".join(lines))


async def _stored(client, count: int) -> list:
    """The stream's first `count` messages, in order."""
    js = client.jetstream()
    return [await js.get_msg(STREAM, seq) for seq in range(1, count + 1)]


async def _messages_in_stream(client) -> int:
    return (await client.jetstream().stream_info(STREAM)).state.messages


async def test_only_what_is_fsynced_is_shipped_with_ids_that_place_it(nats_server, tmp_path):
    settings = NatsSettings(url=nats_server.url)
    client = await connect(settings, name="t")
    path = tmp_path / "decisions" / "2024-08-08" / "r1.jsonl"
    first, second, third = _line("decision", 1), _line("intent", 2), _line("fill", 3)
    _write(path, first, second, third[:10])  # a torn tail: the writer is mid-line
    log = HandWrittenLog(tmp_path / "decisions", "r1")
    shipper = DecisionLogShipper(client, log, settings)
    try:
        assert not await shipper.ship_available()  # nothing fsync'd yet
        log.durable_end = (path, len(first))
        assert await shipper.ship_available()
        assert await _messages_in_stream(client) == 1
        log.durable_end = (path, len(first) + len(second) + 10)  # never half a line
        await shipper.ship_available()
        stored = await _stored(client, 2)
        assert [m.data for m in stored] == [first, second]
        assert [m.subject for m in stored] == ["dlog.r1.decision", "dlog.r1.intent"]
        assert stored[1].headers["Nats-Msg-Id"] == f"r1/2024-08-08/{len(first)}"
        assert stored[1].headers["Cp-Offset"] == str(len(first))
        assert sidecar_path(path).read_text().strip() == str(len(first) + len(second))
    finally:
        await client.close()


async def test_a_restart_resumes_where_it_stopped_and_a_resend_is_dropped(nats_server,
                                                                           tmp_path):
    settings = NatsSettings(url=nats_server.url)
    client = await connect(settings, name="t")
    day1 = tmp_path / "decisions" / "2024-08-08" / "r1.jsonl"
    day2 = tmp_path / "decisions" / "2024-08-09" / "r1.jsonl"  # the run spans midnight
    _write(day1, _line("decision", 1), _line("ack", 2))
    _write(day2, _line("balance", 3))
    log = HandWrittenLog(tmp_path / "decisions", "r1", (day2, day2.stat().st_size))
    try:
        shipper = DecisionLogShipper(client, log, settings)
        while await shipper.ship_available():
            pass
        assert shipper.stats.shipped_records == 3
        _write(day2, _line("run_end", 4))
        log.durable_end = (day2, day2.stat().st_size)
        restarted = DecisionLogShipper(client, log, settings)  # reads the sidecars
        while await restarted.ship_available():
            pass
        assert restarted.stats.shipped_records == 1
        assert await _messages_in_stream(client) == 4
        sidecar_path(day1).unlink()  # the mark lost: everything of day 1 goes again...
        again = DecisionLogShipper(client, log, settings)
        while await again.ship_available():
            pass
        assert again.stats.duplicates == 2  # ...and the server drops it by message id
        assert await _messages_in_stream(client) == 4
    finally:
        await client.close()


async def test_an_absent_server_is_waited_for_and_counted(nats_server, tmp_path):
    settings = NatsSettings(url=nats_server.url, reconnect_wait_s=0.1)
    client = await connect(settings, name="t")
    path = tmp_path / "decisions" / "2024-08-08" / "r1.jsonl"
    _write(path, _line("decision", 1))
    log = HandWrittenLog(tmp_path / "decisions", "r1", (path, path.stat().st_size))
    shipper = DecisionLogShipper(client, log, settings, poll_interval_s=0.02)
    shipper.start()
    try:
        await _until(lambda: shipper.stats.shipped_records == 1)
        nats_server.stop()
        _write(path, _line("decision", 2), _line("fill", 3))  # the strategy goes on
        log.durable_end = (path, path.stat().st_size)
        await _until(lambda: shipper.stats.failures > 0)
        assert shipper.stats.shipped_records == 1
        nats_server.start()
        await _until(lambda: shipper.stats.shipped_records == 3, timeout_s=60)
        assert await _messages_in_stream(client) == 3
    finally:
        await shipper.aclose()
        await client.close()


async def test_a_live_writer_is_tailed_and_the_rest_shipped_at_close(nats_server, tmp_path):
    """The real writer: records are shipped once its flush made them durable, and the
    bridge's close (after the writer's) ships the tail."""
    settings = NatsSettings(url=nats_server.url)
    client = await connect(settings, name="t")
    writer = DecisionLogWriter(tmp_path, "live-1", flush_interval_ms=10)
    await writer.start()
    shipper = DecisionLogShipper(client, writer, settings, poll_interval_s=0.01)
    shipper.start()
    try:
        for n in range(5):
            writer.record(Decision(strategy="s", action="skip", reason="r", ts_ns=10**18 + n))
        await _until(lambda: shipper.stats.shipped_records == 5)
        writer.end_run()
        await writer.aclose()
        await shipper.aclose()
        assert shipper.stats.shipped_records == 6
        local = b"".join(p.read_bytes() for p in sorted((tmp_path / "decisions").glob("*/*.jsonl")))
        shipped = await _stored(client, 6)
        assert b"".join(m.data for m in shipped) == local
        assert shipped[-1].subject == "dlog.live-1.run_end"
    finally:
        await client.close()


async def test_a_crashed_run_is_taken_over_by_the_next_one(nats_server, tmp_path):
    """A daemon died before shipping its last records and came back under a new run id:
    the new one ships the rest of the old run, leaves logs never shipped alone (a
    backtest's) and a run still being written (another process's)."""
    settings = NatsSettings(url=nats_server.url)
    client = await connect(settings, name="t")
    day = tmp_path / "decisions" / "2024-08-08"
    crashed, busy, backtest = day / "old.jsonl", day / "busy.jsonl", day / "bt.jsonl"
    first = _line("decision", 1)
    _write(crashed, first, _line("fill", 2), _line("ack", 3))
    _write(busy, _line("decision", 4), _line("decision", 5))
    _write(backtest, _line("decision", 6))
    sidecar_path(crashed).write_text(f"{len(first)}\n")
    sidecar_path(busy).write_text("0\n")
    long_ago = time.time() - 3600
    for path in (crashed, backtest):
        os.utime(path, (long_ago, long_ago))
    own = day / "new.jsonl"
    _write(own, _line("decision", 7))
    log = HandWrittenLog(tmp_path / "decisions", "new", (own, own.stat().st_size))
    try:
        shipper = DecisionLogShipper(client, log, settings)
        while await shipper.ship_available():
            pass
        stored = await _stored(client, 3)
        assert await _messages_in_stream(client) == 3
        assert sorted(m.subject for m in stored) == ["dlog.new.decision", "dlog.old.ack",
                                                     "dlog.old.fill"]
        taken = next(m for m in stored if m.subject == "dlog.old.fill")
        assert taken.headers["Nats-Msg-Id"] == f"old/2024-08-08/{len(first)}"
        assert sidecar_path(crashed).read_text().strip() == str(crashed.stat().st_size)
    finally:
        await client.close()


def test_subjects_are_safe_for_any_run_id_and_kind():
    assert subject_token("mm.0808 x") == "mm_0808_x"
    assert record_kind(b'{"v":1,"type":"fill","run_id":"r"}\n') == "fill"
    assert record_kind(b"garbage\n") == "unknown"


async def _until(condition, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)
