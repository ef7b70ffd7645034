"""
Adaptive pacing against an unknown server rate limit: achieved rate, share of 429s, re-convergence.

    python benchmarks/adaptive.py [--duration 60] [--limits 5,20,80] [--burst 1] [--latency 0.02]
                                  [--no-retry-after] [--refusal-latency S] [--skip-halving]
                                  [--adaptive-only]

Each case walks a FakeAirudder (benchmarks/_server.py, in its own process) whose token bucket allows
*limit* requests per second (bursts of *burst*) and answers 429 beyond it, with `Retry-After` unless
--no-retry-after; the walk uses the default client (prefetch 8, 8 in flight) and stops after
--duration seconds. Reported, from the server's own request log: achieved = admitted requests per
second / limit, and the share of answers that were 429, once with adaptive pacing (the default) and
once with `Limits(adaptive=False)`.

The halving case starts at 20 requests/s, halves at a third of the run and recovers at two thirds;
it reports the share of 429s over the 10 s after the halving and how long after the recovery the
admitted rate (over a sliding second) is back above 0.9 x the limit.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs

from airudder_async import AirudderClient, Limits
from airudder_async.errors import AirudderError
from airudder_async.testing import RateLimit

HERE = Path(__file__).resolve().parent

PAGE_SIZE = 20


@attrs.frozen
class Outcome:
    admitted: int
    refused: int
    seconds: float
    admitted_at: list[float]  # server times of admitted requests, from the walk's start
    refused_at: list[float]
    pacing_rate: float | None
    cuts: int
    failures: int  # walks that gave up (retries spent) and were resumed

    def share(self, start: float = 0.0, end: float = float("inf")) -> float:
        ok = bisect.bisect_left(self.admitted_at, end) - bisect.bisect_left(self.admitted_at, start)
        bad = bisect.bisect_left(self.refused_at, end) - bisect.bisect_left(self.refused_at, start)
        return bad / (ok + bad) if ok + bad else 0.0


class Server:
    """benchmarks/_server.py in its own process (so its clock and the client's CPU work do not mix)."""

    def __init__(self, workflows: int, latency: float, limit: RateLimit) -> None:
        cmd = [
            sys.executable,
            str(HERE / "_server.py"),
            "--workflows", str(workflows),
            "--latency", str(latency),
            "--rate", str(limit.rate),
            "--burst", str(limit.burst),
            "--record",
        ]  # fmt: skip
        if limit.refusal_latency is not None:
            cmd += ["--refusal-latency", str(limit.refusal_latency)]
        if not limit.has_retry_after:
            cmd.append("--no-retry-after")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        self.address = json.loads(self._proc.stdout.readline())

    def ask(self, command: str) -> str:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        return self._proc.stdout.readline()

    def set_limit(self, limit: RateLimit) -> float:
        """Set the server's limit; return the server's clock at the change."""
        refusal = "" if limit.refusal_latency is None else f" {limit.refusal_latency}"
        return float(self.ask(f"limit {limit.rate} {limit.burst} {int(limit.has_retry_after)}{refusal}"))

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


async def walk(
    limit: RateLimit,
    *,
    adaptive: bool,
    duration: float,
    latency: float,
    schedule: Callable[[float], RateLimit] | None = None,
) -> tuple[Outcome, list[float]]:
    """Walk for *duration* seconds; return the outcome and the server times of the limit's changes."""
    workflows = int(limit.rate * 3 * duration * PAGE_SIZE) + PAGE_SIZE
    server = Server(workflows, latency, limit)
    changes: list[float] = []
    try:
        address = server.address
        async with AirudderClient(
            app_key=address["app_key"],
            app_secret=address["app_secret"],
            base_url=address["url"],
            limits=Limits(adaptive=adaptive),
        ) as client:
            started = anyio.current_time()
            current = limit
            failures = 0

            async def change_limits() -> None:
                nonlocal current
                assert schedule is not None
                while True:
                    await anyio.sleep(0.05)
                    wanted = schedule(anyio.current_time() - started)
                    if wanted != current:
                        current = wanted
                        changes.append(await anyio.to_thread.run_sync(server.set_limit, wanted))

            async with anyio.create_task_group() as tg:
                if schedule is not None:
                    tg.start_soon(change_limits)
                with anyio.move_on_after(duration):
                    cursor = None
                    while True:  # as an ETL job would: a walk that gives up is resumed where it stopped
                        try:
                            async for _ in client.iter_workflows(page_size=PAGE_SIZE, cursor=cursor):
                                pass
                            break
                        except AirudderError as exc:
                            failures += 1
                            cursor = exc.cursor
                tg.cancel_scope.cancel()
            stats = client.stats
        seen = json.loads(server.ask("requests"))
    finally:
        server.close()
    origin = seen[0][0] if seen else 0.0
    admitted_at = [at - origin for at, refused in seen if not refused]
    refused_at = [at - origin for at, refused in seen if refused]
    outcome = Outcome(
        admitted=len(admitted_at),
        refused=len(refused_at),
        seconds=duration,
        admitted_at=admitted_at,
        refused_at=refused_at,
        pacing_rate=stats.pacing_rate,
        cuts=stats.pacing_cuts,
        failures=failures,
    )
    return outcome, [t - origin for t in changes]


def reconverge(outcome: Outcome, at: float, limit: float) -> float | None:
    """Seconds after *at* until the admitted requests over the last second reach 0.9 x *limit*."""
    times = outcome.admitted_at
    for i in range(bisect.bisect_left(times, at), len(times)):
        t = times[i]
        if t - 1.0 < at:
            continue
        if i - bisect.bisect_left(times, t - 1.0) + 1 >= 0.9 * limit:
            return t - at
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--limits", default="5,20,80")
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--no-retry-after", action="store_true")
    parser.add_argument(
        "--refusal-latency", type=float, help="seconds a 429 takes (a gateway refusing at once)"
    )
    parser.add_argument("--skip-halving", action="store_true")
    parser.add_argument("--adaptive-only", action="store_true", help="skip the fixed-pacing walks")
    args = parser.parse_args()
    logging.getLogger("airudder_async").setLevel(logging.ERROR)
    has_ra = not args.no_retry_after
    refuse = args.refusal_latency

    print(
        f"walks of {args.duration:g} s, {args.latency * 1000:g} ms latency, server burst {args.burst}, "
        f"429 {'with' if has_ra else 'without'} Retry-After"
        + ("" if refuse is None else f", answered in {refuse * 1000:g} ms")
    )
    print()
    print("| limit (req/s) | pacing | achieved / limit | 429 share | cuts | learnt rate | walks given up |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    modes = (True,) if args.adaptive_only else (True, False)
    for limit in [float(x) for x in args.limits.split(",") if x]:  # --limits "": the halving case only
        for adaptive in modes:
            t0 = time.perf_counter()
            out, _ = anyio.run(
                functools.partial(
                    walk,
                    RateLimit(rate=limit, burst=args.burst, has_retry_after=has_ra, refusal_latency=refuse),
                    adaptive=adaptive,
                    duration=args.duration,
                    latency=args.latency,
                )
            )
            assert time.perf_counter() - t0 < args.duration + 30
            learnt = "—" if out.pacing_rate is None else f"{out.pacing_rate:.1f}"
            print(
                f"| {limit:g} | {'adaptive' if adaptive else 'fixed'} | "
                f"{out.admitted / out.seconds / limit:.3f} | {out.share():.2%} | {out.cuts} | {learnt} | "
                f"{out.failures} |"
            )

    if args.skip_halving:
        return
    base = 20.0
    third = args.duration / 3
    print()
    print(f"limit {base:g} req/s, halved at {third:.0f} s, back at {2 * third:.0f} s")
    print()
    print("| pacing | 429 share, 10 s after halving | re-converged after recovery | overall 429 share |")
    print("|---|---:|---:|---:|")
    for adaptive in modes:
        full = RateLimit(rate=base, burst=args.burst, has_retry_after=has_ra, refusal_latency=refuse)
        half = attrs.evolve(full, rate=base / 2)

        def schedule(t: float, full: RateLimit = full, half: RateLimit = half) -> RateLimit:
            return half if third <= t < 2 * third else full

        out, changes = anyio.run(
            functools.partial(
                walk, full, adaptive=adaptive, duration=args.duration, latency=args.latency, schedule=schedule
            )
        )
        halved, restored = changes  # server times, from the walk's first request
        back = reconverge(out, restored, base)
        print(
            f"| {'adaptive' if adaptive else 'fixed'} | {out.share(halved, halved + 10):.2%} | "
            f"{'not within the run' if back is None else f'{back:.1f} s'} | {out.share():.2%} |"
        )


if __name__ == "__main__":
    main()
