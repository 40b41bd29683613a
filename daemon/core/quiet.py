"""Quiet rows: a backtest's events as columns, for the handlers' bulk checks.

Most market events change nothing a strategy acts on: the inventory maker's "no requote
due" check passes, no paper order is crossed or printed through, the risk gate's loss check
passes, nothing is due by time. A backtest over cached columns asks each handler of the
per-event path (runner, strategy, risk gate, paper executor) for the first row of a stretch
it must see as an event (`first_loud`); each answers with a numba kernel over these
columns, from its state as it stands, without a Quote or Trade being built for the rows
before. Those rows are quiet: all they leave behind is the clocks and each market's newest
quote, which the backtest then sets by running the last quote of each market through the
per-event path (daemon/backtest/quiet.py). A handler that cannot tell answers `start`
(every row loud): being wrong in that direction only costs time.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: `QuietRows.kind` of a quote row and of a trade row (the backtest cache's codes).
QUOTE = 0
TRADE = 1


class QuietRows(NamedTuple):
    """One stretch of rows in publish order (a cache chunk), as columns.

    `price` is a quote's bid or a trade's price; `ask` a quote's ask. `key` indexes
    `keys`, the (exchange, symbol) of each market. `clock_ns` is the simulated clock once
    the row is published (the running maximum of `local_ts_ns`, from the clock before the
    stretch): what `clock()` reads in a handler at that row."""

    keys: tuple[tuple[str, str], ...]
    kind: np.ndarray
    key: np.ndarray
    local_ts_ns: np.ndarray
    clock_ns: np.ndarray
    price: np.ndarray
    ask: np.ndarray
    stale: np.ndarray

    def key_id(self, exchange: str, symbol: str) -> int:
        """The key id of a market, -1 when it has no row here."""
        try:
            return self.keys.index((exchange, symbol))
        except ValueError:
            return -1
