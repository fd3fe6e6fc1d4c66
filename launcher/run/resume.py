"""Planning a run from what a ledger already says: resume and replay.

`next_step` decides, for each manifest job of a resumed run, whether to skip
it (started; failed for good unless retried), check it with the service first
(its last request may have reached the service), or send it (never attempted,
or its last attempt certainly did not take effect).

`step_lookup` answers the same question by job id, fast enough for every line
of a million-job manifest: it decodes each distinct packed state once.

`plan_segment` checks a ledger against the options and, for a resume, says
which segment this is and what the ledger already settles. When every header
in the ledger says the same (and the same `--shard`), every job in the ledger
is one of this run's, so once the ledger settles as many jobs as the run has,
none is left to send and the manifest is not read again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from launcher.config import RunOptions
from launcher.errors import UsageError
from launcher.ledger.history import NOT_TAKEN, History, JobRecord, fold, load_fold
from launcher.ledger.writer import finish_merge, read_ledger
from launcher.logs import get_logger
from launcher.models import Job
from launcher.run.plan import GRACE_SECONDS, Plan, has_content, same_identities

__all__ = [
    "Next",
    "Segment",
    "describe_counts",
    "next_step",
    "plan_segment",
    "resume_history",
    "step_lookup",
]

log = get_logger("launcher.run")


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


def resume_history(ledger_path: str, *, saved: bool = True) -> History:
    """Fold the ledger a resume continues (UsageError if there is none, or no run in it).

    With `saved`, the counts its last segment saved, if they still describe it:
    enough when nothing is left to send, and read in milliseconds.
    """
    if not has_content(ledger_path):
        raise UsageError(f"{ledger_path}: --resume needs the ledger of an earlier run")
    snapshot = load_fold(ledger_path) if saved else None
    if snapshot is not None and snapshot.headers:
        return snapshot
    read = read_ledger(ledger_path)
    history = fold([read], parallel=True)  # the time a resume waits before it can start
    if read.unmerged is not None:
        # Workers of a run that crashed left their parts: copy them in before
        # this segment appends anything. The events are the same, but their
        # offsets moved (a partial copy may have been cut): fold the merged file.
        finish_merge(ledger_path, read.unmerged, wait=GRACE_SECONDS + 5.0)
        history = fold([read_ledger(ledger_path)])
    if not history.headers:
        raise UsageError(f"{ledger_path}: no run header; this is not a launcher ledger")
    return history


def plan_segment(
    ledger_path: str, plan: Plan, options: RunOptions, history: History | None = None
) -> Segment:
    """Check the ledger against the options; for `--resume`, fold what it already says.

    A fresh run refuses a ledger that holds a run; a resumed one refuses a
    ledger without one, and a manifest whose hash changed unless `--force`.
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
    for record, count in history.groups():  # distinct states: no per-job work
        step = next_step(record, retry_failed=options.retry_failed)
        steps.append((step, count))
        if record.outcome == "started":
            started += count
        if step is Next.SKIP:
            settled += count
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
