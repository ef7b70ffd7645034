"""
Example calls of the public API: type-checked by mypy in CI, never executed.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from airudder_async import DEFAULT_RETRY, AirudderClient, Limits, RetryPolicy, Timeouts, WorkflowIterator
from airudder_async.errors import AirudderError, RateLimitedError
from airudder_async.models import ClientStats, Cursor, Page, RequestEvent, Workflow, WorkflowStatus
from airudder_async.testing import FakeAirudder, Fault


async def walk() -> list[str]:
    def hook(event: RequestEvent) -> None:
        print(event.kind, event.path)  # noqa: T201 - example

    client = AirudderClient(
        app_key="k",
        app_secret="s",
        limits=Limits(max_in_flight=4, requests_per_second=10.0),
        retry=attrs.evolve(DEFAULT_RETRY, attempts=8),
        timeouts=Timeouts(total=30.0),
        event_hook=hook,
    )
    async with client:
        page: Page[Workflow] = await client.list_workflows(page=1, size=50)
        first: Workflow = page.items[0]
        done = first.status == WorkflowStatus.FINISHED
        walk: WorkflowIterator = client.iter_workflows(
            start_time=datetime(2026, 1, 1, tzinfo=UTC), prefetch=4
        )
        ids = [wf.workflow_id async for wf in walk]
        cursor: Cursor = walk.cursor
        resumed = client.iter_workflows(cursor=Cursor.from_json(cursor.to_json()))
        async with resumed:
            async for wf in resumed:
                ids.append(wf.workflow_id)
        try:
            data: object = await client.request(
                "GET", "/service/cloud/workflow/templatelist", retry=RetryPolicy()
            )
        except RateLimitedError as exc:
            wait: float | None = exc.retry_after
            del wait
        except AirudderError as exc:
            resume_at: Cursor | None = exc.cursor
            del resume_at
        else:
            del data
        stats: ClientStats = client.stats
        del stats, done
    return ids


async def fake() -> None:
    async with FakeAirudder(workflows=10) as server, server.client() as client:
        server.inject(Fault.http_status(503), on=2)
        server.inject_random([Fault.drop()], rate=0.1, seed=1)
        _ = [wf async for wf in client.iter_workflows()]


async def batches_and_webhooks() -> None:
    from collections.abc import Mapping

    from aiohttp import web

    from airudder_async import PageBatches
    from airudder_async.testing import FAKE_RETRY
    from airudder_async.webhooks import (
        SIGNATURE_HEADER,
        StatusChangeEvent,
        WebhookEvent,
        WebhookKind,
        parse_webhook,
        webhook_app,
    )

    async with FakeAirudder(workflows=10) as server, server.client(retry=FAKE_RETRY) as client:
        walk = client.iter_workflows(page_size=5)
        pages: PageBatches = walk.by_page()
        async for batch in pages:
            first: Workflow = batch[0]
            del first

    async def on_event(event: WebhookEvent) -> None:
        if isinstance(event, StatusChangeEvent):
            print(event.workflow_id, event.status)  # noqa: T201 - example

    def verify(headers: Mapping[str, str], body: bytes) -> bool:
        return bool(headers.get(SIGNATURE_HEADER)) and bool(body)

    app = web.Application()
    app.add_subapp("/hooks", webhook_app(on_event, kind=WebhookKind.STATUS_CHANGE, verify_signature=verify))
    event = parse_webhook(b'{"workflow_id": "w", "workflow_name": "n", "status": "s", "actions": []}')
    del event


async def options_and_limits() -> None:
    from airudder_async import ClientOptions, RequestOptions, Response
    from airudder_async.errors import ResponseTooLargeError

    options: ClientOptions = {"limits": Limits(max_response_size=1_000_000), "retry": DEFAULT_RETRY}
    call: RequestOptions = {"params": {"page": 1}, "idempotent": True}
    async with AirudderClient.from_env(
        {"AIRUDDER_APP_KEY": "k", "AIRUDDER_APP_SECRET": "s"}, **options
    ) as client:
        try:
            full: Response = await client.request_full("GET", "/service/cloud/workflow/instancelist", **call)
            status: int = full.status
            del status
        except ResponseTooLargeError as exc:
            limit: int = exc.limit
            del limit
        timeouts: Timeouts = client.timeouts
        del timeouts


def configuration_is_read_only(client: AirudderClient) -> None:
    # strict mypy warns about unused ignores, so this line proves the assignment is a type error too.
    client.retry = DEFAULT_RETRY  # type: ignore[misc]  # Final: the configuration is read-only


async def gated() -> None:
    from airudder_async.testing import INSTANCELIST_PATH, Gate

    async with FakeAirudder(workflows=50) as server, server.client() as client:
        gate: Gate = server.gate(INSTANCELIST_PATH, after=1)
        walk = client.iter_workflows(page_size=10, prefetch=4)
        await walk.__anext__()
        await gate.wait_held(4)
        await server.wait_for_hits("GET", INSTANCELIST_PATH, 5)
        gate.release()
        await walk.aclose()


def webhook_limits() -> None:
    from aiohttp import web

    from airudder_async.webhooks import DEFAULT_WEBHOOK_LIMITS, WebhookEvent, WebhookLimits, webhook_app

    async def on_event(event: WebhookEvent) -> None:
        del event

    limits: WebhookLimits = attrs.evolve(DEFAULT_WEBHOOK_LIMITS, max_pending=500, body_timeout=5.0)
    app: web.Application = webhook_app(on_event, limits=limits)
    del app


async def many_workers() -> None:
    from datetime import UTC, datetime

    from aiohttp import web

    from airudder_async import Limits, partition_window
    from airudder_async.coordination import Coordination, DedupeStore, MemoryCoordination
    from airudder_async.errors import CoordinationError
    from airudder_async.redis import RedisCoordination
    from airudder_async.webhooks import WebhookEvent, webhook_app

    async def on_event(event: WebhookEvent) -> None:
        del event

    since, until = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    first, last = partition_window(since, until, index=0, count=4)
    del first, last
    shared: Coordination = MemoryCoordination()
    del shared
    async with (
        RedisCoordination(url="redis://localhost:6379/0", on_unavailable="local", timeout=1.0) as redis,
        AirudderClient.from_env(limits=Limits(requests_per_second=40), coordination=redis) as client,
    ):
        try:
            async for wf in client.iter_workflows(start_time=since, end_time=until, partition=(0, 4)):
                del wf
        except CoordinationError as exc:
            operation: str = exc.operation
            del operation
        dedupe: DedupeStore = redis.dedupe_store(namespace="hooks")
        app: web.Application = webhook_app(on_event, dedupe=dedupe)
        del app


async def mirror() -> None:
    from datetime import timedelta

    from airudder_async.sync import Sink, SyncSummary, open_sink, sync_workflows

    async with FakeAirudder() as server, server.client() as client:
        server.add_history(100)
        changed, new = server.mutate_random(status_changes=5, new=3, seed=1)
        server.set_status(changed[:1], "finished", total=3)
        sink: Sink
        async with open_sink("workflows.db", busy_timeout=0.5) as sink:
            summary: SyncSummary = await sync_workflows(
                client, sink, lookback=timedelta(days=2), on_progress=lambda s: s.line()
            )
        assert summary.inserted + summary.changed >= len(new)
