"""
The SQLite sink: stdlib `sqlite3` on a worker thread, one connection, WAL mode, one transaction per
`write_pages()` call (a page, or the pages that queued up while the last ones were written).

Times are stored as ISO 8601 text in UTC with `Z`. `synchronous=NORMAL` in WAL mode survives a killed
process whole; a power cut may lose the last pages committed, never part of one (the cursor goes with
its rows), so a restart still reads each workflow exactly once. A second sync of the same file is
refused by an advisory lock on `FILE-sync.lock`; another program's long write transaction by
`busy_timeout`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import ModuleType
from typing import TypeVar

import anyio
import anyio.to_thread

from ._time import parse_time
from .errors import DatabaseLockedError, SchemaVersionError, SyncError
from .models import Cursor, Workflow
from .sync import (
    _FIELDSET,
    FINAL_STATUSES,
    SCHEMA_VERSION,
    PageCounts,
    PageWrite,
    RunState,
    SyncState,
    changes,
    extra_fields,
)

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: only SQLite's own locks guard the file
    fcntl = None

__all__ = ["SqliteSink"]

T = TypeVar("T")
_FINAL = ", ".join(f"'{s}'" for s in sorted(FINAL_STATUSES))  # constants of ours, no user text
_SCHEMA = f"""
CREATE TABLE workflows (
    workflow_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    template_name TEXT NOT NULL,
    start_time TEXT,
    end_time TEXT,
    total INTEGER NOT NULL,
    status TEXT NOT NULL,
    create_time TEXT NOT NULL,
    extra TEXT,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    last_changed TEXT NOT NULL
);
CREATE INDEX workflows_open ON workflows (create_time) WHERE status NOT IN ({_FINAL});
CREATE TABLE workflow_history (
    id INTEGER PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    observed_at TEXT NOT NULL,
    kind TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL,
    changes TEXT
);
CREATE TABLE sync_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    mark TEXT,
    run TEXT,
    cursor TEXT,
    read INTEGER NOT NULL DEFAULT 0,
    inserted INTEGER NOT NULL DEFAULT 0,
    changed INTEGER NOT NULL DEFAULT 0,
    unchanged INTEGER NOT NULL DEFAULT 0,
    pages INTEGER NOT NULL DEFAULT 0
);
INSERT INTO sync_state (id) VALUES (1);
"""
_COLUMNS = "workflow_id, name, template_name, start_time, end_time, total, status, create_time, extra"
_INSERT = (
    f"INSERT INTO workflows ({_COLUMNS}, first_seen, last_seen, last_changed) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE workflows SET name = ?, template_name = ?, start_time = ?, end_time = ?, total = ?, status = ?, "
    "create_time = ?, extra = ?, last_seen = ?, last_changed = ? WHERE workflow_id = ?"
)
_TOUCH = "UPDATE workflows SET last_seen = ? WHERE workflow_id = ?"
_HISTORY = (
    "INSERT INTO workflow_history (workflow_id, observed_at, kind, old_status, new_status, changes) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_HISTORY_NEW = (
    "INSERT INTO workflow_history (workflow_id, observed_at, kind, new_status) "
    "SELECT workflow_id, ?, 'inserted', status FROM workflows WHERE rowid > ? ORDER BY rowid"
)
_ADVANCE = (
    "UPDATE sync_state SET cursor = ?, read = read + ?, inserted = inserted + ?, changed = changed + ?, "
    "unchanged = unchanged + ?, pages = pages + ? WHERE id = 1"
)


def utc_text(value: datetime | None) -> str | None:
    """A time as stored: ISO 8601 in UTC with Z (as sent when it has no UTC equivalent)."""
    if value is None:
        return None
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        return value.isoformat()
    text = value.isoformat()
    return text[:-6] + "Z"


Record = tuple[str, str, str, str | None, str | None, int, str, str, str | None]


# A time sent in the form utc_text() makes is stored as sent: formatting 300,000 datetimes again was
# the biggest CPU cost of a first sync. Anything else (an offset, fractions) goes through utc_text().
_CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").fullmatch


def page_records(items: Sequence[Workflow], raw: Mapping[str, Mapping[str, object]]) -> list[Record]:
    """A page of workflows as rows of the 9 data columns (*raw*: the objects sent, by id)."""
    canonical, fieldset = _CANONICAL, _FIELDSET  # one loop for the page, names local: this is per row
    empty: Mapping[str, object] = {}
    out: list[Record] = []
    for wf in items:
        sent = raw.get(wf.workflow_id, empty)
        start, end, created = sent.get("start_time"), sent.get("end_time"), sent.get("create_time")
        out.append(
            (
                wf.workflow_id,
                wf.name,
                wf.template_name,
                start if type(start) is str and canonical(start) else utc_text(wf.start_time),
                end if type(end) is str and canonical(end) else utc_text(wf.end_time),
                wf.total,
                wf.status,
                created if type(created) is str and canonical(created) else utc_text(wf.create_time) or "",
                None if sent.keys() <= fieldset else extra_fields(sent),
            )
        )
    return out


def _is_busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteSink:
    """
    A mirror in the SQLite file *path*; make one with `SqliteSink.connect()` (or `sync.open_sink()`).
    """

    def __init__(self, path: str, connection: sqlite3.Connection, lock_fd: int | None) -> None:
        self.path = path
        self.name = path
        self._db = connection
        self._lock_fd = lock_fd
        self._limiter = anyio.CapacityLimiter(1)  # one statement at a time on the one connection
        # Whether the last page written was all new workflows: then the next one is tried as plain
        # inserts first, without the lookup of old rows (a first sync spends most of its time there).
        self._all_new = True

    @classmethod
    async def connect(cls, path: str, *, busy_timeout: float) -> SqliteSink:
        """Open (and on first use create) the mirror at *path*; see `sync.open_sink()`."""
        return await anyio.to_thread.run_sync(cls._connect, path, busy_timeout)

    @classmethod
    def _connect(cls, path: str, busy_timeout: float) -> SqliteSink:
        lock_fd = _lock(path)
        try:
            db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            _unlock(lock_fd)
            raise SyncError(f"cannot open {path}: {exc}") from None
        try:
            _prepare(db, path)
        except BaseException:
            db.close()
            _unlock(lock_fd)
            raise
        return cls(path, db, lock_fd)

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(self._guarded, func, args, limiter=self._limiter)

    def _guarded(self, func: Callable[..., T], args: tuple[object, ...]) -> T:
        try:
            return func(*args)
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.rollback()
            raise _translate(exc, self.path) from None

    async def aclose(self) -> None:
        """Close the connection and release the lock. Idempotent."""
        await anyio.to_thread.run_sync(self._close, limiter=self._limiter)

    def _close(self) -> None:
        self._db.close()
        _unlock(self._lock_fd)
        self._lock_fd = None

    # -- Sink ------------------------------------------------------------------------------------------

    async def load_state(self) -> SyncState:
        """Read the mark, the oldest open workflow and any unfinished run."""
        return await self._run(self._load_state)

    def _load_state(self) -> SyncState:
        row = self._db.execute(
            "SELECT mark, run, cursor, read, inserted, changed, unchanged, pages FROM sync_state WHERE id = 1"
        ).fetchone()
        (oldest,) = self._db.execute(
            f"SELECT min(create_time) FROM workflows WHERE status NOT IN ({_FINAL})"
        ).fetchone()
        run = None
        if row[1] is not None:
            try:
                run = RunState.load(row[1], row[2], row[3:])
            except ValueError as exc:
                raise SyncError(f"{self.path}: {exc}") from None
        return SyncState(
            mark=None if row[0] is None else parse_time(row[0]),
            oldest_open=None if oldest is None else parse_time(oldest),
            run=run,
        )

    async def begin_run(self, run: RunState) -> None:
        """Store *run* as the run in progress."""
        await self._run(self._begin_run, run)

    def _begin_run(self, run: RunState) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE sync_state SET run = ?, cursor = ?, read = ?, inserted = ?, changed = ?, "
                "unchanged = ?, pages = ? WHERE id = 1",
                run.stored(),
            )

    async def write_pages(
        self, pages: Sequence[PageWrite], *, observed_at: datetime, dry_run: bool
    ) -> PageCounts:
        """Apply *pages* and store the last one's cursor, in one transaction (see `sync.Sink`)."""
        if not pages:
            raise ValueError("write_pages() needs at least one page")
        records = [page_records(page.items, page.raw) for page in pages]
        return await self._run(self._write_pages, records, pages[-1].cursor, utc_text(observed_at), dry_run)

    def _write_pages(self, pages: list[list[Record]], cursor: Cursor, now: str, dry_run: bool) -> PageCounts:
        if not dry_run and self._all_new:
            counts = self._insert_all(pages, cursor, now)
            if counts is not None:
                return counts
        read = sum(map(len, pages))
        with self._transaction():
            counts = PageCounts()
            # In order: a later page compares with what an earlier one wrote (or, in a dry run, would
            # have written: *unwritten* keeps those rows).
            unwritten: dict[str, Record] = {}
            for records in pages:
                counts += self._compare_and_apply(records, now, dry_run, unwritten)
            self._all_new = counts.inserted == read
            if dry_run:
                return counts
            self._advance(cursor, read, len(pages), counts)
        return counts

    def _insert_all(self, pages: list[list[Record]], cursor: Cursor, now: str) -> PageCounts | None:
        """
        Write pages of new workflows without looking them up first (a first sync), in one transaction;
        None, with nothing written, when one of them is in the table already (then compare the pages).
        """
        db = self._db
        rows = [(*rec, now, now, now) for records in pages for rec in records]
        db.execute("BEGIN IMMEDIATE")  # not a savepoint: its journal of the pages changed cost 2x
        (last,) = db.execute("SELECT coalesce(max(rowid), 0) FROM workflows").fetchone()
        try:
            db.executemany(_INSERT, rows)
        except sqlite3.IntegrityError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
                raise
            db.execute("ROLLBACK")
            return None
        # The history rows come from the rows just inserted, in SQLite: they have the rowids after the
        # largest one before (unless that was the largest possible; then the pages are compared instead).
        if db.execute(_HISTORY_NEW, (now, last)).rowcount != len(rows):
            db.execute("ROLLBACK")
            return None
        counts = PageCounts(inserted=len(rows))
        self._advance(cursor, len(rows), len(pages), counts)
        db.execute("COMMIT")
        return counts

    def _advance(self, cursor: Cursor, read: int, pages: int, counts: PageCounts) -> None:
        self._db.execute(
            _ADVANCE, (cursor.to_json(), read, counts.inserted, counts.changed, counts.unchanged, pages)
        )

    def _compare_and_apply(
        self, records: list[Record], now: str, dry_run: bool, unwritten: dict[str, Record]
    ) -> PageCounts:
        """
        Compare a page with the rows it replaces, then insert, update and touch; with *dry_run* write
        nothing, and keep in *unwritten* the rows that would have been written.
        """
        db = self._db
        marks = ",".join("?" * len(records))  # SQLite takes an empty IN ()
        found = db.execute(
            f"SELECT {_COLUMNS} FROM workflows WHERE workflow_id IN ({marks})", [r[0] for r in records]
        )
        existing: dict[str, tuple[object, ...]] = {row[0]: row for row in found}
        existing.update((rec[0], unwritten[rec[0]]) for rec in records if rec[0] in unwritten)
        inserts: list[tuple[object, ...]] = []
        updates: list[tuple[object, ...]] = []
        touches: list[tuple[str, str]] = []
        history: list[tuple[object, ...]] = []
        for rec in records:
            key = rec[0]
            old = existing.get(key)
            if old is None:
                inserts.append((*rec, now, now, now))
                history.append((key, now, "inserted", None, rec[6], None))
            elif old == rec:
                touches.append((now, key))
            else:
                updates.append((*rec[1:], now, now, key))
                diff = json.dumps(changes(old, rec), separators=(",", ":"), ensure_ascii=False)
                history.append((key, now, "changed", old[6], rec[6], diff))
            existing[key] = rec  # a page that repeats an id compares with its own first copy
        counts = PageCounts(inserted=len(inserts), changed=len(updates), unchanged=len(touches))
        if dry_run:
            unwritten.update((rec[0], rec) for rec in records)
        else:
            db.executemany(_INSERT, inserts)
            db.executemany(_UPDATE, updates)
            db.executemany(_TOUCH, touches)
            db.executemany(_HISTORY, history)
        return counts

    async def finish_run(self, *, mark: datetime | None) -> None:
        """End the run in progress, moving the mark to *mark* unless it is None."""
        await self._run(self._finish_run, utc_text(mark))

    def _finish_run(self, mark: str | None) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE sync_state SET run = NULL, cursor = NULL, mark = coalesce(?, mark) WHERE id = 1",
                (mark,),
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        yield
        self._db.execute("COMMIT")


def _prepare(db: sqlite3.Connection, path: str) -> None:
    """Check the schema version (before anything is written), then make the tables and switch to WAL."""
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path} has schema version {version}, newer than this airudder-async writes "
                f"({SCHEMA_VERSION}): upgrade airudder-async; nothing was written",
                found=version,
                supported=SCHEMA_VERSION,
            )
        if version == 0:
            (tables,) = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if tables:
                raise SyncError(f"{path} is an SQLite database of something else: give another --db")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise SyncError(f"{path}: cannot use WAL mode (an in-memory or read-only database?)")
        db.execute("PRAGMA synchronous = NORMAL")
        # Checkpoint every ~40 MiB of WAL rather than 4 MiB: a first sync writes pages all over the
        # workflows B-tree (random ids), and frequent checkpoints tripled its time on disk.
        db.execute("PRAGMA wal_autocheckpoint = 10000")
        if version == 0:
            # One script, one transaction: a crash leaves no half-made schema.
            db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
    except sqlite3.Error as exc:  # the caller closes the connection, which rolls back
        raise _translate(exc, path) from None


def _translate(exc: sqlite3.Error, path: str) -> SyncError:
    if _is_busy(exc):
        return DatabaseLockedError(f"{path} is locked by another writer: try again when it is done")
    return SyncError(f"{path}: {exc}")


def _lock(path: str) -> int | None:
    """Hold `PATH-sync.lock` exclusively, or raise DatabaseLockedError when another sync does."""
    if fcntl is None:  # pragma: no cover - not POSIX
        return None
    lock_path = path + "-sync.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise SyncError(f"cannot open {path}: {exc.strerror} ({lock_path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseLockedError(
            f"{path} is locked by another writer (another sync of it is running)"
        ) from None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
