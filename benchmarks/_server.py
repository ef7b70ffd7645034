"""
Serve a FakeAirudder in its own process for the benchmarks; print its address as one JSON line.

Usage: python benchmarks/_server.py --workflows 100000 --latency 0.02 [--rate R --burst B] [--record]

The server runs until its stdin closes (the parent exits or closes the pipe), so it never outlives
the benchmark that started it. Commands on stdin, each answered with one line on stdout:

- `cpu`: the CPU seconds this process has used so far;
- `limit RATE BURST RETRY_AFTER [REFUSAL_LATENCY]` (RETRY_AFTER 1 or 0; REFUSAL_LATENCY in seconds) or
  `limit none`: set the server-side rate limit from the next request on; answered with the server's
  clock at the change;
- `requests` (with --record): the instancelist requests so far, as JSON `[[at, refused], ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, RateLimit


def _limit(words: list[str]) -> RateLimit | None:
    if words == ["none"]:
        return None
    rate, burst, retry_after, *refusal = words
    return RateLimit(
        rate=float(rate),
        burst=int(burst),
        has_retry_after=retry_after == "1",
        refusal_latency=float(refusal[0]) if refusal else None,
    )


async def serve(workflows: int, latency: float, limit: RateLimit | None, record: bool) -> None:
    started = time.perf_counter()
    async with FakeAirudder(workflows=workflows, latency=latency, rate_limit=limit) as fake:
        fake.record_requests = record  # the request log would grow with every benchmark request
        address = {
            "url": fake.url,
            "app_key": fake.app_key,
            "app_secret": fake.app_secret,
            "workflows": workflows,
            "latency": latency,
            "startup_s": round(time.perf_counter() - started, 3),
        }
        print(json.dumps(address), flush=True)
        loop = asyncio.get_running_loop()
        # Read commands in a thread until the parent closes our stdin; the event loop keeps serving.
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, *words = line.split() or [""]
            if command == "cpu":
                print(time.process_time(), flush=True)
            elif command == "limit":
                fake.set_rate_limit(_limit(words))
                print(loop.time() + fake.now, flush=True)
            elif command == "requests":
                seen = [[r.at, r.is_rate_limited] for r in fake.requests if r.path == INSTANCELIST_PATH]
                print(json.dumps(seen), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--rate", type=float, help="a server-side rate limit, requests per second")
    parser.add_argument("--burst", type=int, default=1, help="the rate limit's burst")
    parser.add_argument("--no-retry-after", action="store_true", help="429 answers carry no Retry-After")
    parser.add_argument("--refusal-latency", type=float, help="seconds a 429 takes (default: --latency)")
    parser.add_argument("--record", action="store_true", help="keep the request log (for `requests`)")
    args = parser.parse_args()
    limit = None
    if args.rate:
        limit = RateLimit(
            rate=args.rate,
            burst=args.burst,
            has_retry_after=not args.no_retry_after,
            refusal_latency=args.refusal_latency,
        )
    asyncio.run(serve(args.workflows, args.latency, limit, args.record))


if __name__ == "__main__":
    main()
