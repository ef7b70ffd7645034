"""
The msgspec page decoder against the reference path (`interpret()` + `parse_page()`): same results, or a
refusal that leaves the body to the reference, which raises.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airudder_async import _json
from airudder_async._convert import decode_page, digit_run, parse_page, peek_page
from airudder_async._protocol import interpret
from airudder_async.errors import DecodeError
from airudder_async.testing import FakeAirudder, make_workflows

pytestmark = pytest.mark.anyio

ROW: dict[str, object] = {
    "workflow_id": "37b19c21b9cf482bb8100001",
    "name": "test-2",
    "template_name": "sms-txx-test",
    "start_time": "2022-10-09T07:02:40Z",
    "end_time": "2022-12-12 12:34:56+07:00",
    "total": 1,
    "status": "cancelled",
    "create_time": "2022-10-09T07:02:40",
}


def envelope(lists: object, count: object = 100, **extra: object) -> dict[str, object]:
    """An instancelist answer around *lists*."""
    return {"code": 200, "status": "OK", "data": {"count": count, "lists": lists}, **extra}


def encode(doc: object, *, ascii_only: bool = True) -> bytes:
    """JSON bytes as a vendor might send them; lone surrogates survive only as escapes."""
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def reference(body: bytes) -> tuple[object, ...]:
    """What the cattrs path makes of *body*: the workflows (by repr, so time zones count) or the error."""
    try:
        items, count = parse_page(interpret(200, {}, body)["data"])
    except DecodeError as exc:
        return ("error", type(exc), exc.field_path)
    except Exception as exc:  # an APIError for an envelope that is not a success
        return ("error", type(exc), None)
    return ("ok", repr(items), count)


def client_path(body: bytes) -> tuple[object, ...]:
    """
    What the client makes of *body*: the request reads the envelope (`peek_page()`, else the reference
    decides), then the walk decodes the page (`parse_page()`: msgspec when it reads as the reference).
    """
    page = peek_page(body)
    if page is None:
        return reference(body)
    try:
        items, count = parse_page(page)
    except DecodeError as exc:
        return ("error", type(exc), exc.field_path)
    return ("ok", repr(items), count)


def test_vendor_shapes_take_the_fast_path() -> None:
    """A page with Z, offset, space-separated and offset-less times decodes in msgspec, times aware."""
    body = encode(envelope([ROW, dict(ROW, start_time=None, unknown={"x": [1, 2]})], count=7))
    page = decode_page(body)
    assert page is not None
    assert client_path(body) == reference(body)
    items, count = page
    assert count == 7
    assert items[0].create_time == datetime(2022, 10, 9, 7, 2, 40, tzinfo=UTC)
    assert items[0].create_time.tzinfo is UTC
    assert items[1].start_time is None
    assert parse_page(peek_page(body)) == (items, 7)


def test_a_lowercase_t_separator_takes_the_fast_path() -> None:
    """`t` between date and time reads the same in msgspec and in fromisoformat: no reason to refuse."""
    for end in ("2022-10-09t07:02:40Z", "2022-10-09t07:02:40+07:00", "2022-10-09t07:02:40"):
        body = encode(envelope([dict(ROW, end_time=end)]))
        assert decode_page(body) is not None, end
        assert client_path(body) == reference(body)
    body = encode(envelope([dict(ROW, end_time="2022-10-09t07:02")]))  # msgspec wants the seconds
    assert decode_page(body) is None
    assert client_path(body) == reference(body)


def test_an_escape_spelling_a_quirk_is_refused() -> None:
    """`\\u007a` is a `z` only once decoded: the scan refuses any low escape rather than decode them."""
    body = encode(envelope([dict(ROW, end_time="2022-10-09T07:02:40Z")])).replace(b"40Z", b"40\\u007a")
    assert b"\\u007a" in body
    assert decode_page(body) is None
    assert client_path(body) == reference(body)


def test_synthetic_pages_take_the_fast_path() -> None:
    """A page of FakeAirudder's workflows and an empty page decode in msgspec exactly as the reference."""
    for lists in (make_workflows(200), [], None):
        body = encode(envelope(lists), ascii_only=False)
        assert decode_page(body) is not None
        assert client_path(body) == reference(body)


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        (envelope([dict(ROW, end_time="2022-10-09T07:02:40z")]), "lowercase z"),
        (envelope([dict(ROW, end_time="2022-10-09T07:02:40.1234567Z")]), "7 fraction digits"),
        (envelope([dict(ROW, total=2**64)]), "orjson reads it as a float"),
        (envelope([dict(ROW, total=-(2**63) - 1)]), "orjson reads it as a float"),
        (envelope([ROW], count=-1), "count below 0"),
        (envelope([ROW], count=2**63), "count above 2**63-1"),
        (envelope([{k: v for k, v in ROW.items() if k != "start_time"}]), "missing optional field"),
        (envelope([True]), "a row that is no object"),
        (envelope({"a": 1}), "lists that is no list"),
        (envelope([dict(ROW, name="\ud800")]), "a lone surrogate"),
        (envelope([ROW], x=[[[[]]]] * 400), "more brackets than levels"),
        ({"code": 200.0, "status": "OK", "data": {"count": 1, "lists": [ROW]}}, "code 200.0"),
        ({"code": 500, "status": "OK", "data": {"count": 1, "lists": [ROW]}}, "code 500"),
        ({"code": 200, "status": "OK"}, "no data"),
    ],
)
def test_refusals_leave_the_body_to_the_reference(doc: object, why: str) -> None:
    """Bodies msgspec would read differently or refuse go to the reference path, whatever it decides."""
    body = encode(doc)
    if why == "more brackets than levels":
        assert decode_page(body) is not None  # counted, scanned, and within the bounds
    else:
        assert decode_page(body) is None, why
    assert client_path(body) == reference(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"code":200,"status":"OK","data":{"count":0,"lists":[]},"x":"\xff"}',
        b'{"code":200,"status":"OK","data":{"count":0,"lists":[]},"x":' + b"[" * 1025 + b"]" * 1025 + b"}",
        b'{"code":200,"status":"OK","data":{"count":0,"lists":[]},"x":' + b"1" * 4301 + b"}",
        b'{"code":200,"status":"OK","data":{"count":0,"lists":[]},"x":' + b"[" * 2000 + b"]" * 2000 + b"}",
    ],
    ids=["invalid utf-8", "1025 levels", "4301 digits", "2000 levels"],
)
def test_what_only_msgspec_skips_is_refused(body: bytes) -> None:
    """
    Bodies the reference refuses but msgspec would skip through (unknown fields) are not taken, already
    by the request's look at the envelope: the error is the request's, as on the reference path.
    """
    assert peek_page(body) is None
    assert decode_page(body) is None
    assert reference(body)[:2] == ("error", DecodeError)
    assert client_path(body) == reference(body)
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # msgspec's own depth bound is the interpreter's: it skips deeper then
    try:
        assert peek_page(body) is None
        assert client_path(body) == reference(body)
    finally:
        sys.setrecursionlimit(before)


def test_a_pending_page_the_reference_cannot_read_is_a_clean_decode_error() -> None:
    """The walk's fallback for a page msgspec refuses raises a DecodeError with nothing chained to it."""
    page = peek_page(encode(envelope([ROW])))
    assert page is not None
    # Never made by peek_page(): a body the reference cannot read, with data msgspec refuses.
    body = b'{"code": 200, "status": "OK", "data": '
    broken = page._replace(body=body, data=msgspec.Raw(b'{"count": "7"}'))
    with pytest.raises(DecodeError, match="not JSON") as info:
        parse_page(broken)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_a_peeked_page_shows_its_size_not_its_contents() -> None:
    """The page a request hands to the walk has a short repr (it is kept in slots, seen in debuggers)."""
    body = encode(envelope([ROW]))
    page = peek_page(body)
    assert page is not None
    assert repr(page) == f"<PendingPage {len(body):,} bytes>"


def test_unlimited_int_digits_skip_that_check() -> None:
    """With the stdlib's digit limit off, a long integer in an unknown field is no reason to refuse."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        body = b'{"code":200,"status":"OK","data":{"count":1,"lists":[]},"x":' + b"1" * 5000 + b"}"
        assert decode_page(body) == ([], 1)
    finally:
        sys.set_int_max_str_digits(before)


def test_non_ascii_bodies_decode() -> None:
    """Valid UTF-8 beyond ASCII decodes in msgspec, to the same strings as the reference."""
    body = encode(envelope([dict(ROW, name="工作流 é 😀")]), ascii_only=False)
    assert decode_page(body) is not None
    assert client_path(body) == reference(body)


def test_duplicate_keys_agree() -> None:
    """A repeated key means its last value, in msgspec as in the reference."""
    row = json.dumps(ROW)[:-1]
    for extra in ('"total": "x", "total": 5', '"total": 5, "total": "x"', '"start_time": null'):
        lists = f"[{row}, {extra}}}]"
        body = f'{{"code": 200, "status": "OK", "data": {{"count": 1, "lists": {lists}}}}}'.encode()
        assert client_path(body) == reference(body)


# -- properties ---------------------------------------------------------------------------------------


@st.composite
def time_texts(draw: st.DrawFn) -> str:
    """A time as a vendor might write it: `T`/`t`/space, 0 to 8 fraction digits, `Z`/`z`/offset/none."""
    when = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    text = when.replace(microsecond=0).isoformat(sep=draw(st.sampled_from("TTT  t")))
    digits = draw(st.sampled_from([0, 0, 0, 1, 3, 6, 6, 7, 8]))
    if digits:
        text += "." + f"{when.microsecond:06d}{draw(st.integers(0, 99)):02d}"[:digits]
    hours, minutes = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    sign = draw(st.sampled_from("+-"))
    return text + draw(
        st.sampled_from(["", "Z", "Z", "Z", "z", f"{sign}{hours:02d}:{minutes:02d}", f"{sign}{hours:02d}"])
    )


TIMES = st.one_of(
    time_texts(),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9:.]{0,12})?([Zz]|[+-][0-9:]{0,5})?\Z"),
    st.none(),
    st.integers(),
    st.text(max_size=30),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.floats(allow_nan=False),
    st.text(),
    st.sampled_from(["\ud800", "a\udc00b", "\ud83d\ude00"]),
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner))
VALID = {
    "workflow_id": st.text(),
    "name": st.text(),
    "template_name": st.text(),
    "start_time": time_texts() | st.none(),
    "end_time": time_texts() | st.none(),
    "total": st.integers(),
    "status": st.sampled_from(["finished", "cancelled", "new"]),
    "create_time": time_texts(),
}


def mostly(
    valid: st.SearchStrategy[object], other: st.SearchStrategy[object], odds: int = 9
) -> st.SearchStrategy[object]:
    """*valid* *odds* times to 1, else *other*: most pages hold a surprise or two, not only surprises."""
    return st.integers(0, odds).flatmap(lambda n: valid if n else other)


@st.composite
def rows(draw: st.DrawFn) -> object:
    """A row: mostly an object of the 8 fields (some missing or of a wrong type), sometimes anything."""
    if draw(st.integers(0, 19)) == 0:
        return draw(JSON)
    row: dict[str, object] = {}
    for name, valid in VALID.items():
        if draw(st.integers(0, 29)):
            row[name] = draw(mostly(valid, TIMES if name.endswith("_time") else SCALARS, odds=29))
    row.update(draw(st.dictionaries(st.text(max_size=5), JSON, max_size=2)))
    return row


@st.composite
def pages(draw: st.DrawFn) -> bytes:
    """An instancelist answer body with arbitrary rows, a sometimes odd envelope, in either encoding."""
    lists = draw(mostly(st.lists(rows(), max_size=4), st.none() | JSON))
    data: dict[str, object] = {"count": draw(mostly(st.integers(0, 2**63 - 1), st.integers() | SCALARS))}
    if draw(st.integers(0, 9)):
        data["lists"] = lists
    doc: dict[str, object] = {
        "code": draw(mostly(st.just(200), st.sampled_from([500, 200.0, "200"]))),
        "status": draw(mostly(st.just("OK"), st.sampled_from(["ok", "FAIL"]))),
        "data": draw(mostly(st.just(data), JSON)),
    }
    doc.update(draw(st.dictionaries(st.text(max_size=5), JSON, max_size=2)))
    return encode(doc, ascii_only=draw(st.booleans()))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(pages())
def test_arbitrary_pages_agree(body: bytes) -> None:
    """On arbitrary pages the client path and the reference give equal workflows or equal errors and paths."""
    assert client_path(body) == reference(body)


@settings(max_examples=600)
@given(st.lists(st.tuples(time_texts(), time_texts() | st.none(), time_texts()), min_size=1, max_size=2))
def test_arbitrary_times_agree(times: list[tuple[str, str | None, str]]) -> None:
    """Every time msgspec takes reads as fromisoformat reads it (no offset meaning UTC), tzinfo included."""
    lists = [dict(ROW, create_time=c, start_time=s, end_time=e) for c, s, e in times]
    body = encode(envelope(lists))
    assert client_path(body) == reference(body)


# -- through the client, and without msgspec -------------------------------------------------------------


async def test_walk_through_the_client_matches_the_server() -> None:
    """A walk decoded by msgspec yields exactly the server's workflows."""
    async with FakeAirudder(workflows=450) as fake, fake.client() as client:
        got = [w.to_dict() async for w in client.iter_workflows(page_size=200)]
        page = await client.list_workflows(page=1, size=3)
    assert got == fake.workflows
    assert [w.to_dict() for w in page.items] == fake.workflows[:3]


WITHOUT_MSGSPEC = textwrap.dedent(
    """
    import sys
    sys.modules["msgspec"] = None  # make `import msgspec` fail, as on an install without the extra
    import anyio
    from airudder_async._convert import decode_page
    from airudder_async.testing import FakeAirudder

    assert decode_page(b'{"code":200,"status":"OK","data":{"count":0}}') is None

    async def main():
        async with FakeAirudder(workflows=450) as fake, fake.client() as client:
            ids = [w.workflow_id async for w in client.iter_workflows(page_size=100)]
        assert ids == fake.workflow_ids(), "walk differs"
        print("ok", len(ids))

    anyio.run(main)
    """
)


@pytest.mark.parametrize("blocked", [["msgspec"], ["msgspec", "orjson"]])
def test_without_msgspec_the_reference_path_walks(blocked: list[str]) -> None:
    """Without msgspec (and without orjson too) the package uses the cattrs path and a walk still matches."""
    code = "".join(f"import sys; sys.modules[{name!r}] = None\n" for name in blocked) + WITHOUT_MSGSPEC
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok 450"


def test_depth_exceeds_counts_brackets_first() -> None:
    """A document with no more opening brackets than the limit is never too deep, strings included."""
    assert _json.depth_exceeds(b'["[[[["]', 2) is False
    assert _json.depth_exceeds(b"[[[]]]", 2) is True


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"0", b"7", b"9", b"x", b"[", b"{", b'"', b"/", b":"]), max_size=60).map(
        b"".join
    ),
    length=st.integers(1, 12),
)
def test_digit_run_agrees_with_a_search_of_the_whole_body(data: bytes, length: int) -> None:
    """Sampling every *length*-th byte finds a run of *length* digits exactly when a full search does."""
    naive = b"0" * length in data.translate(bytes.maketrans(b"123456789", b"000000000"))
    assert digit_run(data, length) is naive


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b"1234", True),  # the whole body, from its first byte to its last
        (b"x1234", True),
        (b"1234x", True),
        (b"123x4", False),
        (b"12/34", False),  # "/" and ":" sit on either side of the digits in ASCII
        (b"12:34", False),
        (b"", False),
    ],
)
def test_digit_run_edges(data: bytes, found: bool) -> None:
    """Runs at either end of the body count; the bytes next to the digits in ASCII do not."""
    assert digit_run(data, 4) is found


@given(st.binary(max_size=80))
def test_openings_counts_both_brackets(data: bytes) -> None:
    """The memchr count of opening brackets equals a plain count."""
    assert _json.openings(data) == data.count(b"[") + data.count(b"{")
