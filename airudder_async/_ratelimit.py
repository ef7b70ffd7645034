"""
Pacing: the request budget, the in-flight cap, and the cool-down shared after a 429.

When and how long to wait after a refusal is decided in `_protocol.py`; this module does the waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from ._config import Limits

if TYPE_CHECKING:
    from .coordination import RateBudget

__all__ = ["Pacer", "TokenBucket"]


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

    With a *shared* budget (`coordination.RateBudget`), it replaces the local budget and cool-down.
    """

    def __init__(self, limits: Limits, shared: RateBudget | None = None) -> None:
        self.shared = shared
        self.limiter = anyio.CapacityLimiter(limits.max_in_flight)
        self.bucket = (
            TokenBucket(limits.requests_per_second, limits.burst) if limits.requests_per_second else None
        )
        self.cooldown_until = 0.0
        self.budget_wait = 0.0
        self.cooldown_wait = 0.0

    async def cool_down(self, seconds: float) -> None:
        """
        Hold every request back for *seconds* from now (never shortening a cool-down already set).
        """
        if self.shared is not None:
            await self.shared.cool_down(seconds)
            return
        self.cooldown_until = max(self.cooldown_until, anyio.current_time() + seconds)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """
        Hold one in-flight slot, after waiting out any cool-down and the budget.
        """
        async with self.limiter:
            if self.shared is not None:
                self.budget_wait += await self.shared.acquire()  # budget and cool-down in one wait
                yield
                return
            while (wait := self.cooldown_until - anyio.current_time()) > 0:
                self.cooldown_wait += wait
                await anyio.sleep(wait)
            if self.bucket is not None:
                self.budget_wait += await self.bucket.acquire()
            yield
