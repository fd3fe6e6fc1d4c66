"""Planning a run from what a ledger already says: resume and replay.

`next_step` decides, for each manifest job of a resumed run, whether to skip
it (started; failed for good unless retried), check it with the service first
(its last request may have reached the service), or send it (never attempted,
or its last attempt certainly did not take effect).

`step_lookup` answers the same question by job id, fast enough for every line
of a million-job manifest: it decodes each distinct packed state once.

`replay_jobs` rebuilds the job list (names, params, workspaces, projects) from
a ledger alone, for a replay into another project, workspace or region.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import Enum
from typing import Any

from launcher.errors import UsageError
from launcher.ledger.history import NOT_TAKEN, History, JobRecord

__all__ = [
    "Next",
    "describe_counts",
    "next_step",
    "parse_shard",
    "replay_jobs",
    "shard_of",
    "step_lookup",
]


class Next(Enum):
    """What a resumed run does with one manifest job."""

    SKIP = "skip"  # settled: started, or failed for good
    CHECK = "check"  # may have reached the service: ask before any resend
    SEND = "send"  # never attempted, or certainly not taken effect


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
    if record.last in NOT_TAKEN:
        return Next.SEND
    return Next.CHECK  # an intent without a result, or an unsettled ambiguous reply


def step_lookup(history: History, *, retry_failed: bool) -> Callable[[str], Next]:
    """`next_step` by job id: each distinct packed state is decoded and judged once.

    Jobs share a few hundred states at most, so this costs a table lookup per
    job, where decoding a `JobRecord` per job would cost an object each.
    """
    judged: dict[int, Next] = {}
    state_of = history.state
    decode = history.decode

    def step(job_id: str) -> Next:
        packed = state_of(job_id)
        if not packed:
            return Next.SEND
        found = judged.get(packed)
        if found is None:
            found = judged[packed] = next_step(decode(packed), retry_failed=retry_failed)
        return found

    return step


def describe_counts(steps: Iterable[tuple[Next, int]]) -> dict[str, int]:
    """How many jobs get each `Next` step, from (step, jobs) pairs (for the resume log line)."""
    counts = {step.value: 0 for step in Next}
    for step, jobs in steps:
        counts[step.value] += jobs
    return counts


def replay_jobs(
    history: History,
    *,
    only: frozenset[str],
    project_id: str | None,
    workspace_map: Mapping[str, str],
) -> Iterator[dict[str, Any]]:
    """Manifest lines for the jobs whose final outcome is in `only`.

    Needs `fold(..., keep=frozenset({"descriptions"}))`. `project_id` replaces
    every job's project; `workspace_map` renames workspaces (OLD=NEW). Each
    line keeps the job's original identity as its `id`, so the replay's
    ledger can be matched against the source ledger.
    """
    for job_id, record in history.items():
        if record.final not in only:
            continue
        description = record.description
        if description is None:
            raise UsageError(
                f"job {job_id}: the ledger lacks its description (its first attempt's intent)"
            )
        yield replay_line(job_id, description, project_id, workspace_map)


def replay_line(
    job_id: str,
    description: Mapping[str, Any],
    project_id: str | None,
    workspace_map: Mapping[str, str],
) -> dict[str, Any]:
    """One manifest line for a job described by an intent (or a manifest `Job`'s fields)."""
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
    return line


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (0 <= I < N) → (I, N); UsageError otherwise."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = -1
    if not sep or n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text!r}: write it as I/N with 0 <= I < N, e.g. 0/3")
    return i, n


def shard_of(job_id: str, count: int) -> int:
    """The shard (0..count-1) a job belongs to: a stable hash of its identity.

    Hashing the identity again (it may be a user's `id` like `etl-01`, not a
    hash) spreads jobs evenly whatever the ids look like; the same job lands in
    the same shard on every host and in every version.
    """
    digest = hashlib.blake2b(job_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count
