"""numba kernels against plain numpy references, and their documented edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.market import kernels

NS = 1_000_000_000
T0 = 1_723_161_255_030_314_667


def random_quotes(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, ...]:
    """A random walk of mids with random spreads and irregular, sometimes equal, times."""
    ts = T0 + np.cumsum(rng.integers(0, 50_000_000, rows)).astype(np.int64)
    mid = 60_000.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-4, rows)))
    spread = rng.uniform(0.01, 5.0, rows)
    return ts, mid - spread / 2, mid + spread / 2


def reference_volatility(ts: np.ndarray, bid: np.ndarray, ask: np.ndarray) -> tuple:
    mid = (bid + ask) / 2
    valid = np.isfinite(mid) & (mid > 0)
    ts, mid = ts[valid], mid[valid]
    returns = np.diff(np.log(mid))
    elapsed = (ts[-1] - ts[0]) / NS
    variance = np.sum(returns**2) / elapsed
    return variance, np.sqrt(variance), np.sum(returns**2), len(returns), elapsed


@pytest.mark.parametrize("seed", range(5))
def test_realised_volatility_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ts, bid, ask = random_quotes(rng, int(rng.integers(2, 20_000)))
    result = kernels.realised_volatility(ts, bid, ask)
    expected = reference_volatility(ts, bid, ask)
    assert result[3] == expected[3]
    np.testing.assert_allclose(result[:3], expected[:3], rtol=1e-9)
    assert result[4] == pytest.approx(expected[4])


def test_realised_volatility_skips_rows_without_a_valid_mid() -> None:
    rng = np.random.default_rng(7)
    ts, bid, ask = random_quotes(rng, 1000)
    bid[[0, 10, 11, 500]] = np.nan
    ask[[20, 999]] = [np.inf, -1e9]
    result = kernels.realised_volatility(ts, bid, ask)
    expected = reference_volatility(ts, bid, ask)
    assert result[3] == expected[3] == 1000 - 6 - 1
    np.testing.assert_allclose(result[:3], expected[:3], rtol=1e-9)


def test_realised_volatility_edge_cases() -> None:
    empty_ts, empty = np.empty(0, np.int64), np.empty(0)
    nan = math.nan
    for result in (
        kernels.realised_volatility(empty_ts, empty, empty),
        kernels.realised_volatility(np.array([T0]), np.array([1.0]), np.array([2.0])),
        kernels.realised_volatility(np.array([T0, T0 + 1]), np.array([nan, 1.0]), np.ones(2)),
    ):
        assert math.isnan(result[0]) and math.isnan(result[1])
        assert result[2:] == (0.0, 0, 0.0)
    # Two quotes at one timestamp: a return, but no time to normalise by.
    prices = np.array([1.0, 2.0])
    same_time = kernels.realised_volatility(np.array([T0, T0]), prices, prices)
    assert math.isnan(same_time[0]) and same_time[2] == pytest.approx(math.log(2) ** 2)
    assert same_time[3] == 1


def test_volatility_units_scale_with_time() -> None:
    # The same returns spread over twice the time: half the variance per second.
    bid = np.array([100.0, 101.0, 100.0, 102.0])
    fast = kernels.realised_volatility(np.arange(4, dtype=np.int64) * NS, bid, bid)
    slow = kernels.realised_volatility(np.arange(4, dtype=np.int64) * 2 * NS, bid, bid)
    assert slow[0] == pytest.approx(fast[0] / 2)
    assert slow[1] == pytest.approx(fast[1] / math.sqrt(2))


@pytest.mark.parametrize("seed", range(3))
def test_mean_spread_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    _, bid, ask = random_quotes(rng, 5_000)
    bid[::17] = np.nan
    mean_abs, mean_bps, rows = kernels.mean_spread(bid, ask)
    valid = np.isfinite(bid)
    assert rows == int(valid.sum())
    assert mean_abs == pytest.approx(np.mean((ask - bid)[valid]), rel=1e-12)
    mid = (bid + ask)[valid] / 2
    assert mean_bps == pytest.approx(np.mean((ask - bid)[valid] / mid * 1e4), rel=1e-12)


def test_mean_spread_of_nothing_is_nan() -> None:
    mean_abs, mean_bps, rows = kernels.mean_spread(np.empty(0), np.empty(0))
    assert math.isnan(mean_abs) and math.isnan(mean_bps) and rows == 0
    assert kernels.mean_spread(np.array([1.0]), np.array([3.0]))[:2] == (2.0, 1e4)


def test_time_weighted_mean_spread_matches_numpy() -> None:
    rng = np.random.default_rng(11)
    ts, bid, ask = random_quotes(rng, 3_000)
    end = int(ts[-1]) + 123_456_789
    durations = np.diff(np.append(ts, end)).astype(float)
    spread = ask - bid
    mid = (bid + ask) / 2
    mean_abs, mean_bps, covered = kernels.time_weighted_mean_spread(ts, bid, ask, end)
    assert mean_abs == pytest.approx(np.sum(spread * durations) / durations.sum(), rel=1e-9)
    assert mean_bps == pytest.approx(np.sum(spread / mid * 1e4 * durations) / durations.sum(),
                                     rel=1e-9)
    assert covered == pytest.approx((end - ts[0]) / NS)
    one_row = kernels.time_weighted_mean_spread(np.array([T0]), np.ones(1), np.ones(1) * 2, T0)
    assert math.isnan(one_row[0]) and one_row[2] == 0.0


@settings(max_examples=200, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 100 * NS), max_size=200),
    start=st.integers(-10 * NS, 100 * NS),
    length=st.integers(0, 120 * NS),
)
def test_arrival_rate_counts_trades_per_second(offsets: list[int], start: int, length: int) -> None:
    ts = np.sort(np.array(offsets, dtype=np.int64)) + T0
    rate = kernels.arrival_rate(ts, T0 + start, T0 + start + length)
    if length == 0:
        assert math.isnan(rate)
    else:
        inside = np.sum((ts >= T0 + start) & (ts <= T0 + start + length))
        assert rate == pytest.approx(inside / (length / NS))


def reference_rates_beyond(trade_ts, price, signed_qty, quote_ts, bid, ask, distances, seconds):
    counts = np.zeros(len(distances))
    for ts, p, q in zip(trade_ts, price, signed_qty, strict=True):
        prevailing = np.searchsorted(quote_ts, ts, "right") - 1
        if prevailing < 0 or q == 0:
            continue
        mid = (bid[prevailing] + ask[prevailing]) / 2
        distance = (p - mid) if q > 0 else (mid - p)
        counts += distance >= distances
    return counts / seconds


@pytest.mark.parametrize("seed", range(4))
def test_arrival_rates_beyond_match_a_brute_force_join(seed: int) -> None:
    rng = np.random.default_rng(seed)
    quote_ts, bid, ask = random_quotes(rng, 2_000)
    trade_count = 3_000
    trade_ts = np.sort(rng.integers(quote_ts[0] - NS, quote_ts[-1] + NS, trade_count))
    mid_at = (bid + ask)[np.clip(np.searchsorted(quote_ts, trade_ts, "right") - 1, 0, None)] / 2
    price = mid_at + rng.normal(0, 3.0, trade_count)
    signed_qty = rng.choice([-1.0, 1.0, 0.0], trade_count, p=[0.45, 0.45, 0.1]) * rng.uniform(
        0.001, 2, trade_count)
    distances = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 5.0])
    rates = kernels.arrival_rates_beyond(trade_ts, price, signed_qty, quote_ts, bid, ask,
                                         distances, 42.0)
    expected = reference_rates_beyond(trade_ts, price, signed_qty, quote_ts, bid, ask,
                                      distances, 42.0)
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    assert np.all(np.diff(rates) <= 0)  # farther from the mid, fewer prints


def test_arrival_rates_beyond_edge_cases() -> None:
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0)
    distances = np.array([0.0, 1.0])
    assert kernels.arrival_rates_beyond(empty_i, empty_f, empty_f, empty_i, empty_f, empty_f,
                                        distances, 10.0).tolist() == [0.0, 0.0]
    no_time = kernels.arrival_rates_beyond(empty_i, empty_f, empty_f, empty_i, empty_f, empty_f,
                                           distances, 0.0)
    assert np.isnan(no_time).all()


def test_warm_up_compiles_every_ring_kernel() -> None:
    from daemon.market.ringbuffer import warm_up_kernels

    assert warm_up_kernels() >= 0.0


def test_strategy_kernels_warm_up() -> None:
    from strategies.kernels_mm import warm_up

    warm_up()  # every InventoryMM kernel accepts the types it is warmed with
