"""Rate parsing and the evenly paced token bucket, with no clock and no I/O."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.pacing import TokenBucket, format_rate, parse_rate


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("30/s", 30.0),
        ("2000/s", 2000.0),
        ("120/m", 2.0),
        ("3600/h", 1.0),
        ("0", 0.0),
        ("45", 45.0),
        ("2.5/s", 2.5),
        (" 30 / sec ", 30.0),
        ("90/min", 1.5),
    ],
)
def test_parse_rate_accepts_the_documented_forms(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "fast", "30/d", "-5/s", "30/s/s", "1e3/s", "nan"])
def test_parse_rate_rejects_anything_else_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="30/s"):
        parse_rate(text)


def test_format_rate_reads_back() -> None:
    assert format_rate(30.0) == "30/s"
    assert format_rate(0.0) == "unlimited"
    assert format_rate(0.5) == "30/m"


def test_unlimited_bucket_never_waits() -> None:
    bucket = TokenBucket(0.0)
    assert all(bucket.reserve(0.0) == 0.0 for _ in range(1000))


def test_concurrent_callers_are_spread_evenly() -> None:
    """64 callers arriving at once at 500/s leave 2 ms apart, not in a burst."""
    bucket = TokenBucket(500.0)
    waits = [bucket.reserve(10.0) for _ in range(64)]
    assert waits[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert all(gap == pytest.approx(0.002) for gap in gaps)


def test_burst_lets_that_many_go_at_once_after_idling() -> None:
    bucket = TokenBucket(10.0, burst=5)
    waits = [bucket.reserve(100.0) for _ in range(7)]
    assert waits[:5] == [0.0] * 5
    assert waits[5] == pytest.approx(0.1)
    assert waits[6] == pytest.approx(0.2)


def test_idle_time_does_not_bank_credit_beyond_burst() -> None:
    bucket = TokenBucket(10.0)
    bucket.reserve(0.0)
    # After a long idle spell, one request goes at once, the next waits a full interval.
    assert bucket.reserve(1000.0) == 0.0
    assert bucket.reserve(1000.0) == pytest.approx(0.1)


def test_raising_the_rate_shortens_the_queue_at_once() -> None:
    bucket = TokenBucket(10.0)
    for _ in range(10):
        bucket.reserve(0.0)  # slots claimed up to t=1.0
    bucket.set_rate(100.0, 0.0)
    assert bucket.reserve(0.0) == pytest.approx(0.1)


@given(
    rate=st.floats(min_value=0.5, max_value=10_000.0),
    arrivals=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=2, max_size=200),
)
def test_sends_never_exceed_the_rate(rate: float, arrivals: list[float]) -> None:
    """Whatever the arrivals, consecutive send times are at least 1/rate apart."""
    bucket = TokenBucket(rate)
    sends = [now + bucket.reserve(now) for now in sorted(arrivals)]
    interval = 1.0 / rate
    for earlier, later in itertools.pairwise(sends):
        assert later - earlier >= interval * (1 - 1e-9)
