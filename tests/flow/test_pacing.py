"""Rate parsing and the evenly paced token bucket, with no clock and no I/O."""

from __future__ import annotations

import itertools

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.flow.pacing import Pacer, TokenBucket, format_rate, parse_rate


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


def test_a_lower_rate_forgets_claimed_slots_and_moves_the_generation() -> None:
    bucket = TokenBucket(100.0)
    for _ in range(10):
        bucket.reserve(0.0)  # slots claimed up to t=0.1
    bucket.set_rate(10.0, 0.0)
    assert bucket.generation == 1
    assert bucket.reserve(0.0) == 0.0  # the new schedule starts now
    assert bucket.reserve(0.0) == pytest.approx(0.1)


def test_a_higher_rate_keeps_the_claimed_backlog_respaced() -> None:
    bucket = TokenBucket(10.0)
    for _ in range(10):
        bucket.reserve(0.0)  # slots claimed up to t=1.0
    bucket.set_rate(100.0, 0.0)
    assert bucket.generation == 0
    assert bucket.reserve(0.0) == pytest.approx(0.1)  # ten claimed slots, now 10 ms apart


@pytest.mark.anyio
async def test_a_waiter_holding_an_old_slot_claims_a_new_one_after_a_cut() -> None:
    """After a cut, callers that had slots at the old rate send at the new rate."""
    clock = [0.0]
    bucket = TokenBucket(1000.0)
    pacer = Pacer(bucket, clock=lambda: clock[0])
    for _ in range(50):
        bucket.reserve(0.0)  # 50 slots claimed at 1000/s, up to t=0.05
    bucket.set_rate(10.0, 0.0)  # a 429: cut to 10/s
    clock[0] = 0.001
    with anyio.fail_after(1):
        await pacer.wait()  # the first caller goes at once under the new schedule
    assert bucket.reserve(0.001) == pytest.approx(0.1)


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


@pytest.mark.anyio
async def test_a_slot_missed_by_a_stall_is_claimed_again_not_burst() -> None:
    """After the loop stalled past a waiter's slot, it claims a fresh slot after `now`."""
    clock = [0.0]
    bucket = TokenBucket(100.0)  # 10 ms apart
    pacer = Pacer(bucket, clock=lambda: clock[0])
    for _ in range(3):
        bucket.reserve(0.0)  # slots at 0, 10 and 20 ms are taken; ours will be at 30 ms

    async def stall() -> None:
        await anyio.sleep(0.005)
        clock[0] = 1.0  # a 1 s stall: our 30 ms slot is long gone

    async with anyio.create_task_group() as tg:
        tg.start_soon(stall)
        with anyio.fail_after(2):
            await pacer.wait()
    # The stale slot was replaced by one at `now` (1.0 s), so the next is 10 ms later,
    # not "immediately, like every other stale sleeper".
    assert bucket.reserve(1.0) == pytest.approx(0.01)
