"""Planning a run from what a ledger already says: resume and replay.

`fold_ledger` reads a ledger once and keeps, per job, only what the next run
needs: its final outcome, whether that failure was permanent, and, for a job
whose last request may have reached the service (in flight at a crash, or
settled `unknown`), the time of that request, because such a job is checked
with the service before anything is sent again.

`resume_filter` then streams the manifest and decides for each job: skip it
(started; failed for good unless retried), check it first (in doubt), or send
it (never attempted, or its last attempt certainly did not take effect).

`replay_jobs` rebuilds the job list (names, params, workspaces, projects) from
a ledger alone, for a replay into another project, workspace or region.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from launcher.errors import UsageError
from launcher.ledger import LedgerRead

__all__ = [
    "FoldedLedger",
    "JobRecord",
    "Next",
    "fold_ledger",
    "next_step",
    "replay_jobs",
]

# Verdicts of a last attempt that certainly did not take effect: safe to send again.
_NOT_TAKEN = frozenset({"throttled", "transient", "refresh_auth", "not_sent"})
# Verdicts of a failure that a resend cannot fix.
_PERMANENT = frozenset({"permanent", "auth_failed"})


class Next(Enum):
    """What a resumed run does with one manifest job."""

    SKIP = "skip"  # settled: started, or failed for good
    CHECK = "check"  # may have reached the service: ask before any resend
    SEND = "send"  # never attempted, or certainly not taken effect


@dataclass(slots=True)
class JobRecord:
    """One job as the ledger leaves it."""

    outcome: str | None = None  # started | failed | unknown | None (not settled)
    last: str = "intent"  # "intent", or the last result's verdict
    permanent: bool = False  # the failure was a permanent one (DLF.*, 404, auth)
    attempts: int = 0
    last_intent_t: float = 0.0  # Unix time of the last attempt's intent
    description: dict[str, Any] | None = None  # the first intent's job fields


@dataclass(slots=True)
class FoldedLedger:
    """Per-job records and the run headers of a ledger."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    headers: list[dict[str, Any]] = field(default_factory=list)
    torn_tail: bool = False

    @property
    def manifest_sha256(self) -> str | None:
        """The manifest hash of the latest segment."""
        for header in reversed(self.headers):
            manifest = header.get("manifest") or {}
            digest = manifest.get("sha256")
            if isinstance(digest, str):
                return digest
        return None

    @property
    def segments(self) -> int:
        """How many run segments the ledger holds."""
        return len(self.headers)


def fold_ledger(read: LedgerRead, *, keep_descriptions: bool = False) -> FoldedLedger:
    """Fold a ledger's events into one `JobRecord` per job."""
    folded = FoldedLedger(torn_tail=read.torn_tail)
    jobs = folded.jobs
    for event in read.events:
        kind = event.get("event")
        if kind == "intent":
            job_id = event["job"]
            record = jobs.get(job_id)
            if record is None:
                record = jobs[job_id] = JobRecord()
            record.attempts += 1
            record.last = "intent"
            record.last_intent_t = float(event.get("t") or 0.0)
            record.outcome = None  # a new attempt reopens a settled job (e.g. retry-failed)
            if keep_descriptions and record.description is None and "name" in event:
                record.description = event
        elif kind == "result":
            record = jobs.setdefault(event["job"], JobRecord())
            verdict = event.get("verdict", "?")
            record.last = verdict
            outcome = event.get("outcome")
            if outcome is not None:
                record.outcome = outcome
                record.permanent = verdict in _PERMANENT
        elif kind == "check":
            record = jobs.setdefault(event["job"], JobRecord())
            outcome = event.get("outcome")
            if outcome is not None:
                record.outcome = outcome
                record.permanent = False
            elif event.get("conclusion") == "not_taken":
                record.last = "transient"  # the check said it did not happen
        elif kind == "run":
            folded.headers.append(event)
    return folded


def next_step(record: JobRecord | None, *, retry_failed: bool) -> Next:
    """What a resumed run does with a job, given its record (None: never attempted)."""
    if record is None:
        return Next.SEND
    outcome = record.outcome
    if outcome == "started":
        return Next.SKIP
    if outcome == "failed":
        if record.permanent and not retry_failed:
            return Next.SKIP
        return Next.SEND
    if outcome == "unknown":
        return Next.CHECK
    if record.last in _NOT_TAKEN:
        return Next.SEND
    return Next.CHECK  # an intent without a result, or an unsettled ambiguous reply


def replay_jobs(
    folded: FoldedLedger,
    *,
    only: frozenset[str],
    project_id: str | None,
    workspace_map: Mapping[str, str],
) -> Iterator[dict[str, Any]]:
    """Manifest lines for the jobs of a ledger whose final outcome is in `only`.

    Needs `fold_ledger(..., keep_descriptions=True)`. `project_id` replaces
    every job's project; `workspace_map` renames workspaces (OLD=NEW). Each
    line keeps the job's original identity as its `id`, so the replay's
    ledger can be matched against the source ledger.
    """
    for job_id, record in folded.jobs.items():
        outcome = _final_outcome(record)
        if outcome not in only:
            continue
        description = record.description
        if description is None:
            raise UsageError(
                f"job {job_id}: the ledger lacks its description (its first attempt's intent)"
            )
        workspace = description.get("workspace")
        if workspace is not None:
            workspace = workspace_map.get(workspace, workspace)
        line: dict[str, Any] = {
            "id": job_id,
            "name": description["name"],
            "params": [
                {"name": name, "value": value, **({"paramType": kind} if kind else {})}
                for name, value, kind in description.get("params") or ()
            ],
        }
        if workspace is not None:
            line["workspace"] = workspace
        project = project_id or description.get("project_id")
        if project is not None:
            line["project_id"] = project
        action = description.get("action")
        if action not in (None, "start"):
            line["action"] = action
        yield line


def _final_outcome(record: JobRecord) -> str:
    if record.outcome is not None:
        return record.outcome
    return "pending" if record.last in _NOT_TAKEN else "unknown"


def describe_counts(steps: Iterable[Next]) -> dict[str, int]:
    """How many jobs get each `Next` step (for the resume log line)."""
    counts = {step.value: 0 for step in Next}
    for step in steps:
        counts[step.value] += 1
    return counts
