"""rl-internalize: the action grid, numpy inference, the formula policies, and the desk
on the real engine with the quoted client flow (issue 15)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from adapters.recordings.replay import ReplaySpec
from config.settings import load_settings
from daemon.backtest.engine import Backtest
from strategies.qnetwork import NumpyQNetwork
from strategies.rl_internalize import (
    FEATURES,
    ActionGrid,
    AgentPolicy,
    AvellanedaStoikovPolicy,
    DeskAction,
    DeskState,
)
from tests.helpers.rl_models import write_random_model

ETH = "binance_usdm_ethusdt_20240718.gz"
VENUE, SYMBOL = "binance_usdm", "ETH/USDT:USDT"
GRID = ActionGrid((-4.0, -2.0, 0.0, 2.0, 4.0), (0.0, 0.5, 1.0))


def test_the_grid_numbers_every_shade_with_every_hedge_fraction() -> None:
    assert GRID.size == 15
    assert GRID.action(0) == DeskAction(-4.0, 0.0)
    assert GRID.action(7) == DeskAction(0.0, 0.5)
    assert [GRID.index(GRID.action(i)) for i in range(GRID.size)] == list(range(15))
    with pytest.raises(ValueError, match="outside the grid"):
        GRID.action(15)


def test_numpy_q_values_are_the_layers_by_hand(tmp_path: Path) -> None:
    w0 = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    b0 = np.array([0.0, -1.0], np.float32)
    w1 = np.array([[1.0, 1.0], [-1.0, 3.0], [0.0, 0.0]], np.float32)
    b1 = np.array([0.0, 0.0, 0.25], np.float32)
    network = NumpyQNetwork.load(NumpyQNetwork([(w0, b0), (w1, b1)]).save(tmp_path / "q.npz"))
    hidden = np.maximum([1.0 * 2 - 1.0 * 1, 0.5 * 2 + 2.0 * 1 - 1.0], 0.0)  # obs (2, 1)
    expected = [hidden[0] + hidden[1], -hidden[0] + 3 * hidden[1], 0.25]
    assert network.q_values(np.array([2.0, 1.0])) == pytest.approx(expected)
    assert network.action(np.array([2.0, 1.0])) == 1


def test_a_model_trained_on_other_features_is_refused(tmp_path: Path) -> None:
    folder = write_random_model(tmp_path / "m", GRID)
    network = NumpyQNetwork.load(folder)
    with pytest.raises(ValueError, match="retrain"):
        AgentPolicy(network, GRID, features=("inventory",))
    assert AgentPolicy.load(folder).grid == GRID


def test_the_avellaneda_stoikov_shade_is_q_gamma_sigma2_tau_in_bps() -> None:
    state = DeskState(0, inventory=10.0, max_inventory=50.0, mid=2_000.0, sigma=5e-5,
                      horizon_s=300.0)
    action = AvellanedaStoikovPolicy(gamma=0.1)(np.zeros(len(FEATURES)), state)
    shade_price = 10.0 * 0.1 * (5e-5 * 2_000.0) ** 2 * 300.0  # 3 USDT: 15 bps
    assert action == DeskAction(pytest.approx(shade_price / 2_000.0 * 1e4), 0.0)
    short = AvellanedaStoikovPolicy(gamma=0.1)(np.zeros(8), DeskState(0, -10.0, 50.0, 2_000.0,
                                                                      5e-5, 300.0))
    assert short.shade_bps == pytest.approx(-action.shade_bps)
    unknown = AvellanedaStoikovPolicy(gamma=0.1)(np.zeros(8), DeskState(0, 5.0, 50.0, math.nan,
                                                                        math.nan, 300.0))
    assert unknown == DeskAction(0.0, 0.0)


def settings_for(data_dir: Path, model: Path | None = None, **internalize: Any) -> Any:
    return load_settings({
        "data_dir": data_dir,
        "venues": {VENUE: {"enabled": True, "balances": {"USDT": 1_000_000.0},
                           "markets": {SYMBOL: {"tick": 0.01, "lot": 0.001}}}},
        "strategies": {"internalize": {"venue": VENUE, "symbol": SYMBOL, "source": "quoted",
                                       "max_inventory": 20.0, **internalize},
                       "rl_internalize": {"model": model}},
    }, env_file=None)


def records(data_dir: Path, run_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in sorted(data_dir.glob(f"decisions/*/{run_id}.jsonl"))
            for line in path.read_bytes().splitlines()]


async def test_the_agent_decides_every_second_and_clients_pay_its_shaded_quote(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    model = write_random_model(tmp_path / "model", GRID, seed=3)
    backtest = Backtest(settings_for(tmp_path, model), "rl-internalize",
                        [ReplaySpec(shared_file(ETH))], "agent")
    result = await backtest.run()
    logged = records(tmp_path, "agent")
    decisions = [r for r in logged if r.get("inputs", {}).get("trigger") == "decision"]
    span_s = (result.last_ts_ns - result.first_ts_ns) / 1e9
    # One a second of feed time (the timer fires at the first event after it is due).
    assert 0.9 * span_s <= len(decisions) <= span_s + 1
    policy = AgentPolicy.load(model)
    for record in decisions:  # each action is the network's greedy one on the logged features
        observation = np.array([record["inputs"][name] for name in FEATURES], np.float32)
        chosen = policy(observation, None)  # type: ignore[arg-type]
        assert (record["inputs"]["shade_bps"], record["inputs"]["hedge_fraction"]) == (
            chosen.shade_bps, chosen.hedge_fraction)
    fills = [r for r in logged if r.get("inputs", {}).get("trigger") == "client_fill"]
    assert len(fills) > 20 and result.client_fills_unpriced > 0  # some clients declined
    shades = [(d["ts_ns"], d["inputs"]["shade_bps"]) for d in decisions]
    for fill in fills:  # priced at the quote the agent had set last
        ts = fill["inputs"]["fill_ts_ns"]
        shade = max(((t, s) for t, s in shades if t <= ts), default=(0, 0.0))[1]
        markup = 3.0 - shade if fill["inputs"]["client_side"] == "buy" else -(3.0 + shade)
        # The mid the desk saw at the fill is the one the client was quoted off.
        expected = fill["inputs"]["mid"] * (1.0 + markup * 1e-4)
        assert fill["inputs"]["client_price"] == pytest.approx(expected, rel=1e-12)


async def test_never_hedge_only_hedges_back_to_the_limit(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    settings = settings_for(tmp_path, max_inventory=2.0, synthetic_rate_hz=2.0)
    settings = settings.model_copy(update={"strategies": settings.strategies.model_copy(
        update={"rl_internalize": settings.strategies.rl_internalize.model_copy(
            update={"policy": "never-hedge"})})})
    await Backtest(settings, "rl-internalize", [ReplaySpec(shared_file(ETH))], "never").run()
    logged = records(tmp_path, "never")
    hedges = [r for r in logged if r.get("intents")]
    assert hedges, "the flow should push the desk past its limit at least once"
    for record in hedges:  # every hedge is the limit's: back to it (one order at most
        inputs = record["inputs"]  # the max order notional; the rest follows)
        assert inputs["forced"] is True
        if "max order notional" not in record["reason"]:
            assert abs(inputs["target_inventory"]) == pytest.approx(2.0, abs=0.001)
    decisions = [r for r in logged if r.get("inputs", {}).get("trigger") == "decision"]
    assert {d["inputs"]["shade_bps"] for d in decisions} == {0.0}
