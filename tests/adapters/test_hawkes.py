"""Hawkes arrivals: the exact log-likelihood by hand, the EM fit on simulated paths and on
a real recording's trade arrivals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adapters.hawkes import (
    HawkesParams,
    arrival_times_and_sizes,
    fit_hawkes,
    log_likelihood,
    simulate_hawkes,
)
from daemon.core.model import Trade


def test_log_likelihood_matches_a_hand_computation() -> None:
    # Arrivals at 1 s and 2 s, observed over [0, 3], mu=0.5, alpha=1, beta=1:
    # intensities 0.5 and 0.5 + e^-1; compensator 0.5*3 + (1 - e^-2) + (1 - e^-1).
    expected = (math.log(0.5) + math.log(0.5 + math.exp(-1))
                - (1.5 + (1 - math.exp(-2)) + (1 - math.exp(-1))))
    got = log_likelihood(np.array([1.0, 2.0]), 3.0, 0.5, 1.0, 1.0)
    assert got == pytest.approx(expected, rel=1e-12)


def test_evenly_spaced_arrivals_fit_as_poisson() -> None:
    # No clustering at all: the fit gives (almost) no excitation and mu = n / T.
    times = np.arange(1000, dtype=np.float64)
    fit = fit_hawkes(times)
    assert fit.params.branching_ratio < 0.02
    assert fit.params.mu == pytest.approx(1000 / 999, rel=0.03)


def test_simulated_path_is_deterministic_for_a_seed() -> None:
    params = HawkesParams(0.5, 1.0, 2.5)
    first = simulate_hawkes(params, 500.0, np.random.default_rng(3))
    again = simulate_hawkes(params, 500.0, np.random.default_rng(3))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, simulate_hawkes(params, 500.0, np.random.default_rng(4)))


@pytest.mark.parametrize("true", [HawkesParams(0.5, 1.0, 2.5), HawkesParams(2.0, 6.0, 10.0)])
def test_fit_recovers_the_parameters_of_a_simulated_path(true: HawkesParams) -> None:
    horizon = 20_000.0 if true.mu < 1 else 5_000.0
    times = simulate_hawkes(true, horizon, np.random.default_rng(11))
    # The path's mean rate is the stationary one (a check of the simulation itself).
    assert times.size / horizon == pytest.approx(true.mean_rate_hz, rel=0.1)
    fit = fit_hawkes(times, horizon_s=horizon)
    assert fit.converged
    assert fit.params.mu == pytest.approx(true.mu, rel=0.15)
    assert fit.params.alpha == pytest.approx(true.alpha, rel=0.15)
    assert fit.params.beta == pytest.approx(true.beta, rel=0.15)
    assert fit.params.branching_ratio == pytest.approx(true.branching_ratio, abs=0.05)
    # The fit is at least as likely as the truth (it maximises the likelihood).
    shifted = times - times[0]
    truth_ll = log_likelihood(shifted, horizon - times[0], true.mu, true.alpha, true.beta)
    assert fit.log_likelihood >= truth_ll - 1e-6


def test_scaled_params_keep_the_clustering_at_another_rate() -> None:
    params = HawkesParams(0.5, 1.0, 2.5)
    scaled = params.scaled_to(0.1)
    assert scaled.mean_rate_hz == pytest.approx(0.1)
    assert scaled.branching_ratio == pytest.approx(params.branching_ratio)


def test_prints_of_one_venue_time_are_one_arrival() -> None:
    def trade(ts_ms: int, qty: float) -> Trade:
        return Trade("binance_usdm", "ETH/USDT", 3000.0, qty, "buy", ts_ms * 1_000_000, 0)

    times, sizes = arrival_times_and_sizes(
        [trade(1000, 0.1), trade(1000, 0.2), trade(1500, 1.0), trade(1500, -1.0)])
    assert times.tolist() == [0.0, 0.5]
    assert sizes.tolist() == pytest.approx([0.3, 1.0])


def test_fit_on_recorded_trade_arrivals(shared_file) -> None:
    from adapters.quoted_flow import fit_recording

    fit = fit_recording(shared_file("binance_usdm_ethusdt_20240718.gz"))
    params = fit.hawkes.params
    assert fit.trades > fit.hawkes.arrivals > 100  # the file holds ~3 min of trades
    for value in (params.mu, params.alpha, params.beta, fit.sizes.log_sd):
        assert math.isfinite(value) and value > 0.0
    assert params.branching_ratio < 1.0
    assert math.isfinite(fit.sizes.log_mean)
