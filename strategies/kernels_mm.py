"""Numba kernels of the inventory market maker (Avellaneda & Stoikov 2008).

Units, as in the paper: `mid` and the quotes are prices (quote currency per base unit);
`inventory` q is in base units (signed: long > 0); `sigma` is the **absolute** volatility
of the mid in price per sqrt(time unit) (the paper's sigma = 2 for a mid of 100; a
strategy holding a log-return volatility converts with `sigma = mid * sigma_log`);
`time_left` (T - t) is in the same time unit as sigma; `gamma` is the risk aversion
(1 / quote currency); `k` the decay of the fill intensity lambda(delta) = A exp(-k delta),
in 1 / price.

The closed forms (paper, eqs. 29-30, with the spread taken symmetric about r):

    reservation price  r      = mid - q gamma sigma^2 (T - t)
    total spread       spread = gamma sigma^2 (T - t) + (2 / gamma) ln(1 + gamma / k)
    quotes             bid = r - spread / 2,  ask = r + spread / 2

A note on the paper's Table 1 (average spread 1.29 for gamma 0.1, k 1.5, sigma 2, T 1):
1.29 is the second term alone, (2/0.1) ln(1 + 0.1/1.5) = 1.2908, i.e. the spread as
T - t -> 0; at t = 0 the formula gives 0.4 + 1.2908 = 1.6908 and its average over the
session is 1.49. The same holds for the other tables (1.33 for gamma 0.01, 1.15 for 0.5).
We implement the formula as published in the text; tests/strategies/test_as_quotes.py pins both
numbers and re-runs the paper's Monte Carlo experiment.

Kernels are pure: floats or numpy arrays in, floats out, no Python objects, no I/O.
`cache=True` keeps the compiled code in `__pycache__` so a restart does not recompile.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from daemon.core.quiet import QUOTE as QUOTE_ROW


@njit(cache=True)
def reservation_price(
    mid: float, inventory: float, time_left: float, sigma: float, gamma: float
) -> float:
    """r = mid - q gamma sigma^2 (T - t): the mid shifted against the inventory."""
    return mid - inventory * gamma * sigma * sigma * time_left


@njit(cache=True)
def optimal_spread(time_left: float, sigma: float, gamma: float, k: float) -> float:
    """gamma sigma^2 (T - t) + (2/gamma) ln(1 + gamma/k): inventory risk + order-flow term."""
    return gamma * sigma * sigma * time_left + (2.0 / gamma) * math.log1p(gamma / k)


@njit(cache=True)
def as_quotes(
    mid: float, inventory: float, time_left: float, sigma: float, gamma: float, k: float
) -> tuple[float, float]:
    """Avellaneda-Stoikov (bid, ask) in absolute prices, centred on the reservation price.

    Contract (checked from outside against the paper): keep this name and signature.
    """
    centre = reservation_price(mid, inventory, time_left, sigma, gamma)
    half_spread = 0.5 * optimal_spread(time_left, sigma, gamma, k)
    return centre - half_spread, centre + half_spread


@njit(cache=True)
def as_quotes_rolling_horizon(
    mid: float, inventory: float, horizon: float, sigma: float, gamma: float, k: float
) -> tuple[float, float]:
    """The 24/7 variant: no session end, so T - t is a constant rolling `horizon`.

    Without it the inventory term would vanish as t -> T and the maker would stop
    caring about its position; a fixed horizon keeps the risk penalty stationary.
    """
    return as_quotes(mid, inventory, horizon, sigma, gamma, k)


@njit(cache=True)
def fit_arrival_decay(
    trade_ts_ns: np.ndarray,
    trade_distance: np.ndarray,
    start_ns: int,
    observed_s: float,
    grid: np.ndarray,
) -> tuple[float, float, int]:
    """Fit lambda(delta) = A exp(-k delta) to trade arrivals beyond each grid distance.

    `trade_distance[i]` is how far from the prevailing mid trade i printed, in price,
    signed by the taker side (a taker buy at the ask of a one-tick book is +tick/2).
    Only rows with `trade_ts_ns >= start_ns` count (the arrays may be a circular buffer
    in any order). For each grid distance delta_j the rate is
    count(distance >= delta_j) / observed_s, in trades per second.

    The fit is least squares of ln(rate) on delta, weighted by the count at each point
    (a Poisson count n has Var(ln n) ~ 1/n, so sparse far points must not dominate),
    over the grid from the last point that still counts every trade (closer points only
    see the flat part inside the spread, where the exponential law does not apply).
    Returns (A in trades/s, k in 1/price, points used); NaN, NaN when fewer than two grid
    points have trades or the rates do not decay.
    """
    point_count = grid.shape[0]
    counts = np.zeros(point_count)
    # A hair of slack so a trade exactly at a grid distance (float rounding of mid +
    # tick/2) is counted at that distance.
    slack = 1e-9 * (grid[point_count - 1] - grid[0] + 1.0)
    for row in range(trade_ts_ns.shape[0]):
        if trade_ts_ns[row] < start_ns:
            continue
        distance = trade_distance[row] + slack
        for j in range(point_count):
            if distance >= grid[j]:
                counts[j] += 1.0
            else:
                break  # the grid is increasing: no further point can count this trade
    # No trade prints inside the spread: the rate is flat out to the touch. Fit from the
    # last grid point that still sees every trade, or the flat part would bias k down.
    first = 0
    while first + 1 < point_count and counts[first + 1] == counts[0]:
        first += 1
    weight_sum = 0.0
    x_mean = 0.0
    y_mean = 0.0
    used = 0
    for j in range(first, point_count):
        if counts[j] > 0.0:
            used += 1
            weight_sum += counts[j]
            x_mean += counts[j] * grid[j]
            y_mean += counts[j] * math.log(counts[j] / observed_s)
    if used < 2 or not observed_s > 0.0:
        return math.nan, math.nan, used
    x_mean /= weight_sum
    y_mean /= weight_sum
    sxx = 0.0
    sxy = 0.0
    for j in range(first, point_count):
        if counts[j] > 0.0:
            dx = grid[j] - x_mean
            sxx += counts[j] * dx * dx
            sxy += counts[j] * dx * (math.log(counts[j] / observed_s) - y_mean)
    if sxx <= 0.0 or sxy >= 0.0:
        return math.nan, math.nan, used
    slope = sxy / sxx
    return math.exp(y_mean - slope * x_mean), -slope, used


@njit(cache=True)
def trades_since(trade_ts_ns: np.ndarray, start_ns: int) -> tuple[int, int]:
    """(count, oldest time) of the rows with `trade_ts_ns >= start_ns`; (0, start_ns) if none."""
    count = 0
    oldest = np.iinfo(np.int64).max
    for row in range(trade_ts_ns.shape[0]):
        ts_ns = trade_ts_ns[row]
        if ts_ns >= start_ns:
            count += 1
            oldest = min(oldest, ts_ns)
    return count, (oldest if count else start_ns)


#: `QuoteCheck.repeated_skip`: why `on_quote` skips a quote of the quoted market.
NO_SKIP = 0
SKIP_STALE = 1
SKIP_CROSSED = 2
SKIP_NARROW = 3


class QuoteCheck(NamedTuple):
    """`InventoryMMStrategy.on_quote`'s quick "nothing to do" check, its state frozen at
    the start of a stretch of rows (`first_requote_row`)."""

    #: The key id of the quoted market in the rows (-1: none there).
    quoted_key: int
    #: Stopped for good: a quote of the market only becomes the latest.
    stopped: bool
    #: A fill or a narrow spread is pending: the next quote is evaluated in full.
    must_evaluate: bool
    #: The skip (SKIP_STALE, SKIP_CROSSED, SKIP_NARROW) a quote of the market leaves
    #: untouched when it was the last one logged and nothing is left to cancel (NO_SKIP:
    #: every skip is an event).
    repeated_skip: int
    stale_after_ns: int
    min_spread_bps: float
    loss_floor: float
    cash: float
    position: float
    books_value: float
    last_eval_ns: int
    last_eval_mid: float
    requote_ns: int
    requote_spacing_ns: int
    price_tolerance: float


@njit(cache=True)
def first_requote_row(kind: np.ndarray, key: np.ndarray, local_ts_ns: np.ndarray,
                      clock_ns: np.ndarray, price: np.ndarray, ask: np.ndarray,
                      stale: np.ndarray, start: int, stop: int, marked_keys: np.ndarray,
                      check: tuple) -> int:  # type: ignore[type-arg]
    """The first of rows [start, stop) that `on_quote` must get: a quote of the quoted
    market failing the quick check (its comparisons, operation for operation, with the
    clock at that row) unless it repeats the last skip, or a quote of a market whose mark
    the strategy keeps (`marked_keys`); trades are read only by the k fit, and a strategy
    fitting k has no quiet rows. `check`: a QuoteCheck as a plain tuple (numba types a
    NamedTuple argument several times slower, and this runs once per stretch of rows)."""
    (quoted_key, stopped, must_evaluate, repeated_skip, stale_after_ns,
     min_spread_bps, loss_floor, cash, position, books_value, last_eval_ns, last_eval_mid,
     requote_ns, requote_spacing_ns, price_tolerance) = check
    for row in range(start, stop):
        k = key[row]
        if kind[row] != QUOTE_ROW:
            continue  # k is configured: `on_trade` reads no trade
        if k != quoted_key:
            if marked_keys[k]:
                return row
            continue
        if stopped:
            continue
        now = clock_ns[row]
        bid, ask_price = price[row], ask[row]
        mid = (bid + ask_price) * 0.5
        elapsed = now - last_eval_ns
        if (not must_evaluate and not stale[row]
                and now - local_ts_ns[row] <= stale_after_ns and bid < ask_price
                and not (min_spread_bps > 0.0 and mid > 0
                         and (ask_price - bid) / mid * 1e4 < min_spread_bps)
                and cash + position * mid + books_value >= loss_floor
                and elapsed < requote_ns
                and not (elapsed >= requote_spacing_ns
                         and abs(mid - last_eval_mid) > price_tolerance * mid)):
            continue  # the quick check passes: nothing to do
        if repeated_skip == NO_SKIP or skip_reason(
                stale[row], now - local_ts_ns[row], bid, ask_price, stale_after_ns,
                min_spread_bps) != repeated_skip:
            return row
    return stop


@njit(cache=True)
def skip_reason(stale: bool, age_ns: int, bid: float, ask: float, stale_after_ns: int,
                min_spread_bps: float) -> int:
    """`_unusable_reason` of a quote, as a code: stale, crossed, narrow, else NO_SKIP (the
    spread test as `Quote.spread_bps` makes it; a narrow market stays narrow below it)."""
    if stale or age_ns > stale_after_ns:
        return SKIP_STALE
    if bid >= ask:
        return SKIP_CROSSED
    mid = (bid + ask) * 0.5
    if mid > 0 and (ask - bid) / mid * 1e4 < min_spread_bps:
        return SKIP_NARROW
    return NO_SKIP


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for the types InventoryMM passes,
    so the first quote of a run does not pay for it inside the strategy callback."""
    trade_ts = np.full(4, -1, dtype=np.int64)[:2]
    distances = np.zeros(4)[:2]
    grid = np.arange(1, 3) * 0.5
    as_quotes_rolling_horizon(100.0, 0.0, 60.0, 0.01, 0.1, 1.5)
    trades_since(trade_ts, 0)
    fit_arrival_decay(trade_ts, distances, 0, 1.0, grid)
