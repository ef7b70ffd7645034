"""
Adaptive pacing: the controller's rules (pure, on a clock passed in) and the pacer that applies them.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import selectors
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airudder_async import Limits, RetryPolicy
from airudder_async._adaptive import RateController
from airudder_async._ratelimit import LearntPace, Pacer, loop_time
from airudder_async.coordination import MemoryCoordination, MemoryRateBudget
from airudder_async.models import RequestEvent
from airudder_async.testing import INSTANCELIST_PATH, FakeAirudder, Fault, RateLimit

LATENCY = 0.02
T = TypeVar("T")


def steady(ctl: RateController, start: float, rate: float, seconds: float, *, held: bool = True) -> float:
    """Feed *rate* clean answers per second for *seconds*; return the time reached."""
    now = start
    for _ in range(round(rate * seconds)):
        now += 1.0 / rate
        if held:
            ctl.held()
        ctl.admitted(now, LATENCY)
    return now


# -- the controller ------------------------------------------------------------------------------------


def test_nothing_is_paced_before_the_first_refusal() -> None:
    """Clean answers alone never set a rate: a generous account pays nothing for the controller."""
    ctl = RateController()
    steady(ctl, 0.0, 50.0, 10.0)
    assert ctl.rate is None
    assert ctl.cuts == 0
    assert repr(ctl) == "<RateController rate=unlimited peak=0.00 cuts=0>"


def test_first_refusal_cuts_below_what_the_server_admitted() -> None:
    """With enough answers behind it, the first 429 sets the peak to the measured admitted rate."""
    ctl = RateController(beta=0.8, window=2.0)
    now = steady(ctl, 0.0, 20.0, 5.0)
    assert ctl.refused(now, now + 0.01) is True
    assert ctl.peak == pytest.approx(20.0, rel=0.05)
    assert ctl.rate == pytest.approx(0.8 * ctl.peak)
    assert "cuts=1" in repr(ctl)


def test_a_refusal_sent_before_the_last_cut_is_not_counted_twice() -> None:
    """Requests already in flight at the old pace are refused too; they say nothing new."""
    ctl = RateController()
    now = steady(ctl, 0.0, 20.0, 5.0)
    ctl.refused(now, now + 0.01)
    rate = ctl.rate
    assert ctl.refused(now, now + 0.02) is False  # sent before the cut at now + 0.01
    assert ctl.rate == rate
    assert ctl.cuts == 1


def test_a_refusal_with_nothing_measured_restarts_low_and_climbs() -> None:
    """
    The first burst of a walk refused at once: restart at 1/s and add 1/s per clean answer while the
    rate binds (exponential in time); refusals before a pace was sustained keep the fast climb.
    """
    ctl = RateController(beta=0.8)
    assert ctl.refused(0.0, 0.0) is True  # the very first answer is a 429
    assert ctl.rate == pytest.approx(1.0)
    assert ctl.refused(0.5, 0.6) is True  # sent after the cut, nothing admitted since: still starting
    assert ctl.rate == pytest.approx(0.8)
    now = steady(ctl, 1.0, 10.0, 1.0)  # ten clean answers
    assert ctl.rate == pytest.approx(10.8)
    ctl.refused(now + 0.01, now + 0.02)  # refused after a sustained climb: that pace is the peak
    assert ctl.peak == pytest.approx(10.8)
    assert ctl.rate == pytest.approx(0.8 * 10.8)
    rate = ctl.rate
    steady(ctl, now + 0.02, 10.0, 0.5)
    assert rate < ctl.rate < rate + 1.0  # now cubic, not one per answer


def test_the_first_refusal_of_a_short_history_is_not_trusted() -> None:
    """Too few answers (or too short a span) to measure by count as nothing measured."""
    ctl = RateController(beta=0.5)
    ctl.admitted(0.0, LATENCY)
    ctl.admitted(0.1, LATENCY)
    ctl.refused(0.15, 0.2)
    assert ctl.rate == pytest.approx(1.0)  # the restart rate, not 2 answers / 0.2 s


def test_growth_is_cubic_back_to_the_peak_and_beyond() -> None:
    """After a cut the rate climbs to the peak in one probe period, flat near it, then probes above."""
    ctl = RateController(beta=0.8, requests_per_cycle=100.0)
    now = steady(ctl, 0.0, 20.0, 5.0)
    ctl.refused(now, now)
    peak = ctl.peak
    probe = 100.0 / peak  # seconds from the cut back to the peak
    half = steady(ctl, now, 10.0, probe / 2)
    assert 0.8 * peak < ctl.rate < peak  # concave: most of the way back already
    assert ctl.rate - 0.8 * peak > (peak - 0.8 * peak) / 2
    back = steady(ctl, half, 10.0, probe / 2)
    assert ctl.rate == pytest.approx(peak, rel=0.01)
    steady(ctl, back, 10.0, probe)
    assert ctl.rate == pytest.approx(peak * 1.2, rel=0.01)  # convex: as far above as the cut was below


def test_no_growth_while_demand_sets_the_pace() -> None:
    """A rate that holds nothing back is not evidence that more is fine: it does not grow."""
    ctl = RateController()
    now = steady(ctl, 0.0, 20.0, 5.0)
    ctl.refused(now, now)
    rate = ctl.rate
    steady(ctl, now, 5.0, 30.0, held=False)
    assert ctl.rate == rate


def test_ceiling_and_floor_bound_the_rate() -> None:
    """The configured requests_per_second is a ceiling; cuts stop at the floor."""
    ctl = RateController(ceiling=10.0, floor=0.5, beta=0.5)
    now = steady(ctl, 0.0, 20.0, 5.0)
    ctl.refused(now, now)
    assert ctl.rate == 10.0  # 0.5 * 20 measured, at the ceiling
    steady(ctl, now, 10.0, 120.0)
    assert ctl.rate == 10.0
    low = RateController(floor=0.5, beta=0.5)
    t = 0.0
    for _ in range(20):
        t += 1.0
        low.refused(t, t)
    assert low.rate == 0.5


def test_a_sustained_pace_refused_again_is_measured_since_the_cut() -> None:
    """Refusals that go on after a cut mean the server is saturated: its admitted rate is the limit."""
    ctl = RateController(beta=0.9)
    now = steady(ctl, 0.0, 40.0, 5.0)
    ctl.refused(now, now)  # peak ~40, rate ~36
    now = steady(ctl, now, 10.0, 1.5, held=False)  # the limit dropped: only 10/s come back
    ctl.refused(now, now + 0.01)
    assert ctl.peak == pytest.approx(10.0, rel=0.05)
    assert ctl.rate == pytest.approx(9.0, rel=0.05)


def test_a_refusal_after_a_long_climb_measures_the_last_window_not_the_climb() -> None:
    """Refused again long after a cut, the level is what the server admitted over the last window: the
    average since the cut would include the slow climb back and set the peak well below the limit."""
    ctl = RateController(beta=0.5, window=2.0)
    now = steady(ctl, 0.0, 80.0, 3.0)
    ctl.refused(now, now)  # peak 80, rate 40
    cut_at, answers = now, 0
    while ctl.rate is not None and ctl.rate < 80.0:  # the pace climbs back, each answer at its pace
        now += 1.0 / ctl.rate
        ctl.held()
        ctl.admitted(now, LATENCY)
        answers += 1
    pace = ctl.rate
    ctl.refused(now, now + 0.01)
    since_cut = answers / (now + 0.01 - cut_at)
    assert now - cut_at > 2.0
    assert since_cut < 0.9 * pace
    assert ctl.peak > 0.95 * pace
    assert ctl.rate == pytest.approx(0.5 * ctl.peak)


def _dropped_from_40_to_10(*, remember: bool) -> tuple[RateController, float]:
    """A controller that held about 40/s for a while, then met a limit of 10/s (*remember*: with its
    memory of the 40)."""
    ctl = RateController()
    now = steady(ctl, 0.0, 40.0, 5.0)
    ctl.refused(now, now)  # peak 40, measured
    now = steady(ctl, now, 34.0, 3.0, held=False)  # held clean for 3 s
    now = steady(ctl, now, 10.0, 1.0, held=False)  # the limit drops ...
    ctl.refused(now, now)
    now = steady(ctl, now, 10.0, 2.5, held=False)
    ctl.refused(now, now)  # ... and is measured
    assert ctl.peak == pytest.approx(10.0, rel=0.1)
    if not remember:
        ctl.prior = 0.0
    return ctl, now


def climb(ctl: RateController, now: float, seconds: float) -> float:
    """Answer every request at the controller's pace (the pace binds) for *seconds*; return the time."""
    end = now + seconds
    while now < end:
        assert ctl.rate is not None
        now += 1.0 / ctl.rate
        ctl.held()
        ctl.admitted(now, LATENCY)
    return now


def test_after_a_drop_the_pace_climbs_fast_back_to_the_level_held_before() -> None:
    """A limit that came down from a level held for a while: back at the new peak without a refusal,
    the pace climbs fast towards the old level (CUBIC alone would take a whole probe period and more);
    a refusal on the way forgets it."""
    ctl, now = _dropped_from_40_to_10(remember=True)
    assert ctl.prior == pytest.approx(40.0, rel=0.1)
    plain, _ = _dropped_from_40_to_10(remember=False)
    now = climb(ctl, now, 20.0)
    climb(plain, now - 20.0, 20.0)
    assert ctl.rate is not None
    assert plain.rate is not None
    assert ctl.rate > 36.0
    assert plain.rate < 15.0
    ctl.refused(now, now + 0.01)  # refused on the way, soon after: kept for another try
    assert ctl.prior == pytest.approx(40.0, rel=0.1)


def _until_the_try_back(ctl: RateController, now: float) -> tuple[float, float]:
    """Climb at the pace until the climb turns fast (a try back to the remembered level: more than one
    request per second more for each answer, where CUBIC adds hundredths); refuse it there, a little
    later than a limit still at 10/s would (it is noticed at 12-14/s, so each refused try lifts the
    peak a little). Return the seconds that took, and the time."""
    start = now
    while True:
        before = ctl.rate
        assert before is not None
        now = climb(ctl, now, 0.2)
        assert ctl.rate is not None
        if ctl.rate > before + 0.5:
            break
        assert now - start < 30.0, "no try back"
    ctl.refused(now, now + 0.01)
    return now - start, now + 0.01


def test_the_remembered_level_is_tried_after_10_s_of_growth_then_sooner_once_refused() -> None:
    """The first try back comes 10 s of growth after a cut, so the drop itself costs few refusals; once a
    try was refused (the limit still low), the next comes after 5 s, then 6.25 and 7.8 (and 10 s again):
    a limit that returns just after a refused try is found 5 s on, not 10 (the halving benchmark's
    re-convergence missed 10 s that way), and one that stays low is not tried every 5 s for a minute."""
    ctl, now = _dropped_from_40_to_10(remember=True)  # just cut
    took, now = _until_the_try_back(ctl, now)
    assert 10.0 <= took < 10.6
    for wait in (5.0, 6.25, 7.8125):
        assert ctl.prior == pytest.approx(40.0, rel=0.1)
        # (Each refused try lifts the peak a little, as these tries are refused only once they are
        # well under way; below 15/s, three quarters of the cubic period is still over 10 s.)
        assert ctl.peak < 15.0
        took, now = _until_the_try_back(ctl, now)
        assert wait <= took < wait + 0.6
    # The limit returns and the level is held again: a later drop waits the first 10 s afresh.
    now = steady(ctl, now, 40.0, 3.0)
    ctl.refused(now, now)
    now = steady(ctl, now, 10.0, 1.0, held=False)
    ctl.refused(now, now)
    took, now = _until_the_try_back(ctl, now)
    assert 10.0 <= took < 10.6


def test_a_remembered_level_still_refused_a_minute_on_is_forgotten() -> None:
    """The climb back is tried again after each refusal on the way, but not for ever: a minute on it
    is forgotten, and the level it overshot to is not remembered in its place."""
    ctl, now = _dropped_from_40_to_10(remember=True)
    now = steady(ctl, now, 10.0, 61.0, held=False)  # demand, not the pace, binds: no growth
    assert ctl.rate is not None
    assert ctl.rate < 12.0
    now = climb(ctl, now, 20.0)  # the climb back to 40 ...
    overshoot = ctl.rate
    ctl.refused(now, now + 0.01)  # ... is refused, more than a minute after 40 was held
    assert ctl.prior == 0.0
    now = steady(ctl, now + 0.01, 10.0, 3.0, held=False)  # the server still admits 10/s
    ctl.refused(now, now + 0.01)
    assert overshoot is not None
    assert ctl.prior < 0.5 * overshoot
    assert ctl.prior <= 1.2 * ctl.peak  # nothing to climb back to


def test_a_fast_climb_overshoot_is_not_remembered_as_an_allowed_level() -> None:
    """The first fast climb overshoots the limit (refused at once, the peak set at the overshoot); what
    is remembered is what the server admitted, so no climb back towards the overshoot follows."""
    ctl = RateController()
    now = steady(ctl, 0.0, 20.0, 0.1)
    ctl.refused(now, now + 0.01)  # too little evidence: restart low and climb fast
    now = steady(ctl, now + 0.01, 20.0, 1.5)  # 30 answers at 20/s: +1 each
    assert ctl.rate is not None
    assert ctl.rate > 25.0  # well past a limit of 20
    ctl.refused(now, now + 0.01)  # refused at the overshoot: the peak is set there
    now = steady(ctl, now + 0.01, 20.0, 1.5)  # the server admits 20/s ...
    ctl.refused(now, now + 0.01)  # ... and refuses the rest
    peak = ctl.peak
    assert ctl.prior <= 1.2 * peak
    climb(ctl, now + 0.01, 9.0)  # back at the peak, short of the CUBIC escape
    assert ctl.rate is not None
    assert ctl.rate < 1.1 * peak  # no fast climb towards a level never allowed


def test_a_fine_retry_after_bounds_the_limit_in_one_cut() -> None:
    """A 429 whose Retry-After is shorter than the pace's interval reads as a token bucket's wait for
    its next token: the limit is at most 1 / (retry_after + interval), and one cut gets there. A
    Retry-After in whole seconds says nothing about the rate."""

    def paced_at_18() -> tuple[RateController, float]:
        ctl = RateController()
        now = steady(ctl, 0.0, 20.0, 5.0)
        ctl.refused(now, now)  # peak 20, rate 17
        now = steady(ctl, now, 17.0, 4.0)
        assert ctl.rate is not None
        return ctl, now

    ctl, now = paced_at_18()
    interval = 1.0 / ctl.rate  # type: ignore[operator]
    sent = now - LATENCY + interval  # at the pace, after the last admitted request
    ctl.refused(sent, sent + 0.01, retry_after=0.1 - interval)  # the limit became 10/s
    assert ctl.peak == pytest.approx(10.0, rel=0.01)
    coarse, now = paced_at_18()
    coarse.refused(now, now + 0.01, retry_after=1.0)
    plain, now = paced_at_18()
    plain.refused(now, now + 0.01)
    assert coarse.peak == plain.peak > 15.0


def test_a_429_answered_before_slower_admitted_answers_cuts_by_the_interval() -> None:
    """
    A gateway often answers 429 at once while admitted requests take their time: when it comes, the
    answers to the requests sent just ahead of it are still on their way. The cut reads its Retry-After
    against the pace's interval, so it stays within half the pace, not the 1 / (latency + retry_after)
    that the time since the last admitted answer's request was sent would give (a tenth of the limit).
    """
    ctl = RateController()
    now = 0.0
    for _ in range(100):  # 20/s, each answer 300 ms after its request
        now += 0.05
        ctl.held()
        ctl.admitted(now, 0.3)
    ctl.refused(now, now + 0.01)  # the first cut: measured, at about 20/s
    rate = ctl.rate
    assert rate is not None
    sent = now + 1.0 / rate  # the next request at the pace; its 429 back in 20 ms, Retry-After 3 ms
    ctl.refused(sent, sent + 0.02, retry_after=0.003)
    assert ctl.rate is not None
    assert ctl.rate >= ctl.beta * rate / 2


def test_the_first_refusal_climbs_fast_from_where_a_fine_retry_after_puts_the_limit() -> None:
    """
    The first 429 of a walk, too early for any measure: a sub-second Retry-After, read against the time
    since the last admitted request was sent, says where the limit is, and the fast climb starts there
    instead of at 1/s; its first refusal (even below that level: a burst's tokens ran out) ends the
    fast climb, and the rate grows on the cubic curve from then on.
    """
    ctl = RateController()
    ctl.admitted(0.02, LATENCY)  # sent at 0.0
    ctl.refused(0.03, 0.05, retry_after=0.02)  # 30 ms after it, 20 ms short of a token: at most 20/s
    assert ctl.peak == pytest.approx(20.0)
    assert ctl.rate == pytest.approx(0.85 * 20.0)
    now = 0.05
    while ctl.rate < 19.0:  # one more request per second for each clean answer
        now += 0.05
        ctl.held()
        ctl.admitted(now, LATENCY)
    assert ctl.rate == pytest.approx(19.0)
    ctl.refused(now, now + 0.01, retry_after=0.001)  # the first refusal of the climb ends it
    rate = ctl.rate
    assert rate is not None
    steady(ctl, now + 0.01, rate, 0.5)
    assert rate < ctl.rate < rate + 1.0  # cubic, not one more per answer


def test_a_refusal_sent_just_after_an_admitted_request_reads_its_short_gap_not_the_interval() -> None:
    """
    The first request a new pace lets go may leave a millisecond after the last one the server
    admitted: a 429 with a 12 ms Retry-After then says the limit is at most 1 / (12 + 1) ms, not
    1 / (12 ms + the pace's interval). Read against the interval, it halved a 61/s pace at an 80/s
    limit, and the slow climb back cost a sixth of a minute's walk.
    """
    ctl = RateController()
    now = steady(ctl, 0.0, 70.0, 2.0)
    ctl.refused(now - 0.02, now)  # a first cut, to a pace
    rate = ctl.rate
    assert rate is not None
    ctl.admitted(now + 0.021, 0.02)  # sent at now + 0.001, admitted
    ctl.refused(now + 0.002, now + 0.022, retry_after=0.012)  # sent a millisecond after it
    assert ctl.peak == pytest.approx(rate)
    assert ctl.rate == pytest.approx(0.85 * rate)


def test_a_refusal_answered_after_a_later_admitted_request_reads_the_interval() -> None:
    """
    When an admitted request sent after the refused one was answered first, the request the server
    admitted just before the refused one is not known: the bound reads the pace's interval, as
    before, instead of no spacing at all (which made it 1 / retry_after, no bound at all).
    """
    ctl = RateController()
    now = steady(ctl, 0.0, 20.0, 3.0)
    ctl.refused(now - LATENCY, now)  # a first cut, to a pace
    now = steady(ctl, now, 20.0, 3.0)
    rate = ctl.rate
    assert rate is not None
    interval = 1.0 / rate
    ctl.admitted(now + 0.03, 0.02)  # sent at now + 0.01, answered first
    ctl.refused(now + 0.005, now + 0.035, retry_after=0.9 * interval)  # sent before it
    assert ctl.peak == pytest.approx(1.0 / (1.9 * interval))


def _climbed_back_to_78() -> tuple[RateController, float]:
    """A controller cut at an 80/s limit, then answered at its own pace until it is back at 78/s."""
    ctl = RateController()
    now = steady(ctl, 0.0, 80.0, 3.0)
    ctl.refused(now - LATENCY, now)  # a first cut: peak 80, pace 68
    while ctl.rate is not None and ctl.rate < 78.0:  # the server admits every request the pace lets go
        now += 1.0 / ctl.rate
        ctl.held()
        ctl.admitted(now, LATENCY)
    return ctl, now


def test_a_refusal_after_a_clean_climb_cuts_from_the_pace_not_from_what_the_climb_admitted() -> None:
    """
    Where the server admitted every request the pace let go since the last cut, the pace set the rate:
    what was admitted is the climb itself, below the pace, and says nothing about the limit. A 429 then
    (a stall bunched two requests, say) cuts from the pace. Read as the limit, the climb's average cut
    lower at each such 429, down to 0.6 of an 80/s limit on a busy host.
    """
    ctl, now = _climbed_back_to_78()
    pace = ctl.rate
    assert pace is not None
    ctl.refused(now, now + LATENCY)
    assert ctl.peak == pytest.approx(pace)
    assert ctl.rate == pytest.approx(0.85 * pace)


def test_a_pause_between_walks_is_neither_growth_nor_allowed_requests() -> None:
    """
    Between two walks of one client nothing is sent. The first answer after the pause does not grow
    the rate by the whole pause (30 s on the cubic curve put 78/s at 10,000/s), and the pause is not
    requests the pace allowed and the server did not admit: a 429 soon after the next walk starts
    still cuts from the pace.
    """
    ctl, now = _climbed_back_to_78()
    now += 30.0  # idle
    pace = ctl.rate
    assert pace is not None
    for _ in range(round(0.3 * pace)):  # the next walk, every request admitted at the pace
        now += 1.0 / pace
        ctl.held()
        ctl.admitted(now, LATENCY)
    rate = ctl.rate
    assert rate is not None
    assert rate < 1.05 * pace
    ctl.refused(now, now + LATENCY)
    assert ctl.peak == pytest.approx(rate)


def test_a_pace_slower_than_the_pause_window_still_grows() -> None:
    """At 0.4 requests/s the answers come 2.5 s apart, longer than `window`: that is the pace, not a pause."""
    ctl = RateController(window=20.0)  # long enough to measure 0.5/s at the first refusal
    now = steady(ctl, 0.0, 0.5, 20.0)
    ctl.refused(now - LATENCY, now)  # pace 0.425/s, on the cubic curve
    ctl.window = 2.0
    start = ctl.rate
    assert start is not None
    for _ in range(20):
        assert ctl.rate is not None
        now += 1.0 / ctl.rate
        ctl.held()
        ctl.admitted(now, LATENCY)
    assert ctl.rate > start


def test_a_refusal_when_the_server_admitted_less_than_the_pace_allowed_cuts_to_what_it_admitted() -> None:
    """The other side of the rule above: a server that let through only part of the pace held it."""
    ctl = RateController()
    now = steady(ctl, 0.0, 80.0, 3.0)
    ctl.refused(now - LATENCY, now)  # pace 68
    now = steady(ctl, now, 40.0, 3.0)  # the pace binds, but only 40/s come back admitted
    ctl.refused(now, now + LATENCY)
    assert ctl.peak == pytest.approx(40.0, rel=0.05)


def test_a_retry_after_within_timing_noise_bounds_nothing_at_a_fast_pace() -> None:
    """
    At 78/s a 429 with a 1 ms Retry-After to a request sent 15 ms after the last admitted one only says
    that a stall of the host brought the two closer than the limit's interval: read as a token bucket's
    wait it would put the limit at 1 / 16 ms (62/s). A 1 ms Retry-After at 5/s still bounds the limit,
    and at 78/s a Retry-After longer than the noise (a halved limit) still does.
    """
    fast, now = _climbed_back_to_78()
    pace = fast.rate
    assert pace is not None
    fast.admitted(now + LATENCY, LATENCY)  # sent at now, admitted
    fast.refused(now + 0.015, now + 0.015 + LATENCY, retry_after=0.001)
    assert fast.peak == pytest.approx(pace)

    halved, now = _climbed_back_to_78()
    halved.admitted(now + LATENCY, LATENCY)
    halved.refused(now + 0.012, now + 0.012 + LATENCY, retry_after=0.012)  # limit at most 1 / 24 ms
    assert halved.peak == pytest.approx(1.0 / 0.024)

    slow = RateController()
    now = steady(slow, 0.0, 5.0, 10.0)
    slow.refused(now - LATENCY, now)  # pace 4.25
    rate = slow.rate
    assert rate is not None
    slow.admitted(now + LATENCY, LATENCY)  # sent at now, admitted
    slow.refused(now + 1.0 / rate, now + 1.0 / rate + LATENCY, retry_after=0.001)  # one interval on
    assert slow.peak == pytest.approx(1.0 / (0.001 + 1.0 / rate))


def test_a_first_refusal_hint_never_starts_below_the_restart_or_above_the_answers_pace() -> None:
    """
    The hint only moves where the fast climb starts: a 429 answered before the admitted requests sent
    just ahead of it (their answers still on the way, so the gap looks long) starts no lower than the
    1/s restart; a tiny Retry-After, no faster than the answers came; a whole-second one, a refused
    request sent before the last admitted one, or nothing admitted yet say nothing.
    """
    slow = RateController()
    slow.admitted(0.30, 0.30)  # sent at 0.0, answered after 300 ms
    slow.refused(0.29, 0.31, retry_after=0.05)  # the 429 came back in 20 ms: gap 0.29 s, at most 2.9/s
    assert slow.rate is not None
    assert slow.rate == pytest.approx(0.85 / (0.05 + 0.29))
    far = RateController()
    far.admitted(1.0, 1.0)  # sent at 0.0
    far.refused(0.99, 1.01, retry_after=0.5)  # at most 0.67/s: below the restart, which wins
    assert far.rate == pytest.approx(1.0)

    tiny = RateController()
    tiny.admitted(0.02, LATENCY)  # sent at 0.0
    tiny.refused(0.0, 0.03, retry_after=1e-9)  # says up to 1e9/s; 2 answers in 30 ms is 67/s
    assert tiny.peak == pytest.approx(2 / 0.03)

    for sent, retry_after, admitted in ((0.03, 1.0, True), (-0.01, 0.02, True), (0.03, 0.02, False)):
        ctl = RateController()
        if admitted:
            ctl.admitted(0.02, LATENCY)
        ctl.refused(sent, 0.05, retry_after=retry_after)
        assert ctl.rate == pytest.approx(1.0)  # the restart


def test_rising_latency_holds_growth_and_a_climb_cuts() -> None:
    """Queueing shows before refusals: latency well above its floor stops growth, far above cuts."""
    ctl = RateController(beta=0.5, window=1.0)
    now = steady(ctl, 0.0, 20.0, 5.0)
    ctl.refused(now, now)
    for _ in range(5):  # the smoothed latency climbs to 0.4 s, well above the 20 ms floor
        now += 0.1
        ctl.admitted(now, 0.4)
    rate = ctl.rate
    assert rate is not None
    for _ in range(10):  # the budget binds, but the latency says the server queues: no growth
        now += 0.1
        ctl.held()
        ctl.admitted(now, 0.4)
    assert ctl.rate == rate
    cuts = ctl.cuts
    for _ in range(10):  # far above: one cut, and none again within 2 windows
        now += 0.1
        ctl.admitted(now, 2.0)
    assert ctl.cuts == cuts + 1
    assert ctl.rate == pytest.approx(rate * 0.5)


def test_the_latency_floor_is_forgotten_after_30_seconds() -> None:
    """A floor from long ago does not make today's normal latency look like queueing."""
    ctl = RateController()
    now = steady(ctl, 0.0, 20.0, 5.0)
    ctl.refused(now, now)
    rate = ctl.rate
    assert rate is not None
    now += 31.0
    for _ in range(30):  # a new normal: 0.3 s, now the floor; growth resumes
        now += 0.1
        ctl.held()
        ctl.admitted(now, 0.3)
    assert ctl.rate > rate


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "refused", "held"]),
            st.floats(min_value=0.0, max_value=5.0),
            st.floats(min_value=0.0, max_value=3.0),
        ),
        max_size=300,
    ),
    st.one_of(st.none(), st.floats(min_value=1.0, max_value=500.0)),
)
def test_the_rate_stays_within_its_bounds(
    events: list[tuple[str, float, float]], ceiling: float | None
) -> None:
    """Whatever the answers, the rate is None only before a refusal, then within [floor, ceiling]."""
    ctl = RateController(ceiling)
    now = 0.0
    refused = False
    for kind, step, latency in events:
        now += step
        if kind == "ok":
            ctl.admitted(now, latency)
        elif kind == "held":
            ctl.held()
        else:
            ctl.refused(now - latency, now)
            refused = True
        if not refused:
            assert ctl.rate is None
        else:
            assert ctl.rate is not None
            assert math.isfinite(ctl.rate)
            assert ctl.rate >= ctl.floor
            assert ceiling is None or ctl.rate <= ceiling


# -- the pace ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_new_rate_applies_to_requests_already_waiting() -> None:
    """Raising the rate releases a request queued at the old, slow pace at once."""
    pace = LearntPace(0.01)  # one request per 100 s
    assert await pace.acquire() == 0.0
    released = anyio.Event()

    async def second() -> None:
        await pace.acquire()
        released.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.lowlevel.checkpoint()
            assert not released.is_set()
            pace.set_rate(10_000.0)
            await released.wait()


@pytest.mark.anyio
async def test_waiting_requests_leave_in_order_and_never_before_their_time() -> None:
    """Requests queued on the pace go one at a time, in the order they came, each at least an
    interval after the one before (on the loop's clock): the millisecond spent yielding instead of
    on a timer never lets one out early."""
    pace = LearntPace(400.0)  # 2.5 ms: the timer and the yielding both take part
    order: list[int] = []
    times: list[float] = []

    async def one(i: int) -> None:
        await pace.acquire()
        times.append(pace._last)  # when it was let go, on the loop's clock
        order.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
                await anyio.lowlevel.checkpoint()  # queued in this order
    assert order == list(range(12))
    assert all(b - a >= pace.interval for a, b in itertools.pairwise(times))


@pytest.mark.anyio
async def test_the_pace_arms_its_timer_shortly_before_the_turn_and_yields_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio's timers fire up to a millisecond late, which at 80 requests/s is a tenth of the rate:
    the pace sets its timer a millisecond before the request is due (a tenth of the interval, when
    that is less) and yields to the loop from there; a request never leaves before it is due."""
    armed: list[float] = []
    move_on_after = anyio.move_on_after

    def recording(delay: float) -> anyio.CancelScope:
        armed.append(delay)
        return move_on_after(delay)

    monkeypatch.setattr(anyio, "move_on_after", recording)
    for rate, early in ((50.0, 0.001), (2000.0, 0.00005)):  # 20 ms; 0.5 ms
        armed.clear()
        pace = LearntPace(rate)
        await pace.acquire()
        due = pace._last + pace.interval
        await pace.acquire()
        assert loop_time() >= due
        assert all(delay <= pace.interval - early for delay in armed)
        if rate == 50.0:
            assert armed


class _StillSelector(selectors.DefaultSelector):
    """Never sleeps: moves a virtual clock forward by the timeout instead, and only then. A loop that
    turns 100,000 times without getting anywhere is spinning: that ends the test."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.turns = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.turns += 1
        if self.turns > 100_000:
            raise RuntimeError("the event loop is spinning: its clock never reaches the next timer")
        if timeout:
            self.now += timeout
        return super().select(0)


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, as time-travelling test loops have: its clock stands still while
    the loop is busy, and jumps to the next timer when it would sleep."""

    def __init__(self) -> None:
        self._still = _StillSelector()
        super().__init__(self._still)

    def time(self) -> float:
        return self._still.now


def _on_virtual_time(main: Callable[[], Awaitable[T]]) -> T:
    loop = _VirtualTimeLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), 60.0))  # virtual seconds
    finally:
        loop.close()


def test_on_a_clock_that_stands_still_while_busy_the_pace_falls_back_to_its_timer() -> None:
    """The last moment before a turn is spent yielding to the loop until the clock reaches it; a loop
    whose clock only moves while it sleeps would never get there (it spun at 100% CPU), so the pace
    sleeps the rest: every request leaves exactly when due."""

    async def main() -> list[float]:
        pace = LearntPace(80.0)
        released = []
        for _ in range(5):
            await pace.acquire()
            released.append(pace._last)
        return released

    released = _on_virtual_time(main)
    assert [b - a for a, b in itertools.pairwise(released)] == pytest.approx([1 / 80] * 4)


def test_a_request_that_comes_as_the_turn_passes_on_reads_the_clock_when_its_turn_comes() -> None:
    """A request that calls acquire() just after one turn ended, before the next waiter has run, sees
    the lock free but still queues: it must read the clock when its turn comes, not use the time it
    came (it slept a whole interval too long, and everyone behind it with it)."""

    async def main() -> list[tuple[str, float]]:
        pace = LearntPace(50.0)  # 20 ms
        log: list[tuple[str, float]] = []

        async def first() -> None:
            for _ in range(3):
                await pace.acquire()
                log.append(("first", pace._last))

        async def second() -> None:
            await asyncio.sleep(0.001)  # virtual time: arrives while "first" waits for its second turn
            await pace.acquire()
            log.append(("second", pace._last))

        await asyncio.gather(first(), second())
        return log

    log = _on_virtual_time(main)
    assert [who for who, _ in log] == ["first", "first", "second", "first"]
    times = [at for _, at in log]
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([0.02] * 3)


@pytest.mark.anyio
async def test_fixed_pacer_ignores_answers() -> None:
    """With adaptive pacing off there is no controller, and answers change nothing."""
    pacer = Pacer(Limits(adaptive=False))
    pacer.answered(0.0, refused=True)
    assert pacer.rate is None
    assert pacer.learnt is None


@pytest.mark.anyio
async def test_slow_start_doubles_the_window_once_a_round_has_come_back() -> None:
    """Adaptive: one request in flight at first; the window doubles each time as many answers as it
    holds have come back (never by one per answer: a round's early answers would each send two more
    before its refusals arrive), up to the cap; the first 429 (a learnt pace) opens it at once. Fixed
    pacing starts at the cap."""
    pacer = Pacer(Limits(max_in_flight=6))
    assert pacer.limiter.total_tokens == 1
    windows = []
    for _ in range(9):
        pacer.answered(0.0, refused=False)
        windows.append(pacer.limiter.total_tokens)
    # 1 answer: 2; 2 more: 4; 4 more: 6 (the cap); then it stays.
    assert windows == [2, 2, 4, 4, 4, 4, 6, 6, 6]
    refused = Pacer(Limits(max_in_flight=8))
    refused.answered(0.0, refused=False)
    refused.answered(0.0, refused=True)
    assert refused.rate is not None
    assert refused.limiter.total_tokens == 8
    assert Pacer(Limits(adaptive=False, max_in_flight=8)).limiter.total_tokens == 8
    lost = Pacer(Limits(max_in_flight=4))
    lost.failed()  # a timeout or a dropped connection counts as an answer
    lost.failed()
    assert lost.limiter.total_tokens == 2
    lost.failed()
    assert lost.limiter.total_tokens == 4
    fixed = Pacer(Limits(adaptive=False, max_in_flight=4))
    fixed.failed()
    assert fixed.limiter.total_tokens == 4


def test_a_clock_that_steps_back_does_not_break_the_measure() -> None:
    """A refusal timed at (or before) the last cut is still a cut, with no division by zero."""
    ctl = RateController()
    now = steady(ctl, 0.0, 20.0, 5.0)
    ctl.refused(now, now)
    now = steady(ctl, now, 17.0, 1.0)
    ctl.refused(ctl.cut_at + 0.5, ctl.cut_at)  # answered "at" the cut
    assert ctl.rate is not None
    assert ctl.floor <= ctl.rate < 20.0


# -- the client ----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("adaptive", "most"), [(True, 4), (False, 8)])
async def test_a_strict_limit_refuses_few_of_the_first_requests(adaptive: bool, most: int) -> None:
    """Against 10 requests/s without a burst, the walk's first 8 requests went out at once and 7 were
    refused; slow start sends one, then two, and the first refusal sets a pace (starting where its
    Retry-After puts the limit, whose fast climb costs one more refusal soon after)."""
    async with (
        FakeAirudder(workflows=24, rate_limit=RateLimit(rate=10.0, burst=1)) as fake,
        fake.client(limits=Limits(adaptive=adaptive), retry=RetryPolicy(attempts=50)) as client,
    ):
        seen = [wf.workflow_id async for wf in client.iter_workflows(page_size=3)]
        first = [r.is_rate_limited for r in fake.requests if r.path == INSTANCELIST_PATH][:8]
    assert len(seen) == 24
    assert sum(first) <= most
    if not adaptive:
        assert sum(first) >= 6


@pytest.mark.anyio
async def test_a_bare_429_cuts_the_pace_instead_of_pausing_everyone() -> None:
    """Adaptive (the default): a 429 without Retry-After slows the pace; nobody sits out a cool-down."""
    events: list[RequestEvent] = []
    async with FakeAirudder(workflows=3) as fake, fake.client(event_hook=events.append) as client:
        for _ in range(6):
            await client.list_workflows()
        fake.inject(Fault.rate_limited(None))
        await client.list_workflows()
        stats = client.stats
        assert client._loop is not None
        assert client._loop.pacer.cooldown_until == 0.0  # nobody is held back but by the pace
    assert stats.rate_limited == 1
    assert stats.pacing_cuts == 1
    assert stats.pacing_rate is not None
    assert events[-1].pacing_rate == stats.pacing_rate
    assert events[0].pacing_rate is None


@pytest.mark.anyio
async def test_the_controller_hears_each_429_with_its_retry_after() -> None:
    """The send loop hands a 429's Retry-After to the pacer (the controller reads the limit from it)."""
    async with FakeAirudder(workflows=3) as fake, fake.client() as client:
        assert client._loop is not None
        pacer = client._loop.pacer
        heard: list[tuple[bool, float | None]] = []
        answered = pacer.answered

        def spy(sent_at: float, *, refused: bool, retry_after: float | None = None) -> None:
            heard.append((refused, retry_after))
            answered(sent_at, refused=refused, retry_after=retry_after)

        pacer.answered = spy  # type: ignore[method-assign]
        fake.inject(Fault.rate_limited(0.25))
        await client.list_workflows()
    assert heard[-2:] == [(True, 0.25), (False, None)]  # after the auth call


@pytest.mark.anyio
async def test_a_bare_429_pauses_everyone_when_adaptive_is_off() -> None:
    """Limits(adaptive=False): no learnt pace; a 429 cools every task down as before."""
    async with (
        FakeAirudder(workflows=3) as fake,
        fake.client(limits=Limits(adaptive=False)) as client,
    ):
        await client.list_workflows()
        fake.inject(Fault.rate_limited(None))
        await client.list_workflows()
        stats = client.stats
        assert client._loop is not None
        assert client._loop.pacer.cooldown_until > 0  # every task is held back until then
    assert stats.pacing_rate is None
    assert stats.pacing_cuts == 0


@pytest.mark.anyio
async def test_a_walk_learns_an_unknown_limit() -> None:
    """
    Against a server allowing 40 requests/s, the default walk learns a pace under it: few of its
    requests are refused (fixed pacing has about 80% refused here; the benchmark measures both).
    """
    async with (
        FakeAirudder(workflows=800, latency=0.005, rate_limit=RateLimit(rate=40.0, burst=4)) as fake,
        fake.client(retry=RetryPolicy(attempts=100)) as client,
    ):
        seen = [wf.workflow_id async for wf in client.iter_workflows(page_size=10)]
        assert len(seen) == len(set(seen)) == 800
        assert fake.rate_limit_stats().refused_share < 0.25
        assert client.stats.pacing_rate is not None
        assert 5.0 < client.stats.pacing_rate < 80.0


@pytest.mark.anyio
async def test_a_bare_429_still_pauses_every_worker_sharing_a_budget() -> None:
    """The learnt pace is this process's own: with a shared budget a bare 429 still cools all down."""
    shared = MemoryCoordination()
    async with (
        FakeAirudder(workflows=3) as fake,
        fake.client(coordination=shared) as one,
        fake.client(coordination=shared) as other,
    ):
        await one.list_workflows()
        fake.inject(Fault.rate_limited(None))
        await one.list_workflows()
        assert one.stats.pacing_cuts == 1  # this process learnt from it
        assert other._loop is not None
        budget = other._loop.pacer.shared
        assert isinstance(budget, MemoryRateBudget)
        assert budget._cooldown_until > 0.0  # set for every client on the budget, not only `one`


def test_long_past_the_peak_without_a_refusal_the_climb_turns_fast() -> None:
    """A limit raised (or lifted) is found in seconds, not by creeping up the cubic for minutes."""
    ctl = RateController(beta=0.8, requests_per_cycle=100.0)
    now = steady(ctl, 0.0, 20.0, 5.0)
    ctl.refused(now, now)
    probe = 100.0 / ctl.peak  # ~5 s back to the peak, then 5 s past it before the climb turns fast
    now = steady(ctl, now, 10.0, 2 * probe - 0.5)
    rate = ctl.rate
    assert rate is not None
    assert ctl.peak < rate < 1.25 * ctl.peak  # on the convex curve, a little above the peak
    steady(ctl, now, 10.0, 2.0)  # past the 5 s: the last ~15 clean answers add 1/s each
    assert ctl.rate is not None
    assert ctl.rate > rate + 10.0


@pytest.mark.anyio
async def test_a_burst_limit_is_met_by_one_round_not_two() -> None:
    """Against 5 requests/s with a burst of 5, the slow start's rounds of 1, 2 and 4 page requests find
    the limit in the third. Its 429s come back 40 ms after its admitted answers here, and until they do
    the walk only refills the two slots those answers freed: 9 page requests go out before the first
    refusal is back, 4 of them refused. Grown by one per answer, each admitted answer sent two more:
    12, 7 of them refused (and every one of those 429s counts against the account)."""
    events: list[RequestEvent] = []
    limit = RateLimit(rate=5.0, burst=5, refusal_latency=0.06)
    async with (
        FakeAirudder(workflows=60, latency=0.02, rate_limit=limit) as fake,
        fake.client(retry=RetryPolicy(attempts=50), event_hook=events.append) as client,
    ):
        seen = [wf.workflow_id async for wf in client.iter_workflows(page_size=3, max_items=36)]
        refused = [r.is_rate_limited for r in fake.requests if r.path == INSTANCELIST_PATH]
    listed = [e for e in events if e.path == INSTANCELIST_PATH]
    first_429 = next(i for i, e in enumerate(listed) if e.kind == "response" and e.status == 429)
    sent = sum(e.kind == "request" for e in listed[:first_429])
    assert len(seen) == 36
    assert sent <= 9
    assert sum(refused[:sent]) <= 4


@pytest.mark.parametrize("slow", [0.12, 0.3, 0.8])
def test_a_mix_of_fast_and_slow_calls_neither_cuts_nor_freezes_the_pace(slow: float) -> None:
    """One fast call in ten among slow ones (a small call among full pages) is not queueing."""
    ctl = RateController(200.0)
    now = 0.0
    for i in range(100):
        now += 0.05
        ctl.admitted(now, 0.02 if i % 10 == 0 else slow)
    ctl.refused(now - 0.01, now)
    after_cut = ctl.rate
    assert after_cut is not None
    n = 0
    while now < 120.0:
        now += 1.0 / ctl.rate
        ctl.held()
        ctl.admitted(now, 0.02 if n % 10 == 0 else slow)
        n += 1
    assert ctl.cuts == 1  # with the floor of single answers: a cut every 4 s, or no growth at all
    assert ctl.rate > 2 * after_cut
