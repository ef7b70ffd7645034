"""
The transport: one aiohttp session, the retry loop, and the envelope rules (pure functions at the top).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import attrs

from . import _json
from ._auth import AUTH_PATH, TokenCache
from ._config import RetryPolicy, Timeouts
from ._ratelimit import Pacer, backoff_delay, parse_retry_after, retry_reason
from .errors import (
    AirudderError,
    APIError,
    AuthenticationError,
    DecodeError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from .models import ClientStats, RequestEvent

__all__ = ["Response", "Transport", "error_for", "interpret", "redact"]

logger = logging.getLogger("airudder_async")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SECRET_KEYS = frozenset({"token", "appsecret", "app_secret", "authorization", "secret", "password"})
_REDACTED = "***"
_BODY_TEXT_LIMIT = 2000


def redact(value: object, secrets: Iterable[str] = ()) -> object:
    """
    Return *value* with secret-looking keys masked and every known secret string scrubbed.
    """
    secrets = tuple(s for s in secrets if s and len(s) >= 4)
    return _redact(value, secrets)


def _redact(value: object, secrets: tuple[str, ...]) -> object:
    if isinstance(value, dict):
        return {
            k: (_REDACTED if isinstance(k, str) and k.lower() in _SECRET_KEYS else _redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, _REDACTED)
        return value
    return value


def error_for(
    *,
    status: int,
    code: int | None,
    envelope_status: str | None,
    message: str,
    body: object,
    retry_after: float | None = None,
    method: str | None = None,
    path: str | None = None,
) -> APIError:
    """
    Map an unsuccessful answer to its error class: by HTTP status, or by envelope *code* on a 2xx.
    """
    key = code if 200 <= status < 300 and code is not None else status
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code,
        "envelope_status": envelope_status,
        "body": body,
        "method": method,
        "path": path,
    }
    if key in (401, 403):
        return AuthenticationError(message, **kwargs)
    if key == 404:
        return NotFoundError(message, **kwargs)
    kwargs["retry_after"] = retry_after
    if key == 429:
        return RateLimitedError(message, **kwargs)
    if key >= 500:
        return ServerError(message, **kwargs)
    if 400 <= key < 500:
        return InvalidRequestError(message, **kwargs)
    return APIError(message, **kwargs)


def interpret(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str | None = None,
    path: str | None = None,
    secrets: Iterable[str] = (),
) -> dict[str, Any]:
    """
    Return the envelope of a successful answer, or raise the error the answer means.

    Success is a 2xx status **and** a JSON object whose `code` is 200 and `status` is `"OK"`.
    """
    try:
        parsed: object = _json.loads(body) if body else None
    except _json.JSONDecodeError as exc:
        if 200 <= status < 300:
            raise DecodeError(f"answer is not JSON ({exc})", method=method, path=path) from None
        parsed = None
    ok_status = 200 <= status < 300
    if ok_status and isinstance(parsed, dict) and parsed.get("code") == 200 and parsed.get("status") == "OK":
        if "data" not in parsed:
            raise DecodeError("envelope has no data", field_path="data", method=method, path=path)
        return parsed
    if ok_status and not isinstance(parsed, dict):
        raise DecodeError(
            f"answer is not an envelope object: {type(parsed).__name__}", method=method, path=path
        )
    code: int | None = None
    envelope_status: str | None = None
    message = ""
    if isinstance(parsed, dict):
        raw_code = parsed.get("code")
        code = raw_code if type(raw_code) is int else None
        raw_status = parsed.get("status")
        envelope_status = raw_status if isinstance(raw_status, str) else None
        raw_message = parsed.get("message", parsed.get("msg"))
        message = raw_message if isinstance(raw_message, str) else ""
        shown: object = redact(parsed, secrets)
    else:
        # Scrub before cutting, so a secret that spans the cut cannot leave a visible prefix.
        text = redact(body.decode("utf-8", "replace"), secrets)
        shown = text[:_BODY_TEXT_LIMIT] if isinstance(text, str) else text
    if ok_status and code is None and envelope_status is None:
        raise DecodeError("answer is not an envelope: no code or status", method=method, path=path)
    if not message:
        message = "the API refused the call" if ok_status else _reason(status)
    message = str(redact(message, secrets))
    return_error = error_for(
        status=status,
        code=code,
        envelope_status=envelope_status,
        message=message,
        body=shown,
        retry_after=parse_retry_after(headers.get("Retry-After")),
        method=method,
        path=path,
    )
    raise return_error


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unexpected HTTP status"


@attrs.frozen
class Response:
    """
    One successful answer: its HTTP *status*, *headers* and decoded *envelope* (`data`, `status`, `code`).
    """

    status: int
    headers: Mapping[str, str]
    envelope: dict[str, Any]

    @property
    def data(self) -> object:
        """The envelope's `data`."""
        return self.envelope["data"]


class _Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.responses = 0
        self.errors = 0
        self.retries: dict[str, int] = {}
        self.rate_limited = 0


class Transport:
    """
    Sends requests through the pacer, retries what may be retried, and maps answers to data or errors.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: Mapping[str, str],
        pacer: Pacer,
        retry: RetryPolicy,
        timeouts: Timeouts,
        app_key: str,
        app_secret: str,
        event_hook: Callable[[RequestEvent], object] | None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.pacer = pacer
        self.retry = retry
        self.timeouts = timeouts
        self.event_hook = event_hook
        self._app_key = app_key
        self._app_secret = app_secret
        self.auth = TokenCache(self._fetch_token)
        self.counters = _Counters()
        self._client_timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    def _secrets(self, used: str | None = None) -> tuple[str, ...]:
        """The strings to scrub: the secret, the current token, and the token an attempt used."""
        return tuple(s for s in (self._app_secret, self.auth._token, used) if s)

    def stats(self) -> ClientStats:
        c = self.counters
        return ClientStats(
            requests=c.requests,
            responses=c.responses,
            errors=c.errors,
            retries=dict(c.retries),
            rate_limited=c.rate_limited,
            auth_requests=self.auth.fetches,
            token_refreshes=self.auth.refreshes,
            budget_wait=self.pacer.budget_wait,
            cooldown_wait=self.pacer.cooldown_wait,
        )

    async def _fetch_token(self) -> str:
        body = {"APPKey": self._app_key, "APPSecret": self._app_secret}
        try:
            response = await self.call("POST", AUTH_PATH, json=body, auth=False, idempotent=True)
        except AuthenticationError as exc:
            raise AuthenticationError(
                "the APPKey/APPSecret pair was refused; check the credentials",
                status=exc.status,
                code=exc.code,
                envelope_status=exc.envelope_status,
                body=exc.body,
                method="POST",
                path=AUTH_PATH,
            ) from None
        data = response.data
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise DecodeError(
                "auth answer has no token", field_path="data.token", method="POST", path=AUTH_PATH
            )
        return token

    def _emit(self, event: RequestEvent) -> None:
        if self.event_hook is None:
            return
        try:
            self.event_hook(event)
        except Exception:
            logger.exception("event_hook raised on %s %s; ignoring", event.method, event.path)

    async def call(
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
    ) -> Response:
        """
        Send one logical call (with its retries) and return the successful answer.
        """
        policy = retry or self.retry
        # An explicit answer from the caller wins; otherwise reads retry, and writes only by policy.
        may_retry = idempotent if idempotent is not None else (method in SAFE_METHODS or policy.retry_unsafe)
        body = None if json is None else _json.dumps(json)
        if policy.deadline is None:
            return await self._call(method, path, params, body, auth, may_retry, policy, timeouts)
        try:
            with anyio.fail_after(policy.deadline):
                return await self._call(method, path, params, body, auth, may_retry, policy, timeouts)
        except TimeoutError as exc:
            if isinstance(exc, AirudderError):
                raise
            self.counters.errors += 1
            raise RequestTimeoutError(
                f"call deadline of {policy.deadline:g} s ran out", method=method, path=path
            ) from None

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        auth: bool,
        may_retry: bool,
        policy: RetryPolicy,
        timeouts: Timeouts | None,
    ) -> Response:
        attempt = 0
        replayed = False
        while True:
            attempt += 1
            token = await self.auth.get() if auth else None
            try:
                status, headers, raw = await self._send(method, path, params, body, token, timeouts, attempt)
                envelope = interpret(
                    status, headers, raw, method=method, path=path, secrets=self._secrets(token)
                )
                return Response(status, headers, envelope)
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
                status_code = exc.status if isinstance(exc, APIError) else None
                if isinstance(exc, RateLimitedError):
                    self.counters.rate_limited += 1
                delay = self._retry_delay(exc, may_retry, policy, attempt)
                if delay is None:
                    self.counters.errors += 1
                    raise
                if isinstance(exc, RateLimitedError) or (isinstance(exc, APIError) and exc.retry_after):
                    # The server asked us to slow down: every task waits, not only this one.
                    self.pacer.cool_down(delay)
                reason = retry_reason(status_code, exc)
                if isinstance(exc, APIError) and 200 <= exc.status < 300:
                    reason = f"code {exc.code}"
                self.counters.retries[reason] = self.counters.retries.get(reason, 0) + 1
                logger.info(
                    "retrying %s %s after %s (attempt %d of %d) in %.2f s",
                    method,
                    path,
                    reason,
                    attempt,
                    policy.attempts,
                    delay,
                )
                if self.event_hook is not None:
                    self._emit(
                        RequestEvent(
                            kind="retry",
                            method=method,
                            path=path,
                            attempt=attempt,
                            status=status_code,
                            delay=delay,
                            reason=reason,
                        )
                    )
                await anyio.sleep(delay)
            except DecodeError:
                self.counters.errors += 1
                raise

    def _retry_delay(
        self, exc: APIError | TransportError, may_retry: bool, policy: RetryPolicy, attempt: int
    ) -> float | None:
        """Return how long to wait before retrying after *exc*, or None to give up."""
        if isinstance(exc, TransportError):
            retryable = policy.retry_transport_errors
        else:
            key = exc.code if 200 <= exc.status < 300 and exc.code is not None else exc.status
            retryable = key in policy.statuses
        retry_after = exc.retry_after if isinstance(exc, APIError) else None
        if retry_after is not None and retry_after > policy.retry_after_max:
            return None  # the server asks for longer than we may wait: the caller decides
        if not (retryable and may_retry) or attempt >= policy.attempts:
            return None
        if retry_after is not None:
            return retry_after
        return backoff_delay(policy, attempt)

    def _timeout(self, timeouts: Timeouts | None) -> aiohttp.ClientTimeout:
        t = timeouts or self.timeouts
        cached = self._client_timeouts.get(t)
        if cached is None:
            cached = self._client_timeouts[t] = aiohttp.ClientTimeout(
                total=t.total, sock_connect=t.connect, sock_read=t.read
            )
        return cached

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        token: str | None,
        timeouts: Timeouts | None,
        attempt: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = self.headers
        if token is not None:
            headers = {**headers, "Authorization": f"Token {token}"}
        async with self.pacer.slot():
            # A call cancelled while it queued must not reach the wire (aiohttp may write before it
            # first suspends, so cancellation would only land after the request went out).
            await anyio.lowlevel.checkpoint_if_cancelled()
            self.counters.requests += 1
            if self.event_hook is not None:
                self._emit(RequestEvent(kind="request", method=method, path=path, attempt=attempt))
            started = anyio.current_time()
            try:
                async with self.session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    data=body,
                    headers=headers,
                    timeout=self._timeout(timeouts),
                    allow_redirects=False,
                ) as resp:
                    raw = await resp.read()
                    status, resp_headers = resp.status, resp.headers
            except (TimeoutError, aiohttp.ClientError) as exc:
                timed_out = isinstance(exc, TimeoutError)  # aiohttp's timeouts are TimeoutErrors too
                if self.event_hook is not None:
                    self._emit(
                        RequestEvent(
                            kind="response",
                            method=method,
                            path=path,
                            attempt=attempt,
                            elapsed=anyio.current_time() - started,
                            reason="timeout" if timed_out else "transport",
                        )
                    )
                if timed_out:
                    raise RequestTimeoutError("the attempt timed out", method=method, path=path) from None
                detail = redact(str(exc), self._secrets(token))
                raise TransportError(f"{type(exc).__name__}: {detail}", method=method, path=path) from exc
        self.counters.responses += 1
        if self.event_hook is not None:
            self._emit(
                RequestEvent(
                    kind="response",
                    method=method,
                    path=path,
                    attempt=attempt,
                    status=status,
                    elapsed=anyio.current_time() - started,
                )
            )
        return status, resp_headers, raw
