"""The wait loop's policy: poll backoff (start 2 s, cap 60 s, jittered) and what statuses mean."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.flow.waiting import (
    FINAL,
    POLL_CAP,
    POLL_START,
    SUCCEEDED,
    is_final,
    poll_delay,
    run_failed,
)


class Fixed(random.Random):
    """A Random whose `random()` is always `value`: the jitter's two ends."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("polls", "longest", "shortest"),
    [
        (0, 2.0, 1.6),
        (1, 4.0, 3.2),
        (2, 8.0, 6.4),
        (3, 16.0, 12.8),
        (4, 32.0, 25.6),
        (5, 60.0, 48.0),  # 64 capped
        (6, 60.0, 48.0),
        (1000, 60.0, 48.0),  # no overflow
    ],
)
def test_poll_delay_table(polls: int, longest: float, shortest: float) -> None:
    assert poll_delay(polls, Fixed(0.0)) == pytest.approx(longest)
    assert poll_delay(polls, Fixed(1.0)) == pytest.approx(shortest)


@given(st.integers(min_value=0, max_value=10_000), st.integers())
def test_poll_delay_bounds(polls: int, seed: int) -> None:
    delay = poll_delay(polls, random.Random(seed))
    assert POLL_START * 0.8 <= delay <= POLL_CAP


def test_jitter_spreads_polls() -> None:
    rand = random.Random(1)
    assert len({round(poll_delay(0, rand), 6) for _ in range(50)}) > 40


@pytest.mark.parametrize(
    ("status", "final", "failed"),
    [
        ("success", True, False),
        ("forceSuccess", True, False),
        ("ignoreSuccess", True, False),
        ("fail", True, True),
        ("running-exception", True, True),
        ("manual-stop", True, True),
        ("skip-by-depend", True, True),
        ("running", False, True),
        ("waiting", False, True),
        ("pause", False, True),
        ("freeze", False, True),
        ("waiting-confirm", False, True),
        ("unknown", False, True),
        (None, False, True),
    ],
)
def test_status_meanings(status: str | None, final: bool, failed: bool) -> None:
    assert is_final(status) is final
    assert run_failed(status) is failed


def test_the_sdk_final_statuses() -> None:
    """The SDK's list (huaweicloudsdkdgc ShowJobInstanceResponse.status), minus the waiting ones."""
    sdk = {
        "waiting", "running", "success", "forceSuccess", "ignoreSuccess", "freeze",
        "skip-by-depend", "waiting-confirm", "fail", "running-exception", "pause", "manual-stop",
    }  # fmt: skip
    assert sdk - FINAL == {"waiting", "running", "freeze", "waiting-confirm", "pause"}
    assert SUCCEEDED < FINAL
