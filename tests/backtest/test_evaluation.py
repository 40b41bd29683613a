"""The evaluation of rl-internalize against its baselines (issue 15, item 4): every policy on
the same recording and flow seeds, the P&L split, acceptance under common random numbers,
paired bootstrap differences."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.recordings.replay import ReplaySpec
from daemon.backtest.engine import Backtest
from daemon.backtest.evaluation import (
    POLICY_NAMES,
    Evaluation,
    RunMetrics,
    bootstrap_interval,
    choose_workers,
    evaluate,
    inventory_mtm_by_hand,
    inventory_stats,
    measure,
    paired_difference,
    policy_named,
    policy_settings,
    read_log,
    run_id_for,
)
from daemon.backtest.evaluation_report import warnings
from daemon.core.logs import configure_logging
from tests.helpers.rl_models import write_random_model
from tests.strategies.test_rl_internalize import ETH, GRID, settings_for

SEEDS = 3


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory,
              shared_file: Callable[[str], Path]) -> tuple[Evaluation, Any]:
    """A random-weights agent and the four baselines, 3 flow seeds, on the 178 s ETH file,
    in this process."""
    recording = shared_file(ETH)
    data_dir = tmp_path_factory.mktemp("evaluation")
    configure_logging("test-evaluation", "warning")
    settings = settings_for(data_dir, write_random_model(data_dir / "model", GRID, seed=3))
    evaluation = asyncio.run(evaluate(settings, [ReplaySpec(recording)], "ev", SEEDS,
                                      workers=1))
    return evaluation, settings


def test_every_policy_runs_every_seed_with_its_figures(
        evaluated: tuple[Evaluation, Any]) -> None:
    evaluation, settings = evaluated
    assert evaluation.seeds == [7, 8, 9]  # strategies.internalize.seed and the next two
    assert list(evaluation.summary) == list(POLICY_NAMES)
    assert len(evaluation.runs) == len(POLICY_NAMES) * SEEDS
    for name in POLICY_NAMES:
        runs = evaluation.runs_of(name)
        assert [run.seed for run in runs] == [7, 8, 9]
        for run in runs:
            assert run.run_id == run_id_for("ev", name, run.seed)
            assert list(settings.data_dir.glob(f"decisions/*/{run.run_id}.jsonl"))
            assert run.client_fills > 20 and run.shown > run.accepted > 0
            for metric in ("pnl", "pnl_bps", "markup", "inventory_mtm", "acceptance",
                           "mean_abs_inventory", "max_abs_inventory", "time_at_limit",
                           "hedge_ratio", "markout_1s_bps", "markout_10s_bps",
                           "markout_60s_bps", "sharpe_per_day"):
                assert math.isfinite(getattr(run, metric)), (name, metric)
            assert run.markup + run.hedge_fees + run.crossing + run.inventory_mtm == (
                pytest.approx(run.pnl, abs=1e-9))
        means = evaluation.summary[name]
        assert means["pnl"] == pytest.approx(np.mean([run.pnl for run in runs]))
    # What each policy is: the formulas hedge as they say.
    summary = evaluation.summary
    assert summary["a-s"]["hedge_ratio"] == 0.0 and summary["a-s"]["hedge_fees"] == 0.0
    assert summary["always-hedge"]["hedge_ratio"] > 0.9
    assert summary["never-hedge"]["time_at_limit"] > 0.0  # max_inventory 20 binds
    assert summary["always-hedge"]["mean_abs_inventory"] < summary["never-hedge"][
        "mean_abs_inventory"]


def test_a_fixed_quote_faces_the_same_clients_whoever_hedges(
        evaluated: tuple[Evaluation, Any], shared_file: Callable[[str], Path]) -> None:
    """Always-hedge and never-hedge both quote the base markup (3 bps): same seed, same
    candidates, same draws -> the same acceptance; a wider quote wins fewer of them."""
    evaluation, settings = evaluated
    assert settings.strategies.rl_internalize.base_markup_bps == 3.0
    always = evaluation.runs_of("always-hedge")
    never = evaluation.runs_of("never-hedge")
    for a, n in zip(always, never, strict=True):
        assert (a.shown, a.accepted, a.acceptance) == (n.shown, n.accepted, n.acceptance)
    wider = settings.model_copy(update={"strategies": settings.strategies.model_copy(update={
        "rl_internalize": settings.strategies.rl_internalize.model_copy(
            update={"base_markup_bps": 10.0})})})
    run = _run(wider, "always-hedge", 7, "wide", shared_file)[0]
    assert run.shown == always[0].shown
    assert run.acceptance < always[0].acceptance


def _run(settings: Any, name: str, seed: int, run_id: str,
         shared_file: Callable[[str], Path]) -> tuple[RunMetrics, Backtest, Any]:
    policy = policy_named(name)
    backtest = Backtest(policy_settings(settings, policy, seed), policy.strategy,
                        [ReplaySpec(shared_file(ETH))], run_id)
    result = asyncio.run(backtest.run())
    return measure(backtest, result, name, seed), backtest, result


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_the_split_adds_up_to_the_desk_pnl_from_the_runs_own_log(
        name: str, evaluated: tuple[Evaluation, Any],
        shared_file: Callable[[str], Path]) -> None:
    _, settings = evaluated
    run, backtest, result = _run(settings, name, 8, f"split-{name}", shared_file)
    desk = backtest.strategy.portfolio
    assert run.pnl == desk.pnl_trading(desk.last_mid)
    assert run.markup + run.hedge_fees + run.crossing + run.inventory_mtm == pytest.approx(
        run.pnl, abs=1e-9)
    # Each part against the portfolio's own books, and the rest against its definition.
    assert run.client_fills == len(desk.trades)
    assert run.markup == pytest.approx(sum(t.desk_sign * t.qty * (t.mid - t.client_price)
                                           for t in desk.trades))
    assert -run.hedge_fees == pytest.approx(desk.hedge_fees)
    records = read_log(result.log_files, backtest.strategy.name)
    assert run.inventory_mtm == pytest.approx(inventory_mtm_by_hand(records, desk.last_mid),
                                              abs=1e-6)
    assert run.hedge_base == pytest.approx(sum(row.qty for row in desk.rows
                                               if row.event == "hedge_fill"))
    if name != "a-s":
        assert run.crossing < 0.0  # hedges cross the spread


def test_the_difference_of_a_policy_with_itself_is_zero_with_no_width(
        evaluated: tuple[Evaluation, Any]) -> None:
    evaluation, _ = evaluated
    pnls = [run.pnl for run in evaluation.runs_of("agent")]
    same = paired_difference(pnls, pnls)
    assert (same.mean, same.low, same.high, same.better) == (0.0, 0.0, 0.0, 0.0)
    assert same.seeds == SEEDS
    for difference in evaluation.differences:  # the agent against each baseline
        assert difference.policy == "agent" and difference.baseline != "agent"
        assert difference.low <= difference.mean <= difference.high
        theirs = [getattr(run, difference.metric)
                  for run in evaluation.runs_of(difference.baseline)]
        ours = [getattr(run, difference.metric) for run in evaluation.runs_of("agent")]
        assert difference.mean == pytest.approx(np.mean(np.subtract(ours, theirs)))
    assert {(d.baseline, d.metric) for d in evaluation.differences} == {
        (b, m) for b in POLICY_NAMES[1:] for m in ("pnl", "pnl_bps")}


def test_the_bootstrap_interval_is_seeded_and_covers_the_mean() -> None:
    values = np.random.default_rng(5).normal(1.0, 2.0, 30)
    low, high = bootstrap_interval(values)
    assert (low, high) == bootstrap_interval(values)  # same seed, same interval
    assert low < values.mean() < high
    # The percentile interval of the mean is about mean +- 1.96 sd / sqrt(n).
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert high - low == pytest.approx(2 * half, rel=0.2)
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0])


def test_inventory_stats_weigh_each_level_by_the_time_it_was_held() -> None:
    ts = np.array([10, 30, 60], np.int64)  # 0 until 10, then +5, -10 (the limit), +2
    held = np.array([5.0, -10.0, 2.0])
    mean, peak, at_limit = inventory_stats(ts, held, 0, 100, limit=10.0)
    assert mean == pytest.approx((10 * 0 + 20 * 5 + 30 * 10 + 40 * 2) / 100)
    assert peak == 10.0 and at_limit == pytest.approx(0.3)


def test_two_workers_only_with_more_than_one_free_core() -> None:
    assert choose_workers(15, free=1.8) == 2
    assert choose_workers(15, free=0.9) == 1
    assert choose_workers(1, free=2.0) == 1


def test_rejected_hedges_are_counted_and_warned_about(
        evaluated: tuple[Evaluation, Any], shared_file: Callable[[str], Path]) -> None:
    """A paper account too small to hedge makes always-hedge a never-hedge: said, not hidden."""
    evaluation, settings = evaluated
    assert all(run.hedges_rejected == 0 for run in evaluation.runs)
    assert warnings(evaluation) == []
    venue = settings.venues["binance_usdm"].model_copy(update={"balances": {"USDT": 100.0}})
    poor = settings.model_copy(update={"venues": {**settings.venues, "binance_usdm": venue}})
    run = _run(poor, "always-hedge", 7, "poor", shared_file)[0]
    assert run.hedges_rejected > 10 and run.hedge_base == 0.0
    assert "insufficient balance" in run.rejection
    lines = warnings(Evaluation("poor", [7], [run], 1, 0.0))
    assert len(lines) == 1 and "venues.<venue>.balances" in lines[0]


def test_worker_processes_give_the_figures_of_the_runs_in_this_process(
        evaluated: tuple[Evaluation, Any], shared_file: Callable[[str], Path]) -> None:
    evaluation, settings = evaluated
    parallel = asyncio.run(evaluate(settings, [ReplaySpec(shared_file(ETH))], "par", 1,
                                    workers=2))
    assert parallel.workers == 2 and len(parallel.runs) == len(POLICY_NAMES)

    def figures(run: RunMetrics) -> dict[str, Any]:
        return {k: v for k, v in run.row().items() if k not in ("run_id", "wall_seconds")}

    for name in POLICY_NAMES:
        assert figures(parallel.runs_of(name)[0]) == figures(evaluation.runs_of(name)[0])
