"""
Pacing and retries: Retry-After parsing, backoff, the token bucket, the in-flight cap and the 429 cool-down.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from airudder_async import Limits, RetryPolicy
from airudder_async._protocol import backoff_delay, parse_retry_after
from airudder_async._ratelimit import TokenBucket
from airudder_async.errors import RateLimitedError, RequestTimeoutError, ServerError
from airudder_async.models import RequestEvent
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, Fault

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-4", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),
        ("Wed, 26 Nov 2026 12:01:00 GMT", 60.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After is read as seconds or as an HTTP date, never negative."""
    assert parse_retry_after(value, now=NOW) == expected


@given(st.integers(min_value=1, max_value=60), st.floats(min_value=0, max_value=1))
def test_backoff_is_full_jitter_capped(retry: int, r: float) -> None:
    """The backoff lies in [0, min(max, initial * 2^(n-1))]."""
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=30.0)
    delay = backoff_delay(policy, retry, rand=lambda: r)
    assert 0 <= delay <= min(30.0, 0.5 * 2 ** (retry - 1))
    assert backoff_delay(policy, retry, rand=lambda: 1.0) == min(30.0, 0.5 * 2 ** (retry - 1))


@given(
    rate=st.floats(min_value=0.5, max_value=200),
    burst=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_token_bucket_never_exceeds_rate_plus_burst(rate: float, burst: int, gaps: list[float]) -> None:
    """Over any window, the send times a bucket grants hold at most rate·window + burst requests."""
    bucket = TokenBucket(rate, burst)
    now, sends = 0.0, []
    for gap in gaps:
        now += gap
        sends.append(now + bucket.reserve(now))
    sends.sort()
    for i, start in enumerate(sends):
        for j in range(i, len(sends)):
            window = sends[j] - start
            assert j - i + 1 <= rate * window + burst + 1e-6


def test_token_bucket_lets_a_burst_through() -> None:
    """The first *burst* requests go at once, the next waits one interval."""
    bucket = TokenBucket(10, burst=3)
    assert [bucket.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve(0.0) == pytest.approx(0.1)


@pytest.mark.anyio
async def test_budget_holds_observed_rate() -> None:
    """With a budget of R req/s and a burst of B, N concurrent calls reach the server over (N - B)/R s."""
    rate, burst, n = 100.0, 2, 30
    async with (
        FakeAirudder(workflows=3) as fake,
        fake.client(limits=Limits(requests_per_second=rate, burst=burst, max_in_flight=8)) as client,
    ):
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(client.list_workflows)
        waited = client.stats.budget_wait
    times = sorted(r.at for r in fake.requests if r.path == INSTANCELIST_PATH)
    assert len(times) == n
    # B go at once, then one every 1/R s. A stalled event loop can only spread them out further (and
    # then release a clump: so the bound is on the whole span, by the server's clock; the per-window
    # bound is the pure TokenBucket property above).
    assert times[-1] - times[0] >= (n - burst) / rate - 0.005
    assert waited > 0


@pytest.mark.anyio
async def test_in_flight_never_exceeds_cap() -> None:
    """No more than max_in_flight requests are ever in the server at once."""
    async with (
        FakeAirudder(workflows=3, latency=0.02) as fake,
        fake.client(limits=Limits(max_in_flight=3)) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(25):
            tg.start_soon(client.list_workflows)
    assert fake.peak_in_flight == 3


@pytest.mark.anyio
async def test_429_cool_down_holds_every_task() -> None:
    """After a 429 with Retry-After, no request from any task goes out before the cool-down ends."""
    async with (
        FakeAirudder(workflows=3, latency=0.01) as fake,
        fake.client(limits=Limits(max_in_flight=4)) as client,
    ):
        await client.list_workflows()
        fake.inject(Fault.rate_limited(0.1))  # tiny: the cool-down is what is measured
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(client.list_workflows)
    reqs = [r for r in fake.requests if r.path == INSTANCELIST_PATH][1:]
    refused_at = reqs[0].at
    # The answer to the refused request left the server ~latency after it arrived; requests already in
    # flight then may land, but none sent after the client saw the 429 may come before the cool-down.
    late = [r.at for r in reqs[4:]]
    assert late
    assert min(late) >= refused_at + 0.1 - 0.01
    assert client.stats.rate_limited == 1
    assert client.stats.cooldown_wait > 0


@pytest.mark.anyio
async def test_retry_after_date_form_is_honoured() -> None:
    """A 429 whose Retry-After is an HTTP date is waited out and retried."""
    async with FakeAirudder(workflows=3) as fake, fake.client() as client:
        fake.inject(Fault.rate_limited(0.0, as_date=True))
        page = await client.list_workflows()
    assert len(page.items) == 3
    assert client.stats.retries == {"429": 1}


@pytest.mark.anyio
async def test_retry_after_beyond_cap_raises_at_once() -> None:
    """A Retry-After longer than the cap raises RateLimitedError with retry_after, without waiting."""
    async with (
        FakeAirudder(workflows=3) as fake,
        fake.client(retry=RetryPolicy(retry_after_max=5, backoff_initial=0)) as client,
    ):
        fake.inject(Fault.rate_limited(600))
        with anyio.fail_after(2), pytest.raises(RateLimitedError) as info:
            await client.list_workflows()
    assert info.value.retry_after == 600
    assert fake.hits("GET", INSTANCELIST_PATH) == 1


@pytest.mark.anyio
async def test_unsafe_calls_are_not_retried_unless_opted_in() -> None:
    """A POST is not retried on 503 by default, and is when the caller opts in."""
    async with FakeAirudder() as fake, fake.client() as client:
        path = "/service/cloud/auth"
        await client.list_workflows()  # the client's own auth happens first
        fake.inject(Fault.http_status(503), path=path)
        with pytest.raises(ServerError):
            await client.request("POST", path, json={"APPKey": fake.app_key, "APPSecret": fake.app_secret})
        fake.inject(Fault.http_status(503), path=path)
        data = await client.request(
            "POST", path, json={"APPKey": fake.app_key, "APPSecret": fake.app_secret}, idempotent=True
        )
    assert isinstance(data, dict)
    assert "token" in data


@pytest.mark.anyio
async def test_call_deadline_bounds_all_attempts() -> None:
    """A deadline ends a call that keeps retrying, as RequestTimeoutError."""
    async with (
        FakeAirudder(workflows=1) as fake,
        fake.client(
            retry=RetryPolicy(attempts=100, backoff_initial=0.05, backoff_max=0.05, deadline=0.3)
        ) as client,
    ):
        await client.list_workflows()
        fake.inject(Fault.http_status(503), on=range(1, 100))
        with pytest.raises(RequestTimeoutError, match="deadline"):
            await client.list_workflows()
        fake.clear_faults()


@pytest.mark.anyio
async def test_retries_are_logged_without_authorization(caplog: pytest.LogCaptureFixture) -> None:
    """Each retry is logged on the package logger, never with the token or secret."""
    async with FakeAirudder(workflows=1) as fake, fake.client() as client:
        fake.inject(Fault.http_status(502), Fault.http_status(502), on=1)
        fake.inject(Fault.http_status(504), on=2)
        with caplog.at_level(logging.DEBUG, logger="airudder_async"):
            await client.list_workflows()
        token = client._loop.auth.token  # type: ignore[union-attr]  # the client is open
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    assert all(r.name == "airudder_async" for r in retries)
    assert token
    assert token not in caplog.text
    assert fake.app_secret not in caplog.text
    assert "Authorization" not in caplog.text


@pytest.mark.anyio
async def test_cancellation_is_not_retried() -> None:
    """Cancelling a call during its backoff sleep cancels it; nothing is retried afterwards."""
    events: list[RequestEvent] = []
    retrying = anyio.Event()

    def hook(event: RequestEvent) -> None:
        events.append(event)
        if event.kind == "retry":
            retrying.set()  # the call now sleeps before its retry

    async with (
        FakeAirudder(workflows=1) as fake,
        fake.client(retry=RetryPolicy(backoff_initial=0), event_hook=hook) as client,
    ):
        await client.list_workflows()
        fake.inject(Fault.rate_limited(5))  # a deterministic 5 s wait
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.list_workflows)
            await retrying.wait()
            tg.cancel_scope.cancel()
        assert tg.cancel_scope.cancelled_caught
    # The cancelled call has ended: whatever it was going to send, it sent. It sent no retry.
    assert [(e.kind, e.status) for e in events if e.path == INSTANCELIST_PATH] == [
        ("request", None),
        ("response", 200),
        ("request", None),
        ("response", 429),
        ("retry", 429),
    ]
    assert fake.hits("GET", INSTANCELIST_PATH) == 2


@pytest.mark.parametrize("value", [8.0, "8", None])
def test_max_in_flight_must_be_an_integer(value: object) -> None:
    """A float (from a YAML or env parse, say) passed the old `>= 1` check, then crashed the walk when
    the slow start set the in-flight window to it (anyio takes only an int): refused when built now."""
    with pytest.raises(TypeError, match="max_in_flight"):
        Limits(max_in_flight=value)  # type: ignore[arg-type]
