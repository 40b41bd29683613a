"""A strategy against chance: its P&L among the `random-inventory` seeds run on the same data.

`--mode backtest --seeds N` (daemon/backtest/monte_carlo.py) runs the strategy as run `R`
and the Monte Carlo baseline once per seed as runs `R-seed<seed>`. The backtest prints the
comparison as it ends; the post-mortem makes it again from the logs, with its own P&L
figures, whenever it reports `R` (all runs, or `--run R`: then it reads the seed runs' logs
beside, under the same time filter, for their P&L only).

The percentile is the share of seeds whose P&L is below the strategy's, ties counting
half: 50 is what chance makes; a maker with an edge sits well above.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The Monte Carlo baseline strategy (strategies/random_inventory.py).
BASELINE = "random-inventory"
#: The run id of one seed of the baseline run beside run `run`.
SEED_RUN = re.compile(r"(?P<run>.+)-seed(?P<seed>\d+)")


def seed_run_id(run_id: str, seed: int) -> str:
    return f"{run_id}-seed{seed}"


@dataclass(slots=True)
class AgainstChance:
    """A strategy's P&L and the baseline's P&L per seed, on the same data."""

    strategy: str
    pnl: float
    seed_pnls: dict[int, float] = field(default_factory=dict)
    seed_run_ids: dict[int, str] = field(default_factory=dict)
    #: The strategy's run (the seeds' runs are `<run_id>-seed<seed>`).
    run_id: str = ""

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
        figures = {"strategy": self.strategy, "pnl": self.pnl, "baseline": BASELINE,
                   "seeds": len(pnls), "percentile": self.percentile, "baseline_pnl": spread,
                   "seed_pnls": {str(seed): pnl for seed, pnl in self.seed_pnls.items()},
                   "seed_run_ids": {str(seed): run for seed, run in self.seed_run_ids.items()}}
        if self.run_id:
            figures["run_id"] = self.run_id
        return figures

    def lines(self) -> list[str]:
        """The comparison as a few lines of text."""
        figures = self.figures()
        spread = figures["baseline_pnl"]
        if not spread:
            return [f"against chance: no {BASELINE} seed ran"]
        return [
            f"against chance: {self.strategy} P&L {self.pnl:.4f} vs {len(self.seed_pnls)} "
            f"{BASELINE} seeds {min(self.seed_pnls)}..{max(self.seed_pnls)}",
            f"  baseline P&L: mean {spread['mean']:.4f}, std {spread['std']:.4f}, "
            f"min {spread['min']:.4f}, p5 {spread['p5']:.4f}, median {spread['median']:.4f}, "
            f"p95 {spread['p95']:.4f}, max {spread['max']:.4f}",
            f"  {self.strategy} is at the {self.percentile:.0f}th percentile of chance "
            f"(50 = what a random inventory makes here)",
            f"  seed runs: {self.seed_runs_text()} (python main.py --mode post-mortem)",
        ]

    def seed_runs_text(self) -> str:
        runs = [self.seed_run_ids[seed] for seed in sorted(self.seed_run_ids)]
        return f"{runs[0]} .. {runs[-1]}" if runs else "none"


def compare_with_seeds(runs: Iterable[tuple[str, str, float]],
                       more_seeds: Callable[[str], dict[int, tuple[str, float]]] | None = None,
                       ) -> list[AgainstChance]:
    """Each reported run that has baseline seed runs, against them.

    `runs` are (run id, strategy, P&L) of the report; the seed runs among them are paired
    with their strategy's run; `more_seeds(run_id)` may add seed runs the report did not
    read ({seed: (run id, P&L)}, e.g. under `--run R`)."""
    runs = list(runs)
    seeds: dict[str, dict[int, tuple[str, float]]] = {}
    for run_id, strategy, pnl in runs:
        seed_run = SEED_RUN.fullmatch(run_id)
        if strategy == BASELINE and seed_run:
            seeds.setdefault(seed_run["run"], {})[int(seed_run["seed"])] = (run_id, pnl)
    found = []
    for run_id, strategy, pnl in runs:
        if strategy == BASELINE and SEED_RUN.fullmatch(run_id):
            continue
        of_run = {**(more_seeds(run_id) if more_seeds else {}), **seeds.get(run_id, {})}
        if not of_run:
            continue
        ordered = sorted(of_run.items())
        found.append(AgainstChance(strategy, pnl,
                                   {seed: seed_pnl for seed, (_, seed_pnl) in ordered},
                                   {seed: seed_run for seed, (seed_run, _) in ordered},
                                   run_id=run_id))
    return found
