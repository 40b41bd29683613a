"""Replay recorded venue frames through the same parsers the live adapters use.

Formats (see ../shared/data/README.md), plain or gzip (by the `.gz` suffix):

- `<local receive ns> <frame JSON>` per line: the shared Binance recordings and the
  project's own recordings. A line whose JSON has a top-level "cryptopipe" key is a meta
  event written by the recorder, not a venue frame; `{"cryptopipe": "session",
  "venue": "bybit_spot", ...}` sets the venue of the frames that follow; a "session" or
  "connect" event starts the parsers over (sequences and books restart with a
  connection); other events ("disconnect", ...) are passed on and otherwise ignored.
- `<frame JSON>` per line (Bybit's `.jsonl` history): no receive time, so the message's
  own `ts` (ms) stands in for it.
- Public historical data, told by its shape (a `.zip`, or a first line of CSV): Binance
  public data (`bookTicker`, `trades`, `aggTrades`; zip or CSV, with or without header)
  and Tardis.dev CSV (`quotes`, `trades`, `incremental_book_L2`, `book_snapshot_25`),
  read by `adapters.historical` into the same Quote/Trade, merged by time with the rest.

Which parser reads a frame: a session meta line names the venue; otherwise Binance spot
and USD-M are told apart by frame shape (`detect_binance_market`), Bybit spot and linear
by the file-name prefix (`bybit_spot_...`), defaulting to linear. Binance COIN-M frames
(`btcusd_perp@...`: inverse contracts, which no venue here trades) are refused with one
line (`ReplayError`), never replayed as USD-M.

A spec `FILE@VENUE:SYMBOL` relabels what FILE publishes (exchange and symbol of every
Quote/Trade); the frames are still parsed by the parser of their real format.

Damage is survived, never fatal: a corrupt line is counted and skipped, a truncated or
corrupt gzip stream (a recorder that crashed) is read up to the damage and reported in
`FileStats.damage`. Only a missing or unreadable file raises `ReplayError`. What was lost
is summed up by `ReplayStats.damage_summary()`; the modes print it, and treat a replay that
published nothing at all as an input error (`check_usable` -> `NothingUsable`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import re
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from adapters.historical.files import zip_chunks
from adapters.historical.parser import HistoricalParser, is_historical, read_rows
from adapters.historical.schemas import COINM_IN_FRAME, HistoricalError, Layout
from adapters.venues import (
    BYBIT_VENUES,
    BinanceParser,
    BybitParser,
    detect_binance_market,
    make_parser,
)
from daemon.core.model import NATIVE_VENUES, Quote, Trade
from daemon.core.routes import Callbacks, KeyedDepthCallback, Levels

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
#: ~75 s of real Binance BTCUSDT frames (spot and USD-M, each with its REST depth
#: snapshot), cut from ../shared/data; see samples/README.md.
SAMPLE_FILES: tuple[Path, ...] = (
    SAMPLES_DIR / "binance_spot_btcusdt_20240808_sample.gz",
    SAMPLES_DIR / "binance_usdm_btcusdt_20240808_sample.gz",
)

#: At max speed, yield to the event loop every this many frames so other tasks (a watch
#: view, the staleness watchdog) keep running during a replay.
YIELD_EVERY_FRAMES = 2048
#: At paced speeds, sleep only when at least this far ahead of the schedule: sub-ms gaps
#: between frames are delivered back to back instead of one sleep per frame.
MIN_SLEEP_S = 0.001
_READ_CHUNK_BYTES = 1 << 20
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_DEFAULT_BYBIT_VENUE = "bybit_linear"
# The venue's own time in a frame without a receive time: Bybit "ts", Binance "E"/"T" (ms).
_MESSAGE_TIME = re.compile(rb'"(?:ts|E|T)":(\d{1,19})')

#: Recorder meta events after which frames come from a new connection.
_NEW_CONNECTION = frozenset({"session", "connect"})

FrameParser = BinanceParser | BybitParser | HistoricalParser
PublishQuote = Callable[[Quote], None]
PublishTrade = Callable[[Trade], None]
Sleep = Callable[[float], Awaitable[None]]


class ReplayError(Exception):
    """A replay input cannot be used at all: a missing/unreadable file, a bad spec."""


class NothingUsable(ReplayError):
    """The files were read but gave not one quote or trade (random bytes, a text file, a
    gzip cut before its first line): the message carries the damage counters."""

    def __init__(self, specs: list[ReplaySpec], stats: ReplayStats) -> None:
        names = ", ".join(str(spec.path) for spec in specs)
        super().__init__(f"nothing usable in {names}: {stats.damage_summary()}")
        self.stats = stats


def check_usable(specs: list[ReplaySpec], stats: ReplayStats) -> ReplayStats:
    """`stats` if the replay published something; else raises `NothingUsable`."""
    if not stats.usable:
        raise NothingUsable(specs, stats)
    return stats


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """One recorded file, optionally presented as another venue and/or symbol."""

    path: Path
    venue: str | None = None
    symbol: str | None = None

    def __str__(self) -> str:
        if self.venue is None and self.symbol is None:
            return str(self.path)
        return f"{self.path}@{self.venue or ''}:{self.symbol or ''}".rstrip(":")


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """Where a frame comes from. Shared by all frames of a file and venue (no allocation
    per frame); a meta event gets its own instance with `session` set."""

    venue: str  # the venue whose wire format the frame is in
    path: str
    #: The parsed meta line for a recorder meta event ("cryptopipe" key), else None.
    session: Mapping[str, Any] | None = None
    #: How to read the rows of a historical file (`adapters.historical`), else None.
    layout: Layout | None = None


@dataclass(slots=True)
class FileStats:
    """What reading one file found."""

    path: str
    lines: int = 0
    frames: int = 0
    meta_lines: int = 0
    corrupt_lines: int = 0
    #: Why the file ended early (truncated/corrupt gzip), None if it was read to the end.
    damage: str | None = None
    venues: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class ReplayStats:
    """The outcome of a replay: per file, and totals over all files."""

    files: list[FileStats]
    frames: int = 0
    quotes: int = 0
    trades: int = 0
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    wall_seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def corrupt_lines(self) -> int:
        return sum(f.corrupt_lines for f in self.files)

    @property
    def damaged_files(self) -> list[str]:
        return [f.path for f in self.files if f.damage is not None]

    @property
    def usable(self) -> bool:
        """Whether the replay published anything (a quote or a trade) at all."""
        return self.quotes + self.trades > 0

    def damage_summary(self) -> str | None:
        """One line of what was lost on the way (corrupt lines, frames the parsers
        dropped, files cut short), with what was read; None when nothing was lost and
        something was published."""
        dropped = sum(self.dropped.values())
        damaged = [f for f in self.files if f.damage is not None]
        if self.usable and not (self.corrupt_lines or dropped or damaged):
            return None
        parts = [f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}, "
                 f"{sum(f.lines for f in self.files):,} lines, {self.frames:,} frames, "
                 f"{self.quotes:,} quotes, {self.trades:,} trades",
                 f"{self.corrupt_lines:,} corrupt lines"]
        if dropped:
            reasons = ", ".join(f"{reason} {count:,}" for reason, count
                                in self.dropped.most_common(5))
            parts.append(f"{dropped:,} frames dropped ({reasons})")
        parts.extend(f"{f.path}: {f.damage}" for f in damaged)
        return "; ".join(parts)

    @property
    def recorded_seconds(self) -> float:
        if self.first_ts_ns is None or self.last_ts_ns is None:
            return 0.0
        return (self.last_ts_ns - self.first_ts_ns) / 1e9


# --- specs ----------------------------------------------------------------------------------


def parse_spec(text: str) -> ReplaySpec:
    """`path`, `path@venue`, `path@venue:SYMBOL` or `path@:SYMBOL` -> ReplaySpec.

    The symbol may itself hold a colon (`BTC/USDT:USDT`): only the first colon after the
    "@" separates venue from symbol. A path containing "@" is fine when what follows
    its last "@" is not a known venue label.
    """
    text = text.strip()
    if text.startswith("replay:"):
        text = text[len("replay:") :]
    if not text:
        raise ReplayError("empty replay spec: expected FILE[@VENUE:SYMBOL]")
    path_text, at, label = text.rpartition("@")
    if not at or not _looks_like_label(label):
        return ReplaySpec(Path(text))
    venue, _, symbol = label.partition(":")
    if not path_text:
        raise ReplayError(f"replay spec {text!r} names no file before '@'")
    if symbol and "/" not in symbol:
        raise ReplayError(
            f"replay spec {text!r}: symbol {symbol!r} must be unified, e.g. BTC/USDT or "
            "BTC/USDT:USDT"
        )
    return ReplaySpec(Path(path_text), venue or None, symbol or None)


def expand_spec(text: str) -> list[ReplaySpec]:
    """`parse_spec`, with a directory standing for every file directly in it and a glob
    (`*`, `?`, `[`) for every file it matches (hidden files left out, as a shell does), in
    name order (which is time order for the
    recorder's and the providers' daily files; the replay merges all by time anyway); a
    `@VENUE:SYMBOL` label applies to each. A directory or glob with no file is an error."""
    spec = parse_spec(text)
    path = spec.path
    if path.is_dir():
        found = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
    elif any(char in str(path) for char in "*?["):
        anchor = Path(path.anchor) if path.is_absolute() else Path()
        pattern = str(path.relative_to(anchor)) if path.is_absolute() else str(path)
        found = sorted(f for f in anchor.glob(pattern)
                       if f.is_file() and not f.name.startswith("."))
    else:
        return [spec]
    if not found:
        raise ReplayError(f"--data {text!r}: no files there")
    return [dataclasses.replace(spec, path=file) for file in found]


def parse_specs(text: str) -> list[ReplaySpec]:
    """`replay:a.gz,b.gz@bybit_spot:BTC/USDT` -> one spec per comma-separated file."""
    if text.startswith("replay:"):
        text = text[len("replay:") :]
    return [parse_spec(part) for part in text.split(",") if part.strip()]


def _looks_like_label(label: str) -> bool:
    venue, _, symbol = label.partition(":")
    if venue and not re.fullmatch(r"[a-z][a-z0-9_]*", venue):
        return False
    return bool(venue or symbol) and "/" not in venue


def sample_specs() -> list[ReplaySpec]:
    """The shipped sample (`--feed sample`): works without ../shared."""
    missing = [str(path) for path in SAMPLE_FILES if not path.is_file()]
    if missing:
        raise ReplayError(f"sample files missing from the install: {', '.join(missing)}")
    return [ReplaySpec(path) for path in SAMPLE_FILES]


def venue_from_filename(path: Path) -> str | None:
    """`bybit_spot_btcusdt_....gz` -> "bybit_spot"; None when the name says nothing."""
    name = path.name.lower()
    for venue in NATIVE_VENUES:
        if name.startswith(venue) and name[len(venue) : len(venue) + 1] in ("_", ".", "-"):
            return venue
    return None


# --- reading files --------------------------------------------------------------------------


def iter_frames(
    path: str | Path, stats: FileStats | None = None, symbol: str | None = None
) -> Iterator[tuple[int, bytes, FrameMeta]]:
    """(local_ts_ns, frame, meta) for each line of a recording, in file order.

    Meta events (recorder lines with a "cryptopipe" key) are yielded too, with
    `meta.session` set, so a backtest engine can see session boundaries. Opens the file
    now: a missing or unreadable file raises `ReplayError` here, not on first iteration.
    A historical file yields its rows with `meta.layout` set (`make_frame_parser` reads
    them); `symbol` (a spec's unified symbol) names the market of one whose name does not.
    A file refused as a whole (Binance COIN-M) raises `ReplayError` on first iteration.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ReplayError(f"cannot read replay file {path}: {error.strerror or error}") from None
    if stats is None:
        stats = FileStats(str(path))
    return _frames(handle, path, stats, symbol)


def _frames(handle: Any, path: Path, stats: FileStats, symbol: str | None = None
            ) -> Iterator[tuple[int, bytes, FrameMeta]]:
    with handle:
        lines = _lines(handle, path, stats)
        first = next(lines, None)
        if first is None:  # an empty file (or one damaged before its first line)
            return
        lines = itertools.chain((first,), lines)
        if is_historical(path, first):
            yield from _historical_frames(path, first, lines, stats, symbol)
        else:
            yield from _recorded_frames(lines, path, stats)


def _historical_frames(path: Path, first: bytes, lines: Iterator[bytes], stats: FileStats,
                       symbol: str | None) -> Iterator[tuple[int, bytes, FrameMeta]]:
    try:
        layout, rows = read_rows(path, first, lines, stats, symbol)
        meta = FrameMeta(layout.venue, str(path), layout=layout)
        for ts, frame in rows:
            stats.frames += 1
            yield ts, frame, meta
    except HistoricalError as error:
        raise ReplayError(str(error)) from None
    if layout.venue:
        stats.venues.add(layout.venue)


def _recorded_frames(lines: Iterator[bytes], path: Path, stats: FileStats
                     ) -> Iterator[tuple[int, bytes, FrameMeta]]:
    resolver = _VenueResolver(path)
    last_ts = 0
    for line in lines:
        stats.lines += 1
        if not line or line.isspace():
            continue
        if line[:1] == b"{":  # no receive-time prefix: the message's own time
            frame = line
            match = _MESSAGE_TIME.search(frame)
            ts = int(match.group(1)) * 1_000_000 if match else last_ts
        else:
            ts_text, _, frame = line.partition(b" ")
            try:
                ts = int(ts_text)
            except ValueError:
                stats.corrupt_lines += 1
                continue
            if not frame:
                stats.corrupt_lines += 1
                continue
        last_ts = ts
        # Meta lines carry the key near the start (the recorder writes it first); venue
        # frames never do, so a short prefix search keeps the check cheap per line.
        if b'"cryptopipe"' in frame[:128]:
            meta = resolver.meta_event(frame)
            if meta is not None:
                stats.meta_lines += 1
                yield ts, frame, meta
                continue
        stats.frames += 1
        yield ts, frame, resolver.meta_for(frame)
    stats.venues.update(resolver.venues_seen)


def _lines(handle: Any, path: Path, stats: FileStats) -> Iterator[bytes]:
    """Lines without their newline. A torn last line of a damaged file is dropped."""
    tail = b""
    if path.suffix == ".zip":
        chunks = zip_chunks(path, stats)
    elif path.suffix == ".gz":
        chunks = _gzip_chunks(handle, stats)
    else:
        chunks = _plain_chunks(handle)
    for chunk in chunks:
        lines = (tail + chunk).split(b"\n") if tail else chunk.split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        if stats.damage is None:
            yield tail  # a complete file whose last line has no newline
        else:
            stats.corrupt_lines += 1  # cut mid-line by the damage


def _plain_chunks(handle: Any) -> Iterator[bytes]:
    while chunk := handle.read(_READ_CHUNK_BYTES):
        yield chunk


def _gzip_chunks(handle: Any, stats: FileStats) -> Iterator[bytes]:
    """Decompressed chunks of a (possibly multi-member, possibly damaged) gzip file.

    zlib rather than the gzip module: gzip raises on a truncated tail and loses what it
    had buffered; here everything up to the damage is handed out.
    """
    inflater = zlib.decompressobj(_GZIP_WBITS)
    started = False
    while raw := handle.read(_READ_CHUNK_BYTES):
        started = True
        checkpoint = inflater.copy()
        try:
            out, inflater = _inflate(inflater, raw)
        except zlib.error as error:
            stats.damage = f"corrupt gzip data: {error}"
            # Redo this chunk in small steps from the checkpoint to keep what precedes
            # the damage (a failing decompress call returns nothing at all).
            yield _inflate_until_damage(checkpoint, raw)
            return
        if out:
            yield out
    if started and not inflater.eof:
        stats.damage = "truncated gzip stream (recording cut short)"
        try:
            rest = inflater.flush()
        except zlib.error:
            rest = b""
        if rest:
            yield rest


def _inflate(inflater: Any, raw: bytes) -> tuple[bytes, Any]:
    """Decompress `raw`, moving on to the next gzip member whenever one ends (a recorder
    that appends sessions writes one member after another)."""
    out = inflater.decompress(raw)
    while inflater.eof and inflater.unused_data:
        rest = inflater.unused_data
        inflater = zlib.decompressobj(_GZIP_WBITS)
        out += inflater.decompress(rest)
    return out, inflater


def _inflate_until_damage(inflater: Any, raw: bytes, step: int = 256) -> bytes:
    parts = []
    for offset in range(0, len(raw), step):
        try:
            part, inflater = _inflate(inflater, raw[offset : offset + step])
        except zlib.error:
            break
        parts.append(part)
    return b"".join(parts)


class _VenueResolver:
    """Decides which venue's parser reads each frame of one file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.filename_venue = venue_from_filename(path)
        self.session_venue: str | None = None
        self.binance_market: str | None = None  # decided by the first telling frame
        self.venues_seen: set[str] = set()
        self._metas: dict[str, FrameMeta] = {}
        self._current: FrameMeta | None = None

    def meta_for(self, frame: bytes) -> FrameMeta:
        current = self._current
        if current is not None:
            return current
        venue, decided = self._resolve(frame)
        meta = self._metas.get(venue)
        if meta is None:
            meta = self._metas[venue] = FrameMeta(venue, self.path)
            self.venues_seen.add(venue)
        if decided:
            self._current = meta  # sticky until the next session meta line
        return meta

    def meta_event(self, frame: bytes) -> FrameMeta | None:
        """A recorder meta line -> its FrameMeta; None if the line is not one after all."""
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict) or "cryptopipe" not in message:
            return None
        venue = message.get("venue")
        if isinstance(venue, str) and venue in NATIVE_VENUES:
            self.session_venue = venue
            self._current = None
        return FrameMeta(self.session_venue or self.filename_venue or "", self.path, message)

    def _resolve(self, frame: bytes) -> tuple[str, bool]:
        """(venue, decided): undecided frames (control replies) do not fix the venue."""
        if self.session_venue is not None:
            return self.session_venue, True
        if _is_bybit(frame):
            if self.filename_venue in BYBIT_VENUES:
                return self.filename_venue, True
            return _DEFAULT_BYBIT_VENUE, True
        if COINM_IN_FRAME.search(frame) is not None:
            raise ReplayError(
                f"{self.path}: Binance COIN-M futures frames ({frame[:40].decode(errors='replace')}"
                "...): inverse contracts are not supported")
        market = detect_binance_market(frame)
        if market is not None:
            self.binance_market = market
            return market, True
        if self.filename_venue is not None:
            return self.filename_venue, False
        return "binance_spot", False


def _is_bybit(frame: bytes) -> bool:
    head = frame[:48]
    return b'"topic"' in head or b'"op"' in head or b'"success"' in head or b'"ret_msg"' in head


# --- the feed -------------------------------------------------------------------------------


class ReplayFeed:
    """Publishes recorded frames in receive-time order, at max speed or paced.

    `speed`: None = as fast as possible, 1.0 = real time, N = N times real time.
    `books=True` has Binance parsers keep depth books (not needed for top of book).
    `publish_depth` gets every change of every synced depth book (Binance with `books`,
    Bybit always), relabelled like the quotes; each change comes before the events it
    moves (`daemon.core.routes.DepthCallback`).
    `sleep`/`clock` are injectable so tests never sleep for real.
    """

    def __init__(
        self,
        specs: list[ReplaySpec],
        publish_quote: PublishQuote,
        publish_trade: PublishTrade,
        speed: float | None = None,
        *,
        books: bool = False,
        publish_depth: KeyedDepthCallback | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        yield_every: int = YIELD_EVERY_FRAMES,
    ) -> None:
        if not specs:
            raise ReplayError("nothing to replay: no file given")
        if speed is not None and not speed > 0:
            raise ReplayError(f"replay speed must be positive or None (max), not {speed!r}")
        for spec in specs:
            if not spec.path.is_file():
                raise ReplayError(f"replay file not found: {spec.path}")
        self.specs = list(specs)
        self.publish_quote = publish_quote
        self.publish_trade = publish_trade
        self.speed = speed
        self.books = books
        self.publish_depth = publish_depth
        self._sleep = sleep
        self._clock = clock
        self._yield_every = max(1, yield_every)
        #: (spec index, wire venue) -> parser; created on a venue's first frame.
        self.parsers: dict[tuple[int, str], FrameParser] = {}

    async def run(self) -> ReplayStats:
        """Replay every file once; returns what was read, parsed and dropped."""
        file_stats = [FileStats(str(spec.path)) for spec in self.specs]
        stream = self._merged(file_stats)
        stats = ReplayStats(file_stats)
        started = time.perf_counter()
        paced = self.speed is not None
        speed = self.speed or 1.0
        clock, sleep, yield_every = self._clock, self._sleep, self._yield_every
        parsers = self.parsers
        parsers.clear()  # a second run starts from scratch, like a new connection
        wall_start = 0.0
        first_ts: int | None = None
        ts = 0
        frames = 0
        unpaused = 0  # frames published since the loop last got control
        for ts, index, frame, meta in stream:
            if first_ts is None:
                first_ts, wall_start = ts, clock()
            if meta.session is not None:
                self._on_meta(index, meta)
                continue
            # Wait for the frame's turn, then publish it. Dense stretches (or a high
            # speed) may never need a sleep: yield anyway so other tasks run.
            if paced and (delay := wall_start + (ts - first_ts) / 1e9 / speed
                          - clock()) >= MIN_SLEEP_S:
                await sleep(delay)
                unpaused = 0
            elif unpaused >= yield_every:
                await sleep(0)
                unpaused = 0
            parser = parsers.get((index, meta.venue))
            if parser is None:
                parser = self._new_parser(index, meta)
            parser.feed(frame, ts)
            frames += 1
            unpaused += 1
        stats.frames = frames
        stats.first_ts_ns, stats.last_ts_ns = first_ts, (ts if first_ts is not None else None)
        stats.wall_seconds = time.perf_counter() - started
        self._collect(stats)
        return stats

    def _merged(self, file_stats: list[FileStats]) -> Iterator[tuple[int, int, bytes, FrameMeta]]:
        """(ts, spec index, frame, meta) of every file, by receive time; equal times keep
        file order (what `heapq.merge` of all the files gives).

        Streamed, and a file is opened only once the merge reaches its first frame (each
        file's first time is read first, by a look at its head) and closed after its
        last: the days of one market follow each other (whatever their names' order),
        one open at a time, merged with the other markets' files of the same time. So the
        memory of reading (a decompression buffer per open file) does not grow with the
        days (`most_open`: the most files open at once)."""
        specs = self.specs
        self.most_open = 1
        if len(specs) == 1:
            yield from _tagged(0, iter_frames(specs[0].path, file_stats[0], specs[0].symbol))
            return
        # Not yet open, by their first frame's (time, index); an empty file goes first.
        waiting = sorted((_first_ts(spec), index) for index, spec in enumerate(specs))
        waiting.reverse()  # popped from the end
        heap: list[tuple[int, int, bytes, FrameMeta, Iterator[tuple[int, bytes, FrameMeta]]]] = []
        while heap or waiting:
            # Open every file whose first frame comes before the next one of those open.
            while waiting and (not heap or waiting[-1] < (heap[0][0], heap[0][1])):
                _, index = waiting.pop()
                spec = specs[index]
                frames = iter_frames(spec.path, file_stats[index], spec.symbol)
                for ts, frame, meta in frames:
                    heapq.heappush(heap, (ts, index, frame, meta, frames))
                    break
                self.most_open = max(self.most_open, len(heap))
            if not heap:
                continue
            ts, index, frame, meta, frames = heap[0]
            yield ts, index, frame, meta
            for ts, frame, meta in frames:
                heapq.heapreplace(heap, (ts, index, frame, meta, frames))
                break
            else:
                heapq.heappop(heap)  # the file is done (its generator closed)

    def _new_parser(self, index: int, meta: FrameMeta) -> FrameParser:
        spec = self.specs[index]
        on_quote, on_trade = self.publish_quote, self.publish_trade
        on_depth = self.publish_depth
        if spec.venue is not None or spec.symbol is not None:
            on_quote, on_trade = _relabelled(spec, on_quote, on_trade)
            if on_depth is not None:
                on_depth = _relabelled_depth(spec, on_depth)
        parser = make_frame_parser(meta, Callbacks(on_quote, on_trade, on_depth),
                                   books=self.books)
        self.parsers[(index, meta.venue)] = parser
        return parser

    def _on_meta(self, index: int, meta: FrameMeta) -> None:
        """A new session or connection starts the file's parsers over, as a live adapter
        resets its parser on reconnect (sequences and books restart with a connection)."""
        if meta.session is not None and meta.session.get("cryptopipe") in _NEW_CONNECTION:
            for (parser_index, _), parser in self.parsers.items():
                if parser_index == index:
                    parser.reset()

    def _collect(self, stats: ReplayStats) -> None:
        for (index, venue), parser in self.parsers.items():
            file = stats.files[index]
            file.venues.add(venue)
            file.counts.update(parser.counts)
            file.dropped.update(parser.dropped)
        for file in stats.files:
            stats.counts.update(file.counts)
            stats.dropped.update(file.dropped)
        stats.quotes = stats.counts["quote"]
        stats.trades = stats.counts["trade"]


def make_frame_parser(meta: FrameMeta, sink: Callbacks, *, books: bool = False
                      ) -> FrameParser:
    """The parser of the frames `meta` describes: a historical file's rows, or a venue's
    wire frames (`adapters.venues.make_parser`; ValueError for an unknown venue)."""
    if meta.layout is not None:
        return HistoricalParser(meta.layout, sink)
    return make_parser(meta.venue, sink, books=books)


def _first_ts(spec: ReplaySpec) -> int:
    """The receive time of a file's first frame (meta lines count), read from its head;
    the smallest time for a file with none (read first, it publishes nothing)."""
    frames = iter_frames(spec.path, FileStats(str(spec.path)), spec.symbol)
    try:
        for ts, _, _ in frames:
            return ts
    finally:
        frames.close()  # type: ignore[attr-defined]
    return -(2**63)


def _tagged(
    index: int, frames: Iterator[tuple[int, bytes, FrameMeta]]
) -> Iterator[tuple[int, int, bytes, FrameMeta]]:
    for ts, frame, meta in frames:
        yield ts, index, frame, meta


def _relabelled_depth(spec: ReplaySpec, publish_depth: KeyedDepthCallback
                      ) -> KeyedDepthCallback:
    """`publish_depth` with a file's venue and/or symbol replaced, as `_relabelled`."""
    venue, symbol = spec.venue, spec.symbol

    def depth(exchange: str, unified: str, local_ts_ns: int, reset: bool, bids: Levels,
              asks: Levels) -> None:
        publish_depth(venue or exchange, symbol or unified, local_ts_ns, reset, bids, asks)

    return depth


def _relabelled(
    spec: ReplaySpec, publish_quote: PublishQuote, publish_trade: PublishTrade
) -> tuple[PublishQuote, PublishTrade]:
    """Callbacks that present a file's quotes/trades as another venue and/or symbol."""
    venue, symbol = spec.venue, spec.symbol

    def quote(item: Quote) -> None:
        if venue is not None:
            item.exchange = venue
        if symbol is not None:
            item.symbol = symbol
        publish_quote(item)

    def trade(item: Trade) -> None:
        if venue is not None:
            item.exchange = venue
        if symbol is not None:
            item.symbol = symbol
        publish_trade(item)

    return quote, trade
