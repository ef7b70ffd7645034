"""
Pacing: the request budget, the in-flight cap, the shared 429 cool-down, and pure retry arithmetic.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import anyio

from ._config import Limits, RetryPolicy

__all__ = ["Pacer", "TokenBucket", "backoff_delay", "parse_retry_after", "retry_reason"]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """
    Return the wait a `Retry-After` header asks for, in seconds (never negative), or `None`.

    Both forms are accepted: delay-seconds (`"120"`, `"1.5"`) and an HTTP date.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(policy: RetryPolicy, retry: int, *, rand: Callable[[], float] = random.random) -> float:
    """
    Return the full-jitter wait before retry *retry* (1-based): uniform in [0, min(max, initial·2^(n-1))].
    """
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0 ** (retry - 1))
    return ceiling * rand()


def retry_reason(status: int | None, error: BaseException | None) -> str:
    """
    Name why an attempt failed, for the retry counters: the status, `"timeout"` or `"transport"`.
    """
    if status is not None:
        return str(status)
    if isinstance(error, TimeoutError):
        return "timeout"
    return "transport"


class TokenBucket:
    """
    A requests-per-second budget on anyio's clock (GCRA: each request reserves the next slot).

    *burst* requests may go at once; after that they are spaced 1/*rate* seconds apart.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self._tat = float("-inf")  # theoretical arrival time of the next request

    def reserve(self, now: float) -> float:
        """
        Reserve one request at time *now*; return how long to wait before sending it.
        """
        tat = max(self._tat, now)
        allowed_at = tat - self.tolerance
        self._tat = tat + self.interval
        return max(0.0, allowed_at - now)

    async def acquire(self) -> float:
        """
        Wait for one request's share of the budget; return the time waited.
        """
        delay = self.reserve(anyio.current_time())
        if delay > 0:
            await anyio.sleep(delay)
        return delay


class Pacer:
    """
    One per client: every request passes here, so the cap, the budget and a 429 cool-down are shared.
    """

    def __init__(self, limits: Limits) -> None:
        self.limiter = anyio.CapacityLimiter(limits.max_in_flight)
        self.bucket = (
            TokenBucket(limits.requests_per_second, limits.burst) if limits.requests_per_second else None
        )
        self.cooldown_until = 0.0
        self.budget_wait = 0.0
        self.cooldown_wait = 0.0

    def cool_down(self, seconds: float) -> None:
        """
        Hold every request back for *seconds* from now (never shortening a cool-down already set).
        """
        self.cooldown_until = max(self.cooldown_until, anyio.current_time() + seconds)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """
        Hold one in-flight slot, after waiting out any cool-down and the budget.
        """
        async with self.limiter:
            while (wait := self.cooldown_until - anyio.current_time()) > 0:
                self.cooldown_wait += wait
                await anyio.sleep(wait)
            if self.bucket is not None:
                self.budget_wait += await self.bucket.acquire()
            yield
