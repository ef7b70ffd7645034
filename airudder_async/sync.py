"""
Mirror every workflow into a database table and keep it up to date: `sync_workflows()` and its sinks.

```python
async with AirudderClient.from_env() as client, open_sink("workflows.db") as sink:
    summary = await sync_workflows(client, sink)
print(summary.inserted, summary.changed)
```

A sink holds three tables: `workflows` (the 8 documented fields, `extra` with any other field the API
sent as a JSON object, and `first_seen`, `last_seen`, `last_changed`), `workflow_history` (one row per
observed insert or change) and `sync_state` (the last finished run's mark and the run in progress).
Two sinks ship: SQLite (a path, the default) and PostgreSQL (a `postgresql://` URL, the `[postgres]`
extra).

Every page is written in one transaction together with the walk's cursor, so a run killed anywhere
continues, on the next call, after the last page it committed: nothing lost, nothing twice. The API
filters by creation time only, while `status`, `end_time` and `total` change later; so a later run
re-reads from the earlier of the last run's start and the creation time of the oldest workflow whose
status is not final (`FINAL_STATUSES`; unknown statuses count as not final), but never more than
*lookback* before the last run's start.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import attrs

from ._client import INSTANCELIST_PATH, AirudderClient, _check_prefetch, _filters, _parse_instancelist
from ._config import DEFAULT_PREFETCH, MAX_PAGE_SIZE
from ._pagination import WorkflowIterator
from ._time import parse_time
from .errors import AirudderError
from .models import Cursor, Workflow, WorkflowStatus

__all__ = [
    "DEFAULT_LOOKBACK",
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "PageCounts",
    "PageWrite",
    "RunState",
    "Sink",
    "SyncState",
    "SyncSummary",
    "open_sink",
    "plan_window",
    "redact_url",
    "sync_workflows",
]

FINAL_STATUSES: frozenset[str] = frozenset({WorkflowStatus.CANCELLED, WorkflowStatus.FINISHED})
DEFAULT_LOOKBACK = timedelta(days=7)
SCHEMA_VERSION = 1
FIELDS = ("workflow_id", "name", "template_name", "start_time", "end_time", "total", "status", "create_time")
_FIELDSET = frozenset(FIELDS)
_RUN_VERSION = 1
# The most pages written (and committed) together when the database falls behind the walk; as many more
# may wait for it meanwhile (the stream's buffer), so up to twice this are held. SQLite spends most of
# a first sync's time committing (each commit writes every B-tree page the random ids touched): 16
# pages a commit take that from ~2.7 ms a page to ~0.5.
_GROUP_PAGES = 16
Raw = Mapping[str, Mapping[str, object]]  # workflow id -> the object the API sent


@attrs.frozen(kw_only=True)
class PageCounts:
    """
    What writing one page did: workflows *inserted*, *changed* (at least one field differs), *unchanged*.
    """

    inserted: int = 0
    changed: int = 0
    unchanged: int = 0

    def __add__(self, other: PageCounts) -> PageCounts:
        return PageCounts(
            inserted=self.inserted + other.inserted,
            changed=self.changed + other.changed,
            unchanged=self.unchanged + other.unchanged,
        )


@attrs.frozen
class PageWrite:
    """
    One page for `Sink.write_pages()`: its workflows (*items*), the objects the API sent for them by
    workflow id (*raw*), and the walk's *cursor* after the page.
    """

    items: Sequence[Workflow]
    raw: Raw
    cursor: Cursor


@attrs.frozen(kw_only=True)
class RunState:
    """
    A run as a sink stores it: the walk's *cursor* (its window pinned), what was asked, and its counts.

    *started_at* is when the run began; *full*, *since* and *until* are what the caller asked for (a later
    call with the same request resumes this run); *moves_mark* tells whether finishing it moves the mark.
    """

    cursor: Cursor
    started_at: datetime
    full: bool = False
    since: datetime | None = None
    until: datetime | None = None
    moves_mark: bool = True
    read: int = 0
    inserted: int = 0
    changed: int = 0
    unchanged: int = 0
    pages: int = 0

    def meta_json(self) -> str:
        """
        Return what the run asked for as JSON (the counts and the cursor are stored beside it).
        """
        return json.dumps(
            {
                "v": _RUN_VERSION,
                "started_at": self.started_at.isoformat(),
                "full": self.full,
                "since": _iso(self.since),
                "until": _iso(self.until),
                "moves_mark": self.moves_mark,
            },
            separators=(",", ":"),
        )

    def stored(self) -> tuple[str, str, int, int, int, int, int]:
        """
        Return the run as a sink stores it: `meta_json()`, `cursor.to_json()` and the counts (read,
        inserted, changed, unchanged, pages), the order `load()` takes them back in.
        """
        counts = (self.read, self.inserted, self.changed, self.unchanged, self.pages)
        return (self.meta_json(), self.cursor.to_json(), *counts)

    @classmethod
    def load(cls, meta: str, cursor: str, counts: Sequence[int]) -> RunState:
        """
        Rebuild a run from `meta_json()`, `cursor.to_json()` and (read, inserted, changed, unchanged, pages).

        Raise `ValueError` when they are not what this version writes.
        """
        try:
            data = json.loads(meta)
            if not isinstance(data, dict) or data.get("v") != _RUN_VERSION:
                raise ValueError("unknown run version")
            read, inserted, changed, unchanged, pages = counts
            return cls(
                cursor=Cursor.from_json(cursor),
                started_at=parse_time(data["started_at"], assume_utc=False),
                full=bool(data["full"]),
                since=_parse_opt(data["since"]),
                until=_parse_opt(data["until"]),
                moves_mark=bool(data["moves_mark"]),
                read=read,
                inserted=inserted,
                changed=changed,
                unchanged=unchanged,
                pages=pages,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the stored run is not readable: {exc}") from None

    def asks_for(self, *, full: bool, since: datetime | None, until: datetime | None) -> bool:
        """
        Tell whether a call with these options asks for this run (and so resumes it).
        """
        return (self.full, self.since, self.until) == (full, since, until)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_opt(value: object) -> datetime | None:
    return None if value is None else parse_time(value, assume_utc=False)


@attrs.frozen(kw_only=True)
class SyncState:
    """
    What a sink knows before a run: the *mark*, *oldest_open* and an unfinished *run*.

    *mark* is the window end of the last finished run that covered everything up to it (None before the
    first); *oldest_open* the creation time of the oldest mirrored workflow whose status is not final.
    """

    mark: datetime | None = None
    oldest_open: datetime | None = None
    run: RunState | None = None


@attrs.frozen(kw_only=True)
class SyncSummary:
    """
    What a sync did: workflows *read*, *inserted*, *changed*, *unchanged*, *pages* read, *duration* (s).

    The counts cover the whole run, an earlier interrupted part included when it was *resumed*.
    *start_time*/*end_time* are the creation-time window read (None: unbounded); with *dry_run* nothing
    was written and the counts say what would have changed.
    """

    read: int
    inserted: int
    changed: int
    unchanged: int
    pages: int
    duration: float
    start_time: datetime | None
    end_time: datetime | None
    resumed: bool = False
    dry_run: bool = False
    full: bool = False

    def line(self) -> str:
        """
        Return the summary as one line for a log or a terminal.
        """
        what = "would insert" if self.dry_run else "inserted"
        verb = "would change" if self.dry_run else "changed"
        return (
            f"{self.read:,} read in {self.pages:,} pages: {self.inserted:,} {what}, {self.changed:,} {verb}, "
            f"{self.unchanged:,} unchanged, in {self.duration:.1f} s"
            + (" (resumed)" if self.resumed else "")
            + (" (dry run: nothing written)" if self.dry_run else "")
        )


class Sink(Protocol):
    """
    Where `sync_workflows()` writes: a database with the three tables (see the module docstring).

    *name* describes the database for messages, with any password redacted. Each method commits what it
    wrote before it returns; `write_pages()` commits pages' rows and history together with the cursor.
    """

    name: str

    async def load_state(self) -> SyncState:
        """Read the mark, the oldest open workflow's creation time and any unfinished run."""
        ...

    async def begin_run(self, run: RunState) -> None:
        """Store *run* as the run in progress (its window pinned) before its first page is requested."""
        ...

    async def write_pages(
        self, pages: Sequence[PageWrite], *, observed_at: datetime, dry_run: bool
    ) -> PageCounts:
        """
        Apply *pages* (one or more, in walk order) and return what they did together: insert new
        workflows, update changed ones (recording each in the history), touch `last_seen` of the rest,
        and store the last page's cursor with the run's counts.

        A page's rows, their history and a cursor at or after it are committed together: a sink may
        commit all the pages in one transaction (the SQLite sink does) or each page in its own (the
        PostgreSQL sink does). A page's *raw* objects give `extra_fields()` and its times as sent.
        With *dry_run* only count what would happen.
        """
        ...

    async def finish_run(self, *, mark: datetime | None) -> None:
        """End the run in progress; set the mark to *mark* unless it is None."""
        ...


def plan_window(
    *,
    mark: datetime | None,
    oldest_open: datetime | None,
    now: datetime,
    lookback: timedelta,
    full: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[datetime | None, datetime, bool]:
    """
    Decide a new run's creation-time window: return (start, end, moves_mark).

    *since*/*until*, *full* or a first run (no *mark*) read the window asked for (None: from the first
    workflow). Otherwise the run starts at the earlier of *mark* and *oldest_open*, but not before
    *mark* - *lookback*. The window ends at *until*, else *now*. Finishing the run moves the mark only
    when the window reaches *now* and leaves no gap after the previous mark.
    """
    end = now if until is None else until
    if since is not None or full or mark is None:
        start = since
    else:
        start = mark if oldest_open is None else min(mark, oldest_open)
        start = max(start, mark - lookback)
    moves_mark = until is None and (mark is None or start is None or start <= mark)
    return start, end, moves_mark


def redact_url(url: str) -> str:
    """
    Return *url* with any password (in the user part or a `password=` parameter) replaced by `***`.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_postgres_url(target: str | os.PathLike[str]) -> bool:
    """Tell whether *target* names a PostgreSQL database rather than an SQLite file."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


@contextlib.asynccontextmanager
async def open_sink(target: str | os.PathLike[str], *, busy_timeout: float = 1.0) -> AsyncIterator[Sink]:
    """
    Open the mirror database *target*: a `postgresql://` URL, else the path of an SQLite file.

    The tables are created when missing. A writer that holds the database longer than *busy_timeout*
    seconds raises `DatabaseLockedError`, as does a second sync of the same database.

    Raises:
        SyncError: the database cannot be opened (the message never shows a password);
        `SchemaVersionError` when it was made by a newer version, before anything is written.
    """
    if not busy_timeout >= 0:  # also refuses nan
        raise ValueError(f"busy_timeout must be a number >= 0, got {busy_timeout!r}")
    if is_postgres_url(target):
        from ._postgres_sink import PostgresSink

        sink: Sink = await PostgresSink.connect(str(target), busy_timeout=busy_timeout)
    else:
        from ._sqlite_sink import SqliteSink

        sink = await SqliteSink.connect(os.fspath(target), busy_timeout=busy_timeout)
    try:
        yield sink
    finally:
        await sink.aclose()  # type: ignore[attr-defined]  # both shipped sinks have it; Sink needs not


def extra_fields(raw: Mapping[str, object]) -> str | None:
    """The fields of a raw workflow beyond the documented 8, as canonical JSON text (None: there are none)."""
    if raw.keys() <= _FIELDSET:
        return None
    unknown = {k: v for k, v in raw.items() if k not in _FIELDSET}
    return json.dumps(unknown, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def changes(old: Sequence[object], new: Sequence[object]) -> dict[str, list[object]]:
    """The fields that differ between two records (FIELDS + extra, in that order), as {field: [old, new]}."""
    names = (*FIELDS, "extra")
    return {names[i]: [o, n] for i, (o, n) in enumerate(zip(old, new, strict=True)) if o != n}


async def sync_workflows(
    client: AirudderClient,
    sink: Sink,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    lookback: timedelta = DEFAULT_LOOKBACK,
    full: bool = False,
    dry_run: bool = False,
    page_size: int = MAX_PAGE_SIZE,
    prefetch: int = DEFAULT_PREFETCH,
    on_progress: Callable[[SyncSummary], object] | None = None,
) -> SyncSummary:
    """
    Bring the mirror in *sink* up to date with the account behind *client*; return what it did.

    A run that an earlier call left unfinished (killed, or stopped by an error) with the same *full*,
    *since* and *until* is resumed after its last committed page; otherwise the window comes from
    `plan_window()`. *since*/*until* bound the creation time instead (timezone-aware); *full* re-reads
    everything; *lookback* bounds how far before the last run an incremental run looks for workflows
    that are still open. With *dry_run* nothing is written: the summary tells what would change.
    *on_progress* gets the running summary after each `write_pages()` (one page, or several together).

    Raises:
        AirudderError: the walk failed (`SyncError` for the database); the run resumes on the next call.
    """
    for name, value in (("since", since), ("until", until)):
        if value is not None and (not isinstance(value, datetime) or value.utcoffset() is None):
            raise ValueError(f"{name} must be a timezone-aware datetime or None, got {value!r}")
    if since is not None and until is not None and since > until:
        raise ValueError(f"since {since.isoformat()} is after until {until.isoformat()}")
    if not isinstance(lookback, timedelta) or lookback < timedelta(0):
        raise ValueError(f"lookback must be a timedelta >= 0, got {lookback!r}")
    if type(page_size) is not int or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be an int between 1 and {MAX_PAGE_SIZE}, got {page_size!r}")
    _check_prefetch(prefetch)
    began = time.monotonic()
    client._require_open()  # a closed client says so before the database is touched
    state = await sink.load_state()
    now = datetime.now(UTC).replace(microsecond=0)
    run = state.run
    resumed = run is not None and run.asks_for(full=full, since=since, until=until)
    if run is not None and resumed:
        if dry_run:  # compare the whole pending window with the table: nothing is committed
            run = attrs.evolve(
                run, cursor=attrs.evolve(run.cursor, page=1, last_workflow_id=None, received=0)
            )
            run = attrs.evolve(run, read=0, inserted=0, changed=0, unchanged=0, pages=0)
            resumed = False
    else:
        start, end, moves_mark = plan_window(
            mark=state.mark,
            oldest_open=state.oldest_open,
            now=now,
            lookback=lookback,
            full=full,
            since=since,
            until=until,
        )
        if start is not None and start > end:  # a future since; plan_window() keeps a later mark
            start = end
        cursor = Cursor(page=1, page_size=page_size, start_time=start, end_time=end)
        run = RunState(
            cursor=cursor, started_at=now, full=full, since=since, until=until, moves_mark=moves_mark
        )
        if not dry_run:
            await sink.begin_run(run)
    assert run is not None
    walk, raw = walk_keeping_raw(client, run.cursor, prefetch=prefetch)
    counts = [run.read, run.inserted, run.changed, run.unchanged, run.pages]

    def summary() -> SyncSummary:
        return SyncSummary(
            read=counts[0],
            inserted=counts[1],
            changed=counts[2],
            unchanged=counts[3],
            pages=counts[4],
            duration=time.monotonic() - began,
            start_time=run.cursor.start_time,
            end_time=run.cursor.end_time,
            resumed=resumed,
            dry_run=dry_run,
            full=run.full,
        )

    # The database writes (in its thread) while the walk decodes the next pages. When the database is the
    # slower side, the pages that arrived meanwhile are written together (up to _GROUP_PAGES): one commit
    # for the group, with the last page's cursor, so a crash still loses nothing and repeats nothing.
    send, receive = anyio.create_memory_object_stream[PageWrite](_GROUP_PAGES)

    async def write() -> None:
        async for first in receive:
            pages = [first]
            while len(pages) < _GROUP_PAGES:
                try:
                    pages.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            done = await sink.write_pages(pages, observed_at=datetime.now(UTC), dry_run=dry_run)
            counts[0] += sum(len(page.items) for page in pages)
            counts[1] += done.inserted
            counts[2] += done.changed
            counts[3] += done.unchanged
            counts[4] += len(pages)
            if on_progress is not None:
                on_progress(summary())

    failure: AirudderError | None = None
    try:
        # The receiving end stays open until the writer is done: a writer that fails must cancel the walk
        # (one error), not break the stream under a send in progress (a second one).
        async with walk, receive, anyio.create_task_group() as tg:
            tg.start_soon(write)
            async with send:
                try:
                    async for batch in walk.by_page():
                        await send.send(PageWrite(batch, raw[0], walk.cursor))
                except AirudderError as exc:  # the pages read before it are still written
                    failure = exc
    except BaseExceptionGroup as group:  # a database failure cancels the walk: report it alone
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise  # pragma: no cover - the walk and the database failing at the same moment
    if failure is not None:
        raise failure
    if not dry_run:
        await sink.finish_run(mark=run.cursor.end_time if run.moves_mark else None)
    return summary()


def walk_keeping_raw(
    client: AirudderClient, cursor: Cursor, *, prefetch: int
) -> tuple[WorkflowIterator, list[Raw]]:
    """
    A walk resumed from *cursor* that also keeps each page's objects as the API sent them.

    It decodes pages as plain JSON (not straight into the models) so that no field is lost; the list
    returned holds one dict: the workflow ids of the page last loaded mapped to their raw objects.
    """
    loop = client._require_open()
    params = {"size": str(cursor.page_size), **_filters(cursor.start_time, cursor.end_time)}
    raw: list[Raw] = [{}]

    async def fetch(page: int) -> object:
        client._require_open()
        response = await loop.send("GET", INSTANCELIST_PATH, params={"page": str(page), **params})
        return response.data

    def parse(data: object) -> tuple[list[Workflow], int]:
        items, count = _parse_instancelist(data)
        assert isinstance(data, dict)  # _parse_instancelist() refused anything else
        lists = data.get("lists") or ()
        raw[0] = {wf.workflow_id: obj for wf, obj in zip(items, lists, strict=True)}
        return items, count

    walk = WorkflowIterator(
        fetch=fetch,
        parse=parse,
        tasks=client._tasks,
        page_size=cursor.page_size,
        start_time=cursor.start_time,
        end_time=cursor.end_time,
        max_items=None,
        prefetch=prefetch,
        cursor=cursor,
        parse_early=False,  # `raw` is the page last loaded: parsed in page order, by the walk
    )
    return walk, raw
