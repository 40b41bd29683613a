"""Fast path == slow path: the same real frames give the same Quotes and Trades either way.

The Binance parser reads the frame kind from the first bytes and decodes with a decoder
typed for that kind, inlining the common bookTicker and trade cases; everything else goes
to the slow path (orjson + classification + `msgspec.convert`). The slow path is the
reference: feeding every recorded frame to `_feed_slow` directly must publish exactly what
`feed` publishes, and count the same drops. Bybit has the same two paths.

Frames are the recordings in ../shared/data (skipped when absent) and the shipped samples;
the raw-endpoint variant is the same frames' `data` objects, unwrapped from the combined
stream (orjson keeps key order, so the bytes are the venue's own fields in its own order).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.binance.parser import BinanceParser
from adapters.bybit.parser import BybitParser
from adapters.common.parsing import as_frame_bytes
from adapters.recordings.replay import SAMPLE_FILES, iter_frames
from daemon.core.model import Quote, Trade
from daemon.core.routes import Callbacks

SHARED_BINANCE = (
    "binance_spot_btcusdt_20240808.gz",
    "binance_usdm_btcusdt_20240808.gz",
    "binance_usdm_ethusdt_20240718.gz",
)
BYBIT = "bybit_linear_xrpusdt_ob500_20241201.jsonl"

Frames = list[tuple[int, bytes]]
Published = list[Quote | Trade]


def binance_frames(path: Path) -> tuple[str, Frames]:
    venue = ""
    frames: Frames = []
    for ts, frame, meta in iter_frames(path):
        if meta.session is None:
            venue = meta.venue
            frames.append((ts, frame))
    return venue, frames


def unwrapped(frames: Frames) -> Frames:
    """Combined-stream frames as the raw endpoint sends them (`data` only)."""
    raw = []
    for ts, frame in frames:
        message = orjson.loads(frame)
        raw.append((ts, orjson.dumps(message.get("data", message))))
    return raw


def run(make: Callable[[Callbacks], Any], frames: Frames, slow: bool) -> tuple[Published, Any]:
    published: Published = []
    parser = make(Callbacks(on_quote=published.append, on_trade=published.append))
    for ts, frame in frames:
        if slow:
            parser._feed_slow(as_frame_bytes(frame), ts)
        else:
            parser.feed(frame, ts)
    return published, parser


def assert_same(make: Callable[[Callbacks], Any], frames: Frames) -> Published:
    fast, fast_parser = run(make, frames, slow=False)
    slow, slow_parser = run(make, frames, slow=True)
    assert len(fast) == len(slow)
    for index, (left, right) in enumerate(zip(fast, slow, strict=True)):
        assert left == right, f"frame output {index} differs: fast {left} slow {right}"
    assert fast_parser.dropped == slow_parser.dropped
    assert fast_parser.counts == slow_parser.counts
    assert fast_parser.depth_stats == slow_parser.depth_stats
    return fast


def binance_paths(shared_file: Callable[[str], Path]) -> list[Path]:
    return [shared_file(name) for name in SHARED_BINANCE]


@pytest.mark.parametrize("books", [False, True], ids=["top_of_book", "depth_books"])
@pytest.mark.parametrize("raw", [False, True], ids=["combined", "raw_endpoint"])
@pytest.mark.parametrize("source", [*SHARED_BINANCE, *(p.name for p in SAMPLE_FILES)])
def test_binance_fast_path_equals_slow_path(source: str, raw: bool, books: bool,
                                            shared_file: Callable[[str], Path]) -> None:
    sample = next((path for path in SAMPLE_FILES if path.name == source), None)
    path = sample if sample is not None else shared_file(source)
    if not path.is_file():
        pytest.skip(f"shipped sample {path} missing")
    venue, frames = binance_frames(path)
    if raw:
        frames = unwrapped(frames)
    published = assert_same(
        lambda sink: BinanceParser(venue, sink, books=books, depth_quotes=books), frames)
    kinds = {type(event) for event in published}
    assert kinds == {Quote, Trade}, f"{source}: the frames must exercise both record kinds"


def test_bybit_fast_path_equals_slow_path(shared_file: Callable[[str], Path]) -> None:
    path = shared_file(BYBIT)
    frames = [(index, line) for index, line in enumerate(path.read_bytes().splitlines())
              if line.strip()]
    published = assert_same(lambda sink: BybitParser("bybit_linear", sink), frames)
    assert published and all(isinstance(event, Quote) for event in published)
