"""
`sync_workflows()` into a real PostgreSQL server that this module starts (initdb + pg_ctl, 127.0.0.1).

Without the server binaries the module fails at its fixture, on purpose: CI installs them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from airudder_async.errors import DatabaseLockedError, InvalidRequestError, SchemaVersionError, SyncError
from airudder_async.sync import extra_fields, open_sink, sync_workflows
from airudder_async.testing import FakeAirudder, Fault
from tests.pgserver import PostgresServer
from tests.support import Grouping, cli

pytestmark = pytest.mark.anyio

DATA = ("workflow_id", "name", "template_name", "start_time", "end_time", "total", "status", "create_time")
_names = itertools.count()


@pytest.fixture(scope="session")
def server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, stopped at its end."""
    pg = PostgresServer().start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
async def url(server: PostgresServer) -> str:
    """The URL of a new, empty database on the server."""
    name = f"mirror_{next(_names)}"
    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return server.url(name)


async def query(url: str, sql: str) -> list[Any]:
    """Run *sql* on the database *url* and return its rows."""
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def table(url: str) -> list[tuple[object, ...]]:
    """The mirrored workflows as wire values (times as ISO text), ordered by id."""
    rows = await query(url, f"SELECT {', '.join(DATA)}, extra FROM workflows ORDER BY workflow_id")
    out = []
    for row in rows:
        values = [row[k] for k in DATA]
        for i in (3, 4, 7):
            values[i] = None if values[i] is None else values[i].strftime("%Y-%m-%dT%H:%M:%SZ")
        extra = None if row["extra"] is None else json.dumps(json.loads(row["extra"]), sort_keys=True)
        out.append((*values, extra))
    return out


def wire(fake: FakeAirudder) -> list[tuple[object, ...]]:
    """The fake's workflows as the mirror should hold them, ordered by id."""
    rows = []
    for wf in fake.workflows:
        extra = extra_fields(wf)
        extra = None if extra is None else json.dumps(json.loads(extra), sort_keys=True)
        rows.append((*(wf[k] for k in DATA), extra))
    return sorted(rows, key=lambda r: str(r[0]))


async def test_first_and_incremental_syncs_on_postgres(url: str) -> None:
    """2,000 mirrored, then 50 status changes + 30 new: exactly 80 applied and recorded in the window
    only; a third run changes nothing; a dry run writes nothing."""
    async with FakeAirudder() as fake, fake.client() as client, open_sink(url) as sink:
        fake.add_history(2000, step=120.0)
        fake.workflows[5]["priority"] = 2
        first = await sync_workflows(client, sink)
        assert await table(url) == wire(fake)
        changed, new = fake.mutate_random(status_changes=50, new=30, seed=3)
        before = await query(url, "SELECT count(*) FROM workflow_history")
        dry = await sync_workflows(client, sink, dry_run=True)
        assert await query(url, "SELECT count(*) FROM workflow_history") == before
        second = await sync_workflows(client, sink)
        third = await sync_workflows(client, sink)
        assert await table(url) == wire(fake)
    assert (first.inserted, first.read) == (2000, 2000)
    assert (dry.inserted, dry.changed) == (30, 50)
    assert (second.inserted, second.changed, second.unchanged) == (30, 50, second.read - 80)
    assert second.read < first.read / 2
    assert (third.inserted, third.changed) == (0, 0)
    records = await query(
        url, "SELECT workflow_id, kind, old_status, new_status, changes FROM workflow_history"
    )
    assert len(records) == 2080
    moved = [r for r in records if r["kind"] == "changed"]
    assert {r["workflow_id"] for r in moved} == set(changed)
    for r in moved:
        assert json.loads(r["changes"])["status"] == [r["old_status"], r["new_status"]]
    assert {r["workflow_id"] for r in records[2000:] if r["kind"] == "inserted"} == {
        w["workflow_id"] for w in new
    }
    (state,) = await query(url, "SELECT mark, run, cursor, read, inserted, changed FROM sync_state")
    assert (state["run"], state["cursor"], state["read"], state["inserted"]) == (None, None, third.read, 0)


async def test_new_pages_skip_the_comparison_on_postgres(url: str) -> None:
    """After a page of new workflows (a first sync) the next is inserted without the upsert and its
    comparison; a page of workflows mirrored already is still compared, nothing inserted twice."""
    from airudder_async._postgres_sink import PostgresSink

    queries: list[str] = []

    def upserts() -> int:
        found = sum("ON CONFLICT" in q for q in queries)
        queries.clear()
        return found

    async with FakeAirudder() as fake, fake.client() as client, open_sink(url) as sink:
        fake.add_history(450)
        assert isinstance(sink, PostgresSink)
        sink._db.add_query_logger(lambda record: queries.append(record.query))
        first = await sync_workflows(client, sink, page_size=100)
        first_upserts = upserts()
        second = await sync_workflows(client, sink, page_size=100, full=True)
        second_upserts = upserts()
        assert await table(url) == wire(fake)
    assert (first_upserts, second_upserts) == (0, 5)
    assert (first.inserted, second.inserted, second.unchanged) == (450, 0, 450)
    kinds = await query(url, "SELECT kind, count(*) AS n FROM workflow_history GROUP BY kind")
    assert [(r["kind"], r["n"]) for r in kinds] == [("inserted", 450)]


async def test_pages_written_together_on_postgres(url: str) -> None:
    """A group of pages that queued up is written page by page, each with its cursor; the mirror and the
    counts are those of single pages. An empty group is refused."""
    async with FakeAirudder() as fake, fake.client() as client, open_sink(url) as sink:
        fake.add_history(500)
        with pytest.raises(ValueError, match="at least one page"):
            await sink.write_pages([], observed_at=datetime.now(UTC), dry_run=False)
        grouping = Grouping(sink)
        summary = await sync_workflows(client, grouping, page_size=10, prefetch=1)
        assert await table(url) == wire(fake)
    assert grouping.sizes[:2] == [1, 16]
    assert (summary.read, summary.inserted, summary.pages) == (500, 500, 50)
    (state,) = await query(url, "SELECT read, inserted, pages FROM sync_state")
    assert tuple(state) == (500, 500, 50)


async def test_a_failed_run_resumes_on_postgres(url: str) -> None:
    """A run stopped by an API error resumes after its last committed page, each workflow once."""
    async with FakeAirudder() as fake, fake.client() as client, open_sink(url) as sink:
        fake.add_history(500)
        fake.inject(Fault.http_status(400), on=3)
        with pytest.raises(InvalidRequestError):
            await sync_workflows(client, sink, page_size=100, prefetch=1)
        assert len(await table(url)) == 200
        resumed = await sync_workflows(client, sink, page_size=100)
        assert await table(url) == wire(fake)
    assert (resumed.resumed, resumed.inserted, resumed.read) == (True, 500, 500)
    assert await query(url, "SELECT count(*) AS n FROM workflow_history") == [(500,)]


async def test_a_repeated_id_on_a_page_is_written_once(url: str) -> None:
    """One statement may not touch a row twice: a page repeating an id keeps its last copy."""
    async with FakeAirudder() as fake, fake.client() as client, open_sink(url) as sink:
        wf = fake.add_history(1)[0]
        body = {"data": {"lists": [wf, {**wf, "total": 1}], "count": 2}, "status": "OK", "code": 200}
        fake.inject(Fault.answer(body), on=1)
        summary = await sync_workflows(client, sink)
    assert (summary.inserted, summary.unchanged) == (1, 1)
    assert (await table(url))[0][5] == 1
    (state,) = await query(url, "SELECT read, inserted, unchanged FROM sync_state")
    assert tuple(state) == (2, 1, 1)  # the stored counts agree with the summary


async def test_wrong_credentials_are_a_clear_error_without_the_password(server: PostgresServer) -> None:
    """A refused password raises SyncError that names the database but never the password."""
    bad = server.url(password="not-the-password-42")
    with pytest.raises(SyncError, match="password was refused") as info:
        async with open_sink(bad):
            pass  # pragma: no cover - never reached
    assert "not-the-password-42" not in str(info.value)
    assert "postgres:***@127.0.0.1" in str(info.value)


async def test_an_unreachable_server_is_a_clear_error(server: PostgresServer) -> None:
    """A database that does not exist (or a server that does not answer) is a SyncError, password hidden."""
    with pytest.raises(SyncError, match="cannot connect") as info:
        async with open_sink(server.url("no_such_database")):
            pass  # pragma: no cover - never reached
    assert server.password not in str(info.value)


async def test_a_second_sync_is_locked_out(url: str) -> None:
    """While one sink holds the database, a second one raises DatabaseLockedError."""
    async with open_sink(url):
        with pytest.raises(DatabaseLockedError, match="another sync"):
            async with open_sink(url):
                pass  # pragma: no cover - never reached
    async with open_sink(url):
        pass


async def test_another_writer_holding_rows_is_reported(url: str) -> None:
    """Another program's transaction on the mirror's rows fails the page at once, nothing half-written."""
    async with FakeAirudder() as fake, fake.client() as client:
        fake.add_history(20)
        async with open_sink(url) as sink:
            await sync_workflows(client, sink)
        other = await asyncpg.connect(url)
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute("UPDATE workflows SET total = total")
            async with open_sink(url, busy_timeout=0.01) as sink:
                with pytest.raises(DatabaseLockedError, match="locked by another writer"):
                    await sync_workflows(client, sink, full=True)
            await tx.rollback()
        finally:
            await other.close()
    (row,) = await query(url, "SELECT pages, cursor IS NOT NULL AS pending FROM sync_state")
    assert (row["pages"], row["pending"]) == (0, True)


async def test_a_schema_from_the_future_is_refused(url: str) -> None:
    """A newer schema version raises SchemaVersionError and nothing is written."""
    async with open_sink(url):
        pass
    await query(url, "UPDATE sync_state SET schema_version = 5")
    with pytest.raises(SchemaVersionError, match="schema version 5"):
        async with open_sink(url):
            pass  # pragma: no cover - never reached
    assert await query(url, "SELECT schema_version, run FROM sync_state") == [(5, None)]


async def test_a_database_of_something_else_is_refused(url: str) -> None:
    """A database that already has another `workflows` table is not touched."""
    await query(url, "CREATE TABLE workflows (id integer)")
    with pytest.raises(SyncError, match="something else"):
        async with open_sink(url):
            pass  # pragma: no cover - never reached
    assert await query(url, "SELECT to_regclass('sync_state') AS t") == [(None,)]


async def test_a_damaged_state_and_a_lost_connection(url: str) -> None:
    """A stored run that does not parse, and a server gone mid-run, are SyncErrors."""
    async with open_sink(url):
        pass
    await query(url, "UPDATE sync_state SET run = 'junk', cursor = '{}'")
    async with FakeAirudder() as fake, fake.client() as client:
        async with open_sink(url) as sink:
            with pytest.raises(SyncError, match="stored run"):
                await sync_workflows(client, sink)
        await query(url, "UPDATE sync_state SET run = NULL, cursor = NULL")
        async with open_sink(url) as sink:
            await query(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
            with pytest.raises(SyncError, match="mirror_"):
                await sync_workflows(client, sink)


async def test_cli_sync_to_postgres_and_wrong_password(url: str, server: PostgresServer) -> None:
    """`sync --db postgresql://...` works; with a wrong password it exits 1 and prints no password."""
    done = await cli("sync", "--sandbox", "300", "--db", url)
    assert done.code == 0, done.err
    assert "300 inserted" in done.err
    assert server.password not in done.err
    assert "postgres:***@" in done.err
    bad = server.url(password="s3cret-wrong")
    failed = await cli("sync", "--sandbox", "10", "--db", bad)
    assert failed.code == 1
    assert "s3cret-wrong" not in failed.err
    assert "password was refused" in failed.err
