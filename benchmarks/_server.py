"""
Serve a FakeAirudder in its own process for the benchmarks; print its address as one JSON line.

Usage: python benchmarks/_server.py --workflows 100000 --latency 0.02

The server runs until its stdin closes (the parent exits or closes the pipe), so it never outlives
the benchmark that started it. Each line `cpu` on stdin is answered with the CPU seconds this process
has used so far, one number per line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from airudder_async.testing import FakeAirudder


async def serve(workflows: int, latency: float) -> None:
    started = time.perf_counter()
    async with FakeAirudder(workflows=workflows, latency=latency) as fake:
        fake.record_requests = False  # the request log would grow with every benchmark request
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
            if line.strip() == "cpu":
                print(time.process_time(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    args = parser.parse_args()
    asyncio.run(serve(args.workflows, args.latency))


if __name__ == "__main__":
    main()
