"""Ingest benchmark: venue frames -> parse -> bus publish -> ring append.

    .venv/bin/python bench/bench_ingest.py [FILES...] [--repeat N]

Default input: the two Binance recordings in ../shared/data (the shipped sample when
../shared is absent). Every line is loaded into memory first; then, best of N runs:

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
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.parsers import make_parser
from adapters.replay import SAMPLE_FILES, iter_frames

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


def best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def time_orjson(frames: Frames, repeat: int) -> float:
    loads = orjson.loads

    def run() -> None:
        for _, frame, _ in frames:
            loads(frame)

    return best_of(repeat, run)


def _noop(_: object) -> None:
    return None


def time_parse(frames: Frames, repeat: int, books: bool) -> float:
    def run() -> None:
        parsers = {venue: make_parser(venue, _noop, _noop, books=books)
                   for venue in {v for _, _, v in frames}}
        for ts, frame, venue in frames:
            parsers[venue].feed(frame, ts)

    return best_of(repeat, run)


def whole_path(subscriber: bool) -> Callable[[Frames], Callable[[], object]] | None:
    try:
        from daemon.bus import Bus
        from daemon.ringbuffer import RingStore
    except ImportError as error:
        print(f"(c) skipped: daemon.bus / daemon.ringbuffer not importable ({error})")
        return None

    def make(frames: Frames) -> Callable[[], object]:
        def run() -> object:
            bus = Bus()
            rings = RingStore()
            bus.add_sink(rings.on_quote, rings.on_trade)
            if subscriber:
                bus.subscribe("watch")
            parsers = {venue: make_parser(venue, bus.publish_quote, bus.publish_trade)
                       for venue in {v for _, _, v in frames}}
            for ts, frame, venue in frames:
                parsers[venue].feed(frame, ts)
            return rings

        return run

    return make


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

    rows: list[tuple[str, float]] = []
    reference = time_orjson(frames, args.repeat)
    rows.append(("(a)  orjson.loads loop", reference))
    rows.append(("(b)  parse, top of book", time_parse(frames, args.repeat, books=False)))
    rows.append(("(b') parse, depth books on", time_parse(frames, args.repeat, books=True)))
    for label, subscriber in (("(c)  parse + bus + ring", False),
                              ("(c') ... + 1 idle subscriber", True)):
        make = whole_path(subscriber)
        if make is not None:
            rows.append((label, best_of(args.repeat, make(frames))))
    print()
    for label, seconds in rows:
        print(f"{label:30s} {rate(count, seconds)}   x{reference / seconds:5.2f} vs (a)")
    timings = dict(rows)
    if "(c)  parse + bus + ring" in timings:
        c, b = timings["(c)  parse + bus + ring"], timings["(b)  parse, top of book"]
        print(f"\nratio (c)/(a) throughput: {reference / c:.2f}   "
              f"(b)/(a): {reference / b:.2f}   (target: (c)/(a) >= 1)")

    # Where the time goes: the same measurements per frame kind.
    by_kind: dict[str, Frames] = defaultdict(list)
    for row in frames:
        by_kind[frame_kind(row[1])].append(row)
    make_whole = whole_path(False)
    print(f"\n{'kind':14s} {'frames':>8s} {'bytes/frame':>11s}   {'orjson':>8s} "
          f"{'parse':>8s} {'+books':>8s} {'whole':>8s}  (ns/frame; share of (a) | of (c))")
    totals: Counter[str] = Counter()
    for kind, rows_of_kind in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        n = len(rows_of_kind)
        size = sum(len(f) for _, f, _ in rows_of_kind) / n
        a = time_orjson(rows_of_kind, args.repeat)
        b = time_parse(rows_of_kind, args.repeat, books=False)
        books = time_parse(rows_of_kind, args.repeat, books=True)
        c = best_of(args.repeat, make_whole(rows_of_kind)) if make_whole else float("nan")
        totals.update({"a": a, "c": c})
        print(f"{kind:14s} {n:8,d} {size:11.0f}   {a / n * 1e9:8.0f} {b / n * 1e9:8.0f} "
              f"{books / n * 1e9:8.0f} {c / n * 1e9:8.0f}  "
              f"({a / reference:4.0%} | {c / timings.get('(c)  parse + bus + ring', c):4.0%})")
    print("\n(depth frames are not decoded on the top-of-book path: bookTicker already "
          "carries the top; `books=True` decodes and applies them)")


if __name__ == "__main__":
    main()
