"""A trained Q-network, run with numpy alone (no torch at run time).

Training (daemon/rl/, the `[rl]` extra) exports the DQN's Q-network as `q_network.npz`:
arrays `w0, b0, w1, b1, ...`, one pair per linear layer in the torch layout (weight of
shape (out, in)), ReLU between layers and none after the last. `q_values(obs)` is
`relu(... relu(obs @ w0.T + b0) ...) @ wN.T + bN`; the greedy action is its argmax (ties
to the lowest index, as torch's argmax). Float32 throughout, as the torch policy runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS_FILE = "q_network.npz"


class NumpyQNetwork:
    """Feed-forward Q-network: observation vector -> one Q-value per discrete action."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        if not layers:
            raise ValueError("a Q-network needs at least one layer")
        for index, (weight, bias) in enumerate(layers):
            if weight.ndim != 2 or bias.shape != (weight.shape[0],):
                raise ValueError(f"layer {index}: weight {weight.shape} and bias {bias.shape} "
                                 "do not make a linear layer")
            if index and weight.shape[1] != layers[index - 1][0].shape[0]:
                raise ValueError(f"layer {index} takes {weight.shape[1]} inputs, the layer "
                                 f"before gives {layers[index - 1][0].shape[0]}")
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32))
                       for w, b in layers]

    @property
    def n_inputs(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def n_actions(self) -> int:
        return self.layers[-1][0].shape[0]

    @classmethod
    def load(cls, path: Path) -> NumpyQNetwork:
        """From an exported `q_network.npz` (or the model folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / WEIGHTS_FILE
        with np.load(path) as arrays:
            count = sum(1 for name in arrays.files if name.startswith("w"))
            missing = [f"{kind}{i}" for i in range(count) for kind in "wb"
                       if f"{kind}{i}" not in arrays.files]
            if not count or missing:
                raise ValueError(f"{path}: not an exported Q-network (missing "
                                 f"{', '.join(missing) or 'w0, b0'})")
            return cls([(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(count)])

    def save(self, path: Path) -> Path:
        arrays = {}
        for index, (weight, bias) in enumerate(self.layers):
            arrays[f"w{index}"], arrays[f"b{index}"] = weight, bias
        np.savez(path, **arrays)
        return Path(path)

    def q_values(self, observation: np.ndarray) -> np.ndarray:
        x = np.asarray(observation, dtype=np.float32)
        last = len(self.layers) - 1
        for index, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if index < last:
                x = np.maximum(x, 0.0)
        return x

    def action(self, observation: np.ndarray) -> int:
        """The greedy action: the index of the largest Q-value."""
        return int(np.argmax(self.q_values(observation)))
