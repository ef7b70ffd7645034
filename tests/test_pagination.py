"""
The walk: the pure stop rule, prefetch ordering and teardown, snapshots, de-duplication and drift.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from airudder_async import Limits
from airudder_async._pagination import TaskSet, WorkflowIterator, _Slot, _Workers, last_page, pages_left
from airudder_async.errors import DecodeError
from airudder_async.models import Cursor, Workflow
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, Fault

LIST = ("GET", INSTANCELIST_PATH)

# Every prefetched request goes out at once (adaptive pacing's slow start would send them as answers
# come back), so a gate holds all of them.
AT_ONCE = Limits(adaptive=False)


def test_pages_left_rules() -> None:
    """Short and empty pages end the walk; reaching count ends it; a stale low count is followed."""
    assert pages_left(size=10, count=100, received=10, got=10)
    assert not pages_left(size=10, count=100, received=15, got=5)
    assert not pages_left(size=10, count=100, received=10, got=0)
    assert not pages_left(size=10, count=20, received=20, got=10)
    assert pages_left(size=10, count=15, received=20, got=10)  # delivered beyond count
    assert last_page(0, 10) == 1
    assert last_page(10, 10) == 1
    assert last_page(11, 10) == 2


@given(n=st.integers(0, 2000), size=st.integers(1, 200), offset=st.integers(-500, 500))
def test_stop_rule_walk_terminates_and_covers_data(n: int, size: int, offset: int) -> None:
    """Simulated walks over any data and any lying count end after at most one page past the data."""
    count = max(0, n + offset)
    page, received, requests = 1, 0, 0
    while True:
        got = max(0, min(size, n - (page - 1) * size))
        requests += 1
        received += got
        if not pages_left(size=size, count=count, received=(page - 1) * size + got, got=got):
            break
        page += 1
        assert requests <= n // size + 2
    assert received == n or (received == count and received % size == 0 and received < n)
    assert requests <= n // size + 1


def _client_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "_prefetch" in t.get_name()]


def _open_connections(client: object) -> int:
    session = client._session  # type: ignore[attr-defined]  # test peeks at the client's own session
    return len(session.connector._acquired)


@pytest.mark.anyio
async def test_break_with_prefetch_leaves_nothing_behind() -> None:
    """`break` after the first item with prefetch 8 leaves no pending task or busy connection."""
    async with FakeAirudder(workflows=1000) as fake, fake.client(limits=AT_ONCE) as client:
        gate = fake.gate(INSTANCELIST_PATH, after=1)  # page 1 is answered, the prefetched pages wait
        async for _wf in client.iter_workflows(page_size=100, prefetch=8):
            await gate.wait_held(8)  # the prefetch requests are out, and unanswered
            break
        gc.collect()
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert _client_tasks() == []
        assert _open_connections(client) == 0
        sent = client.stats.requests
    assert client.stats.requests == sent == 1 + 9  # auth and 9 pages; nothing went out after the break
    assert fake.hits(*LIST) == 9


@pytest.mark.anyio
async def test_dropped_walk_cancels_only_the_pages_in_flight() -> None:
    """A walk dropped with some prefetched pages answered and others in flight stops those in flight."""
    async with FakeAirudder(workflows=1000) as fake, fake.client(limits=AT_ONCE) as client:
        gate = fake.gate(INSTANCELIST_PATH, after=3)  # page 1 and the first two prefetched pages pass
        walk = client.iter_workflows(page_size=100, prefetch=8)
        await walk.__anext__()
        await gate.wait_held(6)
        slots = list(walk._slots)
        with anyio.fail_after(5):
            while sum(s.done for s in slots) < 2:  # the two let through are answered
                await anyio.lowlevel.checkpoint()
        del walk  # no aclose(): __del__ stops the rest
        gc.collect()
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert _client_tasks() == []
        assert _open_connections(client) == 0
        assert [s.ok for s in slots].count(True) == 2  # the answered pages were left as they were
        assert gate.held == 6
    assert fake.hits(*LIST) == 9


@pytest.mark.anyio
async def test_aclose_stops_in_flight_requests() -> None:
    """aclose() cancels prefetch requests and waits until they are gone."""
    async with FakeAirudder(workflows=1000) as fake, fake.client(limits=AT_ONCE) as client:
        gate = fake.gate(INSTANCELIST_PATH, after=1)
        walk = client.iter_workflows(page_size=100, prefetch=8)
        async with aclosing(walk):
            await walk.__anext__()
            await gate.wait_held(8)  # pages 2-9 are in flight
            assert len(_client_tasks()) == 8
        assert _client_tasks() == []
        assert _open_connections(client) == 0
        assert walk.is_finished
        assert walk.extra_requests == 8
        assert gate.held == 8  # aclose() did not wait for the answers: the server still holds them
        assert [w async for w in walk] == []
        await walk.aclose()  # idempotent
        assert walk.extra_requests == 8


@pytest.mark.anyio
async def test_consumer_exception_and_cancellation_stop_the_walk() -> None:
    """An exception in the consumer or a cancelled consumer leaves no prefetch task behind."""
    async with FakeAirudder(workflows=3000) as fake, fake.client(limits=AT_ONCE) as client:
        with pytest.raises(KeyError):
            async with client.iter_workflows(page_size=100) as walk:
                async for _ in walk:
                    raise KeyError("consumer bug")
        assert _client_tasks() == []
    # A new server: a request of the walk above written just before the cancel may still reach the old
    # one after this point, and take the one pass through the gate meant for page 1.
    async with FakeAirudder(workflows=3000) as fake, fake.client(limits=AT_ONCE) as client:
        gate = fake.gate(INSTANCELIST_PATH, after=1)  # page 1 is answered, pages 2-9 are held
        end_of_page_1 = anyio.Event()

        async def consume() -> None:
            async with client.iter_workflows(page_size=100) as walk:
                async for _ in walk:
                    if walk.page_remaining == 0:
                        end_of_page_1.set()  # the next step waits for page 2, held at the gate

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await end_of_page_1.wait()
            await gate.wait_held(8)
            tg.cancel_scope.cancel()
        assert _client_tasks() == []
        assert _open_connections(client) == 0
        assert gate.held == 8  # the requests stopped on our side; the server never answered them


@pytest.mark.anyio
async def test_prefetch_window_is_bounded() -> None:
    """At most *prefetch* pages are requested ahead of the page being read."""
    async with FakeAirudder(workflows=4000) as fake, fake.client() as client:
        walk = client.iter_workflows(page_size=100, prefetch=4)
        seen = 0
        async for _ in walk:
            seen += 1
            if seen % 100 == 1:
                page_being_read = (seen - 1) // 100 + 1
                await fake.wait_for_hits(*LIST, min(page_being_read + 4, 40))  # the window fills up...
                assert fake.hits(*LIST) <= page_being_read + 4  # ...and no further
                assert len(walk._slots) <= 4
    assert seen == 4000
    assert fake.hits(*LIST) == 40


@pytest.mark.anyio
async def test_prefetch_workers_are_reused_across_pages_and_stop_with_the_walk() -> None:
    """40 pages with prefetch 4 start at most 4 worker tasks, and a walk that ends leaves none waiting."""
    async with FakeAirudder(workflows=4000) as fake, fake.client(limits=AT_ONCE) as client:
        walk = client.iter_workflows(page_size=100, prefetch=4)
        started: set[asyncio.Task[object]] = set()
        ids = []
        async for batch in walk.by_page():
            ids += [w.workflow_id for w in batch]
            started.update(_client_tasks())
        assert walk.is_finished
        assert walk.pages == 40
        assert 1 <= len(started) <= 4  # one task a page would have started 39
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert _client_tasks() == []  # the workers ended with the walk, none waits for a next page
    assert ids == fake.workflow_ids()


async def _echo(page: int) -> object:
    return page


def _no_parse(data: object) -> tuple[list[Workflow], int]:
    """The parse of workers made with `waiting=[True]`, which never parse early."""
    raise AssertionError(f"parsed {data!r} early")


async def _until(condition: Callable[[], bool]) -> None:
    """Take steps until *condition* holds (at most 5 s: a bug fails the test instead of hanging it)."""
    with anyio.fail_after(5):
        while not condition():
            await anyio.lowlevel.checkpoint()


async def _ended(slot: _Slot) -> _Slot:
    with anyio.fail_after(5):
        await slot.wait()
    return slot


@pytest.mark.anyio
async def test_a_worker_stopped_natively_at_any_point_still_ends_its_page() -> None:
    """
    Task.cancel() of a worker (the loop shutting down, a cancel-all signal handler) before its first
    step, or in the step it is handed a page, ends that page; a worker stopped while it waited is skipped.
    """
    tasks = TaskSet()
    workers = _Workers(_echo, _no_parse, [True], tasks)
    first = workers.slot(1)  # a new worker, not started yet...
    (unstarted,) = tasks._tasks
    unstarted.cancel()  # ...cancelled before its first step: its body never runs
    assert isinstance((await _ended(first)).error, RuntimeError)
    assert not first.ok

    second = await _ended(workers.slot(2))  # a new worker, which answers and then waits
    assert second.result == 2
    (worker,) = tasks._tasks
    held = worker.get_coro().cr_frame.f_locals.values()  # type: ignore[union-attr]
    assert not [v for v in held if isinstance(v, _Slot)]  # a waiting worker keeps no page alive
    third = workers.slot(3)  # handed to the waiting worker...
    worker.cancel()  # ...and cancelled before it could take it
    assert isinstance((await _ended(third)).error, RuntimeError)
    assert worker.cancelled()

    fourth = await _ended(workers.slot(4))
    (waiting,) = tasks._tasks
    waiting.cancel()  # cancelled while it waits: its future stays in the idle list, cancelled
    await _until(waiting.done)
    assert waiting.cancelled()
    fifth = await _ended(workers.slot(5))  # not handed to the stopped worker: a new one takes it
    assert (fourth.result, fifth.result) == (4, 5)
    (waiting,) = tasks._tasks
    waiting.cancel()
    await _until(waiting.done)
    workers.retire()  # skips the stopped worker's future too
    assert not workers._idle
    await tasks.aclose()


@pytest.mark.anyio
async def test_a_worker_stopped_before_it_runs_sends_nothing() -> None:
    """Workers cancelled in the step they were started or handed a page never call fetch."""
    tasks = TaskSet()
    fetched: list[int] = []

    async def fetch(page: int) -> object:
        fetched.append(page)
        return page

    workers = _Workers(fetch, _no_parse, [True], tasks)
    assert (await _ended(workers.slot(1))).ok  # this worker now waits for its next page
    handed, fresh = workers.slot(2), workers.slot(3)  # one handed over, one for a new worker
    workers.cancel()  # before either could run
    for slot in (await _ended(handed), await _ended(fresh)):
        assert isinstance(slot.error, RuntimeError)
    assert fetched == [1]
    await tasks.aclose()


def _stub_parse(count: int) -> Callable[[object], tuple[list[Workflow], int]]:
    """A parse function for stub walks whose fetch answers `{"page": n}`: 100 items a page, *count* in all."""
    made = datetime(2026, 1, 1, tzinfo=UTC)

    def parse(data: object) -> tuple[list[Workflow], int]:
        assert isinstance(data, dict)
        page = data["page"]
        items = [
            Workflow(
                workflow_id=f"wf-{page}-{i}",
                name="n",
                template_name="t",
                start_time=None,
                end_time=None,
                total=0,
                status="finished",
                create_time=made,
            )
            for i in range(100)
        ]
        return items, count

    return parse


def _stub_walk(
    fetch: Callable[[int], Awaitable[object]], tasks: TaskSet, count: int, prefetch: int
) -> WorkflowIterator:
    return WorkflowIterator(
        fetch=fetch,
        parse=_stub_parse(count),
        tasks=tasks,
        page_size=100,
        start_time=None,
        end_time=None,
        max_items=None,
        prefetch=prefetch,
        cursor=None,
    )


def _gated_walk(
    tasks: TaskSet, *, fails: int | None = None, pages: int = 4
) -> tuple[WorkflowIterator, dict[int, anyio.Event], dict[int, list[asyncio.Task[object] | None]]]:
    """
    A stub walk of *pages* pages of 100 (prefetch 3) whose page *n* is answered once `gates[n]` is
    set, and which notes the task that parsed each page (page *fails* never parses).
    """
    gates = {page: anyio.Event() for page in range(1, pages + 1)}
    parsed_by: dict[int, list[asyncio.Task[object] | None]] = {page: [] for page in gates}
    parse = _stub_parse(100 * pages)

    async def fetch(page: int) -> object:
        await gates[page].wait()
        return {"page": page}

    def noting(data: object) -> tuple[list[Workflow], int]:
        assert isinstance(data, dict)
        parsed_by[data["page"]].append(asyncio.current_task())
        if data["page"] == fails:
            raise DecodeError("data.lists[0].total is not an integer", field_path="data.lists[0].total")
        return parse(data)

    walk = WorkflowIterator(
        fetch=fetch,
        parse=noting,
        tasks=tasks,
        page_size=100,
        start_time=None,
        end_time=None,
        max_items=None,
        prefetch=3,
        cursor=None,
    )
    gates[1].set()
    return walk, gates, parsed_by


@pytest.mark.anyio
async def test_a_page_is_parsed_by_its_worker_unless_the_walk_waits_for_it() -> None:
    """
    A page answered while the walk is busy is parsed at once by the worker that fetched it (its JSON is
    still in the CPU's cache; pages later it is not, which cost 11% of the client's CPU without msgspec).
    A page the walk is waiting for is parsed by the walk, after it has refilled its window, so that its
    next requests are not held up behind the parsing of pages answered at the same time.
    """
    tasks = TaskSet()
    walk, gates, parsed_by = _gated_walk(tasks)
    me = asyncio.current_task()
    async with walk:
        seen = [(await anext(walk)).workflow_id]  # page 1, parsed inline; pages 2-4 requested
        gates[2].set()
        gates[3].set()
        await _until(lambda: bool(parsed_by[2] and parsed_by[3]))  # while the walk is busy
        workers = {task for page in (2, 3) for task in parsed_by[page]}
        assert me not in workers
        assert {task.get_name() for task in workers if task is not None} <= {
            f"airudder_async._prefetch[{n}]" for n in range(1, 4)
        }

        async def answer_once_the_walk_waits() -> None:
            await _until(lambda: walk._waiting[0])
            gates[4].set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_once_the_walk_waits)
            seen += [wf.workflow_id async for wf in walk]
    assert parsed_by[4] == [me]  # answered while the walk waited: parsed by the walk
    assert all(len(tasks_) == 1 for tasks_ in parsed_by.values())  # each page parsed once
    assert len(seen) == len(set(seen)) == 400
    await tasks.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("busy", [True, False])
async def test_a_worker_waiting_for_its_next_page_holds_nothing_of_the_last(busy: bool) -> None:
    """
    Between pages a worker keeps neither the slot nor the answer (raw, or parsed early while the walk
    was busy): with several idle workers, the pages they fetched long ago would otherwise stay alive as
    long as the walk.
    """
    tasks = TaskSet()
    walk, gates, parsed_by = _gated_walk(tasks, pages=8)
    async with walk:
        await anext(walk)  # page 1; pages 2-4 go to three workers
        if busy:  # answered while the walk holds an item: parsed early; the workers wait, idle
            for page in (2, 3, 4):
                gates[page].set()
            await _until(lambda: all(parsed_by[page] for page in (2, 3, 4)))
            assert len(walk._workers._idle) == 3  # type: ignore[union-attr]
        else:  # answered while the walk waits, handed over raw; the workers fetch pages 5-7

            async def answer_once_the_walk_waits() -> None:
                for page in (2, 3, 4):
                    await _until(lambda: walk._waiting[0])
                    gates[page].set()
                    await _until(lambda: not walk._waiting[0])

            async with anyio.create_task_group() as tg:
                tg.start_soon(answer_once_the_walk_waits)
                for _ in range(300):
                    await anext(walk)
            assert parsed_by[4] == [asyncio.current_task()]
        assert walk._workers is not None
        assert len(walk._workers._running) == 3
        for task in walk._workers._running:
            frame = task.get_coro().cr_frame  # type: ignore[union-attr]
            assert frame.f_locals["result"] is None
            assert busy != ("slot" in frame.f_locals)  # an idle worker has no slot either
    await tasks.aclose()


@pytest.mark.anyio
async def test_a_page_whose_early_parse_fails_fails_in_the_walk_as_before() -> None:
    """
    A page that a worker could not parse is handed over as it came; the walk parses it again when it
    gets there and raises that error, with the cursor after the last page it yielded.
    """
    tasks = TaskSet()
    walk, gates, parsed_by = _gated_walk(tasks, fails=3)
    me = asyncio.current_task()
    got = 0
    async with walk:
        await anext(walk)
        got = 1
        for page in (2, 3):
            gates[page].set()
        await _until(lambda: bool(parsed_by[2] and parsed_by[3]))
        assert me not in parsed_by[3]  # tried early by its worker...
        with pytest.raises(DecodeError) as info:
            async for _wf in walk:
                got += 1
    assert got == 200
    assert parsed_by[3][-1] is me
    assert len(parsed_by[3]) == 2
    assert info.value.field_path == "data.lists[0].total"
    assert info.value.cursor is not None
    assert info.value.cursor.page == 3
    await tasks.aclose()


@pytest.mark.anyio
async def test_a_walk_left_by_cancellation_waits_in_aclose_for_every_request_to_clean_up() -> None:
    """
    A consumer cancelled while it waits for a page: leaving `async with walk` waits until every request
    in flight (the awaited page's too) has run its shielded clean-up, even though the caller is cancelled.
    """
    release = anyio.Event()
    cleaned: list[int] = []
    waiting_for_page_2 = anyio.Event()

    async def fetch(page: int) -> object:
        if page == 1:
            return {"page": 1}
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await release.wait()  # a clean-up that takes a while (a lock released over the network)
                cleaned.append(page)
        raise AssertionError("unreachable")

    tasks = TaskSet()
    walk = _stub_walk(fetch, tasks, count=1000, prefetch=3)
    left = anyio.Event()

    async def consume() -> None:
        async with walk:
            async for _ in walk:
                if walk.page_remaining == 0:
                    waiting_for_page_2.set()
        left.set()  # never: the consumer is cancelled before it gets here

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await waiting_for_page_2.wait()
        await _until(lambda: len(tasks._tasks) == 3)
        tg.cancel_scope.cancel()  # the consumer now waits for page 2, pages 3 and 4 are in flight too
        for _ in range(10):
            await anyio.lowlevel.cancel_shielded_checkpoint()
        assert cleaned == []  # still cleaning up: aclose() has not let the consumer go
        release.set()
    assert sorted(cleaned) == [2, 3, 4]  # all three ended before the task group could finish
    assert not left.is_set()
    assert not tasks._tasks
    await tasks.aclose()


@pytest.mark.anyio
async def test_a_walk_closed_by_another_task_ends_quietly_and_yields_nothing_more() -> None:
    """aclose() from another task while the consumer waits (prefetched or inline): StopAsyncIteration."""
    for prefetch in (3, 1):
        gate = anyio.Event()
        fetched: list[int] = []

        async def fetch(page: int, gate: anyio.Event = gate, fetched: list[int] = fetched) -> object:
            fetched.append(page)
            if page > 1:
                await gate.wait()
            return {"page": page}

        tasks = TaskSet()
        walk = _stub_walk(fetch, tasks, count=1000, prefetch=prefetch)
        await walk.__anext__()
        walk._index = walk._limit  # the rest of page 1 is read: the next item needs page 2
        outcome: list[object] = []

        async def next_item(walk: WorkflowIterator = walk, outcome: list[object] = outcome) -> None:
            try:
                outcome.append(await walk.__anext__())
            except StopAsyncIteration:
                outcome.append("stopped")

        async with anyio.create_task_group() as tg:
            tg.start_soon(next_item)
            # The consumer waits for page 2: it took page 2's slot (prefetch 3) or asked for it (prefetch 1).
            await _until(lambda w=walk, f=fetched: 2 in f and not (w._slots and w._slots[0].page == 2))
            await walk.aclose()
            gate.set()  # an inline request (prefetch 1) is the consumer's own: it may still answer
        assert outcome == ["stopped"], prefetch  # not page 2's first item, nor the "cancelled" error
        assert max(fetched) == (4 if prefetch == 3 else 2)  # and nothing was requested after the close
        assert [w async for w in walk] == []
        await tasks.aclose()


@pytest.mark.anyio
async def test_retired_workers_end_after_their_page_and_new_pages_get_new_ones() -> None:
    """retire(): a waiting worker ends at once, a busy one after its page; a later page starts a worker."""
    tasks = TaskSet()
    release = anyio.Event()

    async def fetch(page: int) -> object:
        if page == 2:
            await release.wait()
        return page

    workers = _Workers(fetch, _no_parse, [True], tasks)
    await _ended(workers.slot(1))
    busy = workers.slot(2)  # the same worker, now held at page 2
    idle_one = await _ended(workers.slot(3))  # a second worker, which then waits
    assert idle_one.result == 3
    assert len(tasks._tasks) == 2
    workers.retire()
    await _until(lambda: len(tasks._tasks) == 1)  # the waiting one ended
    release.set()
    assert (await _ended(busy)).result == 2
    await _until(lambda: not tasks._tasks)  # the busy one ended after its page instead of waiting
    assert (await _ended(workers.slot(4))).result == 4  # the plan grew: a new worker
    assert len(tasks._tasks) == 1  # and it waits for more: slot() undid the retirement
    await tasks.aclose()


@pytest.mark.anyio
async def test_a_walk_that_has_requested_its_last_page_keeps_no_worker_waiting() -> None:
    """A walk kept but not read on, after its last planned page was fetched, leaves no task behind."""
    async with FakeAirudder(workflows=2000) as fake, fake.client(limits=AT_ONCE) as client:
        walk = client.iter_workflows(page_size=100, prefetch=4, max_items=450)  # pages 1-5
        async for _ in walk:
            if walk.received == 401:
                break  # into page 5: every planned page is fetched; the walk is kept, not finished
        assert not walk.is_finished
        await _until(lambda: not _client_tasks())
        assert fake.hits(*LIST) == 5
        assert [w.workflow_id async for w in walk] == fake.workflow_ids()[401:450]


@pytest.mark.anyio
async def test_a_walk_following_a_stale_count_keeps_no_trace_of_ended_workers() -> None:
    """Page by page after a stale count, each page may need a new worker: the ended ones are forgotten."""
    async with FakeAirudder(workflows=2000) as fake, fake.client(limits=AT_ONCE) as client:
        fake.count_offset = -1950  # count 50: the walk follows the data one page at a time
        walk = client.iter_workflows(page_size=100, prefetch=4)
        ids: list[str] = []
        most = 0
        async for batch in walk.by_page():
            ids += [w.workflow_id for w in batch]
            workers = walk._workers
            if workers is not None:
                most = max(most, len(workers._running))
        assert ids == fake.workflow_ids()
        assert walk._workers is not None
        assert walk._workers._started > 4  # retired after each page, so new ones were started...
        assert most <= 2  # ...and only the running ones are kept
        await _until(lambda: not _client_tasks())
        assert not walk._workers._running


@pytest.mark.anyio
async def test_a_walk_collected_outside_its_loop_still_stops_its_workers() -> None:
    """__del__ run where no loop runs (gc in another thread) stops the workers through their loop."""
    async with FakeAirudder(workflows=1000) as fake, fake.client(limits=AT_ONCE) as client:
        gate = fake.gate(INSTANCELIST_PATH, after=1)
        walk = client.iter_workflows(page_size=100, prefetch=4)
        await walk.__anext__()
        await gate.wait_held(4)
        assert len(_client_tasks()) == 4
        await anyio.to_thread.run_sync(walk.__del__)  # as gc would, from a thread with no loop
        await _until(lambda: not _client_tasks())
        assert _open_connections(client) == 0


@pytest.mark.anyio
async def test_snapshot_ignores_workflows_created_during_the_walk() -> None:
    """50 workflows inserted at the head midway: the walk yields exactly those that existed, each once."""
    async with FakeAirudder(workflows=1000) as fake, fake.client() as client:
        before = fake.workflow_ids()
        fake.inject(Fault.insert_head(50), on=3)
        walk = client.iter_workflows(page_size=100, prefetch=1)
        ids = [w.workflow_id async for w in walk]
    assert ids == before
    assert len(fake.workflows) == 1050
    assert walk.end_time is not None
    assert walk.count == 1000
    assert walk.count_drift == 0


@pytest.mark.anyio
async def test_unpinned_walk_dedupes_shifted_items() -> None:
    """Without a snapshot, items pushed onto the next page by new ones are yielded once, not twice."""
    async with FakeAirudder(workflows=1000) as fake, fake.client() as client:
        before = fake.workflow_ids()
        fake.inject(Fault.insert_head(30), on=3)
        walk = client.iter_workflows(page_size=100, prefetch=1, snapshot=False)
        ids = [w.workflow_id async for w in walk]
    assert ids == before
    assert walk.duplicates_skipped == 30
    assert walk.count_drift == 30


@pytest.mark.anyio
async def test_resumed_walk_sees_the_same_snapshot() -> None:
    """A cursor carries the pinned window, so a resumed walk ignores workflows created in between."""
    async with FakeAirudder(workflows=600) as fake, fake.client() as client:
        before = fake.workflow_ids()
        walk = client.iter_workflows(page_size=100)
        got = []
        async for wf in walk:
            got.append(wf.workflow_id)
            if len(got) == 250:
                break
        cursor = Cursor.from_json(walk.cursor.to_json())
        await walk.aclose()
        fake.insert_head(80)
        got += [w.workflow_id async for w in client.iter_workflows(cursor=cursor)]
    assert got == before


@pytest.mark.anyio
async def test_resumed_walk_reports_its_cursor_before_the_first_item() -> None:
    """A walk started from a cursor reports that same cursor until it yields something."""
    async with FakeAirudder(workflows=300) as fake, fake.client() as client:
        walk = client.iter_workflows(page_size=100)
        fresh = walk.cursor  # nothing yielded yet; the window is pinned already
        assert (fresh.page, fresh.last_workflow_id, fresh.received) == (1, None, 0)
        assert fresh.end_time is not None
        assert (walk.count, walk.count_drift) == (None, 0)  # no page seen yet
        async with walk:
            for _ in range(150):
                await walk.__anext__()
        cursor = walk.cursor
        assert (cursor.page, cursor.received) == (2, 150)
        assert cursor.last_workflow_id == fake.workflow_ids()[149]
        resumed = client.iter_workflows(cursor=cursor)
        assert resumed.cursor == cursor
        rest = [w.workflow_id async for w in resumed]
    assert rest == fake.workflow_ids()[150:]


def test_cursor_times_must_be_aware() -> None:
    """A cursor refuses a naive window time, which would shift the walk by the local offset."""
    with pytest.raises(ValueError, match="start_time must be timezone-aware"):
        Cursor(page=1, page_size=10, start_time=datetime(2026, 1, 1))  # naive on purpose
    with pytest.raises(ValueError, match="end_time must be timezone-aware"):
        Cursor(page=1, page_size=10, end_time=datetime(2026, 1, 1))  # naive on purpose
    assert Cursor(page=1, page_size=10, end_time=datetime(2026, 1, 1, tzinfo=UTC)).end_time is not None


@pytest.mark.anyio
async def test_walk_error_with_prefetch_carries_cursor() -> None:
    """A failing prefetched page raises when reached, with a cursor after the last full page."""
    async with FakeAirudder(workflows=1000) as fake, fake.client() as client:
        fake.inject(Fault.malformed_json(), on=4)
        got: list[str] = []
        walk = client.iter_workflows(page_size=100, prefetch=8)
        with pytest.raises(Exception) as info:  # noqa: PT011 - type checked below
            async for wf in walk:
                got.append(wf.workflow_id)
        cursor = info.value.cursor  # type: ignore[attr-defined]  # AirudderError
        assert len(got) == 300
        assert cursor.page == 4
        assert [w async for w in walk] == []
        got += [w.workflow_id async for w in client.iter_workflows(cursor=cursor)]
    assert got == fake.workflow_ids()


@pytest.mark.anyio
async def test_equal_creation_times_across_pages_are_not_dropped() -> None:
    """Workflows created in the same second on both sides of a page boundary are all yielded."""
    async with FakeAirudder() as fake, fake.client() as client:
        fake.add_workflows(250, step=0.0)
        walk = client.iter_workflows(page_size=100)
        ids = [w.workflow_id async for w in walk]
    assert ids == fake.workflow_ids()
    assert walk.duplicates_skipped == 0


@pytest.mark.anyio
async def test_by_page_yields_lists_and_shares_the_walk() -> None:
    """by_page() gives the rest of the walk a page at a time, after items taken one by one."""
    async with FakeAirudder(workflows=530) as fake, fake.client() as client:
        walk = client.iter_workflows(page_size=100, max_items=450)
        first = [await walk.__anext__() for _ in range(30)]
        batches = []
        async for batch in walk.by_page():
            batches.append(batch)
            assert walk.page_remaining == 0 or walk.received == 450
        ids = [w.workflow_id for w in first] + [w.workflow_id for b in batches for w in b]
        assert [len(b) for b in batches] == [70, 100, 100, 100, 50]
        assert ids == fake.workflow_ids()[:450]
        assert walk.is_finished
        assert [b async for b in walk.by_page()] == []


@pytest.mark.anyio
async def test_by_page_cursor_after_each_batch_resumes_the_next_page() -> None:
    """After each batch the cursor points at the next page; a failure carries it."""
    async with FakeAirudder(workflows=500) as fake, fake.client() as client:
        fake.inject(Fault.malformed_json(), on=4)
        walk = client.iter_workflows(page_size=100)
        pages = []
        with pytest.raises(Exception) as info:  # noqa: PT011 - checked below
            async for batch in walk.by_page():
                pages.append(walk.cursor.page)
                assert len(batch) == 100
        assert pages == [2, 3, 4]
        cursor = info.value.cursor  # type: ignore[attr-defined]  # an AirudderError
        assert cursor.page == 4
        rest = [w.workflow_id async for w in client.iter_workflows(cursor=cursor)]
    assert rest == fake.workflow_ids()[300:]


class _IgnoresPage(FakeAirudder):
    """A broken server: whatever `page` asks, it answers page 1."""

    async def _instancelist(self, request: web.Request) -> web.Response:
        query = request.rel_url.query.copy()
        query["page"] = "1"
        return await super()._instancelist(request.clone(rel_url=request.rel_url.with_query(query)))


@pytest.mark.anyio
async def test_server_ignoring_page_does_not_loop_forever(caplog: pytest.LogCaptureFixture) -> None:
    """A server that answers every page with the first one ends the walk after two repeats."""
    async with _IgnoresPage(workflows=60) as fake:
        fake.count_offset = -50  # count=10 while page 1 holds 20: a stale count, so the walk follows data
        async with fake.client() as client:
            walk = client.iter_workflows(page_size=20, prefetch=1)
            with anyio.fail_after(5):
                ids = [w.workflow_id async for w in walk]
    assert ids == fake.workflow_ids()[:20]
    assert fake.hits(*LIST) == 3
    assert "ignore" in caplog.text


@pytest.mark.anyio
async def test_cancelled_consumer_stops_the_awaited_request() -> None:
    """Cancelling a consumer waiting for a prefetched page cancels that page's request too."""
    async with FakeAirudder(workflows=3000) as fake, fake.client(limits=AT_ONCE) as client:
        gate = fake.gate(INSTANCELIST_PATH, after=1)
        walk = client.iter_workflows(page_size=100, prefetch=4)
        await walk.__anext__()  # page 1 arrives; pages 2-5 are requested
        await gate.wait_held(4)  # ...and held by the server
        walk._index = walk._limit  # skip the rest of page 1: the next item needs page 2
        page_2 = walk._slots[0]
        async with anyio.create_task_group() as tg:
            tg.start_soon(walk.__anext__)
            with anyio.fail_after(5):
                while walk._slots[0] is page_2:  # taken in the same step as the wait for its answer
                    await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        await anyio.lowlevel.checkpoint()
        assert _client_tasks() == []
        assert _open_connections(client) == 0
        assert walk.extra_requests == 3  # pages 3-5; page 2 was the awaited one, cancelled with it
        assert walk.is_finished
        responses = client.stats.responses
    assert client.stats.responses == responses == 2  # auth and page 1: nothing answered the others


@pytest.mark.anyio
async def test_task_set_cancels_and_awaits_its_tasks_and_then_refuses_new_ones() -> None:
    """aclose() ends each task through its scope (even for a cancelled caller); a closed set starts none."""
    tasks = TaskSet()
    ended: list[str] = []

    async def forever(scope: anyio.CancelScope, name: str) -> None:
        with scope:
            try:
                await anyio.sleep_forever()
            finally:
                await anyio.lowlevel.cancel_shielded_checkpoint()  # ending takes a step of its own
                ended.append(name)

    scopes = [anyio.CancelScope() for _ in range(3)]
    started = [tasks.spawn(forever(scope, str(i)), scope, f"forever-{i}") for i, scope in enumerate(scopes)]
    await anyio.lowlevel.checkpoint()
    with anyio.CancelScope() as caller:
        caller.cancel()  # the caller is cancelled: aclose() still waits for every task to end
        await tasks.aclose()
    assert sorted(ended) == ["0", "1", "2"]
    assert all(scope.cancel_called for scope in scopes)
    assert all(t.done() and not t.cancelled() for t in started)  # ended through their scopes
    assert tasks.closed
    late_scope = anyio.CancelScope()
    coro = forever(late_scope, "late")
    with pytest.raises(RuntimeError, match="closed"):
        tasks.spawn(coro, late_scope, "late")
    assert coro.cr_frame is None  # closed, not left to warn that it was never awaited
    await tasks.aclose()  # idempotent


@pytest.mark.anyio
async def test_task_set_aclose_outlasts_a_native_cancellation_of_its_caller() -> None:
    """A caller cancelled with Task.cancel() (asyncio.timeout, say) gets it only once every task ended."""
    tasks = TaskSet()
    cleanup_done = anyio.Event()
    release = anyio.Event()

    async def slow_to_end(scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await release.wait()  # a clean-up that takes a while (a lock released over the network)
                    cleanup_done.set()

    scope = anyio.CancelScope()
    worker = tasks.spawn(slow_to_end(scope), scope, "slow")
    await anyio.lowlevel.checkpoint()
    closer = asyncio.get_running_loop().create_task(tasks.aclose())
    await anyio.lowlevel.checkpoint()
    closer.cancel()  # native: the anyio shield alone would not hold it
    for _ in range(5):
        await anyio.lowlevel.checkpoint()
    assert not closer.done()  # still waiting for the worker's clean-up
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert cleanup_done.is_set()
    assert worker.done()


@pytest.mark.anyio
async def test_closing_a_walk_lets_a_page_request_finish_its_shielded_clean_up() -> None:
    """
    A prefetched page is stopped through its cancel scope, not Task.cancel(): a shielded clean-up in the
    request (the shared token lock's release, say) runs to its end.
    """
    inside, release = anyio.Event(), anyio.Event()
    finished: list[int] = []

    async def fetch(page: int) -> object:
        if page == 1:
            return {"page": 1}
        if page == 2:
            with anyio.CancelScope(shield=True):
                inside.set()
                await release.wait()
                finished.append(page)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    tasks = TaskSet()
    walk = _stub_walk(fetch, tasks, count=300, prefetch=2)
    await walk.__anext__()
    await inside.wait()  # page 2's request is inside its shielded clean-up
    async with anyio.create_task_group() as tg:
        tg.start_soon(walk.aclose)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        release.set()
    assert finished == [2]  # a Task.cancel() would have broken into the shielded wait
    await tasks.aclose()
