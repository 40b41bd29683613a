"""Training from the command line (issue 15 item 3): the model folder, numpy inference
equal to the torch policy's, a backtest of the model with no torch at run time, and the
refusals (another strategy, no --data, the extra missing)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from adapters.recordings.replay import ReplaySpec
from daemon.cli import main
from tests.rl.common import MARKET, OTHER_FILE, SYMBOL, TRAIN_FILE, VENUE, rl_settings

REPO = Path(__file__).resolve().parents[2]
CONFIG = f"""
[venues.{VENUE}]
enabled = true
balances = {{ USDT = 1000000.0 }}
[venues.{VENUE}.markets."{SYMBOL}"]
tick = {MARKET["tick"]}
lot = {MARKET["lot"]}
[strategies.internalize]
venue = "{VENUE}"
symbol = "{SYMBOL}"
source = "quoted"
max_inventory = 20.0
[strategies.rl_internalize]
hidden_layers = [32, 32]
episode_s = 60.0
"""
SECRET = "not-for-model-json-7f3a"


def run_python(code: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOPIPE_")}
    environment.update(CRYPTOPIPE_DATA_DIR=str(data_dir), CRYPTOPIPE_METRICS__ENABLED="false",
                       CRYPTOPIPE_LOGGING__LEVEL="warning", PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-c", code], cwd=data_dir.parent, env=environment,
                          capture_output=True, text=True, timeout=300)


def cli(args: list[str]) -> str:
    """Python that runs the command line and then says which RL libraries it imported."""
    return ("import sys\nfrom daemon.cli import main\n"
            f"code = main({args!r})\n"
            "print('imported:', sorted(m for m in ('torch', 'stable_baselines3', 'gymnasium')"
            " if m in sys.modules))\n"
            "sys.exit(code)\n")


def test_training_writes_the_model_folder_and_a_backtest_of_it_needs_no_torch(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    pytest.importorskip("stable_baselines3", reason="the RL extra is not installed")
    train_file, other_file = shared_file(TRAIN_FILE), shared_file(OTHER_FILE)
    config = tmp_path / "rl.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    trained = run_python(cli(["--config", str(config), "--strategy", "rl-internalize",
                              "--mode", "train", "--steps", "300", "--run-id", "short",
                              "--data", str(train_file)]), data_dir,
                         CRYPTOPIPE_VENUES__BINANCE_SPOT__API_KEY=SECRET)
    assert trained.returncode == 0, trained.stderr[-3000:]
    folder = data_dir / "models" / "rl-internalize" / "short"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.json", "policy.zip", "q_network.npz", "training_curve.csv"]
    assert f"model folder: {folder}" in trained.stdout
    assert "train: 300/300 steps" in trained.stderr  # the progress line off a terminal
    spec = json.loads((folder / "model.json").read_text())
    assert spec["features"] == ["inventory", "shade", "spread", "volatility", "client_flow",
                                "recent_return", "time_in_episode", "hedge_in_flight"]
    assert spec["action_grid"] == {"shades_bps": [-4.0, -2.0, 0.0, 2.0, 4.0],
                                   "hedge_fractions": [0.0, 0.5, 1.0]}
    assert spec["q_network"]["layers"] == [8, 32, 32, 15]
    assert spec["training"]["steps"] == 300 and spec["training"]["wall_seconds"] > 0
    assert spec["settings"]["strategies"]["rl_internalize"]["hidden_layers"] == [32, 32]
    assert spec["settings"]["venues"]["binance_spot"]["api_key"] == "**********"
    assert SECRET not in (folder / "model.json").read_text()
    [data] = spec["data"]
    assert data["bytes"] == train_file.stat().st_size
    assert data["sha256"] == hashlib.sha256(train_file.read_bytes()).hexdigest()
    assert {"torch", "stable-baselines3", "gymnasium", "numpy"} <= set(spec["versions"])
    with (folder / "training_curve.csv").open() as rows:
        curve = list(csv.DictReader(rows))
    assert curve and list(curve[0]) == ["episode", "steps", "reward", "pnl", "wall_seconds"]
    assert [int(row["episode"]) for row in curve] == list(range(1, len(curve) + 1))
    assert int(curve[-1]["steps"]) <= 300
    # The model decides a backtest of the other day's file with numpy alone.
    backtest = run_python(cli(["--config", str(config), "--strategy", "rl-internalize",
                               "--mode", "backtest", "--model", str(folder), "--run-id",
                               "after", "--data", str(other_file)]), data_dir)
    assert backtest.returncode == 0, backtest.stderr[-3000:]
    assert "policy decisions" in backtest.stdout
    assert "imported: []" in backtest.stdout


def test_numpy_inference_takes_the_torch_policys_actions(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    pytest.importorskip("stable_baselines3", reason="the RL extra is not installed")

    from stable_baselines3 import DQN

    from daemon.rl.env import InternalizeEnv, load_data
    from daemon.rl.train import train
    from strategies.rl_internalize import AgentPolicy

    settings = rl_settings(tmp_path, rl={"episode_s": 60.0, "hidden_layers": [32, 32]})
    specs = [ReplaySpec(shared_file(TRAIN_FILE))]
    data = asyncio.run(load_data(settings, specs))
    run = train(settings, specs, data, 400, tmp_path / "model")
    torch_model = DQN.load(run.folder / "policy.zip", device="cpu")
    numpy_policy = AgentPolicy.load(run.folder)
    env = InternalizeEnv(settings, specs, data=data)
    rng = np.random.default_rng(4)
    observations, (observation, _) = [], env.reset(seed=4)
    while len(observations) < 1_000:
        observations.append(observation)
        observation, _, done, _, _ = env.step(int(rng.integers(env.action_space.n)))
        if done:
            observation, _ = env.reset()
    batch = np.stack(observations)
    torch_actions, _ = torch_model.predict(batch, deterministic=True)
    numpy_actions = [numpy_policy.network.action(obs) for obs in batch]
    assert len(set(numpy_actions)) > 1  # a trained network, not one constant answer
    assert numpy_actions == torch_actions.tolist()


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "train", "--data", "X"], "--mode train trains rl-internalize"),
    (["--strategy", "internalize", "--mode", "train", "--data", "X"],
     "--mode train trains rl-internalize"),
    (["--strategy", "rl-internalize", "--mode", "train"], "--mode train needs recorded files"),
])
def test_training_refuses_another_strategy_and_no_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        args: list[str], message: str) -> None:
    monkeypatch.setenv("CRYPTOPIPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CRYPTOPIPE_METRICS__ENABLED", "false")
    assert main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"cryptopipe: {message}")


def test_training_without_the_rl_extra_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        shared_file: Callable[[str], Path]) -> None:
    monkeypatch.setenv("CRYPTOPIPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CRYPTOPIPE_METRICS__ENABLED", "false")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as uninstalled
    for module in ("daemon.rl.train", "daemon.rl.export"):  # as if never imported
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert main(["--strategy", "rl-internalize", "--mode", "train", "--data",
                 str(shared_file(TRAIN_FILE))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cryptopipe: training needs the RL extra (torch")
    assert err[-1].endswith(" not installed): pip install -e '.[rl]'")
    assert not (tmp_path / "data" / "models").exists()


def test_training_stopped_early_still_writes_its_model(
        tmp_path: Path, shared_file: Callable[[str], Path]) -> None:
    """Ctrl-C or --duration sets the stop event: training ends after the step under way
    and the folder is written with what was learned, marked as stopped early."""
    pytest.importorskip("stable_baselines3", reason="the RL extra is not installed")
    from daemon.rl.env import load_data
    from daemon.rl.train import train
    from strategies.rl_internalize import AgentPolicy

    settings = rl_settings(tmp_path, rl={"hidden_layers": [8]})
    specs = [ReplaySpec(shared_file(TRAIN_FILE))]
    stop = threading.Event()
    stop.set()
    run = train(settings, specs, asyncio.run(load_data(settings, specs)), 50_000,
                tmp_path / "model", stop=stop)
    assert run.stopped and run.steps < 50_000
    spec = json.loads((run.folder / "model.json").read_text())
    assert spec["training"]["stopped_early"] is True
    assert spec["training"]["steps"] == run.steps
    assert AgentPolicy.load(run.folder).network.n_actions == 15
