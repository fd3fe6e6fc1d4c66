"""`launcher run`: validate, plan, dispatch, record, report; and the exit code.

This is the one module that wires the stages together. It owns the run's
task group: the dispatcher, the ledger's group-commit flusher, the progress
display and the signal handler all live in it, and all of them stop when
dispatching ends.

A resume (`--resume`) folds its ledger first, and takes two shortcuts from it:

- **no re-validation**: when the ledger's latest `run` header records this
  very manifest (the same SHA-256), this launcher version and the same
  options that decide identities and validity (`project_id`, `workspace`,
  `allow_duplicates`, `manifest_format`, and the format the file name
  implies), the manifest passed exactly this validation when that segment
  started, so it is only hashed (0.03 s instead of 2.5 s at 300,000 lines);
  anything different, and it is validated in full as on a first run;
- **no manifest pass when nothing is left**: when every header in the ledger
  says the same (and the same `--shard`), every job in the ledger is one of
  this run's, so once the ledger settles as many jobs as the run has, none is
  left to send and the manifest is not read again.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import anyio

from launcher import __version__
from launcher.config import RunOptions
from launcher.dispatch import Dispatcher, DispatchSettings, Tally, WorkspaceLimits
from launcher.dlf.client import job_body, path_segment
from launcher.dlf.transport import backend_options
from launcher.errors import HaltError, LedgerFailed, ManifestInvalid, UsageError
from launcher.flow.adaptive import AdaptiveRate
from launcher.flow.pacing import Pacer, RateGate, TokenBucket, format_rate
from launcher.flow.policy import RetryBudget, RetryPolicy, parse_halt
from launcher.ledger.history import History, LiveFold, catch_up, fold, load_fold, save_fold
from launcher.ledger.report import Summary, format_text, summary_of
from launcher.ledger.writer import Ledger, default_ledger_path, finish_merge, read_ledger
from launcher.logs import get_logger
from launcher.manifest.validate import (
    Defaults,
    Validation,
    detect_format,
    file_sha256,
    iter_jobs,
    scan,
    validate,
)
from launcher.models import Job
from launcher.run.connect import Connection, connect, resolve_endpoint
from launcher.run.plan import (
    Next,
    describe_counts,
    next_step,
    parse_shard,
    shard_of,
    step_lookup,
)
from launcher.run.progress import show_progress

__all__ = ["EXIT_INTERRUPTED", "RunResult", "WorkerRole", "launch", "plan_manifest"]

EXIT_INTERRUPTED = 130
# A manifest this small has its jobs kept by the validation, for the send path
# to take from memory instead of reading and checking every line again (~4 µs
# a job). At ~0.5 KB a job that is ≤ 50 MB; a larger one is streamed twice.
KEEP_BYTES = 8 << 20
KEEP_JOBS = 100_000
GRACE_SECONDS = 30.0  # how long a first SIGINT/SIGTERM waits for requests in flight

log = get_logger("launcher.run")


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: its exit code, summary and ledger path."""

    exit_code: int
    summary: Summary | None
    ledger: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated manifest and the part of it this run is responsible for."""

    manifest: str
    validation: Validation
    defaults: Defaults
    fmt: str | None
    shard: tuple[int, int] | None  # (index, count) with --shard I/N
    jobs: int  # jobs this run handles: the shard's, or all of them

    def iter_jobs(self, lines: tuple[int, int] | None = None) -> Iterator[Job]:
        """Stream this run's jobs from the manifest (the shard's only, with --shard);
        `lines=(i, n)`: only every n-th job from the i-th (a worker's share).

        Jobs the validation kept are not read again: exactly the jobs whose bytes
        were checked and hashed, whatever happens to the file meanwhile.
        """
        kept = self.validation.kept
        if kept is None:
            jobs = iter_jobs(self.manifest, self.defaults, fmt=self.fmt, lines=lines)
        elif lines is None:
            jobs = iter(kept)
        else:
            jobs = islice(kept, lines[0], None, lines[1])
        if self.shard is None:
            return jobs
        index, count = self.shard
        return (job for job in jobs if shard_of(job.id, count) == index)


def plan_manifest(
    manifest: str, options: RunOptions, *, recorded: Mapping[str, Any] | None = None
) -> Plan:
    """Validate the whole manifest before anything is sent (raises ManifestInvalid).

    `recorded` is the latest `run` header of the ledger a resume continues:
    when it shows that this manifest already passed this validation (see the
    module docstring), the file is hashed instead of validated again.
    """
    defaults = Defaults(project_id=options.project_id, workspace=options.workspace)
    validation = _validated_before(manifest, options, recorded)
    reused = validation is not None
    if validation is None:
        validation = validate(
            manifest,
            defaults,
            allow_duplicates=options.allow_duplicates,
            fmt=options.manifest_format,
            keep=KEEP_JOBS if _size(manifest) <= KEEP_BYTES else 0,
        )
        validation.raise_if_invalid()
        if options.project_id is None:
            missing = [
                f"{manifest}:{item.line}: project_id: no project id; set project_id on the "
                "line, --project-id, or HUAWEICLOUD_SDK_PROJECT_ID"
                for item in scan(manifest, defaults, fmt=options.manifest_format)
                if isinstance(item, Job) and not item.project_id
            ]
            if missing:
                raise ManifestInvalid(missing[:20], len(missing))
    shard = parse_shard(options.shard) if options.shard else None
    plan = Plan(manifest, validation, defaults, options.manifest_format, shard, validation.jobs)
    if shard is not None:
        # The shard's size, for progress, reports and exit codes: recorded in the
        # header of a segment that ran this very shard, else one more streaming pass.
        shard_jobs = ((recorded or {}).get("manifest") or {}).get("jobs")
        same_shard = reused and recorded is not None and recorded.get("shard") == options.shard
        if not same_shard or not isinstance(shard_jobs, int):
            shard_jobs = sum(1 for _ in plan.iter_jobs())
        plan = replace(plan, jobs=shard_jobs)
    return plan


# The options that decide which jobs a manifest holds, their identities, and
# whether it is valid: a ledger written with others describes other jobs.
_IDENTITY_OPTIONS = ("project_id", "workspace", "allow_duplicates", "manifest_format")


def _same_identities(header: Mapping[str, Any], manifest: str, options: RunOptions) -> bool:
    """Whether a `run` header was written by this version with this run's identity options."""
    recorded_options = header.get("options") or {}
    recorded_path = (header.get("manifest") or {}).get("path")
    return (
        header.get("version") == __version__
        and isinstance(recorded_options, dict)
        and all(recorded_options.get(name) == getattr(options, name) for name in _IDENTITY_OPTIONS)
        # Without --format the file name decides the format: the same bytes as
        # a .csv are other jobs than as a .jsonl.
        and isinstance(recorded_path, str)
        and detect_format(recorded_path) == detect_format(manifest)
    )


def _validated_before(
    manifest: str, options: RunOptions, recorded: Mapping[str, Any] | None
) -> Validation | None:
    """The validation `recorded` (a ledger's latest header) vouches for, if it does.

    The header is written only after its segment validated the manifest, with
    the hash of exactly the bytes it checked; the same bytes under the same
    rules and options pass again, so only the hash needs computing.
    """
    if recorded is None or not _same_identities(recorded, manifest, options):
        return None
    described = recorded.get("manifest") or {}
    total = described.get("total_jobs")
    if not isinstance(total, int) or isinstance(total, bool):
        return None
    digest = file_sha256(manifest)
    if digest != described.get("sha256"):
        return None
    log.info("manifest unchanged since the ledger's last segment: not validated again")
    return Validation(manifest, total, (), 0, digest)


def print_dry_run(plan: Plan, options: RunOptions, endpoint: str, out: TextIO) -> None:
    """Print the requests a run would send (the first 20, then a count)."""
    count = 0
    for job in plan.iter_jobs():
        count += 1
        if count <= 20:
            action = job.action or options.action
            path = (
                f"/v1/{path_segment(job.project_id or '')}/jobs/{path_segment(job.name)}/{action}"
            )
            body = job_body(job).decode()  # exactly what a run would send
            workspace = f" workspace={job.workspace}" if job.workspace else ""
            out.write(f"POST {endpoint}{path}{workspace} {body}\n")
    if count > 20:
        out.write(f"... and {count - 20} more\n")
    out.write(
        f"dry run: {count} job(s) would be sent at {format_rate(options.rate)}, "
        f"concurrency {options.concurrency}; nothing was sent\n"
    )


def launch(
    manifest: str,
    options: RunOptions,
    env: Mapping[str, str],
    *,
    out: TextIO | None = None,
) -> RunResult:
    """Run a manifest end to end and return the exit code (see interface.md).

    Everything before the first request happens before the event loop starts:
    the resume fold, validation, the plan and, for a run over several workers,
    forking them (with no loop and one thread, a fork is safe, and a worker
    then needs no start-up of its own).
    """
    # Most objects of a run (manifest records, requests, replies) die young: the
    # youngest generation is collected every 10,000 net allocations instead of
    # 700. At 700 a 50,000-start run did ~350 collections for 0.08 s of CPU
    # (~1.5 µs a start) and found little; at 10,000 it does ~5 for 0.01 s.
    gc.set_threshold(10_000)
    stdout = out if out is not None else sys.stdout
    endpoint = resolve_endpoint(options)
    ledger_path = options.ledger or str(default_ledger_path(manifest))
    # A resume folds its ledger first: its latest header may spare re-validation.
    resumed = _resume_history(ledger_path) if options.resume and not options.dry_run else None
    plan = plan_manifest(manifest, options, recorded=resumed.headers[-1] if resumed else None)
    if options.dry_run:
        print_dry_run(plan, options, endpoint, stdout)
        return RunResult(0, None, None)
    if plan.jobs == 0:
        stdout.write(f"{manifest}: no jobs for this run; nothing to do\n")
        return RunResult(0, None, None)

    segment = plan_segment(ledger_path, plan, options, resumed)
    if resumed is not None and resumed.counted_only and not segment.nothing_left:
        # The snapshot's counts said jobs are left to send: that needs each job's state.
        segment = plan_segment(
            ledger_path, plan, options, _resume_history(ledger_path, saved=False)
        )
    # What this process holds now (modules, the plan, a resume's fold) lives to
    # the end: out of every later collection, which would find nothing in it and,
    # in forked workers, copy every page it touched.
    gc.freeze()
    if not segment.nothing_left and options.workers != 1:
        from launcher.run.fleet import choose_workers, start_fleet, usable_cpus

        unsettled = plan.jobs - segment.already_settled
        workers = choose_workers(options, unsettled, usable_cpus())
        if workers > 1:
            fleet = start_fleet(plan, options, segment, ledger_path, workers, env)
            return anyio.run(fleet.run, stdout, backend_options=backend_options())
    return anyio.run(
        _launch_here,
        plan,
        options,
        segment,
        ledger_path,
        env,
        stdout,
        backend_options=backend_options(),
    )


async def _launch_here(
    plan: Plan,
    options: RunOptions,
    segment: Segment,
    ledger_path: str,
    env: Mapping[str, str],
    stdout: TextIO,
) -> RunResult:
    """The run in this one process: dispatch, then the summary."""
    async with connect(options, env) as connection:
        # A new ledger (plan_segment refused one with content) is folded as it is
        # written, for the summary (see LiveFold).
        fresh = segment.history is None
        ledger = Ledger(ledger_path, fsync=options.fsync, mirror=fresh)  # type: ignore[arg-type]
        live = LiveFold(ledger, plan.jobs) if fresh else None
        try:
            exit_code = await _dispatch(plan, options, connection, ledger, segment, live=live)
        finally:
            ledger.close()
    if live is not None:
        history = live.history()
    elif segment.history is not None:
        # A resume folded the ledger already: only what this segment appended is read.
        history = catch_up(segment.history)
    else:
        history = fold([read_ledger(ledger_path)])
    summary = summary_of(history)
    stdout.write(format_text(summary) + "\n")
    stdout.flush()
    save_fold(history)  # for the next --resume or report of this ledger
    return RunResult(exit_code, summary, ledger_path)


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


def _resume_history(ledger_path: str, *, saved: bool = True) -> History:
    """Fold the ledger a resume continues (UsageError if there is none, or no run in it).

    With `saved`, the counts its last segment saved, if they still describe it:
    enough when nothing is left to send, and read in milliseconds.
    """
    if not _has_content(ledger_path):
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
        if _has_content(ledger_path):
            raise UsageError(
                f"{ledger_path}: the ledger already holds a run; continue it with --resume, "
                "or choose another --ledger"
            )
        return Segment()
    if history is None:
        history = _resume_history(ledger_path)
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
        (header.get("manifest") or {}).get("sha256") == digest
        and header.get("shard") == options.shard
        and _same_identities(header, plan.manifest, options)
        for header in history.headers
    )
    last = history.headers[-1]
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
        resumes=last.get("run_id"),
        history=history,
        already_started=started,
        already_settled=settled,
        nothing_left=nothing_left,
    )


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """This process is worker `index` of `count` of one run (see `launcher.run.fleet`)."""

    index: int
    count: int
    fleet: str
    # Runs beside the dispatcher: reports the tally to the parent, obeys its orders.
    companion: Callable[[Dispatcher, Tally], Coroutine[Any, Any, None]]
    on_signal: Callable[[int], None] | None = None  # worker 0 passes signals on


async def _dispatch(
    plan: Plan,
    options: RunOptions,
    connection: Connection,
    ledger: Ledger,
    segment: Segment,
    role: WorkerRole | None = None,
    *,
    live: LiveFold | None = None,
) -> int:
    client = connection.client
    shared = None
    if options.redis or options.shared_concurrency:  # before the header: bad Redis = exit 2
        from launcher.scale.limits import open_shared_limits  # redis-py loads only for --redis

        shared = await open_shared_limits(options, connection)
    run_id = uuid.uuid4().hex
    started = time.time()
    ledger.header(
        {
            "run_id": run_id,
            "segment": segment.number,
            "resumes": segment.resumes,
            "version": __version__,
            "manifest": {
                "path": str(Path(plan.manifest).resolve()),  # noqa: ASYNC240 (once per run)
                "sha256": plan.validation.sha256,
                "jobs": plan.jobs,
                "total_jobs": plan.validation.jobs,
                "format": options.manifest_format,
            },
            "shard": options.shard,
            **({"worker": f"{role.index}/{role.count}", "fleet": role.fleet} if role else {}),
            "endpoint": connection.url,
            "simulator": connection.simulated,
            "auth": client.auth.describe(),
            "options": options.public(),
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
    )
    log.info(
        "run starting",
        run_id=run_id,
        jobs=plan.jobs,
        shard=options.shard,
        endpoint=connection.url,
        rate=format_rate(options.rate),
        concurrency=options.concurrency,
        ledger=str(ledger.path),
        auth=client.auth.describe(),
    )
    # Intents reach the OS before their requests, in one write per loop iteration.
    client.write_ahead(ledger.defer_intents())
    tally = Tally(total=max(0, plan.jobs - segment.already_settled))
    settings = DispatchSettings(
        action=options.action,
        concurrency=options.concurrency,
        per_workspace=options.per_workspace,
        retry=RetryPolicy(
            max_attempts=options.max_attempts,
            base=options.backoff_base,
            cap=options.backoff_cap,
        ),
        canary=options.canary,
        halt=parse_halt(options.halt) if options.halt else None,
        workspaces={
            workspace: WorkspaceLimits(concurrency, rate, burst)
            for workspace, (concurrency, rate, burst) in options.workspaces.items()
        },
    )
    flow = AdaptiveRate(ceiling=options.rate) if options.adaptive else None
    pacer: RateGate = Pacer(TokenBucket(options.rate, options.burst))
    if shared is not None:  # --redis: the limit and its adaptive curve are the fleet's
        pacer, flow = shared.pacer, shared.flow
    dispatcher = Dispatcher(
        shared.service(client) if shared is not None else client,
        ledger,
        pacer,
        settings,
        tally=tally,
        rand=random.Random(),
        flow=flow,
        budget=RetryBudget(capacity=options.retry_budget) if options.retry_budget else None,
        prior=segment.prior(options.retry_failed),
    )
    # A worker takes every count-th job: a share that costs next to nothing to skip.
    # Which worker sends a job does not matter for resume: every worker folds
    # the whole ledger and skips what is settled.
    share = (role.index, role.count) if role is not None else None
    jobs = segment.to_send(plan.iter_jobs(share), options.retry_failed)
    interrupted = False

    async with anyio.create_task_group() as tg:
        dispatch_scope = anyio.CancelScope()

        async def flusher() -> None:
            try:
                await ledger.run_flusher()
            except LedgerFailed as error:
                dispatcher.stop("ledger", error)

        async def signals() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for signum in received:
                    if not interrupted:
                        interrupted = True
                        log.warning(
                            "interrupted: no new requests; waiting for requests in flight",
                            signal=signal.Signals(signum).name,
                            grace_s=GRACE_SECONDS,
                        )
                        dispatcher.stop("interrupted")
                        dispatch_scope.deadline = anyio.current_time() + GRACE_SECONDS
                    else:
                        log.warning("second signal: abandoning requests in flight")
                        dispatch_scope.cancel()
                    if role is not None and role.on_signal is not None:
                        role.on_signal(signum)

        async def deadline(seconds: float) -> None:
            await anyio.sleep(seconds)
            log.warning("deadline reached: no new requests", deadline_s=seconds)
            dispatcher.stop("deadline")

        tg.start_soon(flusher)
        if live is not None:
            tg.start_soon(_fold_live, live)
        tg.start_soon(signals)
        if shared is not None:
            tg.start_soon(shared.serve)  # reconnects a lost Redis; closes it at the end
        if options.deadline is not None:
            tg.start_soon(deadline, options.deadline)
        if _progress_wanted(options):
            tg.start_soon(_progress, tally, options)
        if role is not None:
            tg.start_soon(role.companion, dispatcher, tally)
        with dispatch_scope:
            await _run_dispatcher(dispatcher, jobs)
        tg.cancel_scope.cancel()

    error = dispatcher.halt_error
    if error is not None:
        exit_code = error.exit_code
        log.error("run halted", reason=dispatcher.stop_reason, error=str(error))
        sys.stderr.write(f"launcher: halted: {error}\n")
    elif interrupted:
        exit_code = EXIT_INTERRUPTED
    elif role is not None:
        # A worker sends a share of unknown size: it answers for the jobs it took.
        exit_code = 0 if tally.started == tally.done and dispatcher.stop_reason is None else 1
    elif segment.already_started + tally.started < plan.jobs:
        exit_code = 1  # finished, but some jobs failed, ended unknown or were never sent
    else:
        exit_code = 0
    ledger.footer(
        {
            "run_id": run_id,
            "reason": dispatcher.stop_reason or "complete",
            "exit_code": exit_code,
            "elapsed_s": round(time.time() - started, 3),
            "finished_at": datetime.now(UTC).isoformat(),
            "tally": {
                "done": tally.done,
                "started": tally.started,
                "failed": tally.failed,
                "unknown": tally.unknown,
                "attempts": tally.attempts,
            },
        }
    )
    return exit_code


async def _fold_live(live: LiveFold) -> None:
    """Fold what the ledger wrote, in batches, while the run goes on (until cancelled)."""
    while True:
        await anyio.sleep(_LIVE_FOLD_INTERVAL)
        live.take()


# Seconds between folds of the events written: ~1,000 events a batch at 10,000 starts/s.
_LIVE_FOLD_INTERVAL = 0.05


async def _run_dispatcher(dispatcher: Dispatcher, jobs: Any) -> None:
    try:
        await dispatcher.run(jobs)
    except* LedgerFailed as group:
        first = group.exceptions[0]
        assert isinstance(first, HaltError)
        dispatcher.stop("ledger", first)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # (validate, or the ledger's open, says why, naming the file)
        return 0


def _has_content(path: str) -> bool:
    return _size(path) > 0


def _progress_wanted(options: RunOptions) -> bool:
    return options.progress != "off"


async def _progress(tally: Tally, options: RunOptions) -> None:
    tty: bool | None = None
    if options.progress == "bar":
        tty = True
    elif options.progress == "lines":
        tty = False
    await show_progress(tally, tty=tty)
