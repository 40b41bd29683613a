"""The daemon's one vocabulary: what a decision did (`Action`) and where an order is
(`OrderStatus`).

Both are `StrEnum`s, so a member is its string: `Action.QUOTE == "quote"`, and the decision
log writes the plain word (the post-mortem schema, daemon/postmortem/schema.py, lists what
each verb means to the report). Strategies, the risk gate, the runner and the report use
these names instead of string literals, so a typo is an AttributeError, not a silent
new verb.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """`Decision.action`: what the strategy (or the gate, or the kill switch) did."""

    # every strategy
    SKIP = "skip"  # saw something and declined (edge too small, stale quote, cooldown...)
    REJECT = "reject"  # an intent or transfer refused (risk gate, kill switch, venue rule)
    KILL = "kill"  # the kill switch fired
    FLATTEN = "flatten"  # after the kill switch: close the position with a market order
    REBALANCE = "rebalance"  # a transfer between two of our venue accounts (no intents)
    # arbitrage
    ARBITRAGE = "arbitrage"  # an opportunity taken; its intents are the legs
    UNWIND = "unwind"  # a failed or partial leg hedged
    #: An alert: every unwind attempt failed; the residual is kept as position and the
    #: strategy halts (/healthz degraded) until its cooldown ends.
    UNWIND_FAILED = "unwind_failed"
    RESUME = "resume"  # a halt's cooldown is over: trading again
    TRANSFER_SELL = "transfer_sell"  # the bought base has arrived: sell it
    # inventory market making
    QUOTE = "quote"  # quotes placed or replaced
    HOLD = "hold"  # orders already at target
    MAX_LOSS_EXIT = "max_loss_exit"
    PORTFOLIO_REBALANCE = "portfolio_rebalance"
    # internalize-or-hedge
    HEDGE = "hedge"  # at least the whole client fill offset
    PARTIAL_HEDGE = "partial_hedge"
    WAREHOUSE = "warehouse"  # kept on the book


class OrderStatus(StrEnum):
    """Where an order is, as its acks say."""

    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    #: Live: the submit's outcome is unknown (its response was lost and the venue has not
    #: answered a lookup by client id yet). Not terminal: it may rest or have filled, so
    #: the risk gate counts it open at full size until the venue says what became of it.
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """The order will neither fill nor change any more."""
        return self in _TERMINAL


_TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED,
                       OrderStatus.EXPIRED})


class OrderAlert(StrEnum):
    """Acks an operator must hear of: the ack's reason starts with the value. Counted on
    /metrics (`cryptopipe_order_alerts_total{kind}`) as well as in the decision log."""

    #: A submit whose outcome no lookup could tell within the bound: held open, not resent.
    UNKNOWN_OUTCOME = "submit outcome unknown"
    #: A cancel the venue did not confirm within the bound: the order may still rest there.
    CANCEL_UNCONFIRMED = "cancel not confirmed"

    @classmethod
    def of(cls, reason: str) -> OrderAlert | None:
        for alert in cls:
            if reason.startswith(alert.value):
                return alert
        return None
