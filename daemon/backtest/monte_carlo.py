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

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapters.recordings.replay import ReplaySpec
from config.settings import Settings
from daemon.backtest.engine import Backtest

BASELINE = "random-inventory"


@dataclass(slots=True)
class AgainstChance:
    """A strategy's P&L and the baseline's P&L per seed, on the same data."""

    strategy: str
    pnl: float
    seed_pnls: dict[int, float] = field(default_factory=dict)
    seed_run_ids: dict[int, str] = field(default_factory=dict)

    @property
    def percentile(self) -> float:
        """Share of seeds whose P&L is below the strategy's, ties half, in percent."""
        pnls = list(self.seed_pnls.values())
        if not pnls:
            return float("nan")
        below = sum(pnl < self.pnl for pnl in pnls)
        ties = sum(pnl == self.pnl for pnl in pnls)
        return 100.0 * (below + 0.5 * ties) / len(pnls)

    def figures(self) -> dict[str, Any]:
        pnls = np.array(list(self.seed_pnls.values()))
        spread = {} if not len(pnls) else {
            "mean": float(pnls.mean()), "std": float(pnls.std(ddof=1)) if len(pnls) > 1 else 0.0,
            "min": float(pnls.min()), "p5": float(np.percentile(pnls, 5)),
            "median": float(statistics.median(pnls)), "p95": float(np.percentile(pnls, 95)),
            "max": float(pnls.max())}
        return {"strategy": self.strategy, "pnl": self.pnl, "baseline": BASELINE,
                "seeds": len(pnls), "percentile": self.percentile, "baseline_pnl": spread,
                "seed_pnls": {str(seed): pnl for seed, pnl in self.seed_pnls.items()},
                "seed_run_ids": {str(seed): run for seed, run in self.seed_run_ids.items()}}

    def lines(self) -> list[str]:
        """The comparison as a few lines of text."""
        figures = self.figures()
        spread = figures["baseline_pnl"]
        if not spread:
            return [f"against chance: no {BASELINE} seed ran"]
        runs = list(self.seed_run_ids.values())
        return [
            f"against chance: {self.strategy} P&L {self.pnl:.4f} vs {len(self.seed_pnls)} "
            f"{BASELINE} seeds {min(self.seed_pnls)}..{max(self.seed_pnls)}",
            f"  baseline P&L: mean {spread['mean']:.4f}, std {spread['std']:.4f}, "
            f"min {spread['min']:.4f}, p5 {spread['p5']:.4f}, median {spread['median']:.4f}, "
            f"p95 {spread['p95']:.4f}, max {spread['max']:.4f}",
            f"  {self.strategy} is at the {self.percentile:.0f}th percentile of chance "
            f"(50 = what a random inventory makes here)",
            f"  seed runs: {runs[0]} .. {runs[-1]} (python main.py --mode post-mortem)",
        ]


def with_seed(settings: Settings, seed: int) -> Settings:
    """The settings with `strategies.random_inventory.seed` replaced."""
    baseline = settings.strategies.random_inventory.model_copy(update={"seed": seed})
    strategies = settings.strategies.model_copy(update={"random_inventory": baseline})
    return settings.model_copy(update={"strategies": strategies})


def seed_run_id(run_id: str, seed: int) -> str:
    return f"{run_id}-seed{seed}"


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
