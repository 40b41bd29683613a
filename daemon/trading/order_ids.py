"""Deterministic client order ids: `<run prefix>-<strategy>-<counter>`.

The id is the idempotency key of a submission: a submit retried after a timeout carries
the same id, so the venue can refuse the second copy. It also marks our orders on the
venue, so that start-up reconciliation can tell them from orders placed by hand.

Format constraints come from the venues: Binance `newClientOrderId` matches
`^[.A-Z:/a-z0-9_-]{1,36}$`, Bybit `orderLinkId` allows 36 characters of letters, digits,
`-` and `_`. Ours: `cp` + 6 lowercase characters derived from the run id (the run
prefix), `-`, the strategy name cut to 12 safe characters, `-`, a decimal counter; at most
8 + 1 + 12 + 1 + 10 = 32 characters. Every run of the daemon shares the `cp` tag, so
orders left by an earlier run are recognised too.
"""

from __future__ import annotations

import base64
import hashlib
import re

from daemon.core.model import OrderIntent

#: Marks every order this daemon places, whatever the run.
DAEMON_TAG = "cp"
_RUN_TAG_LEN = 6
_STRATEGY_MAX = 12
_OURS = re.compile(rf"^{DAEMON_TAG}[a-z2-7]{{{_RUN_TAG_LEN}}}-([A-Za-z0-9_]*)-(\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def run_prefix(run_id: str) -> str:
    """`cp` + 6 base32 characters of a hash of the run id: short, stable for the run."""
    digest = hashlib.blake2b(run_id.encode(), digest_size=8).digest()
    return DAEMON_TAG + base64.b32encode(digest).decode().lower()[:_RUN_TAG_LEN]


def is_ours(client_order_id: str | None) -> bool:
    """True for ids this daemon generated, in this run or an earlier one."""
    return bool(client_order_id) and _OURS.match(client_order_id or "") is not None


def strategy_of(client_order_id: str) -> str:
    """The (shortened) strategy name inside one of our ids; "" for foreign ids."""
    match = _OURS.match(client_order_id)
    return match.group(1) if match else ""


def counter_of(client_order_id: str) -> int:
    match = _OURS.match(client_order_id)
    return int(match.group(2)) if match else -1


class ClientOrderIds:
    """Hands out ids for intents that carry none; one counter per executor."""

    def __init__(self, prefix: str) -> None:
        if not re.fullmatch(rf"{DAEMON_TAG}[a-z2-7]{{{_RUN_TAG_LEN}}}", prefix):
            raise ValueError(f"run prefix {prefix!r} is not of the form 'cp' + 6 of [a-z2-7]")
        self.prefix = prefix
        self._counter = 0
        self._tags: dict[str, str] = {}

    def assign(self, intent: OrderIntent) -> str:
        """Give the intent an id if it has none (stored on the intent) and return it."""
        if not intent.client_order_id:
            self._counter += 1
            tag = self._tags.get(intent.strategy)
            if tag is None:
                tag = self._tags[intent.strategy] = _UNSAFE.sub("_", intent.strategy)[
                    :_STRATEGY_MAX
                ]
            intent.client_order_id = f"{self.prefix}-{tag}-{self._counter}"
        return intent.client_order_id

    def skip_past(self, client_order_id: str) -> None:
        """After adopting an order of this very run, never hand out its counter again."""
        if client_order_id.startswith(self.prefix + "-"):
            self._counter = max(self._counter, counter_of(client_order_id))
