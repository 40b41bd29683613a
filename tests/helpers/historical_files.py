"""Historical-data files cut from real recordings, in the providers' layouts.

Every value is taken from a recorded Binance frame (../shared/data); nothing is invented.
What the recorded frames do not carry is derived and said so where it is made:
`quote_qty` is price x qty as Binance computes it, an aggTrades row is one recorded trade
as an aggregate of one (its first and last trade id its own), and a Tardis
`book_snapshot_25` row is the top 25 levels of the book rebuilt from the recorded REST
snapshot and depth diffs. Which time goes in which column is each writer's `times`
argument, so a test can put the recording's own receive times where a loader takes its
local time from.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from adapters.common.parsing import L2Book

BOOK_TICKER_HEADER = ("update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,"
                      "transaction_time,event_time")
USDM_TRADES_HEADER = "id,price,qty,quote_qty,time,is_buyer_maker"
USDM_AGG_TRADES_HEADER = ("agg_trade_id,price,quantity,first_trade_id,last_trade_id,"
                          "transact_time,is_buyer_maker")
TARDIS_QUOTES_HEADER = ("exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,"
                        "bid_price,bid_amount")
TARDIS_TRADES_HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
TARDIS_L2_HEADER = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"


@dataclass(frozen=True, slots=True)
class Frame:
    """One recorded frame: its local receive time, stream kind and payload."""

    local_ns: int
    kind: str  # "bookTicker", "trade", "depth" or "snapshot"
    data: dict[str, Any]
    line: bytes  # the recorded line's frame, as recorded


def recorded_frames(path: Path, count: int, kinds: Iterable[str] = ("bookTicker", "trade")
                    ) -> list[Frame]:
    """The first `count` frames of `kinds` in a recording, in file order."""
    wanted = set(kinds)
    frames: list[Frame] = []
    with gzip.open(path, "rb") as handle:
        for line in handle:
            ts, _, raw = line.rstrip(b"\n").partition(b" ")
            message = orjson.loads(raw)
            if "lastUpdateId" in message:
                kind, data = "snapshot", message
            else:
                kind = message["stream"].split("@")[1]
                data = message["data"]
            if kind in wanted:
                frames.append(Frame(int(ts), kind, data, raw))
                if len(frames) >= count:
                    break
    return frames


def local_ms(frame: Frame) -> int:
    return frame.local_ns // 1_000_000


def exchange_ms(frame: Frame) -> int:
    """The frame's own event time; spot bookTicker has none, so its receive time."""
    data = frame.data
    return int(data.get("E") or data.get("T") or local_ms(frame))


def write_csv(path: Path, lines: list[str], header: str | None = None) -> Path:
    """A CSV as Binance publishes it: plain, or zipped (one CSV of the same name inside)
    when `path` ends in .zip; Tardis's are gzip (.csv.gz)."""
    text = "".join(f"{line}\n" for line in ([header] if header else []) + lines)
    if path.suffix == ".zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(path.with_suffix(".csv").name, text)
        path.write_bytes(buffer.getvalue())
    elif path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _flag(value: bool) -> str:
    return "true" if value else "false"


def book_ticker_rows(frames: list[Frame], event_time: Callable[[Frame], int] = exchange_ms
                     ) -> list[str]:
    """USD-M bookTicker rows: update_id, bid, bid qty, ask, ask qty, transaction_time (T),
    event_time (`event_time(frame)`, ms)."""
    return [f"{d['u']},{d['b']},{d['B']},{d['a']},{d['A']},{d.get('T') or d.get('E')},"
            f"{event_time(f)}" for f in frames if f.kind == "bookTicker" for d in [f.data]]


def _quote_qty(data: dict[str, Any]) -> str:
    return str(Decimal(data["p"]) * Decimal(data["q"]))


def trade_rows(frames: list[Frame], spot: bool, time: Callable[[Frame], int] | None = None,
               micros: bool = False) -> list[str]:
    """trades rows: spot id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch; USD-M
    without isBestMatch. `time` defaults to the trade time T; `micros` writes it in
    microseconds, as spot files do from 2025."""
    rows = []
    for frame in frames:
        if frame.kind != "trade":
            continue
        d = frame.data
        ts = time(frame) if time is not None else int(d["T"])
        ts = ts * 1000 if micros else ts
        row = f"{d['t']},{d['p']},{d['q']},{_quote_qty(d)},{ts},{_flag(d['m'])}"
        rows.append(f"{row},{_flag(d.get('M', True))}" if spot else row)
    return rows


def agg_trade_rows(frames: list[Frame], spot: bool) -> list[str]:
    """aggTrades rows, each recorded trade an aggregate of one: agg id, price, qty, first
    and last trade id (the trade's), time, isBuyerMaker (+ isBestMatch on spot)."""
    rows = []
    for frame in frames:
        if frame.kind != "trade":
            continue
        d = frame.data
        row = f"{d['t']},{d['p']},{d['q']},{d['t']},{d['t']},{d['T']},{_flag(d['m'])}"
        rows.append(f"{row},{_flag(d.get('M', True))}" if spot else row)
    return rows


# --- Tardis.dev -------------------------------------------------------------------------


def tardis_quote_rows(frames: list[Frame], exchange: str) -> list[str]:
    """quotes rows from bookTicker frames; local_timestamp the recorded receive time."""
    return [f"{exchange},{d['s']},{exchange_ms(f) * 1000},{f.local_ns // 1000},{d['A']},"
            f"{d['a']},{d['b']},{d['B']}" for f in frames if f.kind == "bookTicker"
            for d in [f.data]]


def tardis_trade_rows(frames: list[Frame], exchange: str) -> list[str]:
    return [f"{exchange},{d['s']},{int(d['T']) * 1000},{f.local_ns // 1000},{d['t']},"
            f"{'sell' if d['m'] else 'buy'},{d['p']},{d['q']}" for f in frames
            if f.kind == "trade" for d in [f.data]]


def tardis_l2_rows(frames: list[Frame], exchange: str, symbol: str) -> list[str]:
    """incremental_book_L2 rows: the REST snapshot (is_snapshot=true, at its receive time),
    then every level of every depth diff after it (false), but those older than the
    snapshot (u < lastUpdateId, which Binance's sync procedure drops)."""
    rows: list[str] = []
    snapshot_id = 0
    for frame in frames:
        d = frame.data
        local_us = frame.local_ns // 1000
        if frame.kind == "snapshot":
            snapshot_id = d["lastUpdateId"]
            ts = int(d.get("E") or local_ms(frame)) * 1000
            rows += [f"{exchange},{symbol},{ts},{local_us},true,bid,{p},{q}"
                     for p, q in d["bids"]]
            rows += [f"{exchange},{symbol},{ts},{local_us},true,ask,{p},{q}"
                     for p, q in d["asks"]]
        elif frame.kind == "depth" and rows and d["u"] >= snapshot_id:
            ts = int(d["E"]) * 1000
            rows += [f"{exchange},{symbol},{ts},{local_us},false,bid,{p},{q}" for p, q in d["b"]]
            rows += [f"{exchange},{symbol},{ts},{local_us},false,ask,{p},{q}" for p, q in d["a"]]
    return rows


def tardis_snapshot_25(frames: list[Frame], exchange: str, symbol: str) -> tuple[str, list[str]]:
    """(header, rows) of book_snapshot_25: the top 25 levels of the book rebuilt from the
    REST snapshot and the diffs after it, one row per diff."""
    header = "exchange,symbol,timestamp,local_timestamp," + ",".join(
        f"asks[{i}].price,asks[{i}].amount,bids[{i}].price,bids[{i}].amount" for i in range(25))
    book: L2Book | None = None
    rows = []
    for frame in frames:
        d = frame.data
        if frame.kind == "snapshot":
            book = L2Book()
            book.load(((float(p), float(q)) for p, q in d["bids"]),
                      ((float(p), float(q)) for p, q in d["asks"]), d["lastUpdateId"])
            continue
        if frame.kind != "depth" or book is None or d["u"] < book.update_id:
            continue
        book.apply_bids((float(p), float(q)) for p, q in d["b"])
        book.apply_asks((float(p), float(q)) for p, q in d["a"])
        bids, asks = book.levels("bid", 25), book.levels("ask", 25)
        cells = []
        for i in range(25):
            ask = asks[i] if i < len(asks) else ("", "")
            bid = bids[i] if i < len(bids) else ("", "")
            cells += [str(ask[0]), str(ask[1]), str(bid[0]), str(bid[1])]
        rows.append(f"{exchange},{symbol},{int(d['E']) * 1000},{frame.local_ns // 1000},"
                    + ",".join(cells))
    return header, rows


def book_tops(frames: list[Frame]) -> list[tuple[float, float, float, float]]:
    """The top of the book rebuilt as the Tardis writers above rebuild it: after the REST
    snapshot, then after each diff that follows it (bid, bid size, ask, ask size)."""
    book: L2Book | None = None
    tops = []
    for frame in frames:
        d = frame.data
        if frame.kind == "snapshot":
            book = L2Book()
            book.load(((float(p), float(q)) for p, q in d["bids"]),
                      ((float(p), float(q)) for p, q in d["asks"]), d["lastUpdateId"])
        elif frame.kind == "depth" and book is not None and d["u"] >= book.update_id:
            book.apply_bids((float(p), float(q)) for p, q in d["b"])
            book.apply_asks((float(p), float(q)) for p, q in d["a"])
        else:
            continue
        top = book.top()
        assert top is not None
        tops.append(top)
    return tops
