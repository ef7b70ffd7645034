"""
Helpers shared by test modules (imported as `tests.support`; pytest puts the repository root on the path).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
from aiohttp import web

from airudder_async.__main__ import amain


@attrs.frozen
class Run:
    """What one command line produced."""

    code: int
    out: bytes
    err: str


async def cli(*argv: str) -> Run:
    """Run the command line *argv* in this event loop, capturing stdout and stderr."""
    out, err = io.BytesIO(), io.StringIO()
    code = await amain(list(argv), stdout=out, stderr=err)
    return Run(code, out.getvalue(), err.getvalue())


@asynccontextmanager
async def serve(app: web.Application, **runner_kwargs: Any) -> AsyncIterator[str]:
    """Run *app* on a free loopback port and yield its base URL; cleanup drains pending callbacks."""
    runner = web.AppRunner(app, **runner_kwargs)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
