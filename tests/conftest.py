"""
Shared fixtures: every test runs on asyncio through anyio's pytest plugin, against a real FakeAirudder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from airudder_async.testing import FakeAirudder
from tests.redis_support import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAirudder]:
    """A fake AIRUDDER server with no workflows, on a free loopback port."""
    async with FakeAirudder() as server:
        yield server


@pytest.fixture(autouse=True)
async def _no_leaked_tasks(anyio_backend: str) -> AsyncIterator[None]:
    """Fail a test that leaves a task of ours (or of its fake server) running behind it."""
    import asyncio

    def running() -> list[asyncio.Task[object]]:
        return [
            t
            for t in asyncio.all_tasks() - before
            if t is not asyncio.current_task() and not t.done() and "TestRunner" not in repr(t.get_coro())
        ]

    before = set(asyncio.all_tasks())
    yield
    # Cancelled tasks need a few loop turns to finish, not time: a task still running after 100 turns
    # waits on something (a response, a sleep) and has leaked.
    for _ in range(100):
        if not (leaked := running()):
            break
        await asyncio.sleep(0)  # one loop turn, no wall-clock time
    assert not leaked, f"tasks left running: {[t.get_name() for t in leaked]}"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, persistence off, stopped after the test."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
