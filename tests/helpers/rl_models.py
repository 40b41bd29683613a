"""Model folders for rl-internalize tests, written with numpy alone (no training, no torch):
a seeded random Q-network on a grid, in the layout `--mode train` writes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from strategies.qnetwork import NumpyQNetwork
from strategies.rl_internalize import FEATURES, MODEL_FILE, ActionGrid


def write_random_model(folder: Path, grid: ActionGrid, seed: int = 0,
                       hidden: tuple[int, ...] = (16,)) -> Path:
    rng = np.random.default_rng(seed)
    sizes = (len(FEATURES), *hidden, grid.size)
    layers = [(rng.normal(0.0, 1.0, (n_out, n_in)).astype(np.float32),
               rng.normal(0.0, 0.1, n_out).astype(np.float32))
              for n_in, n_out in itertools.pairwise(sizes)]
    folder.mkdir(parents=True, exist_ok=True)
    NumpyQNetwork(layers).save(folder / "q_network.npz")
    (folder / MODEL_FILE).write_text(json.dumps({
        "features": list(FEATURES),
        "action_grid": {"shades_bps": list(grid.shades_bps),
                        "hedge_fractions": list(grid.hedge_fractions)}}))
    return folder
