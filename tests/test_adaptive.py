"""Adaptive throttling as pure functions of time: cuts, CUBIC recovery, the ceiling,
and a simulated run against a server limit the launcher is not told."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.adaptive import BETA, MIN_RATE, AdaptiveRate, RateMeter
from launcher.pacing import TokenBucket


def feed(meter: RateMeter, rate: float, start: float, seconds: float) -> float:
    t = start
    while t < start + seconds:
        meter.add(t)
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


def test_no_throttle_means_the_ceiling_applies() -> None:
    flow = AdaptiveRate(ceiling=500.0)
    for n in range(100):
        flow.on_accept(n * 0.01)
    assert flow.rate == 500.0
    assert AdaptiveRate(ceiling=0.0).rate == 0.0  # unlimited


def test_a_throttle_cuts_to_beta_times_the_measured_rate() -> None:
    flow = AdaptiveRate(ceiling=0.0)
    t = 0.0
    for _ in range(2000):  # 400/s sent, 300/s accepted, for 5 s
        flow.on_send(t)
        t += 1 / 400
    t2 = 0.0
    for _ in range(1500):
        flow.on_accept(t2)
        t2 += 1 / 300
    assert flow.on_throttle(5.0, 4.999)
    assert flow.rate == pytest.approx(300.0 * BETA, rel=0.05)


def test_throttles_for_requests_sent_before_the_cut_do_not_cut_again() -> None:
    flow = AdaptiveRate(ceiling=1000.0)
    assert flow.on_throttle(now=1.0, sent_at=0.99)
    rate = flow.rate
    assert not flow.on_throttle(now=1.001, sent_at=0.995)  # was already in flight
    assert flow.rate == rate
    assert flow.on_throttle(now=1.2, sent_at=1.1)  # sent under the new rate: a new signal
    assert flow.rate < rate


def test_recovery_follows_the_cubic_curve_back_to_the_last_maximum() -> None:
    flow = AdaptiveRate(ceiling=1000.0)
    t = 0.0
    for _ in range(3000):
        flow.on_send(t)
        flow.on_accept(t)
        t += 1 / 300
    assert flow.on_throttle(t, t)
    cut_at = t
    window = ((300.0 * (1 - BETA)) / 0.4) ** (1 / 3)
    samples = {}
    while t < cut_at + window + 2.0:
        t += 1 / 300
        flow.on_send(t)
        flow.on_accept(t)
        samples[round(t - cut_at, 2)] = flow.rate
    assert samples[round(window / 2, 2)] < 300.0  # concave climb...
    assert flow.rate == pytest.approx(300.0 + 0.4 * 2.0**3, rel=0.05)  # ...then convex probing


@given(
    ceiling=st.floats(min_value=1.0, max_value=5000.0),
    events=st.lists(
        st.tuples(st.sampled_from(["send", "accept", "throttle"]), st.floats(0.0, 0.5)),
        max_size=300,
    ),
)
def test_the_ceiling_is_never_exceeded_and_the_floor_holds(
    ceiling: float, events: list[tuple[str, float]]
) -> None:
    flow = AdaptiveRate(ceiling=ceiling)
    t = 0.0
    for kind, step in events:
        t += step
        if kind == "send":
            flow.on_send(t)
        elif kind == "accept":
            flow.on_accept(t)
        else:
            flow.on_throttle(t, t - step / 2)
        assert flow.rate <= ceiling
        assert flow.rate >= min(MIN_RATE, ceiling)


def simulate(limit: float, seconds: float, ceiling: float = 0.0) -> tuple[int, int]:
    """Paced sends with adaptive rate against a token-bucket server; returns (ok, throttled)."""
    flow = AdaptiveRate(ceiling=ceiling)
    pacer = TokenBucket(flow.rate)
    server_tokens, server_burst, server_t = limit / 10, limit / 10, 0.0
    rtt, max_send_rate = 0.002, 5000.0
    answers: list[tuple[float, float, bool]] = []
    ok = throttled = 0
    t = 0.0
    while t < seconds:
        t = max(t + 1 / max_send_rate, t + pacer.reserve(t))
        while answers and answers[0][0] <= t:
            at, sent, accepted = heapq.heappop(answers)
            if accepted:
                flow.on_accept(at)
            elif flow.on_throttle(at, sent):
                pacer.set_rate(flow.rate, at)
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


@pytest.mark.parametrize("limit", [30.0, 300.0, 2000.0])
def test_goodput_reaches_90_percent_of_an_unknown_limit_with_few_throttles(limit: float) -> None:
    seconds = 60.0
    ok, throttled = simulate(limit, seconds)
    assert ok / seconds >= 0.9 * limit
    assert throttled / (ok + throttled) < 0.05


def test_a_ceiling_below_the_limit_is_never_exceeded_and_never_throttled() -> None:
    ok, throttled = simulate(limit=300.0, seconds=20.0, ceiling=250.0)
    assert throttled == 0
    assert ok / 20.0 == pytest.approx(250.0, rel=0.01)
