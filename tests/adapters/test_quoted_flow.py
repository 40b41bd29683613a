"""Quoted client flow: clients accept the desk's quote with probability exp(-k * markup)."""

from __future__ import annotations

import asyncio
import itertools
import math

import numpy as np
import pytest

from adapters.client_flow import run_flow
from adapters.hawkes import HawkesParams
from adapters.quoted_flow import (
    HawkesArrivals,
    LognormalSizes,
    PoissonArrivals,
    QuotedFlowSource,
    fixed_markup,
)
from daemon.core.clock import NS_PER_SECOND
from daemon.core.model import Quote, Side

SYMBOL = "ETH/USDT"
START_NS = 1_721_260_800 * NS_PER_SECOND
SIZES = LognormalSizes(math.log(0.5), 1.0)
K = 0.1  # per bps: 5 bps keeps 61 % of the clients, 10 bps 37 %
ONE_PER_SECOND = PoissonArrivals(1.0)


def source(markup_bps: float, seed: int = 7, k: float = K,
           arrivals: PoissonArrivals | HawkesArrivals = ONE_PER_SECOND) -> QuotedFlowSource:
    return QuotedFlowSource(SYMBOL, arrivals, SIZES, k, seed, fixed_markup(markup_bps))


def run(flow: QuotedFlowSource, seconds: float = 20_000.0) -> list:
    return list(flow.generate(START_NS, START_NS + int(seconds * NS_PER_SECOND),
                              lambda _ts: 3000.0))


def test_acceptance_falls_with_markup_as_exp_minus_k_m() -> None:
    rates = []
    for markup in (0.0, 5.0, 10.0):
        flow = source(markup)
        fills = run(flow)
        tally = flow.tally
        assert tally.accepted == len(fills) and tally.shown == tally.accepted + tally.declined
        expected = math.exp(-K * markup)
        standard_error = math.sqrt(expected * (1 - expected) / tally.shown)
        assert abs(tally.acceptance_rate - expected) <= 4 * standard_error + 1e-12
        rates.append(tally.acceptance_rate)
    assert rates[0] == 1.0 and rates[0] > rates[1] > rates[2]


def test_a_tighter_quote_wins_a_superset_of_the_same_clients() -> None:
    # Common random numbers: one seed, the same candidates, whatever the quote.
    wide = {fill.fill_id for fill in run(source(10.0), 2_000.0)}
    tight = {fill.fill_id for fill in run(source(5.0), 2_000.0)}
    assert wide < tight


def test_fills_are_priced_at_the_markup_shown_on_the_clients_side() -> None:
    flow = QuotedFlowSource(SYMBOL, PoissonArrivals(1.0), SIZES, 0.0, 1,
                            fixed_markup(2.0, 4.0))
    fills = run(flow, 200.0)
    assert {fill.side for fill in fills} == {Side.BUY, Side.SELL}
    for fill in fills:
        markup = 4.0 if fill.side is Side.BUY else -2.0
        assert fill.price == pytest.approx(3000.0 * (1 + markup * 1e-4))
        assert fill.symbol == SYMBOL and fill.qty >= 1e-6
        assert START_NS < fill.ts_ns <= START_NS + 200 * NS_PER_SECOND


@pytest.mark.parametrize("arrivals", [PoissonArrivals(1.0),
                                      HawkesArrivals(HawkesParams(0.5, 1.0, 2.5))])
def test_same_seed_same_fills(arrivals: PoissonArrivals | HawkesArrivals) -> None:
    first = run(source(5.0, seed=3, arrivals=arrivals), 1_000.0)
    again = run(source(5.0, seed=3, arrivals=arrivals), 1_000.0)
    other = run(source(5.0, seed=4, arrivals=arrivals), 1_000.0)
    assert first and first == again
    assert first != other


def test_sizes_follow_the_fitted_lognormal() -> None:
    fills = run(source(0.0))
    fitted = LognormalSizes.fit([fill.qty for fill in fills])
    assert fitted.log_mean == pytest.approx(SIZES.log_mean, abs=0.05)
    assert fitted.log_sd == pytest.approx(SIZES.log_sd, abs=0.05)


def test_client_flow_prices_each_client_off_the_hedge_quote_when_due() -> None:
    quote = Quote("binance_usdm", SYMBOL, 2999.0, 1.0, 3001.0, 1.0, START_NS, START_NS)
    current: list[Quote | None] = [None]
    flow = source(5.0).client_flow(START_NS, lambda: current[0])
    # No market yet: the first minute's clients get no price and leave.
    assert list(flow.due(START_NS + 60 * NS_PER_SECOND)) == []
    current[0] = quote
    end = START_NS + 2_000 * NS_PER_SECOND
    timed = list(flow.due(end))
    expected = [fill for fill in run(source(5.0), 2_000.0)
                if fill.ts_ns > START_NS + 60 * NS_PER_SECOND]
    assert timed == expected
    assert flow.delivered == len(timed)


def test_live_iteration_is_a_flow_source() -> None:
    clock = [START_NS]

    async def sleep(seconds: float) -> None:
        clock[0] += int(seconds * NS_PER_SECOND)

    flow = source(5.0, seed=9)
    received: list = []

    async def main() -> None:
        stream = flow.stream(lambda: 3000.0, clock=lambda: clock[0], sleep=sleep)
        async for fill in stream:
            received.append(fill)
            if len(received) == 20:
                break

    asyncio.run(main())
    assert received == run(source(5.0, seed=9), 1_000.0)[:20]
    with pytest.raises(ValueError, match="mid source"):
        asyncio.run(run_flow(source(5.0), received.append))


async def test_a_backtest_takes_the_quoted_flow_where_the_synthetic_one_plugs(
    tmp_path,
) -> None:
    """The engine builds its flow lazily (`Backtest.flow` is None until the first event);
    a quoted flow set there beforehand is delivered through the runner like any other,
    each client priced off the hedge venue's quote on the bus when due."""
    import gzip

    from adapters.recordings.replay import SAMPLE_FILES, ReplaySpec
    from config.settings import load_settings
    from daemon.backtest.engine import Backtest

    spot = SAMPLE_FILES[0]
    with gzip.open(spot, "rb") as handle:
        first_ns = int(handle.readline().split(b" ", 1)[0])
    settings = load_settings({"data_dir": tmp_path, "strategies": {"internalize": {
        "symbol": "BTC/USDT", "venue": "binance_spot"}}}, env_file=None)
    engine = Backtest(settings, "internalize", [ReplaySpec(spot)], "quoted")
    quoted = QuotedFlowSource("BTC/USDT", PoissonArrivals(2.0), LognormalSizes(math.log(0.01),
                              0.5), K, 5, fixed_markup(5.0))
    engine.flow = quoted.client_flow(
        first_ns, lambda: engine.bus.view.quote("binance_spot", "BTC/USDT"))
    result = await engine.run()
    tally = quoted.tally
    assert tally.accepted > 20 and tally.declined > 10
    assert result.client_fills == tally.accepted
    assert result.client_fills_unpriced == tally.declined + tally.no_mid
    expected = math.exp(-K * 5.0)
    assert abs(tally.acceptance_rate - expected) < 5 * math.sqrt(expected * (1 - expected)
                                                                 / tally.shown)


def test_settings_choose_hawkes_arrivals_at_the_configured_mean_rate() -> None:
    from adapters.quoted_flow import quoted_source
    from config.settings import load_settings

    settings = load_settings({"strategies": {"internalize": {
        "source": "quoted", "quoted_arrivals": "hawkes", "synthetic_rate_hz": 2.0,
        "quoted_hawkes_branching": 0.8, "quoted_hawkes_decay_per_s": 0.5}}}, env_file=None)
    source = quoted_source(settings)
    assert isinstance(source.arrivals, HawkesArrivals)
    params = source.arrivals.params
    assert params.mean_rate_hz == pytest.approx(2.0)
    assert (params.branching_ratio, params.beta) == (pytest.approx(0.8), 0.5)
    # Clustered: gaps vary more than a Poisson stream's (whose coefficient of variation is 1).
    times = np.array(list(itertools.islice(source.arrivals.times(np.random.default_rng(1)),
                                           4_000)))
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(0.5, rel=0.25)
    assert gaps.std() / gaps.mean() > 1.4
