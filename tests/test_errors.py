"""
The error tree and the envelope rules, as pure functions of (status, headers, body).
"""

from __future__ import annotations

import contextlib
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airudder_async._protocol import interpret, redact
from airudder_async.errors import (
    AirudderError,
    APIError,
    AuthenticationError,
    CoordinationError,
    DatabaseLockedError,
    DecodeError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    SchemaVersionError,
    ServerError,
    SyncError,
    TransportError,
)
from airudder_async.models import Cursor


def body(**kw: object) -> bytes:
    return json.dumps(kw).encode()


def test_success_needs_2xx_code_200_and_status_ok() -> None:
    """Only a 2xx whose envelope has code 200 and status OK is a success."""
    assert interpret(200, {}, body(data={"a": 1}, status="OK", code=200))["data"] == {"a": 1}
    with pytest.raises(APIError) as info:
        interpret(200, {}, body(data=None, status="FAIL", code=200))
    assert type(info.value) is APIError
    with pytest.raises(InvalidRequestError) as bad:
        interpret(200, {}, body(data=None, status="ERROR", code=400, message="bad size"))
    assert (bad.value.status, bad.value.code, bad.value.envelope_status) == (200, 400, "ERROR")
    assert "bad size" in str(bad.value)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, None, AuthenticationError),
        (403, 403, AuthenticationError),
        (404, None, NotFoundError),
        (400, 400, InvalidRequestError),
        (422, None, InvalidRequestError),
        (429, 429, RateLimitedError),
        (500, None, ServerError),
        (503, 503, ServerError),
        (200, 401, AuthenticationError),
        (200, 500, ServerError),
        (200, 429, RateLimitedError),
        (302, None, APIError),
    ],
)
def test_status_and_code_mapping(status: int, code: int | None, cls: type[APIError]) -> None:
    """Errors map by HTTP status, and by envelope code on a 2xx."""
    raw = body(status="ERROR", code=code, msg="nope") if code is not None else b"<html>gateway</html>"
    with pytest.raises(cls) as info:
        interpret(status, {}, raw)
    assert type(info.value) is cls
    assert info.value.status == status
    assert info.value.code == code
    assert str(info.value).startswith(f"HTTP {status}")


def test_retry_after_is_parsed_onto_rate_limited() -> None:
    """A 429's Retry-After becomes RateLimitedError.retry_after."""
    with pytest.raises(RateLimitedError) as info:
        interpret(429, {"Retry-After": "7"}, b"")
    assert info.value.retry_after == 7.0
    assert "retry after 7 s" in str(info.value)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"data": 1}', b"{", b""])
def test_2xx_that_is_not_an_envelope_is_decode_error(raw: bytes) -> None:
    """A 2xx body that is not a JSON envelope raises DecodeError."""
    with pytest.raises(DecodeError):
        interpret(200, {}, raw)


def test_ok_envelope_without_data_is_decode_error() -> None:
    """An OK envelope with no data key is a DecodeError naming `data`."""
    with pytest.raises(DecodeError) as info:
        interpret(200, {}, body(status="OK", code=200))
    assert info.value.field_path == "data"


def test_error_body_is_redacted() -> None:
    """Secrets in an error body are masked by key and by value."""
    raw = body(
        code=500,
        status="ERROR",
        message="failed for tok-abcdef123",
        data={"token": "tok-abcdef123", "nested": [{"APPSecret": "s"}], "note": "secret-value-1 leaked"},
    )
    with pytest.raises(ServerError) as info:
        interpret(500, {}, raw, secrets=["tok-abcdef123", "secret-value-1"])
    text = repr(info.value.body) + str(info.value)
    assert "tok-abcdef123" not in text
    assert "secret-value-1" not in text
    assert info.value.body["data"]["token"] == "***"  # type: ignore[index]  # body is a dict here


def test_redact_leaves_other_values() -> None:
    """redact() touches only secret keys and secret strings."""
    assert redact({"a": [1, "x"], "Authorization": "Token t"}, ["zz"]) == {
        "a": [1, "x"],
        "Authorization": "***",
    }
    assert redact("abc", ["ab"]) == "abc"  # secrets shorter than 4 characters are ignored


ERRORS: list[AirudderError] = [
    AirudderError("boom", method="GET", path="/x"),
    TransportError("reset"),
    RequestTimeoutError("slow", method="GET", path="/y"),
    APIError("m", status=400, code=4001, envelope_status="ERROR", body={"a": 1}),
    AuthenticationError("bad", status=401),
    NotFoundError("nf", status=404),
    InvalidRequestError("inv", status=422),
    RateLimitedError("slow down", status=429, retry_after=3.5),
    ServerError("down", status=503, code=503),
    DecodeError("bad", field_path="data.lists[0].total"),
    CoordinationError("redis down", operation="rate budget", method="GET", path="/z"),
    SyncError("cannot open postgresql://u:***@h/db"),
    DatabaseLockedError("locked"),
    SchemaVersionError("too new", found=9, supported=1),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_and_print(error: AirudderError) -> None:
    """Every error survives pickling with its fields and has a useful str()."""
    error.cursor = Cursor(page=3, page_size=10)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.__dict__ == error.__dict__
    assert str(copy) == str(error)
    assert str(error)
    assert copy.cursor == Cursor(page=3, page_size=10)


def test_tree() -> None:
    """The classes form the documented tree; timeouts are also TimeoutError."""
    assert issubclass(RequestTimeoutError, TransportError)
    assert issubclass(RequestTimeoutError, TimeoutError)
    for cls in (AuthenticationError, NotFoundError, InvalidRequestError, RateLimitedError, ServerError):
        assert issubclass(cls, APIError)
    for cls in (TransportError, APIError, DecodeError, CoordinationError, SyncError):
        assert issubclass(cls, AirudderError)
    for cls in (DatabaseLockedError, SchemaVersionError):
        assert issubclass(cls, SyncError)


@given(st.integers(min_value=100, max_value=599), st.binary(max_size=200))
def test_interpret_never_leaks_other_exceptions(status: int, raw: bytes) -> None:
    """Any status and body give an envelope or an AirudderError, nothing else."""
    with contextlib.suppress(AirudderError):
        interpret(status, {}, raw)


def test_secret_spanning_the_body_cut_is_scrubbed_first() -> None:
    """A secret crossing the 2,000-character cut of an error body leaves no visible prefix."""
    secret = "tok-0123456789abcdef"
    raw = ("x" * 1990 + secret + "y" * 100).encode()
    with pytest.raises(ServerError) as info:
        interpret(502, {}, raw, secrets=[secret])
    shown = str(info.value.body)
    assert "tok-0123" not in shown
    assert shown.startswith("x" * 1990 + "***")
