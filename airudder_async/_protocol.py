"""
The protocol rules as pure functions of plain values: what an answer means, and whether to try again.

Everything here decides from `(status, headers, body, attempt, policy)` and performs no I/O; it imports
neither aiohttp nor anyio, so every rule is tested without a socket (the idea of gidgethub's `sansio`).
`_session.py` runs the loop that feeds it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Final

import attrs

from . import _json
from ._config import RetryPolicy
from .errors import (
    AirudderError,
    APIError,
    AuthenticationError,
    DecodeError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)

__all__ = [
    "RAW_DEPTH",
    "REDACT_DEPTH",
    "REDACT_NODES",
    "SAFE_METHODS",
    "TEXT_LIMIT",
    "NotJSON",
    "Response",
    "backoff_delay",
    "clip",
    "decode_body",
    "describe",
    "error_for",
    "interpret",
    "parse_retry_after",
    "redact",
    "redact_text",
    "refusal_key",
    "retry_delay",
    "retry_reason",
    "slows_everyone",
]

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
TEXT_LIMIT: Final = 1024  # characters of server text kept in a message, a status or a body excerpt
REDACT_DEPTH: Final = 32  # levels of a body kept in an error; deeper parts are replaced
REDACT_NODES: Final = 1_000  # values of a body kept in an error; the rest are replaced
RAW_DEPTH: Final = 256  # nesting of data handed back as plain JSON, so repr() and pickle work on it
_CODE_RANGE: Final = range(-(2**31), 2**31)  # an envelope `code` outside it is no code at all
_SECRET_KEYS: Final = frozenset({"token", "appsecret", "app_secret", "authorization", "secret", "password"})
_REDACTED: Final = "***"
_TOO_DEEP: Final = "…(nested deeper than 32 levels)"
_MIN_SECRET = 4  # shorter strings are not scrubbed: they would mangle ordinary text


# -- text and redaction --------------------------------------------------------------------------------


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """Return *text* cut to *limit* characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text) - limit} more characters)"


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def _usable(secrets: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(s for s in secrets if s and len(s) >= _MIN_SECRET)


def redact(value: object, secrets: Iterable[str | None] = ()) -> object:
    """
    Return a bounded copy of *value*: secret-looking keys masked, every known secret scrubbed (keys
    included), strings cut to `TEXT_LIMIT`, at most `REDACT_NODES` values and `REDACT_DEPTH` levels.

    What is left out is replaced by a marker saying so, so the work and the result stay small whatever
    the answer held.
    """
    return _Redactor(_usable(secrets)).copy(value, REDACT_DEPTH)


class _Redactor:
    __slots__ = ("budget", "secrets")

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self.budget = REDACT_NODES

    def copy(self, value: object, depth: int) -> object:
        self.budget -= 1
        if isinstance(value, str):
            return _bounded(value, self.secrets, TEXT_LIMIT)
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
            return describe(value)
        if not isinstance(value, dict | list):
            return value
        if depth == 0:
            return _TOO_DEEP
        if isinstance(value, list):
            items: list[object] = []
            for i, item in enumerate(value):
                if self.budget <= 0:
                    items.append(f"…({len(value) - i} more values)")
                    break
                items.append(self.copy(item, depth - 1))
            return items
        out: dict[object, object] = {}
        for i, (k, v) in enumerate(value.items()):
            if self.budget <= 0:
                out["…"] = f"({len(value) - i} more keys)"
                break
            key = _bounded(k, self.secrets, 64) if isinstance(k, str) else k
            hidden = isinstance(k, str) and k.lower() in _SECRET_KEYS
            out[key] = _REDACTED if hidden else self.copy(v, depth - 1)
        return out


def _bounded(text: str, secrets: tuple[str, ...], limit: int) -> str:
    if len(text) <= limit:
        return _scrub(text, secrets)
    # Scrub a little past the cut, so a secret that spans it is masked whole before cutting.
    margin = max((len(s) for s in secrets), default=0)
    head = _scrub(text[: limit + margin], secrets)[:limit]
    return f"{head}…(cut from {len(text)} characters)"


def redact_text(text: str, secrets: Iterable[str | None], limit: int = TEXT_LIMIT) -> str:
    """Scrub secrets from *text*, then clip it: scrubbing first, so a cut cannot expose a secret's prefix."""
    return _bounded(text, _usable(secrets), limit)


def describe(value: object) -> str:
    """
    A bounded description of a value from an answer, for an error message: its type and size, never
    its text (which could echo a secret) nor a deep repr.
    """
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a JSON {type(value).__name__}"


# -- answers -----------------------------------------------------------------------------------------


def refusal_key(status: int, code: int | None) -> int:
    """
    The number a refusal is judged by: the envelope *code* on a 2xx answer that has one, else *status*.
    """
    return code if 200 <= status < 300 and code is not None else status


def error_for(
    *,
    status: int,
    code: int | None,
    envelope_status: str | None,
    message: str,
    body: object,
    retry_after: float | None = None,
) -> APIError:
    """
    Map an unsuccessful answer to its error class by `refusal_key()`.
    """
    key = refusal_key(status, code)
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code,
        "envelope_status": envelope_status,
        "body": body,
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


class NotJSON:
    """What `decode_body()` returns for bytes that are not JSON: the reason, and no exception to chain."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def decode_body(body: bytes) -> object:
    if not body:
        return None
    try:
        return _json.loads(body)
    except _json.JSONDecodeError as exc:
        return NotJSON(str(exc))


def interpret(
    status: int, headers: Mapping[str, str], body: bytes, *, secrets: Iterable[str | None] = ()
) -> dict[str, Any]:
    """
    Return the envelope of a successful answer, or raise the error the answer means.

    Success is a 2xx status **and** a JSON object whose `code` is 200 and `status` is `"OK"`. The
    error names no route (the caller adds it) and holds only redacted, bounded server text.
    """
    ok_status = 200 <= status < 300
    parsed = decode_body(body)
    if isinstance(parsed, NotJSON):
        if ok_status:
            raise DecodeError(f"answer is not JSON ({parsed.reason})")
        parsed = None
    if ok_status and isinstance(parsed, dict) and parsed.get("code") == 200 and parsed.get("status") == "OK":
        if "data" not in parsed:
            raise DecodeError("envelope has no data", field_path="data")
        return parsed
    if ok_status and not isinstance(parsed, dict):
        raise DecodeError(f"answer is not an envelope object: {type(parsed).__name__}")
    code: int | None = None
    envelope_status: str | None = None
    message = ""
    shown: object
    if isinstance(parsed, dict):
        raw_code = parsed.get("code")
        code = raw_code if type(raw_code) is int and raw_code in _CODE_RANGE else None
        raw_status = parsed.get("status")
        envelope_status = redact_text(raw_status, secrets, 64) if isinstance(raw_status, str) else None
        raw_message = parsed.get("message", parsed.get("msg"))
        message = redact_text(raw_message, secrets) if isinstance(raw_message, str) else ""
        shown = redact(parsed, secrets)
    else:
        shown = redact_text(body.decode("utf-8", "replace"), secrets, 2 * TEXT_LIMIT)
    if ok_status and code is None and envelope_status is None:
        raise DecodeError("answer is not an envelope: no code or status")
    return_error = error_for(
        status=status,
        code=code,
        envelope_status=envelope_status,
        message=message or ("the API refused the call" if ok_status else _reason(status)),
        body=shown,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )
    raise return_error


def _reason(status: int) -> str:
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


# -- retries -----------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """
    Return the wait a `Retry-After` header asks for, in seconds (never negative), or `None`.

    Both forms are accepted: delay-seconds (`"120"`, `"1.5"`) and an HTTP date. Anything else, an
    infinite or NaN delay, and a date beyond what datetime can hold mean no usable header: `None`.
    A date gives whole seconds, rounded up: its resolution is a second, so a fraction would only say
    where in the current second the clock is, and adaptive pacing reads a sub-second wait as a token
    bucket's time to its next token.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 64:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return float(max(0, math.ceil((when - now).total_seconds())))


def backoff_delay(policy: RetryPolicy, retry: int, *, rand: Callable[[], float] = random.random) -> float:
    """
    Return the full-jitter wait before retry *retry* (1-based): uniform in [0, min(max, initial·2^(n-1))].
    """
    exponent = min(retry - 1, 64)  # 2.0**1024 overflows; the cap is reached long before
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0**exponent)
    return ceiling * rand()


def retry_reason(error: AirudderError) -> str:
    """
    Name why an attempt failed, for the retry counters: `"429"`, `"code 500"`, `"timeout"`, `"transport"`.
    """
    if isinstance(error, APIError):
        if 200 <= error.status < 300 and error.code is not None:
            return f"code {error.code}"
        return str(error.status)
    if isinstance(error, TimeoutError):
        return "timeout"
    return "transport"


def slows_everyone(error: AirudderError, *, adaptive: bool = False) -> bool:
    """
    Tell whether *error* asks every task to pause: any answer with `Retry-After`, and a bare 429 too
    unless pacing is *adaptive* (which answers a bare 429 by cutting its pace instead).
    """
    if isinstance(error, APIError) and error.retry_after:
        return True
    return isinstance(error, RateLimitedError) and not adaptive


def retry_delay(
    error: AirudderError,
    policy: RetryPolicy,
    attempt: int,
    may_retry: bool,
    *,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """
    Return how long to wait before another attempt after *error* on attempt *attempt*, or None to stop.

    Transport failures retry when the policy says so; answers retry when their `refusal_key()` is in
    `policy.statuses`. A `Retry-After` is honoured as the wait, and one longer than
    `policy.retry_after_max` stops at once (the caller decides). Nothing retries unless *may_retry*
    (the call is safe to repeat) and attempts remain.
    """
    if isinstance(error, TransportError):
        retryable = policy.retry_transport_errors
        retry_after = None
    elif isinstance(error, APIError):
        retryable = refusal_key(error.status, error.code) in policy.statuses
        retry_after = error.retry_after
    else:
        return None
    if retry_after is not None and retry_after > policy.retry_after_max:
        return None
    if not (retryable and may_retry) or attempt >= policy.attempts:
        return None
    if retry_after is not None:
        return retry_after
    return backoff_delay(policy, attempt, rand=rand)
