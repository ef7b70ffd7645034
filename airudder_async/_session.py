"""
The I/O loop: one aiohttp session, the pacer, attempts, deadlines, and the token replay on a 401.

Every decision the loop takes (what an answer means, whether and when to try again) is a pure function
in `_protocol.py`; this module only does what they say. Third-party exceptions never leave it: each is
turned into an `AirudderError` outside its `except` block, so neither `__cause__` nor `__context__`
carries an aiohttp object (whose request info holds the `Authorization` header).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple

import aiohttp
import anyio

from . import _json, models
from ._auth import TokenCache, token_fetcher
from ._config import Limits, RetryPolicy, Timeouts
from ._protocol import (
    SAFE_METHODS,
    Response,
    interpret,
    redact_text,
    retry_delay,
    retry_reason,
    slows_everyone,
)
from ._ratelimit import Pacer, loop_time
from .errors import (
    AirudderError,
    APIError,
    AuthenticationError,
    DecodeError,
    RateLimitedError,
    RequestTimeoutError,
    ResponseTooLargeError,
    TransportError,
)

if TYPE_CHECKING:  # a type only: the protocols are imported when a coordination is used
    from .coordination import Coordination

__all__ = ["SendLoop"]

logger = logging.getLogger("airudder_async")


class _Call(NamedTuple):
    """
    One logical call, prepared once: what each attempt sends and how the loop may retry it.

    A NamedTuple, not an attrs class: it is internal, and an attrs class costs about 1 ms of import
    (its generated methods are compiled when the module loads).
    """

    method: str
    path: str
    params: Mapping[str, str] | None
    body: bytes | None
    auth: bool
    may_retry: bool
    policy: RetryPolicy
    timeout: aiohttp.ClientTimeout
    max_depth: int | None
    decode: Callable[[bytes], object | None] | None

    def __repr__(self) -> str:  # never the body: the auth call's holds the APPSecret
        return f"<_Call {self.method} {self.path}>"


class _Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.responses = 0
        self.errors = 0
        self.retries: dict[str, int] = {}
        self.rate_limited = 0


class SendLoop:
    """
    The client's send loop: paces each attempt, adds the token, reads a bounded answer, maps it through
    `_protocol`, and retries or replays as the rules say.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: Mapping[str, str],
        limits: Limits,
        retry: RetryPolicy,
        timeouts: Timeouts,
        app_key: str,
        app_secret: str,
        event_hook: Callable[[models.RequestEvent], object] | None,
        coordination: Coordination | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        budget = store = None
        if coordination is not None:  # one account, one budget and one token, across clients
            budget = coordination.rate_budget(
                app_key=app_key, rate=limits.requests_per_second, burst=limits.burst
            )
            store = coordination.token_store(app_key=app_key)
        self.pacer = Pacer(limits, budget)
        self.max_response_size = limits.max_response_size
        self.retry = retry
        self.timeouts = timeouts
        self.event_hook = event_hook
        self._app_secret = app_secret
        self.auth = TokenCache(
            token_fetcher(self._post_unauthenticated, app_key=app_key, app_secret=app_secret), store=store
        )
        self.counters = _Counters()
        self._client_timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}
        # anyio.lowlevel loads anyio's event-loop core (2-3 ms); a client pays it, `import` does not.
        from anyio.lowlevel import checkpoint_if_cancelled

        self._checkpoint_if_cancelled = checkpoint_if_cancelled

    def __repr__(self) -> str:
        return f"<SendLoop {self.base_url}>"

    def _secrets(self, used: str | None = None) -> tuple[str | None, ...]:
        """The strings to scrub: the secret, the current token, and the token an attempt used."""
        return (self._app_secret, self.auth.token, used)

    def stats(self) -> models.ClientStats:
        c = self.counters
        return models.ClientStats(
            requests=c.requests,
            responses=c.responses,
            errors=c.errors,
            retries=dict(c.retries),
            rate_limited=c.rate_limited,
            auth_requests=self.auth.fetches,
            token_refreshes=self.auth.refreshes,
            budget_wait=self.pacer.budget_wait,
            cooldown_wait=self.pacer.cooldown_wait,
            pacing_rate=self.pacer.rate,
            pacing_cuts=0 if self.pacer.controller is None else self.pacer.controller.cuts,
        )

    def _emit(
        self,
        kind: Literal["request", "response", "retry"],
        call: _Call,
        attempt: int,
        *,
        status: int | None = None,
        elapsed: float | None = None,
        delay: float | None = None,
        reason: str | None = None,
    ) -> None:
        if self.event_hook is None:
            return
        event = models.RequestEvent(
            kind=kind,
            method=call.method,
            path=call.path,
            attempt=attempt,
            status=status,
            elapsed=elapsed,
            delay=delay,
            reason=reason,
            pacing_rate=self.pacer.rate,
        )
        try:
            self.event_hook(event)
        except Exception:
            logger.exception("event_hook raised on %s %s; ignoring", call.method, call.path)

    def _timeout(self, timeouts: Timeouts | None) -> aiohttp.ClientTimeout:
        t = timeouts or self.timeouts
        cached = self._client_timeouts.get(t)
        if cached is None:
            cached = self._client_timeouts[t] = aiohttp.ClientTimeout(
                total=t.total, sock_connect=t.connect, sock_read=t.read
            )
        return cached

    async def _post_unauthenticated(self, path: str, json: object) -> Response:
        return await self.send("POST", path, json=json, auth=False, idempotent=True)

    # -- the three layers: the call's deadline, the retry loop, one attempt ---------------------------

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
        auth: bool = True,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        max_depth: int | None = None,
        decode: Callable[[bytes], object | None] | None = None,
    ) -> Response:
        """
        Send one logical call (with its retries, within the policy's deadline); return the answer.

        With *max_depth*, a successful answer nesting deeper is a `DecodeError` (for data handed back
        as plain JSON; the parser itself stops at `_json.MAX_DEPTH`). A *decode* function is tried
        first on a 2xx body: what it returns becomes the envelope's `data`, and None means "not mine".
        """
        policy = retry or self.retry
        # An explicit answer from the caller wins; otherwise reads retry, and writes only by policy.
        may_retry = idempotent if idempotent is not None else (method in SAFE_METHODS or policy.retry_unsafe)
        call = _Call(
            method=method,
            path=path,
            params=params,
            body=None if json is None else _json.dumps(json),
            auth=auth,
            may_retry=may_retry,
            policy=policy,
            timeout=self._timeout(timeouts),
            max_depth=max_depth,
            decode=decode,
        )
        if policy.deadline is None:
            return await self._with_retries(call)
        with anyio.move_on_after(policy.deadline):
            return await self._with_retries(call)
        # Only the deadline's own cancellation lands here; raised outside any except block.
        self.counters.errors += 1
        raise RequestTimeoutError(f"call deadline of {policy.deadline:g} s ran out", method=method, path=path)

    async def _with_retries(self, call: _Call) -> Response:
        attempt = 0
        replayed = False
        while True:
            attempt += 1
            token = await self.auth.get() if call.auth else None
            try:
                return await self._attempt(call, token, attempt)
            except AuthenticationError:
                if token is not None and not replayed:
                    # The token may have expired or been revoked: refresh once, replay once.
                    replayed = True
                    self.auth.invalidate(token)
                    attempt -= 1
                    continue
                self.counters.errors += 1
                raise
            except (APIError, TransportError) as exc:
                if isinstance(exc, RateLimitedError):
                    self.counters.rate_limited += 1
                delay = retry_delay(exc, call.policy, attempt, call.may_retry)
                if delay is None:
                    self.counters.errors += 1
                    raise
                if slows_everyone(exc, adaptive=self.pacer.adapts_alone):
                    # The server asked us to slow down: every task waits, not only this one. (With
                    # adaptive pacing a bare 429 cuts the pace instead; a Retry-After is still obeyed.)
                    await self.pacer.cool_down(delay)
                reason = retry_reason(exc)
                status = exc.status if isinstance(exc, APIError) else None
            except AirudderError:
                self.counters.errors += 1
                raise
            self.counters.retries[reason] = self.counters.retries.get(reason, 0) + 1
            logger.info(
                "retrying %s %s after %s (attempt %d of %d) in %.2f s",
                call.method,
                call.path,
                reason,
                attempt,
                call.policy.attempts,
                delay,
            )
            self._emit("retry", call, attempt, status=status, delay=delay, reason=reason)
            await anyio.sleep(delay)

    async def _attempt(self, call: _Call, token: str | None, attempt: int) -> Response:
        headers = self.headers
        if token is not None:
            headers = {**headers, "Authorization": f"Token {token}"}
        failure: AirudderError | None = None
        pacer = self.pacer
        await pacer.acquire()
        try:
            # A call cancelled while it queued must not reach the wire (aiohttp may write before it
            # first suspends, so cancellation would only land after the request went out).
            await self._checkpoint_if_cancelled()
            self.counters.requests += 1
            self._emit("request", call, attempt)
            started = loop_time()
            try:
                async with self.session.request(
                    call.method,
                    self.base_url + call.path,
                    params=call.params,
                    data=call.body,
                    headers=headers,
                    timeout=call.timeout,
                    allow_redirects=False,
                ) as resp:
                    raw = await _read_bounded(resp, self.max_response_size)
                    status, resp_headers = resp.status, resp.headers
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                # aiohttp's timeouts are TimeoutErrors too; ValueError covers a malformed answer line
                # or header that some aiohttp versions raise raw.
                if isinstance(exc, TimeoutError):
                    failure = RequestTimeoutError("the attempt timed out")
                else:
                    detail = redact_text(f"{type(exc).__name__}: {exc}", self._secrets(token))
                    failure = TransportError(detail)
        finally:
            pacer.release()
        if failure is not None:
            pacer.failed()
            self._emit(
                "response",
                call,
                attempt,
                elapsed=loop_time() - started,
                reason="timeout" if isinstance(failure, TimeoutError) else "transport",
            )
            raise _routed(failure, call)
        self.counters.responses += 1
        self._emit("response", call, attempt, status=status, elapsed=loop_time() - started)
        if raw is None:
            raise _routed(
                ResponseTooLargeError(
                    f"the answer is larger than {self.max_response_size:,} bytes "
                    "(Limits.max_response_size, counted after decompression)",
                    limit=self.max_response_size,
                ),
                call,
            )
        if call.decode is not None and 200 <= status < 300:
            decoded = call.decode(raw)  # pure, and only ever accepts what interpret() would
            if decoded is not None:
                pacer.answered(started, refused=False)
                return Response(status, resp_headers, {"code": 200, "status": "OK", "data": decoded})
        try:
            envelope = interpret(status, resp_headers, raw, secrets=self._secrets(token))
        except AirudderError as exc:
            if isinstance(exc, RateLimitedError):
                pacer.answered(started, refused=True, retry_after=exc.retry_after)
            else:
                pacer.answered(started, refused=False)
            raise _routed(exc, call)  # noqa: B904 - interpret raises without a chained exception
        pacer.answered(started, refused=False)
        if call.max_depth is not None and _json.depth_exceeds(raw, call.max_depth):
            raise _routed(DecodeError(f"the answer nests deeper than {call.max_depth} levels"), call)
        return Response(status, resp_headers, envelope)


def _routed(error: AirudderError, call: _Call) -> AirudderError:
    error.method, error.path = call.method, call.path
    return error


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """Read the (decompressed) body, or return None as soon as it grows past *limit* bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            resp.close()  # the rest is never read: the connection cannot be reused
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
