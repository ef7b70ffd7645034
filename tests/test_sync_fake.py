"""
The FakeAirudder helpers that make workflows change between syncs, and the SQLite sink's small pieces.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from airudder_async._sqlite_sink import utc_text
from airudder_async.models import Cursor
from airudder_async.sync import FINAL_STATUSES, PageCounts, PageWrite, open_sink
from airudder_async.testing import FakeAirudder

pytestmark = pytest.mark.anyio


async def test_add_history_settles_old_workflows_and_appends_older_ones() -> None:
    """Workflows older than open_for are final; a second call continues further back in time."""
    async with FakeAirudder() as fake:
        newest = datetime(2026, 3, 1, tzinfo=UTC)
        first = fake.add_history(100, newest=newest, step=3600.0, open_for=10 * 3600.0)
        assert first[0]["create_time"] == "2026-03-01T00:00:00Z"
        assert all(wf["status"] in FINAL_STATUSES for wf in first[11:])
        assert any(wf["status"] not in FINAL_STATUSES for wf in first[:11])
        more = fake.add_history(5, newest=newest, step=3600.0)
        assert more[0]["create_time"] == "2026-02-24T20:00:00Z"  # an hour older than the oldest
        assert fake.workflow_ids()[-5:] == [wf["workflow_id"] for wf in more]


async def test_set_status_changes_the_named_workflows_only() -> None:
    """set_status() changes status (and total when given); an unknown id is a ValueError."""
    async with FakeAirudder() as fake:
        made = fake.add_history(3)
        fake.set_status([str(made[0]["workflow_id"])], "archived")
        fake.set_status([str(made[1]["workflow_id"])], "finished", total=7)
        assert (made[0]["status"], made[1]["status"], made[1]["total"]) == ("archived", "finished", 7)
        with pytest.raises(ValueError, match="no such workflows"):
            fake.set_status(["nope"], "finished")


async def test_mutate_random_is_deterministic_and_bounded() -> None:
    """The same seed changes the same open workflows; new ones go to the head; too many is a ValueError."""
    async with FakeAirudder() as a, FakeAirudder() as b:
        for fake in (a, b):
            fake.add_history(200, newest=datetime(2026, 3, 1, tzinfo=UTC))
        changed_a, new_a = a.mutate_random(status_changes=10, new=3, seed=5)
        changed_b, new_b = b.mutate_random(status_changes=10, new=3, seed=5)
        assert (changed_a, new_a) == (changed_b, new_b)
        assert a.workflows == b.workflows
        assert a.workflows[:3] == new_a
        assert new_a[-1]["create_time"] == "2026-03-01T00:00:01Z"
        with pytest.raises(ValueError, match="workflows are open"):
            a.mutate_random(status_changes=10_000, new=0)
    async with FakeAirudder() as empty:
        _, made = empty.mutate_random(status_changes=0, new=2)
        assert [wf["create_time"] for wf in made] == ["2026-01-01T00:00:02Z", "2026-01-01T00:00:01Z"]


def test_utc_text_normalises_and_keeps_edge_times() -> None:
    """Times are stored in UTC with Z; one with no UTC equivalent is kept as sent."""
    plus7 = timezone(timedelta(hours=7))
    assert utc_text(datetime(2026, 1, 1, 7, 0, 0, 500, tzinfo=plus7)) == "2026-01-01T00:00:00.000500Z"
    assert utc_text(datetime(1, 1, 1, tzinfo=plus7)) == "0001-01-01T00:00:00+07:00"
    assert utc_text(None) is None


async def test_an_empty_page_and_a_second_close(tmp_path: Path) -> None:
    """An empty page writes nothing but the cursor; closing a sink twice is fine."""
    async with open_sink(tmp_path / "wf.db") as sink:
        counts = await sink.write_pages(
            [PageWrite([], {}, Cursor(page=2, page_size=5))], observed_at=datetime.now(UTC), dry_run=False
        )
        assert counts == PageCounts()
        await sink.aclose()  # type: ignore[attr-defined]  # the SQLite sink has it
