"""Adaptive throttling as pure functions of time: cuts, CUBIC recovery, the ceiling,
and a simulated run against a server limit the launcher is not told."""

from __future__ import annotations

import heapq
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.flow.adaptive import (
    BETA,
    BUCKET,
    MIN_RATE,
    MIN_SAMPLE,
    RECENT,
    SMOOTH,
    AdaptiveRate,
    RateMeter,
)
from launcher.flow.pacing import TokenBucket


def feed(meter: RateMeter, rate: float, start: float, seconds: float) -> float:
    t = start
    while t < start + seconds:
        meter.add(t)
        t += 1.0 / rate
    return t


def steady(flow: AdaptiveRate, rate: float, seconds: float, start: float = 0.0) -> float:
    """Send and get accepted at `rate` for `seconds`; returns the time reached."""
    t = start
    while t < start + seconds:
        flow.on_send(t)
        flow.on_answer(t, t, throttled=False)
        t += 1.0 / rate
    return t


def test_meter_measures_a_steady_rate() -> None:
    meter = RateMeter()
    end = feed(meter, 200.0, 0.0, 5.0)
    assert meter.rate_at(end) == pytest.approx(200.0, rel=0.02)


def test_meter_estimates_before_its_first_bucket() -> None:
    meter = RateMeter()
    end = feed(meter, 1000.0, 10.01, 0.02)
    assert meter.rate_at(end) == pytest.approx(1000.0, rel=0.1)


def test_meter_is_right_when_a_run_starts_just_before_a_bucket_boundary() -> None:
    meter = RateMeter()
    end = feed(meter, 400.0, 10.45, 0.07)  # crosses the 10.5 s boundary after 50 ms
    assert meter.rate_at(end) == pytest.approx(400.0, rel=0.1)


def test_no_throttle_means_the_ceiling_applies() -> None:
    flow = AdaptiveRate(ceiling=500.0)
    steady(flow, 100.0, 1.0)
    assert flow.rate == 500.0
    assert AdaptiveRate(ceiling=0.0).rate == 0.0  # unlimited


BURST = 4
ACCEPTED = 1 - BURST / RECENT  # the accepted share of the last RECENT answers after a burst


def throttle_burst(flow: AdaptiveRate, t: float) -> bool:
    """BURST 429s in a row at time t; True when one of them cut the rate."""
    cut = False
    for _ in range(BURST):
        cut = flow.on_answer(t, t, throttled=True) or cut
    return cut


def test_near_the_limit_a_throttle_cuts_to_beta_times_the_send_rate() -> None:
    flow = AdaptiveRate(ceiling=0.0)
    t = steady(flow, 300.0, 5.0)
    assert throttle_burst(flow, t)
    assert flow.rate == pytest.approx(300.0 * ACCEPTED * BETA, rel=0.02)


def test_a_stray_429_among_many_accepted_answers_is_noise() -> None:
    flow = AdaptiveRate(ceiling=0.0)
    t = steady(flow, 300.0, 5.0)
    assert not flow.on_answer(t, t, throttled=True)  # 1 in the last 64: below THROTTLE_SIGNAL
    assert not flow.throttled


def test_far_above_the_limit_the_cut_lands_near_what_was_accepted() -> None:
    """Sending 3000/s to a 300/s service: the first cut lands near β·300, not at β·3000."""
    flow = AdaptiveRate(ceiling=0.0)
    t = 0.0
    n = 0
    while flow.cuts == 0:
        flow.on_send(t)
        flow.on_answer(t, t, throttled=n % 10 != 0)
        t += 1 / 3000
        n += 1
    # Within the sampling error of a 16-answer sample; far from β·3000 = 2100.
    assert 150.0 < flow.rate < 400.0


def test_one_congestion_episode_cuts_once() -> None:
    flow = AdaptiveRate(ceiling=1000.0)
    t = steady(flow, 500.0, 2.0)
    assert throttle_burst(flow, t)
    rate = flow.rate
    # In flight before the cut: ignored. Sent after it: counted, but too few to cut again.
    assert not flow.on_answer(t + 0.001, t - 0.001, throttled=True)
    for k in range(MIN_SAMPLE - 1):
        assert not flow.on_answer(t + 0.01 + k * 0.001, t + 0.005, throttled=True)
    assert flow.rate == rate
    assert flow.on_answer(t + 0.1, t + 0.05, throttled=True)  # a full sample: a new signal
    assert flow.rate < rate


def test_recovery_follows_the_cubic_curve_back_to_the_last_maximum() -> None:
    flow = AdaptiveRate(ceiling=1000.0)
    t = steady(flow, 300.0, 10.0)
    assert throttle_burst(flow, t)
    cut_at = t
    last_max = 300.0 * ACCEPTED
    window = ((last_max * (1 - BETA)) / 0.4) ** (1 / 3)
    half_way = None
    while t < cut_at + window + 2.0:
        t += 1 / 300
        flow.on_send(t)
        flow.on_answer(t, t, throttled=False)
        if half_way is None and t - cut_at >= window / 2:
            half_way = flow.rate
    assert half_way is not None
    assert last_max * BETA < half_way < last_max  # a concave climb...
    assert flow.rate == pytest.approx(last_max + 0.4 * 2.0**3, rel=0.02)  # ...then convex probing


@given(
    ceiling=st.floats(min_value=1.0, max_value=5000.0),
    events=st.lists(st.tuples(st.booleans(), st.floats(0.0, 0.5)), max_size=300),
)
def test_the_ceiling_is_never_exceeded_and_the_floor_holds(
    ceiling: float, events: list[tuple[bool, float]]
) -> None:
    flow = AdaptiveRate(ceiling=ceiling)
    t = 0.0
    for throttled, step in events:
        t += step
        flow.on_send(t)
        flow.on_answer(t, t - step / 2, throttled)
        assert flow.rate <= ceiling
        assert flow.rate >= min(MIN_RATE, ceiling)


def simulate(limit: float, seconds: float, ceiling: float = 0.0) -> tuple[int, int]:
    """Paced sends with adaptive rate against a token-bucket server; returns (ok, throttled).

    The client is bound by 64 requests in flight, a 2 ms round trip and 200 µs of CPU
    per send, as on loopback.
    """
    flow = AdaptiveRate(ceiling=ceiling)
    pacer = TokenBucket(flow.rate)
    server_burst = max(1.0, limit / 20)
    server_tokens, server_t = server_burst, 0.0
    rtt, in_flight_cap = 0.002, 64
    answers: list[tuple[float, float, bool]] = []
    ok = throttled = 0
    t = 0.0
    while t < seconds:
        t = t + max(pacer.reserve(t), 0.0002)
        if len(answers) >= in_flight_cap:
            t = max(t, answers[0][0])
        while answers and answers[0][0] <= t:
            at, sent, accepted = heapq.heappop(answers)
            flow.on_answer(at, sent, throttled=not accepted)
            if flow.throttled and pacer.rate != flow.rate:
                pacer.set_rate(flow.rate, at)
        flow.on_send(t)
        server_tokens = min(server_burst, server_tokens + (t - server_t) * limit)
        server_t = t
        accepted = server_tokens >= 1.0
        if accepted:
            server_tokens -= 1.0
            ok += 1
        else:
            throttled += 1
        heapq.heappush(answers, (t + rtt, t, accepted))
    return ok, throttled


@pytest.mark.parametrize(
    ("limit", "most_throttled"),
    [
        # At 30/s the unpaced start (64 requests in flight before the first 429
        # comes back) is ~100 throttled requests: 5.6% of a minute's 1,800.
        (30.0, 0.06),
        (300.0, 0.05),
        (2000.0, 0.05),
    ],
)
def test_goodput_reaches_90_percent_of_an_unknown_limit_with_few_throttles(
    limit: float, most_throttled: float
) -> None:
    seconds = 60.0
    ok, throttled = simulate(limit, seconds)
    assert ok / seconds >= 0.9 * limit
    assert throttled / (ok + throttled) < most_throttled


def test_a_ceiling_below_the_limit_is_never_exceeded_and_never_throttled() -> None:
    ok, throttled = simulate(limit=300.0, seconds=20.0, ceiling=250.0)
    assert throttled == 0
    assert ok / 20.0 == pytest.approx(250.0, rel=0.01)


def _reference_meter(times: list[float]) -> tuple[float, float]:
    """(smoothed, early estimate) by RateMeter's rule, with the bucket worked out from
    every event's time (RateMeter skips that for all but one event per bucket)."""
    smoothed, first, bucket_start, count, total = 0.0, -1.0, -1.0, 0, 0
    for now in times:
        bucket = math.floor(now / BUCKET) * BUCKET
        if first < 0:
            first, bucket_start = now, bucket
        count += 1
        total += 1
        if bucket > bucket_start:
            current = count / max(bucket - max(bucket_start, first), 1e-3)
            smoothed = current if smoothed == 0.0 else current * SMOOTH + smoothed * (1 - SMOOTH)
            count, bucket_start = 0, bucket
    early = total / (times[-1] - first) if total >= 2 and times[-1] > first else 0.0
    return smoothed, early


@given(
    start=st.floats(0.0, 1e6),
    gaps=st.lists(
        st.one_of(st.floats(0.0, 3.0), st.sampled_from([0.0, 0.25, 0.5, 1.0])),
        min_size=1,
        max_size=200,
    ),
)
def test_meter_matches_its_rule_evaluated_at_every_event(start: float, gaps: list[float]) -> None:
    times = list(itertools.accumulate(gaps, initial=start))
    meter = RateMeter()
    for now in times:
        meter.add(now)
    smoothed, early = _reference_meter(times)
    assert meter.smoothed == smoothed
    assert meter.rate_at(times[-1]) == (smoothed if smoothed > 0.0 else early)
