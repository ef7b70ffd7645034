"""
Every wire-to-model conversion: the private cattrs converter, the fast path for list answers,
the instancelist page, and the rows of the answers whose shape is undocumented.

Wire names live here only (times go through `_time.py`). The converter tolerates unknown fields
(vendors add fields). For the hot path (hundreds of workflows per page) a generated hook fills a
frozen, slotted instance (`_builder()`); any surprise in the data sends the item
through cattrs' detailed validation, whose error names the field path. Measured by
benchmarks/run.py: about 1.0 µs per workflow against 2.2 µs for cattrs' own generated hook on the
same frozen class.

With the `msgspec` extra, an instancelist answer body becomes the models in two C passes: the
request reads its envelope (`peek_page()`), the walk decodes its `data` (`parse_page()` of the
`PendingPage`) after refilling its window; `decode_page()` does both at once.
benchmarks/decode_paths.py: about 1.3-1.6 µs per workflow against 2.2 µs for orjson,
`interpret()` and the fast hook; msgspec itself takes 0.7 µs, the rest is the scan that keeps the
semantics equal. It only accepts what the path above accepts, with the same result, and returns None
for anything else, so the caller runs the path above, which stays the reference and raises the errors.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, TypeVar, get_args

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from ._json import depth_exceeds
from ._protocol import NotJSON, clip, decode_body, describe
from ._time import format_time, parse_time
from .errors import DecodeError
from .models import Workflow

__all__ = [
    "PendingPage",
    "converter",
    "decode_page",
    "ids_in",
    "parse_page",
    "peek_page",
    "rows",
    "str_or_none",
    "structure_items",
]

T = TypeVar("T")


def _strict_str(value: object, _type: object) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _type: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


@functools.cache
def converter() -> cattrs.Converter:
    """
    The converter of record: cattrs' JSON preset, unknown fields tolerated, strict `str` and `int`,
    times through `_time.py`, and `Workflow` through the fast hook below.

    Built on first use: only an item the fast path refuses needs it (`_explain()`), so importing the
    client does not pay for the preset (about 2 ms of import time).
    """
    from cattrs.preconf.json import make_converter

    conv = make_converter(forbid_extra_keys=False)
    conv.register_structure_hook(datetime, lambda value, _type: parse_time(value))
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_unstructure_hook(datetime, format_time)
    conv.register_structure_hook(Workflow, lambda d, _t: _fast_for(Workflow)(d))
    return conv


_SIMPLE = {str: "str", int: "int"}


def _builder(cls: Any) -> type[Any] | None:
    """
    A mutable class with *cls*'s slot layout, or None where CPython refuses to swap the two.

    An instance is filled by plain attribute stores (a specialised bytecode, about 10 ns each, where
    a frozen class's slot descriptor costs about 60 ns a call) and then becomes a *cls* by `__class__`
    assignment, which CPython allows between heap types of the same layout. On CPython 3.11 a class
    with a `__weakref__` slot never qualifies (it counts the slots without it; 3.12 fixed that), so
    `Workflow` has none; a class with slots of its bases never does.
    """
    builder = type(f"_{cls.__name__}Builder", (), {"__slots__": cls.__slots__})
    try:
        object.__new__(builder).__class__ = cls
    except TypeError:
        return None
    return builder


def _fast_hook(cls: Any) -> Callable[[Any], Any]:
    """
    Generate a structure function for a slotted attrs class of str, int and (optional) datetime fields.

    The instance is built as a `_builder()` and turned into a *cls* at the end, or, for a class
    without one, filled through its slot descriptors. Either way a half-built object never escapes:
    any surprise raises before the end.
    """
    attrs.resolve_types(cls)
    builder = _builder(cls)
    lines = ["def structure(d):", "    o = new(builder)" if builder else "    o = new(cls)"]
    ns: dict[str, Any] = {
        "new": object.__new__,
        "cls": cls,
        "builder": builder,
        "fromiso": datetime.fromisoformat,
        "UTC": UTC,
    }
    for i, field in enumerate(attrs.fields(cls)):
        optional = type(None) in get_args(field.type)
        kind = next(t for t in (get_args(field.type) or (field.type,)) if t is not type(None))
        get = f"d.get({field.name!r})" if optional else f"d[{field.name!r}]"
        lines.append(f"    v = {get}")
        indent = "    "
        if optional:
            lines.append("    if v is not None:")
            indent = "        "
        if kind is datetime:
            lines.append(f"{indent}v = fromiso(v)")  # a TypeError itself for anything but a str
            lines.append(f"{indent}if v.tzinfo is None: v = v.replace(tzinfo=UTC)")
        elif kind in _SIMPLE:
            lines.append(f"{indent}if type(v) is not {_SIMPLE[kind]}: raise TypeError({field.name!r})")
        else:  # pragma: no cover - guards future models
            raise TypeError(f"no fast path for {field.type!r}")
        if builder:
            lines.append(f"    o.{field.name} = v")
        else:
            ns[f"set{i}"] = getattr(cls, field.name).__set__  # the slot's descriptor, wherever defined
            lines.append(f"    set{i}(o, v)")
    if builder:
        lines.append("    o.__class__ = cls")
    lines.append("    return o")
    exec("\n".join(lines), ns)
    fn: Callable[[Any], Any] = ns["structure"]
    return fn


_fast: dict[type[Any], Callable[[Any], Any]] = {}


def _fast_for(cls: Any) -> Callable[[Any], Any]:
    """*cls*'s fast structure function, generated on first use (about 1 ms an import would pay)."""
    fast = _fast.get(cls)
    if fast is None:  # two threads may both build one; both work, and the first stored is kept
        fast = _fast.setdefault(cls, _fast_hook(cls))
    return fast


_detailed: dict[type[Any], Callable[[Any, Any], Any]] = {}


def _explain(cls: type[Any], item: object, path: str) -> DecodeError:
    """
    Say why *item* did not fit *cls*, running cattrs' detailed validation for the field path.

    Only called after the fast path refused *item*; both apply the same rules, so the detailed run
    fails too (should it not, the error still names the item).
    """
    fn = _detailed.get(cls)
    if fn is None:
        fn = _detailed[cls] = make_dict_structure_fn(cls, converter(), _cattrs_detailed_validation=True)
    detail, field_path = "refused by the fast path", path
    try:
        if not isinstance(item, dict):
            raise TypeError(f"expected an object, got {type(item).__name__}")
        fn(item, cls)
    except cattrs.BaseValidationError as exc:
        detail = "; ".join(cattrs.transform_error(exc, path=path))
        _, sep, tail = detail.partition(" @ ")
        field_path = tail.split(";", 1)[0].strip() if sep else path
    except (TypeError, ValueError, KeyError) as exc:
        detail = f"{exc} @ {path}"
    return DecodeError(f"answer did not fit {cls.__name__}: {clip(detail)}", field_path=clip(field_path, 200))


def structure_items(cls: type[T], items: object, path: str) -> list[T]:
    """
    Structure a JSON list of objects into *cls* instances, or raise `DecodeError` naming the bad field.
    """
    if not isinstance(items, list):
        raise DecodeError(f"{path} is not a list: {type(items).__name__}", field_path=path)
    fast = _fast_for(cls)
    try:
        return [fast(item) for item in items]
    except (TypeError, ValueError, KeyError, AttributeError):
        pass
    return [_one(cls, fast, item, f"{path}[{i}]") for i, item in enumerate(items)]


def _one(cls: type[T], fast: Callable[[Any], T], item: object, path: str) -> T:
    try:
        return fast(item)
    except (TypeError, ValueError, KeyError, AttributeError):
        pass
    raise _explain(cls, item, path)  # outside the except block: nothing chained to the DecodeError


MAX_COUNT = 2**63 - 1  # a larger `count` is no real total, and would overflow page arithmetic


def parse_page(data: object) -> tuple[list[Workflow], int]:
    """
    Turn an instancelist answer's `data` into (workflows, count), or raise `DecodeError` with the path.

    The error names no route: the caller that made the request adds it. A `PendingPage` (from
    `peek_page()`) is decoded here, by msgspec when it reads the page as the reference would.
    """
    if type(data) is PendingPage:
        return _finish(data)
    if not isinstance(data, dict):
        raise DecodeError(f"data is not an object: {type(data).__name__}", field_path="data")
    count = data.get("count")
    if type(count) is not int or not 0 <= count <= MAX_COUNT:
        raise DecodeError(
            f"data.count is not an integer in 0..2**63-1: {describe(count)}", field_path="data.count"
        )
    lists = data.get("lists")
    if lists is None:
        lists = []  # guess: an empty result may come without `lists`
    return structure_items(Workflow, lists, "data.lists"), count


# A NamedTuple, not an attrs class: it is internal, and an attrs class costs about 1 ms of import (its
# generated methods are compiled when the module loads).
class PendingPage(NamedTuple):
    """
    An instancelist answer whose envelope msgspec read as a success (`peek_page()`); its `data` is
    decoded later, by `parse_page()`.
    """

    body: bytes
    data: Any  # the msgspec.Raw of `data`, a view into body

    def __repr__(self) -> str:
        return f"<PendingPage {len(self.body):,} bytes>"


# The fast decoder must never accept what `_json.loads()` + `interpret()` + `parse_page()` would not, nor
# read a value differently. Where msgspec is more tolerant, a cheap scan of the body sends it to that
# path: a document nested deeper than `_json` reads, an integer longer than the stdlib reads
# (`digit_run()`), and, with digits mapped to 0, a lowercase `z` in a time (fromisoformat refuses it),
# more than 6 fraction digits (msgspec rounds, fromisoformat truncates), or a `\\u00XX` escape below
# U+00A0 (which could spell either). Each of the last three is searched (in the mapped body, made for
# it) only when a one-byte probe of the body finds its rare byte: a page of workflows has none, and
# mapping and searching it cost more than the rest of the scan. A lowercase `t` separator needs no
# check (it cost a third of the scan): fromisoformat (3.11+) takes any separator and reads such a time as
# msgspec does, or msgspec refuses it (checked by fuzzing on 3.11-3.13 with msgspec 0.23; the property
# test in tests/test_decode_paths.py keeps comparing both paths on generated times with `t`).
_MAP = bytes.maketrans(b"123456789", b"000000000")
_DIGITS = b"0123456789"
_QUIRKS = ((b"z", b"0z"), (b".", b".0000000"), (b"\\", b"\\u000"))
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # orjson reads a larger integer as a float, which cattrs refuses
_set_start, _set_end, _set_create = (
    Workflow.__dict__[name].__set__ for name in ("start_time", "end_time", "create_time")
)


def peek_page(body: bytes) -> PendingPage | None:
    """
    Read only the envelope of an instancelist answer body: a `PendingPage` when it is a success (`code`
    200, `status` "OK", `data` present, as every occurrence of a repeated key says), else None to leave
    the body to the reference path (`interpret()`), which decides and raises; with no msgspec
    installed, always None.

    The page itself is decoded by `parse_page()` in the walk, after it has refilled its prefetch
    window: decoded here, in the request, it held back the next requests behind the decoding of every
    page answered at the same time (at 20 ms, 0.88-0.92 of a plain window's pace instead of 1.0).
    """
    decoders = _page_decoders()
    if decoders is None:  # pragma: no cover - exercised by the subprocess test in tests/test_decode_paths.py
        return None
    if not _plain(body):  # the reference may refuse it as JSON: that error belongs to the request
        return None
    try:
        envelope = decoders[0](body)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return None
    return PendingPage(body, envelope.data)


def decode_page(body: bytes) -> tuple[list[Workflow], int] | None:
    """
    Decode an instancelist answer body straight into (workflows, `data.count`) (`peek_page()` and the
    msgspec half of `parse_page()`), or return None where the walk would take the reference path.
    """
    page = peek_page(body)
    return None if page is None else _decoded(page)


def _finish(page: PendingPage) -> tuple[list[Workflow], int]:
    """Decode a peeked page: by msgspec when it takes the page, else by the reference path."""
    decoded = _decoded(page)
    if decoded is not None:
        return decoded
    envelope = decode_body(page.body)  # as interpret() reads it, with no exception to chain
    if isinstance(envelope, NotJSON):  # never, for a body peek_page() took: it passed _plain()
        raise DecodeError(f"answer is not JSON ({envelope.reason})")
    # msgspec checked every occurrence of both keys, so the reference reads the same: never seen.
    if not (isinstance(envelope, dict) and envelope.get("code") == 200 and envelope.get("status") == "OK"):
        raise DecodeError("the answer's envelope reads differently to the reference")  # pragma: no cover
    return parse_page(envelope["data"])


def _decoded(page: PendingPage) -> tuple[list[Workflow], int] | None:
    """The page decoded by msgspec, or None where msgspec refuses it (the reference path decides then)."""
    decoders = _page_decoders()
    assert decoders is not None  # a PendingPage exists only where msgspec does (and _plain() passed)
    try:
        data = decoders[1](page.data)
    except (ValueError, RecursionError):
        return None
    if not 0 <= data.count <= MAX_COUNT:
        return None
    items: list[Workflow] = data.lists or []
    for w in items:
        if not _INT_MIN <= w.total <= _INT_MAX:
            return None
        start, end, created = w.start_time, w.end_time, w.create_time
        # A time without an offset is UTC, as in parse_time().
        if start is not None and start.tzinfo is None:
            _set_start(w, start.replace(tzinfo=UTC))
        if end is not None and end.tzinfo is None:
            _set_end(w, end.replace(tzinfo=UTC))
        if created.tzinfo is None:
            _set_create(w, created.replace(tzinfo=UTC))
    return items, data.count


def _plain(body: bytes) -> bool:
    """Tell whether *body* holds none of the things msgspec reads more tolerantly than the reference."""
    if not body.isascii():
        try:
            body.decode()  # msgspec skips unknown fields without checking their UTF-8
        except UnicodeDecodeError:
            return False
    # msgspec's own depth bound is the interpreter's recursion limit: apply _json's first.
    if depth_exceeds(body):
        return False
    mapped = b""  # the digit-folded body, made only when a rare byte calls for a needle
    for probe, needle in _QUIRKS:
        if probe in body:
            mapped = mapped or body.translate(_MAP)
            if needle in mapped:
                return False
    digits = sys.get_int_max_str_digits()  # the stdlib refuses longer integers; msgspec skips them
    return not (digits and digit_run(body, digits + 1))


def digit_run(data: bytes, length: int) -> bool:
    """
    Tell whether *data* holds *length* (at least 1) ASCII digits in a row.

    Such a run covers one of the positions `length - 1`, `2 * length - 1`, ...: only the runs through
    those are measured, each by stripping digits off a slice on either side, so a page costs a few
    slices instead of a pass over every byte, and crafted input still costs one C-speed pass at most.
    """
    for at in range(length - 1, len(data), length):
        if data[at] in _DIGITS:
            before = data[max(0, at - length + 1) : at]
            after = data[at : at + length]
            run = len(before) - len(before.rstrip(_DIGITS)) + len(after) - len(after.lstrip(_DIGITS))
            if run >= length:
                return True
    return False


@functools.cache
def _page_decoders() -> tuple[Callable[[bytes], Any], Callable[[Any], Any]] | None:
    """
    msgspec's decoders for a successful instancelist envelope (its `data` left raw) and for that
    `data`, or None without msgspec.

    Built on first use, so `import airudder_async` does not pay for importing msgspec (about 11 ms).
    """
    try:
        import msgspec
    except ImportError:  # pragma: no cover - exercised by the subprocess test in tests/test_decode_paths.py
        return None

    # defstruct, not class statements: these annotations must be real types, not strings.
    # `lists` may be missing or null, a guess as in parse_page(): an empty result may come without it.
    data = msgspec.defstruct("Data", [("count", int), ("lists", list[Workflow] | None, None)])
    envelope = msgspec.defstruct(
        "Envelope", [("code", Literal[200]), ("status", Literal["OK"]), ("data", msgspec.Raw)]
    )
    return msgspec.json.Decoder(envelope).decode, msgspec.json.Decoder(data).decode


def rows(data: object, *, whole: bool) -> tuple[dict[str, object], ...]:
    """
    The objects of an answer whose shape is undocumented: `data` itself when it is a list, else its
    `lists`, `list` or `records` (guesses); with *whole*, a bare object counts as the one row.
    """
    found: object = data
    if isinstance(data, dict):
        found = data.get("lists", data.get("list", data.get("records", [data] if whole else None)))
    return tuple(r for r in found if isinstance(r, dict)) if isinstance(found, list) else ()


def ids_in(data: object) -> tuple[str, ...]:
    """Collect the workflow ids of an answer's rows."""
    ids = (r.get("workflow_id") for r in rows(data, whole=True))
    return tuple(i for i in ids if isinstance(i, str))


def str_or_none(data: object, key: str) -> str | None:
    """The string at *key* of an answer object, or None when it is missing or not a string."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
