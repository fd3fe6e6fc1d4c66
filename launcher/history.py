"""What ledgers say: one pass over their events, one record per job.

Reports (`report`) and resume/replay planning (`plan`) both start here, so
they cannot disagree about a job. The pass streams: memory grows with the
number of jobs (one small record each), never with the number of events.

A job's final outcome is the `outcome` of its latest settling event (a
`result` or a `check`); a later attempt reopens it. Without one, the job is
`unknown` when its last request may have reached the service (an intent with
no result, or an ambiguous reply nobody settled) and `pending` when it
certainly did not (throttled, 5xx, refused connection, never sent).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from launcher.ledger import LedgerRead

__all__ = ["NOT_TAKEN", "PERMANENT", "History", "JobRecord", "fold"]

# Verdicts of a last attempt that certainly did not take effect: safe to send again.
NOT_TAKEN = frozenset({"throttled", "transient", "refresh_auth", "not_sent"})
# Verdicts of a failure that a resend cannot fix.
PERMANENT = frozenset({"permanent", "auth_failed"})


@dataclass(slots=True)
class JobRecord:
    """One job as the ledgers leave it."""

    outcome: str | None = None  # started | failed | unknown | None (not settled)
    last: str = "intent"  # "intent", or the last result's verdict
    permanent: bool = False  # the failure was a permanent one (DLF.*, 404, auth)
    reconciled: bool = False  # started, as a status check found after a lost answer
    attempts: int = 0
    last_intent_t: float = 0.0  # Unix time of the last attempt's intent
    failure: str | None = None  # error code (or `HTTP 503`, `timeout`) of a failure
    workspace: str | None = None
    sources: int = 0  # how many ledgers mention the job (more than 1: sharding overlap)
    description: dict[str, Any] | None = None  # first intent (with keep="descriptions")
    name: str | None = None  # with keep="details": the job's name and project...
    project_id: str | None = None
    # ...and its latest answer: (status, error_code, error_msg, request_id, instance_id)
    detail: tuple[Any, ...] | None = None

    def instance_id(self) -> Any:
        """The run-immediate instance recorded by an earlier answer, if any."""
        return self.detail[4] if self.detail is not None else None

    @property
    def final(self) -> str:
        """The job's outcome for reports: started, failed, unknown or pending."""
        if self.outcome is not None:
            return self.outcome
        return "pending" if self.last in NOT_TAKEN else "unknown"


@dataclass(slots=True)
class History:
    """Everything the ledgers say, folded."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    headers: list[dict[str, Any]] = field(default_factory=list)
    footers: list[dict[str, Any]] = field(default_factory=list)
    ledgers: list[str] = field(default_factory=list)
    torn_tail: list[str] = field(default_factory=list)
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    attempts: int = 0
    declared_jobs: int = 0  # the manifests' job counts (per ledger, latest segment)
    first_t: float = math.inf
    last_t: float = -math.inf

    @property
    def manifest_sha256(self) -> str | None:
        """The manifest hash recorded by the latest segment."""
        for header in reversed(self.headers):
            digest = (header.get("manifest") or {}).get("sha256")
            if isinstance(digest, str):
                return digest
        return None


def fold(reads: Iterable[LedgerRead], *, keep: frozenset[str] = frozenset()) -> History:
    """Fold one or more ledgers (several: shards of one run) into a `History`.

    `keep` may hold `descriptions` (each job's first intent, for replay) and
    `details` (each job's latest result, for per-job report rows).
    """
    history = History()
    jobs = history.jobs
    latencies = history.latencies_ms
    descriptions = "descriptions" in keep
    details = "details" in keep
    first_t, last_t = history.first_t, history.last_t
    for read in reads:
        history.ledgers.append(str(read.path))
        seen_here: set[str] = set()
        ledger_jobs = 0
        for event in read:
            kind = event.get("event")
            t = event.get("t")
            if t is not None:
                first_t = min(first_t, t)
                last_t = max(last_t, t)
            if kind == "intent":
                job_id = event["job"]
                record = jobs.get(job_id)
                if record is None:
                    record = jobs[job_id] = JobRecord(workspace=event.get("workspace"))
                if job_id not in seen_here:
                    seen_here.add(job_id)
                    record.sources += 1
                record.attempts += 1
                history.attempts += 1
                record.last = "intent"
                record.outcome = None  # a new attempt reopens a settled job
                record.last_intent_t = float(t or 0.0)
                if "name" in event:
                    if descriptions and record.description is None:
                        record.description = event
                    if details and record.name is None:
                        record.name = event["name"]
                        record.project_id = event.get("project_id")
            elif kind == "result":
                record = jobs.setdefault(event["job"], JobRecord())
                verdict = event.get("verdict", "?")
                record.last = verdict
                latency = event.get("latency_ms")
                if event.get("status") is not None and latency is not None:
                    latencies.append(latency)
                if details:
                    record.detail = (
                        event.get("status"),
                        event.get("error_code"),
                        event.get("error_msg"),
                        event.get("request_id"),
                        event.get("instance_id") or record.instance_id(),
                    )
                outcome = event.get("outcome")
                if outcome is not None:
                    _settle(record, outcome, event)
                    record.permanent = verdict in PERMANENT
            elif kind == "check":
                record = jobs.setdefault(event["job"], JobRecord())
                conclusion = event.get("conclusion")
                outcome = event.get("outcome")
                if outcome is not None:
                    _settle(record, outcome, event)
                    record.permanent = False
                    record.reconciled = conclusion == "took_effect"
                elif conclusion == "not_taken":
                    record.last = "transient"  # the check said it did not happen
            elif kind == "run":
                history.headers.append(event)
                manifest = event.get("manifest") or {}
                ledger_jobs = max(ledger_jobs, int(manifest.get("jobs") or 0))
            elif kind == "end":
                history.footers.append(event)
        history.declared_jobs += ledger_jobs
        if read.torn_tail:
            history.torn_tail.append(str(read.path))
    history.first_t, history.last_t = first_t, last_t
    return history


def _settle(record: JobRecord, outcome: str, event: dict[str, Any]) -> None:
    record.outcome = outcome
    if outcome != "failed":
        record.failure = None
        return
    code = event.get("error_code")
    status = event.get("status")
    if isinstance(code, str):
        record.failure = code
    elif status is not None:
        record.failure = f"HTTP {status}"
    else:
        record.failure = event.get("failure") or "error"
