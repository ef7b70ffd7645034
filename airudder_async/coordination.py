"""
Coordination between clients that share one AIRUDDER account: the interfaces, and in-memory stores.

One account has one token and one rate limit, however many processes use it. A client given a
*coordination* (`AirudderClient(..., coordination=...)`) takes from it:

- a `RateBudget`: every request waits for its share of one requests-per-second budget, and a 429
  holds back every client sharing it (the cool-down);
- a `TokenStore`: one token for the account, fetched once however many clients need it.

A webhook receiver takes a `DedupeStore` (`webhook_handler(..., dedupe=...)`), so a retried delivery
landing on another replica is still dropped.

Without a coordination, each client keeps its own token, budget and cool-down, as before.
`MemoryCoordination` shares them between the clients of one process; `airudder_async.redis.RedisCoordination`
(the `[redis]` extra) shares them between processes and machines.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, runtime_checkable

import anyio

from ._ratelimit import TokenBucket

__all__ = [
    "Coordination",
    "DedupeStore",
    "MemoryCoordination",
    "MemoryDedupeStore",
    "MemoryRateBudget",
    "MemoryTokenStore",
    "OnUnavailable",
    "RateBudget",
    "SharedToken",
    "TokenStore",
    "account_id",
]

OnUnavailable = Literal["fail", "local"]
"""What a shared store does when its backend cannot be reached: raise `CoordinationError`, or act locally."""

SharedToken = tuple[str, float]
"""A token and how many seconds it may still be used."""


def account_id(app_key: str) -> str:
    """
    Return the name under which an account's shared state is kept: a hash of *app_key*, never the key.
    """
    return hashlib.blake2b(app_key.encode(), digest_size=12, person=b"airudder-acct").hexdigest()


@runtime_checkable
class RateBudget(Protocol):
    """
    One requests-per-second budget and one cool-down, shared by every client that holds it.
    """

    async def acquire(self) -> float:
        """
        Wait for one request's share of the budget and for any cool-down; return the seconds waited.
        """
        ...

    async def cool_down(self, seconds: float) -> None:
        """
        Hold every request back for *seconds* from now; a cool-down already set is never shortened.
        """
        ...


@runtime_checkable
class TokenStore(Protocol):
    """
    One account's current token, shared by every client that holds the store.
    """

    async def get(self) -> SharedToken | None:
        """
        Return the current token and the seconds it stays valid, or None when there is none.
        """
        ...

    async def obtain(self, fetch: Callable[[], Awaitable[str]], *, lifetime: float) -> SharedToken:
        """
        Return the current token, or call *fetch* (one auth request) and keep its token *lifetime* seconds.

        At most one holder of the store fetches at a time; the others wait and then use its token.
        """
        ...

    async def invalidate(self, token: str) -> None:
        """
        Forget *token* after the API refused it, unless a newer token replaced it meanwhile.
        """
        ...


@runtime_checkable
class DedupeStore(Protocol):
    """
    Remembers webhook deliveries, so a retry is delivered once however many receivers share the store.
    """

    async def first_time(self, key: bytes, ttl: float) -> bool:
        """
        Record *key* for *ttl* seconds (`math.inf`: until evicted); tell whether it was new.
        """
        ...

    async def forget(self, key: bytes) -> None:
        """
        Forget *key*, recorded by a delivery that could not be scheduled after all (so its retry is not lost).
        """
        ...


@runtime_checkable
class Coordination(Protocol):
    """
    Where clients of one account find their shared `RateBudget` and `TokenStore`.
    """

    def rate_budget(self, *, app_key: str, rate: float | None, burst: int) -> RateBudget:
        """
        Return the budget of the account of *app_key*: *rate* requests per second (None: no limit, only
        the shared cool-down), *burst* at once.
        """
        ...

    def token_store(self, *, app_key: str) -> TokenStore:
        """
        Return the token store of the account of *app_key*.
        """
        ...


class MemoryRateBudget:
    """
    A `RateBudget` in this process, on anyio's clock: *rate* requests per second (None: no limit), *burst*
    at once.
    """

    def __init__(self, *, rate: float | None, burst: int = 1) -> None:
        self._bucket = None if rate is None else TokenBucket(rate, burst)
        self._cooldown_until = 0.0

    def __repr__(self) -> str:
        rate = None if self._bucket is None else 1.0 / self._bucket.interval
        return f"<MemoryRateBudget rate={rate}>"

    async def acquire(self) -> float:
        """
        Wait out any cool-down, then for one request's share of the budget; return the seconds waited.
        """
        waited = 0.0
        while (wait := self._cooldown_until - anyio.current_time()) > 0:
            waited += wait
            await anyio.sleep(wait)
        if self._bucket is not None:
            waited += await self._bucket.acquire()
        return waited

    async def cool_down(self, seconds: float) -> None:
        """
        Hold every request back for *seconds* from now (never shortening a cool-down already set).
        """
        self._cooldown_until = max(self._cooldown_until, anyio.current_time() + seconds)


class MemoryTokenStore:
    """
    A `TokenStore` in this process, on anyio's clock: one fetch at a time.
    """

    def __init__(self) -> None:
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<MemoryTokenStore has_token={self._token is not None}>"

    async def get(self) -> SharedToken | None:
        """
        Return the current token and the seconds it stays valid, or None.
        """
        left = self._expires_at - anyio.current_time()
        if self._token is None or left <= 0:
            return None
        return self._token, left

    async def obtain(self, fetch: Callable[[], Awaitable[str]], *, lifetime: float) -> SharedToken:
        """
        Return the current token, or fetch one (one caller at a time) and keep it *lifetime* seconds.
        """
        async with self._lock:
            current = await self.get()
            if current is not None:
                return current
            token = await fetch()
            self._token, self._expires_at = token, anyio.current_time() + lifetime
            return token, lifetime

    async def invalidate(self, token: str) -> None:
        """
        Forget *token* if it is still the current one.
        """
        if self._token == token:
            self._token = None


class MemoryDedupeStore:
    """
    A `DedupeStore` in this process: at most *size* keys, oldest first out, on anyio's clock.
    """

    def __init__(self, *, size: int = 10_000) -> None:
        self._size = size
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"<MemoryDedupeStore keys={len(self._expiry)}>"

    async def first_time(self, key: bytes, ttl: float) -> bool:
        """
        Record *key* for *ttl* seconds; tell whether it was new (or its record had expired).
        """
        now = anyio.current_time()
        expiry = self._expiry.get(key)
        if expiry is not None and expiry > now:
            return False
        self._expiry[key] = now + ttl
        self._expiry.move_to_end(key)
        while len(self._expiry) > self._size:
            self._expiry.popitem(last=False)
        return True

    async def forget(self, key: bytes) -> None:
        """
        Forget *key*.
        """
        self._expiry.pop(key, None)


class MemoryCoordination:
    """
    A `Coordination` for the clients of one process: one budget and one token per account.

    The first client of an account fixes its budget's *rate* and *burst*.
    """

    def __init__(self) -> None:
        self._budgets: dict[str, MemoryRateBudget] = {}
        self._tokens: dict[str, MemoryTokenStore] = {}

    def __repr__(self) -> str:
        return f"<MemoryCoordination accounts={len(self._budgets | self._tokens)}>"

    def rate_budget(self, *, app_key: str, rate: float | None, burst: int) -> MemoryRateBudget:
        """
        Return the account's budget, made on first use with *rate* and *burst*.
        """
        account = account_id(app_key)
        budget = self._budgets.get(account)
        if budget is None:
            budget = self._budgets[account] = MemoryRateBudget(rate=rate, burst=burst)
        return budget

    def token_store(self, *, app_key: str) -> MemoryTokenStore:
        """
        Return the account's token store.
        """
        return self._tokens.setdefault(account_id(app_key), MemoryTokenStore())

    def dedupe_store(self, *, size: int = 10_000) -> MemoryDedupeStore:
        """
        Return a new `MemoryDedupeStore` holding at most *size* keys (share it between receivers).
        """
        return MemoryDedupeStore(size=size)
