"""
The pure protocol rules, tested with plain values: no socket, no event loop.
"""

from __future__ import annotations

import json
import math
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airudder_async import _json
from airudder_async._auth import token_from
from airudder_async._config import RetryPolicy
from airudder_async._convert import rows, structure_items
from airudder_async._protocol import (
    REDACT_DEPTH,
    REDACT_NODES,
    TEXT_LIMIT,
    backoff_delay,
    clip,
    describe,
    error_for,
    parse_retry_after,
    redact,
    redact_text,
    refusal_key,
    retry_delay,
    retry_reason,
    slows_everyone,
)
from airudder_async._time import format_time, parse_time
from airudder_async.errors import (
    AirudderError,
    APIError,
    AuthenticationError,
    DecodeError,
    InvalidRequestError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from airudder_async.models import Workflow
from tests.support import run_fresh

POLICY = RetryPolicy(attempts=4, backoff_initial=1.0, backoff_max=8.0, retry_after_max=60.0)


def half() -> float:
    """A fixed 'random' draw, so backoff is exact."""
    return 0.5


# -- the one refusal rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "key"),
    [(200, 500, 500), (200, None, 200), (204, 429, 429), (503, 200, 503), (429, None, 429), (302, 401, 302)],
)
def test_refusal_key_is_code_on_2xx_else_status(status: int, code: int | None, key: int) -> None:
    """A refusal is judged by the envelope code on a 2xx that has one, otherwise by the HTTP status."""
    assert refusal_key(status, code) == key


def test_error_for_and_retry_delay_agree_on_the_key() -> None:
    """The class an answer maps to and whether it is retried follow the same key."""
    err = error_for(status=200, code=503, envelope_status="ERROR", message="m", body=None)
    assert isinstance(err, ServerError)
    assert retry_delay(err, POLICY, 1, True, rand=half) == 0.5
    err = error_for(status=503, code=400, envelope_status="ERROR", message="m", body=None)
    assert isinstance(err, ServerError)  # a 5xx status wins over an envelope code
    err = error_for(status=200, code=400, envelope_status="ERROR", message="m", body=None)
    assert isinstance(err, InvalidRequestError)
    assert retry_delay(err, POLICY, 1, True, rand=half) is None


# -- the retry decision --------------------------------------------------------------------------------


def api(status: int, *, code: int | None = None, retry_after: float | None = None) -> APIError:
    """An APIError as `interpret()` would build it."""
    return error_for(
        status=status, code=code, envelope_status=None, message="m", body=None, retry_after=retry_after
    )


@pytest.mark.parametrize(
    ("error", "attempt", "may_retry", "expected"),
    [
        (api(503), 1, True, 0.5),  # backoff: initial * 2^0 * 0.5
        (api(503), 3, True, 2.0),  # initial * 2^2 * 0.5
        (api(503), 4, True, None),  # the last attempt
        (api(503), 1, False, None),  # not safe to repeat
        (api(400), 1, True, None),  # not a retry status
        (api(429, retry_after=7.0), 1, True, 7.0),  # Retry-After is the wait
        (api(429, retry_after=61.0), 1, True, None),  # longer than retry_after_max: stop at once
        (api(200, code=429), 2, True, 1.0),  # an envelope code on a 2xx counts
        (TransportError("reset"), 2, True, 1.0),
        (RequestTimeoutError("slow"), 1, True, 0.5),
        (DecodeError("bad"), 1, True, None),  # neither transport nor answer: never retried
        (api(401), 1, True, None),
    ],
)
def test_retry_delay(error: AirudderError, attempt: int, may_retry: bool, expected: float | None) -> None:
    """retry_delay() gives the wait before the next attempt, or None to stop, from plain values."""
    assert retry_delay(error, POLICY, attempt, may_retry, rand=half) == expected


def test_retry_delay_respects_transport_switch_and_backoff_cap() -> None:
    """Transport failures stop when the policy says so; the backoff never exceeds backoff_max."""
    no_transport = RetryPolicy(retry_transport_errors=False)
    assert retry_delay(TransportError("x"), no_transport, 1, True) is None
    many = RetryPolicy(attempts=10_000, backoff_initial=1.0, backoff_max=8.0)
    assert retry_delay(api(503), many, 5000, True, rand=lambda: 1.0) == 8.0


@given(st.integers(min_value=1, max_value=10**6), st.floats(min_value=0, max_value=1))
def test_backoff_is_bounded_for_any_attempt(retry: int, draw: float) -> None:
    """Full-jitter backoff stays within [0, backoff_max] for any retry number (no overflow)."""
    delay = backoff_delay(POLICY, retry, rand=lambda: draw)
    assert 0.0 <= delay <= POLICY.backoff_max


@pytest.mark.parametrize(
    ("error", "reason", "slows", "slows_adaptive"),
    [
        (api(429), "429", True, False),
        (api(429, retry_after=0.5), "429", True, True),
        (api(503, retry_after=2.0), "503", True, True),
        (api(503), "503", False, False),
        (api(200, code=500), "code 500", False, False),
        (RequestTimeoutError("t"), "timeout", False, False),
        (TransportError("t"), "transport", False, False),
    ],
)
def test_retry_reason_and_shared_slowdown(
    error: AirudderError, reason: str, slows: bool, slows_adaptive: bool
) -> None:
    """
    Retries are counted by one reason name; a 429 or any Retry-After pauses every task, except that
    adaptive pacing answers a bare 429 by cutting its pace (a Retry-After is obeyed either way).
    """
    assert retry_reason(error) == reason
    assert slows_everyone(error) is slows
    assert slows_everyone(error, adaptive=True) is slows_adaptive


# -- Retry-After ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("inf", None),
        ("nan", None),
        ("1e400", None),
        ("", None),
        ("soon", None),
        ("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", None),  # OverflowError in the stdlib
        ("Wed, 02 Dec 2026 18:00:10 GMT", 10.0),
        ("Wed, 02 Dec 2026 17:00:00 GMT", 0.0),
        ("9" * 100, None),  # longer than any sane header: ignored without parsing
    ],
)
def test_parse_retry_after(header: str, expected: float | None) -> None:
    """Both Retry-After forms parse; hostile or absurd values mean 'no usable header', never an exception."""
    now = datetime(2026, 12, 2, 18, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == expected


@given(st.text(max_size=80))
def test_parse_retry_after_never_raises(header: str) -> None:
    """Any header text gives a finite, non-negative wait or None."""
    value = parse_retry_after(header)
    assert value is None or (math.isfinite(value) and value >= 0)


# -- redaction and bounded text ------------------------------------------------------------------------

SECRET = "s3cr3t-app-secret"
TOKEN = "tok-0123456789abcdef"


def test_redact_scrubs_keys_and_is_depth_bounded() -> None:
    """Secrets are scrubbed from dict keys too, and nesting past REDACT_DEPTH is replaced, not recursed."""
    out = redact({f"k-{TOKEN}": {"note": SECRET}}, [SECRET, TOKEN])
    assert out == {"k-***": {"note": "***"}}
    deep: object = "leaf"
    for _ in range(5000):  # deeper than the interpreter's recursion limit
        deep = [deep]
    shown = redact(deep, [SECRET])
    levels = 0
    while isinstance(shown, list):
        shown, levels = shown[0], levels + 1
    assert levels == REDACT_DEPTH
    assert isinstance(shown, str)
    assert "nested deeper" in shown


def test_redact_text_scrubs_before_clipping() -> None:
    """A secret straddling the cut is masked whole, and the result is bounded."""
    text = "x" * (TEXT_LIMIT - 3) + TOKEN + "y" * 10_000
    shown = redact_text(text, [TOKEN])
    assert "tok-" not in shown
    assert len(shown) < TEXT_LIMIT + 64
    assert "cut from" in shown
    assert redact_text("short " + TOKEN, [TOKEN, None, "ab"]) == "short ***"


def test_clip_and_describe_are_bounded() -> None:
    """Server values are described in a bounded way, never by a deep or huge repr."""
    assert clip("abc", 5) == "abc"
    assert clip("a" * 10, 4).startswith("aaaa…")
    assert describe(None) == "None"
    assert describe(True) == "True"
    assert describe(12) == "12"
    assert describe(10**200) == "an integer of 665 bits"
    assert len(describe("z" * 10**6)) < 100
    assert describe([[[]]]) == "a JSON list"


# -- JSON bounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "exceeds"),
    [
        (b'{"a":[1,{"b":[]}]}', False),
        (b"[" * 5 + b"]" * 5, False),
        (b"[" * 6 + b"]" * 6, True),
        (b'["[[[[[[[[", "]]]"]', False),  # brackets inside strings do not count
        (b'{"k\\"[[[[[[": 1}', False),  # nor after an escaped quote
        (b'["\\\\", [[[[[]]]]]]', True),  # an escaped backslash ends before the quote
        (b"[[[}}}", False),  # mismatched kinds: left to the parser, which refuses them
        (b"[" * 6, True),  # never closed, still too deep for the parser to recurse into
        (b"", False),
    ],
)
def test_depth_exceeds(doc: bytes, exceeds: bool) -> None:
    """The depth scan counts only structural brackets, at a limit of 5 here."""
    assert _json.depth_exceeds(doc, 5) is exceeds


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c, max_size=3)))
def test_depth_scan_matches_the_real_depth(value: object) -> None:
    """For any JSON value the scan agrees with the true nesting depth."""

    def depth(v: object) -> int:
        return 1 + max((depth(x) for x in v), default=0) if isinstance(v, list) else 0

    doc = json.dumps(value).encode()
    real = depth(value)
    assert _json.depth_exceeds(doc, real) is False
    if real:
        assert _json.depth_exceeds(doc, real - 1) is True


@pytest.mark.parametrize("depth", [_json.MAX_DEPTH + 1, 100_000])
def test_deep_json_is_refused_explicitly(depth: int) -> None:
    """Nesting past MAX_DEPTH is a JSONDecodeError on every backend, not a RecursionError."""
    with pytest.raises(_json.JSONDecodeError) as info:
        _json.loads(b"[" * depth + b"]" * depth)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_lone_surrogate_decodes_the_same_on_both_backends() -> None:
    """orjson refuses a lone surrogate escape; the stdlib accepts it, and so does the package."""
    assert _json.loads(b'{"name": "\\ud800"}') == {"name": "\ud800"}


def test_depth_limit_is_the_same_without_orjson() -> None:
    """Without orjson, the same depth limit applies whatever the interpreter's recursion limit."""
    script = (
        "import sys; sys.modules['orjson'] = None\n"
        "from airudder_async import _json\n"
        "assert not _json.HAS_ORJSON\n"
        "ok = _json.MAX_DEPTH - 50\n"
        "try:\n"
        "    _json.loads(b'[' * ok + b']' * ok)\n"
        "except _json.JSONDecodeError as e:\n"
        "    assert 'interpreter' in str(e), e  # a shallow recursion limit: still typed\n"
        "for bad in (b'[' * 100000 + b']' * 100000, b'{\"a\": 1', '\"\\\\ud800\"'.encode()):\n"
        "    try:\n"
        "        _json.loads(bad)\n"
        "    except _json.JSONDecodeError:\n"
        "        pass\n"
        "print('ok')\n"
    )
    assert run_fresh(script).strip() == "ok"


# -- times ---------------------------------------------------------------------------------------------


def test_format_time_styles() -> None:
    """One formatter: ISO with Z, UTC seconds, and the documented request form."""
    t = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=timezone(timedelta(hours=7)))
    assert format_time(t) == "2026-01-02T03:04:05.000600+07:00"
    assert format_time(t.astimezone(UTC)) == "2026-01-01T20:04:05.000600Z"
    assert format_time(t, "utc") == "2026-01-01T20:04:05Z"
    assert format_time(t, "wire") == "2026-01-02 03:04:05+07:00"


def test_wire_time_with_second_offset_becomes_utc() -> None:
    """An offset with seconds (+05:00:30) cannot be written as +HH:MM, so the wire form is UTC."""
    t = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=5, seconds=30)))
    assert format_time(t, "wire") == "2026-01-01 06:59:30+00:00"


def test_times_outside_utc_range_are_value_errors() -> None:
    """A time with no UTC equivalent (year 1, east of UTC) is a ValueError, not an OverflowError."""
    t = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(ValueError, match="outside the range"):
        format_time(t, "utc")
    assert format_time(t) == "0001-01-01T00:00:00+01:00"


def test_parse_time() -> None:
    """The one parser: offsets, Z, a space, naive as UTC or refused, non-strings as TypeError."""
    assert parse_time("2022-12-12 12:34:56+07:00").utcoffset() == timedelta(hours=7)
    assert parse_time("2022-12-12T12:34:56Z").tzinfo is UTC or parse_time(
        "2022-12-12T12:34:56Z"
    ).utcoffset() == timedelta(0)
    assert parse_time("2022-12-12T12:34:56").tzinfo is UTC
    with pytest.raises(ValueError, match="offset"):
        parse_time("2022-12-12T12:34:56", assume_utc=False)
    with pytest.raises(TypeError):
        parse_time(5)


# -- the pure core imports no I/O library --------------------------------------------------------------


def test_pure_modules_import_neither_aiohttp_nor_anyio() -> None:
    """`import airudder_async._protocol` (and the other pure modules) loads neither aiohttp nor anyio."""
    script = (
        "import sys\n"
        "import airudder_async._protocol, airudder_async._time, airudder_async._json\n"
        "import airudder_async.errors, airudder_async.models, airudder_async._config\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'anyio'))\n"
        "print(bad)\n"
    )
    assert run_fresh(script).strip() == "[]"


def test_errors_from_error_for_pickle() -> None:
    """Every class error_for() builds survives pickling (a worker pool may carry it)."""
    for status in (401, 404, 429, 500, 418, 302):
        err = api(status)
        assert type(pickle.loads(pickle.dumps(err))) is type(err)
    assert isinstance(api(403), AuthenticationError)
    assert isinstance(api(429), RateLimitedError)


# -- the remaining branches of the pure helpers ---------------------------------------------------------


def test_depth_scan_falls_back_to_one_linear_pass_for_crafted_input() -> None:
    """A comb whose teeth survive the peeling rounds is measured by the linear pass, both ways."""
    tooth = b"[" * 9 + b"]" * 9
    deep_comb = (b"[" + tooth) * 25 + b"]" * 25  # 34 levels, no run of more than 10 opening brackets
    assert _json.depth_exceeds(deep_comb, 20) is True
    shallow = b"[" * 15 + b"]" * 15  # 15 levels: too long to skip, too shallow to fail
    assert _json.depth_exceeds(shallow, 20) is False


def test_stdlib_decoder_paths() -> None:
    """The stdlib decoder refuses deep and malformed documents with a short, chain-free JSONDecodeError."""
    for bad, reason in [(b"[" * 2000 + b"]" * 2000, "deeper"), (b'{"a": 1', "delimiter"), (b"\xff", "codec")]:
        with pytest.raises(_json.JSONDecodeError, match=reason) as info:
            _json._stdlib_loads(bad)
        assert info.value.__context__ is None
    assert _json._stdlib_dumps({"a": "é"}) == '{"a":"é"}'.encode()


def test_stdlib_decoder_recursion_limit_is_typed() -> None:
    """Where the interpreter's own limit is lower than MAX_DEPTH (3.11), the failure is still typed."""
    doc = b"[" * 1020 + b"]" * 1020
    try:
        value = _json._stdlib_loads(doc)
    except _json.JSONDecodeError as exc:
        assert "interpreter" in str(exc)
    else:
        assert isinstance(value, list)


def test_retry_after_date_without_zone_is_utc() -> None:
    """An HTTP date with a `-0000` zone (no zone information) is read as UTC."""
    now = datetime(2026, 12, 2, 18, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 02 Dec 2026 18:00:10 -0000", now=now) == 10.0


def test_retry_after_date_counts_whole_seconds() -> None:
    """An HTTP date has a resolution of a second: the wait until it is whole seconds, rounded up, never
    a fraction that only says where in the current second the clock is (adaptive pacing would read a
    sub-second wait as a token bucket's time to its next token)."""
    now = datetime(2026, 12, 2, 18, 0, 0, 300_000, tzinfo=UTC)
    assert parse_retry_after("Wed, 02 Dec 2026 18:00:01 GMT", now=now) == 1.0
    assert parse_retry_after("Wed, 02 Dec 2026 18:00:10 GMT", now=now) == 10.0
    assert parse_retry_after("Wed, 02 Dec 2026 18:00:00 GMT", now=now) == 0.0


def test_auth_answer_without_a_token_is_a_decode_error() -> None:
    """An auth answer whose data has no usable token is a DecodeError naming `data.token`."""
    for data in ({}, {"token": ""}, {"token": 5}, [], None):
        with pytest.raises(DecodeError) as info:
            token_from(data)
        assert info.value.field_path == "data.token"
        assert (info.value.method, info.value.path) == ("POST", "/service/cloud/auth")
    assert token_from({"token": "t"}) == "t"


def test_rows_and_items_of_undocumented_shapes() -> None:
    """Rows come from a list `data` or its known keys; a list item that is not an object is a DecodeError."""
    assert rows([{"a": 1}, 2], whole=False) == ({"a": 1},)
    assert rows({"records": [{"b": 1}]}, whole=False) == ({"b": 1},)
    assert rows({"x": 1}, whole=True) == ({"x": 1},)
    assert rows("text", whole=True) == ()
    with pytest.raises(DecodeError) as info:
        structure_items(Workflow, [1], "data.lists")
    assert info.value.field_path == "data.lists[0]"
    assert "expected an object" in str(info.value)


def test_redact_is_bounded_in_width_and_length() -> None:
    """A wide or long error body keeps at most REDACT_NODES values and TEXT_LIMIT characters per string."""
    wide_dict = redact({f"k{i}": i for i in range(5000)})
    assert isinstance(wide_dict, dict)
    assert len(wide_dict) <= REDACT_NODES + 1
    assert wide_dict["…"] == f"({5000 - REDACT_NODES + 1} more keys)"
    wide_list = redact([[i] for i in range(5000)])
    assert isinstance(wide_list, list)
    assert wide_list[-1] == f"…({5000 - REDACT_NODES // 2} more values)"
    long = redact({"note": "x" * 100_000 + SECRET}, [SECRET])
    assert isinstance(long, dict)
    assert len(long["note"]) < TEXT_LIMIT + 64
    assert redact(10**400) == describe(10**400)
    assert redact({"n": True, 1: "a"}) == {"n": True, 1: "a"}
