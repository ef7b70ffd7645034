"""
The fault matrix: every fault FakeAirudder can inject, alone and in random mixes, against a full walk.

The rule for each: the walk yields every workflow of the snapshot exactly once, in order, or raises a typed
error whose cursor resumes to exactly the remaining items.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airudder_async import AirudderClient, RetryPolicy, Timeouts
from airudder_async.errors import AirudderError
from airudder_async.testing import FAKE_RETRY, INSTANCELIST_PATH, FakeAirudder, Fault

pytestmark = pytest.mark.anyio

N, SIZE = 1000, 100
FAULTS: dict[str, list[Fault]] = {
    "429 Retry-After seconds": [Fault.rate_limited(0)],
    "429 Retry-After date": [Fault.rate_limited(0, as_date=True)],
    "500": [Fault.http_status(500)],
    "502": [Fault.http_status(502)],
    "503": [Fault.http_status(503)],
    "504": [Fault.http_status(504)],
    "slow past timeout": [Fault.slow(0.6)],
    "dropped mid-body": [Fault.drop()],
    "malformed JSON": [Fault.malformed_json()],
    "2xx error envelope": [Fault.error_envelope(500)],
    "token revoked": [Fault.revoke_token()],
    "50 inserted at head": [Fault.insert_head(50)],
}


async def walk_resuming(
    client: AirudderClient, *, prefetch: int, max_resumes: int = 20
) -> tuple[list[str], int]:
    """Walk to the end, resuming from the error's cursor each time the walk fails."""
    ids: list[str] = []
    cursor = None
    for resumes in range(max_resumes + 1):
        walk = client.iter_workflows(page_size=SIZE, prefetch=prefetch, cursor=cursor)
        try:
            async for wf in walk:
                ids.append(wf.workflow_id)
        except AirudderError as exc:
            assert exc.cursor is not None, f"{type(exc).__name__} without a cursor"
            cursor = exc.cursor
            continue
        return ids, resumes
    raise AssertionError("walk did not finish")


def fast_client(fake: FakeAirudder) -> AirudderClient:
    return fake.client(timeouts=Timeouts(total=0.3), retry=RetryPolicy(attempts=4, backoff_initial=0))


@pytest.mark.parametrize("name", list(FAULTS))
@pytest.mark.parametrize("prefetch", [1, 4])
async def test_single_fault(name: str, prefetch: int) -> None:
    """Each fault on the 3rd page request: every workflow of the snapshot, once, in order."""
    async with FakeAirudder(workflows=N) as fake, fast_client(fake) as client:
        expected = fake.workflow_ids()
        fake.inject(*FAULTS[name], on=3)
        ids, resumes = await walk_resuming(client, prefetch=prefetch)
    assert ids == expected
    assert resumes == (1 if name == "malformed JSON" else 0)


@pytest.mark.parametrize("offset", [250, -250])
async def test_count_lies(offset: int) -> None:
    """A count larger or smaller than the data still yields every workflow once."""
    async with FakeAirudder(workflows=N) as fake, fast_client(fake) as client:
        fake.count_offset = offset
        ids, _ = await walk_resuming(client, prefetch=4)
    assert ids == fake.workflow_ids()


async def test_5000_through_30_percent_faults_and_a_revocation() -> None:
    """5,000 workflows through 30 % seeded 429/5xx answers and one token revocation: all, once, in order."""
    # The seeded faults land on requests in the order they arrive, which prefetch timing varies: with 6
    # attempts a page refused every time (0.3**6 a page, ~2% a walk) ended the walk now and then. 12
    # attempts make that a chance in a million; what is tested is that nothing is lost or doubled.
    retry = attrs.evolve(FAKE_RETRY, attempts=12)
    async with FakeAirudder(workflows=5000) as fake, fake.client(retry=retry) as client:
        expected = fake.workflow_ids()
        fake.inject_random(
            [
                Fault.rate_limited(0),
                Fault.http_status(500),
                Fault.http_status(502),
                Fault.http_status(503),
                Fault.http_status(504),
            ],
            rate=0.3,
            seed=7,
        )
        fake.inject(Fault.revoke_token(), on=12)
        ids = [w.workflow_id async for w in client.iter_workflows(page_size=200)]
        stats = client.stats
    assert ids == expected
    assert len(set(ids)) == 5000
    assert stats.total_retries > 0
    assert stats.token_refreshes == 1
    assert stats.auth_requests == 2
    # Every request in flight with the revoked token is refused once and replayed once.
    replays = fake.hits("GET", INSTANCELIST_PATH) - 25 - stats.total_retries
    assert 1 <= replays <= 8


fault_names = st.sampled_from(sorted(FAULTS))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    schedule=st.lists(st.tuples(st.integers(1, 14), fault_names), max_size=6),
    prefetch=st.sampled_from([1, 3, 8]),
    offset=st.sampled_from([0, 0, 120, -120]),
)
async def test_random_fault_mixes(schedule: list[tuple[int, str]], prefetch: int, offset: int) -> None:
    """Any mix of faults on any requests: the resumed walk covers the snapshot exactly once, in order."""
    async with FakeAirudder(workflows=N) as fake, fast_client(fake) as client:
        expected = fake.workflow_ids()
        fake.count_offset = offset
        for when, name in schedule:
            fake.inject(*FAULTS[name], on=when)
        ids, _ = await walk_resuming(client, prefetch=prefetch)
    assert ids == expected
