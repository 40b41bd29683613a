"""The archiver (`--mode archive`): every shipped decision-log record, written back into the
layout the post-mortem reads, `data_dir/decisions/<date>/<run_id>.jsonl`, byte for byte.

It consumes the `DLOG` stream (`dlog.>`, daemon/bridge/dlog_ship.py) through a durable
pull consumer (`nats.archive_consumer`) with explicit acks: a fetched batch is written and
fsync'd first, acked after, so a crash anywhere loses nothing (the server redelivers what
was not acked).

Where a record goes is in its headers (run id, date, byte offset in the strategy's file).
The archive's file of that run and date is the strategy's file up to some length: a
record whose offset is that length is appended; one below it is already there (a
redelivery after a crash, a resend after the server's duplicate window) and is only
acked; one beyond it arrived before a record it follows (a resend after a lost publish) and
is handed back to the server for later (`nak`). A line torn by a crash of the archiver
(written, not fsync'd, never acked) is cut off at the next start: its record comes again.

One archiver per archive directory: two writing the same files would disagree about their
lengths. Keep it apart from the strategies' own `data_dir`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.common.timings import BackoffPolicy
from config.settings import NatsSettings
from daemon.bridge.dlog_ship import (
    HEADER_DAY,
    HEADER_OFFSET,
    HEADER_RUN_ID,
    STREAM,
    SUBJECTS,
    ensure_dlog_stream,
)
from daemon.core.logs import get_logger
from daemon.postmortem.schema import log_file_name
from daemon.postmortem.writer import decisions_dir, fsync_directory

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = get_logger("archive")

#: Records fetched (and then written, fsync'd and acked) at a time.
FETCH_BATCH = 512
FETCH_WAIT_S = 1.0
#: The server redelivers an unacked record after this long (a crash between write and ack).
ACK_WAIT_S = 30.0
#: A record that came before one it follows is offered again after this long.
GAP_RETRY_S = 0.5
#: A failed fetch (server away) is tried again after 0.5 s doubling up to 5 s (jittered).
FETCH_RETRY = BackoffPolicy(initial_s=0.5, max_s=5.0)
#: A record that came early this many times in a row means the one before it is lost.
GAP_ALERT_DELIVERIES = 20

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class ArchiveStats:
    archived_records: int = 0
    archived_bytes: int = 0
    #: Records already in the archive (redelivered or resent): acked, not written.
    duplicates: int = 0
    #: Records that arrived before one they follow: handed back for later.
    out_of_order: int = 0
    #: Messages without the headers that place a record (dropped, logged).
    malformed: int = 0
    write_errors: int = 0
    fetch_errors: int = 0
    #: Torn tails cut at start (a crash of a previous archiver between write and fsync).
    torn_tails_cut: int = 0

    def counters(self) -> dict[str, float]:
        return {f"archive_{name}": value for name, value in vars(self).items()}


@dataclass(slots=True)
class _Placed:
    message: Msg
    path: Path
    line: bytes


class Archiver:
    """Consumes `dlog.>` durably into `data_dir/decisions` (see the module doc)."""

    def __init__(self, client: Client, settings: NatsSettings, data_dir: Path, *,
                 consumer: str | None = None, batch: int = FETCH_BATCH,
                 ack_wait_s: float = ACK_WAIT_S) -> None:
        self._client = client
        self._js = client.jetstream()
        self._settings = settings
        self.root = decisions_dir(data_dir)
        self._consumer = consumer or settings.archive_consumer
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        #: The archive's length of each file touched so far (what offset comes next).
        self._sizes: dict[Path, int] = {}
        self.runs: set[str] = set()
        self.stats = ArchiveStats()
        self._subscription: Any = None
        self._storing: asyncio.Future[None] | None = None
        self._gaps_reported: set[Path] = set()

    def counters(self) -> dict[str, float]:
        return self.stats.counters()

    async def run(self) -> None:
        """Archive until cancelled; a server that goes away is waited for."""
        subscription = self._subscription = await self._subscribe()
        attempt = 0
        while True:
            try:
                messages = await subscription.fetch(self._batch, timeout=FETCH_WAIT_S)
            except TimeoutError:  # nothing new (nats' TimeoutError is asyncio's)
                continue
            except Exception as exc:  # server away: wait, then fetch again
                self.stats.fetch_errors += 1
                if self.stats.fetch_errors == 1 or self.stats.fetch_errors % 100 == 0:
                    log.warning("archive_fetch_failed", error=type(exc).__name__,
                                detail=str(exc)[:200], errors=self.stats.fetch_errors)
                await asyncio.sleep(FETCH_RETRY.delay(attempt))
                attempt += 1
                continue
            attempt = 0
            # A stop lets the batch finish (written, fsync'd, acked, counted): `aclose`
            # waits for it, so a clean stop leaves nothing to redeliver.
            self._storing = asyncio.ensure_future(self.store(messages))
            await asyncio.shield(self._storing)

    async def aclose(self) -> None:
        """Finish the batch in hand, then leave the consumer (it stays on the server,
        durable): a pull subscription left open would hold the connection's drain."""
        storing, self._storing = self._storing, None
        if storing is not None:
            with contextlib.suppress(Exception):
                await storing
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _subscribe(self):  # nats' PullSubscription
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        await ensure_dlog_stream(self._js, self._settings)
        config = ConsumerConfig(durable_name=self._consumer, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=self._ack_wait_s,
                                max_ack_pending=20 * self._batch, filter_subject=SUBJECTS)
        subscription = await self._js.pull_subscribe(SUBJECTS, durable=self._consumer,
                                                     stream=STREAM, config=config)
        log.info("archive_started", consumer=self._consumer, stream=STREAM,
                 directory=str(self.root))
        return subscription

    async def store(self, messages: Sequence[Msg]) -> None:
        """Write the records that come next in their files, fsync, then ack them (and the
        duplicates); hand back those that came early; drop the malformed."""
        to_write: list[_Placed] = []
        done: list[Msg] = []
        early: list[Msg] = []
        for message in messages:
            placed = self._place(message)
            if placed is None:
                done.append(message)  # malformed: dropped (logged), never redelivered
                continue
            offset, path = placed
            size = self._size(path)
            if offset < size:
                self.stats.duplicates += 1
                done.append(message)
            elif offset > size:
                self.stats.out_of_order += 1
                self._warn_gap(message, path, size, offset)
                early.append(message)
            else:
                to_write.append(_Placed(message, path, message.data))
                self._sizes[path] = size + len(message.data)
        if to_write:
            try:
                await asyncio.to_thread(_append_and_sync, to_write)
            except OSError as exc:
                self._write_failed(exc, to_write)
                early.extend(placed.message for placed in to_write)
                to_write = []
        for placed in to_write:
            self.stats.archived_records += 1
            self.stats.archived_bytes += len(placed.line)
            done.append(placed.message)
        for message in done:
            await message.ack()
        for message in early:
            await message.nak(delay=GAP_RETRY_S)

    def _place(self, message: Msg) -> tuple[int, Path] | None:
        headers = message.headers or {}
        run_id, day = headers.get(HEADER_RUN_ID, ""), headers.get(HEADER_DAY, "")
        try:
            offset = int(headers.get(HEADER_OFFSET, ""))
            name = log_file_name(run_id)
        except ValueError:
            offset, name = -1, ""
        if offset < 0 or not _DAY.match(day) or not message.data.endswith(b"\n") \
                or b"\n" in message.data[:-1]:
            self.stats.malformed += 1
            log.warning("archive_malformed_record", subject=message.subject,
                        bytes=len(message.data), malformed=self.stats.malformed)
            return None
        self.runs.add(run_id)
        return offset, self.root / day / name

    def _warn_gap(self, message: Msg, path: Path, size: int, offset: int) -> None:
        """A record offered again and again while the one before it never comes: the
        stream lost it (its limits dropped it before it was archived). Said once per file;
        the file stays as it is (no line is ever invented) and the record waits."""
        try:
            delivered = message.metadata.num_delivered
        except Exception:  # a message without JetStream metadata
            return
        if delivered < GAP_ALERT_DELIVERIES or path in self._gaps_reported:
            return
        self._gaps_reported.add(path)
        log.error("archive_gap", path=str(path), have_bytes=size, next_offset=offset,
                  deliveries=delivered,
                  hint="records before this offset never reached the archive (the DLOG "
                  "stream's limits, nats.dlog_max_age_s / dlog_max_bytes, may have dropped "
                  "them); the strategy's own file still has them")

    def _size(self, path: Path) -> int:
        size = self._sizes.get(path)
        if size is None:
            size, cut = _length_without_torn_tail(path)
            if cut:
                self.stats.torn_tails_cut += 1
                log.warning("archive_torn_tail_cut", path=str(path), bytes=cut,
                            hint="written by an archiver that stopped before its fsync; "
                            "the record was not acked and comes again")
            self._sizes[path] = size
        return size

    def _write_failed(self, exc: OSError, placed: list[_Placed]) -> None:
        self.stats.write_errors += 1
        log.error("archive_write_failed", error=repr(exc), records=len(placed),
                  hint="not acked: the server offers them again")
        for item in placed:  # the disk may hold part of the batch: measure again
            self._sizes.pop(item.path, None)


def _length_without_torn_tail(path: Path) -> tuple[int, int]:
    """The file's length once a last line without its newline is cut off (and how many
    bytes were cut)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0, 0
    if size == 0:
        return 0, 0
    with path.open("rb+") as handle:
        keep = size
        step = 4096
        while keep > 0:
            start = max(0, keep - step)
            handle.seek(start)
            block = handle.read(keep - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            keep = start
        if keep == size:
            return size, 0
        handle.truncate(keep)
        os.fsync(handle.fileno())
    return keep, size - keep


def _append_and_sync(placed: list[_Placed]) -> None:
    """Append each record to its file in order, then fsync every file touched."""
    by_path: dict[Path, list[bytes]] = {}
    for item in placed:
        by_path.setdefault(item.path, []).append(item.line)
    for path, lines in by_path.items():
        directory = path.parent
        fresh_directory = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        fresh_file = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            payload = memoryview(b"".join(lines))
            written = 0
            while written < len(payload):
                written += os.write(fd, payload[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if fresh_file:
            fsync_directory(directory)
        if fresh_directory:
            fsync_directory(directory.parent)

