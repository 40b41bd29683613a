"""The decision log writer: every Decision, OrderIntent, OrderAck, Fill and BalanceSnapshot,
durably appended, at a cost the trading hot path does not notice.

File layout: `<data_dir>/decisions/<UTC date>/<run_id>.jsonl`, the date being that of the
records (a run that crosses midnight continues in the next day's directory; a backtest
writes under the date of its data). The schema is in `daemon.postmortem.schema`.

Why JSON Lines (orjson) rather than Arrow IPC segments:
- a torn tail is trivial to detect and costs exactly one record: the last line lacks its
  newline or does not parse, and the reader skips it. A torn IPC batch loses the whole
  batch and needs a recovery scan for the last good message;
- appending is just `write(2)` of bytes; no per-segment schema, so a strategy can add keys
  to `Decision.inputs` freely;
- DuckDB reads it in parallel (`read_ndjson`), and people can `grep` and `jq` it.
It costs ~2-3x the bytes of IPC and slower parsing, which is fine at post-mortem sizes
(a million decisions report in a few seconds).

How it works. `record()` runs on the caller's thread (the event loop): it encodes the
record with orjson at once (about 1-2 µs), so the log holds what the strategy saw even if
it later mutates its inputs dict, and appends the line's bytes to the in-memory batch, one
growing buffer (not a list of lines: orjson returns each line in a ~4 KB allocation it does
not shrink, so holding an interval's lines costs a fresh page per record and was most of
the producer's time; copied into the buffer, the line is freed at once and its allocation
reused by the next). A writer
task seals the batch every `flush_interval_ms` (or sooner when the queue fills up) and
hands it to a dedicated thread that writes and fsyncs it, so neither encoding nor the disk
ever stalls the loop in normal operation. Batches are written strictly in order under one
lock, whoever writes them.

Back-pressure, never a silent drop. The queue (records encoded but not yet written) is
bounded by `queue_size`:
- `await writer.wait_room()` is the cooperative way: a runner that awaits it between
  events yields to the writer while the queue is over half full (alert logged, counted);
- `record()` is the hard bound: when the queue is full it blocks its caller and writes the
  backlog itself, then returns (alert logged, counted, blocked time measured). The loop
  stalls for as long as the disk needs, which is the point: trading must not outrun its
  own audit trail. A disk error surfaces there as an exception rather than a lost record.

A disk that stops taking writes (ENOSPC, EIO, a read-only remount). The records stay in
memory, in order, and the writer task retries every interval; `failing` says why they are
not durable, `/healthz` turns 503 and the handlers of `on_not_durable` run (the action mode
fires the kill switch: no order may be placed that the audit trail cannot hold). While it
fails, neither `record()` nor `wait_room()` blocks the caller on the disk: trading has
stopped and the loop must stay free to cancel orders and serve /healthz. `close()` tries a
last time and, if records are still not durable, raises `DecisionLogNotDurable` (one line:
how many records, where, why). Synchronous mode has no task to retry: a disk error is
raised to the caller there.

End of run: `end_run(status)` appends a `run_end` record (the schema), so a log that
lacks it is one that ended early; the post-mortem reports it.

Crash safety: a record is durable once `durable_records` counts it (written and
fsync'd); a crash loses at most the records of the current interval. A torn last line
(the write was cut short) is skipped by the reader, and the next writer appending to the
same file first terminates it with a newline so its own first record stays intact.

Synchronous mode (`synchronous=True`, for backtests): no task and no thread; records are
written every `SYNCHRONOUS_WRITE_BYTES` of lines (so the bytes waiting in memory do not
depend on how large a strategy's records are: 8,192 records of ~1.5 kB held 12 MB),
fsync'd when `queue_size` of them have accumulated, and at `close()`. Nothing in a record
depends on the wall clock, so the same inputs give a byte-identical log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from daemon.core.clock import NS_PER_DAY, now_ns
from daemon.core.logs import get_logger
from daemon.core.model import BalanceSnapshot
from daemon.core.records import Record, RecordSink
from daemon.core.tasks import spawn
from daemon.postmortem.schema import RunEnd, encode_record, log_file_name, own_time_ns

log = get_logger("decision_log")

DECISIONS_DIR = "decisions"
#: At most one back-pressure alert line per this many seconds (every block is counted).
ALERT_EVERY_S = 1.0
#: While the disk refuses writes, one error line per this many seconds (each is counted).
FAILURE_LOG_EVERY_S = 60.0
#: Synchronous mode: the lines go to the file (not fsync'd) once this many bytes wait.
#: Below glibc's mmap threshold in a backtest (1 MiB, daemon/backtest/cache.py), so the
#: buffer's memory is reused from the heap; a write(2) per ~450 records of ~570 bytes.
SYNCHRONOUS_WRITE_BYTES = 256 << 10


class DecisionLogNotDurable(Exception):
    """Records the disk would not take by the time the log closed (the message says how
    many, where and why, in one line)."""


def decisions_dir(data_dir: Path) -> Path:
    return Path(data_dir) / DECISIONS_DIR


def day_name(day: int) -> str:
    """Days since the epoch -> `YYYY-MM-DD` (UTC)."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


@dataclass(slots=True)
class _Batch:
    """Encoded lines of one UTC day, joined, waiting for the disk."""

    day: int
    payload: bytes | bytearray
    records: int


class DecisionLogWriter:
    """Durable RecordSink. Construct, `await start()` (or `async with`), `record()`, close.

    In synchronous mode use it as a plain context manager (or call `close()`).
    """

    def __init__(
        self,
        data_dir: Path,
        run_id: str,
        *,
        flush_interval_ms: float = 200.0,
        queue_size: int = 100_000,
        synchronous: bool = False,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        if flush_interval_ms <= 0 or queue_size <= 0:
            raise ValueError("flush_interval_ms and queue_size must be positive")
        self.run_id = run_id
        self.root = decisions_dir(data_dir)
        self._file_name = log_file_name(run_id)
        self._interval_s = flush_interval_ms / 1000.0
        self._queue_size = queue_size
        self._synchronous = synchronous
        #: Only for a record with no time of its own when no record came before it.
        self._clock = clock
        self._closed = False
        # Producer side: touched on the caller's thread only.
        self._previous_ts = 0
        self._day = -1
        self._pending = bytearray()  # the encoded lines of the open batch, joined
        self._pending_records = 0
        self._enqueued = 0
        self._wake_at = max(1, queue_size // 4)
        self._room_at = max(1, queue_size // 2)
        # Handed over: deque append/popleft are atomic; the head is touched under the lock.
        self._batches: deque[_Batch] = deque()
        # Disk side: touched only while holding the lock.
        self._disk_lock = threading.Lock()
        self._fd = -1
        self._fd_day = -1
        self._written = 0
        self._durable = 0
        self.path: Path | None = None
        #: (file, bytes) up to which that file is fsync'd; every earlier day's file of the
        #: run is durable to its end. A shipper tails the log this far (daemon/bridge).
        self.durable_end: tuple[Path | None, int] = (None, 0)
        # Async side.
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._thread: ThreadPoolExecutor | None = None
        # Counters (exported by `counters()`).
        self.flushes = 0
        self.backpressure_blocks = 0
        self.backpressure_waits = 0
        self.backpressure_blocked_ns = 0
        self.write_errors = 0
        self.torn_tails_repaired = 0
        self.max_queued = 0
        #: Records by kind (Decision, OrderIntent, Fill, ...): a run's summary counts them.
        self.kinds: Counter[type] = Counter()
        self._last_alert = 0.0
        #: Why records are not durable (the last write error), None while writes succeed.
        self.failing: str | None = None
        self._last_failure_log = 0.0
        self._not_durable_handlers: list[Callable[[str], None]] = []

    @classmethod
    def from_settings(cls, settings: object, run_id: str, *, synchronous: bool = False,
                      clock: Callable[[], int] = now_ns) -> DecisionLogWriter:
        """Built from `Settings` (data_dir and the [postmortem] table)."""
        postmortem = settings.postmortem  # type: ignore[attr-defined]
        return cls(
            settings.data_dir,  # type: ignore[attr-defined]
            run_id,
            flush_interval_ms=postmortem.flush_interval_ms,
            queue_size=postmortem.queue_size,
            synchronous=synchronous,
            clock=clock,
        )

    # -- producer side (hot path) ------------------------------------------------------

    def record(self, record: Record) -> None:
        """Encode and queue one record; blocks only when the queue is full (see module doc)."""
        if self._closed:
            raise RuntimeError(f"decision log {self.run_id} is closed; record not written")
        ts_ns = own_time_ns(record) or self._previous_ts or self._clock()
        self._previous_ts = ts_ns
        self.kinds[type(record)] += 1
        line = encode_record(record, self.run_id, ts_ns)
        day = ts_ns // NS_PER_DAY
        if day > self._day:  # never back: a late ack stays in today's file
            self._seal()
            self._day = day
        self._pending += line
        self._pending_records += 1
        self._enqueued += 1
        queued = self._enqueued - self._written
        if self._synchronous:
            if self._enqueued - self._durable >= self._queue_size:
                self._on_full(queued)  # written and fsync'd
            elif len(self._pending) >= SYNCHRONOUS_WRITE_BYTES:
                self._write_pending()
        elif queued >= self._queue_size:
            self._on_full(queued)
        elif queued >= self._wake_at and self._wake is not None:
            self._wake.set()

    def end_run(self, status: str = "stopped") -> None:
        """Record the run's clean end (a `run_end` record), just before closing."""
        self.record(RunEnd(self._previous_ts or self._clock(), status, self._enqueued))

    def on_not_durable(self, handler: Callable[[str], None]) -> None:
        """Run `handler(why)` each time writes start failing (see the module doc), and at
        once if they already are."""
        self._not_durable_handlers.append(handler)
        if self.failing is not None:
            handler(self.failing)

    async def wait_room(self) -> None:
        """Yield to the writer while the queue is over half full (cooperative back-pressure)."""
        if self._enqueued - self._written < self._room_at or self._room is None:
            return
        if self.failing is not None:  # waiting would stall the loop until the disk is back
            return
        self.backpressure_waits += 1
        self._alert("wait", self.queued)
        while self._enqueued - self._written >= self._room_at and self._running():
            assert self._wake is not None
            self._wake.set()
            self._room.clear()
            await self._room.wait()

    @property
    def durable_records(self) -> int:
        """Records written and fsync'd: they survive a crash."""
        return self._durable

    @property
    def queued(self) -> int:
        """Records accepted but not yet written."""
        return self._enqueued - self._written

    def counters(self) -> dict[str, float]:
        return {
            "records": self._enqueued,
            "durable_records": self._durable,
            "queued": self.queued,
            "max_queued": self.max_queued,
            "flushes": self.flushes,
            "backpressure_blocks": self.backpressure_blocks,
            "backpressure_waits": self.backpressure_waits,
            "backpressure_blocked_s": self.backpressure_blocked_ns / 1e9,
            "write_errors": self.write_errors,
            "failing": 0 if self.failing is None else 1,
            "torn_tails_repaired": self.torn_tails_repaired,
        }

    def _seal(self) -> None:
        """Move the pending lines into the ordered hand-over queue as one batch."""
        if not self._pending_records:
            return
        # Handed over as is: the producer starts a new buffer and never touches this one.
        batch = _Batch(self._day, self._pending, self._pending_records)
        self._pending = bytearray()
        self._pending_records = 0
        self._batches.append(batch)

    def _write_pending(self) -> None:
        """Synchronous mode: the lines waiting go to the file, not fsync'd (that stays every
        `queue_size` records: `_on_full`)."""
        self.max_queued = max(self.max_queued, self.queued)
        self._seal()
        self._write_batches(fsync=False)

    def _on_full(self, queued: int) -> None:
        self.max_queued = max(self.max_queued, queued)
        if self._synchronous:
            self.flush()
            return
        if self.failing is not None:
            return  # kept in memory: the writer task retries (see the module doc)
        started = time.perf_counter_ns()
        try:
            self.flush()
        except OSError as exc:
            self._write_failed(exc)
            return
        self.backpressure_blocks += 1
        self.backpressure_blocked_ns += time.perf_counter_ns() - started
        self._alert("block", queued)

    def _alert(self, how: str, queued: int) -> None:
        now = time.monotonic()
        if now - self._last_alert < ALERT_EVERY_S:
            return
        self._last_alert = now
        log.warning(
            "decision_log_backpressure", how=how, run_id=self.run_id, queued=queued,
            queue_size=self._queue_size, blocks=self.backpressure_blocks,
            waits=self.backpressure_waits,
            blocked_s=round(self.backpressure_blocked_ns / 1e9, 3),
            hint="the disk cannot keep up with the decision log; trading is being slowed",
        )

    # -- disk side (any thread, under the lock) ----------------------------------------

    def flush(self) -> None:
        """Write and fsync everything recorded so far, on the caller's thread."""
        self._seal()
        self._write_batches()

    def _write_batches(self, fsync: bool = True) -> None:
        with self._disk_lock:
            while self._batches:
                batch = self._batches[0]
                self._open_day(batch.day)
                self._write_all(batch)
                self._batches.popleft()
                self._written += batch.records
            # Also when nothing new was written: a retry after a failed fsync must fsync.
            if fsync and self._durable < self._written:
                os.fsync(self._fd)
                self._durable = self._written
                self.flushes += 1
                self.durable_end = (self.path, os.lseek(self._fd, 0, os.SEEK_CUR))
            if self.failing is not None:
                log.warning("decision_log_durable_again", run_id=self.run_id,
                            durable_records=self._durable)
                self.failing = None

    def _write_all(self, batch: _Batch) -> None:
        view = memoryview(batch.payload)
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError:
            # Keep what is left at the head, in order, for the next attempt.
            self._batches[0] = _Batch(batch.day, bytes(view[done:]), batch.records)
            raise

    def _open_day(self, day: int) -> None:
        if self._fd >= 0 and self._fd_day == day:
            return
        self._close_file()
        directory = self.root / day_name(day)
        fresh_directory = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self._file_name
        fresh_file = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._fd_day = day
        self.path = path
        if fresh_file:  # make the new directory entry itself survive a crash
            fsync_directory(directory)
            if fresh_directory:
                fsync_directory(self.root)
        else:
            self._terminate_torn_tail(path)

    def _terminate_torn_tail(self, path: Path) -> None:
        """A previous run died mid-line: end that line so our first record is not glued on."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(path, "rb") as handle:
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
        os.write(self._fd, b"\n")
        self.torn_tails_repaired += 1
        log.warning("decision_log_torn_tail", path=str(path),
                    hint="a previous writer of this run stopped mid-record; that line is skipped")

    def _close_file(self) -> None:
        if self._fd < 0:
            return
        if self._durable < self._written:
            os.fsync(self._fd)
            self._durable = self._written
        self.durable_end = (self.path, os.lseek(self._fd, 0, os.SEEK_CUR))
        os.close(self._fd)
        self._fd = -1

    # -- async writer task -------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer task (asynchronous mode)."""
        if self._synchronous:
            raise RuntimeError("a synchronous decision log has no writer task")
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decision-log")
        self._task = spawn(self._run(), name=f"decision-log:{self.run_id}")
        self._task.add_done_callback(self._on_task_done)

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        assert self._wake is not None and self._room is not None
        loop = asyncio.get_running_loop()
        while True:
            deadline = loop.time() + self._interval_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            self._wake.clear()
            self.max_queued = max(self.max_queued, self.queued)
            self._seal()
            if self._batches:
                try:
                    await loop.run_in_executor(self._thread, self._write_batches)
                except OSError as exc:  # kept in order and retried next interval
                    self._write_failed(exc)
            self._room.set()

    def _write_failed(self, exc: OSError) -> None:
        """Count, log, and on the first failure of a streak tell the handlers."""
        self.write_errors += 1
        why = f"{exc.strerror or exc!r} ({self.queued} records waiting)"
        now = time.monotonic()
        # Retried every interval: one line when the streak starts, then one per minute.
        if self.failing is None or now - self._last_failure_log >= FAILURE_LOG_EVERY_S:
            self._last_failure_log = now
            log.error("decision_log_write_failed", run_id=self.run_id, error=repr(exc),
                      queued=self.queued, write_errors=self.write_errors)
        if self.failing is not None:
            self.failing = why
            return
        self.failing = why
        for handler in list(self._not_durable_handlers):
            try:
                handler(why)
            except Exception:  # one failing handler must not keep the others from running
                log.exception("decision_log_handler_failed")

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """Never leave a producer parked in `wait_room()` behind a dead writer task."""
        if self._room is not None:
            self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("decision_log_writer_stopped", run_id=self.run_id,
                      error=repr(task.exception()), queued=self.queued,
                      hint="records are still written, by the producer, when the queue fills")

    async def aclose(self) -> None:
        """Stop the task, write and fsync whatever is left, close the file."""
        if self._closed:
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.close()

    def close(self) -> None:
        """Write and fsync whatever is left and close the file (waits for the writer thread).

        Raises `DecisionLogNotDurable` when the disk still refuses records (asynchronous
        mode; a synchronous log raises the disk's error itself)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        except OSError as exc:
            if self._synchronous:
                raise
            self.write_errors += 1
            lost = self.queued
            log.error("decision_log_not_durable", run_id=self.run_id, records=lost,
                      error=repr(exc))
            where = self.path or self.root
            raise DecisionLogNotDurable(
                f"decision log not durable: {lost} record(s) could not be written to "
                f"{where}: {exc.strerror or exc!r}") from None
        finally:
            with self._disk_lock:
                try:
                    self._close_file()
                except OSError as exc:  # flush() above already said whether records are lost
                    log.error("decision_log_close_failed", run_id=self.run_id, error=repr(exc))
                    self._fd = -1
            if self._thread is not None:
                self._thread.shutdown(wait=True)
            if self._room is not None:
                self._room.set()  # release anyone still in wait_room()

    async def __aenter__(self) -> DecisionLogWriter:
        if not self._synchronous:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> DecisionLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NullDecisionLog(DecisionLogWriter):
    """A decision log that keeps nothing: for training runs, thousands of short backtest
    episodes that nobody reports on (`Backtest(..., decision_log=False)`).

    It takes every record the way the writer does (a closed log still refuses one) and
    counts it by kind (`kinds`), but encodes nothing and opens no file, ever: not even
    the day's directory. Its counters stay those of a log that wrote everything, so a
    run's result and summary read the same figures: `durable_records` (and `records` in
    `counters()`) are the records taken, none is ever `queued`, and nothing fails.
    """

    def record(self, record: Record) -> None:
        if self._closed:
            raise RuntimeError(f"decision log {self.run_id} is closed; record not written")
        self.kinds[type(record)] += 1
        self._enqueued += 1

    def end_run(self, status: str = "stopped") -> None:
        self.record(RunEnd(0, status, self._enqueued))

    def flush(self) -> None:
        """Nothing to write."""

    @property
    def durable_records(self) -> int:
        """Records taken (and dropped by design): what a writing log would hold."""
        return self._enqueued

    @property
    def queued(self) -> int:
        return 0

    def counters(self) -> dict[str, float]:
        return {**super().counters(), "durable_records": self._enqueued, "queued": 0}

    async def start(self) -> None:
        """No writer task: nothing is ever written."""


def fsync_directory(path: Path) -> None:
    """Make a new file's directory entry durable (the archiver's files too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BalanceSource(Protocol):
    def balances(self, venue: str) -> Mapping[str, float]: ...


@runtime_checkable
class InTransitSource(Protocol):
    """Transfers sent and not landed: per asset, what each will credit `venue`."""

    def in_transit(self, venue: str, now_ns: int) -> Mapping[str, float]: ...


class BalanceSnapshots:
    """Records each venue's balances every `interval_s` of the strategy clock, with what
    transfers on their way will credit it (`transfers`, when the session can move funds):
    a transfer debits its source at once and credits its destination only on arrival, and
    the funds in between are still ours (the post-mortem values them at the mark).

    Call `maybe_record(now_ns)` on every event (it is one comparison when nothing is due);
    in a backtest `now_ns` is event time, so snapshots land at the same places every run.
    """

    def __init__(self, sink: RecordSink, account: BalanceSource, venues: Sequence[str],
                 interval_s: float, strategy: str = "",
                 transfers: InTransitSource | None = None) -> None:
        self.sink = sink
        self.account = account
        self.transfers = transfers
        self.venues = list(venues)
        self.strategy = strategy
        self._interval_ns = int(interval_s * 1e9)
        #: When the next snapshot is due (a backtest's per-event loop compares it inline).
        self.next_ns = 0

    def maybe_record(self, now_ns: int) -> None:
        if now_ns < self.next_ns:
            return
        self.record_now(now_ns)

    def record_now(self, now_ns: int) -> None:
        self.next_ns = now_ns + self._interval_ns
        for venue in self.venues:
            balances = dict(self.account.balances(venue))
            in_transit = (dict(self.transfers.in_transit(venue, now_ns))
                          if self.transfers is not None else {})
            self.sink.record(BalanceSnapshot(venue, now_ns, balances, self.strategy,
                                             in_transit))
