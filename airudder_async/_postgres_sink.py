"""
The PostgreSQL sink (the `[postgres]` extra): asyncpg, one statement per page.

That statement upserts the page (`INSERT ... ON CONFLICT (workflow_id) DO UPDATE ... WHERE` a field
differs), records each insert and change in `workflow_history` with the old values it replaced (read
by a CTE from the same snapshot), touches `last_seen` of the unchanged rows, and stores the walk's
cursor with the run's counts: one statement, so one transaction. A session advisory lock keeps a
second sync of the same database out; `lock_timeout` bounds waits on another writer's row locks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from .errors import DatabaseLockedError, SchemaVersionError, SyncError
from .models import Cursor, Workflow
from .sync import (
    FINAL_STATUSES,
    SCHEMA_VERSION,
    PageCounts,
    PageWrite,
    RunState,
    SyncState,
    extra_fields,
    redact_url,
)

__all__ = ["PostgresSink"]

_LOCK_KEY = 0x41525544_53594E43  # "ARUDSYNC": the advisory lock of a sync, one per database
_CONNECT_TIMEOUT = 10.0
_FINAL = ", ".join(f"'{s}'" for s in sorted(FINAL_STATUSES))  # constants of ours, no user text
_SCHEMA = f"""
CREATE TABLE workflows (
    workflow_id text PRIMARY KEY,
    name text NOT NULL,
    template_name text NOT NULL,
    start_time timestamptz,
    end_time timestamptz,
    total bigint NOT NULL,
    status text NOT NULL,
    create_time timestamptz NOT NULL,
    extra jsonb,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    last_changed timestamptz NOT NULL
);
CREATE INDEX workflows_open ON workflows (create_time) WHERE status NOT IN ({_FINAL});
CREATE TABLE workflow_history (
    id bigserial PRIMARY KEY,
    workflow_id text NOT NULL,
    observed_at timestamptz NOT NULL,
    kind text NOT NULL,
    old_status text,
    new_status text NOT NULL,
    changes jsonb
);
CREATE TABLE sync_state (
    id integer PRIMARY KEY CHECK (id = 1),
    schema_version integer NOT NULL,
    mark timestamptz,
    run text,
    cursor text,
    read bigint NOT NULL DEFAULT 0,
    inserted bigint NOT NULL DEFAULT 0,
    changed bigint NOT NULL DEFAULT 0,
    unchanged bigint NOT NULL DEFAULT 0,
    pages bigint NOT NULL DEFAULT 0
);
INSERT INTO sync_state (id, schema_version) VALUES (1, {SCHEMA_VERSION});
"""
_DATA = "name, template_name, start_time, end_time, total, status, create_time, extra"
_OLD = ", ".join(f"o.{c.strip()}" for c in _DATA.split(","))
_NEW = ", ".join(f"i.{c.strip()}" for c in _DATA.split(","))
_W = ", ".join(f"w.{c.strip()}" for c in _DATA.split(","))
_EXCLUDED = ", ".join(f"excluded.{c.strip()}" for c in _DATA.split(","))
_SET = ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _DATA.split(","))
_PAGE = f"""
WITH incoming AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bigint[],
        $7::text[], $8::timestamptz[], $9::jsonb[]
    ) AS t(workflow_id, {_DATA})
), old AS (
    -- One key lookup per row: a plain join (or = ANY) was planned as a scan of the whole table per page
    -- while the table grew faster than its statistics; OFFSET 0 keeps the planner from flattening it.
    SELECT o.* FROM incoming i CROSS JOIN LATERAL (
        SELECT w.workflow_id, {_W} FROM workflows w WHERE w.workflow_id = i.workflow_id OFFSET 0
    ) o
), upserted AS (
    INSERT INTO workflows AS w (workflow_id, {_DATA}, first_seen, last_seen, last_changed)
    SELECT i.workflow_id, {_NEW}, $10, $10, $10 FROM incoming i
    ON CONFLICT (workflow_id) DO UPDATE SET {_SET}, last_seen = excluded.last_seen,
        last_changed = excluded.last_changed
    WHERE ({_W}) IS DISTINCT FROM ({_EXCLUDED})
    RETURNING w.workflow_id, w.status
), touched AS (
    UPDATE workflows w SET last_seen = $10
    FROM old o JOIN incoming i USING (workflow_id)
    WHERE w.workflow_id = o.workflow_id AND ({_OLD}) IS NOT DISTINCT FROM ({_NEW})
    RETURNING 1
), history AS (
    INSERT INTO workflow_history (workflow_id, observed_at, kind, old_status, new_status, changes)
    SELECT u.workflow_id, $10,
        CASE WHEN o.workflow_id IS NULL THEN 'inserted' ELSE 'changed' END, o.status, u.status,
        CASE WHEN o.workflow_id IS NULL THEN NULL ELSE (
            SELECT jsonb_object_agg(n.key, jsonb_build_array(ov.value, n.value))
            FROM jsonb_each(to_jsonb(i)) n LEFT JOIN jsonb_each(to_jsonb(o)) ov USING (key)
            WHERE ov.value IS DISTINCT FROM n.value
        ) END
    FROM upserted u JOIN incoming i USING (workflow_id) LEFT JOIN old o ON o.workflow_id = u.workflow_id
    RETURNING kind
), counts AS (
    SELECT count(*) FILTER (WHERE kind = 'inserted') AS inserted,
           count(*) FILTER (WHERE kind = 'changed') AS changed
    FROM history
), state AS (
    UPDATE sync_state SET cursor = $11, read = read + $12, inserted = sync_state.inserted + c.inserted,
        changed = sync_state.changed + c.changed,
        unchanged = sync_state.unchanged + ($12 - c.inserted - c.changed), pages = pages + 1
    FROM counts c WHERE id = 1
    RETURNING 1
)
SELECT c.inserted, c.changed, (SELECT count(*) FROM touched) AS unchanged FROM counts c
"""
# A page of new workflows only (a first sync): plain inserts, without the lookup of old rows, the
# conflict handling and the comparison. A workflow already in the table makes it fail, as a whole
# (one statement), and the page is written with _PAGE instead.
_NEW_PAGE = f"""
WITH inserted AS (
    INSERT INTO workflows (workflow_id, {_DATA}, first_seen, last_seen, last_changed)
    SELECT t.*, $10, $10, $10 FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bigint[],
        $7::text[], $8::timestamptz[], $9::jsonb[]
    ) AS t
    RETURNING workflow_id, status
), history AS (
    INSERT INTO workflow_history (workflow_id, observed_at, kind, new_status)
    SELECT workflow_id, $10, 'inserted', status FROM inserted
), state AS (
    UPDATE sync_state SET cursor = $11, read = read + $12, inserted = inserted + $12, pages = pages + 1
    WHERE id = 1
)
SELECT count(*) FROM inserted
"""


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise SyncError(
            "a postgresql:// database needs asyncpg: pip install 'airudder-async[postgres]'"
        ) from None
    return asyncpg


class PostgresSink:
    """
    A mirror in a PostgreSQL database; make one with `PostgresSink.connect()` (or `sync.open_sink()`).
    """

    def __init__(self, name: str, connection: Any, asyncpg: Any) -> None:
        self.name = name
        self._db = connection
        self._pg = asyncpg
        # Whether the last page written was all new workflows: then the next one is tried with _NEW_PAGE.
        self._all_new = True

    @classmethod
    async def connect(cls, url: str, *, busy_timeout: float) -> PostgresSink:
        """Connect to *url*, take the sync lock, and check (or make) the tables; see `sync.open_sink()`."""
        asyncpg = _asyncpg()
        name = redact_url(url)
        try:
            db = await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT)
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
            raise SyncError(f"cannot connect to {name}: the user name or password was refused") from None
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise SyncError(f"cannot connect to {name}: {_scrub(str(exc), url)}") from None
        sink = cls(name, db, asyncpg)
        try:
            await sink._prepare(busy_timeout)
        except BaseException:
            await db.close()
            raise
        return sink

    async def _prepare(self, busy_timeout: float) -> None:
        db = self._db
        async with self._guard():
            await db.execute(f"SET lock_timeout = {max(1, round(busy_timeout * 1000))}")
            if not await db.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
                raise DatabaseLockedError(f"{self.name} is locked by another writer (another sync of it)")
            if await db.fetchval("SELECT to_regclass('sync_state')") is not None:
                version = await db.fetchval("SELECT max(schema_version) FROM sync_state")
                if version is not None and version > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"{self.name} has schema version {version}, newer than this airudder-async writes "
                        f"({SCHEMA_VERSION}): upgrade airudder-async; nothing was written",
                        found=version,
                        supported=SCHEMA_VERSION,
                    )
                return
            if await db.fetchval("SELECT to_regclass('workflows')") is not None:
                raise SyncError(f"{self.name} has a workflows table of something else: use another database")
            async with db.transaction():
                await db.execute(_SCHEMA)

    def _guard(self) -> _Guard:
        return _Guard(self)

    async def aclose(self) -> None:
        """Close the connection (which releases the sync lock). Idempotent."""
        await self._db.close()

    # -- Sink ------------------------------------------------------------------------------------------

    async def load_state(self) -> SyncState:
        """Read the mark, the oldest open workflow and any unfinished run."""
        async with self._guard():
            row = await self._db.fetchrow(
                "SELECT mark, run, cursor, read, inserted, changed, unchanged, pages, "
                f"(SELECT min(create_time) FROM workflows WHERE status NOT IN ({_FINAL})) AS oldest "
                "FROM sync_state WHERE id = 1"
            )
        run = None
        if row["run"] is not None:
            try:
                run = RunState.load(row["run"], row["cursor"], [int(row[i]) for i in range(3, 8)])
            except ValueError as exc:
                raise SyncError(f"{self.name}: {exc}") from None
        return SyncState(mark=row["mark"], oldest_open=row["oldest"], run=run)

    async def begin_run(self, run: RunState) -> None:
        """Store *run* as the run in progress."""
        async with self._guard():
            await self._db.execute(
                "UPDATE sync_state SET run = $1, cursor = $2, read = $3, inserted = $4, changed = $5, "
                "unchanged = $6, pages = $7 WHERE id = 1",
                *run.stored(),
            )

    async def write_pages(
        self, pages: Sequence[PageWrite], *, observed_at: datetime, dry_run: bool
    ) -> PageCounts:
        """Apply *pages* in order, each with its cursor in one statement (see `sync.Sink`)."""
        if not pages:
            raise ValueError("write_pages() needs at least one page")
        counts = PageCounts()
        for page in pages:
            counts += await self._write_page(
                page.items, page.raw, cursor=page.cursor, observed_at=observed_at, dry_run=dry_run
            )
        return counts

    async def _write_page(
        self,
        items: Sequence[Workflow],
        raw: Mapping[str, Mapping[str, object]],
        *,
        cursor: Cursor,
        observed_at: datetime,
        dry_run: bool,
    ) -> PageCounts:
        unique = {wf.workflow_id: wf for wf in items}  # one statement may not touch a row twice
        rows = list(unique.values())
        args = (
            [wf.workflow_id for wf in rows],
            [wf.name for wf in rows],
            [wf.template_name for wf in rows],
            [wf.start_time for wf in rows],
            [wf.end_time for wf in rows],
            [wf.total for wf in rows],
            [wf.status for wf in rows],
            [wf.create_time for wf in rows],
            [extra_fields(raw.get(wf.workflow_id, {})) for wf in rows],
            observed_at,
            cursor.to_json(),
            len(items),  # read: a repeated id counts as read (and unchanged), as in the summary
        )
        async with self._guard():
            if not dry_run and self._all_new and len(rows) == len(items):
                try:
                    await self._db.fetchval(_NEW_PAGE, *args)
                except self._pg.UniqueViolationError:
                    pass  # a workflow is in the table already: compare the page
                else:
                    return PageCounts(inserted=len(rows))
            if dry_run:
                tx = self._db.transaction()
                await tx.start()
                try:
                    row = await self._db.fetchrow(_PAGE, *args)
                finally:
                    await tx.rollback()
            else:
                row = await self._db.fetchrow(_PAGE, *args)
        extra_repeats = len(items) - len(rows)
        self._all_new = int(row["inserted"]) == len(items)
        return PageCounts(
            inserted=int(row["inserted"]),
            changed=int(row["changed"]),
            unchanged=int(row["unchanged"]) + extra_repeats,
        )

    async def finish_run(self, *, mark: datetime | None) -> None:
        """End the run in progress, moving the mark to *mark* unless it is None."""
        async with self._guard():
            await self._db.execute(
                "UPDATE sync_state SET run = NULL, cursor = NULL, mark = coalesce($1, mark) WHERE id = 1",
                mark,
            )


class _Guard:
    """Turn asyncpg's errors into SyncError (DatabaseLockedError for lock waits), passwords scrubbed."""

    def __init__(self, sink: PostgresSink) -> None:
        self._sink = sink

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        pg = self._sink._pg
        if isinstance(exc, (pg.LockNotAvailableError, pg.DeadlockDetectedError)):
            raise DatabaseLockedError(f"{self._sink.name} is locked by another writer: {exc}") from None
        if isinstance(exc, (pg.PostgresError, pg.InterfaceError, pg.InternalClientError, OSError)):
            raise SyncError(f"{self._sink.name}: {exc}") from None


def _scrub(text: str, url: str) -> str:
    """Remove the password of *url* from *text*, wherever a driver may have echoed it."""
    from urllib.parse import unquote, urlsplit

    password = urlsplit(url).password
    for secret in {password, unquote(password) if password else None} - {None, ""}:
        text = text.replace(cast(str, secret), "***")
    return text
