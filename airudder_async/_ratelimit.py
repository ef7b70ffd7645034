"""
Pacing: the request budget, the in-flight cap, and the cool-down shared after a 429.

When and how long to wait after a refusal is decided in `_protocol.py`; this module does the waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ._adaptive import RateController
from ._config import Limits

if TYPE_CHECKING:
    from .coordination import RateBudget

__all__ = ["LearntPace", "Pacer", "TokenBucket", "loop_time"]


def loop_time() -> float:
    """
    The event loop's clock, in seconds: what `anyio.current_time()` reads on asyncio (the only backend
    aiohttp runs on), for a twentieth of its cost (it is read several times per request).
    """
    return asyncio.get_running_loop().time()


class TokenBucket:
    """
    A requests-per-second budget on anyio's clock (GCRA: each request reserves the next slot).

    *burst* requests may go at once; after that they are spaced 1/*rate* seconds apart.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self._tat = float("-inf")  # theoretical arrival time of the next request

    def reserve(self, now: float) -> float:
        """
        Reserve one request at time *now*; return how long to wait before sending it.
        """
        tat = max(self._tat, now)
        allowed_at = tat - self.tolerance
        self._tat = tat + self.interval
        return max(0.0, allowed_at - now)

    async def acquire(self) -> float:
        """
        Wait for one request's share of the budget; return the time waited.
        """
        delay = self.reserve(loop_time())
        if delay > 0:
            await anyio.sleep(delay)
        return delay


# asyncio's timers fire up to a millisecond late (epoll waits in whole milliseconds, rounded up): at
# 80 requests/s that alone spaced requests 1 ms apart beyond the pace, a tenth of the rate.
_EARLY = 0.001


class LearntPace:
    """
    Requests spaced 1/*rate* apart, where a new rate applies at once, to the requests already waiting
    too (a token bucket's reservations would keep the old spacing for them).

    One request at a time waits for its turn (the others queue, in order, on a lock): on a timer to
    shortly before it, then yielding to the event loop until it comes, so it leaves when due rather
    than when a timer rounded up to the next millisecond fires. The yielding lasts at most a
    millisecond and a tenth of the interval, so it costs at most that share of the loop's idle time
    (every other task runs meanwhile); on a loop whose clock stands still while it is busy (a test
    loop with virtual time) it falls back to the timer.
    """

    def __init__(self, rate: float, on_wait: Callable[[], object] = lambda: None) -> None:
        self.interval = 1.0 / rate
        self.on_wait = on_wait  # told each time a request had to wait: the pace, not demand, binds
        self._last = float("-inf")  # when the last request was let go
        self._changed = anyio.Event()
        self._turn = asyncio.Lock()  # FIFO, and free of any trip through the loop when uncontended
        self._inside = 0  # requests between entering acquire() and leaving their turn

    def set_rate(self, rate: float) -> None:
        """Pace at *rate* from now on, and wake the waiting requests to re-check."""
        self.interval = 1.0 / rate
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def acquire(self) -> float:
        """Wait until a request may go at the current rate; return the time waited."""
        started = now = loop_time()
        # Contended while any request is inside, also in the moment after one released the lock and
        # before the next has run (the lock says it is free then, but this request queues behind).
        contended = self._inside > 0
        self._inside += 1
        try:
            async with self._turn:
                if contended:
                    now = loop_time()
                while (due := self._last + self.interval) > now:
                    early = min(_EARLY, self.interval / 10)
                    if due - now > early:
                        changed = self._changed
                        with anyio.move_on_after(due - now - early):
                            await changed.wait()
                        now = loop_time()
                        continue
                    await asyncio.sleep(0)  # the last moment: the loop's other work goes on
                    if (moved := loop_time()) == now:  # a clock that only moves while the loop sleeps
                        await asyncio.sleep(due - now)
                        moved = loop_time()
                    now = moved
                # Spaced from when it really went: catching up after a late start would send two
                # requests closer than the interval, which a strict server refuses (the controller
                # makes up the rate).
                self._last = now
        finally:
            self._inside -= 1
        if now > started:
            self.on_wait()
        return now - started


class Pacer:
    """
    One per client: every request passes here, so the cap, the budget and a 429 cool-down are shared.

    With `Limits.adaptive`, a `RateController` learns the account's limit from the answers (fed through
    `answered()`) and a `LearntPace` paces at its rate; `Limits.requests_per_second` is the ceiling.
    With a *shared* budget (`coordination.RateBudget`), it replaces the local budget and cool-down;
    the learnt pace, which is this process's own, still applies after it.
    """

    def __init__(self, limits: Limits, shared: RateBudget | None = None) -> None:
        self.shared = shared
        self.bucket = (
            TokenBucket(limits.requests_per_second, limits.burst) if limits.requests_per_second else None
        )
        self.controller = RateController(limits.requests_per_second) if limits.adaptive else None
        self.max_in_flight = limits.max_in_flight
        # Slow start (adaptive only): until the first 429 or a learnt pace, the in-flight window starts
        # at one and doubles each time as many answers as it holds have come back, up to the cap (a
        # doubling per round trip, as TCP's slow start). A walk's first 8 requests at once cost an
        # account with a strict limit 7 refusals before a single answer could say anything; a generous
        # account pays three round trips. The window grows at the end of a round, not by one per
        # answer: grown per answer, the answers admitted early in the round that first meets the
        # limit sent two requests each before its refusals came back, all of them refused too.
        start = 1 if self.controller is not None else limits.max_in_flight
        self.limiter = anyio.CapacityLimiter(start)
        self._round = 0  # answers (and lost requests) since the slow start's window last grew
        self.learnt: LearntPace | None = None  # paces at the controller's rate once it has one
        self.cooldown_until = 0.0
        self.budget_wait = 0.0
        self.cooldown_wait = 0.0

    @property
    def adapts_alone(self) -> bool:
        """
        Tell whether a bare 429 is answered by the learnt pace alone: with adaptive pacing and no
        shared budget (a learnt pace is this process's own, so other workers still need the cool-down).
        """
        return self.controller is not None and self.shared is None

    @property
    def rate(self) -> float | None:
        """The rate adaptive pacing allows now (requests per second), or None while nothing is learnt."""
        return None if self.controller is None else self.controller.rate

    def answered(self, sent_at: float, *, refused: bool, retry_after: float | None = None) -> None:
        """
        Tell the controller about one answer to a request sent at *sent_at*: a 429 (*refused*, with
        its *retry_after* in seconds, if any) or not.
        """
        controller = self.controller
        if controller is None:
            return
        now = loop_time()
        before = controller.rate
        if refused:
            controller.refused(sent_at, now, retry_after)
        else:
            controller.admitted(now, now - sent_at)
        rate = controller.rate
        self._slow_start(rate)
        if rate is None or rate == before:
            return
        if self.learnt is None:
            self.learnt = LearntPace(rate, controller.held)
        else:
            self.learnt.set_rate(rate)

    def failed(self) -> None:
        """
        Tell the pacer an attempt ended without an answer (a timeout, a transport error): nothing for
        the controller, but the slow start counts it as an answer, so a lost request never holds the
        window back.
        """
        if self.controller is not None:
            self._slow_start(self.controller.rate)

    def _slow_start(self, rate: float | None) -> None:
        limiter = self.limiter
        window = limiter.total_tokens
        if window >= self.max_in_flight:
            return
        if rate is not None:  # the pace takes over from here
            limiter.total_tokens = self.max_in_flight
            return
        self._round += 1
        if self._round >= window:
            self._round = 0
            limiter.total_tokens = min(self.max_in_flight, 2 * window)

    async def cool_down(self, seconds: float) -> None:
        """
        Hold every request back for *seconds* from now (never shortening a cool-down already set).
        """
        if self.shared is not None:
            await self.shared.cool_down(seconds)
            return
        self.cooldown_until = max(self.cooldown_until, loop_time() + seconds)

    async def acquire(self) -> None:
        """
        Take one in-flight slot, after waiting out any cool-down and the budget; give it back with
        `release()` (not a context manager: an async generator's setup costs more than all of this).
        """
        limiter = self.limiter
        try:
            # A free slot is taken without a trip through the event loop (acquire() always makes one);
            # the caller checks for cancellation before anything is sent.
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        try:
            if self.shared is not None:
                self.budget_wait += await self.shared.acquire()  # budget and cool-down in one wait
            else:
                while (wait := self.cooldown_until - loop_time()) > 0:
                    self.cooldown_wait += wait
                    await anyio.sleep(wait)
                if self.bucket is not None:
                    self.budget_wait += await self.bucket.acquire()
            if self.learnt is not None:
                self.budget_wait += await self.learnt.acquire()
        except BaseException:  # cancelled while waiting: the slot is not taken
            limiter.release()
            raise

    def release(self) -> None:
        """Give back the in-flight slot `acquire()` took."""
        self.limiter.release()
