"""
Coordination in one process: the in-memory stores, clients sharing them, webhook dedupe across
receivers, and partitioned walks.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from airudder_async import AirudderClient, Limits, partition_window
from airudder_async.coordination import (
    Coordination,
    DedupeStore,
    MemoryCoordination,
    MemoryDedupeStore,
    MemoryRateBudget,
    MemoryTokenStore,
    RateBudget,
    TokenStore,
    account_id,
)
from airudder_async.errors import AuthenticationError, CoordinationError
from airudder_async.models import Cursor, RequestEvent
from airudder_async.testing import AUTH_PATH, INSTANCELIST_PATH, FakeAirudder, Fault
from airudder_async.webhooks import DEFAULT_WEBHOOK_LIMITS, WebhookEvent, webhook_app, webhook_handler
from tests.support import serve

pytestmark = pytest.mark.anyio

EVENT = {"workflow_id": "wf-1", "case_id": "c-1", "status": "finished", "actions": []}


# ------------------------------------------------------------------------------ the in-memory stores


def test_memory_stores_satisfy_the_protocols() -> None:
    """Each in-memory store is an instance of the protocol it implements."""
    coordination = MemoryCoordination()
    assert isinstance(coordination, Coordination)
    assert isinstance(coordination.rate_budget(app_key="k", rate=None, burst=1), RateBudget)
    assert isinstance(coordination.token_store(app_key="k"), TokenStore)
    assert isinstance(coordination.dedupe_store(), DedupeStore)


def test_account_id_is_a_hash_of_the_key() -> None:
    """The account's name is a stable hash that neither contains nor reveals the APPKey."""
    key = "my-app-key-123456"
    assert account_id(key) == account_id(key) != account_id(key + "x")
    assert key not in account_id(key)
    assert len(account_id(key)) == 24


def test_memory_coordination_shares_per_account() -> None:
    """One budget and one token store per APPKey; another key gets its own; reprs show no key."""
    coordination = MemoryCoordination()
    budget = coordination.rate_budget(app_key="key-a", rate=10, burst=2)
    assert coordination.rate_budget(app_key="key-a", rate=99, burst=9) is budget
    assert coordination.rate_budget(app_key="key-b", rate=10, burst=2) is not budget
    store = coordination.token_store(app_key="key-a")
    assert coordination.token_store(app_key="key-a") is store
    assert coordination.token_store(app_key="key-b") is not store
    assert coordination.dedupe_store() is not coordination.dedupe_store()
    text = " ".join(map(repr, (coordination, budget, store, coordination.dedupe_store())))
    assert "key-a" not in text
    assert "accounts=2" in repr(coordination)
    assert "rate=10.0" in repr(budget)
    assert "rate=None" in repr(MemoryRateBudget(rate=None))


async def test_memory_budget_waits_for_its_rate_and_cool_down() -> None:
    """The budget spaces requests by its rate, waits out a cool-down, and never shortens one."""
    budget = MemoryRateBudget(rate=200, burst=1)
    assert await budget.acquire() == 0
    assert await budget.acquire() > 0  # the next slot is 5 ms later
    unlimited = MemoryRateBudget(rate=None)
    assert await unlimited.acquire() == 0
    await unlimited.cool_down(0.05)
    longest = unlimited._cooldown_until
    await unlimited.cool_down(0.01)  # a smaller one later does not shorten it
    assert unlimited._cooldown_until == longest
    assert await unlimited.acquire() > 0.03


async def test_memory_token_store_fetches_once_and_invalidates_only_the_current() -> None:
    """Concurrent obtain() calls share one fetch; invalidate() ignores a token already replaced."""
    store = MemoryTokenStore()
    assert await store.get() is None
    fetches = 0
    release = anyio.Event()

    async def fetch() -> str:
        nonlocal fetches
        fetches += 1
        await release.wait()
        return f"token-{fetches}"

    got: list[tuple[str, float]] = []

    async def obtain() -> None:
        got.append(await store.obtain(fetch, lifetime=100))

    async with anyio.create_task_group() as tg:
        tg.start_soon(obtain)
        tg.start_soon(obtain)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert fetches == 1
    assert [token for token, _ in got] == ["token-1", "token-1"]
    await store.invalidate("token-0")
    assert (await store.get() or ("", 0))[0] == "token-1"
    await store.invalidate("token-1")
    assert await store.get() is None
    assert "has_token=False" in repr(store)
    await store.obtain(fetch, lifetime=1e-9)  # expires at once
    assert await store.get() is None


async def test_memory_dedupe_store_remembers_forgets_and_evicts() -> None:
    """A key is new once per TTL; forget() makes it new again; the oldest key goes past the size."""
    store = MemoryDedupeStore(size=2)
    assert await store.first_time(b"a", 100) is True
    assert await store.first_time(b"a", 100) is False
    await store.forget(b"a")
    assert await store.first_time(b"a", 100) is True
    assert await store.first_time(b"b", 1e-9) is True
    assert await store.first_time(b"b", 100) is True  # expired
    assert await store.first_time(b"c", 100) is True  # evicts a
    assert await store.first_time(b"a", 100) is True
    assert "keys=2" in repr(store)


# ------------------------------------------------------------------------ clients sharing one process


async def test_two_clients_share_one_token_and_one_refresh() -> None:
    """Two clients of one account make one auth request, and one more after the token is revoked."""
    coordination = MemoryCoordination()
    async with (
        FakeAirudder(workflows=3) as fake,
        fake.client(coordination=coordination) as a,
        fake.client(coordination=coordination) as b,
    ):
        async with anyio.create_task_group() as tg:
            for client in (a, b, a, b):
                tg.start_soon(client.list_workflows)
        assert fake.hits("POST", AUTH_PATH) == 1
        fake.revoke_tokens()
        await a.list_workflows()
        await b.list_workflows()  # refused once, then takes a's new token from the store
        assert fake.hits("POST", AUTH_PATH) == 2
        assert a.stats.auth_requests + b.stats.auth_requests == 2
        assert a.stats.token_refreshes + b.stats.token_refreshes == 1


async def test_refused_credentials_through_a_store_raise_once() -> None:
    """With a store, refused credentials still raise AuthenticationError, shared by waiting callers."""
    async with FakeAirudder() as fake:
        client = AirudderClient(
            app_key=fake.app_key, app_secret="wrong", base_url=fake.url, coordination=MemoryCoordination()
        )
        async with client:
            with pytest.raises(AuthenticationError):
                await client.list_workflows()
        assert fake.hits("POST", AUTH_PATH) == 1


async def test_two_clients_share_one_budget() -> None:
    """Two clients with a shared 50/s budget send their 10 requests 20 ms apart between them."""
    coordination = MemoryCoordination()
    limits = Limits(requests_per_second=50, burst=1)
    async with (
        FakeAirudder(workflows=3) as fake,
        fake.client(coordination=coordination, limits=limits) as a,
        fake.client(coordination=coordination, limits=limits) as b,
    ):
        await a.list_workflows()  # auth first, then the measured requests
        async with anyio.create_task_group() as tg:
            for client in (a, b) * 5:
                tg.start_soon(client.list_workflows)
    times = sorted(r.at for r in fake.requests if r.path == INSTANCELIST_PATH)[1:]
    assert times[-1] - times[0] >= 9 * 0.02 - 0.005
    assert a.stats.budget_wait + b.stats.budget_wait > 0


async def test_a_429_to_one_client_holds_the_other() -> None:
    """A 429 with Retry-After to one client holds back the other client sharing the budget."""
    coordination = MemoryCoordination()
    cooling = anyio.Event()

    def hook(event: RequestEvent) -> None:
        if event.kind == "retry":
            cooling.set()  # emitted once the shared cool-down is set

    async with (
        FakeAirudder(workflows=3) as fake,
        fake.client(coordination=coordination, event_hook=hook) as a,
        fake.client(coordination=coordination) as b,
    ):
        await a.list_workflows()
        fake.inject(Fault.rate_limited(0.2))

        async def other() -> None:
            await cooling.wait()
            await b.list_workflows()

        async with anyio.create_task_group() as tg:
            tg.start_soon(a.list_workflows)
            tg.start_soon(other)
    lists = [r for r in fake.requests if r.path == INSTANCELIST_PATH]
    assert lists[1].is_rate_limited is False  # injected faults are not the fake's rate limit
    assert len(lists) == 4
    assert all(r.at >= lists[1].at + 0.2 - 0.01 for r in lists[2:])
    assert a.stats.rate_limited == 1
    assert b.stats.budget_wait > 0.1


# ------------------------------------------------------------------------------------ webhook dedupe


class Inbox:
    """A webhook callback that records every event it is given."""

    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)


async def _post(session: aiohttp.ClientSession, url: str, body: object = EVENT) -> int:
    async with session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as r:
        await r.read()
        return r.status


async def test_two_receivers_sharing_a_store_deliver_once() -> None:
    """The same event posted 5 times across two receivers sharing one store reaches a callback once."""
    store = MemoryDedupeStore()
    inbox = Inbox()
    async with (
        serve(webhook_app(inbox, dedupe=store)) as a,
        serve(webhook_app(inbox, dedupe=store)) as b,
        aiohttp.ClientSession() as session,
    ):
        statuses = [await _post(session, url + "/airudder/webhook") for url in (a, b, a, b, a)]
        other = await _post(session, b + "/airudder/webhook", {**EVENT, "case_id": "c-2"})
    assert statuses == [200] * 5
    assert other == 200
    assert [e.raw["case_id"] for e in inbox.events] == ["c-1", "c-2"]


async def test_shared_dedupe_refusals() -> None:
    """A busy receiver or an unreachable store answers 503, so AIRUDDER retries; nothing is delivered."""
    release = anyio.Event()
    seen: list[WebhookEvent] = []

    async def slow(event: WebhookEvent) -> None:
        seen.append(event)
        await release.wait()

    class Unreachable:
        async def first_time(self, key: bytes, ttl: float) -> bool:
            raise CoordinationError("no redis", operation="webhook dedupe")

        async def forget(self, key: bytes) -> None:  # asked, since the record may have landed
            raise CoordinationError("no redis", operation="webhook dedupe")

    one = attrs.evolve(DEFAULT_WEBHOOK_LIMITS, max_pending=1)
    body = json.dumps({**EVENT, "case_id": "late"}).encode()
    async with (
        serve(webhook_app(slow, dedupe=MemoryDedupeStore(), limits=one)) as busy,
        serve(webhook_app(slow, dedupe=Unreachable())) as broken,
        aiohttp.ClientSession() as session,
    ):
        host, port = busy.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            head = "POST /airudder/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            await stream.send(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
            await anyio.wait_all_tasks_blocked()  # this body is half read: the cap was not reached yet
            assert await _post(session, busy + "/airudder/webhook") == 200  # fills the one slot
            await stream.send(body[5:])
            assert (await stream.receive()).startswith(b"HTTP/1.1 503")
        assert await _post(session, busy + "/airudder/webhook", {**EVENT, "case_id": "x"}) == 503
        assert await _post(session, broken + "/airudder/webhook") == 503
        release.set()
    assert len(seen) == 1


async def test_a_delivery_abandoned_during_the_store_round_trip_frees_its_slot() -> None:
    """
    A handler cancelled while the shared store is asked (the sender hung up) gives back its max_pending
    slot and forgets the key it may have recorded, so later deliveries are not all answered 503.
    """
    entered, forgot = anyio.Event(), anyio.Event()
    forgotten: list[bytes] = []

    class Hanging(MemoryDedupeStore):
        async def first_time(self, key: bytes, ttl: float) -> bool:
            recorded = await super().first_time(key, ttl)
            if not entered.is_set():  # the first round trip never ends
                entered.set()
                await anyio.sleep_forever()
            return recorded

        async def forget(self, key: bytes) -> None:
            forgotten.append(key)
            await super().forget(key)
            forgot.set()

    inbox = Inbox()
    one = attrs.evolve(DEFAULT_WEBHOOK_LIMITS, max_pending=1)
    body = json.dumps(EVENT).encode()
    async with serve(webhook_app(inbox, dedupe=Hanging(), limits=one), handler_cancellation=True) as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            head = "POST /airudder/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            await stream.send(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await entered.wait()
        # The sender hung up: aiohttp cancels the handler.
        with anyio.fail_after(5):
            await forgot.wait()
        async with aiohttp.ClientSession() as session:
            assert await _post(session, url + "/airudder/webhook") == 200  # the same event: delivered
            assert await _post(session, url + "/airudder/webhook", {**EVENT, "case_id": "c-2"}) == 200
    assert len(forgotten) == 1
    assert [e.raw["case_id"] for e in inbox.events] == ["c-1", "c-2"]


async def test_dedupe_size_zero_turns_shared_dedupe_off() -> None:
    """With dedupe_size=0 the shared store is not used and every delivery reaches the callback."""
    inbox = Inbox()
    store = MemoryDedupeStore()
    off = attrs.evolve(DEFAULT_WEBHOOK_LIMITS, dedupe_size=0)
    async with serve(webhook_app(inbox, dedupe=store, limits=off)) as url, aiohttp.ClientSession() as s:
        for _ in range(2):
            assert await _post(s, url + "/airudder/webhook") == 200
    assert len(inbox.events) == 2
    assert "keys=0" in repr(store)


async def test_shutdown_during_the_store_round_trip_forgets_the_key() -> None:
    """A delivery whose receiver stops during the store's round trip is forgotten and answered 503."""
    entered, release = anyio.Event(), anyio.Event()
    forgotten: list[bytes] = []

    class Slow(MemoryDedupeStore):
        async def first_time(self, key: bytes, ttl: float) -> bool:
            entered.set()
            await release.wait()
            return await super().first_time(key, ttl)

        async def forget(self, key: bytes) -> None:
            forgotten.append(key)
            await super().forget(key)

    inbox = Inbox()
    store = Slow()
    handler = webhook_handler(inbox, dedupe=store)
    app = web.Application()
    app.router.add_post("/hook", handler.handle)
    lifespan: AsyncIterator[None] = handler.lifespan(app)
    await lifespan.__anext__()
    async with serve(app) as url, aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
        statuses: list[int] = []

        async def deliver() -> None:
            statuses.append(await _post(session, url + "/hook"))

        tg.start_soon(deliver)
        await entered.wait()
        with pytest.raises(StopAsyncIteration):
            await lifespan.__anext__()  # the receiver stops while the store is asked
        release.set()
    assert statuses == [503]
    assert len(forgotten) == 1
    assert inbox.events == []
    assert await store.first_time(forgotten[0], 100) is True  # the retry will be delivered


# ------------------------------------------------------------------------------------ partitions

_OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=7)), timezone(timedelta(hours=-5, minutes=-30))])


@given(
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_OFFSETS),
    span=st.integers(min_value=0, max_value=10**13),
    count=st.integers(min_value=1, max_value=64),
)
def test_partitions_cover_the_window_once(start: datetime, span: int, count: int) -> None:
    """The K windows are disjoint, contiguous, inclusive to the second, and cover the whole window."""
    end = start + timedelta(microseconds=span)
    # The API drops fractions of a second from both bounds: the window's seconds, both ends included.
    seconds = int((end.replace(microsecond=0) - start.replace(microsecond=0)).total_seconds()) + 1
    if seconds < count:
        with pytest.raises(ValueError, match="cannot be split"):
            partition_window(start, end, index=0, count=count)
        return
    windows = [partition_window(start, end, index=i, count=count) for i in range(count)]
    assert windows[0][0] == start.astimezone(UTC).replace(microsecond=0)
    assert windows[-1][1] == end.astimezone(UTC).replace(microsecond=0)
    for (_, last), (first, _) in itertools.pairwise(windows):
        assert first == last + timedelta(seconds=1)  # no gap, no overlap
    sizes = [int((b - a).total_seconds()) + 1 for a, b in windows]
    assert sum(sizes) == seconds
    assert max(sizes) - min(sizes) <= 1
    assert all(a.tzinfo is UTC and a.microsecond == 0 for w in windows for a in w)


def test_partition_arguments_are_checked() -> None:
    """Bad indexes, counts and times raise TypeError/ValueError before anything is planned."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(TypeError, match="index"):
        partition_window(t, t, index=0.0, count=1)  # type: ignore[arg-type]  # the wrong type is the test
    for index, count in ((1, 1), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="0 <= index < count"):
            partition_window(t, t, index=index, count=count)
    with pytest.raises(ValueError, match="aware end_time"):
        partition_window(t, datetime(2026, 1, 1), index=0, count=1)
    with pytest.raises(ValueError, match="0 seconds"):
        partition_window(t, t - timedelta(seconds=5), index=0, count=1)
    east = timezone(timedelta(hours=1))
    with pytest.raises(ValueError, match="range of UTC"):
        partition_window(datetime(1, 1, 1, tzinfo=east), t, index=0, count=1)


async def test_partitioned_walks_add_up_to_the_full_walk() -> None:
    """K partition walks of a window yield exactly the full walk's workflows, each once."""
    async with FakeAirudder(workflows=1000) as fake, fake.client() as client:
        times = [datetime.fromisoformat(str(w["create_time"])) for w in fake.workflows]
        since, until = min(times), max(times)
        full = [w.workflow_id async for w in client.iter_workflows(start_time=since, end_time=until)]
        parts = []
        for i in range(4):
            walk = client.iter_workflows(start_time=since, end_time=until, partition=(i, 4), page_size=50)
            parts.append([w.workflow_id async for w in walk])
    assert len(full) == 1000
    assert all(parts)
    joined = [wid for part in reversed(parts) for wid in part]
    assert joined == full  # newest first: the last partition holds the newest


async def test_partition_argument_errors() -> None:
    """A partition needs both bounds, a (index, count) tuple, and no cursor."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    async with FakeAirudder() as fake, fake.client() as client:
        with pytest.raises(ValueError, match="needs both"):
            client.iter_workflows(start_time=t, partition=(0, 2))
        with pytest.raises(TypeError, match="tuple"):
            client.iter_workflows(start_time=t, end_time=t, partition=[0, 2])  # type: ignore[arg-type]  # a list is the test
        with pytest.raises(ValueError, match="carries its own window"):
            client.iter_workflows(cursor=Cursor(page=1, page_size=10), partition=(0, 2))
