"""
FakeAirudder itself: the vendor's paging rules, tokens on a controlled clock, errors and recording.
"""

from __future__ import annotations

import aiohttp
import pytest

from airudder_async.testing import AUTH_PATH, INSTANCELIST_PATH, FakeAirudder, Fault, make_workflows

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
