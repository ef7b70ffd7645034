"""
AirudderClient against FakeAirudder over real loopback HTTP: lifecycle, validation, list and walk.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta, timezone

import aiohttp
import anyio
import pytest

from airudder_async import AirudderClient, Limits, RetryPolicy, Timeouts
from airudder_async.errors import (
    AuthenticationError,
    DecodeError,
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from airudder_async.models import Page, RequestEvent, Workflow
from airudder_async.testing import AUTH_PATH, INSTANCELIST_PATH, FakeAirudder, Fault

pytestmark = pytest.mark.anyio

LIST = ("GET", INSTANCELIST_PATH)
AUTH = ("POST", AUTH_PATH)


async def test_list_workflows_returns_one_page(fake: FakeAirudder) -> None:
    """list_workflows() returns the requested page with count, page and size."""
    fake.add_workflows(30)
    async with fake.client() as client:
        page = await client.list_workflows(page=2, size=10)
    assert isinstance(page, Page)
    assert (page.count, page.page, page.size) == (30, 2, 10)
    assert [w.workflow_id for w in page.items] == fake.workflow_ids()[10:20]
    assert all(isinstance(w, Workflow) for w in page.items)
    assert page.has_more


async def test_walk_of_1000_costs_5_list_requests_and_1_auth() -> None:
    """1,000 workflows at page size 200 take exactly 5 list requests and 1 auth request, every id once."""
    async with FakeAirudder(workflows=1000) as fake, fake.client() as client:
        ids = [w.workflow_id async for w in client.iter_workflows(page_size=200)]
    assert ids == fake.workflow_ids()
    assert len(set(ids)) == 1000
    assert fake.hits(*LIST) == 5
    assert fake.hits(*AUTH) == 1


@pytest.mark.parametrize("prefetch", [1, 3, 8])
async def test_walk_in_order_with_any_prefetch(prefetch: int) -> None:
    """The walk yields every workflow newest first whatever the prefetch window."""
    async with FakeAirudder(workflows=437) as fake, fake.client() as client:
        ids = [w.workflow_id async for w in client.iter_workflows(page_size=20, prefetch=prefetch)]
    assert ids == fake.workflow_ids()
    assert fake.hits(*LIST) == 22


def test_the_user_agent_is_looked_up_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed version (about 1 ms through importlib.metadata) is read once, not per client."""
    import importlib.metadata

    from airudder_async import _client

    calls: list[str] = []
    real = importlib.metadata.version

    def counted(name: str) -> str:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", counted)
    _client._user_agent.cache_clear()
    agents = {AirudderClient(app_key="k", app_secret="s").user_agent for _ in range(3)}
    assert calls == ["airudder-async"]
    assert len(agents) == 1
    assert agents.pop().startswith(f"airudder-async/{real('airudder-async')} Python/")
    assert AirudderClient(app_key="k", app_secret="s", user_agent="mine/1").user_agent == "mine/1"


async def test_every_request_carries_token_and_user_agent() -> None:
    """Calls after auth send `Authorization: Token <t>` and a User-Agent naming the library."""
    async with FakeAirudder(workflows=3) as fake, fake.client() as client:
        await client.list_workflows()
    auth, listing = fake.requests
    assert auth.path == AUTH_PATH
    assert "Authorization" not in auth.headers
    scheme, _, token = listing.headers["Authorization"].partition(" ")
    assert scheme == "Token"
    assert len(token) == 32
    assert listing.headers["User-Agent"].startswith("airudder-async/")


async def test_200_concurrent_first_calls_share_one_auth(fake: FakeAirudder) -> None:
    """200 concurrent first calls cause exactly one auth request."""
    fake.add_workflows(5)
    async with fake.client(limits=Limits(max_in_flight=16)) as client, anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(client.list_workflows)
    assert fake.hits(*AUTH) == 1
    assert fake.hits(*LIST) == 200


async def test_bad_credentials_raise_once_without_loop(fake: FakeAirudder) -> None:
    """Wrong credentials give one AuthenticationError per caller wave, never a loop of auth requests."""
    client = AirudderClient(app_key=fake.app_key, app_secret="wrong-secret-value", base_url=fake.url)
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await client.list_workflows()
        except AuthenticationError as exc:
            errors.append(exc)

    async with client, anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(call)
    assert len(errors) == 20
    assert fake.hits(*AUTH) == 1
    assert fake.hits(*LIST) == 0
    assert "APPKey/APPSecret" in str(errors[0])
    assert "wrong-secret-value" not in str(errors[0])


async def test_expired_token_mid_walk_refreshes_once() -> None:
    """A token that expires mid-walk is refreshed once and the walk loses nothing."""
    async with FakeAirudder(workflows=1000) as fake, fake.client() as client:
        walk = client.iter_workflows(page_size=100, prefetch=1)
        ids = []
        async for wf in walk:
            ids.append(wf.workflow_id)
            if len(ids) == 450:
                fake.advance(24 * 3600)  # every token is now past its 24 h
        assert client.stats.token_refreshes == 1
    assert ids == fake.workflow_ids()
    assert fake.hits(*AUTH) == 2


async def test_proactive_refresh_before_24h(fake: FakeAirudder) -> None:
    """The client renews its token before the 24 h lifetime ends, without waiting for a 401."""
    fake.add_workflows(2)
    now = [1000.0]
    async with fake.client() as client:
        assert client._loop is not None
        client._loop.auth._clock = lambda: now[0]
        await client.list_workflows()
        now[0] += 24 * 3600 - 60  # inside the renewal margin
        await client.list_workflows()
    assert fake.hits(*AUTH) == 2
    assert all(r.headers.get("Authorization") for r in fake.requests if r.path == INSTANCELIST_PATH)
    assert not [r for r in fake.requests if r.path == INSTANCELIST_PATH and r is None]


async def test_revoked_token_is_replayed_once_then_fails(fake: FakeAirudder) -> None:
    """A 401 on an authenticated call refreshes and replays once; a second 401 is an AuthenticationError."""
    fake.add_workflows(2)
    async with fake.client() as client:
        await client.list_workflows()
        fake.inject(Fault.revoke_token())
        await client.list_workflows()  # refreshed and replayed
        fake.inject(Fault.http_status(401), Fault.http_status(401), on=1)
        fake.inject(Fault.http_status(401), on=2)
        with pytest.raises(AuthenticationError):
            await client.list_workflows()
    assert fake.hits(*AUTH) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 201}, "size"),
        ({"size": 0}, "size"),
        ({"page": 0}, "page"),
        ({"start_time": datetime(2026, 1, 1)}, "naive"),
        ({"end_time": datetime(2026, 1, 1)}, "naive"),
        (
            {"start_time": datetime(2026, 1, 2, tzinfo=UTC), "end_time": datetime(2026, 1, 1, tzinfo=UTC)},
            "after",
        ),
    ],
)
async def test_list_bad_input_raises_before_sending(
    fake: FakeAirudder, kwargs: dict[str, object], message: str
) -> None:
    """Bad size, page or times raise ValueError and send nothing."""
    async with fake.client() as client:
        with pytest.raises(ValueError, match=message):
            await client.list_workflows(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values
    assert fake.requests == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"page_size": 0},
        {"page_size": 201},
        {"max_items": 0},
        {"prefetch": 0},
        {"prefetch": 65},
        {"start_time": datetime(2026, 1, 1)},
        {"start_time": datetime(2026, 1, 3, tzinfo=UTC), "end_time": datetime(2026, 1, 1, tzinfo=UTC)},
    ],
)
async def test_iter_bad_input_raises_before_sending(fake: FakeAirudder, kwargs: dict[str, object]) -> None:
    """iter_workflows() validates its arguments at call time, before any request."""
    async with fake.client() as client:
        with pytest.raises(ValueError):  # noqa: PT011 - several messages
            client.iter_workflows(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values
    assert fake.requests == []


async def test_time_filters_are_sent_in_documented_form(fake: FakeAirudder) -> None:
    """Filters go out as `YYYY-MM-DD HH:MM:SS+HH:MM` and select by creation time, bounds included."""
    fake.add_workflows(100)
    created = [datetime.fromisoformat(str(w["create_time"])) for w in fake.workflows]
    tz = timezone(timedelta(hours=7))
    since, until = created[60].astimezone(tz), created[20].astimezone(tz)
    async with fake.client() as client:
        got = [
            w.workflow_id async for w in client.iter_workflows(start_time=since, end_time=until, page_size=7)
        ]
    assert got == fake.workflow_ids()[20:61]
    query = fake.requests[-1].query
    assert query["start_time"] == since.strftime("%Y-%m-%d %H:%M:%S+07:00")
    assert query["end_time"] == until.strftime("%Y-%m-%d %H:%M:%S+07:00")


async def test_max_items_stops_early_without_extra_pages() -> None:
    """max_items ends the walk after that many items and requests no page beyond them."""
    async with FakeAirudder(workflows=1000) as fake, fake.client() as client:
        got = [w.workflow_id async for w in client.iter_workflows(page_size=50, max_items=120, prefetch=1)]
    assert got == fake.workflow_ids()[:120]
    assert fake.hits(*LIST) == 3


async def test_lying_count_ends_walk_and_reports_shortfall(caplog: pytest.LogCaptureFixture) -> None:
    """A count larger than the data ends the walk at the short page, without extra requests, and says so."""
    async with FakeAirudder(workflows=450) as fake, fake.client() as client:
        fake.count_offset = 1000
        walk = client.iter_workflows(page_size=100, prefetch=1)
        with caplog.at_level(logging.WARNING, logger="airudder_async"):
            ids = [w.workflow_id async for w in walk]
    assert ids == fake.workflow_ids()
    assert fake.hits(*LIST) == 5
    assert walk.shortfall == 1000
    assert walk.count == 1450
    assert "promised 1450" in caplog.text


async def test_lying_count_on_page_boundary_stops_at_empty_page() -> None:
    """When the data ends exactly on a page boundary, one empty page ends the walk."""
    async with FakeAirudder(workflows=400) as fake, fake.client() as client:
        fake.count_offset = 50
        walk = client.iter_workflows(page_size=100, prefetch=1)
        ids = [w.workflow_id async for w in walk]
    assert ids == fake.workflow_ids()
    assert fake.hits(*LIST) == 5
    assert walk.shortfall == 50


async def test_lying_count_with_prefetch_cancels_speculative_pages() -> None:
    """With prefetch the walk still yields each item once and stops requesting after the short page."""
    async with FakeAirudder(workflows=450) as fake, fake.client() as client:
        fake.count_offset = 10_000
        walk = client.iter_workflows(page_size=100, prefetch=4)
        ids = [w.workflow_id async for w in walk]
        sent = client.stats.requests
        # Wait for the page tasks (on the tasks, not the clock): any request they still had to send
        # would be sent and answered by then.
        if slots := [t for t in asyncio.all_tasks() if "_prefetch" in t.get_name()]:
            with anyio.fail_after(5):
                await asyncio.wait(slots)
        assert client.stats.requests == sent  # nothing new goes out once the short page is seen
    assert ids == fake.workflow_ids()
    assert walk.shortfall == 10_000
    assert 1 <= walk.extra_requests <= 4  # speculative pages cancelled unread
    assert fake.hits(*LIST) <= 5 + 4


async def test_count_smaller_than_data_follows_the_data() -> None:
    """A count smaller than what the server delivers does not cut the walk short."""
    async with FakeAirudder(workflows=450) as fake, fake.client() as client:
        fake.count_offset = -300
        ids = [w.workflow_id async for w in client.iter_workflows(page_size=100, prefetch=4)]
    assert ids == fake.workflow_ids()


async def test_empty_list(fake: FakeAirudder) -> None:
    """A walk over no workflows yields nothing after one request."""
    async with fake.client() as client:
        walk = client.iter_workflows()
        assert [w async for w in walk] == []
    assert fake.hits(*LIST) == 1
    assert walk.shortfall == 0


async def test_cursor_resumes_after_failure() -> None:
    """A failed walk raises a typed error whose cursor resumes to exactly the remaining items."""
    async with FakeAirudder(workflows=500) as fake, fake.client() as client:
        fake.inject(Fault.malformed_json(), on=3)
        got: list[str] = []
        with pytest.raises(DecodeError) as info:
            async for wf in client.iter_workflows(page_size=100, prefetch=1):
                got.append(wf.workflow_id)
        cursor = info.value.cursor
        assert cursor is not None
        assert cursor.page == 3
        async for wf in client.iter_workflows(cursor=cursor):
            got.append(wf.workflow_id)
    assert got == fake.workflow_ids()


async def test_cursor_mid_page_resume_and_json_round_trip() -> None:
    """A cursor taken mid-page survives JSON and resumes right after the last item yielded."""
    from airudder_async.models import Cursor

    async with FakeAirudder(workflows=300) as fake, fake.client() as client:
        walk = client.iter_workflows(page_size=100)
        got = []
        async for wf in walk:
            got.append(wf.workflow_id)
            if len(got) == 142:
                break
        saved = walk.cursor.to_json()
        await walk.aclose()
        resumed = Cursor.from_json(saved)
        assert (resumed.page, resumed.received) == (2, 142)
        got += [w.workflow_id async for w in client.iter_workflows(cursor=resumed)]
    assert got == fake.workflow_ids()


async def test_cursor_conflicts_with_window(fake: FakeAirudder) -> None:
    """Passing a cursor together with a time window is refused."""
    from airudder_async.models import Cursor

    async with fake.client() as client:
        with pytest.raises(ValueError, match="cursor"):
            client.iter_workflows(cursor=Cursor(page=2, page_size=10), start_time=datetime.now(UTC))


async def test_closed_and_unopened_clients_refuse_calls(fake: FakeAirudder) -> None:
    """Calling an unopened or closed client raises RuntimeError saying so; aclose() is idempotent."""
    client = fake.client()
    with pytest.raises(RuntimeError, match="async with"):
        await client.list_workflows()
    async with client:
        pass
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.list_workflows()
    with pytest.raises(RuntimeError, match="closed"):
        await client.__aenter__()


async def test_user_session_is_never_closed(fake: FakeAirudder) -> None:
    """A session passed in by the user stays open after the client closes."""
    fake.add_workflows(1)
    async with aiohttp.ClientSession() as session:
        async with fake.client(session=session) as client:
            await client.list_workflows()
        assert not session.closed


async def test_http_base_url_refused_unless_loopback() -> None:
    """Plain http is refused for a remote host and allowed for loopback."""
    with pytest.raises(ValueError, match="http"):
        AirudderClient(app_key="k", app_secret="s", base_url="http://api.airudder.com")
    for url in ("http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1", "https://api.airudder.com"):
        AirudderClient(app_key="k", app_secret="s", base_url=url)
    with pytest.raises(ValueError, match="http"):
        AirudderClient(app_key="k", app_secret="s", base_url="ftp://x")


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env() reads the three variables and names the missing ones."""
    env = {
        "AIRUDDER_APP_KEY": "key-1234567",
        "AIRUDDER_APP_SECRET": "s3cr3t-value",
        "AIRUDDER_BASE_URL": "http://127.0.0.1:9",
    }
    client = AirudderClient.from_env(env)
    assert client.base_url == "http://127.0.0.1:9"
    with pytest.raises(RuntimeError, match="AIRUDDER_APP_SECRET"):
        AirudderClient.from_env({"AIRUDDER_APP_KEY": "k"})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert AirudderClient.from_env().base_url == "http://127.0.0.1:9"


def test_repr_hides_secret() -> None:
    """The client's repr shows neither the secret nor the full key."""
    client = AirudderClient(app_key="my-app-key-123", app_secret="super-secret-xyz")
    text = repr(client)
    assert "super-secret-xyz" not in text
    assert "my-app-key-123" not in text


async def test_server_error_after_retries_is_typed(fake: FakeAirudder) -> None:
    """A 503 that persists raises ServerError after the configured attempts."""
    fake.add_workflows(1)
    async with fake.client(retry=RetryPolicy(attempts=3, backoff_initial=0)) as client:
        await client.list_workflows()
        fake.inject(Fault.http_status(503), on=[1, 2, 3])
        with pytest.raises(ServerError) as info:
            await client.list_workflows()
    assert info.value.status == 503
    assert fake.hits(*LIST) == 4
    assert client.stats.retries == {"503": 2}


async def test_connection_refused_is_transport_error() -> None:
    """Nothing listening gives a TransportError, not an aiohttp exception."""
    async with FakeAirudder() as fake:
        url = fake.url
    client = AirudderClient(
        app_key="k", app_secret="s", base_url=url, retry=RetryPolicy(attempts=2, backoff_initial=0)
    )
    async with client:
        with pytest.raises(TransportError) as info:
            await client.list_workflows()
    assert not isinstance(info.value, RequestTimeoutError)
    assert client.stats.retries == {"transport": 1}


async def test_slow_answer_times_out_then_retries(fake: FakeAirudder) -> None:
    """An answer slower than the timeout is a timeout, retried; a persistent one is RequestTimeoutError."""
    fake.add_workflows(3)
    async with fake.client(
        timeouts=Timeouts(total=0.2), retry=RetryPolicy(attempts=2, backoff_initial=0)
    ) as c:
        fake.inject(Fault.slow(0.5))
        page = await c.list_workflows()
        assert len(page.items) == 3
        fake.inject(Fault.slow(0.5), on=[1, 2])
        with pytest.raises(RequestTimeoutError) as info:
            await c.list_workflows()
    assert isinstance(info.value, TimeoutError)
    assert c.stats.retries == {"timeout": 2}


async def test_unknown_path_is_not_found(fake: FakeAirudder) -> None:
    """The generic call maps a 404 to NotFoundError."""
    async with fake.client() as client:
        with pytest.raises(NotFoundError):
            await client.request("GET", "/service/cloud/nothing-here")


async def test_stats_and_event_hook(fake: FakeAirudder) -> None:
    """The event hook sees request, response and retry events; stats count them."""
    fake.add_workflows(3)
    events = []
    async with fake.client(event_hook=events.append) as client:
        fake.inject(Fault.rate_limited(0))
        await client.list_workflows()
    kinds = [(e.kind, e.path, e.status) for e in events]
    assert kinds == [
        ("request", AUTH_PATH, None),
        ("response", AUTH_PATH, 200),
        ("request", INSTANCELIST_PATH, None),
        ("response", INSTANCELIST_PATH, 429),
        ("retry", INSTANCELIST_PATH, 429),
        ("request", INSTANCELIST_PATH, None),
        ("response", INSTANCELIST_PATH, 200),
    ]
    stats = client.stats
    assert (stats.requests, stats.responses, stats.rate_limited, stats.auth_requests) == (3, 3, 1, 1)
    assert stats.retries == {"429": 1}
    assert stats.total_retries == 1


async def test_event_hook_errors_are_logged_not_raised(
    fake: FakeAirudder, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing event hook never breaks a call."""
    fake.add_workflows(1)

    def hook(_event: object) -> None:
        raise RuntimeError("hook failed")

    async with fake.client(event_hook=hook) as client:
        page = await client.list_workflows()
    assert len(page.items) == 1
    assert "event_hook raised" in caplog.text


async def test_per_walk_retry_policy_overrides_the_client() -> None:
    """iter_workflows(retry=...) applies to each page request of that walk only."""
    async with FakeAirudder(workflows=300) as fake, fake.client() as client:
        fake.inject(Fault.http_status(503), on=2)
        with pytest.raises(ServerError) as info:
            _ = [
                w
                async for w in client.iter_workflows(page_size=100, prefetch=1, retry=RetryPolicy(attempts=1))
            ]
        assert info.value.cursor is not None
        assert info.value.cursor.page == 2
        fake.inject(Fault.http_status(503), on=2)
        ids = [w.workflow_id async for w in client.iter_workflows(page_size=100, prefetch=1)]
    assert ids == fake.workflow_ids()


async def test_client_opened_and_closed_in_different_tasks() -> None:
    """A client opened in one task can walk in others and be closed in a third, cancel scopes intact."""
    async with FakeAirudder(workflows=500) as fake:
        client = fake.client()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.__aenter__)
        with anyio.move_on_after(5):
            ids = [w.workflow_id async for w in client.iter_workflows(page_size=50)]
        results: list[int] = []

        async def walk() -> None:
            results.append(len([w async for w in client.iter_workflows(page_size=50, prefetch=4)]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(walk)
            tg.start_soon(walk)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.aclose)
    assert ids == fake.workflow_ids()
    assert results == [500, 500]


async def test_client_entered_inside_a_scope_that_ends_first() -> None:
    """Opening the client inside a cancel scope that closes before the client does is fine."""
    async with FakeAirudder(workflows=10) as fake:
        client = fake.client()
        with anyio.move_on_after(5):
            await client.__aenter__()
        try:
            page = await client.list_workflows()
        finally:
            await client.aclose()
    assert len(page.items) == 10


def test_from_env_explicit_base_url_wins() -> None:
    """An explicit base_url beats AIRUDDER_BASE_URL instead of clashing with it."""
    env = {"AIRUDDER_APP_KEY": "k", "AIRUDDER_APP_SECRET": "s", "AIRUDDER_BASE_URL": "http://127.0.0.1:9"}
    assert AirudderClient.from_env(env, base_url="http://127.0.0.1:10").base_url == "http://127.0.0.1:10"
    assert AirudderClient.from_env(env).base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "url",
    ["https://api.airudder.com?x=1", "https://api.airudder.com/#frag", "https://user:pw@api.airudder.com"],
)
def test_base_url_with_query_fragment_or_userinfo_is_refused(url: str) -> None:
    """A base URL with a query, a fragment or credentials in it is refused."""
    with pytest.raises(ValueError, match="base_url"):
        AirudderClient(app_key="k", app_secret="s", base_url=url)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.list_workflows(timeouts=5.0),
        lambda c: c.list_workflows(retry=3),
        lambda c: c.request("GET", "/x", idempotent="yes"),
        lambda c: c.request("GET", "/x", params={"a": None}),
        lambda c: c.request("GET", "/x", params={"a": True}),
    ],
)
async def test_wrong_override_types_raise_before_sending(fake: FakeAirudder, call: object) -> None:
    """Per-call overrides of the wrong type are a TypeError before any request, auth included."""
    async with fake.client() as client:
        with pytest.raises(TypeError):
            await call(client)  # type: ignore[operator]  # the lambdas are deliberately mistyped
    assert fake.requests == []


async def test_explicit_idempotent_false_beats_a_retry_unsafe_policy(fake: FakeAirudder) -> None:
    """idempotent=False is never retried, even under RetryPolicy(retry_unsafe=True); None follows it."""
    fake.add_workflows(1)
    policy = RetryPolicy(retry_unsafe=True, backoff_initial=0)
    async with fake.client(retry=policy) as client:
        await client.list_workflows()
        fake.inject(Fault.http_status(503), path=AUTH_PATH)
        with pytest.raises(ServerError):
            await client.request("POST", AUTH_PATH, json={}, idempotent=False)
        fake.inject(Fault.http_status(503), path=AUTH_PATH)
        data = await client.request(
            "POST", AUTH_PATH, json={"APPKey": fake.app_key, "APPSecret": fake.app_secret}
        )
    assert isinstance(data, dict)
    assert fake.hits(*AUTH) == 4


async def test_retry_after_on_503_is_honoured_and_shared(fake: FakeAirudder) -> None:
    """A 503 with Retry-After waits that long, and holds back the other tasks too."""
    fake.add_workflows(1)
    retrying = anyio.Event()

    def hook(event: RequestEvent) -> None:
        if event.kind == "retry":
            retrying.set()  # the 503 is in, the cool-down is set, the retry waits it out

    async with fake.client(event_hook=hook) as client:
        await client.list_workflows()
        fake.inject(Fault.http_status(503, retry_after=0.1))
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.list_workflows)
            await retrying.wait()
            tg.start_soon(client.list_workflows)  # arrives during the cool-down
        assert client.stats.cooldown_wait > 0
    refused, *late = [r.at for r in fake.requests if r.path == INSTANCELIST_PATH][1:]
    assert len(late) == 2
    assert min(late) >= refused + 0.1 - 0.01  # both the retry and the newcomer waited, by the server's clock


def _ok(data: object) -> dict[str, object]:
    return {"data": data, "status": "OK", "code": 200}


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ([1, 2], "data"),
        ({"lists": [], "count": "12"}, "data.count"),
        ({"lists": [], "count": -1}, "data.count"),
        ({"lists": {"a": 1}, "count": 1}, "data.lists"),
        ({"lists": [{"workflow_id": "x"}], "count": 1}, "data.lists[0]"),
    ],
)
async def test_answers_of_the_wrong_shape_are_decode_errors(
    fake: FakeAirudder, data: object, path: str
) -> None:
    """An OK envelope whose data does not fit is a DecodeError naming the field, and is not retried."""
    async with fake.client() as client:
        fake.inject(Fault.answer(_ok(data)))
        with pytest.raises(DecodeError) as info:
            await client.list_workflows()
    assert info.value.field_path is not None
    assert info.value.field_path.startswith(path)
    assert (info.value.method, info.value.path) == ("GET", INSTANCELIST_PATH)
    assert fake.hits(*LIST) == 1


async def test_missing_lists_means_an_empty_page(fake: FakeAirudder) -> None:
    """An OK answer without `lists` is an empty page rather than an error (a guess at the vendor)."""
    async with fake.client() as client:
        fake.inject(Fault.answer(_ok({"count": 0})))
        page = await client.list_workflows()
    assert (page.items, page.count) == ((), 0)


def test_constructor_validates_its_arguments() -> None:
    """Empty credentials and config objects of the wrong type are refused at construction."""
    with pytest.raises(ValueError, match="app_secret"):
        AirudderClient(app_key="k", app_secret="")
    with pytest.raises(TypeError, match="timeouts"):
        AirudderClient(app_key="k", app_secret="s", timeouts=5.0)  # type: ignore[arg-type]  # wrong type
    with pytest.raises(ValueError, match="total"):
        Timeouts(total=0)
    with pytest.raises(ValueError, match="backoff_initial"):
        RetryPolicy(backoff_initial=-1)
    assert AirudderClient(app_key="k", app_secret="s").stats.requests == 0


async def test_typed_calls_refuse_missing_arguments(fake: FakeAirudder) -> None:
    """Required times, fields and cursors are checked before sending."""
    from airudder_async.models import Cursor

    soon = datetime.now(UTC) + timedelta(days=1)
    async with fake.client() as client:
        with pytest.raises(ValueError, match="end_time"):
            await client.create_workflow(workflow_template_id=1, name="n", end_time=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="required"):
            await client.find_workflows(start_time=None, end_time=soon, case_id="c")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="fields"):
            await client.get_task_detail(fields={})
        with pytest.raises(TypeError, match="cursor"):
            client.iter_workflows(cursor={"page": 1})  # type: ignore[arg-type]  # not a Cursor
        with pytest.raises(TypeError, match="datetime"):
            await client.list_workflows(start_time="2026-01-01")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="size"):
            await client.list_workflows(size=2.0)  # type: ignore[arg-type]
    assert fake.requests == []
    assert Cursor(page=1, page_size=1).page == 1


async def test_walk_used_after_the_client_closed_says_so() -> None:
    """A walk resumed after its client closed raises RuntimeError naming the closed client."""
    async with FakeAirudder(workflows=300) as fake:
        async with fake.client() as client:
            walk = client.iter_workflows(page_size=100, prefetch=1)
            await walk.__anext__()
        walk._index = walk._limit  # the next item needs page 2
        with pytest.raises(RuntimeError, match="closed"):
            await walk.__anext__()
