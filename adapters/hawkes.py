"""Hawkes arrivals with an exponential kernel: maximum-likelihood fit (numba) and simulation.

Model: the intensity of arrivals at time t (seconds) is

    lambda(t) = mu + sum_{t_i < t} alpha * exp(-beta * (t - t_i))

`mu` (1/s) is the rate of arrivals that nothing triggered, `alpha` (1/s) the jump of the
intensity an arrival causes, `beta` (1/s) how fast that excitement decays. Each arrival
triggers on average `alpha / beta` more (the branching ratio): below 1 the process is
stationary, with mean rate `mu / (1 - alpha / beta)`.

Fit (`fit_hawkes`): expectation-maximisation on the branching structure (Veen and
Schoenberg 2008), which climbs the exact log-likelihood monotonically and needs no
general optimiser. With the exponential kernel every sum over earlier arrivals is a
recursion, so one iteration is O(n): `A_i = sum_j exp(-beta (t_i - t_j))` and
`B_i = sum_j (t_i - t_j) exp(-beta (t_i - t_j))` over j < i. E-step: arrival i is
background with probability mu / lambda_i, triggered otherwise. M-step:
`mu = E[background] / T`, `alpha / beta = E[triggered] / sum_j (1 - exp(-beta (T - t_j)))`
(the compensator's exact edge term), `beta = E[triggered] / E[sum of trigger lags]`.
`log_likelihood` is the exact log-likelihood, for checking a fit and for the tests.

Simulation (`simulate_hawkes`): exact, event by event (Dassios and Zhao 2013): after an
arrival the next one is the first of a background arrival (exponential at mu) and a
triggered one from the decaying excess intensity; seeded by a numpy Generator.

Recorded trades: a taker order that sweeps several resting orders prints several trades
with one venue time; `arrival_times_and_sizes` merges them into one arrival (their sizes
summed), which is what one client is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import Trade


@dataclass(frozen=True, slots=True)
class HawkesParams:
    """Exponential-kernel Hawkes parameters, all per second (see the module docstring)."""

    mu: float
    alpha: float
    beta: float

    def __post_init__(self) -> None:
        if not (self.mu > 0.0 and self.alpha >= 0.0 and self.beta > 0.0
                and math.isfinite(self.mu + self.alpha + self.beta)):
            raise ValueError(f"Hawkes parameters need mu > 0, alpha >= 0, beta > 0: {self}")

    @property
    def branching_ratio(self) -> float:
        return self.alpha / self.beta

    @property
    def mean_rate_hz(self) -> float:
        """Stationary arrivals per second (inf when the branching ratio is >= 1)."""
        n = self.branching_ratio
        return self.mu / (1.0 - n) if n < 1.0 else math.inf

    def scaled_to(self, rate_hz: float) -> HawkesParams:
        """The same clustering (branching ratio, decay) at another mean rate: market
        trades arrive far more often than one desk's clients do."""
        if not rate_hz > 0.0 or self.branching_ratio >= 1.0:
            raise ValueError("scaling needs a positive rate and a branching ratio below 1")
        factor = rate_hz / self.mean_rate_hz
        return HawkesParams(self.mu * factor, self.alpha * factor, self.beta * factor)


@dataclass(frozen=True, slots=True)
class HawkesFit:
    params: HawkesParams
    log_likelihood: float
    iterations: int
    converged: bool
    arrivals: int
    horizon_s: float


@njit(cache=True, nogil=True)
def log_likelihood(times: np.ndarray, horizon: float, mu: float, alpha: float,
                   beta: float) -> float:
    """Exact log-likelihood of arrival `times` (seconds, sorted, in [0, horizon])."""
    total = 0.0
    excite = 0.0  # A_i: sum over earlier arrivals of exp(-beta * lag)
    previous = 0.0
    for i in range(times.shape[0]):
        t = times[i]
        if i > 0:
            excite = math.exp(-beta * (t - previous)) * (excite + 1.0)
        total += math.log(mu + alpha * excite)
        previous = t
    compensator = mu * horizon
    for i in range(times.shape[0]):
        compensator += alpha / beta * (1.0 - math.exp(-beta * (horizon - times[i])))
    return total - compensator


@njit(cache=True, nogil=True)
def _em(times: np.ndarray, horizon: float, mu: float, alpha: float, beta: float,
        max_iter: int, tol: float) -> tuple[float, float, float, int, bool]:
    n = times.shape[0]
    for iteration in range(1, max_iter + 1):
        background = 0.0
        triggered = 0.0
        lag_weight = 0.0
        excite = 0.0  # A_i
        lagged = 0.0  # B_i
        previous = 0.0
        for i in range(n):
            t = times[i]
            if i > 0:
                gap = t - previous
                decay = math.exp(-beta * gap)
                lagged = decay * (lagged + gap * (excite + 1.0))
                excite = decay * (excite + 1.0)
            intensity = mu + alpha * excite
            background += mu / intensity
            triggered += alpha * excite / intensity
            lag_weight += alpha * lagged / intensity
            previous = t
        new_mu = background / horizon
        new_beta = triggered / lag_weight if lag_weight > 0.0 else beta
        edge = 0.0
        for i in range(n):
            edge += 1.0 - math.exp(-new_beta * (horizon - times[i]))
        new_alpha = new_beta * triggered / edge if edge > 0.0 else 0.0
        change = (abs(new_mu - mu) / mu + abs(new_alpha - alpha) / max(alpha, 1e-12)
                  + abs(new_beta - beta) / beta)
        mu, alpha, beta = new_mu, new_alpha, new_beta
        if change < tol or alpha < 1e-12:
            return mu, alpha, beta, iteration, True
    return mu, alpha, beta, max_iter, False


def fit_hawkes(times_s: np.ndarray | Iterable[float], horizon_s: float | None = None,
               max_iter: int = 2000, tol: float = 1e-9) -> HawkesFit:
    """Maximum-likelihood (EM) fit of mu, alpha, beta to arrival times in seconds.

    The observation window is [first arrival, `horizon_s`] (default: the last arrival);
    times are shifted to start at 0. Needs at least 10 arrivals. A fit that drives alpha
    to 0 (no clustering: a Poisson process) keeps alpha = 0 and mu = arrivals / T.
    """
    times = np.sort(np.asarray(times_s, dtype=np.float64))
    if times.size < 10 or not np.all(np.isfinite(times)):
        raise ValueError(f"a Hawkes fit needs at least 10 finite arrival times, "
                         f"got {times.size}")
    times = times - times[0]
    horizon = float(times[-1] if horizon_s is None else horizon_s - float(np.min(times_s)))
    if not horizon > 0.0:
        raise ValueError("the arrivals span no time")
    rate = times.size / horizon
    # Start: half the arrivals triggered, excitement decaying over ~10 mean gaps.
    beta0 = rate / 10.0
    mu, alpha, beta, iterations, converged = _em(times, horizon, 0.5 * rate, 0.5 * beta0,
                                                 beta0, max_iter, tol)
    if alpha < 1e-12:
        mu, alpha = times.size / horizon, 0.0
    params = HawkesParams(mu, alpha, beta)
    return HawkesFit(params, float(log_likelihood(times, horizon, mu, alpha, beta)),
                     iterations, converged, int(times.size), horizon)


def simulate_hawkes(params: HawkesParams, horizon_s: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Arrival times (seconds, in (0, horizon_s]) of one seeded path."""
    return np.fromiter(hawkes_arrivals(params, rng, horizon_s), dtype=np.float64)


def hawkes_arrivals(params: HawkesParams, rng: np.random.Generator,
                    horizon_s: float = math.inf) -> Iterator[float]:
    """Arrival times in seconds from 0, lazily (an endless stream by default)."""
    mu, alpha, beta = params.mu, params.alpha, params.beta
    t = 0.0
    excess = 0.0  # intensity above mu just after the last arrival
    while True:
        u1, u2 = rng.random(2)
        background_gap = -math.log(1.0 - u1) / mu
        triggered_gap = math.inf
        if excess > 0.0:
            d = 1.0 + beta * math.log(1.0 - u2) / excess
            if d > 0.0:
                triggered_gap = -math.log(d) / beta
        gap = min(background_gap, triggered_gap)
        t += gap
        if t > horizon_s:
            return
        excess = excess * math.exp(-beta * gap) + alpha
        yield t


def arrival_times_and_sizes(trades: Iterable[Trade]) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times in seconds, sizes in base) of recorded trades: the prints of one
    venue time are one taker's arrival, their quantities summed."""
    times: list[int] = []
    sizes: list[float] = []
    for trade in trades:
        if not (trade.qty > 0.0 and math.isfinite(trade.qty)):
            continue
        if times and trade.exchange_ts_ns == times[-1]:
            sizes[-1] += trade.qty
            continue
        times.append(trade.exchange_ts_ns)
        sizes.append(trade.qty)
    order = np.argsort(np.asarray(times, dtype=np.int64), kind="stable")
    stamps = np.asarray(times, dtype=np.int64)[order]
    return (stamps - (stamps[0] if stamps.size else 0)) / NS_PER_SECOND, \
        np.asarray(sizes, dtype=np.float64)[order]
