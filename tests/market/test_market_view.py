"""The strategies' market view: volatility resumed over appended rows is the ring's own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daemon.core.model import Quote
from daemon.market.market_view import RingMarketView
from daemon.market.ringbuffer import RingStore
from daemon.market.view import ConsolidatedView

S = 1_000_000_000
T0 = 1_723_161_254 * S


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("retention_s", [3600.0, 20.0])  # 20 s of 5 quotes/s: it wraps
def test_volatility_equals_the_rings_whether_resumed_or_not(retention_s: float) -> None:
    rng = np.random.default_rng(7)
    rings = RingStore(retention_s=retention_s, max_rate_hz=5.0)
    now = [T0]
    market = RingMarketView(ConsolidatedView(), rings, lambda: now[0])
    mid, ts = 60_000.0, T0
    resumed = 0
    for step in range(3_000):
        ts += int(rng.integers(-20_000_000, 400_000_000))  # now and then a step back
        mid *= math.exp(rng.normal(0.0, 1e-4)) if rng.random() < 0.5 else 1.0
        bid = math.nan if rng.random() < 0.01 else round(mid - 0.005, 2)  # a bad row
        rings.on_quote(Quote("v", "BTC/USDT", bid, 1.0, round(mid + 0.005, 2), 1.0, 0, ts))
        if step % 7:
            continue
        # Mostly the feed's time; sometimes behind the newest row (rows after now).
        now[0] = ts if rng.random() < 0.9 else ts - int(rng.integers(0, 2 * S))
        ring = rings.quotes("v", "BTC/USDT")
        assert ring is not None
        for window_s in (30.0, 3600.0):  # one slides, one keeps its first row for long
            expected = ring.volatility(window_s, now[0]).sigma_per_sqrt_second
            assert same(market.volatility("v", "BTC/USDT", window_s), expected), step
            assert same(market.volatility("v", "BTC/USDT", window_s), expected), step
        resumed += 1
    assert resumed > 400
    assert math.isnan(market.volatility("v", "ETH/USDT", 60.0))
