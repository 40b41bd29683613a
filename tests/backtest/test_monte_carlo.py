"""A strategy against chance: the random-inventory baseline over the same recording, one
decision log per seed, and the strategy's percentile among them (issue 14, item 4)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from daemon.backtest.monte_carlo import AgainstChance
from tests.backtest.test_engine import backtest, records, run_main

RECORDING = "binance_spot_btcusdt_20240808.gz"


def decisions(data_dir: Path, run_id: str) -> list[dict]:
    """The run's records without the run id, which is all that may differ."""
    return [{k: v for k, v in r.items() if k != "run_id"} for r in records(data_dir, run_id)]


def targets(data_dir: Path, run_id: str) -> list[float]:
    return [r["inputs"]["target"] for r in records(data_dir, run_id)
            if r["type"] == "decision" and r["reason"].startswith("new target")]


def test_percentile_counts_seeds_below_and_half_the_ties() -> None:
    result = AgainstChance("inventory-mm", 1.0, {1: 0.0, 2: 1.0, 3: 2.0, 4: -1.0})
    assert result.percentile == 62.5  # 0.0 and -1.0 below, 1.0 a tie: (2 + 0.5) / 4
    figures = result.figures()
    assert figures["baseline_pnl"]["min"] == -1.0 and figures["baseline_pnl"]["max"] == 2.0
    assert figures["baseline_pnl"]["median"] == 0.5


def test_the_baseline_backtest_is_seeded_and_deterministic(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    recording = shared_file(RECORDING)
    data_dir = tmp_path / "data"
    backtest(data_dir, "random-inventory", "one", recording)
    backtest(data_dir, "random-inventory", "two", recording)
    backtest(data_dir, "random-inventory", "other", recording,
             CRYPTOPIPE_STRATEGIES__RANDOM_INVENTORY__SEED="43")
    assert decisions(data_dir, "one") == decisions(data_dir, "two")
    first = targets(data_dir, "one")
    assert len(first) >= 10 and all(abs(t) <= 0.01 for t in first)  # every 30 s of 346 s
    assert targets(data_dir, "other") != first
    fills = [r for r in records(data_dir, "one") if r["type"] == "fill"]
    assert {f["side"] for f in fills} == {"buy", "sell"}
    assert all(f["strategy"] == "random-inventory" for f in fills)


def test_backtest_with_seeds_places_the_strategy_among_the_baseline_s(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    recording = shared_file(RECORDING)
    data_dir = tmp_path / "data"
    done = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "mc",
                     "--seeds", "3", "--format", "json", "--data", str(recording)], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    chance = orjson.loads(done.stdout)["against_chance"]
    assert chance["strategy"] == "inventory-mm" and chance["seeds"] == 3
    assert chance["seed_run_ids"] == {"42": "mc-seed42", "43": "mc-seed43", "44": "mc-seed44"}
    pnls = [float(p) for p in chance["seed_pnls"].values()]
    assert len(set(pnls)) == 3, "each seed trades differently"
    below = sum(p < chance["pnl"] for p in pnls) + 0.5 * sum(p == chance["pnl"] for p in pnls)
    assert chance["percentile"] == pytest.approx(100 * below / 3)
    for run_id in chance["seed_run_ids"].values():  # each seed's log, for the post-mortem
        assert decisions(data_dir, run_id)
    # The seed 42 run is the default random-inventory backtest, decision for decision
    # (run as "x-seed42": below, the same log is the clash of a later --seeds run).
    backtest(data_dir, "random-inventory", "x-seed42", recording)
    assert decisions(data_dir, "x-seed42") == decisions(data_dir, "mc-seed42")

    text = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "mc2",
                     "--seeds", "2", "--data", str(recording)], data_dir)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "against chance: inventory-mm P&L" in text.stdout
    assert "percentile of chance" in text.stdout
    # A seed's run id that already has a log is refused before anything runs.
    clash = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "x",
                      "--seeds", "1", "--data", str(recording)], data_dir)
    assert clash.returncode == 2 and "'x-seed42' already has a decision log" in clash.stderr
    assert not records(data_dir, "x")


def test_the_post_mortem_shows_the_strategy_against_its_seeds(
    tmp_path: Path, shared_file: Callable[[str], Path],
) -> None:
    """`--seeds N` leaves the strategy's run and one run per seed; the post-mortem of the
    strategy's run (`--run R`) and of every run put them together: the seeds' P&L spread
    and the strategy's percentile in it, from the post-mortem's own P&L figures."""
    from daemon.postmortem.reader import LogFilter
    from daemon.postmortem.report import build_report

    recording = shared_file(RECORDING)
    data_dir = tmp_path / "data"
    done = run_main(["--strategy", "inventory-mm", "--mode", "backtest", "--run-id", "mc",
                     "--seeds", "3", "--data", str(recording)], data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    every = build_report(data_dir, LogFilter(), charts=False)
    pnl = {s.run_id: s.total_pnl for s in every.summaries}
    assert set(pnl) == {"mc", "mc-seed42", "mc-seed43", "mc-seed44"}
    seeds = {seed: pnl[f"mc-seed{seed}"] for seed in (42, 43, 44)}
    below = sum(p < pnl["mc"] for p in seeds.values()) + 0.5 * sum(
        p == pnl["mc"] for p in seeds.values())
    for log_filter in (LogFilter(), LogFilter(run_id="mc")):
        (chance,) = build_report(data_dir, log_filter, charts=False).chance
        assert (chance.run_id, chance.strategy) == ("mc", "inventory-mm")
        assert chance.pnl == pytest.approx(pnl["mc"])
        assert chance.seed_pnls == pytest.approx(seeds)
        assert chance.percentile == pytest.approx(100 * below / 3)
    # The run's own report lists only the run, as before; the comparison comes beside it,
    # in the HTML report too.
    alone = build_report(data_dir, LogFilter(run_id="mc"))
    assert [s.run_id for s in alone.summaries] == ["mc"]
    page = alone.exports["html"].read_text(encoding="utf-8")
    assert "Against chance: mc (inventory-mm) P&amp;L" in page
    assert "among 3 random-inventory seeds (mc-seed42 .. mc-seed44)" in page
    shown = run_main(["--mode", "post-mortem", "--run", "mc"], data_dir)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "Against chance" in shown.stdout and "mc-seed42 .. mc-seed44" in shown.stdout
    as_json = run_main(["--mode", "post-mortem", "--run", "mc", "--format", "json"], data_dir)
    (figures,) = orjson.loads(as_json.stdout)["against_chance"]
    assert figures["seeds"] == 3 and figures["percentile"] == pytest.approx(100 * below / 3)
    # A seed run alone has nothing to be compared with.
    assert not build_report(data_dir, LogFilter(run_id="mc-seed42"), charts=False).chance
