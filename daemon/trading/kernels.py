"""Numba kernels of the paper executor's and the risk gate's quiet checks (daemon/core/quiet.py).

Each scans rows [start, stop) of a backtest chunk and returns the first row whose event the
handler must see (`stop` if none): the same comparisons, in the same order of floating-point
operations, as its `on_quote`/`on_trade` make before they change anything. Per-market
parameters are arrays indexed by the rows' key id.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from daemon.core.quiet import QUOTE

#: `first_loss_check_row` modes of a market: nothing to check (no position); the
#: one-market loss band within the day; only the day's end (the breach is already on);
#: every quote loud (the full check over several markets).
LOSS_NONE = 0
LOSS_BAND = 1
LOSS_DAY = 2
LOSS_LOUD = 3


#: A market's `first_crossing_row` limits with no order and nothing taken: best buy,
#: best sell, lowest taken ask, highest taken bid.
NO_LIMITS = (-math.inf, math.inf, math.inf, -math.inf)


@njit(cache=True)
def first_crossing_row(kind: np.ndarray, key: np.ndarray, price: np.ndarray, ask: np.ndarray,
                       stale: np.ndarray, start: int, stop: int, limits: np.ndarray) -> int:
    """PaperExecutor: the first quote that crosses a resting order or passes a level we
    took liquidity at, or the first print at or through a resting order's price. `limits`
    holds each key's NO_LIMITS fields (a row per key)."""
    for row in range(start, stop):
        best_buy, best_sell, lowest_taken_ask, highest_taken_bid = limits[key[row]]
        if kind[row] == QUOTE:
            if stale[row]:
                continue
            bid, offer = price[row], ask[row]
            if (offer > lowest_taken_ask or bid < highest_taken_bid
                    or offer <= best_buy or bid >= best_sell):
                return row
        elif price[row] <= best_buy or price[row] >= best_sell:
            return row
    return stop


@njit(cache=True)
def first_loss_check_row(kind: np.ndarray, key: np.ndarray, local_ts_ns: np.ndarray,
                         price: np.ndarray, ask: np.ndarray, stale: np.ndarray, start: int,
                         stop: int, mode: np.ndarray, qty: np.ndarray, cash: np.ndarray,
                         day_start_pnl: float, daily_loss_limit: float, day_start_ns: int,
                         day_end_ns: int) -> int:
    """RiskGate: the first quote after which the daily loss check has something to say
    (or cannot be made on the one-market fast path)."""
    for row in range(start, stop):
        if kind[row] != QUOTE or stale[row]:
            continue
        k = key[row]
        if mode[k] == LOSS_NONE:
            continue
        if mode[k] == LOSS_LOUD:
            return row
        now_ns = local_ts_ns[row]
        if not day_start_ns <= now_ns < day_end_ns:
            return row
        if mode[k] == LOSS_DAY:
            continue
        mid = (price[row] + ask[row]) * 0.5
        daily = cash[k] + qty[k] * mid + 0.0 - day_start_pnl
        if not -daily_loss_limit < daily < math.inf:
            return row
    return stop
