"""`launcher run`: validate, plan, dispatch, record, report; and the exit code.

This is the one module that wires the stages together. It owns the run's
task group: the dispatcher, the ledger's group-commit flusher, the progress
display and the signal handler all live in it, and all of them stop when
dispatching ends.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import anyio
import orjson

from launcher import __version__
from launcher.adaptive import AdaptiveRate
from launcher.client import path_segment
from launcher.config import RunOptions
from launcher.connect import Connection, connect, resolve_endpoint
from launcher.dispatch import Dispatcher, DispatchSettings, Tally, WorkspaceLimits
from launcher.errors import HaltError, LedgerFailed, ManifestInvalid, UsageError
from launcher.history import History, fold
from launcher.ledger import Ledger, default_ledger_path, read_ledger
from launcher.logs import get_logger
from launcher.manifest import Defaults, Validation, iter_jobs, scan, validate
from launcher.models import Job
from launcher.pacing import Pacer, TokenBucket, format_rate
from launcher.plan import Next, describe_counts, next_step
from launcher.policy import RetryBudget, RetryPolicy, parse_halt
from launcher.progress import show_progress
from launcher.report import Summary, format_text, summarize

__all__ = ["EXIT_INTERRUPTED", "RunResult", "launch", "plan_manifest"]

EXIT_INTERRUPTED = 130
GRACE_SECONDS = 30.0  # how long a first SIGINT/SIGTERM waits for requests in flight

log = get_logger("launcher.run")


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: its exit code, summary and ledger path."""

    exit_code: int
    summary: Summary | None
    ledger: str | None


def plan_manifest(manifest: str, options: RunOptions) -> tuple[Validation, Defaults]:
    """Validate the whole manifest before anything is sent (raises ManifestInvalid)."""
    defaults = Defaults(project_id=options.project_id, workspace=options.workspace)
    validation = validate(
        manifest,
        defaults,
        allow_duplicates=options.allow_duplicates,
        fmt=options.manifest_format,
    )
    validation.raise_if_invalid()
    if options.project_id is None:
        missing = [
            f"{manifest}:{item.line}: project_id: no project id; set project_id on the line, "
            "--project-id, or HUAWEICLOUD_SDK_PROJECT_ID"
            for item in scan(manifest, defaults, fmt=options.manifest_format)
            if isinstance(item, Job) and not item.project_id
        ]
        if missing:
            raise ManifestInvalid(missing[:20], len(missing))
    return validation, defaults


def print_dry_run(
    manifest: str, defaults: Defaults, options: RunOptions, endpoint: str, out: TextIO
) -> None:
    """Print the requests a run would send (the first 20, then a count)."""
    count = 0
    for job in iter_jobs(manifest, defaults, fmt=options.manifest_format):
        count += 1
        if count <= 20:
            action = job.action or options.action
            path = (
                f"/v1/{path_segment(job.project_id or '')}/jobs/{path_segment(job.name)}/{action}"
            )
            body = orjson.dumps(
                {"jobParams": [{"name": p.name, "value": p.value} for p in job.params]}
            ).decode()
            workspace = f" workspace={job.workspace}" if job.workspace else ""
            out.write(f"POST {endpoint}{path}{workspace} {body}\n")
    if count > 20:
        out.write(f"... and {count - 20} more\n")
    out.write(
        f"dry run: {count} job(s) would be sent at {format_rate(options.rate)}, "
        f"concurrency {options.concurrency}; nothing was sent\n"
    )


async def launch(
    manifest: str,
    options: RunOptions,
    env: Mapping[str, str],
    *,
    out: TextIO | None = None,
) -> RunResult:
    """Run a manifest end to end and return the exit code (see interface.md)."""
    stdout = out if out is not None else sys.stdout
    endpoint = resolve_endpoint(options)
    validation, defaults = plan_manifest(manifest, options)
    if options.dry_run:
        print_dry_run(manifest, defaults, options, endpoint, stdout)
        return RunResult(0, None, None)
    if validation.jobs == 0:
        stdout.write(f"{manifest}: no jobs; nothing to do\n")
        return RunResult(0, None, None)

    ledger_path = options.ledger or str(default_ledger_path(manifest))
    segment = plan_segment(ledger_path, validation, options)
    async with connect(options, env) as connection:
        ledger = Ledger(ledger_path, fsync=options.fsync)  # type: ignore[arg-type]
        try:
            exit_code = await _dispatch(
                manifest, validation, defaults, options, connection, ledger, segment
            )
        finally:
            ledger.close()
    summary = summarize([read_ledger(ledger_path)])
    stdout.write(format_text(summary) + "\n")
    stdout.flush()
    return RunResult(exit_code, summary, ledger_path)


@dataclass(frozen=True, slots=True)
class Segment:
    """Which part of a run this invocation is: the first, or a resumption."""

    number: int = 1
    resumes: str | None = None  # run id of the segment before
    history: History | None = None  # what the ledger already says, when resuming
    already_started: int = 0  # jobs started by earlier segments
    already_settled: int = 0  # jobs earlier segments settled for good (started or skipped)

    def prior(self, retry_failed: bool) -> Callable[[str], tuple[int, float | None]] | None:
        """For the dispatcher: a job's attempts so far, and its in-doubt time if any."""
        history = self.history
        if history is None:
            return None
        jobs = history.jobs

        def lookup(job_id: str) -> tuple[int, float | None]:
            record = jobs.get(job_id)
            if record is None:
                return 0, None
            doubt = next_step(record, retry_failed=retry_failed) is Next.CHECK
            return record.attempts, record.last_intent_t if doubt else None

        return lookup

    def to_send(self, jobs: Iterable[Job], retry_failed: bool) -> Iterator[Job]:
        """The manifest's jobs this segment handles (all of them, for a first segment)."""
        history = self.history
        if history is None:
            yield from jobs
            return
        records = history.jobs
        for job in jobs:
            if next_step(records.get(job.id), retry_failed=retry_failed) is not Next.SKIP:
                yield job


def plan_segment(ledger_path: str, validation: Validation, options: RunOptions) -> Segment:
    """Check the ledger against the options; for `--resume`, fold what it already says.

    A fresh run refuses a ledger that holds a run; a resumed one refuses a
    ledger without one, and a manifest whose hash changed unless `--force`.
    """
    if not options.resume:
        if _has_content(ledger_path):
            raise UsageError(
                f"{ledger_path}: the ledger already holds a run; continue it with --resume, "
                "or choose another --ledger"
            )
        return Segment()
    if not _has_content(ledger_path):
        raise UsageError(f"{ledger_path}: --resume needs the ledger of an earlier run")
    history = fold([read_ledger(ledger_path)])
    if not history.headers:
        raise UsageError(f"{ledger_path}: no run header; this is not a launcher ledger")
    recorded = history.manifest_sha256
    if recorded != validation.sha256 and not options.force:
        raise UsageError(
            f"{validation.path}: the manifest changed since the run in {ledger_path} "
            f"(sha256 {str(recorded)[:12]}… then, {validation.sha256[:12]}… now); "
            "resume with the original manifest, or pass --force"
        )
    started = settled = 0
    for record in history.jobs.values():
        if record.outcome == "started":
            started += 1
        if next_step(record, retry_failed=options.retry_failed) is Next.SKIP:
            settled += 1
    last = history.headers[-1]
    log.info(
        "resuming",
        ledger=ledger_path,
        segment=len(history.headers) + 1,
        **describe_counts(
            next_step(r, retry_failed=options.retry_failed) for r in history.jobs.values()
        ),
        never_attempted=max(0, validation.jobs - len(history.jobs)),
        torn_tail=history.torn_tail,
    )
    return Segment(
        number=len(history.headers) + 1,
        resumes=last.get("run_id"),
        history=history,
        already_started=started,
        already_settled=settled,
    )


async def _dispatch(
    manifest: str,
    validation: Validation,
    defaults: Defaults,
    options: RunOptions,
    connection: Connection,
    ledger: Ledger,
    segment: Segment,
) -> int:
    client = connection.client
    run_id = uuid.uuid4().hex
    started = time.time()
    ledger.header(
        {
            "run_id": run_id,
            "segment": segment.number,
            "resumes": segment.resumes,
            "version": __version__,
            "manifest": {
                "path": str(Path(manifest).resolve()),  # noqa: ASYNC240 (once per run)
                "sha256": validation.sha256,
                "jobs": validation.jobs,
                "format": options.manifest_format,
            },
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
        jobs=validation.jobs,
        endpoint=connection.url,
        rate=format_rate(options.rate),
        concurrency=options.concurrency,
        ledger=str(ledger.path),
        auth=client.auth.describe(),
    )
    tally = Tally(total=max(0, validation.jobs - segment.already_settled))
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
    dispatcher = Dispatcher(
        client,
        ledger,
        Pacer(TokenBucket(options.rate, options.burst)),
        settings,
        tally=tally,
        rand=random.Random(),
        flow=flow,
        budget=RetryBudget(capacity=options.retry_budget) if options.retry_budget else None,
        prior=segment.prior(options.retry_failed),
    )
    jobs = segment.to_send(
        iter_jobs(manifest, defaults, fmt=options.manifest_format), options.retry_failed
    )
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

        async def deadline(seconds: float) -> None:
            await anyio.sleep(seconds)
            log.warning("deadline reached: no new requests", deadline_s=seconds)
            dispatcher.stop("deadline")

        tg.start_soon(flusher)
        tg.start_soon(signals)
        if options.deadline is not None:
            tg.start_soon(deadline, options.deadline)
        if _progress_wanted(options):
            tg.start_soon(_progress, tally, options)
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
    elif segment.already_started + tally.started < validation.jobs:
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


async def _run_dispatcher(dispatcher: Dispatcher, jobs: Any) -> None:
    try:
        await dispatcher.run(jobs)
    except* LedgerFailed as group:
        first = group.exceptions[0]
        assert isinstance(first, HaltError)
        dispatcher.stop("ledger", first)


def _has_content(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _progress_wanted(options: RunOptions) -> bool:
    return options.progress != "off"


async def _progress(tally: Tally, options: RunOptions) -> None:
    tty: bool | None = None
    if options.progress == "bar":
        tty = True
    elif options.progress == "lines":
        tty = False
    await show_progress(tally, tty=tty)
