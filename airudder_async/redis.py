"""
Many processes, one account: the token, rate budget, 429 cool-down and webhook dedupe kept in Redis.

Needs the `[redis]` extra (`pip install 'airudder-async[redis]'`, redis-py's asyncio client).

```python
coordination = RedisCoordination(url="redis://localhost:6379/0")
async with coordination, AirudderClient.from_env(
    limits=Limits(requests_per_second=40), coordination=coordination
) as client:
    ...
```

- **One auth call per account.** The token lives under the account's key; a client that has none
  takes a lock (`SET NX PX`, released by its owner only, expiring after *lock_timeout* seconds so a
  crashed holder cannot block the others), checks again, fetches, and stores it. A refused token is
  deleted only if it is still the current one.
- **One budget.** A token bucket (GCRA) evaluated inside Redis by one Lua script on Redis's own clock
  (`TIME`): one round trip per request, which returns how long to wait for the budget and for the
  shared cool-down together. A 429's cool-down is set by another script that never shortens one
  already running.
- **Webhook dedupe** with `SET NX PX`.

Keys are `PREFIX:{ACCOUNT}:...`, where ACCOUNT is a hash of the APPKey (`coordination.account_id()`):
neither the key nor the secret is ever written to Redis. **The token is**: it is what the processes
share. Protect the Redis with a password or ACL and TLS (`rediss://`); see SECURITY.md.

Every Redis call is bounded by *timeout* seconds. When Redis cannot be reached in time,
*on_unavailable* decides: `"fail"` (the default) raises `CoordinationError` (fail closed: nothing is
sent, so the account's limit is never overrun); `"local"` logs a warning and falls back to this
process's own token, budget, cool-down and dedupe for *recheck* seconds before trying Redis again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio

from .coordination import (
    MemoryDedupeStore,
    MemoryRateBudget,
    MemoryTokenStore,
    OnUnavailable,
    SharedToken,
    account_id,
)
from .errors import CoordinationError

try:
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry
except ImportError:  # pragma: no cover - checked by a test that hides the package in a subprocess
    raise ImportError(
        "airudder_async.redis needs the redis package: pip install 'airudder-async[redis]'"
    ) from None

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_PREFIX",
    "DEFAULT_RECHECK",
    "DEFAULT_REDIS_TIMEOUT",
    "RedisCoordination",
    "RedisDedupeStore",
    "RedisRateBudget",
    "RedisTokenStore",
]

logger = logging.getLogger("airudder_async")

DEFAULT_PREFIX = "airudder"
DEFAULT_REDIS_TIMEOUT = 2.0  # seconds for any one Redis call, connecting included
DEFAULT_LOCK_TIMEOUT = 30.0  # seconds a token fetch may hold the lock (a crashed holder's lock expires)
DEFAULT_RECHECK = 5.0  # seconds of local fallback before Redis is tried again (on_unavailable="local")
_LOCK_POLL = 0.05  # seconds between looks at the token while another process fetches it

T = TypeVar("T")

# KEYS: tat, cool-down. ARGV: interval, tolerance (seconds). Returns the wait in seconds, as text
# (Redis turns a Lua number into an integer).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = now
local cd = tonumber(redis.call('GET', KEYS[2]))
if cd and cd > start then start = cd end
local interval = tonumber(ARGV[1])
if interval > 0 then
  local tolerance = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if not tat or tat < start then tat = start end
  local allowed = tat - tolerance
  if allowed > start then start = allowed end
  local new_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
end
return string.format('%.6f', start - now)
"""

# KEYS: cool-down. ARGV: seconds. Sets it to now + seconds unless it already ends later.
_COOL_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ends = now + tonumber(ARGV[1])
local cd = tonumber(redis.call('GET', KEYS[1]))
if not cd or ends > cd then
  redis.call('SET', KEYS[1], string.format('%.6f', ends), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""

# KEYS: cool-down. Returns the seconds left of it (<= 0: none), as text.
_COOL_DOWN_LEFT = """
local cd = tonumber(redis.call('GET', KEYS[1]))
if not cd then return '0' end
local t = redis.call('TIME')
return string.format('%.6f', cd - (tonumber(t[1]) + tonumber(t[2]) / 1000000))
"""

# KEYS: token. Returns {token, milliseconds left} or nil.
_GET_TOKEN = """
local v = redis.call('GET', KEYS[1])
if not v then return nil end
return {v, redis.call('PTTL', KEYS[1])}
"""

# KEYS: key. ARGV: value. Deletes the key only while it still holds the value.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class _Backend:
    """The Redis client, its scripts, and the bounded, typed way every call goes through it."""

    def __init__(self, client: Any, *, timeout: float, on_unavailable: OnUnavailable, recheck: float) -> None:
        self.client = client
        self.timeout = timeout
        self.on_unavailable = on_unavailable
        self.recheck = recheck
        self.down_until = -math.inf
        self.acquire = client.register_script(_ACQUIRE)
        self.cool_down = client.register_script(_COOL_DOWN)
        self.cool_down_left = client.register_script(_COOL_DOWN_LEFT)
        self.get_token = client.register_script(_GET_TOKEN)
        self.delete_if = client.register_script(_DELETE_IF)

    def is_local(self) -> bool:
        """Tell whether calls go to the local fallback now (Redis failed less than *recheck* ago)."""
        return anyio.current_time() < self.down_until

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call within the timeout; a failure becomes `CoordinationError`."""
        try:
            with anyio.fail_after(self.timeout):
                result = await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            failure = "no answer in time" if type(exc) is TimeoutError else type(exc).__name__
        else:
            if self.down_until != -math.inf:
                logger.warning("Redis is reachable again: %s is shared again", operation)
                self.down_until = -math.inf
            return result
        # Raised outside the except block: redis-py's exceptions may name the server and chain more.
        error = CoordinationError(
            f"Redis could not be reached for the {operation} within {self.timeout:g} s ({failure})",
            operation=operation,
        )
        if self.on_unavailable == "fail":
            raise error
        logger.warning("%s; using this process's own %s for %g s", error, operation, self.recheck)
        self.down_until = anyio.current_time() + self.recheck
        raise _Fallback


class _Fallback(Exception):
    """Redis failed under on_unavailable="local": the caller uses its local store."""


class RedisRateBudget:
    """
    The `RateBudget` of one account in Redis: *rate* requests per second (None: only the cool-down).
    """

    def __init__(self, backend: _Backend, *, keys: str, rate: float | None, burst: int) -> None:
        self._backend = backend
        self._tat, self._cooldown = f"{keys}:tat", f"{keys}:cooldown"
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._local = MemoryRateBudget(rate=rate, burst=burst)

    def __repr__(self) -> str:
        return f"<RedisRateBudget interval={self._interval:g}>"

    async def acquire(self) -> float:
        """
        Wait for one request's share of the budget and any cool-down (one round trip); return the wait.

        After a wait the cool-down is looked at once more, so a 429 seen meanwhile holds this request too.
        """
        b = self._backend
        if b.is_local():
            return await self._local.acquire()
        try:
            keys, args = [self._tat, self._cooldown], [repr(self._interval), repr(self._tolerance)]
            wait = float(await b.call("rate budget", lambda: b.acquire(keys=keys, args=args)))
            waited = 0.0
            while wait > 0:
                waited += wait
                await anyio.sleep(wait)
                wait = float(await b.call("rate budget", lambda: b.cool_down_left(keys=[self._cooldown])))
        except _Fallback:
            return await self._local.acquire()
        return waited

    async def cool_down(self, seconds: float) -> None:
        """
        Hold every request of the account back for *seconds* from now (Redis's clock), never shortening.
        """
        b = self._backend
        await self._local.cool_down(seconds)  # also held here, should Redis fail before it ends
        if b.is_local():
            return
        with contextlib.suppress(_Fallback):
            await b.call("cool-down", lambda: b.cool_down(keys=[self._cooldown], args=[repr(seconds)]))


class RedisTokenStore:
    """
    The `TokenStore` of one account in Redis: one fetch at a time across processes, under a lock.
    """

    def __init__(self, backend: _Backend, *, keys: str, lock_timeout: float) -> None:
        self._backend = backend
        self._key, self._lock = f"{keys}:token", f"{keys}:token-lock"
        self._lock_timeout = lock_timeout
        self._local = MemoryTokenStore()

    def __repr__(self) -> str:
        return "<RedisTokenStore>"

    async def get(self) -> SharedToken | None:
        """
        Return the account's token and the seconds it stays valid, or None.
        """
        b = self._backend
        if b.is_local():
            return await self._local.get()
        try:
            found = await b.call("token", lambda: b.get_token(keys=[self._key]))
        except _Fallback:
            return await self._local.get()
        if found is None:
            return None
        token, ms = found
        return (token.decode() if isinstance(token, bytes) else token), max(0.0, ms / 1000)

    async def obtain(self, fetch: Callable[[], Awaitable[str]], *, lifetime: float) -> SharedToken:
        """
        Return the account's token, or fetch one under the lock and keep it *lifetime* seconds.

        While another process holds the lock this waits for its token; a lock left by a crashed
        process expires after *lock_timeout* seconds.
        """
        b = self._backend
        owner = secrets.token_hex(16)
        try:
            while True:
                if b.is_local():
                    return await self._local.obtain(fetch, lifetime=lifetime)
                taken = await b.call(
                    "token",
                    lambda: b.client.set(self._lock, owner, nx=True, px=_ms(self._lock_timeout)),
                )
                current = await self.get()
                if current is not None:
                    if taken:
                        await self._unlock(owner)
                    return current
                if taken:
                    break
                await anyio.sleep(_LOCK_POLL)
        except _Fallback:
            return await self._local.obtain(fetch, lifetime=lifetime)
        try:
            token = await fetch()
            with contextlib.suppress(_Fallback):
                await b.call("token", lambda: b.client.set(self._key, token, px=_ms(lifetime)))
            return token, lifetime
        finally:
            with anyio.CancelScope(shield=True):
                await self._unlock(owner)

    async def _unlock(self, owner: str) -> None:
        b = self._backend
        with contextlib.suppress(_Fallback, CoordinationError):  # else it expires after lock_timeout
            await b.call("token", lambda: b.delete_if(keys=[self._lock], args=[owner]))

    async def invalidate(self, token: str) -> None:
        """
        Delete *token* from Redis if it is still the account's current one.
        """
        b = self._backend
        await self._local.invalidate(token)
        if b.is_local():
            return
        with contextlib.suppress(_Fallback):
            await b.call("token", lambda: b.delete_if(keys=[self._key], args=[token]))


class RedisDedupeStore:
    """
    A `DedupeStore` in Redis (`SET NX PX`): replicas sharing it deliver a retried webhook once.
    """

    def __init__(self, backend: _Backend, *, keys: str) -> None:
        self._backend = backend
        self._keys = keys
        self._local = MemoryDedupeStore()

    def __repr__(self) -> str:
        return "<RedisDedupeStore>"

    async def first_time(self, key: bytes, ttl: float) -> bool:
        """
        Record *key* for *ttl* seconds (`math.inf`: no expiry); tell whether it was new.
        """
        b = self._backend
        if b.is_local():
            return await self._local.first_time(key, ttl)
        name = f"{self._keys}:{key.hex()}"
        px = None if math.isinf(ttl) else _ms(ttl)
        try:
            return bool(await b.call("webhook dedupe", lambda: b.client.set(name, b"1", nx=True, px=px)))
        except _Fallback:
            return await self._local.first_time(key, ttl)

    async def forget(self, key: bytes) -> None:
        """
        Forget *key* (best effort: if Redis is unreachable, the record expires with its ttl).
        """
        b = self._backend
        await self._local.forget(key)
        if b.is_local():
            return
        with contextlib.suppress(_Fallback, CoordinationError):
            await b.call("webhook dedupe", lambda: b.client.delete(f"{self._keys}:{key.hex()}"))


class RedisCoordination:
    """
    A `Coordination` in Redis for clients in many processes; pass it as `AirudderClient(coordination=)`.

    Give a redis *url* (`redis://`, `rediss://` for TLS; a password in it is never shown) or your own
    `redis.asyncio.Redis` *client* (never closed here; its own timeouts and retries apply too). Keys
    start with *prefix*. *timeout* bounds every Redis call in seconds; *on_unavailable* says what a
    failed call does (`"fail"`: `CoordinationError`; `"local"`: a warning, then this process's own
    stores for *recheck* seconds). *lock_timeout* is how long one token fetch may hold the lock.
    Use it as `async with coordination:` (or call `aclose()`) to close the connections it opened.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        client: aioredis.Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_REDIS_TIMEOUT,
        on_unavailable: OnUnavailable = "fail",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        recheck: float = DEFAULT_RECHECK,
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("pass exactly one of url= and client=")
        if on_unavailable not in ("fail", "local"):
            raise ValueError(f"on_unavailable must be 'fail' or 'local', got {on_unavailable!r}")
        for name, value in (("timeout", timeout), ("lock_timeout", lock_timeout), ("recheck", recheck)):
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} \r\n"):
            raise ValueError("prefix must be a non-empty string without braces or whitespace")
        self._owns_client = client is None
        if client is None:
            # One attempt per call, bounded: *timeout* is the whole budget, not one of several tries.
            client = aioredis.Redis.from_url(
                str(url),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        self.prefix = prefix
        self.on_unavailable: OnUnavailable = on_unavailable
        self._lock_timeout = lock_timeout
        self._backend = _Backend(client, timeout=timeout, on_unavailable=on_unavailable, recheck=recheck)

    def __repr__(self) -> str:
        return f"<RedisCoordination prefix={self.prefix!r} on_unavailable={self.on_unavailable!r}>"

    def _keys(self, app_key: str) -> str:
        # The account in braces: a Redis Cluster keeps an account's keys (one script uses two) together.
        return f"{self.prefix}:{{{account_id(app_key)}}}"

    def rate_budget(self, *, app_key: str, rate: float | None, burst: int) -> RedisRateBudget:
        """
        Return the account's shared budget: *rate* requests per second (None: only the cool-down).

        Every process must pass the same *rate* and *burst* (each client's `Limits`).
        """
        return RedisRateBudget(self._backend, keys=self._keys(app_key), rate=rate, burst=burst)

    def token_store(self, *, app_key: str) -> RedisTokenStore:
        """
        Return the account's shared token store.
        """
        return RedisTokenStore(self._backend, keys=self._keys(app_key), lock_timeout=self._lock_timeout)

    def dedupe_store(self, *, namespace: str = "webhooks") -> RedisDedupeStore:
        """
        Return a webhook `DedupeStore` for `webhook_handler(dedupe=...)`; replicas pass the same *namespace*.
        """
        if not namespace or any(c in namespace for c in "{} \r\n"):
            raise ValueError("namespace must be a non-empty string without braces or whitespace")
        return RedisDedupeStore(self._backend, keys=f"{self.prefix}:{namespace}")

    async def aclose(self) -> None:
        """
        Close the connections this object opened (a *client* you passed stays open). Idempotent.
        """
        if self._owns_client:
            await self._backend.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
