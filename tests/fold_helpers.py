"""What a fold exposes, comparable with ==: shared by the fold tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from launcher.ledger import History, summary_of, to_json


def observed_counts(history: History) -> dict[str, Any]:
    """Everything a fold exposes but its jobs one by one (all a counting fold has)."""
    return {
        "summary": to_json(summary_of(history)),
        "headers": history.headers,
        "footers": history.footers,
        "ledgers": history.ledgers,
        "torn_tail": history.torn_tail,
        "attempts": history.attempts,
        "declared": history.declared_jobs,
        "t": (history.first_t, history.last_t),
        "latencies": sorted(history.latencies_us),
        "examples": history.overlap_examples,
        "jobs": history.job_count,
    }


def observed(history: History, job_ids: Iterable[str]) -> dict[str, Any]:
    """Everything a fold exposes, comparable with ==."""
    return {
        **observed_counts(history),
        "records": {job_id: history.record(job_id) for job_id in job_ids},
        "items": list(history.items()) if history.extras is not None else None,
    }
