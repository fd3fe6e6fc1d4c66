"""Retry policy as pure functions: classify an attempt's reply, decide what comes next.

Nothing here does I/O or reads a clock, so every rule is covered by a table of
cases in tests/flow/test_policy.py.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from launcher.models import Failure, Reply, Verdict

__all__ = [
    "STARTED",
    "HaltRule",
    "RetryBudget",
    "RetryPolicy",
    "Verdict",
    "backoff_delay",
    "classify",
    "parse_duration",
    "parse_halt",
    "retry_delay",
]


# The verdict of nearly every reply, read per request here, by the dispatcher and by
# the load tester: an Enum member read off its class costs several times a module
# global in Python 3.11 (benchmarks/RESULTS.md). The only enum member kept as a
# global, and only here; tests/test_models.py checks it is the member.
STARTED = Verdict.STARTED

# The API gateway names its errors APIGW.xxxx (signing guide) or APIG.xxxx (APIG's
# own table); the same number means the same error under either prefix.
_TOKEN_MUST_BE_UPDATED = frozenset({"APIGW.0307", "APIG.0307"})
# 5xx answers whose code proves the gateway refused the call before forwarding it to
# DLF (APIG error-code table: .0103 "The backend does not exist", .0104 "The plug-ins do
# not exist", .0105 "The backend configurations do not exist"): the job was not touched.
# Not here on purpose: .0202 "Backend unavailable" and .0203 "Backend timeout" (the call
# may have reached DLF, e.g. a 504 while DLF did the work), and every DLF.* code.
_REFUSED_BEFORE_FORWARDING = frozenset(
    prefix + number for prefix in ("APIGW.", "APIG.") for number in ("0103", "0104", "0105")
)


def classify(reply: Reply) -> Verdict:
    """Map a reply (HTTP answer or transport failure) to a verdict.

    | reply                                             | verdict      | then            |
    |---------------------------------------------------|--------------|-----------------|
    | 2xx                                               | STARTED      | done            |
    | 401 APIGW.0307 / APIG.0307 (token expired)        | REFRESH_AUTH | renew, resend   |
    | other 401, any 403                                | AUTH_FAILED  | stop the run    |
    | 429 (APIGW.0308 throttled, or any 429)            | THROTTLED    | back off, resend|
    | 5xx APIGW/APIG.0103/0104/0105 (not forwarded)     | TRANSIENT    | back off, resend|
    | any other 5xx (502, 503, 504 after the write...)  | AMBIGUOUS    | check, then     |
    | other 4xx (DLF.* codes, 404), 1xx, 3xx            | PERMANENT    | failed          |
    | connect failure (nothing written)                 | TRANSIENT    | back off, resend|
    | TLS certificate / host name not verified          | TLS_FAILED   | stop the run    |
    | timeout, reset after writing                      | AMBIGUOUS    | check, then     |

    "check, then": before any resend the dispatcher asks the service whether the
    call took effect: the job list's status for `start` and `stop` (SCHEDULING /
    STOPPED), the instance list for `run-immediate` (an instance since the attempt);
    only a check that proves the call did not take effect allows a resend. A 5xx
    answer does not prove that: a gateway's 502/504 can come back while DLF did the
    work, and a second run-immediate is a second run of the job.
    """
    status = reply.status
    if status is None:
        failure = reply.failure
        if failure is Failure.CONNECT:
            return Verdict.TRANSIENT
        return Verdict.TLS_FAILED if failure is Failure.TLS else Verdict.AMBIGUOUS
    if 200 <= status < 300:
        return STARTED
    if status == 429:
        return Verdict.THROTTLED
    if status >= 500:
        if reply.error_code in _REFUSED_BEFORE_FORWARDING:
            return Verdict.TRANSIENT
        return Verdict.AMBIGUOUS
    if status == 401:
        if reply.error_code in _TOKEN_MUST_BE_UPDATED:
            return Verdict.REFRESH_AUTH
        return Verdict.AUTH_FAILED
    if status == 403:
        return Verdict.AUTH_FAILED
    return Verdict.PERMANENT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry.

    `base` and `cap` bound exponential backoff with full jitter; throttled
    attempts start from `throttle_base` instead, because Huawei advises waiting
    2-5 s after a 429 and hammering a throttled key only extends the throttling.
    """

    max_attempts: int = 5
    base: float = 0.1
    cap: float = 20.0
    throttle_base: float = 1.0
    throttle_cap: float = 5.0  # Huawei advises retrying a throttled call after 2 to 5 s


def backoff_delay(attempt: int, base: float, cap: float, rand: random.Random) -> float:
    """Full-jitter exponential backoff after failed attempt number `attempt` (1-based).

    Uniform in [0, min(cap, base * 2**(attempt-1))]: the AWS "full jitter"
    scheme, which spreads retries of many clients apart instead of syncing them.
    """
    ceiling = min(cap, base * (2.0 ** min(attempt - 1, 62)))
    return rand.uniform(0.0, ceiling)


def retry_delay(
    verdict: Verdict, reply: Reply, attempt: int, policy: RetryPolicy, rand: random.Random
) -> float:
    """Seconds to wait before the attempt after `attempt`, for a retryable verdict.

    A throttled reply with Retry-After waits at least that long (capped by
    `policy.cap`, so a hostile header cannot park the run); a token refresh
    retries at once.
    """
    if verdict is Verdict.REFRESH_AUTH:
        return 0.0
    if verdict is Verdict.THROTTLED:
        # Capped lower than other retries: the (adaptive) pacer already spaces
        # the retries out, and a long sleep only leaves a tail at the end of the run.
        delay = backoff_delay(attempt, policy.throttle_base, policy.throttle_cap, rand)
        if reply.retry_after is not None:
            delay = max(delay, min(reply.retry_after, policy.cap))
        return delay
    return backoff_delay(attempt, policy.base, policy.cap, rand)


@dataclass(slots=True)
class RetryBudget:
    """A run-wide retry quota, like the AWS SDK standard mode's, so a sick service is not hammered.

    Each retry of a 5xx or refused connection costs `retry_cost` tokens, each
    retry after a lost answer `timeout_cost`; each first-attempt success gives
    one back, up to `capacity`. When the tokens run out, failing jobs are not
    retried until successes refill the quota. Throttled retries are free: the
    adaptive rate already slows every sender down, and a 429 is the service
    asking for exactly that.
    """

    capacity: int = 500
    retry_cost: int = 5
    timeout_cost: int = 10
    tokens: int = -1  # -1: start full
    exhausted: int = 0  # retries refused so far

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def try_spend(self, verdict: Verdict) -> bool:
        """Pay for one retry after `verdict`; False (and nothing paid) when the quota is spent."""
        if verdict in (Verdict.THROTTLED, Verdict.REFRESH_AUTH):
            return True
        cost = self.timeout_cost if verdict is Verdict.AMBIGUOUS else self.retry_cost
        if self.tokens < cost:
            self.exhausted += 1
            return False
        self.tokens -= cost
        return True

    def refund(self) -> None:
        """A request succeeded: one token back."""
        if self.tokens < self.capacity:
            self.tokens += 1


@dataclass(frozen=True, slots=True)
class HaltRule:
    """`--halt fail=N` or `--halt fail=P%`: stop dispatching when failures cross it.

    A percentage is of the jobs settled so far, once `min_settled` have been
    (so the first failure of a run is not 100%), or of the whole manifest,
    whichever trips first.
    """

    count: int | None = None
    fraction: float | None = None
    min_settled: int = 20

    def tripped(self, failed: int, settled: int, total: int) -> bool:
        """True when `failed` failures among `settled` jobs (of `total`) cross the rule."""
        if self.count is not None:
            return failed >= self.count
        if self.fraction is None or failed == 0:
            return False
        if total and failed >= math.ceil(self.fraction * total):
            return True
        return settled >= self.min_settled and failed / settled >= self.fraction

    def describe(self) -> str:
        """The rule as the user wrote it."""
        if self.count is not None:
            return f"fail={self.count}"
        return f"fail={(self.fraction or 0.0) * 100:g}%"


def parse_halt(text: str) -> HaltRule:
    """Parse `fail=N` or `fail=P%` (also `N`/`P%` alone); ValueError with a hint otherwise."""
    spec = text.strip()
    if spec.startswith("fail="):
        spec = spec[5:]
    try:
        if spec.endswith("%"):
            percent = float(spec[:-1])
            if not 0.0 < percent <= 100.0:
                raise ValueError
            return HaltRule(fraction=percent / 100.0)
        count = int(spec)
        if count < 1:
            raise ValueError
        return HaltRule(count=count)
    except ValueError:
        raise ValueError(
            f"invalid --halt {text!r}: write fail=N (N failed jobs) or fail=P% (0 < P <= 100)"
        ) from None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|h|m|s)?", re.IGNORECASE)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(text: str) -> float:
    """Parse `30m`, `90s`, `1h30m`, `250ms` or bare seconds into seconds (> 0)."""
    spec = text.strip().lower()
    position = 0
    total = 0.0
    while position < len(spec):
        match = _DURATION.match(spec, position)
        if match is None or match.end() == position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
        while position < len(spec) and spec[position] == " ":
            position += 1
    if not spec or position != len(spec) or total <= 0.0:
        raise ValueError(f"invalid duration {text!r}: write it as 30m, 90s, 1h30m or 250ms")
    return total
