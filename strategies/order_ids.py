"""Client order ids for strategy orders, in the daemon's format.

`cp` + 6 of [a-z2-7] + `-` + strategy tag (<= 12 of [A-Za-z0-9_]) + `-` + counter: the
format `daemon.trading.order_ids` recognises as ours at start-up reconciliation, and within
the 36 characters Binance and Bybit allow. Strategies set the id themselves (rather than
leaving it to the executor) so every ack and fill, including a risk-gate reject, maps
back to the order that caused it. The 6 characters hash the strategy and its start time:
deterministic under a backtest's fake clock, distinct across restarts.
"""

from __future__ import annotations

import base64
import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class OrderIds:
    """Hands out `cp<run6>-<strategy>-<n>`."""

    def __init__(self, strategy: str, start_ns: int) -> None:
        digest = hashlib.blake2b(f"{strategy}:{start_ns}".encode(), digest_size=8).digest()
        run_tag = base64.b32encode(digest).decode().lower()[:6]
        self.prefix = f"cp{run_tag}-{_UNSAFE.sub('_', strategy)[:12]}-"
        self._counter = 0

    def next(self) -> str:
        self._counter += 1
        return f"{self.prefix}{self._counter}"
