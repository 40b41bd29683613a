"""How fast can ingest get in pure Python? A fused parse -> view -> ring, no layers.

    .venv/bin/python bench/bench_ingest_ceiling.py [--repeat N]

bench_ingest.py's target is the whole path (parse + bus + ring) at least as fast as a bare
`orjson.loads` loop. This measures the ceiling of any CPython design that builds the
model's Quote/Trade objects: one function per frame doing the product's work with every
layer removed — the same msgspec decoders, the same Quote/Trade, the view's dict store and
the ring's six memoryview writes written inline, no bus counters, no drop accounting, no
subscriber check, no sequence bookkeeping beyond the bookTicker update id. It is not a
design to adopt (it fuses parser, bus and ring into one function); it says whether
restructuring the Python could reach the target. Depth frames are skipped, as the product
does by default. Prints figures, never asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.binance.schemas import CombinedBookTicker, CombinedTrade
from bench.bench_ingest import DEFAULT_FILES, SAMPLE_FILES, Frames, load
from daemon.core.model import Quote, Trade

ROWS = 2_000_000
TICKER, TRADE, OTHER = 1, 2, 0
KINDS = {b"boo": TICKER, b"tra": TRADE}


class _Key:
    """One key's state: last update id, view slot, ring columns (as memoryviews)."""

    __slots__ = ("last_id", "last_ts", "latest", "next", "symbol", "views")

    def __init__(self, symbol: str, dtypes: tuple[type, ...]) -> None:
        self.symbol = symbol
        self.last_id = -1
        self.latest: dict[str, object] = {}
        self.views = tuple(memoryview(np.empty(ROWS, dtype)) for dtype in dtypes)
        self.next = 0
        self.last_ts = 0


class FusedParser:
    def __init__(self, venue: str) -> None:
        self.venue = venue
        self.symbol = "BTC/USDT:USDT" if venue == "binance_usdm" else "BTC/USDT"
        self.kinds: dict[bytes, int] = {}
        self.quote_keys: dict[str, _Key] = {}
        self.trade_keys: dict[str, _Key] = {}
        self.decode_ticker = msgspec.json.Decoder(CombinedBookTicker, strict=False).decode
        self.decode_trade = msgspec.json.Decoder(CombinedTrade, strict=False).decode

    def feed(self, frame: bytes, ts: int) -> None:
        kind = self.kinds.get(frame[:40])
        if kind is None:
            at = frame.find(b"@", 11, 128)
            kind = self.kinds[frame[:40]] = KINDS.get(frame[at + 1 : at + 4], OTHER)
        if kind == TICKER:
            x = self.decode_ticker(frame).data
            key = self.quote_keys.get(x.s)
            if key is None:
                key = self.quote_keys[x.s] = _Key(self.symbol, (np.int64,) * 2 + (np.float64,) * 4)
            if x.u <= key.last_id or x.b >= x.a:
                return
            key.last_id = x.u
            quote = Quote(self.venue, key.symbol, x.b, x.B, x.a, x.A, (x.T or x.E) * 1_000_000,
                          ts, x.u)
            key.latest[self.venue] = quote
            i = key.next
            local_ts = ts if ts >= key.last_ts else key.last_ts
            views = key.views
            views[0][i] = local_ts
            views[1][i] = quote.exchange_ts_ns
            views[2][i] = quote.bid
            views[3][i] = quote.ask
            views[4][i] = quote.bid_qty
            views[5][i] = quote.ask_qty
            key.last_ts = local_ts
            i += 1
            key.next = i if i != ROWS else 0
        elif kind == TRADE:
            y = self.decode_trade(frame).data
            key = self.trade_keys.get(y.s)
            if key is None:
                key = self.trade_keys[y.s] = _Key(self.symbol, (np.int64,) * 2 + (np.float64,) * 2)
            trade = Trade(self.venue, key.symbol, y.p, y.q, "sell" if y.m else "buy",
                          y.T * 1_000_000, ts, str(y.t))
            i = key.next
            local_ts = ts if ts >= key.last_ts else key.last_ts
            views = key.views
            views[0][i] = local_ts
            views[1][i] = trade.exchange_ts_ns
            views[2][i] = trade.price
            views[3][i] = trade.qty
            key.last_ts = local_ts
            i += 1
            key.next = i if i != ROWS else 0


def best_of(repeat: int, run: object) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    paths = [p for p in DEFAULT_FILES if p.is_file()] or list(SAMPLE_FILES)
    frames: Frames = load(paths)

    def bare() -> None:
        loads = orjson.loads
        for _, frame, _ in frames:
            loads(frame)

    def fused() -> None:
        feeds = {venue: FusedParser(venue).feed for venue in {v for _, _, v in frames}}
        for ts, frame, venue in frames:
            feeds[venue](frame, ts)

    reference, ceiling = best_of(args.repeat, bare), best_of(args.repeat, fused)
    count = len(frames)
    print(f"{count:,} frames; best of {args.repeat}")
    print(f"(a) orjson.loads loop       {reference / count * 1e9:6.0f} ns/frame")
    print(f"fused pure-Python ceiling   {ceiling / count * 1e9:6.0f} ns/frame   "
          f"ratio vs (a) {reference / ceiling:.2f}  (bench_ingest's target: >= 1.0)")


if __name__ == "__main__":
    main()
