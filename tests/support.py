"""
Helpers shared by test modules (imported as `tests.support`; pytest puts the repository root on the path).
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import attrs
from aiohttp import web

from airudder_async.__main__ import amain
from airudder_async.errors import SyncError
from airudder_async.sync import PageCounts, PageWrite, Sink


def run_fresh(code: str) -> str:
    """
    Run *code* in a fresh interpreter (nothing imported yet, so import-time behaviour shows); fail the
    test with its stderr unless it exits 0, and return its stdout.
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


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


class Grouping:
    """A sink that records how many pages each write_pages() got; *hold* makes the first call wait until
    the walk has filled the stream, and *fail_at* makes that call (0-based) fail before writing."""

    def __init__(self, sink: Sink, *, hold: bool = True, fail_at: int | None = None) -> None:
        self.sink, self.hold, self.fail_at = sink, hold, fail_at
        self.name = sink.name
        self.load_state, self.begin_run = sink.load_state, sink.begin_run
        self.finish_run = sink.finish_run
        self.sizes: list[int] = []

    async def write_pages(
        self, pages: Sequence[PageWrite], *, observed_at: datetime, dry_run: bool
    ) -> PageCounts:
        if self.hold and not self.sizes:
            await anyio.wait_all_tasks_blocked()  # the walk has filled the stream and waits on it
        if len(self.sizes) == self.fail_at:
            raise SyncError("the disk is full")
        self.sizes.append(len(pages))
        return await self.sink.write_pages(pages, observed_at=observed_at, dry_run=dry_run)
