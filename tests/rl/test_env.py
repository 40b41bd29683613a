"""The Gymnasium environment on the real backtest engine (issue 15 item 2): the API
checker, a fixed policy stepped here writes the plain backtest's decision log byte for
byte, rewards add up to the P&L, clients see the agent's shaded quote, mirrored paths."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium", reason="the RL extra is not installed (pip install -e '.[rl]')")

from gymnasium.utils.env_checker import check_env

from adapters.recordings.replay import ReplaySpec
from daemon.backtest.engine import Backtest
from daemon.rl.env import InternalizeEnv
from strategies.rl_internalize import ActionGrid, AgentPolicy, DeskAction
from tests.helpers.rl_models import write_random_model
from tests.rl.common import OTHER_FILE, TRAIN_FILE, log_bytes, log_records, rl_settings

GRID = ActionGrid((-4.0, -2.0, 0.0, 2.0, 4.0), (0.0, 0.5, 1.0))  # the settings' default


# The observation space is unbounded by design (daemon/rl/env.py): the checker warns of it.
@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value is:UserWarning")
def test_the_environment_passes_the_gymnasium_checker(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    settings = rl_settings(tmp_path, rl={"episode_s": 20.0})
    env = InternalizeEnv(settings, [ReplaySpec(shared_file(TRAIN_FILE))])
    assert env.action_space.n == GRID.size
    check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize(("name", "rate_hz"), [
    (TRAIN_FILE, 0.5),  # the settings' flow
    # Busy flow: decisions whose timer fires as time moves to a client fill's (the fill
    # must come after the agent's action, as in the plain run) ...
    (TRAIN_FILE, 20.0),
    # ... and one that falls due in the engine's end-of-data settling (the end policy).
    (OTHER_FILE, 20.0),
])
def test_stepping_a_fixed_policy_writes_the_plain_backtests_log_byte_for_byte(
        tmp_path: Path, shared_file: Callable[[str], Path], name: str, rate_hz: float) -> None:
    model = write_random_model(tmp_path / "model", GRID, seed=5)
    specs = [ReplaySpec(shared_file(name))]
    plain_dir, stepped_dir = tmp_path / "plain", tmp_path / "stepped"
    result = asyncio.run(Backtest(rl_settings(plain_dir, model, synthetic_rate_hz=rate_hz),
                                  "rl-internalize", specs, "parity").run())
    settings = rl_settings(stepped_dir, model, synthetic_rate_hz=rate_hz)
    policy = AgentPolicy.load(model)
    env = InternalizeEnv(settings, specs, decision_log=True, run_id="parity", grid=policy.grid,
                         end_policy=policy)
    observation, _ = env.reset(seed=0, options={
        "window": "all", "flow_seed": settings.strategies.internalize.seed})
    steps, done = 0, False
    while not done:
        observation, _, done, truncated, info = env.step(policy.network.action(observation))
        assert not truncated
        steps += 1
    plain = log_bytes(plain_dir, "parity")
    assert plain and log_bytes(stepped_dir, "parity") == plain
    assert info["result"].decisions == result.decisions
    decisions = [r for r in log_records(stepped_dir, "parity")
                 if r.get("inputs", {}).get("trigger") == "decision"]
    # One step per decision (~1 a second for ~178 s), but for one in the end's settling.
    assert steps > 150 and steps in (len(decisions), len(decisions) - 1)


def test_rewards_add_up_to_the_pnl_less_the_inventory_penalty(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    settings = rl_settings(tmp_path, rl={"episode_s": 60.0, "inventory_penalty": 2.0})
    env = InternalizeEnv(settings, [ReplaySpec(shared_file(TRAIN_FILE))])
    _, info = env.reset(seed=3)
    start_pnl, rewards, penalties, done = info["pnl"], 0.0, 0.0, False
    rng = np.random.default_rng(0)
    while not done:
        _, reward, done, _, info = env.step(int(rng.integers(GRID.size)))
        rewards += reward
        penalties += 2.0 * (info["inventory"] / 20.0) ** 2
    assert rewards + penalties == pytest.approx(info["pnl"] - start_pnl, abs=1e-6)
    assert penalties > 0.0


def test_clients_are_shown_the_agents_shaded_quote(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    settings = rl_settings(tmp_path, synthetic_rate_hz=2.0)
    env = InternalizeEnv(settings, [ReplaySpec(shared_file(TRAIN_FILE))], decision_log=True,
                         run_id="shaded")
    env.reset(seed=1, options={"window": "all"})
    done, step = False, 0
    while not done:  # shade -4 bps then +4 bps, alternating every 10 decisions
        _, _, done, _, _ = env.step(GRID.index(DeskAction(-4.0 if (step // 10) % 2 else 4.0, 0.0)))
        step += 1
    logged = log_records(tmp_path, "shaded")
    shades = [(r["ts_ns"], r["inputs"]["shade_bps"]) for r in logged
              if r.get("inputs", {}).get("trigger") == "decision"]
    fills = [r["inputs"] for r in logged if r.get("inputs", {}).get("trigger") == "client_fill"]
    assert len(fills) > 20
    seen = set()
    for fill in fills:
        # A decision at the fill's own time (its timer fired as time moved to the client)
        # comes first: the client sees the quote it set.
        shade = max(((t, s) for t, s in shades if t <= fill["fill_ts_ns"]), default=(0, 0.0))[1]
        markup_bps = (fill["client_price"] / fill["mid"] - 1.0) * 1e4
        # A client buying pays base - shade above mid; one selling gets base + shade below.
        expected = 3.0 - shade if fill["client_side"] == "buy" else -(3.0 + shade)
        assert markup_bps == pytest.approx(expected, abs=1e-6)
        seen.add(shade)
    assert {-4.0, 4.0} <= seen
