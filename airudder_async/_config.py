"""
Frozen configuration objects: every knob a user may want to turn lives here.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_RESPONSE_SIZE",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PREFETCH",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "MAX_PAGE_SIZE",
    "MAX_PREFETCH",
    "NO_RETRY",
    "Limits",
    "RetryPolicy",
    "Timeouts",
]

DEFAULT_BASE_URL = "https://api.airudder.com"
MAX_PAGE_SIZE = 200  # documented maximum of `size` on instancelist
DEFAULT_PAGE_SIZE = 200
DEFAULT_PREFETCH = 8
# Pages requested ahead, at most: each holds a decoded page (and a task) until it is read, and beyond
# `Limits.max_in_flight` they only wait for a slot, so a larger window buys nothing but memory.
MAX_PREFETCH = 64
# A page of 200 workflows is about 45 KB; no documented answer comes near this.
DEFAULT_MAX_RESPONSE_SIZE = 16 * 1024 * 1024  # bytes, after decompression

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attr.name} must be > 0 or None, got {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attr.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Timeouts:
    """
    Per-attempt time limits, in seconds; `None` disables one.

    *connect* bounds opening a connection, *read* the wait for each chunk of the answer, and
    *total* one whole attempt (connect, send, read).
    """

    connect: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    read: float | None = attrs.field(default=30.0, validator=_positive_or_none)
    total: float | None = attrs.field(default=60.0, validator=_positive_or_none)


@attrs.frozen(kw_only=True)
class Limits:
    """
    How hard one client may press the API.

    *max_in_flight* caps concurrent requests; *requests_per_second* is a token-bucket budget
    (`None`: no budget) allowing bursts of *burst* requests; *max_connections* sizes the pool.
    With *adaptive* (the default) the client also learns the account's unpublished rate limit from its
    429s and latency and paces just under it; *requests_per_second* is then a ceiling it never passes.
    Until the first 429 nothing is paced beyond these limits, but requests in flight start at one and
    double with each round of answers, up to *max_in_flight* (a slow start; whatever the client sends
    first, the auth call included, counts towards the first round). `adaptive=False` paces by the
    fixed settings alone, and a 429 then only pauses every task for its cool-down.
    *max_response_size* bounds one answer in bytes, counted after decompression: a bigger one raises
    `ResponseTooLargeError` (so at most `max_in_flight` such buffers exist at once).
    """

    max_in_flight: int = attrs.field(
        default=8, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    requests_per_second: float | None = attrs.field(default=None, validator=_positive_or_none)
    burst: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    max_connections: int = attrs.field(default=32, validator=attrs.validators.ge(1))
    adaptive: bool = True
    max_response_size: int = attrs.field(
        default=DEFAULT_MAX_RESPONSE_SIZE,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)],
    )


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """
    Which failures are retried and how long to wait; all times are in seconds.

    Waits grow exponentially from *backoff_initial* up to *backoff_max*, with full jitter.
    A `Retry-After` longer than *retry_after_max* raises `RateLimitedError` at once. *deadline*
    bounds one call across all its attempts. Calls that change state on the vendor side are
    retried only when *retry_unsafe* is true (or the call opts in).
    """

    attempts: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    backoff_initial: float = attrs.field(default=0.5, validator=_non_negative)
    backoff_max: float = attrs.field(default=30.0, validator=_non_negative)
    retry_after_max: float = attrs.field(default=120.0, validator=_non_negative)
    deadline: float | None = attrs.field(default=None, validator=_positive_or_none)
    statuses: frozenset[int] = attrs.field(default=_RETRY_STATUSES, converter=frozenset)
    retry_transport_errors: bool = True
    retry_unsafe: bool = False


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_LIMITS = Limits()
DEFAULT_RETRY = RetryPolicy()  # tweak with attrs.evolve(DEFAULT_RETRY, attempts=10)
NO_RETRY = RetryPolicy(attempts=1)
