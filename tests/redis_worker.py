"""
One worker process for the multi-process tests: a client sharing a RedisCoordination, run from JSON.

`python tests/redis_worker.py '{"mode": "list", ...}'` prints one JSON line: what the worker saw.
"""

from __future__ import annotations

import json
import sys
import time

import anyio

from airudder_async import AirudderClient, Limits, RetryPolicy
from airudder_async.errors import AirudderError
from airudder_async.models import RequestEvent
from airudder_async.redis import RedisCoordination


async def main(config: dict[str, object]) -> dict[str, object]:
    """Run the worker described by *config*; return its report."""
    sent: list[float] = []
    refused: list[float] = []

    def hook(event: RequestEvent) -> None:
        if event.kind == "request":
            sent.append(time.time())
        elif event.kind == "response" and event.status == 429:
            refused.append(time.time())  # before the cool-down is written

    rate = config.get("rate")
    limits = Limits(max_in_flight=8, requests_per_second=None if rate is None else float(str(rate)), burst=1)
    report: dict[str, object] = {"error": None, "items": 0}
    async with (
        RedisCoordination(url=str(config["redis"]), prefix=str(config["prefix"])) as coordination,
        AirudderClient(
            app_key=str(config["key"]),
            app_secret=str(config["secret"]),
            base_url=str(config["url"]),
            limits=limits,
            retry=RetryPolicy(backoff_initial=0.0, backoff_max=0.0),
            event_hook=hook,
            coordination=coordination,
        ) as client,
    ):
        try:
            if config["mode"] == "list":
                left = int(str(config["n"]))

                async def lister() -> None:
                    nonlocal left
                    while left > 0:
                        left -= 1
                        await client.list_workflows(size=1)

                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(lister)
            else:
                ids = [wf.workflow_id async for wf in client.iter_workflows(page_size=20, prefetch=2)]
                report["items"] = len(ids)
                report["distinct"] = len(set(ids))
        except AirudderError as exc:
            report["error"] = type(exc).__name__
        stats = client.stats
    report.update(
        auth_requests=stats.auth_requests,
        retries=stats.retries,
        rate_limited=stats.rate_limited,
        sent=sent,
        refused=refused,
    )
    return report


if __name__ == "__main__":
    sys.stdout.write(json.dumps(anyio.run(main, json.loads(sys.argv[1]))) + "\n")
