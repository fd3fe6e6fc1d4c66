"""Pure policy, no I/O: how answers are classified and retried, how fast to send.

`policy` turns an answer into a verdict and a verdict into a retry delay or a
halt; `pacing` is the GCRA token bucket behind `--rate`; `adaptive` is the
AIMD rate that backs off on throttling; `shard` says which part of a manifest
a job belongs to; `waiting` is `--wait`'s poll backoff and instance statuses.
Every function here is table- or property-tested without sockets.
"""

from __future__ import annotations

from launcher.flow.adaptive import AdaptiveRate, RateMeter
from launcher.flow.pacing import Pacer, RateGate, TokenBucket, format_rate, parse_rate
from launcher.flow.policy import (
    HaltRule,
    RetryBudget,
    RetryPolicy,
    Verdict,
    classify,
    parse_duration,
    parse_halt,
    retry_delay,
)
from launcher.flow.shard import parse_shard, shard_of
from launcher.flow.waiting import FINAL, SUCCEEDED, is_final, poll_delay, run_failed

__all__ = [
    "FINAL",
    "SUCCEEDED",
    "AdaptiveRate",
    "HaltRule",
    "Pacer",
    "RateGate",
    "RateMeter",
    "RetryBudget",
    "RetryPolicy",
    "TokenBucket",
    "Verdict",
    "classify",
    "format_rate",
    "is_final",
    "parse_duration",
    "parse_halt",
    "parse_rate",
    "parse_shard",
    "poll_delay",
    "retry_delay",
    "run_failed",
    "shard_of",
]
