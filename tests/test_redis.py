"""
airudder_async.redis against a real redis-server on loopback: the shared token, budget, cool-down and
dedupe, and what happens when Redis is stopped or frozen (no mocks, no fakeredis).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis

from airudder_async.coordination import account_id
from airudder_async.errors import AuthenticationError, CoordinationError
from airudder_async.models import Cursor
from airudder_async.redis import MAX_SHARED_TOKEN, MAX_SHARED_WAIT, RedisCoordination
from airudder_async.testing import AUTH_PATH, FakeAirudder
from tests.redis_support import RedisServer, _free_port

pytestmark = pytest.mark.anyio

LOGGER = "airudder_async"


@asynccontextmanager
async def coordinated(url: str, **options: object) -> AsyncIterator[RedisCoordination]:
    """A RedisCoordination on *url*, closed afterwards."""
    async with RedisCoordination(url=url, **options) as coordination:  # type: ignore[arg-type]  # options are typed by the constructor
        yield coordination


@asynccontextmanager
async def raw(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain redis client, to look at the keys."""
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def auth_token(fake: FakeAirudder) -> str:
    """One real token from the fake, as another process would have stored it."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(fake.url + AUTH_PATH, json={"APPKey": fake.app_key, "APPSecret": fake.app_secret}) as r,
    ):
        token: str = (await r.json())["data"]["token"]
        return token


class SlowReplies:
    """A TCP proxy in front of Redis that holds every reply back *delay* seconds while *delay* is set."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.delay = 0.0

    async def _pipe(self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, late: bool) -> None:
        try:
            async for chunk in source:
                if late and self.delay:
                    await anyio.sleep(self.delay)  # the reply is late; the command already ran
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the other side hung up
        finally:
            await sink.aclose()

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", self.port) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._pipe, client, server, False)
            tg.start_soon(self._pipe, server, client, True)


@asynccontextmanager
async def slow_replies(server: RedisServer) -> AsyncIterator[tuple[SlowReplies, str]]:
    """A SlowReplies proxy in front of *server*, and the redis URL that goes through it."""
    proxy = SlowReplies(server.port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy.handle)
        yield proxy, f"redis://127.0.0.1:{port}/0"
        tg.cancel_scope.cancel()


async def redis_now(client: aioredis.Redis) -> float:
    """Redis's own clock, in seconds."""
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


def test_missing_redis_package_names_the_extra() -> None:
    """Without redis-py, importing airudder_async.redis says which extra to install."""
    code = "import sys; sys.modules['redis'] = None; import airudder_async.redis"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "pip install 'airudder-async[redis]'" in done.stderr


async def test_arguments_are_checked_and_nothing_secret_is_shown() -> None:
    """Bad arguments raise ValueError; the repr shows neither the URL nor its password."""
    for options in (
        {},
        {"url": "redis://x", "client": object()},
        {"url": "redis://x", "on_unavailable": "maybe"},
        {"url": "redis://x", "timeout": 0},
        {"url": "redis://x", "lock_timeout": float("inf")},
        {"url": "redis://x", "prefix": "a b"},
        {"url": "redis://x", "prefix": ""},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each message is checked by its own name below
            RedisCoordination(**options)  # type: ignore[arg-type]  # the mistakes under test
    async with coordinated("redis://:hunter2@127.0.0.1:1/0") as coordination:
        with pytest.raises(ValueError, match="namespace"):
            coordination.dedupe_store(namespace="{x}")
        shown = " ".join(
            repr(x)
            for x in (
                coordination,
                coordination.rate_budget(app_key="app-key-1", rate=1, burst=1),
                coordination.token_store(app_key="app-key-1"),
                coordination.dedupe_store(),
            )
        )
    assert "hunter2" not in shown
    assert "app-key-1" not in shown
    assert "prefix='airudder'" in shown


async def test_budget_spaces_requests_across_connections(redis_server: RedisServer) -> None:
    """Two connections sharing a 50/s budget wait for their turns, with the burst let through at once."""
    async with coordinated(redis_server.url) as a, coordinated(redis_server.url) as b:
        one = a.rate_budget(app_key="k", rate=50, burst=3)
        two = b.rate_budget(app_key="k", rate=50, burst=3)
        started = anyio.current_time()
        assert [await one.acquire(), await two.acquire(), await one.acquire()] == [0.0, 0.0, 0.0]
        waits = [await budget.acquire() for budget in (two, one, two, one)]
        elapsed = anyio.current_time() - started
    assert all(w > 0 for w in waits)
    # 7 requests at 50/s with a burst of 3: the 7th may go 4 intervals after the first.
    assert elapsed >= 4 * 0.02 - 0.005
    async with raw(redis_server) as client:
        assert await client.keys("*") == [f"airudder:{{{account_id('k')}}}:tat"]


async def test_cool_down_is_shared_and_never_shortened(redis_server: RedisServer) -> None:
    """A cool-down set through one connection holds another; a later, smaller one does not shorten it."""
    async with (
        raw(redis_server) as client,
        coordinated(redis_server.url, prefix="p") as a,
        coordinated(redis_server.url, prefix="p") as b,
    ):
        await a.rate_budget(app_key="k", rate=None, burst=1).cool_down(0.3)
        key = f"p:{{{account_id('k')}}}:cooldown"
        ends = await client.get(key)
        await b.rate_budget(app_key="k", rate=None, burst=1).cool_down(0.05)
        assert await client.get(key) == ends
        waited = await b.rate_budget(app_key="k", rate=None, burst=1).acquire()
    assert 0.2 < waited <= 0.31  # Redis and the event loop keep separate clocks: allow their drift


async def test_a_request_waiting_its_turn_also_waits_a_later_cool_down(redis_server: RedisServer) -> None:
    """A request already waiting for its budget slot looks again and waits out a cool-down set meanwhile."""
    async with coordinated(redis_server.url) as coordination:
        budget = coordination.rate_budget(app_key="k", rate=5, burst=1)
        await budget.acquire()
        waited: list[float] = []

        async def second() -> None:
            waited.append(await budget.acquire())  # its slot is 0.2 s away

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            await budget.cool_down(0.4)
    assert waited[0] >= 0.35


async def test_clients_share_one_token_and_one_refresh(redis_server: RedisServer) -> None:
    """Clients on two connections make one auth request, and one more when the token is revoked."""
    async with (
        FakeAirudder(workflows=3) as fake,
        coordinated(redis_server.url) as one,
        coordinated(redis_server.url) as two,
        fake.client(coordination=one) as a,
        fake.client(coordination=two) as b,
    ):
        async with anyio.create_task_group() as tg:
            for client in (a, b, a, b):
                tg.start_soon(client.list_workflows)
        assert fake.hits("POST", AUTH_PATH) == 1
        fake.revoke_tokens()
        async with anyio.create_task_group() as tg:
            for client in (a, b, a, b):
                tg.start_soon(client.list_workflows)
        assert fake.hits("POST", AUTH_PATH) == 2
        assert a.stats.auth_requests + b.stats.auth_requests == 2
    async with raw(redis_server) as client:
        assert await client.keys("*token*") == [f"airudder:{{{account_id(fake.app_key)}}}:token"]


async def test_a_crashed_holders_lock_expires(redis_server: RedisServer) -> None:
    """A lock left by a crashed process blocks the fetch only until it expires."""
    async with (
        raw(redis_server) as client,
        FakeAirudder(workflows=1) as fake,
        coordinated(redis_server.url) as coordination,
    ):
        await client.set(f"airudder:{{{account_id(fake.app_key)}}}:token-lock", "dead", px=300)
        async with fake.client(coordination=coordination) as api:
            started = anyio.current_time()
            await api.list_workflows()
            assert anyio.current_time() - started >= 0.25
        assert fake.hits("POST", AUTH_PATH) == 1
        assert await client.keys("*lock*") == []  # released by its owner after the fetch


async def test_obtain_uses_a_token_stored_by_another_process(redis_server: RedisServer) -> None:
    """obtain() returns a token already stored, with the lock free or held elsewhere, without fetching."""
    async with (
        raw(redis_server) as client,
        FakeAirudder() as fake,
        coordinated(redis_server.url) as coordination,
    ):
        token = await auth_token(fake)
        keys = f"airudder:{{{account_id(fake.app_key)}}}"
        await client.set(f"{keys}:token", token, px=60_000)
        store = coordination.token_store(app_key=fake.app_key)

        async def never() -> str:
            raise AssertionError("fetched")

        found, left = await store.obtain(never, lifetime=100)
        assert found == token
        assert 59 < left <= 60
        assert await client.exists(f"{keys}:token-lock") == 0
        await client.set(f"{keys}:token-lock", "someone", px=60_000)
        assert (await store.obtain(never, lifetime=100))[0] == token
        await store.invalidate("an-older-token")
        assert await client.get(f"{keys}:token") == token
        await store.invalidate(token)
        assert await client.get(f"{keys}:token") is None


async def test_refused_credentials_release_the_lock(redis_server: RedisServer) -> None:
    """A fetch refused for bad credentials raises AuthenticationError and leaves no lock behind."""
    async with (
        raw(redis_server) as client,
        FakeAirudder() as fake,
        coordinated(redis_server.url) as coordination,
    ):
        from airudder_async import AirudderClient

        api = AirudderClient(
            app_key=fake.app_key, app_secret="wrong", base_url=fake.url, coordination=coordination
        )
        async with api:
            with pytest.raises(AuthenticationError):
                await api.list_workflows()
        assert await client.keys("*") == []


async def test_your_own_client_with_decoded_responses(redis_server: RedisServer) -> None:
    """A redis client you pass is used as is (text replies included) and stays open afterwards."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with FakeAirudder(workflows=2) as fake:
        coordination = RedisCoordination(client=client)
        async with coordination, fake.client(coordination=coordination) as a:
            await a.list_workflows()
        async with coordination, fake.client(coordination=coordination) as b:
            await b.list_workflows()  # the token stored by a
        assert fake.hits("POST", AUTH_PATH) == 1
    assert await client.ping()
    await client.aclose()


async def test_dedupe_with_set_nx(redis_server: RedisServer) -> None:
    """A key is new once; forget() makes it new again; an infinite ttl stores it without expiry."""
    async with raw(redis_server) as client, coordinated(redis_server.url) as coordination:
        store = coordination.dedupe_store(namespace="hooks")
        assert await store.first_time(b"\x01\x02", 60) is True
        assert await store.first_time(b"\x01\x02", 60) is False
        assert 0 < await client.pttl("airudder:hooks:0102") <= 60_000
        await store.forget(b"\x01\x02")
        assert await store.first_time(b"\x01\x02", float("inf")) is True
        assert await client.pttl("airudder:hooks:0102") == -1


# ---------------------------------------------------------------------------- Redis unavailable


def _dead_url(password: str = "") -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{_free_port()}/0"


async def test_fail_closed_raises_coordination_error_and_sends_nothing() -> None:
    """With on_unavailable="fail", every shared operation raises CoordinationError, without secrets."""
    async with coordinated(_dead_url("pa55word"), timeout=0.5) as coordination:
        budget = coordination.rate_budget(app_key="k", rate=10, burst=1)
        store = coordination.token_store(app_key="k")
        dedupe = coordination.dedupe_store()

        async def fetch() -> str:
            raise AssertionError("fetched")

        operations = [
            budget.acquire(),
            budget.cool_down(1),
            store.get(),
            store.obtain(fetch, lifetime=10),
            store.invalidate("t"),
            dedupe.first_time(b"k", 10),
        ]
        for operation in operations:
            with pytest.raises(CoordinationError) as caught:
                await operation
            assert "pa55word" not in str(caught.value)
            assert caught.value.__context__ is None
            assert "ConnectionError" in str(caught.value)
        await dedupe.forget(b"k")  # best effort: never raises
        async with FakeAirudder(workflows=5) as fake, fake.client(coordination=coordination) as client:
            with pytest.raises(CoordinationError) as caught:
                async for _ in client.iter_workflows():
                    pass
            assert fake.requests == []
            assert caught.value.cursor is not None
            assert caught.value.operation == "token"


async def test_local_fallback_for_every_operation(caplog: pytest.LogCaptureFixture) -> None:
    """With on_unavailable="local", each operation falls back to this process, with one warning per outage."""
    caplog.set_level(logging.WARNING, LOGGER)

    async def fetch() -> str:
        return "local-token"

    for name in ("acquire", "cool_down", "get", "obtain", "invalidate", "first_time"):
        # A fresh outage per operation, so each one meets the failure itself, then the fallback window.
        async with coordinated(_dead_url(), timeout=0.5, on_unavailable="local", recheck=60) as c:
            budget = c.rate_budget(app_key="k", rate=None, burst=1)
            store = c.token_store(app_key="k")
            dedupe = c.dedupe_store()
            for _ in range(2):
                if name == "acquire":
                    assert await budget.acquire() >= 0
                elif name == "cool_down":
                    await budget.cool_down(0.01)
                elif name == "get":
                    assert await store.get() is None
                elif name == "obtain":
                    assert (await store.obtain(fetch, lifetime=10))[0] == "local-token"
                elif name == "invalidate":
                    await store.invalidate("x")
                else:
                    assert await dedupe.first_time(b"k", 10) is not None
            await dedupe.forget(b"k")
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 6
    assert all("this process's own" in w for w in warnings)


async def test_redis_stopped_mid_walk_fails_closed_and_resumes(redis_server: RedisServer) -> None:
    """Redis stopped during a walk ends it with CoordinationError at once; its cursor resumes the rest."""
    async with FakeAirudder(workflows=200) as fake:
        coordination = RedisCoordination(url=redis_server.url, timeout=1.0)
        got: list[str] = []
        async with coordination, fake.client(coordination=coordination) as client:
            with pytest.raises(CoordinationError) as caught:
                async for wf in client.iter_workflows(page_size=20, prefetch=1):
                    got.append(wf.workflow_id)
                    if len(got) == 60:  # three pages in; the fourth is requested after this item
                        redis_server.stop()
                        started = anyio.current_time()
            assert anyio.current_time() - started < 1.0
        cursor = caught.value.cursor
        assert isinstance(cursor, Cursor)
        async with fake.client() as plain:
            rest = [wf.workflow_id async for wf in plain.iter_workflows(cursor=cursor)]
    assert got + rest == fake.workflow_ids()


async def test_frozen_redis_fails_within_the_timeout(redis_server: RedisServer) -> None:
    """A Redis that stops answering (SIGSTOP) fails a call after the configured timeout, not later."""
    async with (
        FakeAirudder(workflows=10) as fake,
        coordinated(redis_server.url, timeout=0.5) as coordination,
        fake.client(coordination=coordination) as client,
    ):
        await client.list_workflows()
        redis_server.pause()
        started = anyio.current_time()
        try:
            with pytest.raises(CoordinationError, match=r"within 0\.5 s"):
                await client.list_workflows()
        finally:
            redis_server.resume()
        elapsed = anyio.current_time() - started
    assert 0.45 <= elapsed < 1.2


async def test_redis_stopped_mid_walk_falls_back_locally(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With on_unavailable="local", a walk outlives Redis with one warning; Redis back is logged too."""
    caplog.set_level(logging.WARNING, LOGGER)
    async with FakeAirudder(workflows=200) as fake:
        coordination = RedisCoordination(url=redis_server.url, timeout=0.5, on_unavailable="local")
        got: list[str] = []
        async with coordination, fake.client(coordination=coordination) as client:
            async for wf in client.iter_workflows(page_size=20, prefetch=1):
                got.append(wf.workflow_id)
                if len(got) == 60:  # three pages in; the fourth is requested after this item
                    redis_server.stop()
    assert got == fake.workflow_ids()
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert "rate budget" in warnings[0]


async def test_redis_back_after_a_freeze_is_shared_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """After the fallback window, the next call reaches Redis again and says so."""
    caplog.set_level(logging.WARNING, LOGGER)
    async with coordinated(redis_server.url, timeout=0.3, on_unavailable="local", recheck=1e-6) as c:
        budget = c.rate_budget(app_key="k", rate=None, burst=1)
        redis_server.pause()
        try:
            await budget.acquire()  # times out, falls back
        finally:
            redis_server.resume()
        await budget.acquire()
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "no answer in time" in messages[0] or "TimeoutError" in messages[0]
    assert messages[-1] == "Redis is reachable again: rate budget is shared again"


async def test_a_token_fetched_while_redis_goes_down_is_still_used(redis_server: RedisServer) -> None:
    """Redis lost during the auth call: with "local" the token fetched is used; the lock just expires."""
    async with coordinated(redis_server.url, timeout=0.5, on_unavailable="local") as coordination:
        store = coordination.token_store(app_key="k")

        async def fetch() -> str:
            redis_server.stop()
            return "fresh"

        assert await store.obtain(fetch, lifetime=10) == ("fresh", 10)


async def test_two_receiver_replicas_deliver_an_event_once(redis_server: RedisServer) -> None:
    """The same event delivered 5 times across 2 replicas (own Redis connections): 1 callback."""
    from airudder_async.webhooks import WebhookEvent, webhook_app
    from tests.support import serve

    delivered: list[WebhookEvent] = []

    async def on_event(event: WebhookEvent) -> None:
        delivered.append(event)

    event = {"workflow_id": "wf-1", "case_id": "c-1", "status": "finished", "actions": []}
    async with (
        FakeAirudder() as fake,
        coordinated(redis_server.url) as one,
        coordinated(redis_server.url) as two,
        serve(webhook_app(on_event, dedupe=one.dedupe_store())) as a,
        serve(webhook_app(on_event, dedupe=two.dedupe_store())) as b,
    ):
        statuses = []
        for url in (a, b, a, b, a):  # AIRUDDER's retries, landing on either replica
            statuses += await fake.send_webhook(url + "/airudder/webhook", event)
        async with anyio.create_task_group() as tg:  # and 5 at once, racing each other
            for url in (a, b, a, b, a):
                tg.start_soon(fake.send_webhook, url + "/airudder/webhook", {**event, "case_id": "c-2"})
    assert statuses == [200] * 5
    assert sorted(e.raw["case_id"] for e in delivered) == ["c-1", "c-2"]


# ------------------------------------------------------------------------ hostile data and replies


async def test_a_far_future_cool_down_or_budget_is_reset_not_waited(redis_server: RedisServer) -> None:
    """
    A cool-down or budget slot more than MAX_SHARED_WAIT ahead (a Redis clock stepped back, a bogus
    writer) or not a number is deleted or reset, not waited for; cool_down() is clamped to MAX_SHARED_WAIT.
    """
    keys = f"airudder:{{{account_id('k')}}}"
    async with raw(redis_server) as client, coordinated(redis_server.url) as coordination:
        budget = coordination.rate_budget(app_key="k", rate=40, burst=1)
        for value in (1e9, float("inf"), "nan", "not a number"):
            far = value if isinstance(value, str) else await redis_now(client) + value
            await client.set(f"{keys}:cooldown", str(far))
            await client.set(f"{keys}:tat", str(far))
            with anyio.fail_after(5):
                assert await budget.acquire() < 1
            assert await client.exists(f"{keys}:cooldown") == 0
            assert float(await client.get(f"{keys}:tat")) < await redis_now(client) + 1
            assert 0 < await client.pttl(f"{keys}:tat") <= 2000
        # Set while a request waits its turn: the look at the cool-down after the wait ignores it too.
        slow = coordination.rate_budget(app_key="slow", rate=5, burst=1)
        await slow.acquire()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow.acquire)  # its slot is 0.2 s away
                await anyio.wait_all_tasks_blocked()
                far = await redis_now(client) + 1e9
                await client.set(f"airudder:{{{account_id('slow')}}}:cooldown", str(far))
        assert await client.exists(f"airudder:{{{account_id('slow')}}}:cooldown") == 0
        # A corrupt cool-down is replaced by a new one; a huge cool-down is clamped.
        await client.set(f"{keys}:cooldown", str(await redis_now(client) + 1e9))
        await budget.cool_down(float("inf"))
        left = float(await client.get(f"{keys}:cooldown")) - await redis_now(client)
        assert MAX_SHARED_WAIT - 5 < left <= MAX_SHARED_WAIT
        assert await client.pttl(f"{keys}:cooldown") <= (MAX_SHARED_WAIT + 1) * 1000
        await budget.cool_down(float("nan"))  # no cool-down at all; the one running stays
        assert float(await client.get(f"{keys}:cooldown")) - await redis_now(client) > MAX_SHARED_WAIT - 5


async def test_budget_replies_are_checked(redis_server: RedisServer) -> None:
    """
    A budget reply that is no wait of at most MAX_SHARED_WAIT is a CoordinationError saying so (the value
    not shown, nothing chained); a script error is told apart from an unreachable Redis.
    """
    async with coordinated(redis_server.url) as coordination:
        budget = coordination.rate_budget(app_key="k", rate=10, burst=1)
        backend = coordination._backend
        for script in (
            "return 'inf'",
            "return '-inf'",
            "return '1e9'",
            "return 'nan'",
            "return 'abc'",
            "return 5",
            "return {'1'}",
            "return string.rep('1', 100)",
        ):
            backend.acquire = backend.client.register_script(script)
            with anyio.fail_after(5), pytest.raises(CoordinationError) as caught:
                await budget.acquire()
            assert str(caught.value) == "Redis's reply for the rate budget was not a wait of at most 900 s"
            assert caught.value.__context__ is None
            assert caught.value.__cause__ is None
        backend.acquire = backend.client.register_script("return redis.error_reply('secret detail')")
        with pytest.raises(CoordinationError) as caught:
            await budget.acquire()
        assert str(caught.value) == "Redis answered the rate budget with an error (ResponseError)"
        assert caught.value.__context__ is None


async def test_a_bad_stored_token_is_deleted_and_a_fresh_one_fetched(redis_server: RedisServer) -> None:
    """
    A stored token with CR/LF, invalid UTF-8, a space, nothing at all, too many bytes or the wrong type
    is deleted and treated as absent: the client fetches a fresh one and works.
    """
    async with (
        raw(redis_server) as client,
        FakeAirudder(workflows=1) as fake,
        coordinated(redis_server.url) as coordination,
    ):
        key = f"airudder:{{{account_id(fake.app_key)}}}:token"
        store = coordination.token_store(app_key=fake.app_key)
        binary = aioredis.Redis.from_url(redis_server.url)
        try:
            for value in (b"abc\r\nX: 1", b"\xff\xfe tok", b"two words", b"", b"A" * (MAX_SHARED_TOKEN + 1)):
                await binary.set(key, value, px=3_600_000)
                assert await store.get() is None
                assert await client.exists(key) == 0
        finally:
            await binary.aclose()
        await client.rpush(key, "a-list")
        assert await store.get() is None
        assert await client.exists(key) == 0
        await client.set(key, "A" * MAX_SHARED_TOKEN, px=60_000)  # at the bound: a token
        assert (await store.get() or ("", 0.0))[0] == "A" * MAX_SHARED_TOKEN
        await client.set(key, "abc\r\nX: 1", px=3_600_000)
        async with fake.client(coordination=coordination) as api:
            await api.list_workflows()
        assert fake.hits("POST", AUTH_PATH) == 1
        assert "\r" not in await client.get(key)


async def test_token_replies_are_checked(redis_server: RedisServer) -> None:
    """A token reply of the wrong shape or type is a CoordinationError saying so, never showing it."""
    async with coordinated(redis_server.url) as coordination:
        store = coordination.token_store(app_key="k")
        backend = coordination._backend
        for script, problem in (
            ("return 'secret-token'", "not a pair of a token and its time to live"),
            ("return {'secret-token', 1, 1}", "not a pair of a token and its time to live"),
            ("return {'secret token', 1000}", "not a token (printable ASCII, at most 4096 bytes)"),
            ("return {7, 1000}", "not a token (printable ASCII, at most 4096 bytes)"),
            ("return {'secret-token', 'x'}", "a time to live that is not an integer"),
        ):
            backend.get_token = backend.client.register_script(script)
            with pytest.raises(CoordinationError) as caught:
                await store.get()
            assert str(caught.value) == f"Redis's reply for the token was {problem}"
            assert "secret" not in repr(caught.value)
            assert caught.value.__context__ is None


async def test_the_token_lock_is_released_when_its_reply_is_late(redis_server: RedisServer) -> None:
    """
    The lock's SET NX lands but its reply is late: whether the caller gives up (cancelled) or the call
    times out (CoordinationError), the lock is released, not left for lock_timeout.
    """

    async def fetch() -> str:
        raise AssertionError("fetched")

    lock = f"airudder:{{{account_id('k')}}}:token-lock"
    async with raw(redis_server) as client, slow_replies(redis_server) as (proxy, url):
        async with coordinated(url, timeout=2) as coordination:
            store = coordination.token_store(app_key="k")
            await store.invalidate("load the scripts")
            proxy.delay = 0.5
            with anyio.move_on_after(0.2) as scope:
                await store.obtain(fetch, lifetime=60)
            assert scope.cancelled_caught
            assert await client.exists(lock) == 0
        proxy.delay = 0
        async with coordinated(url, timeout=0.3) as coordination:
            store = coordination.token_store(app_key="k")
            await store.invalidate("load the scripts")
            proxy.delay = 0.6
            with pytest.raises(CoordinationError):
                await store.obtain(fetch, lifetime=60)
            assert await client.exists(lock) == 0


async def test_a_webhook_whose_dedupe_reply_is_late_is_delivered_on_retry(redis_server: RedisServer) -> None:
    """
    The dedupe SET NX lands but its reply comes after the timeout: the receiver answers 503 and forgets
    the key, so AIRUDDER's retry is delivered instead of being called a duplicate.
    """
    from airudder_async.webhooks import WebhookEvent, webhook_app
    from tests.support import serve

    delivered: list[str] = []
    arrived = anyio.Event()

    async def on_event(event: WebhookEvent) -> None:
        delivered.append(str(event.raw["case_id"]))
        if len(delivered) == 2:
            arrived.set()

    event = {"workflow_id": "wf-1", "case_id": "c-1", "status": "finished", "actions": []}
    async with (
        raw(redis_server) as client,
        slow_replies(redis_server) as (proxy, url),
        FakeAirudder() as fake,
        coordinated(url, timeout=0.3) as coordination,
        serve(webhook_app(on_event, dedupe=coordination.dedupe_store())) as receiver,
    ):
        hook = receiver + "/airudder/webhook"
        assert await fake.send_webhook(hook, {**event, "case_id": "warm-up"}, attempts=1) == [200]
        proxy.delay = 0.6  # the connection is open: the SET NX reaches Redis, its reply is late
        assert await fake.send_webhook(hook, event, attempts=1) == [503]
        proxy.delay = 0
        assert len(await client.keys("airudder:webhooks:*")) == 1  # the warm-up's only: c-1's is forgotten
        assert await fake.send_webhook(hook, event, attempts=1) == [200]
        with anyio.fail_after(5):
            await arrived.wait()
    assert delivered == ["warm-up", "c-1"]
