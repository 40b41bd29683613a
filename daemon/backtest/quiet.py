"""The backtest's side of quiet rows (daemon/core/quiet.py): a chunk as `QuietRows`, and
where a quiet stretch leaves each market.

A stretch of rows before the first one any handler must see changes nothing but the clocks
and, per market, which quote is the latest (the bus view's, the risk gate's, the paper
book's, the strategy's). So the engine runs only the last quote of each market in the
stretch through the per-event path, in row order, each with the clock as at its row, and
then moves the clocks to the stretch's end: every handler is left exactly as the stretch
run event by event would have left it, and nothing else happened in between.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from daemon.backtest.cache import BacktestData
from daemon.core.quiet import QUOTE, QuietRows


def quiet_rows(chunk: BacktestData, clock_ns: int) -> QuietRows:
    """The chunk's columns for the quiet checks, `clock_ns` the clock before its first row."""
    received = np.maximum.accumulate(chunk.local_ts_ns) if len(chunk) else chunk.local_ts_ns
    return QuietRows(chunk.keys, chunk.kind, chunk.key, chunk.local_ts_ns,
                     np.maximum(received, clock_ns), chunk.price, chunk.ask, chunk.stale)


@njit(cache=True)
def last_rows(kind: np.ndarray, key: np.ndarray, start: int, stop: int,
              keys: int) -> tuple[np.ndarray, np.ndarray]:
    """The last quote row and the last trade row of each key in [start, stop) (-1: none)."""
    last_quote = np.full(keys, -1, dtype=np.int64)
    last_trade = np.full(keys, -1, dtype=np.int64)
    for row in range(start, stop):
        if kind[row] == QUOTE:
            last_quote[key[row]] = row
        else:
            last_trade[key[row]] = row
    return last_quote, last_trade
