"""
FakeAirudder: a real AIRUDDER look-alike HTTP server on 127.0.0.1 for your tests (and our sandbox).

```python
async with FakeAirudder(workflows=500) as fake, fake.client() as client:
    fake.inject(Fault.http_status(503), on=2)     # the 2nd instancelist request fails once
    ids = [wf.workflow_id async for wf in client.iter_workflows()]
assert ids == fake.workflow_ids()
```

It checks credentials, issues tokens that expire on a clock you control (`advance()`), lists workflows
newest first with the vendor's paging and time filters, records every request, and injects faults by
schedule or at random with a seed.

Tests wait on events, never on the wall clock: `await fake.wait_for_hits(method, path, n)` returns once
the server has received *n* such requests, and `gate = fake.gate(path)` holds requests until
`gate.release()`, with `await gate.wait_held(n)` to know that *n* of them are stuck there:

```python
# Fixed pacing: adaptive pacing's slow start would hold the prefetch to 2 requests in flight here.
async with FakeAirudder(workflows=500) as fake, fake.client(limits=Limits(adaptive=False)) as client:
    gate = fake.gate(INSTANCELIST_PATH, after=1)   # page 1 is answered, later pages wait
    walk = client.iter_workflows(page_size=100, prefetch=4)
    await walk.__anext__()
    await gate.wait_held(4)                        # pages 2-5 are in flight, and stay there
    gate.release()
```

A server-side rate limit (`RateLimit`, a token bucket on the server's clock) answers 429 past its budget,
so a client can meet an account limit it does not know; `fake.set_rate_limit()` changes it mid-run and
`fake.rate_limit_stats()` tells how many requests it let through and refused.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Literal, Self, Unpack

import aiohttp
import anyio
import attrs
from aiohttp import web

from . import _json
from ._auth import AUTH_PATH
from ._client import (
    APINOTICEINFO_PATH,
    CREATEINSTANCE_PATH,
    DETAILINSTANCES_PATH,
    INSTANCELIST_PATH,
    TASKDETAIL_PATH,
    AirudderClient,
    ClientOptions,
)
from ._config import RetryPolicy
from ._time import format_time

__all__ = [
    "APINOTICEINFO_PATH",
    "AUTH_PATH",
    "CREATEINSTANCE_PATH",
    "DETAILINSTANCES_PATH",
    "FAKE_RETRY",
    "INSTANCELIST_PATH",
    "TASKDETAIL_PATH",
    "FakeAirudder",
    "Fault",
    "Gate",
    "RateLimit",
    "RateLimitStats",
    "RecordedRequest",
    "make_workflows",
]

DEFAULT_APP_KEY = "sandbox-app-key"
DEFAULT_APP_SECRET = "sandbox-app-secret"
_BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
FAKE_RETRY = RetryPolicy(backoff_initial=0.0, backoff_max=0.0)  # fake.client()'s default: no backoff waits
# Seen in the vendor docs: cancelled, finished. The others are synthetic examples of statuses a client
# has never heard of, to prove they pass through.
_STATUSES = ("finished", "cancelled", "running", "finished", "paused", "finished", "pending")
_FINAL = frozenset({"finished", "cancelled"})  # the documented statuses: a workflow's last word

_WAIT_LIMIT = 5.0  # seconds: how long the waiting helpers wait before a test fails instead of hanging
# A token short by less than this (float rounding of refill arithmetic) still counts as whole, so a client
# that waits exactly the Retry-After it was given is let through.
_TOKEN_SLACK = 1e-9

FaultKind = Literal["status", "slow", "drop", "malformed", "envelope", "revoke", "insert", "raw"]


@attrs.frozen(kw_only=True)
class Fault:
    """
    One misbehaviour for the fake server to show on a request; build them with the class methods.
    """

    kind: FaultKind
    status: int = 500
    code: int | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    count: int = 0
    body: bytes = b""

    @classmethod
    def http_status(cls, status: int, *, retry_after: float | None = None) -> Fault:
        """Answer *status* with an error envelope (and `Retry-After: <seconds>` when given)."""
        ra = None if retry_after is None else f"{retry_after:g}"
        return cls(kind="status", status=status, retry_after=ra)

    @classmethod
    def rate_limited(cls, retry_after: float | None = 0.0, *, as_date: bool = False) -> Fault:
        """Answer 429; `Retry-After` in seconds, or as an HTTP date when *as_date* is true."""
        if retry_after is None:
            return cls(kind="status", status=429)
        if as_date:
            return cls(kind="status", status=429, seconds=retry_after, retry_after="date")
        return cls(kind="status", status=429, retry_after=f"{retry_after:g}")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait *seconds* before answering normally (to trip the client's timeout)."""
        return cls(kind="slow", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """Send half of a normal answer, then close the connection."""
        return cls(kind="drop")

    @classmethod
    def malformed_json(cls) -> Fault:
        """Answer 200 with a body that is not JSON."""
        return cls(kind="malformed")

    @classmethod
    def error_envelope(cls, code: int = 500, status: int = 200) -> Fault:
        """Answer HTTP *status* (200 by default) with an envelope whose `code` is *code*."""
        return cls(kind="envelope", status=status, code=code)

    @classmethod
    def answer(cls, body: object, *, status: int = 200) -> Fault:
        """Answer *status* with *body*: bytes as they are, anything else as JSON (e.g. a strange shape)."""
        raw = body if isinstance(body, bytes) else _json.dumps(body)
        return cls(kind="raw", status=status, body=raw)

    @classmethod
    def revoke_token(cls) -> Fault:
        """Revoke every issued token just before handling the request (so it is refused)."""
        return cls(kind="revoke")

    @classmethod
    def insert_head(cls, count: int) -> Fault:
        """Create *count* new workflows (newest of all) just before handling the request."""
        return cls(kind="insert", count=count)


@attrs.frozen
class RecordedRequest:
    """
    One request the fake server received; *at* is the server's clock when it arrived, in seconds.

    *is_rate_limited* tells whether the fake's `RateLimit` refused it (answered 429).
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    is_rate_limited: bool = False


def _positive_finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive finite number of requests per second")


def _seconds_or_none(instance: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be None or a finite number of seconds, at least 0")


@attrs.frozen(kw_only=True)
class RateLimit:
    """
    A server-side budget for `FakeAirudder`: a token bucket of *rate* requests per second and *burst*.

    A request to a path outside *exempt_paths* (by default every path but the auth call) takes a token,
    or is answered 429 with the error envelope. With *has_retry_after*, that answer carries `Retry-After`:
    the seconds until a token is free, rounded up to *retry_after_decimals* decimals (3, milliseconds, by
    default, so a budget of 20/s asks for `0.050`, not `1`; 0 gives whole seconds, as RFC 9110 writes them).
    With *refusal_latency* (seconds) a 429 takes that long instead of the fake's `latency`, as from a
    gateway that refuses at once while the requests it lets through take their time.
    """

    rate: float = attrs.field(validator=_positive_finite)
    burst: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    has_retry_after: bool = True
    retry_after_decimals: int = attrs.field(
        default=3, validator=[attrs.validators.ge(0), attrs.validators.le(6)]
    )
    exempt_paths: frozenset[str] = frozenset({AUTH_PATH})
    refusal_latency: float | None = attrs.field(default=None, validator=_seconds_or_none)


@attrs.frozen(kw_only=True)
class RateLimitStats:
    """
    What the fake's rate limit saw (`FakeAirudder.rate_limit_stats()`); times are the server's clock.

    *checked* counts the requests that met a limit, *refused* those it answered 429, and *first_at* and
    *last_at* are the arrival times of the first and last checked ones (None before any).
    """

    checked: int = 0
    refused: int = 0
    first_at: float | None = None
    last_at: float | None = None

    @property
    def admitted(self) -> int:
        """The checked requests that were let through."""
        return self.checked - self.refused

    @property
    def refused_share(self) -> float:
        """The share of checked requests answered 429, within 0..1 (0.0 before any)."""
        return self.refused / self.checked if self.checked else 0.0

    @property
    def admitted_per_second(self) -> float | None:
        """The requests let through per second between the first and last checked ones (None: no span)."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return self.admitted / (self.last_at - self.first_at)


class _TokenBucket:
    """*limit.burst* tokens at most, refilled at *limit.rate* per second of the clock it is given."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:  # a clock that steps back refills nothing (and is not held against you)
            self.tokens = min(float(self.limit.burst), self.tokens + (now - self.updated) * self.limit.rate)
            self.updated = now

    def change(self, limit: RateLimit, now: float) -> None:
        # What the old rate refilled until now is kept (up to the new burst); the new rate applies after.
        self._refill(now)
        self.limit = limit
        self.tokens = min(self.tokens, float(limit.burst))

    def take(self, now: float) -> float | None:
        """Take a token and return None, or return the seconds until one is free."""
        self._refill(now)
        if self.tokens >= 1.0 - _TOKEN_SLACK:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.limit.rate


def _retry_after(wait: float, decimals: int) -> str:
    """Format *wait* seconds as delay-seconds rounded up (never down) to *decimals* decimals."""
    scale = 10**decimals
    return f"{math.ceil(wait * scale) / scale:.{decimals}f}"


class _Signal:
    """A broadcast: waiters re-check their condition each time it is notified."""

    def __init__(self) -> None:
        self._waiters: list[anyio.Event] = []

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()

    async def wait_until(self, ready: Callable[[], bool], limit: float | None = _WAIT_LIMIT) -> None:
        with anyio.fail_after(limit):
            while not ready():
                event = anyio.Event()
                self._waiters.append(event)
                await event.wait()


class Gate:
    """
    Holds requests at the fake server until you `release()` it; `FakeAirudder.gate()` makes one.

    A held request is recorded and counted (`hits()`, `wait_for_hits()`) but not answered: no latency,
    fault or handler runs until the gate opens. A gate opens once and stays open. *held* counts the
    requests waiting at it now; *is_open* tells whether it was released.
    """

    def __init__(self) -> None:
        self.held = 0  # requests waiting at the gate now
        self.is_open = False
        self._signal = _Signal()

    def __repr__(self) -> str:
        return f"<Gate held={self.held} is_open={self.is_open}>"

    async def wait_held(self, n: int = 1, *, within: float = _WAIT_LIMIT) -> None:
        """
        Return once *n* requests wait at the gate together.

        Raises:
            TimeoutError: they are not there after *within* seconds (default 5), so a broken test fails
                instead of hanging; give more when the client is another process that must start first.
            RuntimeError: the gate is open, so no request will wait there any more.
        """

        def ready() -> bool:
            if self.is_open:
                raise RuntimeError(f"the gate is open: {n} requests will never be held there")
            return self.held >= n

        await self._signal.wait_until(ready, within)

    def release(self) -> None:
        """Let every held request through, and every later one. Idempotent."""
        self.is_open = True
        self._signal.notify()

    async def _pass(self) -> None:
        if self.is_open:
            return
        self.held += 1
        self._signal.notify()
        try:
            await self._signal.wait_until(lambda: self.is_open, None)
        finally:
            self.held -= 1


def make_workflows(
    n: int, *, seed: int = 0, newest: datetime = _BASE_TIME, step: float = 37.0, start_index: int = 0
) -> list[dict[str, object]]:
    """
    Make *n* deterministic synthetic workflows in wire form, newest first, *step* seconds apart.
    """
    rng = random.Random(seed * 1_000_003 + start_index)
    out: list[dict[str, object]] = []
    for k in range(n):
        index = start_index + k
        created = newest - timedelta(seconds=step * k)
        started = None if index % 7 == 3 else created + timedelta(seconds=rng.randint(0, 600))
        ended = None if index % 11 == 5 else created + timedelta(seconds=rng.randint(600, 86_400))
        out.append(
            {
                "workflow_id": f"{rng.getrandbits(64):016x}{index:08x}",
                "name": f"wf-{index}",
                "template_name": f"template-{index % 5}",
                "start_time": None if started is None else format_time(started, "utc"),
                "end_time": None if ended is None else format_time(ended, "utc"),
                "total": rng.randint(0, 5000),
                "status": _STATUSES[index % len(_STATUSES)],
                "create_time": format_time(created, "utc"),
            }
        )
    return out


def _parse_bound(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    parsed = datetime.fromisoformat(value.replace(" ", "T", 1))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _envelope(data: object) -> bytes:
    return _json.dumps({"data": data, "status": "OK", "code": 200})


def _error(
    status: int,
    message: str,
    *,
    code: int | None = None,
    headers: dict[str, str] | None = None,
    http_status: int | None = None,
) -> web.Response:
    body = _json.dumps(
        {"data": None, "status": "ERROR", "code": code if code is not None else status, "message": message}
    )
    return web.Response(
        status=http_status or status, body=body, content_type="application/json", headers=headers
    )


class FakeAirudder:
    """
    An in-process AIRUDDER look-alike on 127.0.0.1 (a free port); use it as an async context manager.

    *workflows* synthetic workflows are made at start (deterministic for a *seed*). Tokens live
    *token_lifetime* seconds on the fake clock (`advance()` moves it). Every answer waits *latency*
    seconds. `count_offset` makes `data.count` lie by that many. *rate_limit* sets a `RateLimit`.

    The server's clock (request times, the rate limit) is *clock* (by default the event loop's, in
    seconds) plus every `advance()`: pass `clock=lambda: 0.0` to stop it and move it only by hand.
    """

    def __init__(
        self,
        *,
        workflows: int = 0,
        seed: int = 0,
        app_key: str = DEFAULT_APP_KEY,
        app_secret: str = DEFAULT_APP_SECRET,
        latency: float = 0.0,
        token_lifetime: float = 24 * 3600.0,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: RateLimit | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app_key = app_key
        self.app_secret = app_secret
        self.latency = latency
        self.token_lifetime = token_lifetime
        self.count_offset = 0
        self.now = 0.0
        self.seed = seed
        self.requests: list[RecordedRequest] = []
        self.record_requests = True
        self.in_flight = 0
        self.peak_in_flight = 0
        self._host, self._port = host, port
        self._tokens: dict[str, float] = {}
        self._workflows: list[dict[str, object]] = []
        self._contacts: dict[str, list[tuple[str, str]]] = {}
        self._keys: list[float] = []  # -create_time, ascending, parallel to _workflows
        self._generated = 0
        self._schedule: dict[tuple[str, int], list[Fault]] = {}
        self._gates: list[tuple[str, int, Gate]] = []  # (path, last request number let through, gate)
        self._recorded = _Signal()
        self._is_stopping = False
        self._stopping = _Signal()
        self._path_hits: Counter[str] = Counter()
        self._random: tuple[random.Random, float, tuple[Fault, ...], str | None] | None = None
        self._runner: web.AppRunner | None = None
        self._clock = clock
        self._rate_limit = rate_limit
        self._bucket: _TokenBucket | None = None  # made on the first checked request: the loop's clock
        self._stats = RateLimitStats()
        self.url = ""
        if workflows:
            self.add_workflows(workflows)

    def __repr__(self) -> str:
        return f"<FakeAirudder url={self.url!r} workflows={len(self._workflows)}>"

    # -- data --------------------------------------------------------------------------------------

    @property
    def workflows(self) -> list[dict[str, object]]:
        """The workflows in wire form, newest first (do not mutate; use the methods)."""
        return self._workflows

    def workflow_ids(self) -> list[str]:
        """Return every workflow id, newest first."""
        return [str(w["workflow_id"]) for w in self._workflows]

    def add_workflows(self, n: int, *, step: float = 37.0) -> list[dict[str, object]]:
        """Append *n* synthetic workflows, *step* seconds apart, not newer than any existing one."""
        oldest = (
            datetime.fromisoformat(str(self._workflows[-1]["create_time"])) - timedelta(seconds=step)
            if self._workflows
            else _BASE_TIME
        )
        new = make_workflows(n, seed=self.seed, newest=oldest, step=step, start_index=self._generated)
        self._generated += n
        self._workflows.extend(new)
        self._keys.extend(-_parse_ts(w) for w in new)
        return new

    def insert_head(self, n: int) -> list[dict[str, object]]:
        """Create *n* workflows newer than every existing one (and than the wall clock); return them."""
        newest = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        if self._workflows:
            newest = max(newest, datetime.fromisoformat(str(self._workflows[0]["create_time"])))
        new = make_workflows(
            n, seed=self.seed + 1, newest=newest + timedelta(seconds=n), step=1.0, start_index=self._generated
        )
        self._generated += n
        self._workflows[:0] = new
        self._keys[:0] = [-_parse_ts(w) for w in new]
        return new

    def create_workflow(self, fields: dict[str, object]) -> dict[str, object]:
        """
        Create one workflow at the head from createinstance *fields* (wire names); return it.

        `case_id`/`callee`, top level or in a `lists` of contacts, are remembered for detailinstances.
        """
        created = datetime.now(UTC).replace(microsecond=0)
        if self._workflows:
            created = max(created, datetime.fromisoformat(str(self._workflows[0]["create_time"])))
        wf: dict[str, object] = {
            "workflow_id": secrets.token_hex(12),
            "name": fields.get("name", ""),
            "template_name": fields.get("workflow_template_name", ""),
            "start_time": None,
            "end_time": fields.get("end_time"),
            "total": 0,
            "status": "running",
            "create_time": format_time(created, "utc"),
        }
        self._workflows.insert(0, wf)
        self._keys.insert(0, -_parse_ts(wf))
        contacts = [fields, *[c for c in _as_list(fields.get("lists")) if isinstance(c, dict)]]
        self._contacts[str(wf["workflow_id"])] = [
            (str(c.get("case_id", "")), str(c.get("callee", ""))) for c in contacts
        ]
        return wf

    # -- workflows that change (for sync) -------------------------------------------------------------

    def add_history(
        self, n: int, *, newest: datetime | None = None, step: float = 37.0, open_for: float = 86_400.0
    ) -> list[dict[str, object]]:
        """
        Append *n* workflows, *step* seconds apart, the newest at *newest* (default: an hour ago) or
        just older than the oldest existing one; those created more than *open_for* seconds before the
        newest are settled (`finished` or `cancelled`), as an account's old workflows are.
        """
        if newest is None:
            newest = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        if self._workflows:
            newest = min(
                newest,
                datetime.fromisoformat(str(self._workflows[-1]["create_time"])) - timedelta(seconds=step),
            )
        new = make_workflows(n, seed=self.seed, newest=newest, step=step, start_index=self._generated)
        settled_before = (newest - timedelta(seconds=open_for)).timestamp()
        for k, wf in enumerate(new):
            if wf["status"] not in _FINAL and _parse_ts(wf) < settled_before:
                wf["status"] = "cancelled" if k % 3 == 0 else "finished"
        self._generated += n
        self._workflows.extend(new)
        self._keys.extend(-_parse_ts(w) for w in new)
        return new

    def set_status(self, ids: Iterable[str], status: str, *, total: int | None = None) -> None:
        """Give the workflows *ids* the *status* (and *total*, when given); an unknown id is a ValueError."""
        wanted = set(ids)
        found = [wf for wf in self._workflows if wf["workflow_id"] in wanted]
        if len(found) != len(wanted):
            missing = wanted - {str(wf["workflow_id"]) for wf in found}
            raise ValueError(f"no such workflows: {sorted(missing)[:5]}")
        for wf in found:
            wf["status"] = status
            if total is not None:
                wf["total"] = total

    def mutate_random(
        self, *, status_changes: int, new: int, seed: int = 0
    ) -> tuple[list[str], list[dict[str, object]]]:
        """
        Move *status_changes* open workflows (status not final) on to another status, with a new `total`
        and `end_time`, and create *new* workflows at the head, one second apart after the newest;
        return (the changed ids, the new workflows). The same *seed* on the same data does the same.
        """
        rng = random.Random(f"mutate-{self.seed}-{seed}")
        open_ = [wf for wf in self._workflows if wf["status"] not in _FINAL]
        if status_changes > len(open_):
            raise ValueError(f"only {len(open_)} workflows are open: cannot change {status_changes}")
        changed = rng.sample(open_, status_changes)
        for wf in changed:
            wf["status"] = rng.choice([s for s in ("running", "finished", "cancelled") if s != wf["status"]])
            wf["total"] = int(str(wf["total"])) + rng.randint(1, 50)
            ended = datetime.fromisoformat(str(wf["create_time"])) + timedelta(seconds=rng.randint(60, 7200))
            wf["end_time"] = format_time(ended, "utc")
        head = (
            datetime.fromisoformat(str(self._workflows[0]["create_time"])) if self._workflows else _BASE_TIME
        )
        made = make_workflows(
            new,
            seed=self.seed + 2,
            newest=head + timedelta(seconds=new),
            step=1.0,
            start_index=self._generated,
        )
        self._generated += new
        self._workflows[:0] = made
        self._keys[:0] = [-_parse_ts(w) for w in made]
        return [str(wf["workflow_id"]) for wf in changed], made

    # -- clock and tokens ----------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward *seconds*: tokens expire and the rate limit refills on it."""
        self.now += seconds

    def _time(self) -> float:
        base = asyncio.get_running_loop().time() if self._clock is None else self._clock()
        return base + self.now

    # -- rate limit ------------------------------------------------------------------------------------

    @property
    def rate_limit(self) -> RateLimit | None:
        """The `RateLimit` in force, or None when every request is let through."""
        return self._rate_limit

    def set_rate_limit(self, limit: RateLimit | None, /) -> None:
        """
        Enforce *limit* from the next request on (None removes it), e.g. to halve it mid-walk.

        The tokens saved so far are kept, up to the new burst; a limit set where there was none starts
        with a full bucket.
        """
        self._rate_limit = limit
        if limit is None:
            self._bucket = None
        elif self._bucket is not None:
            self._bucket.change(limit, self._time())

    def rate_limit_stats(self, *, reset: bool = False) -> RateLimitStats:
        """
        Return what the rate limit has checked and refused; *reset* starts counting afresh after that.

        Counted even when `record_requests` is off, e.g. `stats.admitted_per_second` and
        `stats.refused_share` for a benchmark.
        """
        stats = self._stats
        if reset:
            self._stats = RateLimitStats()
        return stats

    def _check_rate(self, path: str, now: float) -> web.Response | None:
        """Let the request through (None) or return its 429 answer."""
        limit = self._rate_limit
        if limit is None or path in limit.exempt_paths:
            return None
        if self._bucket is None:
            self._bucket = _TokenBucket(limit, now)
        wait = self._bucket.take(now)
        stats = self._stats
        self._stats = RateLimitStats(
            checked=stats.checked + 1,
            refused=stats.refused + (wait is not None),
            first_at=now if stats.first_at is None else stats.first_at,
            last_at=now,
        )
        if wait is None:
            return None
        headers = (
            {"Retry-After": _retry_after(wait, limit.retry_after_decimals)} if limit.has_retry_after else {}
        )
        return _error(429, "too many requests: the rate limit is exceeded", headers=headers)

    def revoke_tokens(self) -> None:
        """Forget every issued token: the next authenticated call is refused with 401."""
        self._tokens.clear()

    # -- faults --------------------------------------------------------------------------------------

    def inject(
        self, *faults: Fault, on: int | Iterable[int] | None = None, path: str = INSTANCELIST_PATH
    ) -> None:
        """
        Show *faults* on the *on*-th request(s) to *path*, counted from now (1, the default, is the next).

        Several faults given together happen on that one request, in order (e.g. revoke then insert).
        """
        hits = self._path_hits[path]
        numbers = [1] if on is None else ([on] if isinstance(on, int) else list(on))
        for n in numbers:
            if n < 1:
                raise ValueError("on counts requests from 1 (the next one)")
            self._schedule.setdefault((path, hits + n), []).extend(faults)

    def inject_random(
        self, faults: Sequence[Fault], *, rate: float, seed: int = 0, path: str | None = INSTANCELIST_PATH
    ) -> None:
        """Show one of *faults* (seeded choice) on a *rate* share of requests to *path* (None: all)."""
        if not 0 <= rate <= 1:
            raise ValueError("rate must be within 0..1")
        self._random = (random.Random(seed), rate, tuple(faults), path)

    def clear_faults(self) -> None:
        """Stop injecting faults."""
        self._schedule.clear()
        self._random = None

    def hits(self, method: str, path: str) -> int:
        """Count the recorded requests with *method* to *path*."""
        return sum(1 for r in self.requests if r.method == method and r.path == path)

    # -- waiting ---------------------------------------------------------------------------------------

    async def wait_for_hits(self, method: str, path: str, n: int = 1) -> None:
        """
        Return once `hits(method, path)` reaches *n*: the server has received them, answered or not.

        Raises:
            TimeoutError: fewer arrived within 5 seconds (so a broken test fails instead of hanging).
            RuntimeError: `record_requests` is off, so nothing is counted.
        """
        if not self.record_requests:
            raise RuntimeError("wait_for_hits() counts recorded requests: set record_requests to True")
        await self._recorded.wait_until(lambda: self.hits(method, path) >= n)

    def gate(self, path: str = INSTANCELIST_PATH, *, after: int = 0) -> Gate:
        """
        Hold requests to *path* at a new `Gate` until you release it, letting the next *after* through.

        `aclose()` releases every gate, so the server never waits for a held request at shutdown.
        """
        if after < 0:
            raise ValueError("after counts requests let through, from 0")
        gate = Gate()
        self._gates.append((path, self._path_hits[path] + after, gate))
        return gate

    # -- lifecycle -----------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """Return the aiohttp application (to mount or serve yourself)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=1024 * 1024)
        app.router.add_post(AUTH_PATH, self._auth)
        app.router.add_get(INSTANCELIST_PATH, self._instancelist)
        app.router.add_post(CREATEINSTANCE_PATH, self._createinstance)
        app.router.add_post(DETAILINSTANCES_PATH, self._detailinstances)
        app.router.add_post(APINOTICEINFO_PATH, self._apinoticeinfo)
        app.router.add_post(TASKDETAIL_PATH, self._taskdetail)
        return app

    async def __aenter__(self) -> Self:
        self._is_stopping = False
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving (releasing every gate and cutting slow answers short first). Idempotent."""
        self._is_stopping = True
        self._stopping.notify()
        for _, _, gate in self._gates:
            gate.release()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def client(self, **options: Unpack[ClientOptions]) -> AirudderClient:
        """
        Return an `AirudderClient` for this server: its credentials and URL, and by default retries
        without backoff waits (`FAKE_RETRY`), so tests never sleep. *options* are the client's others.
        """
        if not self.url:
            raise RuntimeError("start the FakeAirudder (async with) before asking for a client")
        options.setdefault("retry", FAKE_RETRY)
        return AirudderClient(app_key=self.app_key, app_secret=self.app_secret, base_url=self.url, **options)

    # -- webhooks --------------------------------------------------------------------------------------

    async def send_webhook(
        self,
        url: str,
        body: Mapping[str, object],
        *,
        headers: Mapping[str, str] | None = None,
        attempts: int = 5,
        interval: float = 0.0,
        repeat: int = 1,
    ) -> list[int]:
        """
        POST *body* as JSON to *url* the way AIRUDDER calls a webhook; return every HTTP status seen.

        A non-2xx answer (or no answer) is retried up to *attempts* tries, *interval* seconds apart (the
        vendor waits a minute). *repeat* delivers the same event that many times, to test de-duplication.
        """
        statuses: list[int] = []
        data = _json.dumps(dict(body))
        sent_headers = {"Content-Type": "application/json", "User-Agent": "Airudder", **(headers or {})}
        async with aiohttp.ClientSession() as session:
            for _ in range(repeat):
                for attempt in range(attempts):
                    if attempt and interval:
                        await asyncio.sleep(interval)
                    try:
                        async with session.post(url, data=data, headers=sent_headers) as resp:
                            await resp.read()
                            statuses.append(resp.status)
                    except aiohttp.ClientError:
                        statuses.append(0)
                        continue
                    if 200 <= resp.status < 300:
                        break
        return statuses

    # -- HTTP ------------------------------------------------------------------------------------------

    def _faults_for(self, path: str, number: int) -> list[Fault]:
        faults = self._schedule.pop((path, number), [])
        if self._random is not None:
            rng, rate, choices, only = self._random
            if (only is None or only == path) and choices and rng.random() < rate:
                faults.append(rng.choice(choices))
        return faults

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        now = self._time()
        # Decided on arrival, like a gateway in front of the API; the answer still waits its turn below.
        limit = self._rate_limit
        refusal = self._check_rate(request.path, now)
        if self.record_requests:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    dict(request.query),
                    dict(request.headers),
                    now,
                    is_rate_limited=refusal is not None,
                )
            )
            self._recorded.notify()
        self._path_hits[request.path] += 1
        number = self._path_hits[request.path]
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            for path, let_through, gate in self._gates:
                if path == request.path and number > let_through:
                    await gate._pass()
            delay = self.latency
            if refusal is not None and limit is not None and limit.refusal_latency is not None:
                delay = limit.refusal_latency
            if delay:
                await asyncio.sleep(delay)
            if refusal is not None:
                self._schedule.pop((request.path, number), None)  # a refused request shows no fault
                return refusal
            for fault in self._faults_for(request.path, number):
                answer = await self._apply(fault, request)
                if answer is not None:
                    return answer
                if fault.kind == "drop":
                    return await self._drop(request, await handler(request))
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self.in_flight -= 1

    async def _apply(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.kind == "status":
            headers = {}
            if fault.retry_after == "date":
                when = datetime.now(UTC) + timedelta(seconds=fault.seconds)
                headers["Retry-After"] = format_datetime(when, usegmt=True)
            elif fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            return _error(fault.status, f"injected HTTP {fault.status}", headers=headers)
        if fault.kind == "slow":
            # Shutdown cuts the wait short: closing the fake never waits for a slow answer.
            with anyio.move_on_after(fault.seconds):
                await self._stopping.wait_until(lambda: self._is_stopping, None)
        elif fault.kind == "malformed":
            return web.Response(status=200, body=b'{"data": {"lists": [', content_type="application/json")
        elif fault.kind == "envelope":
            return _error(
                fault.code or 500, "injected error envelope", code=fault.code, http_status=fault.status
            )
        elif fault.kind == "raw":
            return web.Response(status=fault.status, body=fault.body, content_type="application/json")
        elif fault.kind == "revoke":
            self.revoke_tokens()
        elif fault.kind == "insert":
            self.insert_head(fault.count)
        return None

    async def _drop(self, request: web.Request, normal: web.StreamResponse) -> web.StreamResponse:
        body = normal.body if isinstance(normal, web.Response) else b""
        assert isinstance(body, bytes)
        response = web.StreamResponse(status=normal.status, headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        # write() raises once the connection is gone, so there is still a transport to abort.
        assert request.transport is not None
        request.transport.abort()
        return response

    def _authorized(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        issued = self._tokens.get(token) if scheme == "Token" else None
        if issued is None or self.now - issued >= self.token_lifetime:
            return _error(401, "token is missing, invalid or expired")
        return None

    async def _auth(self, request: web.Request) -> web.Response:
        try:
            body = _json.loads(await request.read())
        except _json.JSONDecodeError:
            return _error(400, "body is not JSON")
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("APPKey"), str)
            or not isinstance(body.get("APPSecret"), str)
        ):
            return _error(400, "APPKey and APPSecret are required")
        if body["APPKey"] != self.app_key or body["APPSecret"] != self.app_secret:
            return _error(401, "invalid APPKey or APPSecret")
        token = secrets.token_hex(16)
        self._tokens[token] = self.now
        return web.Response(body=_envelope({"token": token}), content_type="application/json")

    async def _instancelist(self, request: web.Request) -> web.Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        query = request.query
        try:
            page = int(query.get("page", "1"))
            size = int(query.get("size", "20"))
        except ValueError:
            return _error(400, "page and size must be integers")
        if page < 1:
            return _error(400, "page starts at 1")
        if not 1 <= size <= 200:
            return _error(400, "size must be between 1 and 200")
        try:
            start = _parse_bound(query.get("start_time"))
            end = _parse_bound(query.get("end_time"))
        except ValueError:
            return _error(400, "start_time/end_time must look like 2022-12-12 12:34:56+07:00")
        lo = 0 if end is None else bisect.bisect_left(self._keys, -end)
        hi = len(self._keys) if start is None else bisect.bisect_right(self._keys, -start)
        matching = max(0, hi - lo)
        first = lo + (page - 1) * size
        lists = self._workflows[first : min(first + size, hi)] if first < hi else []
        count = max(0, matching + self.count_offset)
        return web.Response(body=_envelope({"lists": lists, "count": count}), content_type="application/json")

    async def _json_body(
        self, request: web.Request, required: dict[str, type]
    ) -> dict[str, Any] | web.Response:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        try:
            body = _json.loads(await request.read())
        except _json.JSONDecodeError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        for key, kind in required.items():
            if not isinstance(body.get(key), kind) or body.get(key) in ("", None):
                return _error(400, f"{key} is required")
        return body

    async def _createinstance(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, {"workflow_template_id": int, "name": str, "end_time": str})
        if isinstance(body, web.Response):
            return body
        wf = self.create_workflow(body)
        return web.Response(
            body=_envelope({"workflow_id": wf["workflow_id"]}), content_type="application/json"
        )

    async def _detailinstances(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, {"start_time": str, "end_time": str})
        if isinstance(body, web.Response):
            return body
        try:
            start, end = _parse_bound(body["start_time"]), _parse_bound(body["end_time"])
        except ValueError:
            return _error(400, "start_time/end_time must look like 2022-12-12 12:34:56+07:00")
        case_id, callee = body.get("case_id"), body.get("callee")
        found = []
        for wf in self._workflows:
            contacts = self._contacts.get(str(wf["workflow_id"]), [])
            created = _parse_ts(wf)
            if not (start is not None and end is not None and start <= created <= end):
                continue
            for c_case, c_callee in contacts:
                if (case_id is None or case_id == c_case) and (callee is None or callee == c_callee):
                    found.append(
                        {
                            "workflow_id": wf["workflow_id"],
                            "workflow_name": wf["name"],
                            "case_id": c_case,
                            "callee": c_callee,
                            "create_time": wf["create_time"],
                        }
                    )
                    break
        return web.Response(
            body=_envelope({"lists": found, "count": len(found)}), content_type="application/json"
        )

    async def _apinoticeinfo(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, {"workflow_id": str, "node_id": str, "callee": str})
        if isinstance(body, web.Response):
            return body
        if body["workflow_id"] not in self._contacts and body["workflow_id"] not in self.workflow_ids():
            return _error(404, "no such workflow")
        answer = {
            "workflow_id": body["workflow_id"],
            "node_id": body["node_id"],
            "callee": body["callee"],
            "case_id": body.get("case_id"),
            "pushed": True,
        }
        return web.Response(body=_envelope(answer), content_type="application/json")

    async def _taskdetail(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, {"workflow_id": str})
        if isinstance(body, web.Response):
            return body
        match = next((w for w in self._workflows if w["workflow_id"] == body["workflow_id"]), None)
        if match is None:
            return _error(404, "no such workflow")
        contacts = self._contacts.get(str(match["workflow_id"]), [("", "")])
        records = [
            {"call_id": f"call-{i}", "callee": callee, "case_id": case, "call_status": "answered"}
            for i, (case, callee) in enumerate(contacts)
            if callee
        ]
        answer = {
            "workflow_id": match["workflow_id"],
            "workflow_name": match["name"],
            "nodetask_id": "nodetask-1",
            "nodetask_name": "outbound call",
            "case_id": contacts[0][0] or None,
            "lists": records,
        }
        return web.Response(body=_envelope(answer), content_type="application/json")


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _parse_ts(wf: dict[str, object]) -> float:
    return datetime.fromisoformat(str(wf["create_time"])).timestamp()
