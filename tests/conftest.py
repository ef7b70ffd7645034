"""
Shared fixtures: every test runs on asyncio through anyio's pytest plugin, against a real FakeAirudder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from airudder_async.testing import FakeAirudder


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAirudder]:
    """A fake AIRUDDER server with no workflows, on a free loopback port."""
    async with FakeAirudder() as server:
        yield server
