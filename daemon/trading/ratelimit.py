"""Token buckets: one on the feed clock (risk gate: reject), one on the wall clock (live: wait).

`TokenBucket` never sleeps: `try_take(now_ns)` answers yes or no on whatever clock the
caller runs, so the risk gate behaves the same live and in a backtest.
`AsyncTokenBucket` makes a live submit wait for its turn; `order_bucket()` returns one
per (venue, account), shared by every task and executor object trading that account,
because the venue counts orders per account, not per client object.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from daemon.core.clock import NS_PER_SECOND


class TokenBucket:
    """`rate` tokens per second, at most `burst` stored; starts full."""

    __slots__ = ("_last_ns", "_per_ns", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._per_ns = rate / NS_PER_SECOND
        self._tokens = self.burst
        self._last_ns: int | None = None

    def _refill(self, now_ns: int) -> None:
        if self._last_ns is not None and now_ns > self._last_ns:
            self._tokens = min(self.burst, self._tokens + (now_ns - self._last_ns) * self._per_ns)
        if self._last_ns is None or now_ns > self._last_ns:
            self._last_ns = now_ns

    def try_take(self, now_ns: int, tokens: float = 1.0) -> bool:
        self._refill(now_ns)
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False

    def reserve(self, now_ns: int) -> int:
        """Take a token now, going into debt if none is left; return the ns to wait.

        Waiters queue by the order of their reservations (the debt grows by one token per
        caller), so no lock is needed and nothing is bound to one event loop.
        """
        self._refill(now_ns)
        self._tokens -= 1.0
        return 0 if self._tokens >= 0 else int(-self._tokens / self._per_ns) + 1


class AsyncTokenBucket:
    """Waits (asyncio) until the caller's token is due; first come, first served."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._bucket = TokenBucket(rate, burst)

    @property
    def rate(self) -> float:
        return self._bucket.rate

    async def acquire(self) -> None:
        wait_ns = self._bucket.reserve(time.monotonic_ns())
        if wait_ns:
            await asyncio.sleep(wait_ns / NS_PER_SECOND)


_ORDER_BUCKETS: dict[str, AsyncTokenBucket] = {}


def order_bucket(venue: str, account: str, rate: float, burst: float | None = None
                 ) -> AsyncTokenBucket:
    """The process-wide order-rate bucket of one venue account.

    `account` identifies the account (the API key); only a hash of it is kept.
    """
    key = venue + ":" + hashlib.sha256(account.encode()).hexdigest()[:16]
    bucket = _ORDER_BUCKETS.get(key)
    if bucket is None:
        bucket = _ORDER_BUCKETS[key] = AsyncTokenBucket(rate, burst)
    return bucket
