"""Raw venue frames to disk, in the format of ../shared/data, so recordings replay.

One file per venue and UTC hour:
`<directory>/<venue>_<symbol or "multi">_<YYYYmmddTHH>.gz`, gzip text, one line per frame:
`<local receive ns> <frame exactly as received>`. Connection events go in between as
meta lines whose JSON starts with a "cryptopipe" key (the replay feed treats those as
meta, not as venue frames):

    <ns> {"cryptopipe":"session","venue":"bybit_spot","symbols":[...],...}   first line of a file
    <ns> {"cryptopipe":"connect","venue":"bybit_spot","url":"..."}
    <ns> {"cryptopipe":"disconnect","venue":"bybit_spot","reason":"silence",...}
    (also "resync", "stale", "fresh", "silence", ... as the supervisor reports them)

Crash safety: frames are buffered in memory and written once a second (`flush_interval_s`)
as one complete gzip member appended to the file, then fsync'd. A gzip file may hold
any number of members (`zcat` and the replay feed read them in order), so a crash
loses at most the last second, and what was written before stays readable; a member
torn by the crash is the only damage, and the replay feed reads up to it. Compression
and file I/O run in a worker thread, off the event loop.

Rotation follows the frames' receive times: the first frame of a new UTC hour opens the
next file (starting with a fresh "session" line). Appending to an existing file (a
restart within the hour) just adds members.

Frames that are not valid UTF-8 (binary garbage) cannot be a line of a text format:
they are counted and noted as a meta line instead of written. A frame holding a raw
newline has it replaced by a space, which JSON treats as plain whitespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from adapters.common.events import FeedEvent
from daemon.core.clock import NS_PER_SECOND
from daemon.core.logs import get_logger
from daemon.core.model import venue_symbol

log = get_logger("recorder")

NS_PER_HOUR = 3_600 * NS_PER_SECOND
FORMAT_VERSION = 1
#: Events of the supervisor written into the recording as meta lines.
RECORDED_EVENTS = frozenset({"connect", "disconnect", "silence", "stale", "fresh", "resync",
                             "planned_reconnect", "gave_up", "subscribe", "unsubscribe"})


def recording_path(directory: Path, venue: str, symbols: Sequence[str], hour_ns: int) -> Path:
    """`<dir>/<venue>_<btcusdt|multi>_<YYYYmmddTHH>.gz` for the hour starting at hour_ns."""
    label = venue_symbol(symbols[0]).lower() if len(symbols) == 1 else "multi"
    stamp = time.strftime("%Y%m%dT%H", time.gmtime(hour_ns // NS_PER_SECOND))
    return directory / f"{venue}_{label}_{stamp}.gz"


@dataclass(slots=True)
class _Segment:
    """Lines bound for one file, waiting for the next flush."""

    path: Path
    lines: list[bytes] = field(default_factory=list)


class VenueRecording:
    """One venue's recording: `write` is the adapter's frame tap, `on_event` its listener."""

    def __init__(self, recorder: Recorder, venue: str, symbols: Sequence[str]) -> None:
        self.recorder = recorder
        self.venue = venue
        self.symbols = list(symbols)
        self.frames = 0
        self.skipped_binary = 0
        self._hour_end_ns = 0
        self._segments: list[_Segment] = []
        self._lines: list[bytes] = []
        self.current_path: Path | None = None

    def write(self, frame: bytes, local_ts_ns: int) -> None:
        """Record one raw frame (the hot path: a bytes join and a list append)."""
        if local_ts_ns >= self._hour_end_ns:
            self._start_file(local_ts_ns)
        if b"\n" in frame or b"\r" in frame:
            frame = frame.replace(b"\n", b" ").replace(b"\r", b" ")
        if not frame.isascii():
            try:
                frame.decode("utf-8")
            except UnicodeDecodeError:
                self.skipped_binary += 1
                self.meta("undecodable_frame", local_ts_ns, bytes=len(frame))
                return
        self.frames += 1
        self._lines.append(b"%d %b\n" % (local_ts_ns, frame))

    def on_event(self, event: FeedEvent) -> None:
        """A supervisor event worth keeping next to the frames."""
        if event.kind in RECORDED_EVENTS:
            self.meta(event.kind, event.ts_ns, **event.details)

    def meta(self, kind: str, ts_ns: int, **fields: Any) -> None:
        if ts_ns >= self._hour_end_ns:
            self._start_file(ts_ns)
        self._append_meta(kind, ts_ns, fields)

    def take(self) -> list[_Segment]:
        """Hand the buffered lines to the writer (called by the flush loop)."""
        segments = self._segments
        if not segments:
            return []
        current = segments[-1]
        self._segments = [_Segment(current.path)]
        self._lines = self._segments[0].lines
        return [segment for segment in segments if segment.lines]

    def _start_file(self, ts_ns: int) -> None:
        hour_ns = ts_ns - ts_ns % NS_PER_HOUR
        self._hour_end_ns = hour_ns + NS_PER_HOUR
        path = recording_path(self.recorder.directory, self.venue, self.symbols, hour_ns)
        self.current_path = path
        segment = _Segment(path)
        self._segments.append(segment)
        self._lines = segment.lines
        self._append_meta("session", ts_ns, {
            "symbols": self.symbols, "run_id": self.recorder.run_id,
            "format": FORMAT_VERSION, "writer": "cryptopipe.recorder"})

    def _append_meta(self, kind: str, ts_ns: int, fields: dict[str, Any]) -> None:
        # "cryptopipe" first: the replay feed spots meta lines by their first bytes.
        line = {"cryptopipe": kind, "venue": self.venue, **fields}
        self._lines.append(b"%d %b\n" % (ts_ns, orjson.dumps(line, default=str)))


class Recorder:
    """Owns the venue recordings and the flush loop (`run()` until cancelled)."""

    def __init__(self, directory: Path, *, run_id: str = "", flush_interval_s: float = 1.0,
                 compresslevel: int = 6, fsync: bool = True,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.directory = Path(directory)
        self.run_id = run_id
        self.flush_interval_s = flush_interval_s
        self.compresslevel = compresslevel
        self.fsync = fsync
        self.clock_ns = clock_ns
        self.recordings: dict[str, VenueRecording] = {}
        self.bytes_written = 0
        self.members_written = 0
        # One worker: writes happen in submission order, whoever submits them.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")

    def open_venue(self, venue: str, symbols: Sequence[str]) -> VenueRecording:
        """The recording of one venue (its file starts with the first frame or event)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        recording = self.recordings.get(venue)
        if recording is None:
            recording = self.recordings[venue] = VenueRecording(self, venue, symbols)
        return recording

    async def run(self) -> None:
        """Flush every `flush_interval_s` until cancelled, then flush what is left."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                await self.flush()
        finally:
            self.close()

    def close(self) -> None:
        """Write what is left and stop the writer (blocks until the data is on disk)."""
        self.flush_now()
        self._writer.shutdown(wait=True)

    async def flush(self) -> None:
        """Write everything buffered so far, in a worker thread."""
        segments = self._take_all()
        if segments:
            # Shielded: a cancel (shutdown) while the write waits its turn must not cancel
            # it, or the batch already taken from the buffers would never reach the disk.
            written = asyncio.wrap_future(self._writer.submit(self._write, segments))
            await asyncio.shield(written)

    def flush_now(self) -> None:
        """Write everything buffered so far, on the calling thread (shutdown)."""
        segments = self._take_all()
        if segments:
            self._writer.submit(self._write, segments).result()

    def paths(self) -> list[Path]:
        return sorted(self.directory.glob("*.gz"))

    def _take_all(self) -> list[_Segment]:
        return [segment for recording in self.recordings.values()
                for segment in recording.take()]

    def _write(self, segments: list[_Segment]) -> None:
        for segment in segments:
            member = gzip.compress(b"".join(segment.lines), self.compresslevel, mtime=0)
            with open(segment.path, "ab") as handle:
                handle.write(member)
                handle.flush()
                if self.fsync:
                    with contextlib.suppress(OSError):
                        os.fsync(handle.fileno())
            self.bytes_written += len(member)
            self.members_written += 1
