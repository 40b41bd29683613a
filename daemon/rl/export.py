"""A trained DQN's Q-network as `q_network.npz`, for numpy-only inference.

stable-baselines3's DQN MlpPolicy keeps its online Q-network as `policy.q_net`: a flatten
features extractor (a Box observation passes as it is, as float32) and `q_net`, an
`nn.Sequential` of Linear layers with ReLU between them and none after the last. Those
Linear layers, in order, are exactly what `strategies.qnetwork.NumpyQNetwork` runs:
arrays `w0, b0, w1, b1, ...` in the torch layout (weight (out, in)), float32. The target
network is training's alone and is not exported.

Anything else in the network (another activation, a normalisation layer, a features
extractor that changes the observation) is refused rather than exported wrongly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from strategies.qnetwork import WEIGHTS_FILE, NumpyQNetwork


def q_network_layers(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Linear layers of a DQN's online Q-network as (weight, bias) float32 arrays."""
    from torch import nn

    q_net = model.policy.q_net
    extractor = q_net.features_extractor
    if type(extractor).__name__ != "FlattenExtractor":
        raise ValueError(f"cannot export a Q-network with a {type(extractor).__name__} "
                         "(numpy inference runs the MLP on the raw observation)")
    modules = list(q_net.q_net)
    # Linear, ReLU, Linear, ..., Linear: what NumpyQNetwork computes, nothing else.
    for index, module in enumerate(modules):
        expected = nn.Linear if index % 2 == 0 else nn.ReLU
        if not isinstance(module, expected):
            raise ValueError(f"layer {index}: {type(module).__name__} where numpy inference "
                             f"expects {expected.__name__} (Linear layers, ReLU between)")
    if not modules or len(modules) % 2 == 0:
        raise ValueError("the Q-network must start and end on a Linear layer")
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for index, module in enumerate(modules[::2]):
        if module.bias is None:
            raise ValueError(f"Linear layer {index} has no bias")
        layers.append((module.weight.detach().cpu().numpy().astype(np.float32),
                       module.bias.detach().cpu().numpy().astype(np.float32)))
    return layers


def export_q_network(model: Any, folder: Path) -> Path:
    """Write `folder/q_network.npz` from a trained DQN; returns its path."""
    return NumpyQNetwork(q_network_layers(model)).save(Path(folder) / WEIGHTS_FILE)
