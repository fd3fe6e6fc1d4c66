"""Outcome classification and backoff: a table per rule, no I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.flow.policy import (
    RetryBudget,
    RetryPolicy,
    Verdict,
    backoff_delay,
    classify,
    parse_duration,
    parse_halt,
    retry_delay,
)
from launcher.models import Failure, Reply


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        (Reply(204, 0.01), Verdict.STARTED),
        (Reply(200, 0.01), Verdict.STARTED),
        (Reply(400, 0.01, error_code="DLF.0100"), Verdict.PERMANENT),
        (Reply(400, 0.01, error_code="DLF.30100"), Verdict.PERMANENT),
        (Reply(400, 0.01, error_code="DLF.3051"), Verdict.PERMANENT),
        (Reply(400, 0.01), Verdict.PERMANENT),
        (Reply(404, 0.01, error_code="APIGW.0101"), Verdict.PERMANENT),
        (Reply(401, 0.01, error_code="APIGW.0307"), Verdict.REFRESH_AUTH),
        (Reply(401, 0.01, error_code="APIG.0307"), Verdict.REFRESH_AUTH),
        (Reply(401, 0.01, error_code="APIGW.0301"), Verdict.AUTH_FAILED),
        (Reply(401, 0.01, error_code="APIG.0301"), Verdict.AUTH_FAILED),
        (Reply(401, 0.01), Verdict.AUTH_FAILED),
        (Reply(403, 0.01, error_code="APIGW.0302"), Verdict.AUTH_FAILED),
        (Reply(429, 0.01, error_code="APIGW.0308"), Verdict.THROTTLED),
        (Reply(429, 0.01, error_code="APIG.0308"), Verdict.THROTTLED),
        (Reply(429, 0.01, retry_after=3.0), Verdict.THROTTLED),
        # A 5xx does not prove the call was refused: check before any resend...
        (Reply(500, 0.01), Verdict.AMBIGUOUS),
        (Reply(500, 0.01, error_code="DLF.0000"), Verdict.AMBIGUOUS),
        (Reply(502, 0.01), Verdict.AMBIGUOUS),
        (Reply(502, 0.01, error_code="APIGW.0202"), Verdict.AMBIGUOUS),
        (Reply(503, 0.01), Verdict.AMBIGUOUS),
        (Reply(503, 0.01, error_code="APIGW.0203"), Verdict.AMBIGUOUS),
        (Reply(504, 0.01, error_code="APIGW.0203"), Verdict.AMBIGUOUS),
        (Reply(504, 0.01, error_code="APIG.0203"), Verdict.AMBIGUOUS),
        # ...unless its code shows the gateway refused it before forwarding.
        (Reply(500, 0.01, error_code="APIGW.0103"), Verdict.TRANSIENT),
        (Reply(500, 0.01, error_code="APIG.0103"), Verdict.TRANSIENT),
        (Reply(500, 0.01, error_code="APIGW.0104"), Verdict.TRANSIENT),
        (Reply(500, 0.01, error_code="APIG.0105"), Verdict.TRANSIENT),
        (Reply(None, 0.01, failure=Failure.CONNECT), Verdict.TRANSIENT),
        (Reply(None, 0.01, failure=Failure.TLS, detail="x"), Verdict.TLS_FAILED),
        (Reply(None, 1.0, failure=Failure.TIMEOUT), Verdict.AMBIGUOUS),
        (Reply(None, 0.01, failure=Failure.DISCONNECT), Verdict.AMBIGUOUS),
        (Reply(302, 0.01), Verdict.PERMANENT),
        (Reply(100, 0.01), Verdict.PERMANENT),
    ],
)
def test_classify(reply: Reply, verdict: Verdict) -> None:
    assert classify(reply) is verdict


@given(st.integers(min_value=100, max_value=599))
def test_every_status_has_a_verdict(status: int) -> None:
    assert isinstance(classify(Reply(status, 0.0)), Verdict)


@given(
    status=st.integers(min_value=500, max_value=599),
    code=st.none() | st.text(max_size=12) | st.sampled_from(["APIGW.0202", "DLF.0000"]),
)
def test_no_5xx_allows_a_blind_resend_unless_refused_before_forwarding(
    status: int, code: str | None
) -> None:
    # The duplicate-run guard: only the documented refusals are plain retries.
    refused = code in {
        "APIGW.0103",
        "APIGW.0104",
        "APIGW.0105",
        "APIG.0103",
        "APIG.0104",
        "APIG.0105",
    }
    expected = Verdict.TRANSIENT if refused else Verdict.AMBIGUOUS
    assert classify(Reply(status, 0.0, error_code=code)) is expected


@given(
    attempt=st.integers(min_value=1, max_value=200),
    base=st.floats(min_value=0.001, max_value=5.0),
    cap=st.floats(min_value=0.001, max_value=60.0),
    seed=st.integers(),
)
def test_backoff_is_full_jitter_within_the_cap(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2 ** (attempt - 1))


def test_backoff_grows_exponentially_on_average() -> None:
    rand = random.Random(7)
    means = [sum(backoff_delay(n, 0.1, 100.0, rand) for _ in range(2000)) / 2000 for n in (1, 4)]
    assert means[0] == pytest.approx(0.05, rel=0.1)
    assert means[1] == pytest.approx(0.4, rel=0.1)


def test_throttled_retry_honours_retry_after_but_not_beyond_the_cap() -> None:
    policy = RetryPolicy(cap=10.0, throttle_base=0.001)
    rand = random.Random(1)
    honoured = retry_delay(Verdict.THROTTLED, Reply(429, 0.0, retry_after=4.0), 1, policy, rand)
    capped = retry_delay(Verdict.THROTTLED, Reply(429, 0.0, retry_after=3600.0), 1, policy, rand)
    assert honoured >= 4.0
    assert capped == 10.0


def test_token_refresh_retries_at_once() -> None:
    reply = Reply(401, 0.0, error_code="APIGW.0307")
    assert retry_delay(Verdict.REFRESH_AUTH, reply, 1, RetryPolicy(), random.Random()) == 0.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800.0), ("90s", 90.0), ("1h30m", 5400.0), ("250ms", 0.25), ("45", 45.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5s", "0s"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "failed", "settled", "total", "tripped"),
    [
        ("fail=5", 4, 100, 1000, False),
        ("fail=5", 5, 100, 1000, True),
        ("fail=10%", 2, 10, 1000, False),  # 20% but too few settled to judge
        ("fail=10%", 3, 20, 1000, True),
        ("fail=10%", 100, 5000, 1000, True),  # 10% of the whole manifest
        ("5%", 1, 100, 1000, False),
    ],
)
def test_halt_rules(text: str, failed: int, settled: int, total: int, tripped: bool) -> None:
    assert parse_halt(text).tripped(failed, settled, total) is tripped


@pytest.mark.parametrize("text", ["fail=0", "fail=0%", "fail=101%", "fail=x", "nope"])
def test_bad_halt_rules(text: str) -> None:
    with pytest.raises(ValueError, match="fail=N"):
        parse_halt(text)


def test_retry_budget_spends_refunds_and_runs_dry() -> None:
    budget = RetryBudget(capacity=10, retry_cost=5, timeout_cost=10)
    assert budget.try_spend(Verdict.TRANSIENT)
    assert budget.try_spend(Verdict.TRANSIENT)
    assert not budget.try_spend(Verdict.TRANSIENT)  # 0 tokens left
    assert budget.try_spend(Verdict.THROTTLED)  # throttles are free
    for _ in range(10):
        budget.refund()
    assert budget.tokens == 10
    assert budget.try_spend(Verdict.AMBIGUOUS)
    assert not budget.try_spend(Verdict.AMBIGUOUS)
    assert budget.exhausted == 2
