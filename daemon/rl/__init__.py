"""Learning rl-internalize (issue 15): the Gymnasium environment on the backtest engine
(env.py), training with stable-baselines3's DQN (train.py), the Q-network's export for
numpy inference (export.py), mirrored price paths (mirror.py).

Everything here but mirror.py needs the `[rl]` extra (torch, stable-baselines3,
gymnasium); this package's own import needs none of it, so `--mode train` can say what
to install (`require_rl_extra`). Deciding with a trained model needs numpy only
(strategies/rl_internalize.py, strategies/qnetwork.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: The distributions of the extra, by the module each installs.
RL_MODULES = {"torch": "torch", "stable_baselines3": "stable-baselines3",
              "gymnasium": "gymnasium"}
INSTALL_HINT = "pip install -e '.[rl]'"


class RLExtraMissing(ImportError):
    """The `[rl]` extra is not installed: the message says what is missing and how to
    install it."""


def require_rl_extra() -> None:
    """Raise `RLExtraMissing` unless torch, stable-baselines3 and gymnasium import."""
    missing = []
    for module, distribution in RL_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module blocked in sys.modules (tests)
            found = False
        if not found:
            missing.append(distribution)
    if missing:
        raise RLExtraMissing(f"training needs the RL extra ({', '.join(missing)} not "
                             f"installed): {INSTALL_HINT}")


def model_folder(data_dir: Path, run_id: str) -> Path:
    """Where `--mode train` writes a run's model: data_dir/models/rl-internalize/<run-id>."""
    return Path(data_dir) / "models" / "rl-internalize" / run_id
