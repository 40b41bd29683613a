"""Ingest benchmark: venue frames -> parse -> bus publish -> ring append.

    .venv/bin/python bench/bench_ingest.py [FILES...] [--repeat N]

Default input: the two Binance recordings in ../shared/data (the shipped sample when
../shared is absent). Every line is loaded into memory first; then, best of N rounds
(the variants take turns within a round, so load from other processes hits all alike):

  (a) a bare `orjson.loads` loop over the frame bytes (the reference: a decode that
      builds dicts and does nothing with them),
  (b) parse only (callbacks do nothing) - top-of-book path, depth books off (default),
  (b') parse with depth books maintained (`books=True`),
  (c) the whole path: parse + `Bus.publish_*` + `RingStore` append (no subscribers),
  (c') as (c) with one conflating subscriber that is never drained (a slow watcher).

It then breaks the time down per frame kind. It prints figures and never asserts time.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.recordings.replay import SAMPLE_FILES, iter_frames
from adapters.venues import make_parser
from daemon.core.routes import Callbacks

# Quiet before daemon modules bind their loggers: ring creation and the idle subscriber's
# trade-queue overflow would otherwise log into the figures.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_FILES = (SHARED / "binance_spot_btcusdt_20240808.gz",
                 SHARED / "binance_usdm_btcusdt_20240808.gz")

Frames = list[tuple[int, bytes, str]]  # (local ts ns, frame, wire venue)


def load(paths: list[Path]) -> Frames:
    frames: Frames = []
    for path in paths:
        for ts, frame, meta in iter_frames(path):
            if meta.session is None:
                frames.append((ts, frame, meta.venue))
    frames.sort(key=lambda row: row[0])  # as the replay merges them
    return frames


def frame_kind(frame: bytes) -> str:
    head = frame[:48]
    if head.startswith(b'{"stream":"'):
        name = head[11:].split(b'"', 1)[0].split(b"@", 1)[-1]
        return name.split(b"@", 1)[0].decode(errors="replace")
    if head.startswith(b'{"lastUpdateId"'):
        return "snapshot"
    if head.startswith(b'{"topic":"'):
        return head[10:].split(b".", 1)[0].decode(errors="replace")
    return "other"


Runner = Callable[[], object]


def measure(runners: dict[str, Runner], repeat: int) -> dict[str, float]:
    """Best time of each runner over `repeat` rounds, the runners taking turns each round:
    a load spike from another process then hits every variant alike, not just one."""
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeat):
        for label, run in runners.items():
            start = time.perf_counter()
            run()
            best[label] = min(best[label], time.perf_counter() - start)
    return best


def orjson_loop(frames: Frames) -> Runner:
    loads = orjson.loads

    def run() -> None:
        for _, frame, _ in frames:
            loads(frame)

    return run


def parse_only(frames: Frames, books: bool) -> Runner:
    venues = {venue for _, _, venue in frames}

    def run() -> None:
        feeds = {venue: make_parser(venue, Callbacks(), books=books).feed for venue in venues}
        for ts, frame, venue in frames:
            feeds[venue](frame, ts)

    return run


def whole_path(frames: Frames, subscriber: bool) -> Runner | None:
    """Parse + bus publish + ring append, or None when those modules are not there."""
    try:
        from daemon.market.bus import Bus
        from daemon.market.ringbuffer import RingStore
    except ImportError:
        return None
    venues = {venue for _, _, venue in frames}

    def run() -> object:
        bus = Bus()
        rings = RingStore()
        bus.add_sink(rings)
        if subscriber:
            bus.subscribe("watch")  # never drained: conflates quotes, overflows trades
        feeds = {venue: make_parser(venue, bus).feed for venue in venues}
        for ts, frame, venue in frames:
            feeds[venue](frame, ts)
        return rings

    return run


def runners_for(frames: Frames, subscriber: bool = True) -> dict[str, Runner]:
    runners: dict[str, Runner] = {
        A: orjson_loop(frames),
        B: parse_only(frames, books=False),
        B_BOOKS: parse_only(frames, books=True),
    }
    whole = whole_path(frames, subscriber=False)
    if whole is not None:
        runners[C] = whole
        idle = whole_path(frames, subscriber=True)
        if subscriber and idle is not None:
            runners[C_SUBSCRIBER] = idle
    return runners


A = "(a)  orjson.loads loop"
B = "(b)  parse, top of book"
B_BOOKS = "(b') parse, depth books on"
C = "(c)  parse + bus + ring"
C_SUBSCRIBER = "(c') ... + 1 idle subscriber"


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds / 1e3:8.0f} k/s  {seconds / count * 1e9:7.0f} ns/frame"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=5, help="best of N runs (default 5)")
    args = parser.parse_args()
    paths = args.files or [p for p in DEFAULT_FILES if p.is_file()] or list(SAMPLE_FILES)
    frames = load(paths)
    count = len(frames)
    print(f"{count:,} frames from {', '.join(p.name for p in paths)}; best of {args.repeat}; "
          f"Python {sys.version.split()[0]}, gc {'on' if gc.isenabled() else 'off'}")

    timings = measure(runners_for(frames), args.repeat)
    if C not in timings:
        print("(c) skipped: daemon.market.bus / daemon.market.ringbuffer are not importable")
    reference = timings[A]
    print()
    for label, seconds in timings.items():
        print(f"{label:30s} {rate(count, seconds)}   x{reference / seconds:5.2f} vs (a)")
    if C in timings:
        print(f"\nthroughput ratio (c)/(a): {reference / timings[C]:.2f}   "
              f"(b)/(a): {reference / timings[B]:.2f}   (target: (c)/(a) >= 1)")

    # Where the time goes: the same measurements per frame kind.
    by_kind: dict[str, Frames] = defaultdict(list)
    for row in frames:
        by_kind[frame_kind(row[1])].append(row)
    header = "".join(f"{column:>8s}" for column in ("(a)", "(b)", "(b')", "(c)"))
    print(f"\n{'kind':12s} {'frames':>8s} {'bytes':>6s}  {header}   "
          "ns/frame; the kind's share of the (a) | (c) totals")
    for kind, rows in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        n = len(rows)
        size = sum(len(frame) for _, frame, _ in rows) / n
        kind_timings = measure(runners_for(rows, subscriber=False), args.repeat)
        a, c = kind_timings[A], kind_timings.get(C, math.nan)
        cells = "".join(f"{kind_timings.get(label, math.nan) / n * 1e9:8.0f}"
                        for label in (A, B, B_BOOKS, C))
        print(f"{kind:12s} {n:8,d} {size:6.0f}  {cells}   "
              f"{a / reference:4.0%} | {c / timings.get(C, math.nan):4.0%}")
    print("\n(b) does not decode depth diffs: bookTicker already carries the top of book; "
          "(b') decodes and applies them to the depth books.")

if __name__ == "__main__":
    main()
