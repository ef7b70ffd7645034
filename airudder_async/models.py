"""
Public, frozen data models: what the API answers and what a walk reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

from ._time import format_time, parse_time

if TYPE_CHECKING:
    from ._lazy_models import ClientStats, CreatedWorkflow, RequestEvent, TaskDetail, WorkflowMatches

__all__ = [
    "ClientStats",
    "CreatedWorkflow",
    "Cursor",
    "Page",
    "RequestEvent",
    "TaskDetail",
    "Workflow",
    "WorkflowMatches",
    "WorkflowStatus",
]

T = TypeVar("T")


class WorkflowStatus:
    """
    The workflow `status` values known so far; the vendor may send others, which stay plain strings.
    """

    CANCELLED = "cancelled"
    FINISHED = "finished"

    KNOWN: frozenset[str] = frozenset({CANCELLED, FINISHED})


@attrs.frozen(kw_only=True, cache_hash=False, weakref_slot=False)
class Workflow:
    """
    One workflow task (instance) from `instancelist`; times are timezone-aware.

    *status* is a plain string: compare it with `WorkflowStatus` constants, unknown values are kept.
    """

    workflow_id: str
    name: str
    template_name: str
    start_time: datetime | None
    end_time: datetime | None
    total: int
    status: str
    create_time: datetime

    def to_dict(self) -> dict[str, object]:
        """
        Return the workflow in wire form: the 8 vendor field names, times as ISO 8601 strings.
        """
        return {
            "workflow_id": self.workflow_id,
            "name": self.name,
            "template_name": self.template_name,
            "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time),
            "total": self.total,
            "status": self.status,
            "create_time": _iso(self.create_time),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


# Field types as classes, not strings (`from __future__ import annotations`), as a schema read from
# `attrs.fields(Workflow)` expects.
attrs.resolve_types(Workflow)


@attrs.frozen(kw_only=True)
class Page(Generic[T]):
    """
    One page of a list call: *items* of this page, and *count*, the total the server reports.
    """

    items: tuple[T, ...]
    count: int
    page: int
    size: int

    @property
    def has_more(self) -> bool:
        """
        Tell whether pages after this one should hold more items, judging by *count*.
        """
        return len(self.items) == self.size and self.page * self.size < self.count


_CURSOR_VERSION = 1


def _strict_int(_inst: object, attr: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{attr.name} must be an int, got {type(value).__name__}")


def _aware_or_none(_inst: object, attr: attrs.Attribute[datetime | None], value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{attr.name} must be timezone-aware")


@attrs.frozen(kw_only=True)
class Cursor:
    """
    Where a workflow walk stands: pass it to `iter_workflows(cursor=...)` to resume the walk.

    It is small and JSON-serialisable (`to_json()` / `Cursor.from_json()`). *page* is the next page
    to request; items of that page up to and including *last_workflow_id* were already yielded.
    *start_time*/*end_time* are the walk's window, pinned when the walk began; *received* counts
    the items yielded before this point.
    """

    page: int = attrs.field(validator=[_strict_int, attrs.validators.ge(1)])
    page_size: int = attrs.field(validator=[_strict_int, attrs.validators.ge(1), attrs.validators.le(200)])
    start_time: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    end_time: datetime | None = attrs.field(default=None, validator=_aware_or_none)
    last_workflow_id: str | None = None
    received: int = attrs.field(default=0, validator=[_strict_int, attrs.validators.ge(0)])

    def to_dict(self) -> dict[str, object]:
        """
        Return the cursor as a dict of JSON types.
        """
        return {
            "v": _CURSOR_VERSION,
            "page": self.page,
            "page_size": self.page_size,
            "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time),
            "last_workflow_id": self.last_workflow_id,
            "received": self.received,
        }

    def to_json(self) -> str:
        """
        Return the cursor as a compact JSON string.
        """
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Cursor:
        """
        Rebuild a cursor from `to_dict()` output; raise `ValueError` when it is not one.
        """
        if data.get("v") != _CURSOR_VERSION:
            v = data.get("v")
            shown = repr(v) if type(v) is int and abs(v) < 10**6 else f"a {type(v).__name__}"
            raise ValueError(f"not a version {_CURSOR_VERSION} cursor: v is {shown}")
        try:
            page, page_size, received = data["page"], data["page_size"], data.get("received", 0)
            last = data.get("last_workflow_id")
            if not (
                type(page) is int
                and type(page_size) is int
                and type(received) is int
                and (last is None or isinstance(last, str))
            ):
                raise TypeError("wrong field types")
            return cls(
                page=page,
                page_size=page_size,
                start_time=_parse_opt(data.get("start_time")),
                end_time=_parse_opt(data.get("end_time")),
                last_workflow_id=last,
                received=received,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed cursor: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Cursor:
        """
        Rebuild a cursor from `to_json()` output; raise `ValueError` when it is not one.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"cursor is not JSON: {exc}") from None
        except RecursionError:  # a crafted file nested beyond the interpreter's limit
            data = None
        if not isinstance(data, dict):
            raise ValueError("cursor must be a JSON object")
        return cls.from_dict(data)


def _parse_opt(value: object) -> datetime | None:
    return None if value is None else parse_time(value, assume_utc=False)


# The models a walk does not need load on first use (the answers of three rarely used calls, the stats
# snapshot and the event hook's event): each attrs class costs about 1 ms of import (its generated
# methods are compiled when it is defined).
_LAZY = frozenset({"ClientStats", "CreatedWorkflow", "RequestEvent", "TaskDetail", "WorkflowMatches"})


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _lazy_models

    value = getattr(_lazy_models, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
