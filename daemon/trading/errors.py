"""A small error taxonomy for venue calls, each kind with a `should_retry` answer.

Venue-neutral: the kinds, the backoff, credential scrubbing and the errors trading raises.
Which ccxt exception is which kind is decided in the ccxt seam
(`adapters.ccxt.exchange.classify`); ccxt maps venue error codes to its exception classes,
and we fold those into the few kinds the executor acts on differently:

| kind         | examples                                         | retry? | what to do            |
|--------------|--------------------------------------------------|--------|-----------------------|
| RATE_LIMIT   | RateLimitExceeded, DDoSProtection (418/429)      | yes    | back off, same id     |
| AMBIGUOUS    | RequestTimeout, NetworkError, -1006/-1007        | yes    | outcome unknown: look |
|              | ("execution status unknown"), dropped connection |        | the id up, retry same |
| CLOCK        | InvalidNonce (-1021 timestamp outside window)    | yes    | resync time, retry    |
| DUPLICATE    | "Duplicate order sent." (Binance -2010), Bybit   | no     | success: fetch order  |
|              | 110072 "OrderLinkedID is duplicate"              |        |                       |
| NOT_FOUND    | OrderNotFound (-2011 / -2013)                    | no     | order gone / unknown  |
| REJECTED     | InvalidOrder, InsufficientFunds, BadRequest      | never  | reject the intent     |
| AUTH         | AuthenticationError, PermissionDenied            | never  | stop, operator needed |
| UNKNOWN      | anything else                                    | no     | reject, log           |

`ExecutionError` carries a kind and a message that has been scrubbed of credentials.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    RATE_LIMIT = "rate_limit"
    AMBIGUOUS = "ambiguous"
    CLOCK = "clock"
    DUPLICATE = "duplicate"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    AUTH = "auth"
    UNKNOWN = "unknown"


RETRYABLE = frozenset({ErrorKind.RATE_LIMIT, ErrorKind.AMBIGUOUS, ErrorKind.CLOCK})


def backoff_s(kind: ErrorKind, attempt: int, base_s: float = 0.05, cap_s: float = 5.0) -> float:
    """Exponential backoff; rate-limit errors start 10x higher (the venue asked us to slow down)."""
    start = base_s * (10.0 if kind is ErrorKind.RATE_LIMIT else 1.0)
    return min(cap_s, start * (2.0 ** attempt))


class Redactor:
    """Removes credentials from any text before it is logged or raised."""

    __slots__ = ("_secrets",)

    def __init__(self, *secrets: str | None) -> None:
        # Longest first, so a secret containing another is removed whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, *secrets: str | None) -> None:
        self._secrets = sorted(
            set(self._secrets) | {s for s in secrets if s and len(s) >= 4}, key=len, reverse=True
        )

    def __call__(self, text: object) -> str:
        out = str(text)
        for secret in self._secrets:
            if secret in out:
                out = out.replace(secret, "***")
        return out

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"


class ExecutionError(Exception):
    """A venue call failed; `kind` says whether to retry. The message holds no credentials."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def should_retry(self) -> bool:
        return self.kind in RETRYABLE



class LiveTradingRefused(RuntimeError):
    """Live trading was asked for without keys or without an explicit opt-in."""


class TransferRefused(RuntimeError):
    """A transfer or withdrawal the settings do not allow (or the balance cannot cover)."""
