"""
FakeAirudder's server-side rate limit: a token bucket on the server's clock, answered 429 past its budget.

Every test stops the server's clock (`clock=lambda: 0.0`) and moves it with `fake.advance()`: time passes
only when a test says so, and nothing waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import math

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airudder_async.errors import RateLimitedError
from airudder_async.models import RequestEvent
from airudder_async.testing import (
    AUTH_PATH,
    INSTANCELIST_PATH,
    FakeAirudder,
    Fault,
    RateLimit,
    RateLimitStats,
)

pytestmark = pytest.mark.anyio


def _stopped() -> float:
    return 0.0


async def _token(s: aiohttp.ClientSession, fake: FakeAirudder) -> dict[str, str]:
    async with s.post(fake.url + AUTH_PATH, json={"APPKey": fake.app_key, "APPSecret": fake.app_secret}) as r:
        assert r.status == 200
        return {"Authorization": f"Token {(await r.json())['data']['token']}"}


async def _list(
    s: aiohttp.ClientSession, fake: FakeAirudder, headers: dict[str, str]
) -> tuple[int, str | None]:
    """GET instancelist once; return the status and the Retry-After header (None when absent)."""
    async with s.get(fake.url + INSTANCELIST_PATH, headers=headers) as r:
        body = await r.json()
        if r.status == 429:
            assert (body["code"], body["status"], body["data"]) == (429, "ERROR", None)
        return r.status, r.headers.get("Retry-After")


async def test_burst_then_429_with_retry_after_until_a_token_is_free() -> None:
    """Past *burst* requests, one is answered 429 with the wait until a token is free, then let through."""
    limit = RateLimit(rate=10, burst=2)
    async with (
        FakeAirudder(workflows=3, rate_limit=limit, clock=_stopped) as fake,
        aiohttp.ClientSession() as s,
    ):
        assert fake.rate_limit == limit
        headers = await _token(s, fake)
        assert [await _list(s, fake, headers) for _ in range(3)] == [(200, None), (200, None), (429, "0.100")]
        fake.advance(0.05)
        assert await _list(s, fake, headers) == (429, "0.050")
        fake.advance(0.05)
        assert await _list(s, fake, headers) == (200, None)
        flags = [r.is_rate_limited for r in fake.requests]
        assert flags == [False, False, False, True, True, False]  # the auth call is not counted
        assert fake.hits("GET", INSTANCELIST_PATH) == 5
        assert fake.rate_limit_stats() == RateLimitStats(checked=5, refused=2, first_at=0.0, last_at=0.1)


async def test_retry_after_can_be_left_out() -> None:
    """With has_retry_after=False, a refused request is answered 429 without a Retry-After header."""
    async with (
        FakeAirudder(rate_limit=RateLimit(rate=1, has_retry_after=False), clock=_stopped) as fake,
        aiohttp.ClientSession() as s,
    ):
        headers = await _token(s, fake)
        assert [await _list(s, fake, headers) for _ in range(2)] == [(200, None), (429, None)]


@pytest.mark.parametrize(
    ("rate", "decimals", "expected"),
    [(3, 3, "0.334"), (3, 0, "1"), (0.4, 0, "3"), (7, 6, "0.142858"), (1000, 3, "0.001")],
)
async def test_retry_after_rounds_up_to_the_chosen_decimals(
    rate: float, decimals: int, expected: str
) -> None:
    """Retry-After is the wait rounded up, never down, to retry_after_decimals decimals."""
    limit = RateLimit(rate=rate, retry_after_decimals=decimals)
    async with FakeAirudder(rate_limit=limit, clock=_stopped) as fake, aiohttp.ClientSession() as s:
        headers = await _token(s, fake)
        assert [await _list(s, fake, headers) for _ in range(2)] == [(200, None), (429, expected)]


async def test_exempt_paths_choose_what_counts() -> None:
    """The auth call is exempt by default; with exempt_paths empty it takes a token like any request."""
    async with (
        FakeAirudder(rate_limit=RateLimit(rate=1), clock=_stopped) as fake,
        aiohttp.ClientSession() as s,
    ):
        for _ in range(3):
            await _token(s, fake)
        fake.set_rate_limit(RateLimit(rate=1, exempt_paths=frozenset()))
        auth = {"APPKey": fake.app_key, "APPSecret": fake.app_secret}
        statuses = []
        for _ in range(2):
            async with s.post(fake.url + AUTH_PATH, json=auth) as r:
                statuses.append(r.status)
        assert statuses == [200, 429]
        assert fake.rate_limit_stats().checked == 2


async def test_set_rate_limit_takes_effect_at_once() -> None:
    """A limit set, changed or removed mid-run applies from the next request; saved tokens are kept."""
    async with FakeAirudder(workflows=1, clock=_stopped) as fake, aiohttp.ClientSession() as s:
        headers = await _token(s, fake)
        assert fake.rate_limit is None
        assert [await _list(s, fake, headers) for _ in range(5)] == [(200, None)] * 5
        fake.set_rate_limit(RateLimit(rate=10, burst=4))  # where there was none: a full bucket
        fake.set_rate_limit(RateLimit(rate=10, burst=3))  # no request yet: still full, of the new burst
        assert [(await _list(s, fake, headers))[0] for _ in range(4)] == [200, 200, 200, 429]
        fake.advance(0.25)  # 2.5 tokens saved at 10/s
        fake.set_rate_limit(RateLimit(rate=5, burst=3))  # halved: the saved tokens stay
        fake.advance(0.1)  # 0.5 more at 5/s: 3 tokens
        assert [await _list(s, fake, headers) for _ in range(4)] == [(200, None)] * 3 + [(429, "0.200")]
        fake.set_rate_limit(RateLimit(rate=5, burst=1))  # a smaller burst caps the saved tokens
        fake.advance(10)
        assert [(await _list(s, fake, headers))[0] for _ in range(2)] == [200, 429]
        fake.set_rate_limit(None)
        assert [(await _list(s, fake, headers))[0] for _ in range(3)] == [200] * 3
        fake.set_rate_limit(RateLimit(rate=1, burst=2))  # back again: a full bucket
        assert [(await _list(s, fake, headers))[0] for _ in range(3)] == [200, 200, 429]


async def test_stats_give_throughput_and_refused_share_without_recording() -> None:
    """rate_limit_stats() counts checked and refused requests with their times, even with recording off."""
    assert RateLimitStats().refused_share == 0.0
    assert RateLimitStats().admitted_per_second is None
    async with (
        FakeAirudder(workflows=1, rate_limit=RateLimit(rate=2), clock=_stopped) as fake,
        aiohttp.ClientSession() as s,
    ):
        fake.record_requests = False
        fake.advance(100)
        headers = await _token(s, fake)
        await _list(s, fake, headers)
        assert fake.rate_limit_stats().admitted_per_second is None  # one request: no span yet
        for _ in range(8):  # 4 s at 2/s: one let through every 0.5 s, and one refused between
            fake.advance(0.25)
            await _list(s, fake, headers)
        stats = fake.rate_limit_stats(reset=True)
        assert stats == RateLimitStats(checked=9, refused=4, first_at=100.0, last_at=102.0)
        assert (stats.admitted, stats.admitted_per_second, stats.refused_share) == (5, 2.5, 4 / 9)
        assert fake.rate_limit_stats() == RateLimitStats()
        assert fake.requests == []


async def test_a_refused_request_shows_no_fault() -> None:
    """A fault scheduled on a request the limit refuses is not shown, on it or on a later one."""
    async with (
        FakeAirudder(workflows=1, rate_limit=RateLimit(rate=1), clock=_stopped) as fake,
        aiohttp.ClientSession() as s,
    ):
        headers = await _token(s, fake)
        fake.inject(Fault.http_status(503), on=2)
        assert [(await _list(s, fake, headers))[0] for _ in range(2)] == [200, 429]
        fake.advance(1)
        assert (await _list(s, fake, headers))[0] == 200


def test_rate_limit_refuses_bad_settings() -> None:
    """RateLimit refuses a rate that is not positive and finite, a burst below 1 and odd decimals."""
    for rate in [0, -1, math.inf, math.nan]:
        with pytest.raises(ValueError, match="rate"):
            RateLimit(rate=rate)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(rate=1, burst=0)
    for decimals in [-1, 7]:
        with pytest.raises(ValueError, match="retry_after_decimals"):
            RateLimit(rate=1, retry_after_decimals=decimals)
    for seconds in [-0.1, math.inf, math.nan]:
        with pytest.raises(ValueError, match="refusal_latency"):
            RateLimit(rate=1, refusal_latency=seconds)
    assert RateLimit(rate=1, refusal_latency=0).refusal_latency == 0


async def test_a_refusal_can_come_back_before_slower_admitted_answers() -> None:
    """
    With refusal_latency, a 429 takes that long instead of the server's latency: of two requests sent
    together, the refused one is answered first, while the admitted one still waits its latency.
    """
    limit = RateLimit(rate=1, refusal_latency=0.0)
    async with (
        FakeAirudder(workflows=3, latency=0.5, rate_limit=limit, clock=_stopped) as fake,
        aiohttp.ClientSession() as s,
    ):
        headers = await _token(s, fake)
        first = asyncio.ensure_future(_list(s, fake, headers))
        await fake.wait_for_hits("GET", INSTANCELIST_PATH, 1)  # the admitted one arrives first
        second = asyncio.ensure_future(_list(s, fake, headers))
        done, _pending = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {second}
        assert second.result()[0] == 429
        assert (await first)[0] == 200


async def test_client_walk_through_the_limit() -> None:
    """A client that waits each Retry-After gets every page, and the server refused one try per page."""
    async with FakeAirudder(workflows=50, rate_limit=RateLimit(rate=1000), clock=_stopped) as fake:

        def hook(event: RequestEvent) -> None:
            if event.kind == "retry":
                assert event.delay is not None
                fake.advance(event.delay)  # the server's clock moves as the client waits (1 ms)

        async with fake.client(event_hook=hook) as client:
            ids = [w.workflow_id async for w in client.iter_workflows(page_size=10, prefetch=1)]
    assert ids == fake.workflow_ids()
    stats = fake.rate_limit_stats()
    assert (stats.checked, stats.refused) == (9, 4)  # pages 2-5 were refused once each
    assert [r.is_rate_limited for r in fake.requests if r.path == INSTANCELIST_PATH].count(True) == 4


async def test_client_without_retry_after_gives_up_when_time_stands_still() -> None:
    """With no Retry-After and a clock that does not move, every retry is refused and the client raises."""
    limit = RateLimit(rate=1, has_retry_after=False)
    async with FakeAirudder(workflows=1, rate_limit=limit, clock=_stopped) as fake, fake.client() as client:
        await client.list_workflows()
        with pytest.raises(RateLimitedError) as caught:
            await client.list_workflows()
    assert caught.value.retry_after is None
    assert fake.rate_limit_stats().refused == fake.hits("GET", INSTANCELIST_PATH) - 1 >= 1


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(0.5, 200),
    burst=st.integers(1, 5),
    decimals=st.integers(0, 4),
    # Gaps in hundredths of the refill time 1/rate, so refusals are common at any rate.
    steps=st.lists(st.tuples(st.integers(0, 300), st.booleans()), min_size=5, max_size=30),
)
async def test_any_window_lets_through_at_most_rate_times_t_plus_burst(
    rate: float, burst: int, decimals: int, steps: list[tuple[int, bool]]
) -> None:
    """In any T seconds at most rate*T + burst requests pass, and each Retry-After is just enough."""
    limit = RateLimit(rate=rate, burst=burst, retry_after_decimals=decimals)
    unit = 10.0**-decimals
    admitted: list[float] = []
    async with (
        FakeAirudder(workflows=1, rate_limit=limit, clock=_stopped) as fake,
        aiohttp.ClientSession() as s,
    ):
        headers = await _token(s, fake)

        async def request() -> str | None:
            status, retry_after = await _list(s, fake, headers)
            if status == 200:
                admitted.append(fake.now)
                return None
            assert status == 429
            assert retry_after is not None
            return retry_after

        for gap, probe in steps:
            fake.advance(gap / 100 / rate)
            retry_after = await request()
            if retry_after is None or not probe:
                continue
            wait = float(retry_after)
            if wait > 2 * unit:  # a whole unit short of the header is still too early: it is not padded
                fake.advance(wait - 2 * unit)
                assert await request() is not None
                fake.advance(2 * unit)
            else:
                fake.advance(wait)
            assert await request() is None  # waiting the Retry-After given is always enough
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rate * (admitted[j] - admitted[i]) + burst + 1e-6
