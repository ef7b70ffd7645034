"""
Walking `instancelist` page by page: the stop rule (pure) and the prefetching iterator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import anyio

from .errors import AirudderError
from .models import Cursor, Workflow

__all__ = ["PageBatches", "TaskSet", "WorkflowIterator", "last_page", "pages_left"]

logger = logging.getLogger("airudder_async")

_MAX_STALE_PAGES = 2  # consecutive pages of nothing but repeats that end a walk
FetchPage = Callable[[int], Awaitable[object]]  # page number -> the answer's `data`
ParsePage = Callable[[object], tuple[list[Workflow], int]]  # `data` -> (workflows, count)


def pages_left(*, size: int, count: int, received: int, got: int) -> bool:
    """
    Tell whether to request another page after a page of *size* returned *got* items.

    *received* counts the items the walk has covered through this page. A short or empty page ends the
    walk even when *count* promises more: the caller reports the shortfall instead of looping. A server
    that delivered more than *count* promised (a stale count) is followed until its first short page.
    """
    if got < size:
        return False
    return received != count


def last_page(count: int, size: int) -> int:
    """Return the number of the last page that *count* items fill at *size* per page."""
    return max(1, math.ceil(count / size))


class TaskSet:
    """
    A client's background tasks (the prefetch workers of its walks): plain asyncio tasks, each dropped
    from the set when it ends, all cancelled and awaited by `aclose()`, so none outlives the client.

    A task of anyio's task group costs ten times as much to start (about 25 µs against 2.5), once per
    prefetch worker; these tasks catch their own errors (`_work`), so a group has nothing to add.
    Each task runs inside an anyio cancel scope of its own and is only ever cancelled through it, never
    with `Task.cancel()`: a native cancellation would break through the shielded clean-up of the code
    it runs (releasing a shared token lock, for one).
    """

    __slots__ = ("_closed", "_tasks")

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[None], anyio.CancelScope] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """Tell whether `aclose()` was called: the set starts no more tasks."""
        return self._closed

    def spawn(
        self, coro: Coroutine[Any, Any, None], scope: anyio.CancelScope, name: str
    ) -> asyncio.Task[None]:
        """
        Run *coro* in a new task of the set; *scope* is the cancel scope *coro* runs its work in, the
        one `aclose()` cancels. Refused (the coroutine closed) once the set is closed.
        """
        if self._closed:
            coro.close()
            raise RuntimeError("this AirudderClient is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = scope
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        del self._tasks[task]

    async def aclose(self) -> None:
        """
        Cancel every task and wait until all have ended. A caller cancelled meanwhile (an anyio scope or
        `Task.cancel()`) still waits for them, then gets its cancellation.
        """
        self._closed = True
        for scope in self._tasks.values():
            scope.cancel()
        await _outlast(self._tasks)


async def _outlast(tasks: dict[asyncio.Task[None], anyio.CancelScope]) -> None:
    """
    Wait until *tasks* is empty (each task drops out of it as it ends). A caller cancelled meanwhile
    (an anyio scope or `Task.cancel()`) still waits, then gets its cancellation.
    """
    interrupted: asyncio.CancelledError | None = None
    while tasks:
        try:
            with anyio.CancelScope(shield=True):  # anyio's cancellation waits here...
                await asyncio.wait(tuple(tasks))
        except asyncio.CancelledError as exc:  # ...a native one does not: keep waiting, then raise it
            interrupted = exc
    if interrupted is not None:
        raise interrupted


class _Slot:
    """One prefetched page: a worker of the walk fetches it, then ends it (answered, failed or cancelled)."""

    __slots__ = ("_ended", "error", "ok", "page", "result")

    def __init__(self, page: int, ended: asyncio.Future[None]) -> None:
        self.page = page
        self._ended = ended
        self.result: object = None
        self.ok = False
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        """Tell whether the request has ended (answered, failed or cancelled)."""
        return self._ended.done()

    def end(self) -> None:
        """Mark the request ended; its worker's cell calls this once, after the request's clean-up."""
        self._ended.set_result(None)

    async def wait(self) -> None:
        """Wait until the request has ended: its failure or cancellation is in `error`, not raised."""
        if not self._ended.done():
            # Through asyncio.wait, so a cancelled waiter leaves the slot's own future alone.
            await asyncio.wait((self._ended,))
        if not self.ok and self.error is None:
            self.error = RuntimeError("the page request was cancelled: the walk or its client was closed")


class _Workers:
    """
    A walk's prefetch workers: tasks of the client's `TaskSet`, each fetching one page at a time (and
    parsing it too, unless the walk is waiting for a page: see `_work`) and waiting for the next between
    pages, so a page costs a hand-over instead of a task (and anyio's registration of every new task
    that enters a cancel scope, 12-18 µs). At most one worker per page
    in flight: a page goes to an idle worker, or to a new one when none is idle. Once the walk has
    nothing left to request (`retire()`), workers end after their page instead of waiting.

    Each worker runs inside an anyio cancel scope of its own; `cancel()` stops them all through their
    scopes (never `Task.cancel()`, which would break through a request's shielded clean-up). Whatever
    ends a worker's task, even a native cancellation before its first step, ends the slot it holds.
    The workers hold nothing of the walk's iterator, so dropping it lets `__del__` stop them.
    """

    __slots__ = (
        "_fetch",
        "_idle",
        "_parse",
        "_retiring",
        "_running",
        "_started",
        "_tasks",
        "_waiting",
        "loop",
    )

    def __init__(
        self, fetch: FetchPage, parse: ParsePage | None, waiting: list[bool], tasks: TaskSet
    ) -> None:
        self._fetch = fetch
        self._parse = parse
        self._waiting = waiting  # [True] while the walk waits for a page (shared, not the walk itself)
        self._tasks = tasks
        self.loop = asyncio.get_running_loop()
        # The waiting workers: the future that wakes each, and the cell its next page goes into.
        self._idle: list[tuple[asyncio.Future[None], list[_Slot | None]]] = []
        self._running: dict[asyncio.Task[None], anyio.CancelScope] = {}  # each until it ends
        self._started = 0
        self._retiring = False

    def slot(self, page: int) -> _Slot:
        """Make the slot for *page* and hand it to a worker."""
        slot = _Slot(page, self.loop.create_future())
        self._retiring = False
        idle = self._idle
        while idle:
            waiting, cell = idle.pop()
            if not waiting.done():  # one stopped natively while it waited left its future cancelled
                cell[0] = slot  # the worker's from now on, whatever stops it
                waiting.set_result(None)
                return slot
        cell = [slot]
        scope = anyio.CancelScope()
        self._started += 1
        task = self._tasks.spawn(self._work(cell, scope), scope, f"airudder_async._prefetch[{self._started}]")
        self._running[task] = scope

        def ended(task: asyncio.Task[None]) -> None:
            _end_held(cell)
            del self._running[task]  # a walk that retires its workers often keeps no trace of them

        task.add_done_callback(ended)
        return slot

    def retire(self) -> None:
        """Nothing is left to request for now: waiting workers end, busy ones after their page."""
        self._retiring = True
        while self._idle:
            waiting, _cell = self._idle.pop()  # an empty cell tells the worker to end
            if not waiting.done():
                waiting.set_result(None)

    def cancel(self) -> None:
        """Stop every worker: the page each is fetching ends cancelled once its clean-up has run."""
        for scope in self._running.values():
            scope.cancel()

    async def aclose(self) -> None:
        """Stop every worker and wait until all have ended, their requests' clean-up included."""
        self.cancel()
        await _outlast(self._running)

    async def _work(self, cell: list[_Slot | None], scope: anyio.CancelScope) -> None:
        """Fetch the page in *cell*, end its slot, wait for the next one; until retired or cancelled."""
        with scope:
            # A worker stopped before its first step, or as it was handed a page, sends nothing: anyio
            # delivers a cancellation only at the task's next wait, which the fetch may reach late.
            while (slot := cell[0]) is not None and not scope.cancel_called:
                try:
                    result = await self._fetch(slot.page)
                    if self._parse is not None and not self._waiting[0]:
                        # The walk is busy, not waiting for a page: parse this one now, while its
                        # decoded JSON is still in the CPU's cache, rather than pages later. (While it
                        # waits, parsing here would hold back its refill: left to the walk then.)
                        result = _parsed_early(self._parse, result)
                    slot.result = result
                    slot.ok = True
                except Exception as exc:
                    slot.error = exc
                _end_held(cell)
                del slot  # a waiting worker holds no page...
                result = None  # ...nor its data
                if self._retiring:
                    return
                waiting: asyncio.Future[None] = self.loop.create_future()
                self._idle.append((waiting, cell))
                await waiting


class _Parsed:
    """A page a worker parsed as soon as it arrived: its workflows and `count`."""

    __slots__ = ("count", "items")

    def __init__(self, items: list[Workflow], count: int) -> None:
        self.items = items
        self.count = count


def _parsed_early(parse: ParsePage, data: object) -> object:
    """*data* parsed into a `_Parsed`, or *data* itself where parsing fails: the walk then parses it
    again and raises, as for a page nobody parsed early."""
    try:
        return _Parsed(*parse(data))
    except Exception:
        return data


def _end_held(cell: list[_Slot | None]) -> None:
    """End the slot a worker holds, if any (its fetch is over, or its task is)."""
    slot, cell[0] = cell[0], None
    if slot is not None:
        slot.end()


class PageBatches:
    """
    The async iterator `WorkflowIterator.by_page()` returns: the walk's items, one page (a list) at a time.
    """

    __slots__ = ("_walk",)

    def __init__(self, walk: WorkflowIterator) -> None:
        self._walk = walk

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[Workflow]:
        return await self._walk._rest_of_page()


class WorkflowIterator:
    """
    An async iterator over every workflow of a walk, newest first, fetching up to *prefetch* pages ahead.

    Besides items it reports the walk: `cursor` (resume point, updated as you go), `received`, `count`
    (what the first page promised) and `last_count`, `count_drift`, `duplicates_skipped`, `shortfall`
    (items `count` promised but the server never delivered), `pages` and `extra_requests` (prefetched
    pages cancelled unread). Use it in `async with` (or call `aclose()`) to stop in-flight requests the
    moment you stop early. Without that they stop when the iterator is garbage-collected (at once after
    a `break` out of `async for wf in client.iter_workflows(...)` on CPython) or when the client closes.
    """

    def __init__(
        self,
        *,
        fetch: FetchPage,
        parse: ParsePage,
        tasks: TaskSet | None,
        page_size: int,
        start_time: datetime | None,
        end_time: datetime | None,
        max_items: int | None,
        prefetch: int,
        cursor: Cursor | None,
        parse_early: bool = True,
    ) -> None:
        self._fetch = fetch
        self._parse = parse
        self._parse_early = parse_early  # a parse with side effects must run in the walk, in page order
        self._tasks = tasks
        self.page_size = page_size
        self.start_time = start_time
        self.end_time = end_time
        self._max_items = max_items
        self._prefetch = prefetch
        self._first = cursor.page if cursor else 1
        self._resume_after = cursor.last_workflow_id if cursor else None
        self._received_before = cursor.received if cursor else 0
        self._loaded: int | None = None  # the page whose items are in self._items
        self._next_request = self._first  # the next page number to request
        self._last_planned: int | None = None  # unknown until the first page gives count
        self._items: list[Workflow] = []
        self._index = 0
        self._slots: deque[_Slot] = deque()
        self._workers: _Workers | None = None  # made by the first prefetched page
        self._waiting = [False]  # while the walk waits for a prefetched page (its workers read it)
        self._prev_page: list[Workflow] = []  # the previous page as served, for de-duplication
        self._stale_pages = 0  # consecutive non-empty pages that held nothing new
        self._prev_last_id: str | None = self._resume_after  # the last id yielded before this page
        self._finished = False
        self._exhausted = False  # the server's data ended (as opposed to max_items or an error)
        self._base = 0  # items yielded from pages before the current one
        self._limit = 0  # items of the current page that may be yielded (max_items may cut it short)
        self.pages = 0
        self.count: int | None = None
        self.last_count: int | None = None
        self.duplicates_skipped = 0
        self.extra_requests = 0
        self.shortfall = 0

    def __repr__(self) -> str:
        return (
            f"<WorkflowIterator page={self._loaded} received={self.received} count={self.count}"
            f" finished={self._finished}>"
        )

    # -- reporting -------------------------------------------------------------------------------

    @property
    def cursor(self) -> Cursor:
        """
        The point to resume from: the page being read and the last workflow already yielded.
        """
        if self._loaded is None:
            page = self._first
        elif self._index < len(self._items):
            page = self._loaded
        else:
            page = self._loaded + 1
        return Cursor(
            page=page,
            page_size=self.page_size,
            start_time=self.start_time,
            end_time=self.end_time,
            last_workflow_id=self._last_id,
            received=self._received_before + self.received,
        )

    @property
    def received(self) -> int:
        """How many workflows this iterator has yielded."""
        return self._base + self._index

    @property
    def _last_id(self) -> str | None:
        if self._index:
            return self._items[self._index - 1].workflow_id
        return self._prev_last_id

    @property
    def count_drift(self) -> int:
        """How much `count` changed between the first and the latest page (0 when steady)."""
        if self.count is None or self.last_count is None:
            return 0
        return self.last_count - self.count

    @property
    def page_remaining(self) -> int:
        """How many items of the current page are still to be yielded (0 at a page boundary)."""
        return len(self._items) - self._index

    @property
    def is_finished(self) -> bool:
        """Tell whether the walk has ended (all items, max_items, an error, or aclose())."""
        return self._finished

    # -- iteration -------------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Workflow:
        # The hot path: one comparison per item. Everything else is settled per page.
        i = self._index
        if i < self._limit:
            self._index = i + 1
            return self._items[i]
        return await self._next_page_item()

    async def _next_page_item(self) -> Workflow:
        await self._fill()
        i = self._index
        self._index = i + 1
        return self._items[i]

    async def _fill(self) -> None:
        """Make sure the current page has an item left to yield, or raise StopAsyncIteration."""
        while True:
            if self._finished:  # also when another task closed the walk while this one waited
                raise StopAsyncIteration
            if self._index < self._limit:
                return
            if self._exhausted or (self._max_items is not None and self.received >= self._max_items):
                self._finish()
                raise StopAsyncIteration
            await self._advance(self._first if self._loaded is None else self._loaded + 1)

    async def _rest_of_page(self) -> list[Workflow]:
        await self._fill()
        batch = self._items[self._index : self._limit]
        self._index = self._limit
        return batch

    def by_page(self) -> PageBatches:
        """
        Iterate the rest of this walk a page at a time: each step gives a list of workflows.

        It shares the walk's state (cursor, counters, prefetch), skips the await per item, and makes
        page boundaries explicit: `walk.cursor` after each list is the resume point after that page.
        """
        return PageBatches(self)

    async def _advance(self, page: int) -> None:
        """Load *page* into self._items, from its prefetch slot or inline."""
        try:
            if self._slots:
                slot = self._slots.popleft()
                assert slot.page == page, (slot.page, page)
                self._waiting[0] = True
                try:
                    await slot.wait()
                finally:
                    self._waiting[0] = False
                self._check_open()  # closed by another task meanwhile: its page ends cancelled, quietly
                if slot.error is not None:
                    raise slot.error
                data = slot.result
                # Refill the window before the CPU work on this page, so the next request is not
                # held up behind it: a worker parses its page only while the walk is not waiting.
                if self._top_up():
                    await asyncio.sleep(0)
            else:
                self._next_request = page + 1
                data = await self._fetch(page)
            self._check_open()
            if type(data) is _Parsed:
                items, count = data.items, data.count
            else:
                items, count = self._parse(data)
        except AirudderError as exc:
            self._fail(exc)
            raise
        except BaseException:  # cancelled while waiting: stop the awaited request too
            self._finished = True
            self._cancel_slots()
            raise
        self._loaded = page
        self.pages += 1
        self._accept(page, items, count)
        if self._top_up():
            # Let the new requests go out now, not after the consumer has worked through this page.
            await asyncio.sleep(0)

    def _check_open(self) -> None:
        """End the walk's iteration if it was closed (by `aclose()` in another task) while it waited."""
        if self._finished:
            raise StopAsyncIteration

    def _accept(self, page: int, items: list[Workflow], count: int) -> None:
        got = len(items)
        if self.count is None:
            self.count = count
        self.last_count = count
        covered = (page - 1) * self.page_size + got
        planned = last_page(count, self.page_size)
        more = pages_left(size=self.page_size, count=count, received=covered, got=got)
        if more and covered > count:
            planned = page + 1  # stale count: follow the data one page at a time
        if self._max_items is not None:
            remaining = self._max_items - self.received
            planned = min(planned, page + max(0, math.ceil((remaining - got) / self.page_size)))
        self._last_planned = planned if more else page
        if not more:
            self._exhausted = True
            if covered < count:
                self.shortfall = count - covered
        fresh = self._dedupe(items)
        self._stale_pages = self._stale_pages + 1 if got and not fresh else 0
        if self._stale_pages and (self._exhausted or self._stale_pages >= _MAX_STALE_PAGES):
            # A server that ignores `page` (or clamps it) repeats itself: stop, say so, and count
            # as delivered only what was new, since repeats filled the positions `count` promised.
            self._exhausted = True
            delivered = self._received_before + self.received
            self.shortfall = max(self.shortfall, count - delivered)
            logger.warning(
                "instancelist pages %d to %d brought no new workflow; the server seems to ignore "
                "`page`, so the walk ends here",
                page - self._stale_pages + 1,
                page,
            )
        self._set_items(fresh)
        if self._exhausted:
            self._cancel_slots()
            if self.shortfall:
                logger.warning(
                    "instancelist promised %d workflows but delivered %d (page %d was %s); "
                    "the walk ends here",
                    count,
                    count - self.shortfall,
                    page,
                    "empty" if got == 0 else ("short" if got < self.page_size else "repeated"),
                )

    def _set_items(self, items: list[Workflow]) -> None:
        """Make *items* the current page, after the previous one was used up."""
        self._prev_last_id = self._last_id
        self._base += self._index
        self._items, self._index = items, 0
        self._limit = len(items)
        if self._max_items is not None:
            self._limit = min(self._limit, max(0, self._max_items - self._base))

    def _dedupe(self, items: list[Workflow]) -> list[Workflow]:
        """Drop items seen on the previous page (the list moved) or before the resume point."""
        if self._resume_after is not None:
            ids = [w.workflow_id for w in items]
            if self._resume_after in ids:
                skip = ids.index(self._resume_after) + 1
                items = items[skip:]
            self._resume_after = None
        prev, self._prev_page = self._prev_page, items
        # Newest first: a page whose first item is not older than the previous page's last one may
        # repeat items the list pushed across the boundary. Only then is it worth comparing ids.
        if prev and items and items[0].create_time >= prev[-1].create_time:
            seen = {w.workflow_id for w in prev}
            kept = [w for w in items if w.workflow_id not in seen]
            self.duplicates_skipped += len(items) - len(kept)
            items = kept
        return items

    def _top_up(self) -> bool:
        """Keep up to *prefetch* pages requested ahead of the one being read; tell if any was added."""
        tasks = self._tasks
        if self._prefetch <= 1 or tasks is None or tasks.closed or self._exhausted or self._finished:
            return False
        limit = self._last_planned
        assert limit is not None  # set by the first page, which every call here follows
        added = False
        while len(self._slots) < self._prefetch and self._next_request <= limit:
            if self._workers is None:
                parse = self._parse if self._parse_early else None
                self._workers = _Workers(self._fetch, parse, self._waiting, tasks)
            self._slots.append(self._workers.slot(self._next_request))
            self._next_request += 1
            added = True
        if self._next_request > limit and self._workers is not None:
            self._workers.retire()  # until the plan grows (a stale count is followed a page at a time)
        return added

    # -- ending ------------------------------------------------------------------------------------

    def _cancel_slots(self) -> None:
        """Stop the workers, and with them every page still in flight (the walk is over)."""
        while self._slots:
            if not self._slots.popleft().done:
                self.extra_requests += 1
        if self._workers is not None:
            self._workers.cancel()

    def _fail(self, exc: AirudderError) -> None:
        exc.cursor = self.cursor
        self._finished = True
        self._cancel_slots()
        self._limit = 0

    def _finish(self) -> None:
        self._finished = True
        self._limit = 0
        self._cancel_slots()

    async def aclose(self) -> None:
        """
        Stop the walk: cancel every in-flight request and wait until they are gone (their clean-up
        included, even when the caller is cancelled meanwhile). Idempotent.
        """
        self._finished = True
        self._limit = 0
        self._cancel_slots()
        if self._workers is not None:
            await self._workers.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A `break` out of `async for` drops the iterator without aclose(): stop its workers anyway.
        workers = getattr(self, "_workers", None)
        if workers is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed, and its tasks gone with it
            if _running_loop() is workers.loop:
                workers.cancel()
            else:  # collected outside its loop (between two runs of it, or by gc in another thread)
                workers.loop.call_soon_threadsafe(workers.cancel)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
