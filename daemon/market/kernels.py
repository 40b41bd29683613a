"""Numba kernels over ring-buffer windows: volatility, spread, trade intensity.

Pure numeric: arguments are numpy columns as `daemon.market.ringbuffer` hands them out (time
order, `local_ts_ns` int64 non-decreasing, prices float64), results are floats. No
Python objects, no allocation per row, no I/O, so the same kernels serve the live daemon,
the backtest engine and the tests.

Conventions shared by every kernel:

- Times are integer nanoseconds; rates and volatilities are per **second**.
- A row whose mid is not a positive finite number (NaN, inf, <= 0: a malformed quote the
  ring recorded as NaN) is skipped, as if it had not been published.
- Too little data yields NaN, never 0 and never an exception: "unknown" must not look
  like "calm" or "no trades" to a strategy. Counts returned alongside say why.

`@njit(cache=True)` keeps the compiled code in `__pycache__`, so a restarted daemon does
not pay the compile time again; `nogil=True` lets a backtest run kernels from threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from daemon.core.clock import NS_PER_SECOND

BPS_PER_UNIT = 1e4


@njit(cache=True, nogil=True)
def _valid_mid(bid: float, ask: float) -> float:
    """Mid of one row, or NaN when the row cannot be priced (NaN, inf or non-positive)."""
    mid = 0.5 * (bid + ask)
    if mid > 0.0 and mid < math.inf:
        return mid
    return math.nan


@njit(cache=True, nogil=True)
def realised_volatility(
    local_ts_ns: np.ndarray, bid: np.ndarray, ask: np.ndarray
) -> tuple[float, float, float, int, float]:
    """Realised volatility of log mid returns over one window of quotes.

    Returns `(variance_per_second, sigma_per_sqrt_second, realised_variance,
    return_count, elapsed_seconds)`:

    - `realised_variance` = sum of squared log returns between consecutive valid mids
      (no mean subtracted: at tick frequency the drift is orders of magnitude below the
      noise, and subtracting it would bias the estimate down on short windows).
    - `variance_per_second` = realised_variance / elapsed_seconds, where elapsed_seconds
      is the time between the first and the last valid row of the window (not the
      requested window length, so a half-filled window after start-up is not diluted).
      Unit: (log return)^2 per second.
    - `sigma_per_sqrt_second` = sqrt(variance_per_second). Unit: log return per
      sqrt(second); the 1-sigma log move over a horizon of tau seconds is
      `sigma_per_sqrt_second * sqrt(tau)`. This is the sigma of Avellaneda-Stoikov in
      relative terms; multiply by the mid for price units.

    Fewer than two valid rows: (NaN, NaN, 0.0, 0, 0.0). Two or more valid rows that all
    share one timestamp: (NaN, NaN, realised_variance, return_count, 0.0).
    """
    sum_squared_returns, return_count, _, first_ts_ns, last_ts_ns = accumulate_log_returns(
        local_ts_ns, bid, ask, 0.0, 0, math.nan, 0, 0
    )
    return volatility_of_returns(sum_squared_returns, return_count, first_ts_ns, last_ts_ns)


@njit(cache=True, nogil=True)
def accumulate_log_returns(
    local_ts_ns: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    sum_squared_returns: float,
    return_count: int,
    previous_mid: float,
    first_ts_ns: int,
    last_ts_ns: int,
) -> tuple[float, int, float, int, int]:
    """The pass of `realised_volatility` over rows, resumable: given the state a pass over
    the rows before these ended in (start from `(0.0, 0, NaN, 0, 0)`), returns the state
    after these, `(sum_squared_returns, return_count, previous_mid, first_ts_ns,
    last_ts_ns)`. A pass resumed over rows appended since gives exactly what one pass over
    all of them gives: the same additions in the same order."""
    for row in range(local_ts_ns.shape[0]):
        mid = _valid_mid(bid[row], ask[row])
        if math.isnan(mid):
            continue
        if math.isnan(previous_mid):
            first_ts_ns = local_ts_ns[row]
        else:
            # Most top-of-book updates change only a size: the return is exactly 0, and
            # skipping the log for them halves the kernel's time on real feeds.
            if mid != previous_mid:
                log_return = math.log(mid / previous_mid)
                sum_squared_returns += log_return * log_return
            return_count += 1
        last_ts_ns = local_ts_ns[row]
        previous_mid = mid
    return sum_squared_returns, return_count, previous_mid, first_ts_ns, last_ts_ns


@njit(cache=True, nogil=True)
def squared_log_returns(bid: np.ndarray, ask: np.ndarray, previous_mid: float,
                        out: np.ndarray) -> float:
    """Each row's term of `accumulate_log_returns`, kept so a sliding window need not take
    the logs again: the squared log return from the previous valid mid (`previous_mid`
    before the first row; NaN: none), 0.0 where the mid did not change or no valid mid
    came before, NaN for a row with no valid mid. Returns the last valid mid."""
    for row in range(bid.shape[0]):
        mid = _valid_mid(bid[row], ask[row])
        if math.isnan(mid):
            out[row] = math.nan
            continue
        if math.isnan(previous_mid) or mid == previous_mid:
            out[row] = 0.0
        else:
            log_return = math.log(mid / previous_mid)
            out[row] = log_return * log_return
        previous_mid = mid
    return previous_mid


@njit(cache=True, nogil=True)
def sum_squared_returns(local_ts_ns: np.ndarray,
                        squared: np.ndarray) -> tuple[float, int, int, int]:
    """`accumulate_log_returns` from no state over rows whose terms are known
    (`squared_log_returns`): the first valid row adds nothing, each later one its term, in
    order (a 0.0 adds nothing either), so the same number as the pass that takes the logs.
    Returns (sum_squared_returns, return_count, first_ts_ns, last_ts_ns)."""
    total = 0.0
    count = 0
    first_ts_ns = 0
    last_ts_ns = 0
    seen = False
    for row in range(squared.shape[0]):
        term = squared[row]
        if math.isnan(term):
            continue
        if seen:
            total += term
            count += 1
        else:
            seen = True
            first_ts_ns = local_ts_ns[row]
        last_ts_ns = local_ts_ns[row]
    return total, count, first_ts_ns, last_ts_ns


@njit(cache=True, nogil=True)
def volatility_of_returns(
    sum_squared_returns: float, return_count: int, first_ts_ns: int, last_ts_ns: int
) -> tuple[float, float, float, int, float]:
    """`realised_volatility`'s result from the state of a finished pass."""
    if return_count == 0:
        return math.nan, math.nan, 0.0, 0, 0.0
    elapsed_seconds = (last_ts_ns - first_ts_ns) / NS_PER_SECOND
    if elapsed_seconds <= 0.0:
        return math.nan, math.nan, sum_squared_returns, return_count, 0.0
    variance_per_second = sum_squared_returns / elapsed_seconds
    return (
        variance_per_second,
        math.sqrt(variance_per_second),
        sum_squared_returns,
        return_count,
        elapsed_seconds,
    )


@njit(cache=True, nogil=True)
def mean_spread(bid: np.ndarray, ask: np.ndarray) -> tuple[float, float, int]:
    """Row-weighted mean quoted spread: `(mean_spread, mean_spread_bps, row_count)`.

    Each top-of-book update counts once. `mean_spread` is in price units (ask - bid),
    `mean_spread_bps` averages (ask - bid) / mid * 1e4 row by row. No valid row:
    (NaN, NaN, 0).
    """
    sum_spread = 0.0
    sum_spread_bps = 0.0
    row_count = 0
    for row in range(bid.shape[0]):
        mid = _valid_mid(bid[row], ask[row])
        if math.isnan(mid):
            continue
        spread = ask[row] - bid[row]
        sum_spread += spread
        sum_spread_bps += spread / mid * BPS_PER_UNIT
        row_count += 1
    if row_count == 0:
        return math.nan, math.nan, 0
    return sum_spread / row_count, sum_spread_bps / row_count, row_count


@njit(cache=True, nogil=True)
def time_weighted_mean_spread(
    local_ts_ns: np.ndarray, bid: np.ndarray, ask: np.ndarray, end_ns: int
) -> tuple[float, float, float]:
    """Time-weighted mean spread: `(mean_spread, mean_spread_bps, covered_seconds)`.

    Each row's spread holds from its timestamp until the next row's (the last row's until
    `end_ns`): the spread a resting order would have seen at a random moment, which the
    row-weighted mean overstates when updates cluster in volatile, wide-spread periods.
    The spread prevailing before the window's first row is not known here and not
    counted. Zero covered time (empty window, one row at `end_ns`): (NaN, NaN, 0.0).
    """
    weighted_spread = 0.0
    weighted_spread_bps = 0.0
    covered_ns = 0
    row_count = local_ts_ns.shape[0]
    for row in range(row_count):
        next_ts_ns = local_ts_ns[row + 1] if row + 1 < row_count else end_ns
        duration_ns = next_ts_ns - local_ts_ns[row]
        if duration_ns <= 0:
            continue
        mid = _valid_mid(bid[row], ask[row])
        if math.isnan(mid):
            continue
        spread = ask[row] - bid[row]
        weighted_spread += spread * duration_ns
        weighted_spread_bps += spread / mid * BPS_PER_UNIT * duration_ns
        covered_ns += duration_ns
    if covered_ns == 0:
        return math.nan, math.nan, 0.0
    return (
        weighted_spread / covered_ns,
        weighted_spread_bps / covered_ns,
        covered_ns / NS_PER_SECOND,
    )


@njit(cache=True, nogil=True)
def arrival_rate(local_ts_ns: np.ndarray, start_ns: int, end_ns: int) -> float:
    """Trades per second with `start_ns <= local_ts_ns <= end_ns`.

    The denominator is the observed period `end_ns - start_ns` (the caller passes the
    part of the window the ring actually covers). Empty period (end <= start): NaN;
    a positive period without trades: 0.0.
    """
    if end_ns <= start_ns:
        return math.nan
    trade_count = 0
    for row in range(local_ts_ns.shape[0]):
        ts_ns = local_ts_ns[row]
        if ts_ns >= start_ns and ts_ns <= end_ns:
            trade_count += 1
    return trade_count / ((end_ns - start_ns) / NS_PER_SECOND)


@njit(cache=True, nogil=True)
def arrival_rates_beyond(
    trade_ts_ns: np.ndarray,
    trade_price: np.ndarray,
    trade_signed_qty: np.ndarray,
    quote_ts_ns: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    distances: np.ndarray,
    observed_seconds: float,
) -> np.ndarray:
    """Rate (trades/s) of trades printing at or beyond each distance from the mid.

    For every trade, the prevailing mid is that of the last quote with
    `quote_ts_ns <= trade_ts_ns` (as-of join by a two-pointer merge; both inputs are in
    time order). The distance is signed by the taker side: `price - mid` for a taker buy
    (positive qty: it lifted offers above the mid), `mid - price` for a taker sell, in
    price units. `rates[k]` counts trades with distance >= `distances[k]`, divided by
    `observed_seconds`: lambda(delta) of Avellaneda-Stoikov, whose decay in delta
    estimates k.

    Trades before the first quote, trades with zero qty and quotes without a valid mid are
    skipped. `observed_seconds <= 0`: all NaN.
    """
    distance_count = distances.shape[0]
    rates = np.zeros(distance_count, dtype=np.float64)
    if not observed_seconds > 0.0:
        rates[:] = math.nan
        return rates
    quote_count = quote_ts_ns.shape[0]
    quote_row = -1
    for trade_row in range(trade_ts_ns.shape[0]):
        ts_ns = trade_ts_ns[trade_row]
        while quote_row + 1 < quote_count and quote_ts_ns[quote_row + 1] <= ts_ns:
            quote_row += 1
        if quote_row < 0:
            continue
        mid = _valid_mid(bid[quote_row], ask[quote_row])
        signed_qty = trade_signed_qty[trade_row]
        if math.isnan(mid) or signed_qty == 0.0:
            continue
        if signed_qty > 0.0:
            distance = trade_price[trade_row] - mid
        else:
            distance = mid - trade_price[trade_row]
        for k in range(distance_count):
            if distance >= distances[k]:
                rates[k] += 1.0
    for k in range(distance_count):
        rates[k] /= observed_seconds
    return rates
