"""One segment of a run in one process: header, dispatcher, supervision, footer.

`run_segment` owns the segment's task group: the dispatcher, the ledger's
group-commit flusher, the live fold, the progress display, the signal handler,
the deadline and (in a fleet) the worker's companion all live in it, and all of
them stop when dispatching ends. What the segment's exit code is follows from
how it ended, by `exit_code`, a pure function.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from launcher import __version__
from launcher.config import RunOptions
from launcher.errors import EXIT_INTERRUPTED, HaltError, LedgerFailed
from launcher.flow.adaptive import AdaptiveRate
from launcher.flow.dispatch import Dispatcher, DispatchSettings, Recorder, Tally, WorkspaceLimits
from launcher.flow.pacing import Pacer, RateGate, TokenBucket, format_rate
from launcher.flow.policy import RetryBudget, RetryPolicy, parse_halt
from launcher.ledger import Ledger, LiveFold, Summary
from launcher.ledger.events import EndFields, RunFields
from launcher.logs import get_logger
from launcher.models import Job
from launcher.run.connect import Connection
from launcher.run.plan import GRACE_SECONDS, Plan
from launcher.run.progress import show_progress
from launcher.run.resume import Segment
from launcher.run.verify import verify
from launcher.run.wait import Waiter, open_waiter, waiting_summary
from launcher.run.waves import Waves, has_waves

__all__ = ["RunResult", "WorkerRole", "exit_code", "run_segment"]

log = get_logger("launcher.run")

# Seconds between folds of the events written: ~1,000 events a batch at 10,000 starts/s.
_LIVE_FOLD_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: its exit code, summary and ledger path."""

    exit_code: int
    summary: Summary | None
    ledger: str | None


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """This process is worker `index` of `count` of one run (see `launcher.run.fleet`)."""

    index: int
    count: int
    fleet: str
    # Runs beside the dispatcher: reports the tally to the parent, obeys its orders.
    companion: Callable[[Dispatcher, Tally], Coroutine[Any, Any, None]]
    on_signal: Callable[[int], None] | None = None  # worker 0 passes signals on
    run_options: RunOptions | None = None  # the run's own (a worker's are its share)


def exit_code(
    *,
    halt: HaltError | None,
    interrupted: bool,
    worker: bool,
    stopped: bool,
    started: int,
    done: int,
    jobs: int,
) -> int:
    """The exit code of a segment (interface.md's table), from how it ended.

    `started` counts the run's started jobs, earlier segments' included, and
    `jobs` the run's jobs; a `worker` sends a share of unknown size, so it
    answers for the `done` jobs it took (and any `stopped` reason is a failure).
    """
    if halt is not None:
        return halt.exit_code
    if interrupted:
        return EXIT_INTERRUPTED
    if worker:
        return 0 if started == done and not stopped else 1
    # Finished, but some jobs failed, ended unknown or were never sent: 1.
    return 0 if started >= jobs else 1


async def run_segment(
    plan: Plan,
    options: RunOptions,
    connection: Connection,
    ledger: Ledger,
    segment: Segment,
    role: WorkerRole | None = None,
    *,
    live: LiveFold | None = None,
    tally: Tally | None = None,
) -> int:
    """Send this segment's jobs, recording every attempt; return the exit code.

    `tally` (its total set here) is the caller's when it shows it too (metrics).
    """
    shared = None
    if options.redis or options.shared_concurrency:  # before the header: bad Redis = exit 2
        from launcher.scale.limits import open_shared_limits  # redis-py loads only for --redis

        shared = await open_shared_limits(
            options,
            endpoint=connection.url,
            auth=connection.client.auth,
            simulated=connection.simulated,
        )
    run_id = uuid.uuid4().hex
    started = time.time()
    _write_header(plan, options, connection, ledger, segment, role, run_id, started)
    if tally is None:
        tally = Tally()
    tally.total = max(0, plan.jobs - segment.already_settled)
    # A worker takes every count-th job: a share that costs next to nothing to skip.
    # Which worker sends a job does not matter for resume: every worker folds
    # the whole ledger and skips what is settled.
    share = (role.index, role.count) if role is not None else None
    waiter, instances = (None, None)
    if options.wait:  # --wait: follow accepted runs (run/wait.py); else nothing of it
        waiter, instances = open_waiter(
            options, connection.client, ledger, segment, plan.iter_jobs(share)
        )
    dispatcher = _build_dispatcher(
        options,
        connection,
        ledger,
        segment,
        tally,
        shared,
        waiter.recorder(ledger) if waiter is not None else ledger,
    )
    if waiter is not None:
        waiter.pacer, waiter.dispatcher = dispatcher.pacer, dispatcher

    def send_jobs() -> Iterator[Job]:
        # A manifest changed under a streaming run stops it like a halt (exit 3,
        # resumable).
        return plan.iter_jobs(share, lambda error: dispatcher.stop("manifest_changed", error))

    jobs: Iterator[Job] | Waves
    if has_waves(plan.validation.waves) and not segment.nothing_left:
        jobs = Waves(
            send_jobs,
            plan.validation.waves or {},
            segment,
            options.retry_failed,
            "continue" if options.wave_failures == "continue" else "stop",
            exact_counts=plan.shard is None and role is None,
            shard=options.shard,
            waiter=waiter,
            instances=instances,
        )
    else:
        jobs = segment.to_send(send_jobs(), options.retry_failed)
    interrupted = await _supervise(
        dispatcher, jobs, ledger, tally, options, role, live, shared, waiter
    )
    verified = None
    if options.verify and not interrupted and dispatcher.halt_error is None:
        verified = await verify(
            connection.client,
            ledger,
            lambda: plan.iter_jobs(share),
            options.action,
            RetryPolicy(max_attempts=options.max_attempts, base=options.backoff_base),
            dispatcher.pacer,
        )

    halt = dispatcher.halt_error
    if halt is not None:
        log.error("run halted", reason=dispatcher.stop_reason, error=str(halt))
        sys.stderr.write(f"launcher: halted: {halt}\n")
    code = exit_code(
        halt=halt,
        interrupted=interrupted,
        worker=role is not None,
        stopped=dispatcher.stop_reason is not None,
        started=tally.started if role is not None else segment.already_started + tally.started,
        done=tally.done,
        jobs=plan.jobs,
    )
    if code == 0 and waiter is not None and (waiter.failed or waiter.pending):
        code = 1  # a followed run failed, timed out, or is still running
    if code == 0 and verified is not None and (verified["mismatches"] or "error" in verified):
        code = 1  # a job is not in the state its call set, or the list could not say
    footer: EndFields = {
        "run_id": run_id,
        "reason": dispatcher.stop_reason or "complete",
        "exit_code": code,
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
    if isinstance(jobs, Waves):
        footer["waves"] = jobs.summary()
    if waiter is not None:
        footer["wait"] = waiting_summary(waiter)
    if verified is not None:
        footer["verify"] = {**verified, "shard": options.shard}
    ledger.footer(footer)
    return code


def _write_header(
    plan: Plan,
    options: RunOptions,
    connection: Connection,
    ledger: Ledger,
    segment: Segment,
    role: WorkerRole | None,
    run_id: str,
    started: float,
) -> None:
    """The segment's `run` header: what it runs, against what, with which options."""
    auth = connection.client.auth.describe()
    fields: RunFields = {
        "run_id": run_id,
        "segment": segment.number,
        "resumes": segment.resumes,
        "version": __version__,
        "manifest": {
            "path": str(Path(plan.manifest).resolve()),
            "sha256": plan.validation.sha256,
            "jobs": plan.jobs,
            "total_jobs": plan.validation.jobs,
            "waves": {str(wave): jobs for wave, jobs in (plan.validation.waves or {}).items()},
            "format": options.manifest_format,
        },
        "shard": options.shard,
        "endpoint": connection.url,
        "simulator": connection.simulated,
        "auth": auth,
        "options": options.public(),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    if role is not None:
        fields["worker"] = f"{role.index}/{role.count}"
        fields["fleet"] = role.fleet
        if role.run_options is not None:
            # A worker records its share of the limits, and the run's for a resume.
            fields["run_options"] = role.run_options.public()
    ledger.header(fields)
    log.info(
        "run starting",
        run_id=run_id,
        jobs=plan.jobs,
        shard=options.shard,
        endpoint=connection.url,
        rate=format_rate(options.rate),
        concurrency=options.concurrency,
        ledger=str(ledger.path),
        auth=auth,
    )


def _build_dispatcher(
    options: RunOptions,
    connection: Connection,
    ledger: Ledger,
    segment: Segment,
    tally: Tally,
    shared: Any,
    recorder: Recorder,
) -> Dispatcher:
    """The dispatcher for `options`, sending through the connection's client."""
    client = connection.client
    # Intents reach the OS before their requests, in one write per loop iteration.
    client.write_ahead(ledger.defer_intents())
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
        settle=options.settle,
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
    return Dispatcher(
        shared.service(client) if shared is not None else client,
        recorder,
        pacer,
        settings,
        tally=tally,
        rand=random.Random(),
        flow=flow,
        budget=RetryBudget(capacity=options.retry_budget) if options.retry_budget else None,
        prior=segment.prior(options.retry_failed),
    )


async def _supervise(
    dispatcher: Dispatcher,
    jobs: Iterator[Job] | Waves,
    ledger: Ledger,
    tally: Tally,
    options: RunOptions,
    role: WorkerRole | None,
    live: LiveFold | None,
    shared: Any,
    waiter: Waiter | None = None,
) -> bool:
    """Dispatch `jobs` with everything that runs beside it; True when interrupted.

    A first SIGINT/SIGTERM stops new requests and gives those in flight
    `GRACE_SECONDS`; a second abandons them. A ledger that cannot be written
    stops the run (exit 3).
    """
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
        if options.progress != "off":
            tg.start_soon(show_run_progress, tally, options)
        if role is not None:
            tg.start_soon(role.companion, dispatcher, tally)
        if waiter is not None:
            tg.start_soon(waiter.run)
        with dispatch_scope:
            await _run_dispatcher(dispatcher, jobs)
            if waiter is not None:  # every run sent: follow them to their end
                waiter.close()
                await waiter.idle()
        tg.cancel_scope.cancel()
    return interrupted


async def _fold_live(live: LiveFold) -> None:
    """Fold what the ledger wrote, in batches, while the run goes on (until cancelled)."""
    while True:
        await anyio.sleep(_LIVE_FOLD_INTERVAL)
        live.take()


async def _run_dispatcher(dispatcher: Dispatcher, jobs: Iterator[Job] | Waves) -> None:
    try:
        await (jobs.run(dispatcher) if isinstance(jobs, Waves) else dispatcher.run(jobs))
    except* LedgerFailed as group:
        first = group.exceptions[0]
        assert isinstance(first, HaltError)
        dispatcher.stop("ledger", first)


async def show_run_progress(tally: Tally, options: RunOptions) -> None:
    """The progress display `--progress` asks for (bar, lines, or auto: a bar on a TTY)."""
    tty = {"bar": True, "lines": False}.get(options.progress)
    await show_progress(tally, tty=tty)
