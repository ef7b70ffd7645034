"""
`sync_workflows()` into the SQLite sink, against FakeAirudder: the pure decisions, then real runs.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airudder_async.errors import DatabaseLockedError, InvalidRequestError, SchemaVersionError, SyncError
from airudder_async.models import Cursor
from airudder_async.sync import (
    DEFAULT_LOOKBACK,
    FINAL_STATUSES,
    PageCounts,
    PageWrite,
    RunState,
    Sink,
    SyncSummary,
    changes,
    extra_fields,
    open_sink,
    plan_window,
    redact_url,
    sync_workflows,
)
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, Fault
from tests.support import Grouping

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 6, 1, tzinfo=UTC)
DATA = ("workflow_id", "name", "template_name", "start_time", "end_time", "total", "status", "create_time")


def table(path: Path) -> list[tuple[object, ...]]:
    """The mirrored workflows without the observation times, ordered by id."""
    with closing(sqlite3.connect(path)) as db, db:
        return db.execute(f"SELECT {', '.join(DATA)}, extra FROM workflows ORDER BY workflow_id").fetchall()


def history(path: Path) -> list[tuple[object, ...]]:
    """The history rows without observation times, in order."""
    with closing(sqlite3.connect(path)) as db, db:
        return db.execute(
            "SELECT workflow_id, kind, old_status, new_status, changes FROM workflow_history ORDER BY id"
        ).fetchall()


def state(path: Path) -> tuple[object, ...]:
    """The sync_state row."""
    with closing(sqlite3.connect(path)) as db, db:
        row: tuple[object, ...] = db.execute("SELECT * FROM sync_state").fetchone()
        return row


def wire(fake: FakeAirudder) -> list[tuple[object, ...]]:
    """The fake's workflows as the mirror should hold them, ordered by id."""
    rows = [(*(wf[k] for k in DATA), extra_fields(wf)) for wf in fake.workflows]
    return sorted(rows, key=lambda r: str(r[0]))


# -- pure decisions -----------------------------------------------------------------------------------


def test_first_run_reads_everything_and_moves_the_mark() -> None:
    """Without a mark the window is everything up to now, and finishing it sets the mark."""
    assert plan_window(mark=None, oldest_open=None, now=T0, lookback=DEFAULT_LOOKBACK) == (None, T0, True)


def test_incremental_run_starts_at_the_oldest_open_workflow() -> None:
    """A later run re-reads from the oldest open workflow when it is older than the mark."""
    mark = T0 - timedelta(hours=1)
    opened = T0 - timedelta(days=2)
    start, end, moves = plan_window(mark=mark, oldest_open=opened, now=T0, lookback=DEFAULT_LOOKBACK)
    assert (start, end, moves) == (opened, T0, True)
    assert plan_window(mark=mark, oldest_open=None, now=T0, lookback=DEFAULT_LOOKBACK)[0] == mark
    assert plan_window(mark=mark, oldest_open=T0, now=T0, lookback=DEFAULT_LOOKBACK)[0] == mark


def test_lookback_bounds_the_window() -> None:
    """An open workflow older than mark - lookback does not drag the window back further."""
    mark = T0 - timedelta(hours=1)
    start, _, _ = plan_window(
        mark=mark, oldest_open=T0 - timedelta(days=90), now=T0, lookback=timedelta(days=3)
    )
    assert start == mark - timedelta(days=3)


def test_explicit_windows_and_full() -> None:
    """--full reads everything; --since/--until read what was asked and move the mark only without a gap."""
    mark = T0 - timedelta(hours=1)
    assert plan_window(mark=mark, oldest_open=None, now=T0, lookback=DEFAULT_LOOKBACK, full=True) == (
        None,
        T0,
        True,
    )
    later = mark + timedelta(minutes=1)
    assert (
        plan_window(mark=mark, oldest_open=None, now=T0, lookback=DEFAULT_LOOKBACK, since=later)[2] is False
    )
    earlier = mark - timedelta(minutes=1)
    assert plan_window(mark=mark, oldest_open=None, now=T0, lookback=DEFAULT_LOOKBACK, since=earlier)[2]
    until = plan_window(mark=mark, oldest_open=None, now=T0, lookback=DEFAULT_LOOKBACK, until=mark)
    assert until == (mark, mark, False)


@given(
    mark=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    open_offset=st.none() | st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=400)),
    lookback=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100)),
)
def test_incremental_window_never_leaves_a_gap(
    mark: datetime, open_offset: timedelta | None, lookback: timedelta
) -> None:
    """An incremental run starts at or before the mark, never before mark - lookback, and moves the mark."""
    oldest = None if open_offset is None else mark + open_offset
    start, end, moves = plan_window(mark=mark, oldest_open=oldest, now=mark, lookback=lookback)
    assert start is not None
    assert mark - lookback <= start <= mark
    if oldest is not None and oldest >= mark - lookback:
        assert start == min(mark, oldest)
    assert (end, moves) == (mark, True)


@given(
    user=st.text("abcxyz_", min_size=1, max_size=8),
    password=st.text("abcXYZ019!$&'()+,;=-._~", min_size=3, max_size=20),
)
def test_redact_url_hides_any_password(user: str, password: str) -> None:
    """No password survives redact_url(), in the user part or in a password= parameter."""
    shown = redact_url(f"postgresql://{user}:{password}@db.example:5432/mirror?sslmode=require")
    assert shown == f"postgresql://{user}:***@db.example:5432/mirror?sslmode=require"
    quoted = quote(password, safe="")
    shown = redact_url(f"postgresql://db.example/mirror?user={user}&password={quoted}")
    assert shown == f"postgresql://db.example/mirror?user={user}&password=***"


def test_redact_url_leaves_urls_without_password() -> None:
    """A URL without a password comes back as it was."""
    for url in ("postgresql://db.example/mirror", "postgresql://user@db.example/mirror"):
        assert redact_url(url) == url


def test_extra_fields_and_changes() -> None:
    """Undocumented fields become canonical JSON; changes() lists only the fields that differ."""
    wf = {k: k for k in DATA}
    assert extra_fields(wf) is None
    assert extra_fields({**wf, "zeta": 1, "alpha": [True]}) == '{"alpha":[true],"zeta":1}'
    old = ("id", "n", "t", None, None, 1, "running", "c", None)
    new = ("id", "n", "t", None, "e", 2, "finished", "c", '{"a":1}')
    assert changes(old, new) == {
        "end_time": [None, "e"],
        "total": [1, 2],
        "status": ["running", "finished"],
        "extra": [None, '{"a":1}'],
    }


def test_run_state_round_trips_and_refuses_junk() -> None:
    """A stored run reads back equal; anything else is a ValueError."""
    run = RunState(
        cursor=Cursor(page=3, page_size=50, end_time=T0, last_workflow_id="x", received=100),
        started_at=T0,
        full=True,
        since=T0 - timedelta(days=1),
        until=T0,
        moves_mark=False,
        read=100,
        inserted=90,
        changed=5,
        unchanged=5,
        pages=2,
    )
    assert RunState.load(run.meta_json(), run.cursor.to_json(), [100, 90, 5, 5, 2]) == run
    for meta in ("[]", '{"v": 2}', '{"v": 1}', "not json"):
        with pytest.raises(ValueError, match="not readable"):
            RunState.load(meta, run.cursor.to_json(), [0, 0, 0, 0, 0])


def test_summary_line_says_what_happened() -> None:
    """The one-line summary names the counts, and says so when resumed or dry."""
    summary = SyncSummary(
        read=1200,
        inserted=30,
        changed=50,
        unchanged=1120,
        pages=6,
        duration=1.25,
        start_time=None,
        end_time=T0,
    )
    assert summary.line() == "1,200 read in 6 pages: 30 inserted, 50 changed, 1,120 unchanged, in 1.2 s"
    dry = SyncSummary(
        read=1, inserted=1, changed=0, unchanged=0, pages=1, duration=0, start_time=None, end_time=T0,
        resumed=True, dry_run=True,
    )  # fmt: skip
    assert "would insert" in dry.line()
    assert "(resumed)" in dry.line()
    assert "nothing written" in dry.line()


# -- real runs ----------------------------------------------------------------------------------------


async def test_first_sync_mirrors_every_workflow(tmp_path: Path) -> None:
    """The first run inserts every workflow with its 8 fields, records each insert, and sets the mark."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(450)
        summary = await sync_workflows(client, sink, page_size=100)
        assert table(db) == wire(fake)
    assert (summary.read, summary.inserted, summary.changed, summary.unchanged) == (450, 450, 0, 0)
    assert (summary.pages, summary.start_time, summary.resumed) == (5, None, False)
    assert len(history(db)) == 450
    assert {h[1] for h in history(db)} == {"inserted"}
    with closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    assert state(db)[1] is not None  # the mark
    assert state(db)[2:4] == (None, None)  # no run in progress


async def test_every_page_keeps_its_own_extra_fields(tmp_path: Path) -> None:
    """
    Undocumented fields on every workflow, over 20 pages read with prefetch: each row keeps its own
    (each page is written with the raw objects of that page, however the requests interleave), so a
    second run over an unchanged server finds nothing changed.
    """
    db = tmp_path / "wf.db"
    async with FakeAirudder(latency=0.002) as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(2000)
        for i, wf in enumerate(fake.workflows):
            wf["priority"] = i % 7
        first = await sync_workflows(client, sink, page_size=100)
        second = await sync_workflows(client, sink, page_size=100, full=True)
        assert table(db) == wire(fake)
    assert (first.inserted, first.pages) == (2000, 20)
    assert (second.read, second.changed, second.unchanged) == (2000, 0, 2000)


async def test_incremental_sync_applies_exactly_the_changes(tmp_path: Path) -> None:
    """2,000 mirrored, 50 status changes + 30 new: the next run applies and records exactly 80, reading
    only its window; a run after it changes nothing."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(2000, step=120.0)  # 66 hours, the last 24 of them still open
        first = await sync_workflows(client, sink)
        changed, new = fake.mutate_random(status_changes=50, new=30, seed=7)
        second = await sync_workflows(client, sink)
        third = await sync_workflows(client, sink)
        assert table(db) == wire(fake)
    assert (second.inserted, second.changed) == (30, 50)
    assert second.read < first.read / 2  # only the open window and the new ones
    assert second.pages < first.pages
    assert second.start_time is not None
    records = history(db)[2000:]
    assert len(records) == 80
    assert {r[0] for r in records if r[1] == "changed"} == set(changed)
    assert {r[0] for r in records if r[1] == "inserted"} == {w["workflow_id"] for w in new}
    for _, _, old_status, new_status, diff in (r for r in records if r[1] == "changed"):
        assert old_status not in FINAL_STATUSES
        assert json.loads(str(diff))["status"] == [old_status, new_status]
    assert (third.inserted, third.changed, third.unchanged) == (0, 0, third.read)
    assert len(history(db)) == 2080
    with closing(sqlite3.connect(db)) as conn, conn:
        (count,) = conn.execute("SELECT count(*) FROM workflows WHERE last_changed > first_seen").fetchone()
    assert count == 50


async def test_full_sync_finds_changes_outside_the_window(tmp_path: Path) -> None:
    """A change to a settled workflow is outside an incremental window; --full finds it."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(600, step=600.0)  # 100 hours, settled but for the last 24
        await sync_workflows(client, sink)
        oldest = str(fake.workflows[-1]["workflow_id"])
        fake.set_status([oldest], "finished", total=99_999)
        incremental = await sync_workflows(client, sink)
        full = await sync_workflows(client, sink, full=True)
        assert table(db) == wire(fake)
    assert incremental.changed == 0
    assert (full.read, full.changed, full.start_time, full.full) == (600, 1, None, True)


async def test_lookback_limits_the_reread(tmp_path: Path) -> None:
    """An open workflow older than the lookback is not re-read; with a longer lookback it is."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(300, step=3600.0, open_for=400 * 3600.0)  # open for ~17 days back
        await sync_workflows(client, sink)
        short = await sync_workflows(client, sink, lookback=timedelta(days=1))
        long = await sync_workflows(client, sink, lookback=timedelta(days=30))
    assert short.read < 30
    assert long.read > 300 - 30


async def test_unknown_fields_are_kept_and_compared(tmp_path: Path) -> None:
    """Fields beyond the documented 8 land in extra as JSON; a change there is a change."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(5)
        fake.workflows[0]["priority"] = 3
        fake.workflows[0]["tags"] = ["vip", "é"]
        await sync_workflows(client, sink)
        assert table(db) == wire(fake)
        fake.workflows[0]["priority"] = 4
        summary = await sync_workflows(client, sink, full=True)
    assert summary.changed == 1
    assert json.loads(str(history(db)[-1][4])) == {
        "extra": ['{"priority":3,"tags":["vip","é"]}', '{"priority":4,"tags":["vip","é"]}']
    }


async def test_dry_run_counts_and_writes_nothing(tmp_path: Path) -> None:
    """--dry-run reports what would change, and leaves tables and state as they were."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(400)
        await sync_workflows(client, sink)
        before = (table(db), history(db), state(db))
        fake.mutate_random(status_changes=10, new=5, seed=1)
        dry = await sync_workflows(client, sink, dry_run=True)
        assert (table(db), history(db), state(db)) == before
        real = await sync_workflows(client, sink)
    assert (dry.inserted, dry.changed, dry.dry_run) == (5, 10, True)
    assert (real.inserted, real.changed) == (5, 10)


async def test_a_failed_run_resumes_after_its_last_page(tmp_path: Path) -> None:
    """A run stopped by an API error keeps its committed pages; the next call resumes it, exactly once."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(1000)
        fake.inject(Fault.http_status(400), on=4)
        with pytest.raises(InvalidRequestError):
            await sync_workflows(client, sink, page_size=100, prefetch=1)
        assert len(table(db)) == 300
        assert json.loads(str(state(db)[3]))["page"] == 4  # the cursor
        dry = await sync_workflows(client, sink, page_size=100, dry_run=True)
        resumed = await sync_workflows(client, sink, page_size=100)
        assert table(db) == wire(fake)
    assert (dry.read, dry.inserted, dry.unchanged, dry.resumed) == (1000, 700, 300, False)
    assert (resumed.read, resumed.inserted, resumed.pages, resumed.resumed) == (1000, 1000, 10, True)
    assert len(history(db)) == 1000
    assert fake.hits("GET", INSTANCELIST_PATH) == 4 + 10 + 7


async def test_other_options_start_a_new_run(tmp_path: Path) -> None:
    """An unfinished run is left when the next call asks for another window; the mark stays put."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(300)
        fake.inject(Fault.http_status(400), on=2)
        with pytest.raises(InvalidRequestError):
            await sync_workflows(client, sink, page_size=100, prefetch=1)
        summary = await sync_workflows(client, sink, full=True, page_size=100)
        assert table(db) == wire(fake)
    assert (summary.resumed, summary.inserted, summary.unchanged) == (False, 200, 100)


async def test_a_future_since_reads_nothing(tmp_path: Path) -> None:
    """A --since after now is an empty window, not an error, and does not move the mark."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(10)
        await sync_workflows(client, sink)
        mark = state(db)[1]
        summary = await sync_workflows(client, sink, since=datetime.now(UTC) + timedelta(days=1))
    assert (summary.read, summary.start_time) == (0, summary.end_time)
    assert state(db)[1] == mark


async def test_a_repeated_id_on_a_page_is_compared_with_its_first_copy(tmp_path: Path) -> None:
    """A page that holds one id twice inserts it once and counts the differing copy as a change."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        wf = fake.add_history(1)[0]
        body = {"data": {"lists": [wf, {**wf, "total": 1}], "count": 2}, "status": "OK", "code": 200}
        fake.inject(Fault.answer(body), on=1)
        summary = await sync_workflows(client, sink)
    assert (summary.inserted, summary.changed) == (1, 1)
    assert table(db)[0][5] == 1


async def test_new_pages_are_inserted_without_looking_up_old_rows(tmp_path: Path) -> None:
    """After a page of new workflows (a first sync) the next is inserted without reading old rows; a page
    of workflows mirrored already is still compared, and nothing is inserted twice."""
    from airudder_async._sqlite_sink import SqliteSink

    db = tmp_path / "wf.db"
    statements: list[str] = []

    def lookups() -> int:
        found = sum(s.startswith("SELECT") and "workflow_id IN" in s for s in statements)
        statements.clear()
        return found

    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        fake.add_history(450)
        assert isinstance(sink, SqliteSink)
        sink._db.set_trace_callback(statements.append)
        first = await sync_workflows(client, sink, page_size=100)
        first_lookups = lookups()
        second = await sync_workflows(client, sink, page_size=100, full=True)
        second_lookups = lookups()
        assert table(db) == wire(fake)
    assert (first_lookups, second_lookups) == (0, 5)
    assert (first.inserted, second.inserted, second.unchanged) == (450, 0, 450)
    assert [h[1] for h in history(db)] == ["inserted"] * 450


async def test_new_pages_after_the_largest_rowid_are_compared(tmp_path: Path) -> None:
    """A table holding the largest rowid gives new rows random ones: the pages are written all the same."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client:
        fake.add_history(150)
        async with open_sink(db):
            pass
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(
                "INSERT INTO workflows (rowid, workflow_id, name, template_name, total, status, create_time, "
                "first_seen, last_seen, last_changed) VALUES (9223372036854775807, '~', 'n', 't', 0, "
                "'finished', '2020-01-01T00:00:00Z', '', '', '')"
            )
        async with open_sink(db) as sink:
            summary = await sync_workflows(client, sink, page_size=100)
    assert table(db)[:-1] == wire(fake)
    assert summary.inserted == 150
    assert sorted(h[0] for h in history(db)) == sorted(str(r[0]) for r in wire(fake))
    assert {h[1] for h in history(db)} == {"inserted"}


async def test_a_refused_insert_of_a_new_page_is_reported(tmp_path: Path) -> None:
    """A constraint of the user's that refuses a new workflow is a SyncError, and nothing is written."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client:
        fake.add_history(150)
        async with open_sink(db):
            pass
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(
                "CREATE TRIGGER stop BEFORE INSERT ON workflows WHEN new.total >= 0 "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        async with open_sink(db) as sink:
            with pytest.raises(SyncError, match="refused"):
                await sync_workflows(client, sink, page_size=100)
    assert table(db) == []
    assert history(db) == []
    assert json.loads(str(state(db)[3]))["page"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"since": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"until": "2026-01-01"}, "timezone-aware"),
        ({"since": T0, "until": T0 - timedelta(seconds=1)}, "is after"),
        ({"lookback": timedelta(seconds=-1)}, "lookback"),
        ({"lookback": 7}, "lookback"),
        ({"page_size": 201}, "page_size"),
        ({"prefetch": 0}, "prefetch"),
        ({"prefetch": 65}, "between 1 and 64"),
    ],
)
async def test_bad_arguments_are_refused_before_anything(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    """Bad arguments raise ValueError before the database or the server is touched."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client, open_sink(db) as sink:
        with pytest.raises(ValueError, match=message):
            await sync_workflows(client, sink, **kwargs)  # type: ignore[arg-type]  # wrong on purpose
        assert fake.requests == []
    assert table(db) == []


async def test_a_closed_client_is_refused_before_the_database(tmp_path: Path) -> None:
    """A closed client raises RuntimeError and the state is not touched."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, open_sink(db) as sink:
        async with fake.client() as client:
            pass
        with pytest.raises(RuntimeError):
            await sync_workflows(client, sink)
    assert state(db)[2] is None


# -- bad databases ------------------------------------------------------------------------------------


async def test_busy_timeout_must_be_a_number() -> None:
    """A negative or NaN busy_timeout is a ValueError."""
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="busy_timeout"):
            async with open_sink("x.db", busy_timeout=bad):
                pass  # pragma: no cover - never reached


async def test_an_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    """A path under a file, or a directory, is a SyncError naming the path; nothing is created."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(SyncError, match=r"cannot open .*file/wf.db"):
        async with open_sink(tmp_path / "file" / "wf.db"):
            pass  # pragma: no cover - never reached
    (tmp_path / "dir").mkdir()
    with pytest.raises(SyncError, match=r"cannot open .*dir"):
        async with open_sink(tmp_path / "dir"):
            pass  # pragma: no cover - never reached


async def test_a_second_sync_of_the_same_file_is_locked_out(tmp_path: Path) -> None:
    """While one sink holds the file, opening it again raises DatabaseLockedError; after, it opens."""
    db = tmp_path / "wf.db"
    async with open_sink(db):
        with pytest.raises(DatabaseLockedError, match="another sync"):
            async with open_sink(db):
                pass  # pragma: no cover - never reached
    async with open_sink(db):
        pass


async def test_another_writer_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    """A write transaction held by another program makes the run fail with DatabaseLockedError at once."""
    db = tmp_path / "wf.db"
    async with open_sink(db):
        pass
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        async with FakeAirudder() as fake, fake.client() as client, open_sink(db, busy_timeout=0) as sink:
            fake.add_history(10)
            with pytest.raises(DatabaseLockedError, match="locked by another writer"):
                await sync_workflows(client, sink)
            assert fake.requests == []
    finally:
        other.rollback()
        other.close()
    assert table(db) == []


async def test_a_locked_new_file_is_reported(tmp_path: Path) -> None:
    """A file another program holds exclusively (not yet in WAL mode) cannot even be checked."""
    db = tmp_path / "wf.db"
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseLockedError):
            async with open_sink(db, busy_timeout=0):
                pass  # pragma: no cover - never reached
    finally:
        other.rollback()
        other.close()


async def test_a_schema_from_the_future_is_refused_untouched(tmp_path: Path) -> None:
    """A database with a newer schema version raises SchemaVersionError and is left byte for byte."""
    db = tmp_path / "wf.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("PRAGMA user_version = 7")
    before = db.read_bytes()
    with pytest.raises(SchemaVersionError, match="schema version 7") as info:
        async with open_sink(db):
            pass  # pragma: no cover - never reached
    assert (info.value.found, info.value.supported) == (7, 1)
    assert db.read_bytes() == before


@pytest.mark.parametrize("content", [b"not a database at all, just text" * 100, None])
async def test_a_file_of_something_else_is_refused(tmp_path: Path, content: bytes | None) -> None:
    """A file that is no SQLite database, or another program's database, raises SyncError."""
    db = tmp_path / "other.db"
    if content is None:
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("CREATE TABLE invoices (id INTEGER)")
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    with pytest.raises(SyncError, match=str(db)):
        async with open_sink(db):
            pass  # pragma: no cover - never reached
    assert db.read_bytes() == before


async def test_an_in_memory_database_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`:memory:` cannot hold a mirror (no WAL, gone at exit): a SyncError says so."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SyncError, match="WAL"):
        async with open_sink(":memory:"):
            pass  # pragma: no cover - never reached


async def test_a_failing_page_leaves_nothing_half_written(tmp_path: Path) -> None:
    """When writing a page fails midway, its rows, history and cursor are all rolled back."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client:
        fake.add_history(300)
        async with open_sink(db) as sink:
            await sync_workflows(client, sink, page_size=100, since=datetime.now(UTC))
        with (
            closing(sqlite3.connect(db)) as conn,
            conn,
        ):  # a trigger of the user's that refuses the 150th history row
            conn.execute(
                "CREATE TRIGGER stop BEFORE INSERT ON workflow_history WHEN "
                "(SELECT count(*) FROM workflow_history) >= 150 BEGIN SELECT RAISE(ABORT, 'full'); END"
            )
        async with open_sink(db) as sink:
            with pytest.raises(SyncError, match="full"):
                await sync_workflows(client, sink, page_size=100, full=True, prefetch=1)
    assert len(table(db)) == 100
    assert json.loads(str(state(db)[3]))["page"] == 2


async def test_a_page_that_fails_while_the_walk_waits_to_send_raises_its_error_alone(tmp_path: Path) -> None:
    """The walk blocked on sending the next page when writing one fails: the database error is raised
    alone, not in a group with a broken stream."""
    import anyio

    class Failing:
        def __init__(self, sink: Sink) -> None:
            self.name = sink.name
            self.load_state, self.begin_run = sink.load_state, sink.begin_run
            self.finish_run = sink.finish_run

        async def write_pages(self, *args: object, **kwargs: object) -> PageCounts:
            await anyio.wait_all_tasks_blocked()  # the walk has filled the stream and waits on it
            raise SyncError("boom")

    async with FakeAirudder() as fake, fake.client() as client, open_sink(tmp_path / "wf.db") as sink:
        fake.add_history(500)
        with pytest.raises(SyncError, match="boom"):  # 50 pages: more than the stream holds
            await sync_workflows(client, Failing(sink), page_size=10, prefetch=1)


async def test_pages_that_queue_up_behind_a_slow_database_are_committed_together(tmp_path: Path) -> None:
    """While one write is in progress the walk goes on; the pages that queued up are then written in
    groups of at most 16, each group one commit with its last page's cursor, and the mirror and its
    counts are those of a page-by-page sync."""
    db, alone = tmp_path / "wf.db", tmp_path / "alone.db"
    async with FakeAirudder() as fake, fake.client() as client:
        fake.add_history(500)
        progress: list[int] = []
        async with open_sink(db) as sink:
            grouping = Grouping(sink)
            summary = await sync_workflows(
                client, grouping, page_size=10, prefetch=1, on_progress=lambda s: progress.append(s.pages)
            )
        async with open_sink(alone) as sink:
            single = Grouping(sink, hold=False)
            await sync_workflows(client, single, page_size=200, prefetch=1)
    assert grouping.sizes[:2] == [1, 16]  # the first group is full: the walk waited on the stream
    assert max(grouping.sizes) == 16
    assert sum(grouping.sizes) == 50
    assert progress == list(itertools.accumulate(grouping.sizes))  # after each commit
    assert (summary.read, summary.inserted, summary.pages) == (500, 500, 50)
    assert sum(single.sizes) == 3
    assert table(db) == table(alone)
    assert len(table(db)) == 500
    assert sorted(history(db)) == sorted(history(alone))
    assert state(db)[4:] == (500, 500, 0, 0, 50)


async def test_a_group_that_fails_commits_nothing_and_the_next_run_resumes_before_it(tmp_path: Path) -> None:
    """A failing group leaves the mirror at the group before it (rows, history and cursor); the next run
    resumes there and ends with every workflow exactly once."""
    db = tmp_path / "wf.db"
    async with FakeAirudder() as fake, fake.client() as client:
        fake.add_history(500)
        async with open_sink(db) as sink:
            with pytest.raises(SyncError, match="the disk is full"):
                await sync_workflows(client, Grouping(sink, fail_at=2), page_size=10, prefetch=1)
        assert len(table(db)) == 170
        assert len(history(db)) == 170
        assert json.loads(str(state(db)[3]))["page"] == 18
        assert state(db)[4] == 170
        async with open_sink(db) as sink:
            summary = await sync_workflows(client, sink, page_size=10, prefetch=1)
    assert summary.resumed
    assert (summary.read, summary.inserted, summary.pages) == (500, 500, 50)
    assert len(table(db)) == 500
    assert len(history(db)) == 500
    assert len({row[0] for row in history(db)}) == 500


async def test_a_dry_run_group_counts_a_repeated_id_as_the_real_run_does(tmp_path: Path) -> None:
    """In a dry run nothing is written, yet a later page of the group that repeats an id compares with
    what the earlier page would have written: the counts are those of the real run."""
    from airudder_async._convert import parse_page

    def page(rows: list[dict[str, object]], number: int) -> PageWrite:
        items, _ = parse_page({"count": 3, "lists": rows})
        return PageWrite(items, {str(r["workflow_id"]): r for r in rows}, Cursor(page=number, page_size=2))

    row = {"name": "n", "template_name": "t", "start_time": None, "end_time": None, "total": 1}
    a, b, c = (
        {**row, "workflow_id": i, "status": "new", "create_time": "2026-01-01T00:00:00Z"} for i in "abc"
    )
    pages = [page([a, b], 2), page([{**b, "status": "finished"}, c], 3)]
    now = datetime.now(UTC)
    async with open_sink(tmp_path / "dry.db") as sink:
        dry = await sink.write_pages(pages, observed_at=now, dry_run=True)
    async with open_sink(tmp_path / "real.db") as sink:
        real = await sink.write_pages(pages, observed_at=now, dry_run=False)
    assert real == PageCounts(inserted=3, changed=1)
    assert dry == real
    assert table(tmp_path / "dry.db") == []


async def test_write_pages_needs_a_page(tmp_path: Path) -> None:
    """An empty list of pages is a caller's mistake, not a commit of nothing."""
    async with open_sink(tmp_path / "wf.db") as sink:
        with pytest.raises(ValueError, match="at least one page"):
            await sink.write_pages([], observed_at=datetime.now(UTC), dry_run=False)


async def test_a_damaged_state_is_a_clear_error(tmp_path: Path) -> None:
    """A sync_state row that does not parse, or a missing table, is a SyncError, not a crash."""
    db = tmp_path / "wf.db"
    async with open_sink(db):
        pass
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE sync_state SET run = 'junk', cursor = '{}'")
    async with FakeAirudder() as fake, fake.client() as client:
        async with open_sink(db) as sink:
            with pytest.raises(SyncError, match="stored run"):
                await sync_workflows(client, sink)
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("DROP TABLE sync_state")
        async with open_sink(db) as sink:
            with pytest.raises(SyncError, match="no such table"):
                await sync_workflows(client, sink)


async def test_postgres_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A postgresql:// URL without asyncpg installed raises SyncError naming the [postgres] extra."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(SyncError, match=r"airudder-async\[postgres\]"):
        async with open_sink("postgresql://u:hunter2@127.0.0.1:1/db"):
            pass  # pragma: no cover - never reached
