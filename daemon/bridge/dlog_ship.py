"""Decision logs off the box: a strategy process ships every record of its decision log to
`dlog.<run_id>.<kind>` on JetStream, from the durable local file.

What is shipped is what the writer has fsync'd (`DecisionLogWriter.durable_end`), read back
from `data_dir/decisions/<date>/<run_id>.jsonl`, never the writer's in-memory queue: a
record leaves the box only once it would survive a crash here, and the shipper never sits
on the decision path (it is a task of its own that reads files).

One message per record (one line, newline included, byte for byte), subject
`dlog.<run_id>.<kind>` (`kind`: the record's `type`: decision, intent, ack, fill, balance,
run_end; a `.` in a run id becomes `_` in the subject) with headers:

- `Nats-Msg-Id: <run_id>/<date>/<byte offset>`: the server drops a resend inside the
  stream's duplicate window (`nats.dlog_duplicate_window_s`);
- `Cp-Run-Id`, `Cp-Day`, `Cp-Offset`: where the line belongs; the archiver
  (daemon/bridge/archive.py) writes it there only if its file has exactly that many bytes,
  so a resend long after the window still writes nothing twice.

A chunk of lines is published asynchronously and counts as shipped only when JetStream
has acked every message of it; then the offset is remembered in a sidecar file
(`<run_id>.jsonl.shipped` beside the log: the next byte to ship) so a restart under the
same `--run-id` resumes where it stopped; a run whose shipping stopped short and whose log
has not changed for `LEFTOVER_IDLE_S` (a daemon that crashed and came back under a new run
id) is taken over by the next shipper of the same `data_dir`. Logs never shipped (no
sidecar: backtests, runs off the bus) are left alone. A server that is away costs retries (counted,
logged once per streak), never a record: the file is the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from adapters.common.timings import BackoffPolicy
from config.settings import NatsSettings
from daemon.core.logs import get_logger
from daemon.core.tasks import spawn

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

log = get_logger("dlog_ship")

STREAM = "DLOG"
SUBJECTS = "dlog.>"
SIDECAR_SUFFIX = ".shipped"
#: Lines published before waiting for their acks (bounded memory, bounded resend).
CHUNK_LINES = 1024
#: Bytes read from a log per chunk (a record is far smaller).
CHUNK_BYTES = 1 << 20
#: Wait this long for a chunk's acks before calling it failed and resending it.
ACK_TIMEOUT_S = 10.0
#: Between two looks at the log when everything durable is shipped.
POLL_INTERVAL_S = 0.1
#: After a failure, wait before trying again: 0.2 s doubling up to 5 s (jittered).
RETRY = BackoffPolicy(initial_s=0.2, max_s=5.0)
#: At a clean stop, give what is left this long to reach the server.
DRAIN_TIMEOUT_S = 15.0
#: A run of this data_dir whose shipping stopped short is taken over once its log has
#: not changed for this long (its process is gone).
LEFTOVER_IDLE_S = 60.0

_UNSAFE_TOKEN = re.compile(r"[^A-Za-z0-9_:+-]")
_KIND = re.compile(rb'"type":"([A-Za-z0-9_]+)"')

HEADER_RUN_ID = "Cp-Run-Id"
HEADER_DAY = "Cp-Day"
HEADER_OFFSET = "Cp-Offset"
HEADER_MSG_ID = "Nats-Msg-Id"


class ServerAway(ConnectionError):
    """The connection is down (reconnecting): records wait in the file."""


class DurableLog(Protocol):
    """What the shipper reads of a `DecisionLogWriter`."""

    root: Path
    run_id: str
    durable_end: tuple[Path | None, int]


def subject_token(text: str) -> str:
    """`text` as one subject token: `.`, `*`, `>` and spaces are NATS syntax."""
    return _UNSAFE_TOKEN.sub("_", text) or "_"


def record_kind(line: bytes) -> str:
    """The record's `type` (the schema's envelope), or `unknown` for a torn line."""
    match = _KIND.search(line, 0, 64)
    return match.group(1).decode() if match else "unknown"


def message_id(run_id: str, day: str, offset: int) -> str:
    return f"{run_id}/{day}/{offset}"


def dlog_headers(run_id: str, day: str, offset: int) -> dict[str, str]:
    return {HEADER_MSG_ID: message_id(run_id, day, offset), HEADER_RUN_ID: run_id,
            HEADER_DAY: day, HEADER_OFFSET: str(offset)}


async def ensure_dlog_stream(js: JetStreamContext, settings: NatsSettings) -> None:
    """The `DLOG` stream on `dlog.>` (file storage, bounded by age and bytes, with a
    duplicate window); created when missing, its limits brought to the settings'."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    config = StreamConfig(
        name=STREAM, subjects=[SUBJECTS], storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS, max_age=settings.dlog_max_age_s,
        max_bytes=settings.dlog_max_bytes,
        duplicate_window=min(settings.dlog_duplicate_window_s, settings.dlog_max_age_s))
    from nats.js.errors import APIError

    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(config)
        return
    try:
        await js.update_stream(config)
    except APIError as exc:  # e.g. limits the server will not change in place: keep its own
        log.warning("dlog_stream_not_updated", stream=STREAM, error=str(exc)[:200])


@dataclass
class ShipperStats:
    shipped_records: int = 0
    shipped_bytes: int = 0
    #: Records the server already had (a resend): harmless, counted.
    duplicates: int = 0
    #: Chunks that failed (server away, no ack in time) and were sent again.
    failures: int = 0
    #: Durable bytes not shipped yet, at the last look.
    backlog_bytes: int = 0
    first_failure: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


class DecisionLogShipper:
    """Tails one run's decision log and ships it (see the module doc)."""

    #: Figures of `counters()` that go down as well as up (/metrics gauges).
    gauges = frozenset({"dlog_ship_backlog_bytes"})

    def __init__(self, client: Client, log_: DurableLog, settings: NatsSettings, *,
                 poll_interval_s: float = POLL_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._js = client.jetstream()
        self._log = log_
        self._settings = settings
        self._poll_s = poll_interval_s
        self._clock = clock
        self._file_name = f"{log_.run_id}.jsonl"
        #: Runs of earlier processes whose shipping stopped short (found at the first look).
        self._leftover_runs: set[str] | None = None
        self._offsets: dict[Path, int] = {}
        self._stream_ready = False
        #: Set at the stop, once the writer has closed: every file is durable to its end.
        self._final = False
        self._task: asyncio.Task[None] | None = None
        self.stats = ShipperStats()

    def start(self) -> None:
        self._task = spawn(self._run(), name=f"dlog-ship:{self._log.run_id}")

    def counters(self) -> dict[str, float]:
        stats = self.stats
        return {"dlog_shipped_records": stats.shipped_records,
                "dlog_shipped_bytes": stats.shipped_bytes,
                "dlog_ship_duplicates": stats.duplicates,
                "dlog_ship_failures": stats.failures,
                "dlog_ship_backlog_bytes": stats.backlog_bytes}

    async def aclose(self) -> None:
        """Stop tailing, then ship what is left (the writer has closed: all of it is
        durable), for at most `DRAIN_TIMEOUT_S`; what does not make it goes on the next
        start under the same run id."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._final = True
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while await self.ship_available():
                    pass
        except TimeoutError:
            pass
        log.info("dlog_ship_stopped", run_id=self._log.run_id,
                 shipped=self.stats.shipped_records, left_bytes=self.stats.backlog_bytes,
                 failures=self.stats.failures)

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                progressed = await self.ship_available()
            except Exception as exc:  # a server away is a retry, not a crash
                self._failed(exc)
                await asyncio.sleep(RETRY.delay(attempt))
                attempt += 1
                continue
            if self.stats.first_failure:
                log.info("dlog_ship_resumed", run_id=self._log.run_id,
                         failures=self.stats.failures)
                self.stats.first_failure = 0.0
            attempt = 0
            if not progressed:
                await asyncio.sleep(self._poll_s)

    def _failed(self, exc: BaseException) -> None:
        stats = self.stats
        stats.failures += 1
        name = type(exc).__name__
        stats.errors[name] = stats.errors.get(name, 0) + 1
        if not stats.first_failure:  # one line per streak; every failure is counted
            stats.first_failure = self._clock()
            log.warning("dlog_ship_waiting", run_id=self._log.run_id, error=name,
                        detail=str(exc)[:200], backlog_bytes=stats.backlog_bytes,
                        hint="records stay in the local log and are shipped when the "
                        "server answers")

    async def ship_available(self) -> bool:
        """Ship one chunk of what is durable and not shipped; True if it shipped any.
        Raises when the server does not take the chunk (nothing is marked shipped)."""
        if not self._stream_ready:
            await ensure_dlog_stream(self._js, self._settings)
            self._stream_ready = True
        backlog = 0
        shipped = False
        if self._leftover_runs is None:
            self._leftover_runs = self._find_leftovers()
        for path in self._files():
            limit = self._durable_limit(path)
            offset = self._offset(path)
            if limit <= offset:
                continue
            backlog += limit - offset
            if shipped:
                continue
            chunk = _read_lines(path, offset, min(limit, offset + CHUNK_BYTES))
            if not chunk:
                continue
            self.stats.backlog_bytes = backlog
            await self._publish(_run_of(path), path.parent.name, offset, chunk)
            self._remember(path, offset + len(chunk))
            backlog -= len(chunk)
            shipped = True
        self.stats.backlog_bytes = backlog
        return shipped

    def _files(self) -> list[Path]:
        """This run's files and the leftover runs', oldest day first."""
        files = list(self._log.root.glob(f"*/{self._file_name}"))
        for run_id in self._leftover_runs or ():
            files.extend(self._log.root.glob(f"*/{run_id}.jsonl"))
        return sorted(files)

    def _find_leftovers(self) -> set[str]:
        """Runs of this data_dir that were being shipped (they have a sidecar) and stopped
        short of their end, untouched for `LEFTOVER_IDLE_S`: a daemon that crashed and
        came back under a new run id. Shipping them twice is harmless (the ids)."""
        runs: set[str] = set()
        now = time.time()
        for sidecar in self._log.root.glob(f"*/*.jsonl{SIDECAR_SUFFIX}"):
            path = sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX))
            run_id = _run_of(path)
            if run_id == self._log.run_id:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if _read_sidecar(path) < stat.st_size and now - stat.st_mtime >= LEFTOVER_IDLE_S:
                runs.add(run_id)
        if runs:
            log.info("dlog_ship_leftovers", runs=sorted(runs),
                     hint="runs whose shipping stopped short (a crash): shipped now")
        return runs

    def _durable_limit(self, path: Path) -> int:
        """How far `path` is fsync'd: the writer's mark for its current file, the whole
        file for an earlier day (closed with an fsync), nothing for a later one; a
        leftover run's file (no writer any more) to its end."""
        if self._final or path.name != self._file_name:
            return _size(path)
        durable_path, durable_bytes = self._log.durable_end
        if durable_path is None:
            return 0
        if path == durable_path:
            return durable_bytes
        if path.parent.name < durable_path.parent.name:
            return _size(path)
        return 0

    def _offset(self, path: Path) -> int:
        offset = self._offsets.get(path)
        if offset is None:
            offset = _read_sidecar(path)
            if offset > _size(path):  # not this file's mark (replaced): the ids dedupe
                offset = 0
            self._offsets[path] = offset
        return offset

    def _remember(self, path: Path, offset: int) -> None:
        self._offsets[path] = offset
        try:
            _write_sidecar(path, offset)
        except OSError as exc:  # costs a resend after a restart, never a record
            log.warning("dlog_ship_sidecar_failed", path=str(path), error=repr(exc))

    async def _publish(self, run_id: str, day: str, offset: int, chunk: bytes) -> None:
        if not self._client.is_connected:  # not into the client's reconnect buffer: the
            raise ServerAway("not connected to the server")  # file is the queue
        prefix = f"dlog.{subject_token(run_id)}."
        futures = []
        try:
            position = offset
            for line in split_lines(chunk):
                subject = prefix + record_kind(line)
                futures.append(await self._js.publish_async(
                    subject, line, stream=STREAM, headers=dlog_headers(run_id, day, position)))
                position += len(line)
            async with asyncio.timeout(ACK_TIMEOUT_S):
                acks = await asyncio.gather(*futures)
        except BaseException:
            for future in futures:
                future.cancel()  # frees the client's in-flight slots
            raise
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self.stats.duplicates += duplicates
        self.stats.shipped_records += len(acks)
        self.stats.shipped_bytes += len(chunk)


def _read_lines(path: Path, start: int, end: int) -> bytes:
    """The complete lines of `path` in [start, end): up to the last newline."""
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    cut = data.rfind(b"\n")
    if cut < 0:
        return b""
    lines = split_lines(data[: cut + 1])
    return b"".join(lines[:CHUNK_LINES])


def split_lines(chunk: bytes) -> list[bytes]:
    """`chunk`'s lines, each with its newline (only `\\n` ends a line of the log)."""
    return [line + b"\n" for line in chunk.split(b"\n")[:-1]]


def _run_of(path: Path) -> str:
    return path.name.removesuffix(".jsonl")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> int:
    try:
        return max(0, int(sidecar_path(path).read_text().strip() or 0))
    except (OSError, ValueError):
        return 0


def _write_sidecar(path: Path, offset: int) -> None:
    target = sidecar_path(path)
    scratch = target.with_name(target.name + ".tmp")
    scratch.write_text(f"{offset}\n")
    os.replace(scratch, target)
