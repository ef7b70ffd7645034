"""
Adaptive pacing: find the account's unpublished rate limit from the answers (pure; times are passed in).

The vendor publishes no rate limit, so the client learns one. Until the first 429 nothing is paced beyond
`Limits` (an account with a generous limit never pays for the controller; the pacer only opens its
in-flight window from one, doubling it per round of answers, a slow start). From a 429 on, the allowed rate
follows a CUBIC-like curve:

- **cut** on a 429 to a request sent at the current pace (one sent before the last cut says nothing
  new): the level where refusals began, `peak`, is the current rate, or the rate the server was
  admitting (measured since the last cut, or over the last `window` seconds) when that is clearly less
  than the pace allowed, and with a `Retry-After` shorter than the pace's interval at most
  1 / (retry_after + interval), the most a token bucket could refill (unless it is within the timing
  noise of a busy host, a couple of milliseconds, at a pace where that is a sizeable part of the
  interval); the rate drops to `beta * peak`. The first 429 of all sets the peak to
  what the server admitted lately, or with too little measured restarts a fast climb: from a low
  rate, or from where a sub-second `Retry-After` puts the limit;
- **grow** back while answers are clean, latency is flat and the budget is what holds requests back
  (demand exceeds the rate): concave up to `peak`, flat around it, then convex, probing above it, so
  the pace sits near the limit most of the time and finds a raised one quickly;
- **hold** (no growth) while latency rises well above its recent floor, and cut by `beta` when it
  climbs far above it: a server that queues is saturating even before it refuses. Both the latency and
  its floor are smoothed (the floor is the lowest smoothed value of the last 30 s, from the fifth
  answer on): where calls of different weight mix, a small call now and then among full pages, the
  fast answers must not make the others read as queueing (with the floor of single answers such a mix
  cut the pace every 4 s without a refusal, or froze its growth for good);
- **remember** the highest rate the server admitted over a regime that lasted before its limit came
  down: back at the new peak without a refusal, climb fast towards it (a limit lowered for a while
  often returns), again after each refusal on the way, until one comes a minute after that level was
  last admitted. The first try comes after 10 s of growth past a cut (sooner at high rates), so the
  drop itself costs few refusals; after a refused try the next comes sooner, after 5 s of growth, then
  6.25, 7.8 and 10 s again: a limit back within about 20 s of its drop is found within 5-8 s of
  growth of its return (at 10 s, a try refused just before it came back put the next one 10 s after),
  and one that stays low is tried about once more in its first minute than at 10 s each (7 times, not 6).

The time to climb back to `peak` is chosen so that one cycle spends about `requests_per_cycle`
requests, which bounds the share of 429s near `1 / requests_per_cycle` whatever the limit is (on a
busy host, where stalls bunch requests into extra 429s at fast paces, up to about twice that).
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RateController"]

_EVIDENCE = 5  # admitted answers needed before a measured rate is trusted as the peak
_HELD = 20  # admitted answers since a cut before what the server admits counts as a level it allowed
_PRIOR_GAP = 1.2  # a remembered level this much above the peak is climbed back to fast
_PRIOR_WAIT = 10.0  # at most this long (s) of growth after a cut before trying the remembered level
_PRIOR_RETRY = 5.0  # at most this long (s) after a refused try at it (the longer it stays refused, see below)
_PRIOR_BACKOFF = 1.25  # each further refused try waits this much longer, up to _PRIOR_WAIT
_PRIOR_KEEP = 60.0  # a remembered level refused this long (s) after it was last admitted is forgotten
_ESCAPE = 5.0  # seconds past the peak without a refusal before the climb turns fast again
_HINT = 1.0  # a Retry-After this long or longer (whole seconds) says nothing about the rate
_RESTART = 1.0  # requests per second after a refusal with nothing measured behind it
_SATURATED = 0.9  # admitted below this share of what the pace allowed since a cut: the server held it
_NOISE = 0.002  # seconds a busy host's scheduling can bunch or stretch requests on their way (stalls)
_NOISE_SHARE = 0.05  # a Retry-After within _NOISE bounds nothing where _NOISE is this much of an interval
_LATENCY_KEEP = 30.0  # seconds a latency floor is kept unless a lower one comes
_LATENCY_WARM = 5  # answers smoothed before the latency floor is taken (the first alone may be a small call)


class RateController:
    """
    The allowed request rate, learnt from 429s and latency; `rate` is None until the first refusal.

    *ceiling* (requests per second, or None) is never exceeded; *floor* is the lowest rate a cut
    reaches. Feed it every answer through `admitted()` and `refused()`, and call `held()` when the
    budget made a request wait (that is what tells the rate binds and may grow).
    """

    def __init__(
        self,
        ceiling: float | None = None,
        *,
        beta: float = 0.85,
        requests_per_cycle: float = 200.0,
        min_probe: float = 3.0,
        max_probe: float = 30.0,
        window: float = 2.0,
        floor: float = 0.2,
    ) -> None:
        self.ceiling = ceiling
        self.beta = beta
        self.requests_per_cycle = requests_per_cycle
        self.min_probe = min_probe
        self.max_probe = max_probe
        self.window = window
        self.floor = floor
        self.rate: float | None = None
        self.peak = 0.0
        self.cuts = 0
        self.cut_at = -math.inf  # when the rate was last cut
        self._probe = min_probe  # seconds of growth from beta * peak back to peak
        self._grown = 0.0  # seconds of growth since the last cut
        self._updated = -math.inf
        self._bound = False  # the budget held a request back since the last update
        self._admitted: deque[float] = deque()  # answer times of admitted requests, last `window` s
        self._first_at: float | None = None
        self._latency_floor: float | None = None
        self._latency_floor_at = -math.inf
        self._latency = 0.0  # smoothed
        self._latencies = 0  # latencies smoothed so far (up to _LATENCY_WARM)
        self._starting = False  # the last cut had too little evidence: grow exponentially
        self._since_cut = 0  # admitted answers since the last cut
        # Requests the pace allowed since the last cut (its rate over the time answers came), and the
        # admitted ones among them; both start afresh after a pause (no answer for `window` seconds
        # and two intervals).
        self._allowed = self._taken = 0.0
        self._admitted_sent = -math.inf  # when the last request the server admitted was sent
        self._answered = 0  # answers of either kind
        self._first_sent = math.inf  # when the earliest request answered was sent
        self._start_bound = math.inf  # where a first refusal's Retry-After put the limit, if it did
        # The highest rate the server admitted for a while before the limit came down (0: none), and
        # whether the fast climb under way is back towards it: a limit that drops often comes back.
        self.prior = 0.0
        self._prior_at = -math.inf  # when the remembered level (or one near it) was last admitted
        self._to_prior = False
        self._prior_tries = 0  # tries back to it refused since it was last admitted

    def __repr__(self) -> str:
        rate = "unlimited" if self.rate is None else f"{self.rate:.2f}/s"
        return f"<RateController rate={rate} peak={self.peak:.2f} cuts={self.cuts}>"

    # -- inputs ----------------------------------------------------------------------------------------

    def held(self) -> None:
        """Note that the budget made a request wait: the rate, not demand, sets the pace."""
        self._bound = True

    def admitted(self, now: float, latency: float) -> None:
        """Note an answer that was not a 429 (*latency*: the attempt's duration), and grow if due."""
        self._answered += 1
        self._first_sent = min(self._first_sent, now - latency)
        if self._first_at is None:
            self._first_at = now
        admitted = self._admitted
        admitted.append(now)
        horizon = now - self.window
        while admitted[0] < horizon:
            admitted.popleft()
        self._since_cut += 1
        self._admitted_sent = max(self._admitted_sent, now - latency)
        trend = self._observe_latency(now, latency)
        if self.rate is None:
            return
        elapsed = now - self._updated  # a rate exists only after a cut, which set _updated
        self._updated = now
        if elapsed > max(self.window, 2.0 / self.rate):
            # Nothing answered for a while (between two walks, say): that pause is neither growth
            # nor requests the pace allowed, and the measure starts afresh.
            elapsed = 0.0
            self._allowed = self._taken = 0.0
        self._allowed += self.rate * elapsed
        self._taken += 1.0
        if trend == "rising":
            self._cut(self.rate, now)
            return
        if self._bound and trend == "flat":
            if self._starting:
                # One more request per second for each clean answer: at r answers per second that
                # is exponential (doubling about every 0.7 s) at any scale, and a refusal finds the
                # rate only an answer or two past the limit.
                self.rate = self._bounded(self.rate + 1.0)
            else:
                self._grown += elapsed
                self.rate = self._curve()
                if self.prior > _PRIOR_GAP * self.peak and self._grown > min(
                    0.75 * self._probe, self._prior_wait()
                ):
                    # Back at the peak without a refusal, well under a level held before the limit
                    # dropped: climb fast towards it (again after each refusal on the way, for a
                    # minute: a limit lowered for a while tends to come back).
                    self._starting = self._to_prior = True
                elif self._grown > self._probe + max(_ESCAPE, self._probe / 2):
                    # Long past the old peak without a refusal: the limit was raised (or lifted).
                    # Climb fast from here, as at the start, until a refusal says where it is now.
                    self._starting = True
        self._bound = False

    def refused(self, sent_at: float, now: float, retry_after: float | None = None) -> bool:
        """
        Note a 429 to a request sent at *sent_at*; cut the rate and return True when it says something new.

        A *retry_after* (seconds) shorter than the pace's interval reads as a token bucket's time to
        its next token, which bounds the limit (see below); a longer one (whole seconds) says nothing.
        On a first refusal with too little measured, a sub-second one sets where the fast climb
        starts (`_first_bound()`).
        """
        if self._first_at is None:
            self._first_at = now
        self._answered += 1
        self._first_sent = min(self._first_sent, sent_at)
        if sent_at <= self.cut_at:
            return False  # sent at the pace before the last cut: that cut already answered it
        if self.rate is None:
            # The first refusal: the pace so far was only what demand and `Limits` allowed, so the
            # best guess is what the server admitted lately; with too few answers to measure by
            # (the first burst of a walk, say), restart and climb fast, like TCP's slow start: low,
            # or where the 429's Retry-After puts the limit (`_first_bound()`).
            served, sure = self._served_rate(now)
            self._starting = not sure
            level = served
            if not sure:
                level = _RESTART / self.beta
                hinted = self._first_bound(sent_at, now, retry_after)
                if hinted > level:
                    level = self._start_bound = hinted
        else:
            # The pace at a refusal is the level that proved too much (TCP CUBIC's W_max); when a
            # pace set by a cut is refused too, what the server admitted since that cut measures its
            # limit directly (it has been saturated all along). Only then: where the server admitted
            # about all the pace allowed, the pace set the rate, and what was admitted is the pace's
            # own climb (on a busy host a stall bunches two requests into a 429 at any pace, and
            # reading the climb as the limit cut lower at each one, down to 0.6 of it at 80/s).
            level = self.rate
            sustained = self._since_cut >= _EVIDENCE
            elapsed = now - self.cut_at
            saturated = self._taken < _SATURATED * self._allowed
            if sustained and not self._starting and elapsed > 0 and saturated:
                measured = self._since_cut / elapsed
                if elapsed > self.window:
                    # Averaged since the cut, the climb back drags the measure below the limit (a
                    # peak at 85-90% of it at 80/s): what the server admitted over the last `window`
                    # seconds, just before this refusal, is the closer measure.
                    measured = max(measured, self._served_rate(now)[0])
                level = min(level, measured)
            # Leave the fast climb only once a pace held long enough to be refused for itself, or
            # at the first refusal of a climb that started where a Retry-After put the limit (the
            # climb is one more request per second per answer: at 5/s that overshoots in a second).
            hinted, self._start_bound = self._start_bound < math.inf, math.inf
            self._starting = self._starting and not sustained and not hinted
            if retry_after is not None and 0.0 < retry_after < 1.0 / self.rate and self._informs(retry_after):
                # A bucket that refuses a request 1/rate after the last one it let through, and
                # frees a token retry_after later, refills at most 1 / (retry_after + 1/rate): cut
                # there at once (a halved limit in one cut, not four). With retry_after under the
                # interval, that is never below half the pace. (The interval, not the time since
                # the last admitted answer's request was sent: a 429 often comes back before the
                # answers to requests sent just ahead of it, which would make that gap too long.)
                # A request sent sooner after the last one the server admitted (the first one a
                # new pace lets go, say) had less time to refill: the bound is looser by as much.
                # (Not when an admitted request sent after this one was answered first: the one
                # admitted before it is not known, and the interval is the best guess.)
                spacing = interval = 1.0 / self.rate
                if sent_at >= self._admitted_sent:
                    spacing = min(interval, sent_at - self._admitted_sent)
                level = min(level, 1.0 / (retry_after + spacing))
        self._cut(level, now)
        return True

    def _prior_wait(self) -> float:
        """Seconds of growth before the next try back to the remembered level (see the module notes)."""
        if tries := self._prior_tries:
            return min(_PRIOR_WAIT, _PRIOR_RETRY * _PRIOR_BACKOFF ** (tries - 1))
        return _PRIOR_WAIT

    def _informs(self, retry_after: float) -> bool:
        """
        Tell whether a sub-interval *retry_after* says more than timing noise: not when it is within
        `_NOISE` and that noise is a sizeable part of the pace's interval. At 80/s a 1 ms Retry-After
        to a request sent 15 ms after the last one only says a stall brought the two closer than
        12.5 ms; read as a token's wait it put the limit at 62/s, and each such 429 cut lower.
        From 500/s up every sub-interval Retry-After is within the noise, so none bounds the limit
        there: the cut reads the pace and what the server admitted.
        """
        assert self.rate is not None
        return retry_after > _NOISE or _NOISE_SHARE / self.rate > _NOISE  # the interval is long

    def _first_bound(self, sent_at: float, now: float, retry_after: float | None) -> float:
        """
        Where a first 429 with *retry_after*, to a request sent at *sent_at*, puts the limit
        (requests per second), or 0 when it says nothing.

        A sub-second Retry-After reads as a token bucket's wait for its next token. The bucket admitted
        the last request we know it admitted, sent *gap* seconds before this one, and had less than a
        token left; it refilled for *gap* and still lacked what it frees *retry_after* later, so a
        token takes at least gap + retry_after: the limit is at most 1 / (gap + retry_after), whatever
        the burst. Two things make it only a starting point for the fast climb, never above the rate
        the answers have come at so far: an admitted request whose answer is still on its way (a 429
        often comes back faster) makes the gap look longer and the bound too low, and a tiny or
        unusual Retry-After (an HTTP date's rounding, a window's reset) proves nothing either way.
        Such a climb ends at its first refusal (`_start_bound`).
        """
        gap, span = sent_at - self._admitted_sent, now - self._first_sent
        if retry_after is None or not 0.0 < retry_after < _HINT or not 0.0 <= gap < math.inf or span <= 0:
            return 0.0
        return min(1.0 / (retry_after + gap), self._answered / span)

    # -- the curve -------------------------------------------------------------------------------------

    def _served_rate(self, now: float) -> tuple[float, bool]:
        """What the server admitted lately (about the last `window` s), and whether enough answers back it."""
        assert self._first_at is not None
        # The answers kept are those of the `window` seconds up to the last admitted one (pruned as
        # they come): counted over `window`, that leans high by the time since, which keeps the
        # measure from cutting below the limit on a count of a few answers (at 5/s, 10 in 2 s).
        span = min(self.window, now - self._first_at)
        count = len(self._admitted)
        if span <= 0 or not count:
            return self.floor, False
        return count / span, count >= _EVIDENCE and span >= self.window / 4

    def _cut(self, level: float, now: float) -> None:
        if self._to_prior:
            self._to_prior = False
            self._prior_tries += 1
            if now - self._prior_at > _PRIOR_KEEP:
                self.prior = 0.0  # still refused a minute on: that level is gone
        elif self._since_cut >= _HELD:
            # What the server admitted lately, after a regime that lasted: a level the account
            # allowed (the peak itself may be a refused overshoot, as at the end of a fast climb).
            served, sure = self._served_rate(now)
            if sure and served * _PRIOR_GAP >= self.prior:
                self.prior, self._prior_at = max(self.prior, served), now
                self._prior_tries = 0
        self.peak = max(self.floor, level)
        self.rate = self._bounded(self.beta * self.peak)
        self._probe = min(self.max_probe, max(self.min_probe, self.requests_per_cycle / self.peak))
        self._grown = 0.0
        self._since_cut = 0
        self._allowed = self._taken = 0.0
        self.cut_at = now
        self._updated = now
        self._bound = False
        self.cuts += 1

    def _curve(self) -> float:
        """CUBIC: beta * peak at the cut, peak after `_probe` seconds of growth, convex beyond."""
        k = self._probe
        c = (1.0 - self.beta) / k**3
        x = self._grown - k
        return self._bounded(self.peak * (1.0 + c * x * x * x))

    def _bounded(self, rate: float) -> float:
        rate = max(self.floor, rate)
        return rate if self.ceiling is None else min(self.ceiling, rate)

    # -- latency ---------------------------------------------------------------------------------------

    def _observe_latency(self, now: float, latency: float) -> str:
        """
        Smooth the latency and track its floor, the lowest smoothed value over the last 30 s; say how
        they compare (no trend until a few answers are smoothed).
        """
        if self._latencies < _LATENCY_WARM:
            self._latencies += 1
            self._latency = latency if self._latencies == 1 else 0.8 * self._latency + 0.2 * latency
            return "flat"
        smoothed = self._latency = 0.8 * self._latency + 0.2 * latency
        floor = self._latency_floor
        if floor is None or smoothed <= floor or now - self._latency_floor_at > _LATENCY_KEEP:
            self._latency_floor, self._latency_floor_at = smoothed, now
            return "flat"
        if smoothed > 4.0 * floor + 0.5 and now - self.cut_at > 2 * self.window:
            return "rising"
        if smoothed > 2.0 * floor + 0.05:
            return "held"
        return "flat"
