"""
A bot's whole loop on one machine: create a workflow, receive its webhooks from FakeAirudder, act on them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from aiohttp import web

from airudder_async.testing import FakeAirudder
from airudder_async.webhooks import StatusChangeEvent, WebhookEvent, WebhookKind, webhook_app

pytestmark = pytest.mark.anyio


async def test_created_workflow_status_webhook_reaches_the_bot_once() -> None:
    """A status webhook AIRUDDER delivers 5 times (lost answers) reaches the callback once, typed."""
    received: list[WebhookEvent] = []
    delivered = anyio.Event()

    async def on_event(event: WebhookEvent) -> None:
        received.append(event)
        delivered.set()

    app = web.Application()
    app.add_subapp("/hooks", webhook_app(on_event, kind=WebhookKind.STATUS_CHANGE))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/hooks/airudder/webhook"
    try:
        async with FakeAirudder() as fake, fake.client() as client:
            created = await client.create_workflow(
                workflow_template_id=11, name="collections", end_time=datetime.now(UTC) + timedelta(days=1)
            )
            body = {
                "workflow_id": created.workflow_id,
                "workflow_name": "collections",
                "status": "finished",
                "actions": [{"nodetask_id": "nt-1", "nodetask_name": "call", "node_type": "robot"}],
                "brand_new_field": 1,
            }
            statuses = await fake.send_webhook(url, body, repeat=5)
            with anyio.fail_after(5):
                await delivered.wait()
    finally:
        await runner.cleanup()  # waits for any pending callback, so a second delivery would be counted
    assert statuses == [200] * 5
    assert len(received) == 1
    (event,) = received
    assert isinstance(event, StatusChangeEvent)
    assert (event.workflow_id, event.status) == (created.workflow_id, "finished")
    assert event.extra["brand_new_field"] == 1


async def test_fake_retries_until_the_receiver_answers_2xx() -> None:
    """FakeAirudder retries a webhook answered non-2xx, like AIRUDDER, and the event is delivered once."""
    received: list[WebhookEvent] = []
    verdicts = iter([False, False, True, True])

    def verify(_headers: Mapping[str, str], _body: bytes) -> bool:
        return next(verdicts)

    app = webhook_app(_collector(received), verify_signature=verify)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with FakeAirudder() as fake:
            statuses = await fake.send_webhook(
                f"http://{host}:{port}/airudder/webhook", {"workflow_id": "w-1", "anything": [1]}
            )
    finally:
        await runner.cleanup()  # waits for the pending callback
    assert statuses == [401, 401, 200]
    assert [e.raw["workflow_id"] for e in received] == ["w-1"]


def _collector(out: list[WebhookEvent]) -> Callable[[WebhookEvent], Awaitable[None]]:
    async def collect(event: WebhookEvent) -> None:
        out.append(event)

    return collect
