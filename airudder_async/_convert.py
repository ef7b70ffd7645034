"""
Every wire-to-model conversion: the private cattrs converter, the fast path for list answers,
the instancelist page, and the rows of the answers whose shape is undocumented.

Wire names live here only (times go through `_time.py`). The converter tolerates unknown fields
(vendors add fields). For the hot path (hundreds of workflows per page) a generated hook fills a
frozen, slotted instance through its slot descriptors; any surprise in the data sends the item
through cattrs' detailed validation, whose error names the field path. Measured by
benchmarks/run.py: about 1.0 µs per workflow against 2.2 µs for cattrs' own generated hook on the
same frozen class.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, get_args

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn
from cattrs.preconf.json import make_converter

from ._protocol import clip, describe
from ._time import format_time, parse_time
from .errors import DecodeError
from .models import Workflow

__all__ = ["converter", "ids_in", "parse_page", "rows", "str_or_none", "structure_items"]

T = TypeVar("T")


def _strict_str(value: object, _type: object) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _type: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _make_converter() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=False)
    conv.register_structure_hook(datetime, lambda value, _type: parse_time(value))
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_unstructure_hook(datetime, format_time)
    return conv


converter = _make_converter()

_SIMPLE = {str: "str", int: "int"}


def _fast_hook(cls: Any) -> Callable[[Any], Any]:
    """
    Generate a structure function for a slotted attrs class of str, int and (optional) datetime fields.
    """
    attrs.resolve_types(cls)
    lines = ["def structure(d):", "    o = new(cls)"]
    ns: dict[str, Any] = {"new": object.__new__, "cls": cls, "fromiso": datetime.fromisoformat, "UTC": UTC}
    for i, field in enumerate(attrs.fields(cls)):
        setter = f"set{i}"
        ns[setter] = cls.__dict__[field.name].__set__
        optional = type(None) in get_args(field.type)
        kind = next(t for t in (get_args(field.type) or (field.type,)) if t is not type(None))
        get = f"d.get({field.name!r})" if optional else f"d[{field.name!r}]"
        lines.append(f"    v = {get}")
        indent = "    "
        if optional:
            lines.append("    if v is not None:")
            indent = "        "
        if kind is datetime:
            lines.append(f"{indent}if type(v) is not str: raise TypeError({field.name!r})")
            lines.append(f"{indent}v = fromiso(v)")
            lines.append(f"{indent}if v.tzinfo is None: v = v.replace(tzinfo=UTC)")
        elif kind in _SIMPLE:
            lines.append(f"{indent}if type(v) is not {_SIMPLE[kind]}: raise TypeError({field.name!r})")
        else:  # pragma: no cover - guards future models
            raise TypeError(f"no fast path for {field.type!r}")
        lines.append(f"    {setter}(o, v)")
    lines.append("    return o")
    exec("\n".join(lines), ns)
    fn: Callable[[Any], Any] = ns["structure"]
    return fn


_fast: dict[type[Any], Callable[[Any], Any]] = {Workflow: _fast_hook(Workflow)}
_detailed: dict[type[Any], Callable[[Any, Any], Any]] = {}
converter.register_structure_hook(Workflow, lambda d, _t: _fast[Workflow](d))


def _explain(cls: type[Any], item: object, path: str) -> DecodeError:
    """
    Say why *item* did not fit *cls*, running cattrs' detailed validation for the field path.

    Only called after the fast path refused *item*; both apply the same rules, so the detailed run
    fails too (should it not, the error still names the item).
    """
    fn = _detailed.get(cls)
    if fn is None:
        fn = _detailed[cls] = make_dict_structure_fn(cls, converter, _cattrs_detailed_validation=True)
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
    fast = _fast[cls]
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

    The error names no route: the caller that made the request adds it.
    """
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
