"""
Webhooks: the documented bodies, kind detection, tolerance, and the receiver over real loopback HTTP.
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from airudder_async._webhook_models import detect_kind
from airudder_async.errors import AirudderError, DecodeError
from airudder_async.webhooks import (
    DEFAULT_WEBHOOK_LIMITS,
    SIGNATURE_HEADER,
    ChatbotSessionEndEvent,
    CustomApiCallee,
    CustomApiPushEvent,
    GenericEvent,
    ListCompletionEvent,
    ListCompletionRow,
    StatusChangeAction,
    StatusChangeEvent,
    WebhookEvent,
    WebhookKind,
    WebhookLimits,
    _Dedupe,
    parse_webhook,
    webhook_app,
    webhook_handler,
)
from tests.support import run_fresh, serve

pytestmark = pytest.mark.anyio

LOGGER = "airudder_async.webhooks"
PATH = "/airudder/webhook"

LIST_COMPLETION: dict[str, Any] = {
    "workflow_id": "37b19c21b9cf482bb8100001",
    "workflow_name": "collection-march",
    "case_id": "case-001",
    "callee_number": "+8613711112222",
    "rows": [
        {"nodetask_id": "nt-1", "nodetask_name": "first call", "node_type": "call", "task_id": "t-1"},
        {"nodetask_id": "nt-2", "nodetask_name": "reminder", "node_type": "sms"},
    ],
}
STATUS_CHANGE: dict[str, Any] = {
    "workflow_id": "37b19c21b9cf482bb8100001",
    "workflow_name": "collection-march",
    "status": "finished",
    "actions": [
        {
            "nodetask_id": "nt-1",
            "nodetask_name": "first call",
            "node_type": "call",
            "task_id": "t-1",
            "task_status": "finished",
        },
        {"nodetask_id": "nt-2", "nodetask_name": "reminder", "node_type": "sms"},
    ],
}
CUSTOM_API_PUSH: dict[str, Any] = {
    "workflow_id": "37b19c21b9cf482bb8100001",
    "workflow_name": "collection-march",
    "node_id": "node-7",
    "node_name": "crm push",
    "callee": {
        "case_id": "case-001",
        "callee_name": "Li Lei",
        "callee_gender": "male",
        "callee_number": "+8613711112222",
        "platform_name": "shop",
        "extra_a": "vip",
    },
}
CHATBOT_SESSION_END: dict[str, Any] = {
    "workflow_id": "37b19c21b9cf482bb8100001",
    "workflow_name": "whatsapp-bot",
    "nodetask_id": "nt-9",
    "nodetask_name": "bot",
    "waba_task_id": "waba-3",
    "wfdetail_uuid": "5f0c7d4e-1d2b-4b8e-9a0e-3c1f2a9b7e11",
    "channel": "whatsapp",
    "channel_id": "ch-1",
    "callee": "+8613711112222",
    "timestamp": 1767225600,
    "call_id": "call-42",
}
DOCUMENTED = [LIST_COMPLETION, STATUS_CHANGE, CUSTOM_API_PUSH, CHATBOT_SESSION_END]
KINDS = [
    WebhookKind.LIST_COMPLETION,
    WebhookKind.STATUS_CHANGE,
    WebhookKind.CUSTOM_API_PUSH,
    WebhookKind.CHATBOT_SESSION_END,
]


# ---------------------------------------------------------------- helpers


class Inbox:
    """A webhook callback that records every event it is given."""

    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: object,
    *,
    content_type: str | None = "application/json",
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST *body* (JSON-encoded unless it is bytes) and return the status and the decoded answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    async with session.post(url, data=data, headers=all_headers, skip_auto_headers=["Content-Type"]) as r:
        return r.status, await r.json(content_type=None)


def with_extra(body: Mapping[str, Any], **extra: object) -> dict[str, Any]:
    """Return a copy of *body* with more top-level keys."""
    return {**body, **extra}


# ---------------------------------------------------------------- parsing: documented bodies


def test_list_completion_parses_exactly() -> None:
    """A Workflow List Completion body becomes a ListCompletionEvent with the exact values."""
    event = parse_webhook(json.dumps(LIST_COMPLETION).encode())
    assert event == ListCompletionEvent(
        workflow_id="37b19c21b9cf482bb8100001",
        workflow_name="collection-march",
        case_id="case-001",
        callee_number="+8613711112222",
        rows=(
            ListCompletionRow(
                nodetask_id="nt-1", nodetask_name="first call", node_type="call", task_id="t-1"
            ),
            ListCompletionRow(nodetask_id="nt-2", nodetask_name="reminder", node_type="sms", task_id=None),
        ),
        raw=LIST_COMPLETION,
    )
    assert event.kind == WebhookKind.LIST_COMPLETION
    assert event.extra == {}
    assert dict(event.raw) == LIST_COMPLETION


def test_status_change_parses_exactly() -> None:
    """A Workflow Status Change body becomes a StatusChangeEvent with the exact values."""
    event = parse_webhook(json.dumps(STATUS_CHANGE))
    assert event == StatusChangeEvent(
        workflow_id="37b19c21b9cf482bb8100001",
        workflow_name="collection-march",
        status="finished",
        actions=(
            StatusChangeAction(
                nodetask_id="nt-1",
                nodetask_name="first call",
                node_type="call",
                task_id="t-1",
                task_status="finished",
            ),
            StatusChangeAction(nodetask_id="nt-2", nodetask_name="reminder", node_type="sms"),
        ),
        raw=STATUS_CHANGE,
    )
    assert event.kind == WebhookKind.STATUS_CHANGE


def test_custom_api_push_parses_exactly() -> None:
    """A Custom API Node Data Push body becomes a CustomApiPushEvent with the exact values."""
    event = parse_webhook(CUSTOM_API_PUSH)
    assert event == CustomApiPushEvent(
        workflow_id="37b19c21b9cf482bb8100001",
        workflow_name="collection-march",
        node_id="node-7",
        node_name="crm push",
        callee=CustomApiCallee(
            case_id="case-001",
            callee_name="Li Lei",
            callee_gender="male",
            callee_number="+8613711112222",
            platform_name="shop",
            extra_a="vip",
        ),
        raw=CUSTOM_API_PUSH,
    )
    assert event.kind == WebhookKind.CUSTOM_API_PUSH


def test_chatbot_session_end_parses_exactly() -> None:
    """A Chatbot Session End body becomes a ChatbotSessionEndEvent, the header read case-insensitively."""
    event = parse_webhook(CHATBOT_SESSION_END, headers={"x-airudder-sign": "c2lnbmVk"})
    assert event == ChatbotSessionEndEvent(
        workflow_id="37b19c21b9cf482bb8100001",
        workflow_name="whatsapp-bot",
        nodetask_id="nt-9",
        nodetask_name="bot",
        waba_task_id="waba-3",
        wfdetail_uuid="5f0c7d4e-1d2b-4b8e-9a0e-3c1f2a9b7e11",
        channel="whatsapp",
        channel_id="ch-1",
        callee="+8613711112222",
        timestamp=1767225600,
        call_id="call-42",
        signature="c2lnbmVk",
        raw=CHATBOT_SESSION_END,
    )
    assert event.kind == WebhookKind.CHATBOT_SESSION_END
    unsigned = parse_webhook(CHATBOT_SESSION_END)
    assert isinstance(unsigned, ChatbotSessionEndEvent)
    assert unsigned.signature is None


def test_unknown_fields_are_kept_in_extra_and_raw() -> None:
    """Keys the model does not know stay in extra, at the top level and in nested objects, and in raw."""
    body = with_extra(LIST_COMPLETION, retry_count=2, meta={"a": [1, None]})
    body["rows"] = [{**LIST_COMPLETION["rows"][0], "duration": 31.5}]
    event = parse_webhook(body)
    assert isinstance(event, ListCompletionEvent)
    assert event.extra == {"retry_count": 2, "meta": {"a": [1, None]}}
    assert event.rows[0].extra == {"duration": 31.5}
    assert dict(event.raw) == body
    push = parse_webhook({**CUSTOM_API_PUSH, "callee": {**CUSTOM_API_PUSH["callee"], "extra_b": "b"}})
    assert isinstance(push, CustomApiPushEvent)
    assert push.callee.extra == {"extra_b": "b"}


def test_generic_event_holds_the_whole_body() -> None:
    """A body of no known shape becomes a GenericEvent whose extra and raw are the whole body."""
    body = {"task_id": "p-1", "status": "running", "agents": 3}
    event = parse_webhook(body)
    assert event == GenericEvent(kind=WebhookKind.GENERIC, extra=body, raw=body)
    assert isinstance(event, GenericEvent)
    assert event.decode_error is None


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (LIST_COMPLETION, WebhookKind.LIST_COMPLETION),
        (STATUS_CHANGE, WebhookKind.STATUS_CHANGE),
        (CUSTOM_API_PUSH, WebhookKind.CUSTOM_API_PUSH),
        (CHATBOT_SESSION_END, WebhookKind.CHATBOT_SESSION_END),
        ({"waba_task_id": "w", "channel_id": "c", "callee": "+1"}, WebhookKind.CHATBOT_SESSION_END),
        ({"waba_task_id": "w", "message_status": "read"}, WebhookKind.GENERIC),
        ({"node_id": "n", "callee": "+1"}, WebhookKind.GENERIC),
        ({}, WebhookKind.GENERIC),
    ],
    ids=[
        "rows",
        "actions",
        "node_id+callee",
        "wfdetail_uuid",
        "waba+channel_id",
        "waba-only",
        "callee-str",
        "empty",
    ],
)
def test_kind_is_detected_from_keys(body: dict[str, Any], kind: str) -> None:
    """The kind is recognised from the body's marker keys, and anything else is generic."""
    assert detect_kind(body) == kind


def test_explicit_kind_overrides_detection() -> None:
    """An explicit kind wins over the keys: undocumented kinds give a GenericEvent, typed ones are strict."""
    waba = parse_webhook(LIST_COMPLETION, kind=WebhookKind.WABA_MESSAGE_STATUS)
    assert isinstance(waba, GenericEvent)
    assert waba.kind == WebhookKind.WABA_MESSAGE_STATUS
    assert parse_webhook(LIST_COMPLETION, kind=WebhookKind.GENERIC).kind == WebhookKind.GENERIC
    with pytest.raises(DecodeError) as info:
        parse_webhook(CHATBOT_SESSION_END, kind=WebhookKind.LIST_COMPLETION)
    assert info.value.field_path == "body.case_id"


def test_unknown_kind_is_a_value_error() -> None:
    """A kind that is not a WebhookKind value is a programmer mistake, refused straight away."""
    with pytest.raises(ValueError, match="unknown webhook kind"):
        parse_webhook(LIST_COMPLETION, kind="list")
    with pytest.raises(ValueError, match="unknown webhook kind"):
        webhook_app(Inbox(), kind="list")


def test_missing_field_raises_decode_error_with_path() -> None:
    """A missing required field raises DecodeError naming the nested path."""
    body = {**LIST_COMPLETION, "rows": [{"nodetask_name": "x", "node_type": "call"}]}
    with pytest.raises(DecodeError) as info:
        parse_webhook(body)
    assert info.value.field_path == "body.rows[0].nodetask_id"
    assert isinstance(info.value, AirudderError)
    assert "ListCompletionEvent" in str(info.value)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({**LIST_COMPLETION, "rows": "nt-1"}, "body.rows"),
        ({**LIST_COMPLETION, "rows": [5]}, "body.rows[0]"),
        ({**LIST_COMPLETION, "case_id": True}, "body.case_id"),
        ({**LIST_COMPLETION, "case_id": None}, "body.case_id"),
        ({**LIST_COMPLETION, "case_id": 1.5}, "body.case_id"),
        ({**CHATBOT_SESSION_END, "timestamp": 1.5}, "body.timestamp"),
        ({**CHATBOT_SESSION_END, "timestamp": "soon"}, "body.timestamp"),
        ({**CUSTOM_API_PUSH, "callee": {}}, "body.callee.case_id"),
    ],
    ids=["rows-str", "row-int", "bool", "null", "float", "float-ts", "text-ts", "empty-callee"],
)
def test_wrong_types_raise_decode_error(body: dict[str, Any], path: str) -> None:
    """Values of the wrong shape raise DecodeError with the offending field's path."""
    with pytest.raises(DecodeError) as info:
        parse_webhook(body)
    assert info.value.field_path == path


def test_numbers_are_tolerated_where_text_is_documented() -> None:
    """Integer ids become their decimal text, and a timestamp of digits becomes an integer."""
    body = {**CHATBOT_SESSION_END, "call_id": 42, "channel_id": 7, "timestamp": "1767225600"}
    event = parse_webhook(body)
    assert isinstance(event, ChatbotSessionEndEvent)
    assert (event.call_id, event.channel_id, event.timestamp) == ("42", "7", 1767225600)
    assert event.raw["call_id"] == 42  # raw keeps what was sent


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'"text"', b"{", b"\xff\xfe", "", b"null", b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"],
    ids=["array", "string", "truncated", "not-utf8", "empty", "null", "too-deep"],
)
def test_non_objects_raise_decode_error(body: bytes | str) -> None:
    """A body that is not a JSON object (or is nested too deep to read) raises DecodeError at the root."""
    with pytest.raises(DecodeError) as info:
        parse_webhook(body)
    assert info.value.field_path == "body"


def test_body_of_another_type_is_a_type_error() -> None:
    """A body that is neither bytes, str nor a mapping is a programmer mistake."""
    with pytest.raises(TypeError, match="body must be"):
        parse_webhook(42)  # type: ignore[arg-type]  # the mistake under test


def test_events_are_read_only_and_pickle() -> None:
    """Events are frozen, their mappings are read-only, and they survive pickling and hashing."""
    event = parse_webhook(with_extra(CHATBOT_SESSION_END, note=[1]), headers={SIGNATURE_HEADER: "s"})
    assert pickle.loads(pickle.dumps(event)) == event
    assert hash(event) == hash(pickle.loads(pickle.dumps(event)))
    with pytest.raises(TypeError):
        event.extra["note"] = 2  # type: ignore[index]  # the mistake under test
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.kind = "x"  # type: ignore[misc]  # the mistake under test
    assert repr(event.extra) == "{'note': [1]}"
    assert "raw=" not in repr(event)


# ---------------------------------------------------------------- parsing: properties

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_FIELD_NAMES = sorted(
    {k for body in DOCUMENTED for k in body}
    | {"rows", "actions", "node_id", "wfdetail_uuid", "waba_task_id", "channel_id", "extra", "raw", "kind"}
)


@given(
    case=st.sampled_from(list(zip(DOCUMENTED, KINDS, strict=True))),
    extra=st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=10), _JSON, max_size=5),
)
def test_extra_keys_survive_parsing(case: tuple[dict[str, Any], str], extra: dict[str, Any]) -> None:
    """Arbitrary unknown keys and values (even other kinds' field names) reach extra unchanged."""
    body, kind = case
    extra = {k: v for k, v in extra.items() if k not in body}
    full = {**body, **extra}
    event = parse_webhook(json.dumps(full), kind=kind)
    assert event.kind == kind
    assert dict(event.extra) == extra
    assert dict(event.raw) == full


@given(
    body=st.dictionaries(
        st.sampled_from(_FIELD_NAMES) | st.text(max_size=6),
        _JSON | st.lists(st.dictionaries(st.sampled_from(_FIELD_NAMES), _JSON_SCALARS), max_size=2),
        max_size=12,
    ),
    kind=st.none() | st.sampled_from(sorted(WebhookKind.KNOWN)),
)
def test_parse_raises_only_decode_error(body: dict[str, Any], kind: str | None) -> None:
    """Any JSON object either parses (keeping every key in raw) or raises DecodeError, nothing else."""
    result: WebhookEvent | DecodeError
    try:
        result = parse_webhook(json.dumps(body).encode(), kind=kind)
    except DecodeError as exc:
        result = exc
    if isinstance(result, DecodeError):
        assert (result.field_path or "").startswith("body")
    else:
        assert dict(result.raw) == body


# ---------------------------------------------------------------- de-duplication memory


def _seen_or_add(memory: _Dedupe, key: bytes, now: float) -> bool:
    """Tell whether *key* was seen, recording it when it was not (what the receiver does)."""
    if memory.seen(key, now):
        return True
    memory.add(key, now)
    return False


def test_dedupe_memory_is_bounded_by_size_and_time() -> None:
    """The dedupe memory forgets the oldest key past its size, and every key after its TTL."""
    memory = _Dedupe(size=2, ttl=10.0)
    assert [_seen_or_add(memory, k, 0.0) for k in (b"a", b"b", b"a")] == [False, False, True]
    assert _seen_or_add(memory, b"c", 1.0) is False  # evicts a
    assert len(memory) == 2
    assert _seen_or_add(memory, b"a", 1.0) is False  # forgotten, so new again (evicts b)
    assert _seen_or_add(memory, b"c", 1.0) is True
    memory = _Dedupe(size=5, ttl=10.0)
    memory.add(b"x", 0.0)
    assert memory.seen(b"x", 9.9) is True
    assert memory.seen(b"x", 10.0) is False  # expired exactly at the TTL
    off = _Dedupe(size=0, ttl=10.0)
    assert [_seen_or_add(off, b"x", 0.0), _seen_or_add(off, b"x", 0.0), len(off)] == [False, False, 0]


# ---------------------------------------------------------------- the receiver over HTTP


async def test_receiver_delivers_typed_events() -> None:
    """Each documented body posted to the app reaches the callback as its typed event, answered 200."""
    inbox = Inbox()
    async with serve(webhook_app(inbox)) as base, aiohttp.ClientSession() as session:
        for body in DOCUMENTED:
            status, answer = await post(session, base + PATH, body)
            assert (status, answer) == (200, {"code": 200, "status": "OK"})
    assert inbox.events == [parse_webhook(body) for body in DOCUMENTED]


async def test_mounted_as_subapp_with_signature_header() -> None:
    """Mounted with add_subapp(), the app serves under the prefix and passes the signature header on."""
    inbox = Inbox()
    root = web.Application()
    root.add_subapp("/hooks", webhook_app(inbox))
    async with serve(root) as base, aiohttp.ClientSession() as session:
        status, _ = await post(
            session, base + "/hooks" + PATH, CHATBOT_SESSION_END, headers={SIGNATURE_HEADER: "sig"}
        )
        assert status == 200
        async with session.get(base + "/hooks" + PATH) as r:
            assert r.status == 405
    [event] = inbox.events
    assert isinstance(event, ChatbotSessionEndEvent)
    assert event.signature == "sig"


async def test_retries_are_delivered_once(caplog: pytest.LogCaptureFixture) -> None:
    """An event sent 5 times (even re-serialised, as retries may be) is answered 200 and delivered once."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    inbox = Inbox()
    reordered = json.dumps(dict(reversed(LIST_COMPLETION.items())), indent=2).encode()
    async with serve(webhook_app(inbox)) as base, aiohttp.ClientSession() as session:
        statuses = [(await post(session, base + PATH, LIST_COMPLETION))[0] for _ in range(4)]
        statuses.append((await post(session, base + PATH, reordered))[0])
    assert statuses == [200] * 5
    assert inbox.events == [parse_webhook(LIST_COMPLETION)]
    assert sum("not delivered again" in r.getMessage() for r in caplog.records) == 4


async def test_dedupe_size_evicts_oldest_over_http() -> None:
    """With room for two bodies, a third evicts the first, which is then delivered again."""
    inbox = Inbox()
    bodies = [with_extra(LIST_COMPLETION, case_id=f"case-{i}") for i in range(3)]
    async with (
        serve(webhook_app(inbox, limits=WebhookLimits(dedupe_size=2))) as base,
        aiohttp.ClientSession() as session,
    ):
        for body in [*bodies, bodies[0], bodies[0], bodies[2]]:
            assert (await post(session, base + PATH, body))[0] == 200
    assert [e.case_id for e in inbox.events if isinstance(e, ListCompletionEvent)] == [
        "case-0",
        "case-1",
        "case-2",
        "case-0",
    ]


async def test_dedupe_can_be_turned_off() -> None:
    """With dedupe_size=0 every delivery reaches the callback."""
    inbox = Inbox()
    async with (
        serve(webhook_app(inbox, limits=WebhookLimits(dedupe_size=0))) as base,
        aiohttp.ClientSession() as session,
    ):
        for _ in range(2):
            await post(session, base + PATH, STATUS_CHANGE)
    assert len(inbox.events) == 2


def _chunks(total: int) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        for _ in range(total // 65_536):
            yield b" " * 65_536

    return gen


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b'{"workflow_id": ', "application/json", 400),
        (b"[1, 2, 3]", "application/json", 400),
        (b"\xff\xfe{}", "application/json", 400),
        (json.dumps(LIST_COMPLETION).encode(), "text/plain", 415),
        (json.dumps(LIST_COMPLETION).encode(), None, 415),
        (json.dumps(LIST_COMPLETION).encode(), "application/x-www-form-urlencoded", 415),
        ("10MB", "application/json", 413),
        ("10MB-chunked", "application/json", 413),
    ],
    ids=["truncated", "array", "not-utf8", "text-plain", "no-type", "form", "10MB", "10MB-chunked"],
)
async def test_bad_requests_get_4xx_and_server_keeps_serving(
    data: bytes | str, content_type: str | None, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad JSON, non-objects, wrong content types and 10 MB bodies get a 4xx, and serving goes on."""
    inbox = Inbox()
    headers = {} if content_type is None else {"Content-Type": content_type}
    body: object = data
    if data == "10MB":
        body = io.BytesIO(b" " * 10_000_000)
    elif data == "10MB-chunked":
        body = _chunks(10_000_000)()
    # aiohttp reads and drops the unread rest of a refused body for up to 10 s ("lingering close"), in
    # a task that outlives a vanished client and the runner's cleanup (aio-libs/aiohttp#1800): turn it
    # off here so no task is left behind.
    async with serve(webhook_app(inbox), lingering_time=0) as base, aiohttp.ClientSession() as session:
        async with session.post(
            base + PATH, data=body, headers=headers, skip_auto_headers=["Content-Type"]
        ) as r:
            assert r.status == status
            assert (await r.json())["code"] == status
        assert (await post(session, base + PATH, STATUS_CHANGE))[0] == 200
    assert inbox.events == [parse_webhook(STATUS_CHANGE)]
    [warning] = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert f"refused with {status}" in warning.getMessage()


async def test_charset_parameter_is_accepted() -> None:
    """application/json with a charset parameter is accepted."""
    inbox = Inbox()
    async with serve(webhook_app(inbox)) as base, aiohttp.ClientSession() as session:
        status, _ = await post(
            session, base + PATH, STATUS_CHANGE, content_type="application/json; charset=utf-8"
        )
    assert status == 200
    assert len(inbox.events) == 1


async def test_small_max_body_size_is_enforced() -> None:
    """A body one byte over max_body_size is refused with 413; one at the limit is accepted."""
    inbox = Inbox()
    body = json.dumps(STATUS_CHANGE).encode()
    app = webhook_app(inbox, limits=WebhookLimits(max_body_size=len(body)))
    async with serve(app, lingering_time=0) as base, aiohttp.ClientSession() as session:
        assert (await post(session, base + PATH, body + b" "))[0] == 413
        assert (await post(session, base + PATH, body))[0] == 200
    assert len(inbox.events) == 1


async def test_body_not_fitting_its_kind_is_delivered_as_generic(caplog: pytest.LogCaptureFixture) -> None:
    """A JSON object that does not fit its kind's model is answered 200 and delivered as a GenericEvent."""
    inbox = Inbox()
    body = {k: v for k, v in LIST_COMPLETION.items() if k != "case_id"}
    async with serve(webhook_app(inbox)) as base, aiohttp.ClientSession() as session:
        assert (await post(session, base + PATH, body))[0] == 200
    [event] = inbox.events
    assert isinstance(event, GenericEvent)
    assert event.kind == WebhookKind.LIST_COMPLETION
    assert event.decode_error is not None
    assert "body.case_id" in event.decode_error
    assert dict(event.raw) == body
    assert any("delivered as GenericEvent" in r.getMessage() for r in caplog.records)


async def test_explicit_kind_on_the_app() -> None:
    """An app given a kind labels every event with it instead of guessing."""
    inbox = Inbox()
    app = webhook_app(inbox, kind=WebhookKind.PREDICTIVE_AGENTS_STATUS)
    async with serve(app) as base, aiohttp.ClientSession() as session:
        await post(session, base + PATH, LIST_COMPLETION)
    assert inbox.events == [
        GenericEvent(kind=WebhookKind.PREDICTIVE_AGENTS_STATUS, extra=LIST_COMPLETION, raw=LIST_COMPLETION)
    ]


def _verifier(verdict: object, is_async: bool, seen: list[tuple[str | None, bytes]]) -> Any:
    def check(headers: Mapping[str, str], body: bytes) -> object:
        seen.append((headers.get(SIGNATURE_HEADER), body))
        return verdict

    async def acheck(headers: Mapping[str, str], body: bytes) -> object:
        return check(headers, body)

    return acheck if is_async else check


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("verdict", "status"), [(True, 200), (False, 401), (1, 401)], ids=["true", "false", "truthy"]
)
async def test_signature_hook_decides(is_async: bool, verdict: object, status: int) -> None:
    """verify_signature gets the headers and raw bytes; only True lets the event through, else 401."""
    inbox = Inbox()
    seen: list[tuple[str | None, bytes]] = []
    body = json.dumps(CHATBOT_SESSION_END).encode()
    app = webhook_app(inbox, verify_signature=_verifier(verdict, is_async, seen))
    async with serve(app) as base, aiohttp.ClientSession() as session:
        answer = await post(session, base + PATH, body, headers={SIGNATURE_HEADER: "abc"})
    assert answer[0] == status
    assert seen == [("abc", body)]
    assert len(inbox.events) == (1 if status == 200 else 0)


async def test_signature_hook_that_raises_answers_500(caplog: pytest.LogCaptureFixture) -> None:
    """A verify_signature that raises is logged and answered 500, so AIRUDDER retries later."""

    def broken(headers: Mapping[str, str], body: bytes) -> bool:
        raise KeyError(SIGNATURE_HEADER)

    inbox = Inbox()
    async with serve(webhook_app(inbox, verify_signature=broken)) as base, aiohttp.ClientSession() as session:
        assert (await post(session, base + PATH, CHATBOT_SESSION_END))[0] == 500
    assert inbox.events == []
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records if r.name == LOGGER)


async def test_callback_runs_after_the_answer() -> None:
    """A slow callback does not delay the 200: the answer arrives while the callback is still pending."""
    started, release = anyio.Event(), anyio.Event()
    finished: list[WebhookEvent] = []

    async def slow(event: WebhookEvent) -> None:
        started.set()
        await release.wait()
        finished.append(event)

    async with serve(webhook_app(slow)) as base, aiohttp.ClientSession() as session:
        with anyio.fail_after(5):
            assert (await post(session, base + PATH, STATUS_CHANGE))[0] == 200
            await started.wait()
        assert finished == []
        release.set()
    assert len(finished) == 1


async def test_callback_exception_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A callback that raises is logged with its traceback, and later events still arrive."""
    inbox = Inbox()

    async def flaky(event: WebhookEvent) -> None:
        if isinstance(event, ListCompletionEvent):
            raise RuntimeError("boom")
        await inbox(event)

    async with serve(webhook_app(flaky)) as base, aiohttp.ClientSession() as session:
        assert (await post(session, base + PATH, LIST_COMPLETION))[0] == 200
        assert (await post(session, base + PATH, STATUS_CHANGE))[0] == 200
    assert inbox.events == [parse_webhook(STATUS_CHANGE)]
    [record] = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert "boom" in str(record.exc_info[1])


async def test_shutdown_waits_for_pending_callbacks() -> None:
    """App cleanup waits for a callback that is still running, instead of cancelling it."""
    started, release = anyio.Event(), anyio.Event()
    finished: list[WebhookEvent] = []
    cleaned: list[bool] = []

    async def slow(event: WebhookEvent) -> None:
        started.set()
        await release.wait()
        finished.append(event)

    runner = web.AppRunner(webhook_app(slow))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        await post(session, f"http://{host}:{port}{PATH}", STATUS_CHANGE)

    async def cleanup() -> None:
        await runner.cleanup()
        cleaned.append(True)

    with anyio.fail_after(5):
        await started.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(cleanup)
            await anyio.wait_all_tasks_blocked()
            assert cleaned == []
            release.set()
    assert cleaned == [True]
    assert len(finished) == 1


async def test_shutdown_timeout_cancels_stuck_callbacks(caplog: pytest.LogCaptureFixture) -> None:
    """A callback still running when shutdown_timeout ends is cancelled, with a WARNING."""
    started = anyio.Event()

    async def stuck(event: WebhookEvent) -> None:
        started.set()
        await anyio.Event().wait()

    with anyio.fail_after(5):
        async with (
            serve(webhook_app(stuck, limits=WebhookLimits(shutdown_timeout=0))) as base,
            aiohttp.ClientSession() as session,
        ):
            await post(session, base + PATH, STATUS_CHANGE)
            await started.wait()
    assert any("cancelled at shutdown" in r.getMessage() for r in caplog.records if r.name == LOGGER)


async def test_handler_in_your_own_app() -> None:
    """webhook_handler() serves any route of your app once its lifespan is in cleanup_ctx."""
    inbox = Inbox()
    hooks = webhook_handler(inbox)
    app = web.Application()
    app.router.add_post("/in", hooks.handle)
    app.cleanup_ctx.append(hooks.lifespan)
    async with serve(app) as base, aiohttp.ClientSession() as session:
        assert (await post(session, base + "/in", STATUS_CHANGE))[0] == 200
        other = web.Application()
        other.cleanup_ctx.append(hooks.lifespan)
        with pytest.raises(RuntimeError, match="already running"):
            await web.AppRunner(other).setup()
    assert len(inbox.events) == 1


async def test_handler_without_lifespan_answers_503(caplog: pytest.LogCaptureFixture) -> None:
    """A handler whose lifespan was never registered answers 503 and logs an ERROR that says what to do."""
    inbox = Inbox()
    hooks = webhook_handler(inbox)
    app = web.Application()
    app.router.add_post("/in", hooks.handle)
    async with serve(app) as base, aiohttp.ClientSession() as session:
        assert (await post(session, base + "/in", STATUS_CHANGE))[0] == 503
    assert inbox.events == []
    assert any("cleanup_ctx" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


async def test_client_that_vanishes_mid_body_is_handled(caplog: pytest.LogCaptureFixture) -> None:
    """A client that closes the connection before sending the whole body gets no delivery and no crash."""
    inbox = Inbox()
    async with serve(webhook_app(inbox)) as base:
        host, port = base.removeprefix("http://").split(":")
        stream = await anyio.connect_tcp(host, int(port))
        async with stream:
            await stream.send(
                f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                'Content-Length: 1000\r\n\r\n{"workflow'.encode()
            )
    assert inbox.events == []
    assert any("could not be read" in r.getMessage() for r in caplog.records if r.name == LOGGER)


async def test_requests_during_shutdown_get_503() -> None:
    """A body still arriving when the lifespan ends, and any later request, get 503 so AIRUDDER retries."""
    inbox = Inbox()
    hooks = webhook_handler(inbox)
    app = web.Application()
    app.router.add_post("/in", hooks.handle)
    lifespan = hooks.lifespan(app)
    await anext(lifespan)  # started by hand, to stop it while a request is half read
    body = json.dumps(STATUS_CHANGE).encode()
    async with serve(app) as base, aiohttp.ClientSession() as session:
        host, port = base.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            head = (
                "POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}"
            )
            await stream.send(f"{head}\r\n\r\n".encode() + body[:10])
            await anyio.wait_all_tasks_blocked()  # the handler waits for the rest of the body
            with pytest.raises(StopAsyncIteration):
                await anext(lifespan)
            await stream.send(body[10:])
            answer = await stream.receive()
        assert answer.startswith(b"HTTP/1.1 503")
        assert (await post(session, base + "/in", STATUS_CHANGE))[0] == 503
    assert inbox.events == []


def test_read_only_mapping_behaves_like_a_dict() -> None:
    """extra and raw support len, iteration, lookup and equality like the dict they hold."""
    event = parse_webhook(with_extra(STATUS_CHANGE, a=1, b=2))
    assert (len(event.extra), list(event.extra), event.extra["a"]) == (2, ["a", "b"], 1)
    assert event.extra == {"a": 1, "b": 2}
    assert len(event.raw) == len(STATUS_CHANGE) + 2


def test_integers_beyond_64_bits_are_read() -> None:
    """Integers beyond 64 bits are read exactly (orjson would have turned them into floats)."""
    event = parse_webhook(b'{"case_id": 18446744073709551616, "n": -9223372036854775809}')
    assert dict(event.raw) == {"case_id": 2**64, "n": -(2**63) - 1}


def test_huge_integer_for_a_string_field_is_a_decode_error() -> None:
    """An integer too long to print in a string field is a DecodeError, not a ValueError."""
    with pytest.raises(DecodeError) as info:
        parse_webhook({**LIST_COMPLETION, "case_id": 10**5000})
    assert info.value.field_path == "body.case_id"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_body_size": 0},
        {"max_body_size": 1.5},
        {"max_body_size": True},
        {"body_timeout": 0},
        {"body_timeout": "1"},
        {"body_timeout": True},
        {"max_depth": 0},
        {"max_depth": 257},
        {"max_items": 0},
        {"max_list_length": -1},
        {"max_pending": 0},
        {"max_large_bodies": -1},
        {"dedupe_size": -1},
        {"dedupe_ttl": 0},
        {"dedupe_ttl": float("nan")},
        {"shutdown_timeout": -1},
    ],
)
def test_invalid_limits_are_value_errors(kwargs: dict[str, Any]) -> None:
    """Impossible limits are refused when the WebhookLimits is built, naming the field."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        WebhookLimits(**kwargs)


def test_limits_defaults_and_edges() -> None:
    """The documented defaults hold, and the edges of each range are accepted."""
    assert WebhookLimits() == DEFAULT_WEBHOOK_LIMITS
    assert attrs.asdict(DEFAULT_WEBHOOK_LIMITS) == {
        "max_body_size": 1_048_576,
        "body_timeout": 10.0,
        "max_depth": 64,
        "max_items": 10_000,
        "max_list_length": 1_000,
        "max_pending": 100,
        "max_large_bodies": 4,
        "dedupe_size": 10_000,
        "dedupe_ttl": 600.0,
        "shutdown_timeout": 30.0,
    }
    edges = WebhookLimits(
        max_depth=256, max_list_length=0, max_large_bodies=0, dedupe_ttl=math.inf, shutdown_timeout=0
    )
    assert (edges.max_depth, edges.dedupe_ttl) == (256, math.inf)


def test_limits_of_another_type_are_a_type_error() -> None:
    """Passing anything but a WebhookLimits as limits is a programmer mistake."""
    with pytest.raises(TypeError, match="WebhookLimits"):
        webhook_app(Inbox(), limits={"max_pending": 5})  # type: ignore[arg-type]  # the mistake under test


def _typed(callback: Callable[[WebhookEvent], Awaitable[None]]) -> None:
    """Type-checks that an async function of WebhookEvent is an accepted callback."""
    webhook_app(callback)


def test_importing_webhooks_leaves_the_api_converter_alone() -> None:
    """Importing the webhook modules registers no hook on the converter that reads API answers."""
    code = """
import airudder_async._convert as convert
api = convert.converter()
calls = []
names = [name for name in dir(api) if name.startswith("register_")]
assert "register_structure_hook" in names, names
for name in names:
    setattr(api, name, lambda *a, _name=name, **k: calls.append(_name))
import airudder_async.webhooks as webhooks
import airudder_async._webhook_models as models
assert calls == [], calls
assert convert.converter() is api
assert models._converter is not api
assert not hasattr(models, "converter") and not hasattr(webhooks, "converter")
"""
    run_fresh(code)
