"""Training rl-internalize: stable-baselines3's DQN on `InternalizeEnv`, and the model folder.

`train()` runs DQN (`MlpPolicy`: an MLP of `hidden_layers` with ReLU, on the raw
observation) for a number of environment steps, one decision each, with the settings of
`strategies.rl_internalize`: `learning_rate`, `buffer_size`, `discount` (gamma),
`exploration_fraction` (epsilon falls from 1 to 0.05 over that share of the steps),
`train_seed` (network initialisation, exploration, episode windows and flow seeds).
Torch runs on one thread (`torch.set_num_threads(1)`: on these shared 2-core machines it
measured ~10x faster than two under load). What the settings do not name keeps SB3's
default (batch 32, one gradient step every 4 environment steps), except two that SB3 sizes
for runs of millions of steps: the target network is refreshed every
`TARGET_UPDATE_STEPS` steps (SB3: 10,000) and learning starts after
`learning_starts(steps)` steps (SB3: 100; 5 % of a short run here, at most 1,000).

The folder, `data_dir/models/rl-internalize/<run-id>/`:

- `policy.zip`: SB3's own save (`DQN.load`), to resume or inspect with torch;
- `q_network.npz`: the online Q-network's Linear layers for numpy inference
  (daemon/rl/export.py; strategies/qnetwork.py runs them: `--model` needs no torch);
- `model.json`: the feature spec (`features`), the `action_grid`, the Q-network's layer
  sizes, the settings used (all of them, secrets masked), the data files (path, size,
  SHA-256), the steps asked and done, episodes, wall seconds, whether it was stopped early,
  the library versions;
- `training_curve.csv`: one row per finished episode: `episode`, `steps` (so far),
  `reward` (the episode's total), `pnl` (its marked-to-market P&L, quote currency),
  `wall_seconds` (since training started). Written as episodes end, so a run stopped
  early (Ctrl-C, `--duration`: `stop` set) keeps its curve; its model is written too.
"""

from __future__ import annotations

import csv
import hashlib
import json
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback

from adapters.recordings.replay import ReplaySpec
from config.settings import Settings
from daemon.backtest.cache import EventSource
from daemon.rl.env import InternalizeEnv
from daemon.rl.export import export_q_network
from strategies.qnetwork import WEIGHTS_FILE, NumpyQNetwork
from strategies.rl_internalize import FEATURES, MODEL_FILE

POLICY_FILE = "policy.zip"
CURVE_FILE = "training_curve.csv"
CURVE_COLUMNS = ("episode", "steps", "reward", "pnl", "wall_seconds")
#: Steps between refreshes of DQN's target network (SB3's 10,000 suits millions of steps).
TARGET_UPDATE_STEPS = 1_000
#: Model folder format (model.json's "format").
MODEL_FORMAT = 1


def learning_starts(steps: int) -> int:
    """Steps of pure exploration before the first gradient step: 5 % of the run, at most
    1,000, at least one batch."""
    return max(32, min(1_000, steps // 20))


@dataclass(slots=True)
class TrainingProgress:
    """What a progress display is told, after every step (cheap) and at each episode's end."""

    steps: int = 0
    total: int = 0
    episodes: int = 0
    last_reward: float = float("nan")
    last_pnl: float = float("nan")
    wall_seconds: float = 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass(slots=True)
class TrainingRun:
    folder: Path
    steps: int
    episodes: int
    wall_seconds: float
    stopped: bool
    #: Per finished episode: (reward, pnl).
    episodes_seen: list[tuple[float, float]] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall_seconds if self.wall_seconds > 0 else 0.0


class _Curve(BaseCallback):
    """Episode rows to the CSV, progress to the display, and a stop when asked."""

    def __init__(self, curve: Path, total: int, started: float,
                 report: Callable[[TrainingProgress], None] | None,
                 stop: threading.Event | None) -> None:
        super().__init__()
        self.progress = TrainingProgress(total=total)
        self.episodes: list[tuple[float, float]] = []
        self._report = report
        self._stop = stop
        self._started = started
        self._reward = 0.0
        self._file = curve.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(CURVE_COLUMNS)
        self._file.flush()

    def _on_step(self) -> bool:
        progress = self.progress
        progress.steps = self.num_timesteps
        progress.wall_seconds = time.perf_counter() - self._started
        self._reward += float(self.locals["rewards"][0])
        if self.locals["dones"][0]:
            info = self.locals["infos"][0]
            pnl = float(info.get("pnl", float("nan")))
            self.episodes.append((self._reward, pnl))
            progress.episodes = len(self.episodes)
            progress.last_reward, progress.last_pnl = self._reward, pnl
            self._csv.writerow((progress.episodes, progress.steps, f"{self._reward:.6f}",
                                f"{pnl:.6f}", f"{progress.wall_seconds:.3f}"))
            self._file.flush()
            self._reward = 0.0
        if self._report is not None:
            self._report(progress)
        return not (self._stop is not None and self._stop.is_set())

    def close(self) -> None:
        self._file.close()


def train(settings: Settings, specs: Sequence[ReplaySpec], data: EventSource, steps: int,
          folder: Path, *, run_id: str = "train",
          report: Callable[[TrainingProgress], None] | None = None,
          stop: threading.Event | None = None) -> TrainingRun:
    """Train DQN for `steps` environment steps and write the model folder (see the module
    docstring). `folder` must not exist yet. Blocking: a caller on an event loop runs it in
    a worker thread and sets `stop` to end it early (the model so far is written)."""
    torch.set_num_threads(1)
    own = settings.strategies.rl_internalize
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    env = InternalizeEnv(settings, specs, data=data, decision_log=False, run_id=run_id)
    model = DQN(
        "MlpPolicy", env, learning_rate=own.learning_rate, buffer_size=own.buffer_size,
        gamma=own.discount, exploration_fraction=own.exploration_fraction,
        learning_starts=learning_starts(steps), target_update_interval=TARGET_UPDATE_STEPS,
        policy_kwargs={"net_arch": list(own.hidden_layers)}, seed=own.train_seed,
        device="cpu", verbose=0)
    started = time.perf_counter()
    curve = _Curve(folder / CURVE_FILE, steps, started, report, stop)
    try:
        model.learn(total_timesteps=steps, callback=curve, progress_bar=False)
    finally:
        curve.close()
        env.close()
    wall = time.perf_counter() - started
    done = int(model.num_timesteps)
    stopped = done < steps
    model.save(folder / POLICY_FILE)
    export_q_network(model, folder)
    spec = model_spec(settings, specs, steps_asked=steps, steps=done,
                      episodes=len(curve.episodes), wall_seconds=wall, stopped=stopped,
                      run_id=run_id, network=NumpyQNetwork.load(folder / WEIGHTS_FILE))
    (folder / MODEL_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return TrainingRun(folder, done, len(curve.episodes), wall, stopped, curve.episodes)


def model_spec(settings: Settings, specs: Sequence[ReplaySpec], *, steps_asked: int,
               steps: int, episodes: int, wall_seconds: float, stopped: bool, run_id: str,
               network: NumpyQNetwork) -> dict[str, Any]:
    """model.json: what `AgentPolicy.load` reads (features, action_grid) and how the model
    was made. The settings are dumped as JSON, so every SecretStr shows as '**********'."""
    own = settings.strategies.rl_internalize
    return {
        "format": MODEL_FORMAT,
        "strategy": "rl-internalize",
        "run_id": run_id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "features": list(FEATURES),
        "action_grid": {"shades_bps": list(own.shades_bps),
                        "hedge_fractions": list(own.hedge_fractions)},
        "q_network": {"file": WEIGHTS_FILE, "activation": "relu",
                      "layers": [network.n_inputs] + [w.shape[0] for w, _ in network.layers]},
        "policy_file": POLICY_FILE,
        "training": {
            "algorithm": "DQN", "library": "stable-baselines3", "policy": "MlpPolicy",
            "steps_asked": steps_asked, "steps": steps, "episodes": episodes,
            "wall_seconds": round(wall_seconds, 3), "stopped_early": stopped,
            "torch_threads": 1, "learning_starts": learning_starts(steps_asked),
            "target_update_interval": TARGET_UPDATE_STEPS,
            "curve_file": CURVE_FILE,
        },
        "settings": settings.model_dump(mode="json"),
        "data": [data_file(spec) for spec in specs],
        "versions": library_versions(),
    }


def data_file(spec: ReplaySpec) -> dict[str, Any]:
    """A data file as model.json names it: the --data text, its path, size and SHA-256."""
    digest = hashlib.sha256()
    with spec.path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return {"spec": str(spec), "path": str(spec.path.resolve()),
            "bytes": spec.path.stat().st_size, "sha256": digest.hexdigest()}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for distribution in ("cryptopipe", "torch", "stable-baselines3", "gymnasium"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = "unknown"
    return versions
