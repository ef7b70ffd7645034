"""
The client against a hostile or broken API server: every answer ends in data or a typed error, in bounded
time and memory, with no secret in the error, its text, its repr, its pickle or its chained exceptions.
The last sections keep the findings of a hostile-input review as regression guards.

The server here is written for the occasion (not FakeAirudder): an aiohttp app on 127.0.0.1 whose
instancelist handler is swapped per test, plus a raw socket server for answers aiohttp would not send.
"""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airudder_async import AirudderClient, Limits, RetryPolicy, Timeouts
from airudder_async._protocol import RAW_DEPTH, TEXT_LIMIT, interpret
from airudder_async.errors import (
    AirudderError,
    APIError,
    DecodeError,
    RateLimitedError,
    RequestTimeoutError,
    ResponseTooLargeError,
    TransportError,
)
from airudder_async.models import Cursor

pytestmark = pytest.mark.anyio

APP_KEY = "hostile-app-key"
SECRET = "hostile-app-secret-0123456789"
TOKEN = "tok-hostile-9876543210fedcba"
LIST = "/service/cloud/workflow/instancelist"
NO_RETRY = RetryPolicy(attempts=1)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def envelope(data: object, *, code: int = 200, status: str = "OK") -> bytes:
    """A vendor envelope as bytes."""
    return json.dumps({"code": code, "status": status, "data": data}).encode()


def workflow(**change: object) -> dict[str, object]:
    """One valid instancelist row, with *change* applied."""
    row: dict[str, object] = {
        "workflow_id": "wf-1",
        "name": "n",
        "template_name": "t",
        "start_time": None,
        "end_time": None,
        "total": 1,
        "status": "finished",
        "create_time": "2026-01-01T00:00:00Z",
    }
    row.update(change)
    return row


class HostileServer:
    """An API look-alike whose instancelist answer is whatever the test sets in *handler*."""

    def __init__(self) -> None:
        self.handler: Handler = self._ok
        self.create_handler: Handler = self._ok
        self.url = ""

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=envelope({"count": 1, "lists": [workflow()]}), content_type="application/json"
        )

    async def _auth(self, request: web.Request) -> web.Response:
        return web.Response(body=envelope({"token": TOKEN}), content_type="application/json")

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return await self.handler(request)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        return await self.create_handler(request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/service/cloud/auth", self._auth)
        app.router.add_get(LIST, self._list)
        app.router.add_post("/service/cloud/workflow/createinstance", self._create)
        return app


@pytest.fixture
async def hostile() -> AsyncIterator[HostileServer]:
    """A hostile API server on a free loopback port."""
    server = HostileServer()
    runner = web.AppRunner(server.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
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
        texts = [str(exc), repr(exc), repr(exc.__dict__), pickle.dumps(exc).decode("latin-1")]
        for text in texts:
            assert SECRET not in text
            assert TOKEN not in text
        assert len(str(exc)) < 4 * TEXT_LIMIT


async def list_error(url: str, **kwargs: object) -> AirudderError:
    """Call list_workflows once and return the AirudderError it raised (anything else fails the test)."""
    async with client_for(url, **kwargs) as client:
        with pytest.raises(AirudderError) as info:
            await client.list_workflows()
    assert_clean(info.value)
    return info.value


# -- size, time and shape bounds --------------------------------------------------------------------------


async def test_gzip_bomb_stops_at_the_size_cap_in_bounded_memory(hostile: HostileServer) -> None:
    """A 1.5 MB gzip body that inflates to 1.5 GB raises ResponseTooLargeError after about the cap."""
    member = gzip.compress(b" " * 10_000_000, compresslevel=9)  # about 10 KB
    bomb = member * 150  # gzip allows concatenated members: 1.5 MB that inflates to 1.5 GB

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    hostile.handler = handler
    tracemalloc.start()
    try:
        error = await list_error(hostile.url, limits=Limits(max_response_size=1_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, ResponseTooLargeError)
    assert error.limit == 1_000_000
    assert (error.method, error.path) == ("GET", LIST)
    assert peak < 40_000_000, f"peak {peak:,} bytes for a 1 MB cap"


async def test_endless_chunked_body_stops_at_the_size_cap(hostile: HostileServer) -> None:
    """A chunked answer that never ends raises ResponseTooLargeError instead of growing to MemoryError."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * 65536
        try:
            while True:
                await response.write(chunk)
        except (ConnectionError, RuntimeError):  # the client hung up
            pass
        return response

    hostile.handler = handler
    error = await list_error(hostile.url, limits=Limits(max_response_size=2_000_000))
    assert isinstance(error, ResponseTooLargeError)


async def test_trickled_body_times_out(hostile: HostileServer) -> None:
    """An answer that stops mid-body ends with RequestTimeoutError after the read timeout."""
    release = anyio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"code": 200, ')
        await release.wait()  # never set while the client waits: the body just stops
        return response

    hostile.handler = handler
    try:
        error = await list_error(hostile.url, timeouts=Timeouts(read=0.2))
    finally:
        release.set()
    assert isinstance(error, RequestTimeoutError)


@pytest.mark.parametrize("depth", [2_000, 200_000])
async def test_deep_nesting_is_a_decode_error(hostile: HostileServer, depth: int) -> None:
    """Data nested past the JSON depth limit is a DecodeError, never a RecursionError."""
    body = b'{"code": 200, "status": "OK", "data": ' + b"[" * depth + b"]" * depth + b"}"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    hostile.handler = handler
    error = await list_error(hostile.url)
    assert isinstance(error, DecodeError)
    assert "deeper" in str(error) or "depth" in str(error)


async def test_deep_error_body_is_bounded(hostile: HostileServer) -> None:
    """A refusal whose body nests 1,000 levels deep keeps a bounded, redacted body and text."""
    head = json.dumps({"code": 500, "status": "ERROR", "message": TOKEN * 1000}).encode()[:-1]
    leaf = json.dumps({"token": TOKEN}).encode()
    body = head + b', "data": ' + b"[" * 1000 + leaf + b"]" * 1000 + b"}"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=500, content_type="application/json")

    hostile.handler = handler
    error = await list_error(hostile.url)
    assert isinstance(error, APIError)
    assert len(error.message) < 2 * TEXT_LIMIT
    assert len(repr(error.body)) < 10_000


async def test_huge_retry_after_date_is_ignored(hostile: HostileServer) -> None:
    """A Retry-After date past datetime's range is no usable header: RateLimitedError, no OverflowError."""

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"}
        return web.Response(status=429, headers=headers, body=b"slow down")

    hostile.handler = handler
    error = await list_error(hostile.url)
    assert isinstance(error, RateLimitedError)
    assert error.retry_after is None


async def test_garbage_deflate_body_chains_no_aiohttp_exception(hostile: HostileServer) -> None:
    """A 200 with Content-Encoding: deflate and garbage is a TransportError with no aiohttp cause."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\x00garbage" * 100, headers={"Content-Encoding": "deflate"})

    hostile.handler = handler
    error = await list_error(hostile.url)
    assert isinstance(error, TransportError)
    assert error.__cause__ is None
    assert error.__context__ is None


async def test_server_echoing_the_token_everywhere_is_scrubbed(hostile: HostileServer) -> None:
    """A server that echoes the Authorization header into status, message, keys and count leaks nothing."""

    async def handler(request: web.Request) -> web.StreamResponse:
        token = request.headers["Authorization"].removeprefix("Token ")
        body = {
            "code": 400,
            "status": f"ERROR {token}",
            "message": f"bad token {token} " + "x" * 5000,
            "data": {token: [token], "count": token * 50, "nested": {"deep": {token: token}}},
        }
        return web.Response(body=json.dumps(body).encode(), status=400, content_type="application/json")

    hostile.handler = handler
    error = await list_error(hostile.url)
    assert isinstance(error, APIError)
    assert error.envelope_status is not None
    assert "***" in error.envelope_status
    assert len(error.message) < 2 * TEXT_LIMIT


async def test_count_of_the_wrong_type_is_described_boundedly(hostile: HostileServer) -> None:
    """A `count` that is a 1 MB string or a deep list is a DecodeError whose text stays short."""
    for count in ("9" * 1_000_000, [[[[]]]], 10**400):

        async def handler(request: web.Request, count: object = count) -> web.StreamResponse:
            data = json.dumps({"code": 200, "status": "OK", "data": {"count": count, "lists": []}})
            return web.Response(body=data.encode(), content_type="application/json")

        hostile.handler = handler
        error = await list_error(hostile.url)
        assert isinstance(error, DecodeError)
        assert error.field_path == "data.count"
        assert len(str(error)) < 300


async def test_lone_surrogate_in_a_name_decodes(hostile: HostileServer) -> None:
    """A lone surrogate escape in a field is decoded as the stdlib does, on the orjson path too."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = envelope({"count": 1, "lists": [workflow(name="\ud800")]})
        return web.Response(body=body, content_type="application/json")

    hostile.handler = handler
    async with client_for(hostile.url) as client:
        page = await client.list_workflows()
    assert page.items[0].name == "\ud800"


async def test_huge_field_value_error_is_bounded(hostile: HostileServer) -> None:
    """A 1 MB create_time that is not a time gives a DecodeError with a bounded message and path."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = envelope({"count": 1, "lists": [workflow(create_time="x" * 1_000_000)]})
        return web.Response(body=body, content_type="application/json")

    hostile.handler = handler
    error = await list_error(hostile.url)
    assert isinstance(error, DecodeError)
    assert error.field_path is not None
    assert error.field_path.startswith("data.lists[0]")


# -- raw socket answers aiohttp's server would not produce ------------------------------------------------


@asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[str]:
    """A TCP server that answers every request with the raw bytes *answer*, then closes."""

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                await stream.receive(65536)
                await stream.send(answer)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{",  # cut short
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n",  # header line too long
        b"HTTP/1.1 999999999999 What\r\nContent-Length: 0\r\n\r\n",  # absurd status
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"",
    ],
    ids=["short", "long-header", "absurd-status", "garbage", "bad-chunk", "negative-length", "empty"],
)
async def test_malformed_http_is_a_transport_error(answer: bytes) -> None:
    """Malformed HTTP from the server is a TransportError with nothing chained, never aiohttp's exception."""
    async with raw_server(answer) as url, client_for(url) as client:
        with pytest.raises(AirudderError) as info:
            await client.request("POST", "/service/cloud/auth")
    assert isinstance(info.value, TransportError | DecodeError | APIError)
    assert_clean(info.value)


# -- fuzzing the answer interpreter -----------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([TOKEN, SECRET, f"x{TOKEN}y"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=10) | st.sampled_from([TOKEN, "token", "status", "code"]), children, max_size=4
        )
    ),
    max_leaves=30,
)
ENVELOPE = st.fixed_dictionaries(
    {},
    optional={
        "code": st.integers(min_value=-1, max_value=700) | JSON,
        "status": st.sampled_from(["OK", "ERROR", TOKEN]) | JSON,
        "message": st.text(max_size=50) | st.just(TOKEN),
        "data": JSON,
    },
)


def check_interpret(status: int, headers: dict[str, str], body: bytes) -> None:
    """interpret() returns an envelope dict or raises a clean AirudderError."""
    try:
        result = interpret(status, headers, body, secrets=[SECRET, TOKEN])
    except AirudderError as exc:
        assert_clean(exc)
    else:
        assert isinstance(result, dict)
        assert 200 <= status < 300
        assert "data" in result


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    st.integers(min_value=100, max_value=599),
    st.dictionaries(st.sampled_from(["Retry-After", "X"]), st.text(max_size=60), max_size=2),
    st.binary(max_size=300),
)
def test_fuzz_interpret_arbitrary_bytes(status: int, headers: dict[str, str], body: bytes) -> None:
    """Arbitrary status, headers and bytes give an envelope or a clean, typed error."""
    check_interpret(status, headers, body)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.integers(min_value=100, max_value=599), ENVELOPE | JSON, st.integers(min_value=0, max_value=3000))
def test_fuzz_interpret_arbitrary_json(status: int, value: object, nest: int) -> None:
    """Arbitrary JSON (secrets planted, optionally nested very deep) gives an envelope or a clean error."""
    body = json.dumps(value).encode()
    if nest:
        body = b"[" * nest + body + b"]" * nest
    check_interpret(status, {}, body)


# -- arguments that would misdirect a request -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com?",
        "https://api.example.com/#",
        "https://api.example.com/v1/../auth",
        "https://api.example.com/./x",
        "https://api.example.com/a b",
        "https://api.example.com/\x00",
        "https://user@api.example.com",
        "https://api.example.com/a%2F..",
    ],
)
def test_base_url_that_could_misdirect_the_secret_is_refused(url: str) -> None:
    """A base URL with a bare `?`/`#`, dot segments, spaces, controls or user info is a ValueError."""
    with pytest.raises(ValueError, match="base_url"):
        AirudderClient(app_key=APP_KEY, app_secret=SECRET, base_url=url)


def test_base_url_must_be_a_string() -> None:
    """A base URL of another type (bytes, a yarl URL) is a TypeError before anything else."""
    with pytest.raises(TypeError, match="base_url must be a str"):
        AirudderClient(app_key=APP_KEY, app_secret=SECRET, base_url=b"https://x")  # type: ignore[arg-type]  # the wrong type is the test


@pytest.mark.parametrize(
    "path",
    ["/service/../auth", "/service/./x", "/a?b=1", "/a#b", "/a/%2e%2e/b", "/a//b", "relative", "/a/", "/a b"],
)
async def test_request_paths_cannot_escape_the_prefix(hostile: HostileServer, path: str) -> None:
    """`request()` refuses paths with dot segments, queries, fragments or escapes before sending."""
    async with client_for(hostile.url + "/prefix") as client:
        with pytest.raises(ValueError, match="path"):
            await client.request("GET", path)
        assert client.stats.requests == 0


async def test_offset_with_seconds_is_sent_as_utc(hostile: HostileServer) -> None:
    """A window bound whose offset has seconds goes out in the documented +HH:MM form, as UTC."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.query["start_time"])
        return web.Response(body=envelope({"count": 0, "lists": []}), content_type="application/json")

    hostile.handler = handler
    odd = timezone(timedelta(hours=5, seconds=30))
    async with client_for(hostile.url) as client:
        await client.list_workflows(start_time=datetime(2026, 1, 1, 12, tzinfo=odd))
    assert seen == ["2026-01-01 06:59:30+00:00"]


async def test_window_outside_utc_range_is_refused_before_sending(hostile: HostileServer) -> None:
    """A bound with no UTC equivalent is a ValueError before any request."""
    async with client_for(hostile.url) as client:
        with pytest.raises(ValueError, match="outside the range"):
            await client.list_workflows(start_time=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
        assert client.stats.requests == 0


def test_client_configuration_is_read_only() -> None:
    """Assigning a client's retry, limits, timeouts, base_url or user_agent fails instead of being ignored."""
    client = AirudderClient(app_key=APP_KEY, app_secret=SECRET)
    for name, value in [
        ("retry", NO_RETRY),
        ("limits", Limits()),
        ("timeouts", Timeouts()),
        ("base_url", "https://x"),
        ("user_agent", "x"),
    ]:
        with pytest.raises(AttributeError):
            setattr(client, name, value)
    assert client.retry.attempts == 6
    assert client.base_url == "https://api.airudder.com"
    assert client.user_agent.startswith("airudder-async/")
    assert client.timeouts == Timeouts()
    assert client.limits.max_response_size == 16 * 1024 * 1024


async def test_unknown_request_option_is_a_type_error(hostile: HostileServer) -> None:
    """A misspelt keyword of request() is a TypeError before sending, as with an explicit signature."""
    async with client_for(hostile.url) as client:
        with pytest.raises(TypeError, match="unexpected keyword"):
            await client.request("GET", LIST, parmas={"page": 1})  # type: ignore[call-arg]  # the misspelling is the test
        assert client.stats.requests == 0


# -- found by a hostile-input review: secrets -------------------------------------------------------------


@pytest.mark.parametrize("echoed", ["token", "secret"])
async def test_count_echoing_a_secret_is_scrubbed(hostile: HostileServer, echoed: str) -> None:
    """A 200 OK envelope whose `data.count` is the token (or the APPSecret) leaks neither into the error."""

    async def handler(request: web.Request) -> web.StreamResponse:
        token = request.headers["Authorization"].removeprefix("Token ")
        value = token if echoed == "token" else SECRET
        return web.Response(body=envelope({"count": value, "lists": []}), content_type="application/json")

    hostile.handler = handler
    error = await list_error(hostile.url)
    assert isinstance(error, DecodeError)
    assert error.field_path == "data.count"
    assert_clean(error)


# -- bounds on what an error keeps ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["wide", "long"])
async def test_error_body_is_bounded_in_size(hostile: HostileServer, shape: str) -> None:
    """A 500 whose 3 MB body is a million empty objects (or one 3 MB string) leaves a small error behind."""
    wide, long = b"[" + b"{}," * 999_999 + b"{}]", b'"' + b"x" * 3_000_000 + b'"'
    data = wide if shape == "wide" else long
    body = b'{"code": 500, "status": "ERROR", "message": "boom", "data": ' + data + b"}"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=500, content_type="application/json")

    hostile.handler = handler
    started = time.perf_counter()
    error = await list_error(hostile.url)
    elapsed = time.perf_counter() - started
    assert isinstance(error, APIError)
    kept = len(pickle.dumps(error))
    assert kept < 256_000, f"the error pickles to {kept:,} bytes ({elapsed:.2f} s for the call)"


async def test_huge_envelope_code_is_described_boundedly(hostile: HostileServer) -> None:
    """A refusal whose `code` is a 4,300-digit integer gives an error whose text stays short."""
    body = b'{"code": ' + b"9" * 4300 + b', "status": "ERROR", "message": "no", "data": null}'

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    hostile.handler = handler
    error = await list_error(hostile.url)
    assert isinstance(error, APIError)
    assert len(str(error)) < 4 * TEXT_LIMIT, f"str(error) has {len(str(error)):,} characters"


# -- data handed back as plain JSON -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [RAW_DEPTH - 1, RAW_DEPTH + 1, 1_000])
async def test_raw_data_is_refused_past_raw_depth_and_usable_below(
    hostile: HostileServer, depth: int
) -> None:
    """Data handed back as plain JSON nests at most RAW_DEPTH levels, so repr() and pickle work on it."""
    body = b'{"code": 200, "status": "OK", "data": ' + b"[" * depth + b"]" * depth + b"}"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    hostile.create_handler = handler
    async with client_for(hostile.url) as client:
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


# -- data silently dropped --------------------------------------------------------------------------------


async def test_walk_against_a_server_ignoring_page_reports_the_shortfall(
    hostile: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    """count=60 but every page is page 1: the walk yields 20 and must report the 40 it never got."""
    rows = [workflow(workflow_id=f"wf-{n}", create_time=f"2026-01-01T00:{59 - n:02d}:00Z") for n in range(20)]

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=envelope({"count": 60, "lists": rows}), content_type="application/json")

    hostile.handler = handler
    caplog.set_level(logging.WARNING, logger="airudder_async")
    async with client_for(hostile.url) as client:
        walk = client.iter_workflows(page_size=20, prefetch=1)
        ids = [w.workflow_id async for w in walk]
    assert ids == [f"wf-{n}" for n in range(20)]
    assert walk.count == 60
    assert walk.shortfall == 40, f"shortfall {walk.shortfall}, duplicates_skipped {walk.duplicates_skipped}"
    assert caplog.records, "no warning either"


# -- hostile files ----------------------------------------------------------------------------------------


def test_deeply_nested_cursor_file_is_a_value_error() -> None:
    """A checkpoint/cursor text nested 100,000 deep is a ValueError, as Cursor.from_json documents."""
    with pytest.raises(ValueError, match="cursor"):
        Cursor.from_json("[" * 100_000 + "]" * 100_000)
