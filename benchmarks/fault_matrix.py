"""
Run the fault matrix many times and print, per fault, runs, items lost, items doubled and resumes.

    python benchmarks/fault_matrix.py [--runs 20] [--workflows 2000]

Each run walks every workflow of a FakeAirudder (in this process) while the fault hits a random page
request; a walk that raises is resumed from the error's cursor. Items lost / doubled compare the ids
yielded with the snapshot taken before the walk.

A count smaller than the data is followed whenever a page delivers past it; when it falls exactly on a
page boundary the walk trusts it (it cannot tell, and asking for one more page would cost every honest
walk a request), so the rows past it are lost: that row shows it on purpose.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections import Counter

import anyio

from airudder_async import AirudderClient, RetryPolicy, Timeouts
from airudder_async.errors import AirudderError
from airudder_async.testing import FakeAirudder, Fault

FAULTS: dict[str, list[Fault]] = {
    "429 + Retry-After (seconds)": [Fault.rate_limited(0)],
    "429 + Retry-After (HTTP date)": [Fault.rate_limited(0, as_date=True)],
    "500": [Fault.http_status(500)],
    "502": [Fault.http_status(502)],
    "503": [Fault.http_status(503)],
    "504": [Fault.http_status(504)],
    "slow answer past the timeout": [Fault.slow(0.4)],
    "connection dropped mid-body": [Fault.drop()],
    "malformed JSON": [Fault.malformed_json()],
    "2xx with an error envelope": [Fault.error_envelope(500)],
    "token revoked mid-walk": [Fault.revoke_token()],
    "50 workflows inserted at the head": [Fault.insert_head(50)],
}
MIXED = "random mix (30 %, seeded)"
COUNT_LIES = {"count 25 % larger than the data": 0.25, "count 25 % smaller than the data": -0.25}


async def walk_resuming(client: AirudderClient, page_size: int, prefetch: int) -> tuple[list[str], int]:
    ids: list[str] = []
    cursor = None
    for resumes in range(50):
        try:
            async for wf in client.iter_workflows(page_size=page_size, prefetch=prefetch, cursor=cursor):
                ids.append(wf.workflow_id)
        except AirudderError as exc:
            cursor = exc.cursor
            continue
        return ids, resumes
    raise RuntimeError("walk did not finish after 50 resumes")


async def one_run(name: str, n: int, seed: int) -> tuple[int, int, int, int]:
    rng = random.Random(seed)
    page_size, prefetch = rng.choice([50, 100, 200]), rng.choice([1, 4, 8])
    async with FakeAirudder(workflows=n, seed=seed) as fake:
        fake.record_requests = False
        client = fake.client(timeouts=Timeouts(total=0.25), retry=RetryPolicy(attempts=6, backoff_initial=0))
        async with client:
            expected = fake.workflow_ids()
            if name in COUNT_LIES:
                fake.count_offset = int(n * COUNT_LIES[name])
            elif name == MIXED:
                fake.inject_random([f for faults in FAULTS.values() for f in faults], rate=0.3, seed=seed)
            else:
                fake.inject(*FAULTS[name], on=rng.randint(1, max(1, n // page_size)))
            ids, resumes = await walk_resuming(client, page_size, prefetch)
            retries = client.stats.total_retries
    seen = Counter(ids)
    lost = sum(1 for i in expected if i not in seen)
    doubled = sum(c - 1 for c in seen.values() if c > 1) + sum(1 for i in seen if i not in set(expected))
    assert ids == expected or lost or doubled, "order differs"
    return lost, doubled, resumes, retries


async def main(runs: int, n: int) -> None:
    print(
        f"Fault matrix: {runs} runs per fault, {n} workflows, "
        "random page size (50/100/200) and prefetch (1/4/8)"
    )
    print()
    print("| fault | runs | items lost | items doubled | walks resumed | retries |")
    print("|---|---:|---:|---:|---:|---:|")
    started = time.perf_counter()
    for name in [*FAULTS, *COUNT_LIES, MIXED]:
        lost = doubled = resumes = retries = 0
        for seed in range(runs):
            r = await one_run(name, n, seed)
            lost, doubled, resumes, retries = lost + r[0], doubled + r[1], resumes + r[2], retries + r[3]
        print(f"| {name} | {runs} | {lost} | {doubled} | {resumes} | {retries} |")
    print()
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    logging.getLogger("airudder_async").setLevel(logging.ERROR)  # shortfall warnings are expected here
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workflows", type=int, default=2000)
    args = parser.parse_args()
    anyio.run(main, args.runs, args.workflows)
