"""
The token cache: one fetch shared by concurrent callers, failures shared but not aliased, no stale failure.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from airudder_async import AirudderClient, RetryPolicy
from airudder_async._auth import TokenCache, is_fresh
from airudder_async.errors import AirudderError, AuthenticationError, ServerError
from airudder_async.testing import AUTH_PATH, FakeAirudder, Fault

pytestmark = pytest.mark.anyio


def test_is_fresh_margin() -> None:
    """A token counts as fresh until the margin before its lifetime ends."""
    assert is_fresh(0.0, 100.0, lifetime=1000, margin=100)
    assert not is_fresh(0.0, 900.0, lifetime=1000, margin=100)


async def test_callers_arriving_during_a_failing_fetch_share_it() -> None:
    """Callers that arrive while a doomed auth request is in flight get its failure, not a new request."""
    async with FakeAirudder() as fake:
        client = AirudderClient(app_key=fake.app_key, app_secret="not-the-secret", base_url=fake.url)
        errors: list[BaseException] = []
        gate = fake.gate(AUTH_PATH)

        async def call() -> None:
            try:
                await client.list_workflows()
            except AuthenticationError as exc:
                errors.append(exc)

        async with client, anyio.create_task_group() as tg:
            tg.start_soon(call)
            await gate.wait_held(1)  # the first auth request is now in flight, and stays there
            for _ in range(5):
                tg.start_soon(call)
            lock = client._loop.auth._lock  # type: ignore[union-attr]  # the client is open
            with anyio.fail_after(5):
                while lock.statistics().tasks_waiting < 5:  # the late callers queue for the shared fetch
                    await anyio.lowlevel.checkpoint()
            gate.release()
    assert len(errors) == 6
    assert fake.hits("POST", AUTH_PATH) == 1
    assert len({id(e) for e in errors}) == 6  # each caller gets its own exception object


async def test_walks_sharing_an_auth_failure_keep_their_own_cursors() -> None:
    """Two walks failing on the same auth answer each carry their own cursor."""
    async with (
        FakeAirudder(workflows=10) as fake,
        fake.client(retry=RetryPolicy(attempts=1)) as client,
    ):
        fake.inject(Fault.http_status(503), path=AUTH_PATH)
        cursors = {}

        async def walk(size: int) -> None:
            try:
                async for _ in client.iter_workflows(page_size=size):
                    pass
            except ServerError as exc:
                cursors[size] = exc.cursor

        async with anyio.create_task_group() as tg:
            tg.start_soon(walk, 7)
            tg.start_soon(walk, 9)
    assert fake.hits("POST", AUTH_PATH) == 1
    assert [c.page_size if c else None for c in (cursors[7], cursors[9])] == [7, 9]


async def test_cancelled_fetch_does_not_resurrect_an_old_failure() -> None:
    """After a failed fetch and a cancelled one, the next caller asks again instead of re-raising."""
    calls = 0
    gate = anyio.Event()

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ServerError("old failure", status=503)
        if calls == 2:
            await gate.wait()  # cancelled below
        return "fresh-token-value"

    cache = TokenCache(fetch)
    with pytest.raises(ServerError):
        await cache.get()

    async def waiter(results: list[object]) -> None:
        try:
            results.append(await cache.get())
        except AirudderError as exc:
            results.append(exc)

    async def cancel_once_queued(scope: anyio.CancelScope) -> None:
        with anyio.fail_after(5):
            while cache._lock.statistics().tasks_waiting < 1:  # the waiter queues behind the fetch
                await anyio.lowlevel.checkpoint()
        scope.cancel()

    results: list[object] = []
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(waiter, results)
            tg.start_soon(cancel_once_queued, scope)
            await cache.get()  # the second fetch, cancelled while in flight
        assert scope.cancelled_caught
    assert results == ["fresh-token-value"]
    assert calls == 3
