"""
Hostile webhook senders over real loopback HTTP, and fuzzing of the parser and the receiver (issue #8).

Each sender attacks one bound of `WebhookLimits`: a body that decodes into a million values, deep
nesting, a flood of callbacks or of large bodies, a callback that raises CancelledError, a body or
headers trickled in. The invariants: `parse_webhook()` returns an event or raises `DecodeError`; the
receiver answers 2xx, 4xx or 5xx and keeps serving; no error text is longer than 1 KiB.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import string
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from anyio.abc import SocketStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airudder_async._webhook_models import _check_shape, dedupe_key
from airudder_async.errors import DecodeError
from airudder_async.webhooks import (
    DEFAULT_WEBHOOK_LIMITS,
    GenericEvent,
    ListCompletionEvent,
    StatusChangeEvent,
    WebhookEvent,
    WebhookKind,
    WebhookLimits,
    parse_webhook,
    webhook_app,
)
from tests.support import serve as support_serve

pytestmark = pytest.mark.anyio

LOGGER = "airudder_async.webhooks"
PATH = "/airudder/webhook"
KIB = 1024
# The reproduction: 1 MiB that json.loads turns into 340,000 dicts (about 25 MB).
ROW_BOMB = b'{"rows":[' + b",".join([b"{}"] * 340_000) + b"]}"
LIST_HEAD = {"workflow_id": "w-1", "workflow_name": "n", "case_id": "c-1", "callee_number": "+1"}
ROW = {"nodetask_id": "nt-1", "nodetask_name": "call", "node_type": "robot"}


def status_body(n: int) -> dict[str, Any]:
    """Return a valid Workflow Status Change body, distinct for each *n*."""
    return {"workflow_id": f"w-{n}", "workflow_name": "n", "status": "finished", "actions": [ROW]}


class Inbox:
    """A callback that records events and wakes a waiter once *expected* of them arrived."""

    def __init__(self, expected: int = 1) -> None:
        self.events: list[WebhookEvent] = []
        self.expected = expected
        self.arrived = anyio.Event()

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)
        if len(self.events) >= self.expected:
            self.arrived.set()


class Gate:
    """A callback that waits until `open` is set, counting the callbacks that entered and left."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.entered = 0
        self.events: list[WebhookEvent] = []

    async def __call__(self, event: WebhookEvent) -> None:
        self.entered += 1
        await self.open.wait()
        self.events.append(event)


def serve(app: web.Application, **runner_kwargs: Any) -> AbstractAsyncContextManager[str]:
    """`tests.support.serve`, with lingering_time=0: a refused body's unread rest is not drained by a
    task that outlives the test."""
    return support_serve(app, **{"lingering_time": 0, **runner_kwargs})


async def post(session: aiohttp.ClientSession, url: str, body: object) -> tuple[int, dict[str, Any]]:
    """POST *body* (JSON-encoded unless it is bytes) and return the status and the decoded answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=data, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def connect(base: str) -> SocketStream:
    """Open a raw TCP connection to the server at *base*, for senders aiohttp's client cannot play."""
    host, port = base.removeprefix("http://").split(":")
    return await anyio.connect_tcp(host, int(port))


def head(length: int | None, path: str = PATH) -> bytes:
    """Return the request line and headers of a JSON POST declaring *length* (None: chunked)."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()


async def read_answer(stream: SocketStream) -> bytes:
    """Read everything the server sends until it closes the connection."""
    answer = b""
    try:
        while True:
            answer += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return answer


def logged(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    """Return the receiver's log messages at *level* or above."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def assert_bounded_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Check that no log line of the receiver carries more than 1 KiB of text beyond its prefix."""
    for record in caplog.records:
        if record.name == LOGGER:
            assert len(record.getMessage().encode()) <= KIB + 200, record.getMessage()[:200]


# ---------------------------------------------------------------- 1. work per body


async def test_row_bomb_is_refused_at_once_and_a_valid_event_is_not_delayed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's 1 MiB body of 340,000 empty rows gets a bounded 400; a valid event sent with it arrives."""
    inbox = Inbox()
    async with serve(webhook_app(inbox)) as base, aiohttp.ClientSession() as session:
        results: dict[str, tuple[int, dict[str, Any]]] = {}

        async def send(name: str, body: object) -> None:
            results[name] = await post(session, base + PATH, body)

        with anyio.fail_after(5):  # was about 31 s of blocked event loop
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, "bomb", ROW_BOMB)
                tg.start_soon(send, "valid", status_body(1))
            await inbox.arrived.wait()
    assert results["valid"][0] == 200
    status, answer = results["bomb"]
    assert status == 400
    assert "max_items=10000" in answer["message"]
    assert len(answer["message"].encode()) <= KIB
    assert [type(e) for e in inbox.events] == [StatusChangeEvent]
    assert_bounded_logs(caplog)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5_000 + b"]" * 5_000,
        b'{"a":' * 65 + b"1" + b"}" * 65,
        b'{"a":' + b"[" * 64 + b"]" * 64 + b"}",
        b'{"rows": [' + b'{"r": ' * 70 + b"{}" + b"}" * 70 + b"]}",
    ],
    ids=["arrays-5000", "objects-65", "arrays-65", "inside-rows-71"],
)
def test_nesting_deeper_than_max_depth_is_a_decode_error(body: bytes) -> None:
    """A body nested deeper than max_depth (64) raises DecodeError, the same on every interpreter."""
    with pytest.raises(DecodeError, match="max_depth=64") as info:
        parse_webhook(body)
    assert info.value.field_path == "body"


def test_nesting_at_max_depth_is_accepted() -> None:
    """A body nested exactly max_depth deep parses; a lower max_depth refuses it."""
    body = b'{"a":' + b"[" * 63 + b"]" * 63 + b"}"
    event = parse_webhook(body)
    assert isinstance(event, GenericEvent)
    with pytest.raises(DecodeError, match="max_depth=10"):
        parse_webhook(body, limits=WebhookLimits(max_depth=10))


def test_brackets_inside_strings_do_not_count() -> None:
    """Brackets, commas and escaped quotes inside strings count neither as depth nor as values."""
    text = "[" * 100 + "," * 20_000 + '\\"]]' + "\\\\"
    body = json.dumps({"note": text, "rows": "x"}).encode()
    assert json.loads(body)["note"] == text
    event = parse_webhook(body, kind=WebhookKind.GENERIC)
    assert event.raw["note"] == text


def test_closing_brackets_in_a_string_do_not_hide_depth() -> None:
    """A string full of closing brackets cannot offset real nesting that follows it."""
    body = b'{"a": "' + b"]" * 1000 + b'", "b": ' + b"[" * 100 + b"]" * 100 + b"}"
    with pytest.raises(DecodeError, match="max_depth"):
        parse_webhook(body)


@pytest.mark.parametrize(
    "body",
    [
        ROW_BOMB,
        b'{"a": [' + b'"",' * 30_000 + b'""]}',
        b'{"a": [' + b"0," * 10_000 + b"0]}",
    ],
    ids=["row-bomb", "many-strings", "many-numbers"],
)
def test_more_than_max_items_values_is_a_decode_error(body: bytes) -> None:
    """A body holding more than max_items (10,000) JSON values raises DecodeError before it is decoded."""
    with pytest.raises(DecodeError, match="max_items=10000") as info:
        parse_webhook(body)
    assert info.value.field_path == "body"


def test_long_integers_are_refused() -> None:
    """An integer of more than 100 digits is a DecodeError (its conversion time grows with its square)."""
    assert parse_webhook(b'{"n": ' + b"9" * 100 + b"}").raw["n"] == int("9" * 100)
    with pytest.raises(DecodeError, match="longer than 100 digits"):
        parse_webhook(b'{"n": [' + b",".join([b"9" * 4300] * 200) + b"]}")
    with pytest.raises(DecodeError, match="longer than 100 digits"):
        parse_webhook(b'{"n": -' + b"9" * 101 + b"}")


def test_invalid_rows_stop_at_the_first_error() -> None:
    """100,000 bad rows cost one error: the message names the first and stays under 1 KiB."""
    body = json.dumps({**LIST_HEAD, "rows": [{}] * 100_000}).encode()
    roomy = WebhookLimits(max_items=1_000_000, max_list_length=1_000_000)
    with pytest.raises(DecodeError) as info:  # was 30 s and 57 MB of text
        parse_webhook(body, limits=roomy)
    assert info.value.field_path == "body.rows[0].nodetask_id"
    assert len(str(info.value).encode()) <= KIB


def test_lists_longer_than_max_list_length_do_not_fit() -> None:
    """A rows or actions list longer than max_list_length raises DecodeError naming the list."""
    body = {**LIST_HEAD, "rows": [ROW] * 1_001}
    with pytest.raises(DecodeError, match="1001 entries, more than max_list_length=1000") as info:
        parse_webhook(body)
    assert info.value.field_path == "body.rows"
    event = parse_webhook({**LIST_HEAD, "rows": [ROW] * 1_000})
    assert isinstance(event, ListCompletionEvent)
    assert len(event.rows) == 1_000
    with pytest.raises(DecodeError, match="max_list_length=0"):
        parse_webhook(status_body(1), limits=WebhookLimits(max_list_length=0))


async def test_decode_error_of_a_delivered_event_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """A body with 900 bad rows is delivered as a GenericEvent whose decode_error is at most 1 KiB."""
    inbox = Inbox()
    body = {**LIST_HEAD, "rows": [{"nodetask_id": [1]}] * 900}
    async with serve(webhook_app(inbox)) as base, aiohttp.ClientSession() as session:
        assert (await post(session, base + PATH, body))[0] == 200
    [event] = inbox.events
    assert isinstance(event, GenericEvent)
    assert event.decode_error is not None
    assert "body.rows[0].nodetask_id" in event.decode_error
    assert len(event.decode_error.encode()) <= KIB
    assert_bounded_logs(caplog)


async def test_deep_body_over_http_gets_400() -> None:
    """A body nested 100,000 deep is answered 400 and serving goes on."""
    inbox = Inbox()
    async with serve(webhook_app(inbox)) as base, aiohttp.ClientSession() as session:
        status, answer = await post(session, base + PATH, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        assert (status, answer["code"]) == (400, 400)
        assert (await post(session, base + PATH, status_body(1)))[0] == 200
    assert len(inbox.events) == 1


def test_dedupe_key_never_recurses_without_bound() -> None:
    """Data nested deeper than the interpreter can encode is digested from the raw body instead."""
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    key = dedupe_key("generic", {"a": deep}, b"raw")
    assert key == dedupe_key("generic", {"b": deep}, b"raw") != dedupe_key("generic", {"a": deep}, b"raw2")
    assert len(key) == 16


async def test_error_text_from_headers_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """An 8 KB content type is cut to 1 KiB in the 415 answer and in the log line."""
    async with serve(webhook_app(Inbox())) as base, aiohttp.ClientSession() as session:
        headers = {"Content-Type": "text/" + "x" * 8000}
        async with session.post(base + PATH, data=b"{}", headers=headers) as response:
            assert response.status == 415
            message = (await response.json())["message"]
    assert len(message.encode()) <= KIB
    assert message.endswith("bytes, cut)")
    assert_bounded_logs(caplog)


# ---------------------------------------------------------------- 2. floods: pending callbacks, large bodies


async def test_pending_callbacks_are_capped_with_503(caplog: pytest.LogCaptureFixture) -> None:
    """Beyond max_pending callbacks an event gets 503 (logged) before its body is read; retries work later."""
    gate = Gate()
    app = webhook_app(gate, limits=WebhookLimits(max_pending=3))
    async with serve(app) as base, aiohttp.ClientSession() as session:
        statuses = [(await post(session, base + PATH, status_body(n)))[0] for n in range(5)]
        assert statuses == [200, 200, 200, 503, 503]
        gate.open.set()
        with anyio.fail_after(5):
            while len(gate.events) < 3:
                await anyio.wait_all_tasks_blocked()
        assert [(await post(session, base + PATH, status_body(n)))[0] for n in (3, 4, 0)] == [200] * 3
    assert [e.workflow_id for e in gate.events if isinstance(e, StatusChangeEvent)] == [
        f"w-{n}" for n in range(5)
    ]
    assert sum("max_pending=3" in m for m in logged(caplog, logging.WARNING)) == 2


async def test_pending_cap_is_checked_again_after_the_body_arrives() -> None:
    """A body that finishes arriving after the callbacks filled up gets 503, and is not remembered."""
    gate = Gate()
    body = json.dumps(status_body(9)).encode()
    app = webhook_app(gate, limits=WebhookLimits(max_pending=1))
    async with serve(app) as base, await connect(base) as stream, aiohttp.ClientSession() as session:
        await stream.send(head(len(body)) + body[:5])
        await anyio.wait_all_tasks_blocked()  # the handler waits for the rest of the body
        assert (await post(session, base + PATH, status_body(1)))[0] == 200
        await stream.send(body[5:])
        assert (await stream.receive()).startswith(b"HTTP/1.1 503")
        gate.open.set()
        with anyio.fail_after(5):
            while gate.events == []:
                await anyio.wait_all_tasks_blocked()
        assert (await post(session, base + PATH, body))[0] == 200
    assert len(gate.events) == 2


async def test_large_bodies_beyond_their_slots_get_503() -> None:
    """With one large-body slot, a second large body gets 503 while a small one is served."""
    gate = Gate()
    large = json.dumps({**status_body(1), "pad": "x" * 100_000}).encode()
    limits = WebhookLimits(max_large_bodies=1)
    async with serve(webhook_app(gate, limits=limits)) as base, aiohttp.ClientSession() as session:
        async with await connect(base) as stream:
            await stream.send(head(len(large)) + large[:10])
            await anyio.wait_all_tasks_blocked()  # the first large body holds the slot while it arrives
            assert (await post(session, base + PATH, large))[0] == 503
            assert (await post(session, base + PATH, status_body(2)))[0] == 200
            await stream.send(large[10:])
            assert (await stream.receive()).startswith(b"HTTP/1.1 200")
        # The slot is held until the callback ends, so the decoded body is not piled up either.
        other = json.dumps({**status_body(3), "pad": "y" * 100_000}).encode()
        assert (await post(session, base + PATH, other))[0] == 503
        gate.open.set()
        with anyio.fail_after(5):
            while len(gate.events) < 2:
                await anyio.wait_all_tasks_blocked()
        assert (await post(session, base + PATH, other))[0] == 200
    assert len(gate.events) == 3


async def test_body_of_unknown_length_is_large() -> None:
    """A chunked body (no Content-Length) takes a large-body slot: with none, it gets 503."""
    inbox = Inbox()
    body = json.dumps(status_body(1)).encode()
    async with serve(webhook_app(inbox, limits=WebhookLimits(max_large_bodies=0))) as base:
        async with await connect(base) as stream:
            await stream.send(head(None) + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
            with anyio.fail_after(5):
                assert (await stream.receive()).startswith(b"HTTP/1.1 503")
        async with aiohttp.ClientSession() as session:
            assert (await post(session, base + PATH, body))[0] == 200
    assert len(inbox.events) == 1


async def test_many_concurrent_hostile_bodies_are_refused_and_serving_goes_on() -> None:
    """40 concurrent 1 MiB row bombs all get 400 or 503 (or a reset), and a valid event still gets 200."""
    inbox = Inbox()
    refused: list[int] = []
    async with serve(webhook_app(inbox)) as base:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def bomb() -> None:
                try:
                    refused.append((await post(session, base + PATH, ROW_BOMB))[0])
                except aiohttp.ClientError:  # refused before the whole body was sent
                    refused.append(0)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for _ in range(40):
                        tg.start_soon(bomb)
                    assert (await post(session, base + PATH, status_body(1)))[0] == 200
    assert len(refused) == 40
    assert set(refused) <= {400, 503, 0}
    assert 400 in refused
    assert len(inbox.events) == 1


# ---------------------------------------------------------------- 3. a callback's own CancelledError


async def _cancels_its_own_task(event: WebhookEvent) -> None:
    task = asyncio.get_running_loop().create_task(anyio.sleep_forever())
    task.cancel()
    await task


async def _raises_cancelled(event: WebhookEvent) -> None:
    raise asyncio.CancelledError


@pytest.mark.parametrize("culprit", [_cancels_its_own_task, _raises_cancelled], ids=["awaits", "raises"])
async def test_callback_raising_cancelled_error_is_a_failure_not_a_shutdown(
    culprit: Callable[[WebhookEvent], Awaitable[None]], caplog: pytest.LogCaptureFixture
) -> None:
    """A callback whose own code raises CancelledError is logged as an ERROR; later events still arrive."""
    inbox = Inbox()

    async def callback(event: WebhookEvent) -> None:
        if event.raw["workflow_id"] == "w-1":
            await culprit(event)
        await inbox(event)

    async with serve(webhook_app(callback)) as base, aiohttp.ClientSession() as session:
        assert (await post(session, base + PATH, status_body(1)))[0] == 200
        with anyio.fail_after(5):
            while not any("CancelledError" in m for m in logged(caplog, logging.ERROR)):
                await anyio.wait_all_tasks_blocked()
        assert (await post(session, base + PATH, status_body(2)))[0] == 200  # was 503 until restart
        with anyio.fail_after(5):
            await inbox.arrived.wait()
    assert [e.raw["workflow_id"] for e in inbox.events] == ["w-2"]
    [record] = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert "receiver keeps serving" in record.getMessage()
    assert not any("cancelled at shutdown" in m for m in logged(caplog))


async def test_cancelled_error_during_shutdown_grace_is_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    """A callback raising CancelledError of its own while shutdown waits for it is a failure, not a cancel."""
    gate = Gate()

    async def callback(event: WebhookEvent) -> None:
        await gate(event)
        raise asyncio.CancelledError

    runner = web.AppRunner(webhook_app(callback))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        assert (await post(session, f"http://{host}:{port}{PATH}", status_body(1)))[0] == 200
    with anyio.fail_after(5):
        while gate.entered == 0:
            await anyio.wait_all_tasks_blocked()
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.cleanup)
            await anyio.wait_all_tasks_blocked()  # the cleanup waits for the callback
            gate.open.set()
    assert any("CancelledError" in m for m in logged(caplog, logging.ERROR))
    assert not any("cancelled at shutdown" in m for m in logged(caplog))


# ---------------------------------------------------------------- 4. trickled bodies and headers


async def test_trickled_body_gets_408(caplog: pytest.LogCaptureFixture) -> None:
    """A body that stops arriving is answered 408 after body_timeout, and the connection is closed."""
    inbox = Inbox()
    stop_sending = anyio.Event()  # never set before the answer: the sender just stops
    async with serve(webhook_app(inbox, limits=WebhookLimits(body_timeout=0.2))) as base:
        async with await connect(base) as stream:
            await stream.send(head(100) + b'{"workflow_id')
            with anyio.fail_after(5):  # was: no answer, ever
                answer = await read_answer(stream)
            stop_sending.set()
        assert answer.startswith(b"HTTP/1.1 408")
        async with aiohttp.ClientSession() as session:
            assert (await post(session, base + PATH, status_body(1)))[0] == 200
    assert any("refused with 408" in m for m in logged(caplog, logging.WARNING))
    assert stop_sending.is_set()


_KEEPALIVE_FROM_CONNECT = "_keepalive_timeout" in inspect.getsource(RequestHandler.connection_made)


@pytest.mark.skipif(
    not _KEEPALIVE_FROM_CONNECT, reason="this aiohttp does not time out a first request's headers"
)
async def test_trickled_headers_are_cut_by_the_documented_keepalive_timeout() -> None:
    """With the runner's keepalive_timeout (the documented setting), half-sent headers are cut off."""
    async with serve(webhook_app(Inbox()), keepalive_timeout=0.2) as base, await connect(base) as stream:
        await stream.send(b"POST /airudder/webhook HTTP/1.1\r\nHost: x\r\nContent-Ty")
        with anyio.fail_after(5):
            assert await read_answer(stream) == b""


# ---------------------------------------------------------------- fuzzing


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=string.printable + '"\\[]{},é\u2028', max_size=8)
)
_KEYS = st.sampled_from(["rows", "actions", "callee", "node_id", "wfdetail_uuid", "workflow_id"]) | st.text(
    max_size=5
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)
# Fragments of JSON, so that random bytes often look like JSON to the shape check.
_TOKENS = st.lists(
    st.sampled_from(
        [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"1", b'"rows"', b"null", b" ", b"\xff"]
    ),
    max_size=200,
).map(b"".join)


def _nest(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


def _depth_and_items(value: object) -> tuple[int, int]:
    """Return a value's nesting depth and its count of containers plus separating commas."""
    if isinstance(value, list | dict):
        children = list(value.values()) if isinstance(value, dict) else value
        counts = [_depth_and_items(child) for child in children]
        depth = 1 + max((d for d, _ in counts), default=0)
        return depth, 1 + max(len(children) - 1, 0) + sum(n for _, n in counts)
    return 0, 0


def _check_invariant(body: bytes | str | dict[str, Any], kind: str | None = None) -> None:
    try:
        event = parse_webhook(body, kind=kind)
    except DecodeError as exc:
        assert len(str(exc).encode()) <= KIB
        assert (exc.field_path or "").startswith("body")
    else:
        assert event.kind in WebhookKind.KNOWN


@settings(max_examples=300)
@given(body=st.binary(max_size=300) | _TOKENS | st.text(max_size=100))
def test_parse_arbitrary_bytes_returns_an_event_or_decode_error(body: bytes | str) -> None:
    """Arbitrary bytes or text either parse or raise DecodeError with a bounded message."""
    _check_invariant(body)


@settings(max_examples=300)
@given(
    value=_JSON,
    depth=st.integers(0, 80) | st.just(300),
    kind=st.none() | st.sampled_from(sorted(WebhookKind.KNOWN)),
)
def test_parse_arbitrary_json_returns_an_event_or_decode_error(
    value: object, depth: int, kind: str | None
) -> None:
    """Arbitrary JSON, nested up to 300 deep, either parses or raises DecodeError with a bounded message."""
    body = {"payload": _nest(value, depth)} if depth % 2 else {"rows": [_nest(value, depth)]}
    _check_invariant(json.dumps(body).encode(), kind)
    _check_invariant(json.dumps(value), kind)
    _check_invariant(body, kind)


@settings(max_examples=300)
@given(value=_JSON, depth=st.integers(0, 8), max_depth=st.integers(1, 8), max_items=st.integers(1, 40))
def test_shape_check_matches_the_decoded_value(
    value: object, depth: int, max_depth: int, max_items: int
) -> None:
    """The shape check refuses a JSON text exactly when its real depth or value count is over the limit."""
    value = _nest(value, depth)
    real_depth, items = _depth_and_items(value)
    limits = WebhookLimits(max_depth=max_depth, max_items=max_items)
    for text in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False, indent=1).encode()):
        try:
            _check_shape(text, limits)
        except DecodeError as exc:
            assert real_depth > max_depth or items > max_items, str(exc)
        else:
            assert real_depth <= max_depth
            assert items <= max_items


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2000) | _TOKENS | _JSON.map(lambda v: json.dumps(v).encode()))
async def test_receiver_answers_arbitrary_bytes_and_keeps_serving(body: bytes) -> None:
    """The receiver answers arbitrary bytes with 200, 400 or 413 (bounded text), then serves a valid event."""
    inbox = Inbox()
    limits = attrs.evolve(DEFAULT_WEBHOOK_LIMITS, max_body_size=1500)
    async with serve(webhook_app(inbox, limits=limits)) as base, aiohttp.ClientSession() as session:
        status, answer = await post(session, base + PATH, body)
        assert status in {200, 400, 413}
        assert len(answer.get("message", "").encode()) <= KIB
        assert (await post(session, base + PATH, status_body(-1)))[0] == 200
    assert any(e.raw.get("workflow_id") == "w--1" for e in inbox.events)
