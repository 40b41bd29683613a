"""rl-internalize's Gymnasium environment on the backtest engine: environment steps/s alone
(random actions) and during DQN training, and backtest events/s inside the environment vs
a plain `Backtest.run()` of the same file (their ratio), in one run.

Run: .venv/bin/python bench/bench_rl.py [--repeat 3] [--train-steps 3000] [--file NAME]
Needs the `[rl]` extra. Prints figures, never asserts on time. The file is one of
../shared/data (default the 178 s ETH/USDT USD-M recording of 2024-07-18), the desk as
tests/rl runs it (quoted client flow, 20 ETH limit, a decision a second). Best of
`--repeat` each:

- env, random actions: episodes of `episode_s` (60 s) windows, actions drawn uniformly;
  steps/s over `--env-seconds` of wall time, resets included (each builds a Backtest);
- DQN training: `daemon.rl.train.train` for `--train-steps` steps (one torch thread),
  steps/s as training measures it (its model folder goes to a scratch directory);
- events/s: one backtest of the whole file deciding with the same random-weights model
  (numpy), as a plain `Backtest(...)` + `await run()` and as an environment episode
  (`reset` + a `step` per decision, the agent's greedy action given from outside), both
  timed from building the Backtest to its result, with the decision log and without
  (the null log of training). The environment's events are loaded once beforehand (not
  timed); run() reads them from the cache inside its timing (~15 ms here).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.recordings.replay import ReplaySpec
from config.settings import Settings
from daemon.backtest.cache import BacktestData
from daemon.backtest.engine import Backtest
from daemon.core.logs import configure_logging
from strategies.rl_internalize import ActionGrid
from tests.helpers.rl_models import write_random_model
from tests.rl.common import TRAIN_FILE, rl_settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def env_steps_per_second(settings: Settings, specs: list[ReplaySpec], data: BacktestData,
                         seconds: float) -> tuple[float, int, int]:
    from daemon.rl.env import InternalizeEnv

    env = InternalizeEnv(settings, specs, data=data)
    rng = np.random.default_rng(0)
    steps = episodes = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        env.reset(seed=episodes)
        episodes += 1
        done = False
        while not done:
            _, _, done, _, _ = env.step(int(rng.integers(env.action_space.n)))
            steps += 1
    return steps / (time.perf_counter() - started), steps, episodes


def training_steps_per_second(settings: Settings, specs: list[ReplaySpec],
                              data: BacktestData, steps: int, scratch: Path) -> float:
    from daemon.rl.train import train

    folder = scratch / f"model-{time.perf_counter_ns()}"
    return train(settings, specs, data, steps, folder).steps_per_second


def plain_run(settings: Settings, specs: list[ReplaySpec], run_id: str,
              logged: bool) -> tuple[int, float]:
    started = time.perf_counter()
    result = asyncio.run(Backtest(settings, "rl-internalize", specs, run_id,
                                  decision_log=logged).run())
    return result.events, time.perf_counter() - started


def env_run(settings: Settings, specs: list[ReplaySpec], data: BacktestData, model: Path,
            run_id: str, logged: bool) -> tuple[int, float, int]:
    from daemon.rl.env import InternalizeEnv
    from strategies.rl_internalize import AgentPolicy

    policy = AgentPolicy.load(model)
    env = InternalizeEnv(settings, specs, data=data, decision_log=logged, run_id=run_id,
                         grid=policy.grid, end_policy=policy)
    started = time.perf_counter()
    observation, _ = env.reset(seed=0, options={
        "window": "all", "flow_seed": settings.strategies.internalize.seed})
    done, steps = False, 0
    while not done:
        observation, _, done, _, info = env.step(policy.network.action(observation))
        steps += 1
    return info["result"].events, time.perf_counter() - started, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--file", default=TRAIN_FILE, help="a file of ../shared/data")
    parser.add_argument("--train-steps", type=int, default=3_000)
    parser.add_argument("--env-seconds", type=float, default=5.0)
    args = parser.parse_args()
    path = SHARED / args.file
    if not path.is_file():
        print(f"skipped: shared recording not found ({path})")
        return
    try:
        from daemon.rl import require_rl_extra

        require_rl_extra()
    except ImportError as exc:
        print(f"skipped: {exc}")
        return
    from daemon.rl.env import load_data

    configure_logging("bench-rl", "warning", "console")
    specs = [ReplaySpec(path)]
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        settings = rl_settings(scratch, rl={"episode_s": 60.0})
        data = asyncio.run(load_data(settings, specs))
        env_rate, train_rate = 0.0, 0.0
        env_steps = env_episodes = 0
        for _ in range(args.repeat):
            rate, env_steps, env_episodes = env_steps_per_second(settings, specs, data,
                                                                 args.env_seconds)
            env_rate = max(env_rate, rate)
            train_rate = max(train_rate, training_steps_per_second(
                settings, specs, data, args.train_steps, scratch))
        print(f"file                {path.name}: {len(data):,} events; decisions every "
              f"{settings.strategies.rl_internalize.decision_interval_s:g} s, best of "
              f"{args.repeat}")
        print(f"env, random actions {env_rate:>9,.0f} steps/s  ({env_steps:,} steps, "
              f"{env_episodes} episodes of 60 s windows, resets included)")
        print(f"DQN training        {train_rate:>9,.0f} steps/s  ({args.train_steps:,} steps, "
              f"x{train_rate / env_rate:.2f} of the env alone)")
        model = write_random_model(scratch / "random-model", _grid(settings), seed=5)
        whole = rl_settings(scratch / "whole", model)
        for logged in (True, False):
            label = "decision log" if logged else "null log"
            plain_best = stepped_best = float("inf")
            events = steps = 0
            for attempt in range(args.repeat):
                events, seconds = plain_run(whole, specs, f"plain-{attempt}-{logged}", logged)
                plain_best = min(plain_best, seconds)
                _, seconds, steps = env_run(whole, specs, data, model,
                                            f"env-{attempt}-{logged}", logged)
                stepped_best = min(stepped_best, seconds)
            print(f"run(), {label:<12} {events / plain_best:>9,.0f} events/s  "
                  f"{plain_best:6.3f} s")
            print(f"env,   {label:<12} {events / stepped_best:>9,.0f} events/s  "
                  f"{stepped_best:6.3f} s  ({steps} steps)  rate x{plain_best / stepped_best:.2f} "
                  "that of run()")


def _grid(settings: Settings) -> ActionGrid:
    return ActionGrid.from_settings(settings.strategies.rl_internalize)


if __name__ == "__main__":
    main()
