"""Planning a run from what a ledger already says: resume and replay.

`next_step` decides, for each manifest job of a resumed run, whether to skip
it (started; failed for good, for a reason of its own, unless retried), check
it with the service first (its last request may have reached the service), or
send it (never attempted, its last attempt certainly did not take effect, or
it failed for a reason of the run: credentials, network path, endpoint;
`not_the_jobs`).

A run's identity is its target: endpoint, project, workspace, action and
shard (`IDENTITY`). `check_identity` refuses a resume aimed elsewhere than
the ledger's latest header records, unless `--force`: the same jobs must not
start in a second project or region, nor be stopped by a run that started
them.

`step_lookup` answers the same question by job id, fast enough for every line
of a million-job manifest: it decodes each distinct packed state once.

`plan_segment` checks a ledger against the options and, for a resume, says
which segment this is and what the ledger already settles. When every header
in the ledger says the same (and the same `--shard`), every job in the ledger
is one of this run's, so once the ledger settles as many jobs as the run has,
none is left to send and the manifest is not read again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from launcher.config import RunOptions
from launcher.errors import UsageError
from launcher.ledger import (
    NOT_TAKEN,
    History,
    JobRecord,
    finish_merge,
    fold,
    load_fold,
    read_ledger,
)
from launcher.logs import get_logger, redact_url
from launcher.models import NOT_SENT, Job, Verdict
from launcher.run.plan import GRACE_SECONDS, Plan, has_content, same_identities

__all__ = [
    "IDENTITY",
    "RUN_STOP_FAILURES",
    "RUN_STOP_VERDICTS",
    "Next",
    "Segment",
    "check_identity",
    "current_identity",
    "describe_changes",
    "describe_counts",
    "identity_changes",
    "next_step",
    "not_the_jobs",
    "plan_segment",
    "recorded_identity",
    "resume_history",
    "step_lookup",
]

log = get_logger("launcher.run")


class Next(Enum):
    """What a resumed run does with one manifest job."""

    SKIP = "skip"  # settled: started, or failed for good
    CHECK = "check"  # may have reached the service: ask before any resend
    SEND = "send"  # never attempted, or certainly not taken effect


# Verdicts of an answer about the run, not the job: the credentials were
# refused (401/403: the run stopped at once, see `Dispatcher._launch`).
RUN_STOP_VERDICTS = frozenset(map(str, (Verdict.AUTH_FAILED, Verdict.REFRESH_AUTH, NOT_SENT)))
# Failure codes (`JobRecord.failure`, before any `: detail`) of a request that
# never reached the service: a broken network path, name resolution, TLS.
RUN_STOP_FAILURES = frozenset({"connect", "dns", "tls", "proxy"})
# API gateway codes about the caller, not the job (dlf-api-notes.md): 0301-0307
# and 0310 credentials, token, authorization, project; 0101 an API not
# published (a wrong host or path). 0308 is throttling: retried in the run.
_GATEWAY_CODES = ("APIGW.03", "APIG.03", "APIGW.0101", "APIG.0101")
_THROTTLED_CODES = frozenset({"APIGW.0308", "APIG.0308"})
_SERVICE_CODES = ("DLF.", "DLG.")  # the service judged the job itself


def not_the_jobs(record: JobRecord) -> bool:
    """Whether a failed job failed for a reason of the run (auth, network path, wrong
    endpoint), not its own. A DLF error code is always the job's (DLF.6888, no
    permission, even on a 403)."""
    failure = record.failure or ""
    if failure.startswith(_SERVICE_CODES):
        return False
    if record.last in RUN_STOP_VERDICTS:
        return True
    if failure.startswith(_GATEWAY_CODES) and failure not in _THROTTLED_CODES:
        return True
    return failure.partition(":")[0].strip().lower() in RUN_STOP_FAILURES


def next_step(record: JobRecord | None, *, retry_failed: bool) -> Next:
    """What a resumed run does with a job, given its record (None: never attempted).

    | record                                          | step  |
    |-------------------------------------------------|-------|
    | never attempted                                 | SEND  |
    | started                                         | SKIP  |
    | failed for good (DLF.*, 404), no --retry-failed | SKIP  |
    | failed on the run's account (auth, TLS, DNS...) | SEND  |
    | failed after retries (5xx, 429, connect)        | SEND  |
    | unknown, or an intent without a result          | CHECK |
    | last attempt certainly not taken (halt, stop)   | SEND  |
    """
    if record is None:
        return Next.SEND
    outcome = record.outcome
    if outcome == "started":
        return Next.SKIP
    if outcome == "failed":
        if record.permanent and not retry_failed and not not_the_jobs(record):
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


@dataclass(frozen=True, slots=True)
class Segment:
    """Which part of a run this invocation is: the first, or a resumption."""

    number: int = 1
    resumes: str | None = None  # run id of the segment before
    history: History | None = None  # what the ledger already says, when resuming
    already_started: int = 0  # jobs started by earlier segments
    already_settled: int = 0  # jobs earlier segments settled for good (started or skipped)
    nothing_left: bool = False  # the ledger settles every job of this run (see plan_segment)

    def prior(self, retry_failed: bool) -> Callable[[str], tuple[int, float | None]] | None:
        """For the dispatcher: a job's attempts so far, and its in-doubt time if any."""
        history = self.history
        if history is None:
            return None
        record_of = history.record

        def lookup(job_id: str) -> tuple[int, float | None]:
            # Only jobs being sent get here: decoding a record each is affordable.
            record = record_of(job_id)
            if record is None:
                return 0, None
            doubt = next_step(record, retry_failed=retry_failed) is Next.CHECK
            return record.attempts, record.last_intent_t if doubt else None

        return lookup

    def to_send(self, jobs: Iterable[Job], retry_failed: bool) -> Iterator[Job]:
        """The manifest's jobs this segment handles (all of them, for a first segment)."""
        if self.history is None:
            return iter(jobs)  # as is: no generator in between on the send path
        return self._unsettled(jobs, retry_failed)

    def _unsettled(self, jobs: Iterable[Job], retry_failed: bool) -> Iterator[Job]:
        history = self.history
        assert history is not None
        if self.nothing_left:
            # No need to read the manifest. `jobs` has opened it already: start
            # it and close it, so the file is closed now rather than by the
            # garbage collector (with a ResourceWarning).
            started = iter(jobs)
            next(started, None)
            close = getattr(started, "close", None)
            if close is not None:
                close()
            return
        step = step_lookup(history, retry_failed=retry_failed)
        for job in jobs:
            if step(job.id) is not Next.SKIP:
                yield job


def resume_history(ledger_path: str, *, saved: bool = True, merge: bool = True) -> History:
    """Fold the ledger a resume continues (UsageError if there is none, or no run in it).

    With `saved`, the counts its last segment saved, if they still describe it:
    enough when nothing is left to send, and read in milliseconds. Without
    `merge` (a dry run), the parts of a crashed fleet are read where they are,
    not copied into the ledger.
    """
    if not has_content(ledger_path):
        raise UsageError(f"{ledger_path}: --resume needs the ledger of an earlier run")
    snapshot = load_fold(ledger_path) if saved else None
    if snapshot is not None and snapshot.headers:
        return snapshot
    read = read_ledger(ledger_path)
    history = fold([read], parallel=True)  # the time a resume waits before it can start
    if read.unmerged is not None and merge:
        # Workers of a run that crashed left their parts: copy them in before
        # this segment appends anything. The events are the same, but their
        # offsets moved (a partial copy may have been cut): fold the merged file.
        finish_merge(ledger_path, read.unmerged, wait=GRACE_SECONDS + 5.0)
        history = fold([read_ledger(ledger_path)])
    if not history.headers:
        raise UsageError(f"{ledger_path}: no run header; this is not a launcher ledger")
    return history


# What a run is aimed at: a segment that resumes it must aim at the same.
IDENTITY = ("endpoint", "project_id", "workspace", "action", "shard")


def recorded_identity(header: Mapping[str, Any]) -> dict[str, Any]:
    """The identity a `run` header records (a field it lacks is left out: not compared)."""
    identity: dict[str, Any] = {}
    if "endpoint" in header:
        identity["endpoint"] = "sim" if header.get("simulator") else header.get("endpoint")
    options = header.get("options")
    if isinstance(options, dict):
        for name in ("project_id", "workspace", "action"):
            if name in options:
                identity[name] = options[name]
    if "shard" in header:
        identity["shard"] = header.get("shard")
    return identity


def current_identity(options: RunOptions, endpoint: str) -> dict[str, Any]:
    """The identity of a run with these options against `endpoint` (as resolved, or `sim`)."""
    return {
        "endpoint": endpoint,
        "project_id": options.project_id,
        "workspace": options.workspace,
        "action": options.action,
        "shard": options.shard,
    }


def identity_changes(
    recorded: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """(field, recorded, now) for every identity field that differs; endpoints are
    compared without a trailing slash."""
    changes = []
    for name in IDENTITY:
        if name not in recorded:
            continue
        old, new = recorded[name], current.get(name)
        if name == "endpoint" and isinstance(old, str) and isinstance(new, str):
            old, new = old.rstrip("/"), new.rstrip("/")
        if old != new:
            changes.append((name, old, new))
    return changes


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """`endpoint https://a -> https://b; project_id projA -> projB` (URLs without passwords)."""

    def shown(name: str, value: Any) -> str:
        if value is None:
            return "(none)"
        return redact_url(value) if name == "endpoint" and isinstance(value, str) else str(value)

    return "; ".join(
        f"{name} {shown(name, old)} -> {shown(name, new)}" for name, old, new in changes
    )


def check_identity(
    ledger_path: str,
    header: Mapping[str, Any],
    options: RunOptions,
    endpoint: str,
    *,
    reached: bool = True,
) -> None:
    """Refuse (UsageError, exit 2) to resume a run at another target unless `--force`.

    `reached`: whether any request of the run may have reached the service
    (an answer, a start, a job in doubt); when none did, the message says
    that forcing is safe (a typo in the endpoint, say, fixed).
    """
    changes = identity_changes(recorded_identity(header), current_identity(options, endpoint))
    if not changes:
        return
    if options.force:
        log.warning(
            "resuming with another target (--force)",
            ledger=ledger_path,
            changes=describe_changes(changes),
        )
        return
    unreached = (
        " No request of that run got an answer or may have taken effect: --force is safe."
        if not reached
        else ""
    )
    raise UsageError(
        f"{ledger_path}: this resume aims elsewhere than the run it continues "
        f"(recorded -> now: {describe_changes(changes)}); resume with the recorded "
        f"values (`launcher resume {ledger_path}` reuses them), or pass --force to "
        f"continue the run there.{unreached}"
    )


def plan_segment(
    ledger_path: str,
    plan: Plan,
    options: RunOptions,
    history: History | None = None,
    *,
    endpoint: str,
) -> Segment:
    """Check the ledger against the options; for `--resume`, fold what it already says.

    A fresh run refuses a ledger that holds a run; a resumed one refuses a
    ledger without one, and, unless `--force`, a manifest whose hash changed
    or another target (`check_identity`: endpoint, project, workspace,
    action, shard) than the ledger's latest header records.
    `history` is the ledger already folded (by `launch`), else it is folded here.
    """
    if not options.resume:
        if has_content(ledger_path):
            raise UsageError(
                f"{ledger_path}: the ledger already holds a run; continue it with --resume, "
                "or choose another --ledger"
            )
        return Segment()
    if history is None:
        history = resume_history(ledger_path)
    recorded = history.manifest_sha256
    digest = plan.validation.sha256
    if recorded != digest and not options.force:
        raise UsageError(
            f"{plan.manifest}: the manifest changed since the run in {ledger_path} "
            f"(sha256 {str(recorded)[:12]}… then, {digest[:12]}… now); "
            "resume with the original manifest, or pass --force"
        )
    started = settled = 0
    steps: list[tuple[Next, int]] = []
    reached = bool(history.latencies_us)  # an answer was read
    for record, count in history.groups():  # distinct states: no per-job work
        step = next_step(record, retry_failed=options.retry_failed)
        steps.append((step, count))
        if record.outcome == "started":
            started += count
        if step is Next.SKIP:
            settled += count
        reached = reached or step is Next.CHECK or record.outcome in ("started", "unknown")
    check_identity(ledger_path, history.headers[-1], options, endpoint, reached=reached)
    # Every job in the ledger is one of this run's when every segment ran this
    # manifest with these identity options and this shard; then as many settled
    # jobs as the run has means that all of them are settled.
    nothing_left = settled >= plan.jobs and all(
        header.manifest_sha256 == digest
        and header.shard == options.shard
        and same_identities(header, plan.manifest, options)
        for header in history.runs
    )
    last = history.runs[-1]
    log.info(
        "resuming",
        ledger=ledger_path,
        segment=len(history.headers) + 1,
        **describe_counts(steps),
        never_attempted=max(0, plan.jobs - history.job_count),
        torn_tail=history.torn_tail,
        nothing_left=nothing_left,
    )
    return Segment(
        number=len(history.headers) + 1,
        resumes=last.run_id,
        history=history,
        already_started=started,
        already_settled=settled,
        nothing_left=nothing_left,
    )
