"""
The typed workflow calls (createinstance, detailinstances, apinoticeinfo, taskdetail) and the generic call.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airudder_async import RetryPolicy
from airudder_async.errors import InvalidRequestError, NotFoundError, ServerError
from airudder_async.models import CreatedWorkflow, TaskDetail, WorkflowMatches
from airudder_async.testing import (
    APINOTICEINFO_PATH,
    CREATEINSTANCE_PATH,
    DETAILINSTANCES_PATH,
    INSTANCELIST_PATH,
    TASKDETAIL_PATH,
    FakeAirudder,
    Fault,
)

pytestmark = pytest.mark.anyio

SOON = datetime.now(UTC) + timedelta(days=2)


async def test_created_workflow_is_listed_and_found() -> None:
    """A workflow created on the fake appears first in iter_workflows and is found by detailinstances."""
    async with FakeAirudder(workflows=30) as fake, fake.client() as client:
        created = await client.create_workflow(
            workflow_template_id=7,
            name="renewals",
            end_time=SOON,
            workflow_template_name="tpl-renew",
            extra={"lists": [{"case_id": "case-9", "callee": "+8613711112222"}]},
        )
        assert isinstance(created, CreatedWorkflow)
        assert created.workflow_id
        assert created.data == {"workflow_id": created.workflow_id}
        (first,) = [w async for w in client.iter_workflows(max_items=1)]
        assert first.workflow_id == created.workflow_id
        assert first.template_name == "tpl-renew"
        now = datetime.now(UTC)
        window = {"start_time": now - timedelta(hours=1), "end_time": now + timedelta(hours=1)}
        by_case = await client.find_workflows(case_id="case-9", **window)
        by_callee = await client.find_workflows(callee="+8613711112222", **window)
        nobody = await client.find_workflows(callee="+8613700000000", **window)
        assert isinstance(by_case, WorkflowMatches)
        assert by_case.workflow_ids == by_callee.workflow_ids == (created.workflow_id,)
        assert nobody.workflow_ids == ()
    body = next(r for r in fake.requests if r.path == CREATEINSTANCE_PATH)
    assert body.method == "POST"


async def test_create_sends_documented_fields() -> None:
    """createinstance gets the documented field names, auto_finish 2 and the documented time form."""
    seen: list[object] = []
    async with FakeAirudder() as fake, fake.client() as client:
        original = fake.create_workflow

        def spy(fields: dict[str, object]) -> dict[str, object]:
            seen.append(dict(fields))
            return original(fields)

        fake.create_workflow = spy  # type: ignore[method-assign]  # test spy
        end = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
        await client.create_workflow(workflow_template_id=3, name="n", end_time=end, workflow_name="w")
    assert seen == [
        {
            "workflow_template_id": 3,
            "name": "n",
            "auto_finish": 2,
            "end_time": "2026-12-01 18:00:00+00:00",
            "workflow_name": "w",
        }
    ]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"workflow_template_id": "7"}, TypeError),
        ({"name": ""}, ValueError),
        ({"end_time": datetime(2026, 1, 1)}, ValueError),
        ({"auto_finish": "2"}, TypeError),
        ({"extra": {"name": "dup"}}, ValueError),
    ],
)
async def test_create_validates_before_sending(kwargs: dict[str, object], error: type[Exception]) -> None:
    """Bad createinstance fields raise before anything is sent."""
    args: dict[str, object] = {"workflow_template_id": 7, "name": "x", "end_time": SOON, **kwargs}
    async with FakeAirudder() as fake, fake.client() as client:
        with pytest.raises(error):
            await client.create_workflow(**args)  # type: ignore[arg-type]  # deliberately wrong values
    assert fake.requests == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"callee": "8613711112222"},
        {"callee": "+86 137"},
        {},
        {"case_id": "c", "start_time": datetime(2026, 1, 1)},
    ],
)
async def test_find_validates_before_sending(kwargs: dict[str, object]) -> None:
    """detailinstances needs E.164 callees, a case or callee, and aware times."""
    args: dict[str, object] = {"start_time": SOON - timedelta(days=1), "end_time": SOON, **kwargs}
    async with FakeAirudder() as fake, fake.client() as client:
        with pytest.raises(ValueError):  # noqa: PT011 - several messages
            await client.find_workflows(**args)  # type: ignore[arg-type]  # deliberately wrong values
    assert fake.requests == []


async def test_create_is_not_retried_unless_opted_in() -> None:
    """A 503 on createinstance is raised, not retried; with retry_unsafe it is retried."""
    async with FakeAirudder() as fake, fake.client() as client:
        fake.inject(Fault.http_status(503), path=CREATEINSTANCE_PATH)
        with pytest.raises(ServerError):
            await client.create_workflow(workflow_template_id=1, name="a", end_time=SOON)
        assert len(fake.workflows) == 0
        fake.inject(Fault.http_status(503), path=CREATEINSTANCE_PATH)
        await client.create_workflow(workflow_template_id=1, name="a", end_time=SOON, retry_unsafe=True)
    assert len(fake.workflows) == 1
    assert fake.hits("POST", CREATEINSTANCE_PATH) == 3


async def test_verify_api_notice_and_task_detail() -> None:
    """apinoticeinfo and taskdetail return their data; unknown workflows are NotFoundError."""
    async with FakeAirudder() as fake, fake.client() as client:
        wf = await client.create_workflow(
            workflow_template_id=1,
            name="a",
            end_time=SOON,
            extra={"case_id": "c-1", "callee": "+6281234567890"},
        )
        assert wf.workflow_id is not None
        answer = await client.verify_api_notice(
            workflow_id=wf.workflow_id, node_id="n-1", callee="+6281234567890", case_id="c-1"
        )
        assert isinstance(answer, dict)
        assert answer["pushed"] is True
        detail = await client.get_task_detail(fields={"workflow_id": wf.workflow_id})
        assert isinstance(detail, TaskDetail)
        assert (detail.workflow_id, detail.workflow_name, detail.case_id) == (wf.workflow_id, "a", "c-1")
        assert detail.records[0]["callee"] == "+6281234567890"
        with pytest.raises(NotFoundError):
            await client.verify_api_notice(workflow_id="nope", node_id="n", callee="+6281234567890")
        with pytest.raises(ValueError, match=r"E\.164"):
            await client.verify_api_notice(workflow_id="w", node_id="n", callee="12")
        with pytest.raises(InvalidRequestError):
            await client.get_task_detail(fields={"other": 1})
    assert fake.hits("POST", APINOTICEINFO_PATH) == 2


async def test_generic_call_reaches_any_path_with_auth_and_retries() -> None:
    """request() reaches a path with the token, retries a GET on 503, and types the errors."""
    async with FakeAirudder(workflows=5) as fake, fake.client() as client:
        fake.inject(Fault.http_status(503))
        data = await client.request("GET", INSTANCELIST_PATH, params={"page": 1, "size": 2})
        assert isinstance(data, dict)
        assert len(data["lists"]) == 2
        full = await client.request_full("GET", INSTANCELIST_PATH)
        assert full.status == 200
        assert full.envelope["code"] == 200
        assert full.headers["Content-Type"].startswith("application/json")
        with pytest.raises(NotFoundError) as info:
            await client.request("GET", "/service/cloud/workflow/templatelist")
        assert info.value.path == "/service/cloud/workflow/templatelist"
        with pytest.raises(ValueError, match="path"):
            await client.request("GET", "service/cloud/x")
        with pytest.raises(ValueError, match="method"):
            await client.request("GE T", "/x")
        stats = client.stats
    assert stats.retries == {"503": 1}
    listing = [r for r in fake.requests if r.path == INSTANCELIST_PATH]
    assert all(r.headers["Authorization"].startswith("Token ") for r in listing)
    assert fake.hits("POST", DETAILINSTANCES_PATH) == 0


async def test_retry_switches_of_the_typed_calls() -> None:
    """get_task_detail(idempotent=False) is not retried; a retry_unsafe policy retries create_workflow."""
    async with (
        FakeAirudder() as fake,
        fake.client(retry=RetryPolicy(retry_unsafe=True, backoff_initial=0)) as c,
    ):
        wf = await c.create_workflow(workflow_template_id=1, name="a", end_time=SOON)
        fake.inject(Fault.http_status(503), path=TASKDETAIL_PATH)
        with pytest.raises(ServerError):
            await c.get_task_detail(fields={"workflow_id": wf.workflow_id}, idempotent=False)
        fake.inject(Fault.http_status(503), path=CREATEINSTANCE_PATH)
        await c.create_workflow(workflow_template_id=1, name="b", end_time=SOON)
    assert fake.hits("POST", TASKDETAIL_PATH) == 1
    assert fake.hits("POST", CREATEINSTANCE_PATH) == 3
    assert len(fake.workflows) == 2
