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
import importlib.util
import logging
import math
import re
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
    from redis.exceptions import RedisError, ResponseError
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
    "MAX_SHARED_TOKEN",
    "MAX_SHARED_WAIT",
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
# Any wait read from Redis (a cool-down, the budget's next slot) further ahead than this is corrupt (a
# Redis clock stepped back, a bogus writer): the scripts reset it, and a reply beyond it is refused.
MAX_SHARED_WAIT = 900.0
MAX_SHARED_TOKEN = 4096  # bytes; a stored token longer, or not printable ASCII without spaces, is deleted
_TOKEN_SHAPE = re.compile(rb"[!-~]+")
_LOCK_POLL = 0.05  # seconds between looks at the token while another process fetches it
# A new connection sends its first command at once, with no HELLO or CLIENT SETINFO round trip before
# it (RESP2 needs no HELLO): the forget() after a SET NX whose reply came late then reaches Redis even
# while its replies are still slow.
_NO_HANDSHAKE: dict[str, Any] = {"protocol": 2} | (
    {"driver_info": None}
    if importlib.util.find_spec("redis.driver_info") is not None  # redis-py >= 7.1
    else {"lib_name": None, "lib_version": None}
)

T = TypeVar("T")

# KEYS: tat, cool-down. ARGV: interval, tolerance, MAX_SHARED_WAIT (seconds). Returns the wait in
# seconds, as text (Redis turns a Lua number into an integer). A cool-down more than MAX_SHARED_WAIT
# ahead (or not a number) is deleted and ignored; such a tat is reset to now.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = now + tonumber(ARGV[3])
local start = now
local stored = redis.call('GET', KEYS[2])
local cd = tonumber(stored)
if stored and (not cd or cd ~= cd or cd > limit) then
  redis.call('DEL', KEYS[2])
  cd = nil
end
if cd and cd > start then start = cd end
local interval = tonumber(ARGV[1])
if interval > 0 then
  local tolerance = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if tat and (tat ~= tat or tat > limit + tolerance) then tat = nil end
  if not tat or tat < start then tat = start end
  local allowed = tat - tolerance
  if allowed > start then start = allowed end
  local new_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
end
return string.format('%.6f', start - now)
"""

# KEYS: cool-down. ARGV: seconds (<= MAX_SHARED_WAIT), MAX_SHARED_WAIT. Sets it to now + seconds unless
# it already ends later (and not corruptly later).
_COOL_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ends = now + tonumber(ARGV[1])
local cd = tonumber(redis.call('GET', KEYS[1]))
if not cd or cd ~= cd or ends > cd or cd > now + tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], string.format('%.6f', ends), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""

# KEYS: cool-down. ARGV: MAX_SHARED_WAIT. Returns the seconds left of it (<= 0: none), as text; one
# more than MAX_SHARED_WAIT ahead (or not a number) is deleted and ignored.
_COOL_DOWN_LEFT = """
local stored = redis.call('GET', KEYS[1])
if not stored then return '0' end
local t = redis.call('TIME')
local left = (tonumber(stored) or 0 / 0) - (tonumber(t[1]) + tonumber(t[2]) / 1000000)
if left ~= left or left > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return '0'
end
return string.format('%.6f', left)
"""

# KEYS: token. ARGV: MAX_SHARED_TOKEN. Returns {token, milliseconds left} or nil. A value that is no
# token (not a string, longer than MAX_SHARED_TOKEN, not printable ASCII without spaces) is deleted and
# treated as absent, and a long one is never read.
_GET_TOKEN = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return nil end
if kind ~= 'string' or redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return nil
end
local v = redis.call('GET', KEYS[1])
if not string.find(v, '^[!-~]+$') then
  redis.call('DEL', KEYS[1])
  return nil
end
return {v, redis.call('PTTL', KEYS[1])}
"""

# KEYS: key. ARGV: value. Deletes the key only while it still holds the value.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _bad_reply(operation: str, problem: str) -> CoordinationError:
    # The reply itself is never shown: it may be a token.
    return CoordinationError(f"Redis's reply for the {operation} was {problem}", operation=operation)


def _wait(reply: object) -> float:
    """The seconds to wait in a budget script's reply: finite and at most MAX_SHARED_WAIT."""
    wait = math.nan
    if isinstance(reply, bytes | str) and len(reply) <= 64:
        text = reply.decode("ascii", "replace") if isinstance(reply, bytes) else reply
        with contextlib.suppress(ValueError):
            wait = float(text)
    if not (math.isfinite(wait) and wait <= MAX_SHARED_WAIT):  # NaN: not a number, or no number at all
        raise _bad_reply("rate budget", f"not a wait of at most {MAX_SHARED_WAIT:g} s")
    return wait


def _token(reply: object) -> SharedToken | None:
    """The token and its seconds left in the token script's reply (None: no token)."""
    if reply is None:
        return None
    if not (isinstance(reply, list) and len(reply) == 2):
        raise _bad_reply("token", "not a pair of a token and its time to live")
    token, ms = reply
    if isinstance(token, str):
        token = token.encode("utf-8", "replace")
    if not (isinstance(token, bytes) and len(token) <= MAX_SHARED_TOKEN and _TOKEN_SHAPE.fullmatch(token)):
        raise _bad_reply("token", f"not a token (printable ASCII, at most {MAX_SHARED_TOKEN} bytes)")
    if type(ms) is not int:
        raise _bad_reply("token", "a time to live that is not an integer")
    return token.decode("ascii"), max(0.0, ms / 1000)


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
        except ResponseError as exc:  # the server answered with an error (a script on corrupt data)
            failure, reason = type(exc).__name__, "answered the {} with an error"
        except (RedisError, OSError, TimeoutError) as exc:
            failure = "no answer in time" if type(exc) is TimeoutError else type(exc).__name__
            reason = "could not be reached for the {} within " + f"{self.timeout:g} s"
        else:
            if self.down_until != -math.inf:
                logger.warning("Redis is reachable again: %s is shared again", operation)
                self.down_until = -math.inf
            return result
        # Raised outside the except block: redis-py's exceptions may name the server and chain more.
        error = CoordinationError(f"Redis {reason.format(operation)} ({failure})", operation=operation)
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
            keys = [self._tat, self._cooldown]
            args = [repr(self._interval), repr(self._tolerance), repr(MAX_SHARED_WAIT)]
            wait = _wait(await b.call("rate budget", lambda: b.acquire(keys=keys, args=args)))
            waited = 0.0
            while wait > 0:
                waited += wait
                await anyio.sleep(wait)
                left = await b.call("rate budget", lambda: b.cool_down_left(keys=keys[1:], args=args[2:]))
                wait = _wait(left)
        except _Fallback:
            return await self._local.acquire()
        return waited

    async def cool_down(self, seconds: float) -> None:
        """
        Hold every request of the account back for *seconds* from now (Redis's clock), never shortening.

        *seconds* is clamped to `MAX_SHARED_WAIT`.
        """
        seconds = min(seconds, MAX_SHARED_WAIT) if seconds > 0 else 0.0
        b = self._backend
        await self._local.cool_down(seconds)  # also held here, should Redis fail before it ends
        if b.is_local():
            return
        with contextlib.suppress(_Fallback):
            args = [repr(seconds), repr(MAX_SHARED_WAIT)]
            await b.call("cool-down", lambda: b.cool_down(keys=[self._cooldown], args=args))


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
            found = await b.call("token", lambda: b.get_token(keys=[self._key], args=[MAX_SHARED_TOKEN]))
        except _Fallback:
            return await self._local.get()
        return _token(found)

    async def obtain(self, fetch: Callable[[], Awaitable[str]], *, lifetime: float) -> SharedToken:
        """
        Return the account's token, or fetch one under the lock and keep it *lifetime* seconds.

        While another process holds the lock this waits for its token; a lock left by a crashed
        process expires after *lock_timeout* seconds.
        """
        try:
            return await self._obtain_shared(fetch, lifetime=lifetime)
        except _Fallback:  # the lock, if it may be held, is released by now
            return await self._local.obtain(fetch, lifetime=lifetime)

    async def _obtain_shared(self, fetch: Callable[[], Awaitable[str]], *, lifetime: float) -> SharedToken:
        b = self._backend
        owner = secrets.token_hex(16)
        held = False  # True from the moment SET NX is sent until it is known to have failed
        try:
            while True:
                if b.is_local():
                    return await self._local.obtain(fetch, lifetime=lifetime)
                held = True  # a SET NX whose reply is lost (cancelled, timed out) may have taken it
                taken = await b.call(
                    "token",
                    lambda: b.client.set(self._lock, owner, nx=True, px=_ms(self._lock_timeout)),
                )
                held = bool(taken)
                current = await self.get()
                if current is not None:
                    return current
                if held:
                    break
                await anyio.sleep(_LOCK_POLL)
            token = await fetch()
            with contextlib.suppress(_Fallback):
                await b.call("token", lambda: b.client.set(self._key, token, px=_ms(lifetime)))
            return token, lifetime
        finally:
            if held:
                await self._unlock(owner)

    async def _unlock(self, owner: str) -> None:
        """Release the lock if *owner* holds it: shielded, bounded, quiet (else it expires by itself)."""
        b = self._backend
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(b.timeout),
            contextlib.suppress(RedisError, OSError),
        ):
            await b.delete_if(keys=[self._lock], args=[owner])

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

    No shared wait exceeds `MAX_SHARED_WAIT` (900 s): a cool-down or budget slot further ahead in Redis
    (its clock stepped back, a bogus writer) is treated as corrupt, reset and ignored; `cool_down()`
    is clamped to it; a reply claiming a longer wait raises `CoordinationError`. A stored token that is
    not printable ASCII without spaces, or longer than `MAX_SHARED_TOKEN` bytes, is deleted and a fresh
    one fetched; a reply of the wrong shape or type raises `CoordinationError`.
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
                **_NO_HANDSHAKE,
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
