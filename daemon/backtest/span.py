"""A time span of a backtest's data: the walk-forward split of `--mode sweep`.

`--train FROM..TO` / `--test FROM..TO` run a backtest on the events received in
[FROM, TO) only (receive time, the backtest clock; `TO` exclusive). The engine runs only
those rows of the cache (`span_rows`), so the strategy starts with an empty history at
FROM, as a live start there would: nothing before it is seen, nothing after it runs.

The rows are chosen by the running maximum of the receive time (the order the engine runs
them in is the merged publish order, where a late frame of one file may come a little
out of time order): rows [first running max >= FROM, first running max >= TO), one
contiguous range, which the engine runs as a stepped episode runs its window (no copy).
Recorded depth changes are kept whole: those emitted before the span are in the books at
its first row, as the book would be live.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np

from daemon.backtest.cache import BacktestData, EventSource

NS = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """[start_ns, end_ns) of receive time, ns since the epoch."""

    start_ns: int
    end_ns: int

    def __post_init__(self) -> None:
        if self.end_ns <= self.start_ns:
            raise ValueError(f"empty span {self}: its end is not after its start")

    def __str__(self) -> str:
        return f"{_iso(self.start_ns)}..{_iso(self.end_ns)}"


def _iso(ts_ns: int) -> str:
    moment = datetime.fromtimestamp(ts_ns / NS, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if ts_ns % NS:
        text += f".{(ts_ns % NS) // 1000:06d}".rstrip("0")
    return text


def parse_span(text: str) -> Span:
    """`FROM..TO`, each an ISO 8601 date or date and time (naive: UTC); raises ValueError."""
    start, dots, end = text.partition("..")
    if not dots or not start.strip() or not end.strip():
        raise ValueError(f"expected FROM..TO (ISO 8601 times), got {text!r}")
    return Span(_parse_time(start), _parse_time(end))


def _parse_time(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text.strip()!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * NS + moment.microsecond * 1_000


def span_rows(data: EventSource, span: Span) -> tuple[int, int]:
    """The slice [first, stop) of the rows in the span (see the module docstring): the
    window the engine runs (`Backtest(span=...)`), read from the cache as any run's rows
    are, chunk by chunk; nothing is copied."""
    return data.rows_received(span.start_ns, span.end_ns)


def within(data: EventSource, span: Span) -> BacktestData:
    """The columns in memory cut to the rows in `span` (tests and tools: the engine runs
    the row range `span_rows` instead); may be empty."""
    first, stop = span_rows(data, span)
    data = data.in_memory()
    columns = {name: getattr(data, name)[first:stop]
               for name in ("kind", "key", "local_ts_ns", "exchange_ts_ns", "price", "qty",
                            "ask", "ask_qty", "seq", "stale", "side")}
    depth = data.depth
    if depth is not None:  # changes before the span: applied at its first row
        depth = dataclasses.replace(depth, pos=np.maximum(depth.pos - first, 0))
    return dataclasses.replace(data, trade_id=data.trade_id.slice(first, stop - first),
                               depth=depth, **columns)
