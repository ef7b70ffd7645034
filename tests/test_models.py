"""
Models and the converter: the vendor example, time parsing, tolerance and typed decode errors.
"""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from airudder_async._convert import _builder, _fast_hook, converter, structure_items
from airudder_async._time import format_time, parse_time
from airudder_async.errors import DecodeError
from airudder_async.models import Cursor, Page, Workflow, WorkflowStatus

# The example answer from the vendor docs (one line wrapped).
VENDOR_EXAMPLE = json.loads(
    """
{
  "data": {
    "lists": [
      {"workflow_id": "37b19c21b9cf482bb8100001", "name": "test-2", "template_name": "sms-txx-test",
       "start_time": "2022-10-09T07:02:40Z", "end_time": "2022-10-09T07:23:45Z", "total": 1,
       "status": "cancelled", "create_time": "2022-10-09T07:02:40Z"},
      {"workflow_id": "fe9f194df9ef40b3be100000002", "name": "huida_test_sms11",
       "template_name": "huida_func_test",
       "start_time": null, "end_time": "2022-10-08T16:59:59Z", "total": 1,
       "status": "finished", "create_time": "2022-10-07T13:02:46Z"}
    ],
    "count": 100
  },
  "status": "OK",
  "code": 200
}
"""
)


def test_vendor_example_structures_exactly() -> None:
    """The example answer from the vendor docs structures to the exact values."""
    items = structure_items(Workflow, VENDOR_EXAMPLE["data"]["lists"], "data.lists")
    assert items == [
        Workflow(
            workflow_id="37b19c21b9cf482bb8100001",
            name="test-2",
            template_name="sms-txx-test",
            start_time=datetime(2022, 10, 9, 7, 2, 40, tzinfo=UTC),
            end_time=datetime(2022, 10, 9, 7, 23, 45, tzinfo=UTC),
            total=1,
            status=WorkflowStatus.CANCELLED,
            create_time=datetime(2022, 10, 9, 7, 2, 40, tzinfo=UTC),
        ),
        Workflow(
            workflow_id="fe9f194df9ef40b3be100000002",
            name="huida_test_sms11",
            template_name="huida_func_test",
            start_time=None,
            end_time=datetime(2022, 10, 8, 16, 59, 59, tzinfo=UTC),
            total=1,
            status=WorkflowStatus.FINISHED,
            create_time=datetime(2022, 10, 7, 13, 2, 46, tzinfo=UTC),
        ),
    ]
    assert [w.to_dict() for w in items] == VENDOR_EXAMPLE["data"]["lists"]


def test_unknown_status_and_extra_fields_pass_through() -> None:
    """An unknown status stays a string and unknown fields are ignored, not an error."""
    raw = dict(VENDOR_EXAMPLE["data"]["lists"][0], status="rebooting", brand_new_field={"x": 1})
    (wf,) = structure_items(Workflow, [raw], "data.lists")
    assert wf.status == "rebooting"
    assert wf.status not in WorkflowStatus.KNOWN
    assert converter().structure(raw, Workflow) == wf


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2022-10-09T07:02:40Z", datetime(2022, 10, 9, 7, 2, 40, tzinfo=UTC)),
        ("2022-10-09 07:02:40Z", datetime(2022, 10, 9, 7, 2, 40, tzinfo=UTC)),
        ("2022-12-12 12:34:56+07:00", datetime(2022, 12, 12, 5, 34, 56, tzinfo=UTC)),
        ("2022-12-12T12:34:56.250-03:30", datetime(2022, 12, 12, 16, 4, 56, 250000, tzinfo=UTC)),
        ("2022-10-09 07:02:40", datetime(2022, 10, 9, 7, 2, 40, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_time_forms(text: str, expected: datetime) -> None:
    """Times with Z, offsets, a space or T separator become aware datetimes."""
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.utcoffset() is not None
    raw = dict(VENDOR_EXAMPLE["data"]["lists"][0], create_time=text)
    assert structure_items(Workflow, [raw], "x")[0].create_time == expected


def test_format_time_documented_form() -> None:
    """Request times go out as `YYYY-MM-DD HH:MM:SS+HH:MM`; naive ones are refused."""
    tz = timezone(timedelta(hours=7))
    wire = datetime(2022, 12, 12, 12, 34, 56, 999, tzinfo=tz)
    assert format_time(wire, "wire") == "2022-12-12 12:34:56+07:00"
    assert format_time(datetime(2022, 1, 1, tzinfo=UTC), "wire") == "2022-01-01 00:00:00+00:00"
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2022, 1, 1), "wire")


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"create_time": None}, "create_time"),
        ({"create_time": "yesterday"}, "create_time"),
        ({"start_time": 1670848496}, "start_time"),  # fromisoformat's own TypeError, not a str check
        ({"end_time": ["2022-12-12 12:34:56"]}, "end_time"),
        ({"total": "12"}, "total"),
        ({"workflow_id": 12}, "workflow_id"),
        ({"name": None}, "name"),
    ],
)
def test_bad_item_is_decode_error_with_path(change: dict[str, object], path: str) -> None:
    """A field of the wrong type raises DecodeError naming data.lists[i].field."""
    good = VENDOR_EXAMPLE["data"]["lists"][0]
    with pytest.raises(DecodeError) as info:
        structure_items(Workflow, [good, dict(good, **change)], "data.lists")
    assert info.value.field_path == f"data.lists[1].{path}"
    assert f"data.lists[1].{path}" in str(info.value)


def test_missing_field_and_non_object_items() -> None:
    """A missing required field or a non-object item is a DecodeError, never a KeyError."""
    good = dict(VENDOR_EXAMPLE["data"]["lists"][0])
    del good["status"]
    with pytest.raises(DecodeError, match=r"data.lists\[0\]"):
        structure_items(Workflow, [good], "data.lists")
    with pytest.raises(DecodeError, match="not a list"):
        structure_items(Workflow, {"a": 1}, "data.lists")
    with pytest.raises(DecodeError):
        structure_items(Workflow, [42], "data.lists")
    with pytest.raises(DecodeError, match=r"data.lists\[0\]"):
        structure_items(Workflow, [{"workflow_id": "x"}], "data.lists")


def test_optional_times_may_be_missing() -> None:
    """start_time and end_time may be null or absent."""
    raw = dict(VENDOR_EXAMPLE["data"]["lists"][0])
    del raw["start_time"]
    raw["end_time"] = None
    (wf,) = structure_items(Workflow, [raw], "x")
    assert wf.start_time is None
    assert wf.end_time is None


def test_models_are_frozen_and_slotted() -> None:
    """Workflow instances cannot be changed and carry no __dict__."""
    (wf,) = structure_items(Workflow, VENDOR_EXAMPLE["data"]["lists"][:1], "x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        wf.name = "x"  # type: ignore[misc]  # checking the runtime guard
    assert not hasattr(wf, "__dict__")
    assert pickle.loads(pickle.dumps(wf)) == wf
    assert hash(wf) == hash(pickle.loads(pickle.dumps(wf)))


def test_a_structured_workflow_is_a_plain_frozen_workflow() -> None:
    """
    The fast path builds a workflow as a mutable twin and turns it into a `Workflow`: what comes out is
    a `Workflow` in every respect (type, equality, hash, frozen), and nothing of the twin shows.
    """
    (wf,) = structure_items(Workflow, VENDOR_EXAMPLE["data"]["lists"][:1], "x")
    built = Workflow(**{f.name: getattr(wf, f.name) for f in attrs.fields(Workflow)})
    assert type(wf) is Workflow
    assert wf == built
    assert hash(wf) == hash(built)
    assert repr(wf) == repr(built)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        wf.total = 2  # type: ignore[misc]  # checking the runtime guard
    assert attrs.evolve(wf, total=2).total == 2


def test_a_class_the_twin_cannot_stand_in_for_is_filled_through_its_descriptors() -> None:
    """A class with slots of its base has no layout twin (on any CPython): its fast hook fills it
    through the slot descriptors, its base's included."""

    @attrs.frozen(kw_only=True)
    class Base:
        name: str

    @attrs.frozen(kw_only=True)
    class Weak(Base):
        total: int
        at: datetime | None

    assert _builder(Workflow) is not None
    assert _builder(Weak) is None
    hook = _fast_hook(Weak)
    item = hook({"name": "n", "total": 1, "at": "2022-10-09 07:02:40"})
    assert item == Weak(name="n", total=1, at=datetime(2022, 10, 9, 7, 2, 40, tzinfo=UTC))
    assert type(item) is Weak
    with pytest.raises(TypeError):
        hook({"name": "n", "total": "1", "at": None})


def test_page_has_more() -> None:
    """Page.has_more follows count and the page's fullness."""
    assert Page(items=(1, 2), count=5, page=1, size=2).has_more
    assert not Page(items=(1,), count=5, page=3, size=2).has_more
    assert not Page(items=(1, 2), count=4, page=2, size=2).has_more


_aware = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=7)), timezone(timedelta(hours=-3, minutes=-30))]
    ),
)


@given(
    workflow_id=st.text(min_size=1, max_size=40),
    name=st.text(max_size=30),
    total=st.integers(min_value=0, max_value=2**40),
    status=st.text(max_size=20),
    created=_aware,
    started=st.none() | _aware,
    sep=st.sampled_from(["T", " "]),
)
def test_round_trip_property(
    workflow_id: str,
    name: str,
    total: int,
    status: str,
    created: datetime,
    started: datetime | None,
    sep: str,
) -> None:
    """Any wire workflow structures to the same values (times compared as instants)."""
    raw = {
        "workflow_id": workflow_id,
        "name": name,
        "template_name": "t",
        "total": total,
        "status": status,
        "create_time": created.isoformat(sep=sep),
        "start_time": None if started is None else started.isoformat(),
        "end_time": None,
        "extra": [1, 2],
    }
    (wf,) = structure_items(Workflow, [raw], "x")
    assert (wf.workflow_id, wf.name, wf.total, wf.status) == (workflow_id, name, total, status)
    assert wf.create_time == created
    assert wf.start_time == started
    again = structure_items(Workflow, [wf.to_dict()], "x")[0]
    assert again == wf


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "workflow_id",
                "name",
                "template_name",
                "start_time",
                "end_time",
                "total",
                "status",
                "create_time",
                "other",
            ]
        ),
        st.none() | st.integers() | st.text(max_size=25) | st.booleans() | st.floats(),
    )
)
def test_arbitrary_items_decode_or_raise_decode_error(raw: dict[str, object]) -> None:
    """Whatever an item holds, structuring returns a Workflow or raises DecodeError, nothing else."""
    try:
        (wf,) = structure_items(Workflow, [raw], "data.lists")
    except DecodeError as exc:
        assert exc.field_path is not None
        assert exc.field_path.startswith("data.lists[0]")
    else:
        assert isinstance(wf.create_time, datetime)
        assert wf.create_time.utcoffset() is not None


def test_cursor_json_round_trip_and_validation() -> None:
    """A cursor survives JSON; malformed ones are a ValueError."""
    tz = timezone(timedelta(hours=7))
    cursor = Cursor(
        page=4,
        page_size=50,
        start_time=datetime(2026, 1, 1, tzinfo=tz),
        end_time=datetime(2026, 2, 1, tzinfo=UTC),
        last_workflow_id="abc",
        received=151,
    )
    assert Cursor.from_json(cursor.to_json()) == cursor
    assert json.loads(cursor.to_json())["end_time"] == "2026-02-01T00:00:00Z"
    for bad in [
        "[]",
        "nope",
        '{"v": 2}',
        '{"v": 1, "page": "x", "page_size": 2}',
        '{"v": 1}',
        '{"v": 1, "page": 1, "page_size": 2, "start_time": "2026-01-01T00:00:00"}',
    ]:
        with pytest.raises(ValueError):  # noqa: PT011 - several messages
            Cursor.from_json(bad)
    with pytest.raises(ValueError):  # noqa: PT011
        Cursor(page=0, page_size=10)
    with pytest.raises(ValueError):  # noqa: PT011
        Cursor(page=1, page_size=201)


@pytest.mark.parametrize("field", ["page", "page_size", "received"])
@pytest.mark.parametrize("value", [2.5, True, "3"])
def test_cursor_fields_are_strict_ints(field: str, value: object) -> None:
    """A cursor refuses floats, bools and strings where an int belongs."""
    args: dict[str, object] = {"page": 2, "page_size": 10, "received": 0, field: value}
    with pytest.raises(TypeError):
        Cursor(**args)  # type: ignore[arg-type]  # deliberately wrong types
