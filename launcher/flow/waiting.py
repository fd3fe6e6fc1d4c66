"""Waiting for runs (`--wait`): when to poll an instance again, and what its status means.

Pure policy, no I/O. The statuses are the official SDK's (huaweicloudsdkdgc v1
`ShowJobInstanceResponse.status` / `JobInstance.status`): waiting, running,
success, forceSuccess, ignoreSuccess, freeze, skip-by-depend, waiting-confirm,
fail, running-exception, pause, manual-stop. Of those, seven end a run
(`FINAL`); `freeze`, `pause` and `waiting-confirm` wait for a person, so only
`--wait-timeout` ends the wait for them. `unknown` is the launcher's own: the
run had not ended when the wait timed out (or its instance could not be found).
"""

from __future__ import annotations

import random
from typing import Final

__all__ = [
    "FINAL",
    "JITTER",
    "POLL_CAP",
    "POLL_START",
    "SUCCEEDED",
    "TIMED_OUT",
    "is_final",
    "poll_delay",
    "run_failed",
]

POLL_START: Final = 2.0  # seconds before the first poll, and the first backoff step
POLL_CAP: Final = 60.0  # no poll waits longer than this
JITTER: Final = 0.2  # a delay is its step, less up to this fraction of it

# The statuses that end a run, and of those, the ones that count as a success.
FINAL: Final = frozenset(
    {
        "success",
        "fail",
        "running-exception",
        "manual-stop",
        "forceSuccess",
        "ignoreSuccess",
        "skip-by-depend",
    }
)
SUCCEEDED: Final = frozenset({"success", "forceSuccess", "ignoreSuccess"})
TIMED_OUT: Final = "unknown"  # the wait ended before the run did


def is_final(status: str | None) -> bool:
    """Whether a run in `status` has ended (the launcher's `unknown` has not: it may yet)."""
    return status in FINAL


def run_failed(status: str | None) -> bool:
    """Whether a followed run makes the exit status 1: ended other than a success, or unknown.

    `skip-by-depend` counts as a failure: the run did not do its work.
    """
    return status not in SUCCEEDED


def poll_delay(
    polls: int,
    rand: random.Random,
    *,
    start: float = POLL_START,
    cap: float = POLL_CAP,
) -> float:
    """Seconds to wait before poll number `polls + 1` of one instance.

    Exponential from `start` (doubling per poll, capped at `cap`), jittered
    down by up to `JITTER` of the step: runs accepted together spread their
    polls out, no poll comes later than its step, and none waits over `cap`.
    """
    step = min(cap, start * 2.0 ** min(polls, 32))
    return step * (1.0 - JITTER * rand.random())
