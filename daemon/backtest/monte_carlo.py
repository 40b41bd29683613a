"""A strategy against chance: the same data through N seeds of `random-inventory`.

    python main.py --strategy inventory-mm --mode backtest --data FILE --seeds 20

runs the strategy's backtest as usual, then one backtest of the Monte Carlo baseline
(strategies/random_inventory.py) per seed, `strategies.random_inventory.seed` + 0 .. N-1,
each with its own decision log (run id `<run>-seed<seed>`), so the post-mortem can report
every one of them next to the strategy's. It prints the spread of the baseline's P&L and
where the strategy's P&L falls in it: its percentile, the share of seeds that made less
(ties count half). 50 is what chance makes; a maker with an edge should sit well above.

P&L is the risk gate's, the same figure for every strategy: cash plus position marked at
the last mid, fees included, in quote currency.
"""

from __future__ import annotations

from adapters.recordings.replay import ReplaySpec
from config.settings import Settings
from daemon.backtest.engine import Backtest
from daemon.postmortem.chance import BASELINE, AgainstChance, seed_run_id

__all__ = ["BASELINE", "AgainstChance", "against_chance", "seed_range", "seed_run_id"]


def with_seed(settings: Settings, seed: int) -> Settings:
    """The settings with `strategies.random_inventory.seed` replaced."""
    baseline = settings.strategies.random_inventory.model_copy(update={"seed": seed})
    strategies = settings.strategies.model_copy(update={"random_inventory": baseline})
    return settings.model_copy(update={"strategies": strategies})


async def baseline_pnl(settings: Settings, specs: list[ReplaySpec], run_id: str) -> float:
    """One backtest of the baseline (on a bus of its own); its P&L."""
    backtest = Backtest(settings, BASELINE, specs, run_id)
    await backtest.run()
    return backtest.executor.gate.pnl()


def seed_range(settings: Settings, seeds: int) -> range:
    """The baseline's seeds: the configured one and the next `seeds` - 1."""
    first = settings.strategies.random_inventory.seed
    return range(first, first + seeds)


async def against_chance(settings: Settings, specs: list[ReplaySpec], strategy: str,
                         pnl: float, run_id: str, seeds: int) -> AgainstChance:
    """The baseline over `specs` for `seeds` seeds from the configured one, next to the
    strategy's `pnl` on the same data."""
    result = AgainstChance(strategy, pnl)
    for seed in seed_range(settings, seeds):
        seed_run = seed_run_id(run_id, seed)
        result.seed_pnls[seed] = await baseline_pnl(with_seed(settings, seed), specs, seed_run)
        result.seed_run_ids[seed] = seed_run
    return result
