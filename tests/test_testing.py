"""
FakeAirudder itself: the vendor's paging rules, tokens on a controlled clock, errors and recording.
"""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from airudder_async import Limits
from airudder_async.testing import (
    APINOTICEINFO_PATH,
    AUTH_PATH,
    CREATEINSTANCE_PATH,
    DETAILINSTANCES_PATH,
    INSTANCELIST_PATH,
    TASKDETAIL_PATH,
    FakeAirudder,
    Fault,
    make_workflows,
)

pytestmark = pytest.mark.anyio


async def _token(session: aiohttp.ClientSession, fake: FakeAirudder) -> str:
    async with session.post(
        fake.url + AUTH_PATH, json={"APPKey": fake.app_key, "APPSecret": fake.app_secret}
    ) as r:
        body = await r.json()
    assert body["code"] == 200
    assert body["status"] == "OK"
    token: str = body["data"]["token"]
    return token


async def test_paging_defaults_and_limits() -> None:
    """size defaults to 20 and is capped at 200; page starts at 1; answers use the success envelope."""
    async with FakeAirudder(workflows=250) as fake, aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Token {await _token(s, fake)}"}
        async with s.get(fake.url + INSTANCELIST_PATH, headers=headers) as r:
            body = await r.json()
        assert (body["code"], body["status"], body["data"]["count"]) == (200, "OK", 250)
        assert [w["workflow_id"] for w in body["data"]["lists"]] == fake.workflow_ids()[:20]
        for query, status in [
            ({"size": "201"}, 400),
            ({"page": "0"}, 400),
            ({"size": "x"}, 400),
            ({"start_time": "yesterday"}, 400),
            ({"page": "99"}, 200),
        ]:
            async with s.get(fake.url + INSTANCELIST_PATH, headers=headers, params=query) as r:
                assert r.status == status, query
                if status == 200:
                    assert (await r.json())["data"]["lists"] == []


async def test_tokens_expire_on_the_fake_clock() -> None:
    """A token is refused once the fake clock passes its 24 h; a missing or wrong scheme is refused."""
    async with FakeAirudder(workflows=1) as fake, aiohttp.ClientSession() as s:
        token = await _token(s, fake)
        url = fake.url + INSTANCELIST_PATH
        for header, status in [(f"Token {token}", 200), (f"Bearer {token}", 401), ("", 401)]:
            async with s.get(url, headers={"Authorization": header}) as r:
                assert r.status == status
        fake.advance(24 * 3600)
        async with s.get(url, headers={"Authorization": f"Token {token}"}) as r:
            assert r.status == 401
        async with s.post(fake.url + AUTH_PATH, json={"APPKey": fake.app_key, "APPSecret": "x"}) as r:
            assert r.status == 401
        async with s.post(fake.url + AUTH_PATH, data=b"{") as r:
            assert r.status == 400


async def test_seeded_data_is_deterministic_and_varied() -> None:
    """Synthetic workflows repeat for a seed and include null times and several statuses."""
    assert make_workflows(50, seed=3) == make_workflows(50, seed=3)
    wfs = make_workflows(100)
    assert any(w["start_time"] is None for w in wfs)
    assert any(w["end_time"] is None for w in wfs)
    assert len({w["status"] for w in wfs}) >= 4
    times = [w["create_time"] for w in wfs]
    assert times == sorted(times, reverse=True)
    async with FakeAirudder(workflows=10) as fake:
        fake.add_workflows(5)
        fake.insert_head(2)
        ids = fake.workflow_ids()
        assert len(set(ids)) == 17
        created = [w["create_time"] for w in fake.workflows]
        assert created == sorted(created, reverse=True)


async def test_faults_by_schedule_and_recording() -> None:
    """Scheduled faults hit the chosen request only; every request is recorded and counted."""
    async with FakeAirudder(workflows=5) as fake, fake.client() as client:
        fake.inject(Fault.http_status(418), on=2)
        await client.list_workflows()
        with pytest.raises(Exception, match="418"):
            await client.list_workflows()
        await client.list_workflows()
    assert fake.hits("GET", INSTANCELIST_PATH) == 3
    assert fake.hits("POST", AUTH_PATH) == 1
    assert [r.path for r in fake.requests] == [AUTH_PATH] + [INSTANCELIST_PATH] * 3
    with pytest.raises(ValueError, match="rate"):
        fake.inject_random([Fault.drop()], rate=2)
    with pytest.raises(ValueError, match="on"):
        fake.inject(Fault.drop(), on=0)


async def test_client_needs_a_started_server() -> None:
    """fake.client() before the server starts is a clear RuntimeError."""
    with pytest.raises(RuntimeError, match="start"):
        FakeAirudder().client()


async def _raw(
    s: aiohttp.ClientSession, fake: FakeAirudder, path: str, body: bytes, token: str | None
) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    async with s.post(fake.url + path, data=body, headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("path", "body", "authorized", "status", "message"),
    [
        (AUTH_PATH, b'{"APPKey": "k"}', False, 400, "APPKey and APPSecret are required"),
        (AUTH_PATH, b"[]", False, 400, "APPKey and APPSecret are required"),
        (CREATEINSTANCE_PATH, b"{}", False, 401, "token is missing"),
        (CREATEINSTANCE_PATH, b"{", True, 400, "body is not JSON"),
        (CREATEINSTANCE_PATH, b"[1]", True, 400, "body must be a JSON object"),
        (CREATEINSTANCE_PATH, b'{"workflow_template_id": 1, "name": ""}', True, 400, "name is required"),
        (DETAILINSTANCES_PATH, b'{"start_time": "2026-01-01 00:00:00"}', True, 400, "end_time is required"),
        (
            DETAILINSTANCES_PATH,
            b'{"start_time": "yesterday", "end_time": "2026-01-01 00:00:00"}',
            True,
            400,
            "must look like",
        ),
        (APINOTICEINFO_PATH, b'{"workflow_id": "x", "node_id": "n"}', True, 400, "callee is required"),
        (TASKDETAIL_PATH, b"{}", True, 400, "workflow_id is required"),
        (TASKDETAIL_PATH, b'{"workflow_id": "no-such-id"}', True, 404, "no such workflow"),
    ],
)
async def test_workflow_endpoints_refuse_bad_requests(
    path: str, body: bytes, authorized: bool, status: int, message: str
) -> None:
    """Each POST endpoint answers a missing token, bad JSON or a missing field with the vendor's error."""
    async with FakeAirudder(workflows=2) as fake, aiohttp.ClientSession() as s:
        token = await _token(s, fake) if authorized else None
        got, answer = await _raw(s, fake, path, body, token)
    assert got == status
    assert answer["code"] == status
    assert answer["status"] == "ERROR"
    assert answer["data"] is None
    assert message in str(answer["message"])


async def test_time_filters_without_an_offset_are_utc() -> None:
    """A start_time/end_time without an offset means UTC, like the same time written with +00:00."""
    async with FakeAirudder(workflows=50) as fake, aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Token {await _token(s, fake)}"}
        newest = str(fake.workflows[0]["create_time"])  # e.g. 2026-01-01T00:00:00Z
        start = str(fake.workflows[9]["create_time"])
        bounds = {"start_time": start.replace("T", " ")[:-1], "end_time": newest.replace("T", " ")[:-1]}
        answers = []
        for suffix in ("", "+00:00"):
            query = {k: v + suffix for k, v in bounds.items()}
            async with s.get(fake.url + INSTANCELIST_PATH, headers=headers, params=query) as r:
                answers.append((await r.json())["data"])
    assert answers[0] == answers[1]
    assert [w["workflow_id"] for w in answers[0]["lists"]] == fake.workflow_ids()[:10]
    assert answers[0]["count"] == 10


async def test_rate_limited_without_retry_after() -> None:
    """Fault.rate_limited(None) answers 429 with no Retry-After header at all."""
    async with FakeAirudder(workflows=1) as fake, aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Token {await _token(s, fake)}"}
        fake.inject(Fault.rate_limited(None))
        async with s.get(fake.url + INSTANCELIST_PATH, headers=headers) as r:
            assert r.status == 429
            assert "Retry-After" not in r.headers
            assert (await r.json())["code"] == 429
        async with s.get(fake.url + INSTANCELIST_PATH, headers=headers) as r:
            assert r.status == 200  # the fault was for one request only


async def test_insert_head_on_an_empty_fake() -> None:
    """insert_head() on a fake with no workflows creates them, newest first, newer than the wall clock."""
    async with FakeAirudder() as fake:
        new = fake.insert_head(3)
        assert fake.workflows == new
        created = [str(w["create_time"]) for w in new]
        assert created == sorted(created, reverse=True)
        assert datetime.fromisoformat(created[-1]) > datetime.now(UTC)


async def test_aclose_is_idempotent() -> None:
    """aclose() twice stops the server once; a closed fake refuses connections."""
    fake = FakeAirudder()
    await fake.aclose()  # never started: nothing to do
    async with fake:
        url = fake.url
    await fake.aclose()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(url + INSTANCELIST_PATH)


async def test_requests_are_not_recorded_when_switched_off() -> None:
    """With record_requests off the server still answers and counts faults, but keeps no record."""
    async with FakeAirudder(workflows=3) as fake, fake.client() as client:
        fake.record_requests = False
        fake.inject(Fault.http_status(503), on=1)
        page = await client.list_workflows()
        assert len(page.items) == 3
        assert fake.requests == []
        assert client.stats.retries == {"503": 1}  # the fault hit the first request though unrecorded
        with pytest.raises(RuntimeError, match="record_requests"):
            await fake.wait_for_hits("GET", INSTANCELIST_PATH)


async def test_wait_for_hits_returns_when_requests_arrive() -> None:
    """wait_for_hits() returns at once when enough requests are in, and otherwise when the nth arrives."""
    # Fixed pacing: all three calls in flight at once (adaptive pacing's slow start would hold one).
    async with FakeAirudder(workflows=3) as fake, fake.client(limits=Limits(adaptive=False)) as client:
        await client.list_workflows()
        await fake.wait_for_hits("GET", INSTANCELIST_PATH, 1)  # already there
        gate = fake.gate(INSTANCELIST_PATH)
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client.list_workflows)
            await fake.wait_for_hits("GET", INSTANCELIST_PATH, 4)
            assert fake.hits("GET", INSTANCELIST_PATH) == 4  # received...
            assert client.stats.responses == 2  # ...but not answered: auth and the first list only
            gate.release()
        assert client.stats.responses == 5


async def test_gate_holds_requests_until_released() -> None:
    """A gate lets *after* requests through, holds the rest unanswered, then lets all through for good."""
    async with FakeAirudder(workflows=3) as fake, fake.client() as client:
        await client.list_workflows()  # auth is not gated: the gate is for instancelist only
        gate = fake.gate(INSTANCELIST_PATH, after=1)
        assert repr(gate) == "<Gate held=0 is_open=False>"
        await client.list_workflows()  # the one let through
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(client.list_workflows)
            await gate.wait_held(2)
            assert (gate.held, fake.in_flight, client.stats.responses) == (2, 2, 3)
            gate.release()
            gate.release()  # idempotent
        assert repr(gate) == "<Gate held=0 is_open=True>"
        await client.list_workflows()  # an open gate holds nothing
        assert client.stats.responses == 6
        with pytest.raises(RuntimeError, match="open"):
            await gate.wait_held(1)
        with pytest.raises(ValueError, match="after"):
            fake.gate(after=-1)


async def test_wait_held_fails_when_the_gate_opens_meanwhile() -> None:
    """A wait for held requests raises RuntimeError if the gate opens before they are all there."""
    async with FakeAirudder() as fake:
        gate = fake.gate()

        async def open_it() -> None:
            gate.release()

        async with anyio.create_task_group() as tg:
            tg.start_soon(open_it)
            with pytest.raises(RuntimeError, match="2 requests will never be held"):
                await gate.wait_held(2)


async def test_aclose_releases_held_requests() -> None:
    """Closing the fake lets held requests through, so shutdown never waits for a gate."""
    async with FakeAirudder(workflows=1) as fake, fake.client() as client:
        await client.list_workflows()
        gate = fake.gate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.list_workflows)
            await gate.wait_held(1)
            with anyio.fail_after(5):
                await fake.aclose()
        assert gate.is_open
        assert gate.held == 0
        assert client.stats.responses == 3  # the held request was answered before the server stopped


async def test_aclose_cuts_slow_answers_short() -> None:
    """Closing the fake answers a request held by Fault.slow() at once instead of waiting it out."""
    async with FakeAirudder(workflows=2) as fake, fake.client() as client:
        await client.list_workflows()
        fake.inject(Fault.slow(60))
        pages = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    pages.append(await client.list_workflows())

                tg.start_soon(call)
                await fake.wait_for_hits("GET", INSTANCELIST_PATH, 2)
                await fake.aclose()
        assert [len(p.items) for p in pages] == [2]


async def test_send_webhook_stops_retrying_once_accepted() -> None:
    """send_webhook() posts the JSON body, retries a 5xx, and stops at the first 2xx of each delivery."""
    bodies: list[object] = []

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response(status=500 if len(bodies) % 2 else 204)  # refuse every first attempt

    app = web.Application()
    app.router.add_post("/hook", receive)
    async with TestServer(app, host="127.0.0.1") as server:
        statuses = await FakeAirudder().send_webhook(  # needs no running fake
            str(server.make_url("/hook")), {"event": "x"}, attempts=5, repeat=2
        )
    assert statuses == [500, 204, 500, 204]
    assert bodies == [{"event": "x"}] * 4


async def test_send_webhook_retries_and_repeats() -> None:
    """send_webhook() retries a refused delivery *attempts* times, *interval* apart, for each *repeat*."""
    async with FakeAirudder() as receiver:  # no webhook route: every delivery is refused with 404
        statuses = await receiver.send_webhook(
            receiver.url + "/hook", {"event": "x"}, attempts=2, interval=0.01, repeat=2
        )
    assert statuses == [404, 404, 404, 404]
    sent = [r for r in receiver.requests if r.path == "/hook"]
    assert [(r.method, r.headers["User-Agent"]) for r in sent] == [("POST", "Airudder")] * 4
    assert sent[1].at - sent[0].at >= 0.01 - 0.001  # the retry waited *interval*
    assert sent[3].at - sent[2].at >= 0.01 - 0.001


async def test_send_webhook_reports_unreachable_receivers_as_zero() -> None:
    """A delivery that gets no answer at all (connection refused) is reported as status 0 and retried."""
    async with FakeAirudder() as gone:
        url = gone.url + "/hook"
    async with FakeAirudder() as fake:
        assert await fake.send_webhook(url, {"event": "x"}, attempts=3) == [0, 0, 0]
