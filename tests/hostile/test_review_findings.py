"""
Findings of a hostile-input review, each kept as a regression guard: a secret echoed in `count`, error
bodies wide or long, a huge envelope code, raw data nested past the interpreter's recursion limit, a
server ignoring `page`, and a deeply nested cursor file.

The servers are real: an aiohttp app on 127.0.0.1 whose instancelist (and other) answers are swapped
per test, as in test_client_hostile.py.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from aiohttp import web

from airudder_async import AirudderClient, RetryPolicy
from airudder_async._protocol import RAW_DEPTH, TEXT_LIMIT
from airudder_async.errors import AirudderError, APIError, DecodeError
from airudder_async.models import Cursor

pytestmark = pytest.mark.anyio

APP_KEY = "review-app-key"
SECRET = "review-app-secret-0123456789"
TOKEN = "tok-review-9876543210fedcba"
LIST = "/service/cloud/workflow/instancelist"
CREATE = "/service/cloud/workflow/createinstance"
NO_RETRY = RetryPolicy(attempts=1)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def envelope(data: object, *, code: int = 200, status: str = "OK") -> bytes:
    """A vendor envelope as bytes."""
    return json.dumps({"code": code, "status": status, "data": data}).encode()


def workflow(n: int) -> dict[str, object]:
    """The valid instancelist row number *n*, newest first."""
    return {
        "workflow_id": f"wf-{n}",
        "name": "n",
        "template_name": "t",
        "start_time": None,
        "end_time": None,
        "total": 1,
        "status": "finished",
        "create_time": f"2026-01-01T00:{59 - n:02d}:00Z",
    }


class ReviewServer:
    """An API look-alike whose instancelist and createinstance answers are set by the test."""

    def __init__(self) -> None:
        self.list_handler: Handler = self._empty
        self.create_handler: Handler = self._empty
        self.url = ""
        self.list_hits = 0

    async def _empty(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=envelope({"count": 0, "lists": []}), content_type="application/json")

    async def _auth(self, request: web.Request) -> web.Response:
        return web.Response(body=envelope({"token": TOKEN}), content_type="application/json")

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self.list_hits += 1
        return await self.list_handler(request)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        return await self.create_handler(request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/service/cloud/auth", self._auth)
        app.router.add_get(LIST, self._list)
        app.router.add_post(CREATE, self._create)
        return app


@pytest.fixture
async def server() -> AsyncIterator[ReviewServer]:
    """A hostile API server on a free loopback port."""
    srv = ReviewServer()
    runner = web.AppRunner(srv.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield srv
    finally:
        await runner.cleanup()


@asynccontextmanager
async def client_for(url: str, **kwargs: object) -> AsyncIterator[AirudderClient]:
    """A client of *url* with the test credentials and no retries unless given."""
    options: dict[str, object] = {"retry": NO_RETRY, **kwargs}
    async with AirudderClient(app_key=APP_KEY, app_secret=SECRET, base_url=url, **options) as client:  # type: ignore[arg-type]  # test helper
        yield client


def assert_clean(error: BaseException) -> None:
    """The error and everything chained to it hold no secret and no third-party exception."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        assert isinstance(current, AirudderError), f"a {type(current).__name__} is chained to the error"
        current = current.__cause__ or current.__context__
    for exc in seen:
        for text in (str(exc), repr(exc), repr(exc.__dict__), pickle.dumps(exc).decode("latin-1")):
            assert SECRET not in text
            assert TOKEN not in text


async def list_error(url: str, **kwargs: object) -> AirudderError:
    """Call list_workflows once and return the AirudderError it raised (anything else fails the test)."""
    async with client_for(url, **kwargs) as client:
        with pytest.raises(AirudderError) as info:
            await client.list_workflows()
    return info.value


# -- (d) secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("echoed", ["token", "secret"])
async def test_count_echoing_a_secret_is_scrubbed(server: ReviewServer, echoed: str) -> None:
    """A 200 OK envelope whose `data.count` is the token (or the APPSecret) leaks neither into the error."""

    async def handler(request: web.Request) -> web.StreamResponse:
        token = request.headers["Authorization"].removeprefix("Token ")
        value = token if echoed == "token" else SECRET
        return web.Response(body=envelope({"count": value, "lists": []}), content_type="application/json")

    server.list_handler = handler
    error = await list_error(server.url)
    assert isinstance(error, DecodeError)
    assert error.field_path == "data.count"
    assert_clean(error)


# -- (b) bounds on what an error keeps ------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["wide", "long"])
async def test_error_body_is_bounded_in_size(server: ReviewServer, shape: str) -> None:
    """A 500 whose 3 MB body is a million empty objects (or one 3 MB string) leaves a small error behind."""
    wide, long = b"[" + b"{}," * 999_999 + b"{}]", b'"' + b"x" * 3_000_000 + b'"'
    data = wide if shape == "wide" else long
    body = b'{"code": 500, "status": "ERROR", "message": "boom", "data": ' + data + b"}"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=500, content_type="application/json")

    server.list_handler = handler
    started = time.perf_counter()
    error = await list_error(server.url)
    elapsed = time.perf_counter() - started
    assert isinstance(error, APIError)
    kept = len(pickle.dumps(error))
    assert kept < 256_000, f"the error pickles to {kept:,} bytes ({elapsed:.2f} s for the call)"


async def test_huge_envelope_code_is_described_boundedly(server: ReviewServer) -> None:
    """A refusal whose `code` is a 4,300-digit integer gives an error whose text stays short."""
    body = b'{"code": ' + b"9" * 4300 + b', "status": "ERROR", "message": "no", "data": null}'

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    server.list_handler = handler
    error = await list_error(server.url)
    assert isinstance(error, APIError)
    assert len(str(error)) < 4 * TEXT_LIMIT, f"str(error) has {len(str(error)):,} characters"


# -- (c) data within the documented depth that breaks Python's own tools --------------------------------


@pytest.mark.parametrize("depth", [RAW_DEPTH - 1, RAW_DEPTH + 1, 1_000])
async def test_raw_data_is_refused_past_raw_depth_and_usable_below(server: ReviewServer, depth: int) -> None:
    """Data handed back as plain JSON nests at most RAW_DEPTH levels, so repr() and pickle work on it."""
    body = b'{"code": 200, "status": "OK", "data": ' + b"[" * depth + b"]" * depth + b"}"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    server.create_handler = handler
    async with client_for(server.url) as client:
        create = client.create_workflow(
            workflow_template_id=1, name="n", end_time=datetime(2026, 2, 1, tzinfo=UTC)
        )
        if depth + 1 > RAW_DEPTH:  # the envelope adds one level
            with pytest.raises(DecodeError, match="nests deeper"):
                await create
            return
        created = await create
    assert pickle.loads(pickle.dumps(created)) == created
    assert repr(created)


# -- (e) data silently dropped --------------------------------------------------------------------------


async def test_walk_against_a_server_ignoring_page_reports_the_shortfall(
    server: ReviewServer, caplog: pytest.LogCaptureFixture
) -> None:
    """count=60 but every page is page 1: the walk yields 20 and must report the 40 it never got."""
    rows = [workflow(n) for n in range(20)]

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=envelope({"count": 60, "lists": rows}), content_type="application/json")

    server.list_handler = handler
    caplog.set_level(logging.WARNING, logger="airudder_async")
    async with client_for(server.url) as client:
        walk = client.iter_workflows(page_size=20, prefetch=1)
        ids = [w.workflow_id async for w in walk]
    assert ids == [f"wf-{n}" for n in range(20)]
    assert walk.count == 60
    assert walk.shortfall == 40, f"shortfall {walk.shortfall}, duplicates_skipped {walk.duplicates_skipped}"
    assert caplog.records, "no warning either"


# -- (c) hostile files ----------------------------------------------------------------------------------


def test_deeply_nested_cursor_file_is_a_value_error() -> None:
    """A checkpoint/cursor text nested 100,000 deep is a ValueError, as Cursor.from_json documents."""
    with pytest.raises(ValueError, match="cursor"):
        Cursor.from_json("[" * 100_000 + "]" * 100_000)
