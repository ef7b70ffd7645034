"""
Adaptive pacing in simulated time: the real `RateController` against a token-bucket server, in a second.

    python benchmarks/adaptive_sim.py [--seeds 5] [--jitter 0.001] [--latency 0.02] [--duration 60]
                                      [--stalls 0] [--stall 0.004]

`benchmarks/adaptive.py` measures the real client against a real server for 60 s per case, about a
quarter of an hour in all; this runs the same cases (limits of 5, 20 and 80 requests/s, bursts of 1
and 5, and 20/s halved at a third of the run and restored at two thirds) as a discrete-event
simulation in well under a second, so a change to the controller can be tried against all of them at
once; and one more, 20/s halved for good, where the level held before is tried and refused until the
controller forgets it.

What is simulated, mirroring the client: 8 workers each keep one page request going (prefetch 8); the
pacer's slow start (the window doubles each time a round of answers is back, until the first 429), a 429's
`Retry-After` cool-down shared by every worker and the retry after it, and the learnt pace (requests
spaced 1/rate apart, a new rate applying to waiting requests at once). Every answer and refusal goes to
the real `airudder_async._adaptive.RateController`. The server is `FakeAirudder`'s token bucket, deciding
on arrival, with a `Retry-After` of the time to its next token in milliseconds; a change of its limit
takes effect at its own time, as `FakeAirudder.set_rate_limit()` makes it: the old limit refills the
bucket up to then. (Until 2026-12-03 a change waited for the next arrival, refilling at the old limit
until then, so the first refusal after a halving always bounded the new limit exactly: every simulated
burst-1 halving cost one refusal, where real runs cost two in about half of them.) Each request leaves up to
*jitter* seconds after the pace lets it go (the event loop's delay) and the answer takes *latency*.

It agrees with `benchmarks/adaptive.py` within a few hundredths at 5 and 20 requests/s; at 80/s the real
run depends on how late a paced request leaves, which `--jitter` stands in for: since the pace yields
through its last millisecond instead of trusting asyncio's millisecond timer, about half a millisecond
on this 2-core box (`--jitter 0.0005`: 0.89 of the limit, as measured; before, about 2.7 ms and 0.81).
Its figures are a guide for tuning; the real benchmark is the measurement.

`--stalls N --stall S`: the server also stops N times a second on average, for up to S seconds, and
reads what arrived meanwhile when it resumes, so requests sent a pace apart reach its bucket bunched.
On a busy 2-core box the real runs see such stalls: requests sent 15-17 ms apart at 80/s came back
429 with a 1-2 ms `Retry-After`, so they had reached the server less than 12.5 ms apart. With
`--stalls 2 --stall 0.004` the simulated 80/s walk drops from about 0.91 to 0.85 of the limit.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airudder_async._adaptive import RateController

ATTEMPTS = 6  # RetryPolicy's default: a page refused this often gives up (the walk is resumed)


class Simulation:
    """One walk of *duration* seconds against a token bucket of *limit* requests/s and *burst*."""

    def __init__(
        self,
        limit: float,
        burst: int,
        *,
        seed: int,
        retry_after: bool = True,
        latency: float = 0.02,
        jitter: float = 0.001,
        workers: int = 8,
        duration: float = 60.0,
        changes: Sequence[tuple[float, float]] = (),
        stalls: float = 0.0,
        stall: float = 0.004,
    ) -> None:
        self.rng = random.Random(seed)
        # The server (or the client, before the request leaves) stops for up to *stall* seconds,
        # *stalls* times a second on average: what arrives meanwhile is read when it resumes.
        srng, at = random.Random(seed + 1000), 0.0
        self.stalls: list[tuple[float, float]] = []
        while stalls and at < duration:
            at += srng.expovariate(stalls)
            self.stalls.append((at, at + srng.random() * stall))
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.now = 0.0
        # the server
        self.limit, self.burst, self.has_retry_after = limit, burst, retry_after
        self.tokens, self.refilled = float(burst), 0.0
        self.changes = deque(sorted(changes))  # (when, new limit), applied as the fake's set_rate_limit()
        self.admitted_at: list[float] = []
        self.refused_at: list[float] = []
        # the client
        self.latency, self.jitter, self.workers, self.duration = latency, jitter, workers, duration
        self.controller = RateController()
        self.window, self.in_flight = 1, 0  # slow start
        self.round_answers = 0  # answers since the window last grew
        self.waiting_for_slot: deque[int] = deque()
        self.cool_until = 0.0
        self.interval: float | None = None  # the learnt pace, once there is one
        self.last_sent = -math.inf
        self.waiting_for_pace: deque[tuple[int, float]] = deque()
        self.timer: object | None = None

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (when, next(self.order), action))

    def run(self) -> Simulation:
        for _ in range(self.workers):
            self.at(0.0, lambda: self.request(1))
        while self.queue:
            when, _, action = heapq.heappop(self.queue)
            if when > self.duration:
                break
            self.now = when
            action()
        return self

    # -- the server -----------------------------------------------------------------------------------

    def arrive(self, when: float) -> float | None:
        """Admit the request (None) or return the 429's Retry-After."""
        while self.changes and self.changes[0][0] <= when:
            # What the old limit refilled up to the change is kept; the new one applies after it (a
            # change mid-interval, as `FakeAirudder.set_rate_limit()` makes it, not at the next arrival).
            changed, limit = self.changes.popleft()
            self.refill(changed)
            self.limit = limit
        self.refill(when)
        if self.tokens >= 1.0 - 1e-9:
            self.tokens -= 1.0
            self.admitted_at.append(when)
            return None
        self.refused_at.append(when)
        return math.ceil((1.0 - self.tokens) / self.limit * 1000) / 1000

    def refill(self, when: float) -> None:
        if when > self.refilled:  # (after a change, at the old limit up to it, then at the new one)
            self.tokens = min(float(self.burst), self.tokens + (when - self.refilled) * self.limit)
            self.refilled = when

    # -- the client -----------------------------------------------------------------------------------

    def request(self, attempt: int) -> None:
        """Take an in-flight slot (slow start), then go on to the cool-down and the pace."""
        if self.in_flight >= self.window:
            self.waiting_for_slot.append(attempt)
            return
        self.in_flight += 1
        self.paced(attempt)

    def paced(self, attempt: int) -> None:
        if self.cool_until > self.now:
            self.at(self.cool_until, lambda: self.paced(attempt))
        elif self.interval is None:
            self.send(attempt)
        else:
            self.waiting_for_pace.append((attempt, self.now))
            self.pump()

    def pump(self) -> None:
        """Let the first request waiting for the pace go when its turn has come, else wake up then."""
        if not self.waiting_for_pace or self.interval is None:
            return
        due = self.last_sent + self.interval
        if due > self.now:
            self.wake(due)
            return
        attempt, queued = self.waiting_for_pace.popleft()
        self.last_sent = self.now
        if self.now > queued:
            self.controller.held()
        self.send(attempt)
        if self.waiting_for_pace:
            self.wake(self.last_sent + self.interval)

    def wake(self, when: float) -> None:
        token = self.timer = object()

        def fire() -> None:
            if self.timer is token:
                self.timer = None
                self.pump()

        self.at(when, fire)

    def send(self, attempt: int) -> None:
        sent = self.now + self.rng.random() * self.jitter
        arrives = sent + 0.0002 + self.rng.random() * self.jitter * 0.3
        i = bisect.bisect(self.stalls, (arrives, math.inf)) - 1
        if i >= 0 and self.stalls[i][0] <= arrives < self.stalls[i][1]:
            arrives = self.stalls[i][1] + self.rng.random() * 1e-5

        def at_server() -> None:
            retry_after = self.arrive(arrives)
            back = arrives + self.latency + 0.0002 + self.rng.random() * self.jitter
            self.at(back, lambda: self.answer(attempt, sent, retry_after))

        self.at(arrives, at_server)

    def answer(self, attempt: int, sent: float, retry_after: float | None) -> None:
        controller, before = self.controller, self.controller.rate
        refused = retry_after is not None
        if refused:
            controller.refused(sent, self.now, retry_after if self.has_retry_after else None)
        else:
            controller.admitted(self.now, self.now - sent)
        if controller.rate is not None and controller.rate != before:
            self.interval = 1.0 / controller.rate
            self.pump()
        if self.window < self.workers:
            if controller.rate is not None:
                self.window = self.workers
            else:
                self.round_answers += 1
                if self.round_answers >= self.window:
                    self.round_answers = 0
                    self.window = min(self.workers, 2 * self.window)
        if not refused:
            self.at(self.now, lambda: self.request(1))  # the next page
        elif attempt >= ATTEMPTS:
            self.at(self.now, lambda: self.request(1))  # given up, and resumed
        elif self.has_retry_after:
            assert retry_after is not None
            self.cool_until = max(self.cool_until, self.now + retry_after)
            self.at(self.now + retry_after, lambda: self.request(attempt + 1))
        else:  # full-jitter backoff for this request alone: the pace was cut instead
            delay = min(30.0, 0.5 * 2 ** (attempt - 1)) * self.rng.random()
            self.at(self.now + delay, lambda: self.request(attempt + 1))
        self.in_flight -= 1
        while self.waiting_for_slot and self.in_flight < self.window:
            self.in_flight += 1
            self.paced(self.waiting_for_slot.popleft())

    # -- figures --------------------------------------------------------------------------------------

    def share(self, start: float = 0.0, end: float = math.inf) -> float:
        ok = sum(start <= t < end for t in self.admitted_at)
        bad = sum(start <= t < end for t in self.refused_at)
        return bad / (ok + bad) if ok + bad else 0.0

    def back_above(self, since: float, level: float) -> float | None:
        """Seconds after *since* until the requests admitted over the last second reach *level*."""
        times, first = self.admitted_at, 0
        for i, t in enumerate(times):
            if t - 1.0 < since:
                continue
            while times[first] <= t - 1.0:
                first += 1
            if i - first + 1 >= level:
                return t - since
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="runs per case (the median is shown)")
    parser.add_argument("--jitter", type=float, default=0.001, help="seconds of send delay, at most")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--stalls", type=float, default=0.0, help="server stalls per second, on average")
    parser.add_argument("--stall", type=float, default=0.004, help="seconds a stall lasts, at most")
    args = parser.parse_args()
    common = {
        "latency": args.latency,
        "jitter": args.jitter,
        "duration": args.duration,
        "stalls": args.stalls,
        "stall": args.stall,
    }
    seeds = range(args.seeds)
    print(
        f"simulated walks of {args.duration:g} s, {args.latency * 1000:g} ms latency, send jitter up to "
        f"{args.jitter * 1000:g} ms, median of {args.seeds}"
    )
    print()
    print("| limit (req/s) | burst | `Retry-After` | achieved / limit | 429 share |")
    print("|---:|---:|---|---:|---:|")
    for burst, retry_after in ((1, True), (5, True), (1, False)):
        for limit in (5.0, 20.0, 80.0):
            runs = [Simulation(limit, burst, seed=s, retry_after=retry_after, **common).run() for s in seeds]
            achieved = statistics.median(len(r.admitted_at) / args.duration / limit for r in runs)
            share = statistics.median(r.share() for r in runs)
            print(
                f"| {limit:g} | {burst} | {'yes' if retry_after else 'no'} | {achieved:.3f} | {share:.2%} |"
            )
    third = args.duration / 3
    print()
    print(f"20 req/s, halved at {third:g} s, back at {2 * third:g} s")
    print()
    print(
        "| burst | 429 share, 10 s after halving | back above 0.9 x limit after the recovery "
        "| runs within 2% / within 10 s |"
    )
    print("|---:|---:|---:|---:|")
    for burst in (1, 5):
        changes = ((third, 10.0), (2 * third, 20.0))
        runs = [Simulation(20.0, burst, seed=s, changes=changes, **common).run() for s in seeds]
        shares = [r.share(third, third + 10) for r in runs]
        backs = [math.inf if b is None else b for b in (r.back_above(2 * third, 18.0) for r in runs)]
        back = statistics.median(backs)
        print(
            f"| {burst} | {statistics.median(shares):.2%} "
            f"| {'not within the run' if math.isinf(back) else f'{back:.1f} s'} "
            f"| {sum(x <= 0.02 for x in shares)} of {len(runs)} "
            f"/ {sum(b <= 10 for b in backs)} of {len(runs)} |"
        )
    print()
    print(f"20 req/s, halved at {third:g} s for good (the walk goes on for a minute after)")
    print()
    print("| burst | 429 share over that minute | achieved / the new limit |")
    print("|---:|---:|---:|")
    for burst in (1, 5):
        # The remembered level is tried again and again, refused each time, until it is forgotten.
        stay = {**common, "duration": third + 60.0}
        runs = [Simulation(20.0, burst, seed=s, changes=((third, 10.0),), **stay).run() for s in seeds]
        share = statistics.median(r.share(third, third + 60) for r in runs)
        achieved = statistics.median(
            sum(third <= t < third + 60 for t in r.admitted_at) / 60 / 10.0 for r in runs
        )
        print(f"| {burst} | {share:.2%} | {achieved:.3f} |")


if __name__ == "__main__":
    main()
