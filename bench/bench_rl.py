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
  timed); run() reads them from the cache inside its timing (~15 ms here);
- memory in days (issue 18 item 2): the environment over 1, 8 and 64 (`--days`) copies of
  the file, each shifted by whole spans so they follow one another as consecutive "days",
  in a child process per size: `--memory-episodes` episodes of 60 s windows drawn over all
  the days, each played again mirrored (`mirror_prices`), random actions; steps/s and the
  child's peak RSS (`ru_maxrss`), the environment on the cache read a chunk at a time (as
  `--mode train` runs it) and, for comparison, on the same columns all in memory (what it
  held before issue 18).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.recordings.replay import ReplaySpec
from config.settings import Settings
from daemon.backtest.cache import EventSource
from daemon.backtest.engine import Backtest
from daemon.core.logs import configure_logging
from strategies.rl_internalize import ActionGrid
from tests.helpers.days import shifted_copies
from tests.helpers.rl_models import write_random_model
from tests.rl.common import TRAIN_FILE, rl_settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

#: One environment over the days (a child process, so its peak RSS is its own).
MEMORY_CHILD = """
import asyncio, json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import numpy as np
from daemon.core.logs import configure_logging
from daemon.modes.data import data_specs
from daemon.rl.env import InternalizeEnv, load_data
from tests.rl.common import rl_settings
configure_logging("bench-rl", "warning", "json")
settings = rl_settings(Path({data_dir!r}), rl={{"episode_s": 60.0, "mirror_prices": True}})
specs = data_specs([{days!r}], "train")
data = asyncio.run(load_data(settings, specs))
if {whole!r}:
    data = data.in_memory()
env = InternalizeEnv(settings, specs, data=data)
rng = np.random.default_rng(0)
steps = 0
started = time.perf_counter()
for episode in range({episodes!r}):
    env.reset(seed=episode if episode == 0 else None)
    done = False
    while not done:
        _, _, done, _, _ = env.step(int(rng.integers(env.action_space.n)))
        steps += 1
print(json.dumps({{"events": len(data), "steps": steps,
                  "seconds": time.perf_counter() - started,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def env_steps_per_second(settings: Settings, specs: list[ReplaySpec], data: EventSource,
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
                              data: EventSource, steps: int, scratch: Path) -> float:
    from daemon.rl.train import train

    folder = scratch / f"model-{time.perf_counter_ns()}"
    return train(settings, specs, data, steps, folder).steps_per_second


def plain_run(settings: Settings, specs: list[ReplaySpec], run_id: str,
              logged: bool) -> tuple[int, float]:
    started = time.perf_counter()
    result = asyncio.run(Backtest(settings, "rl-internalize", specs, run_id,
                                  decision_log=logged).run())
    return result.events, time.perf_counter() - started


def env_run(settings: Settings, specs: list[ReplaySpec], data: EventSource, model: Path,
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


def shifted_days(source: Path, directory: Path, days: int) -> Path:
    """`days` copies of `source` in `directory`, copy k's receive times shifted by k spans
    of the source (its exchange times left as recorded)."""
    prefix = source.name.split(".")[0].rsplit("_", 1)[0]  # binance_usdm_ethusdt
    shifted_copies(source, directory, [f"{prefix}_day{k:03d}.gz" for k in range(days)])
    return directory


def memory_child(days: Path, data_dir: Path, episodes: int, whole: bool) -> dict:
    code = MEMORY_CHILD.format(root=str(ROOT), data_dir=str(data_dir), days=str(days),
                               episodes=episodes, whole=whole)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    if done.returncode != 0:
        sys.exit(f"bench_rl: the environment over {days} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_in_days(source: Path, sizes: list[int], episodes: int) -> None:
    """Steps/s and peak RSS of the environment over N days (see the module docstring)."""
    print(f"memory in days: {episodes} episodes (60 s windows, each also mirrored) over N "
          f"shifted copies of {source.name}; peak RSS of the child")
    print(f"{'days':>5} {'events':>10} {'steps/s':>8} {'MB':>6} {'MB vs 1':>8}   "
          f"{'in memory: steps/s':>18} {'MB':>6} {'MB vs 1':>8}")
    base: dict[bool, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rl-days-") as tmp:
        for size in sizes:
            days = shifted_days(source, Path(tmp) / f"days{size}", size)
            data_dir = Path(tmp) / f"data{size}"
            memory_child(days, data_dir, 1, False)  # builds the cache: not measured
            row = []
            for whole in (False, True):
                figures = memory_child(days, data_dir, episodes, whole)
                base.setdefault(whole, figures["rss_mb"])
                row.append((figures, figures["rss_mb"] / base[whole]))
            (chunked, chunked_ratio), (held, held_ratio) = row
            print(f"{size:>5} {chunked['events']:>10,} "
                  f"{chunked['steps'] / chunked['seconds']:>8,.0f} {chunked['rss_mb']:>6,.0f} "
                  f"{chunked_ratio:>7.2f}x   {held['steps'] / held['seconds']:>18,.0f} "
                  f"{held['rss_mb']:>6,.0f} {held_ratio:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--file", default=TRAIN_FILE, help="a file of ../shared/data")
    parser.add_argument("--train-steps", type=int, default=3_000)
    parser.add_argument("--env-seconds", type=float, default=5.0)
    parser.add_argument("--days", default="1,8,64",
                        help="copies of the file for the memory figure (empty: skip it)")
    parser.add_argument("--memory-episodes", type=int, default=20)
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
    if args.days:
        memory_in_days(path, [int(n) for n in args.days.split(",")], args.memory_episodes)


def _grid(settings: Settings) -> ActionGrid:
    return ActionGrid.from_settings(settings.strategies.rl_internalize)


if __name__ == "__main__":
    main()
