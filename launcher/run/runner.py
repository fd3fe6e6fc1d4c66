"""`launcher run`: validate, plan, then send in this process or in a fleet of workers.

The stages live in their own modules; this one strings them together:
`plan_manifest` (plan.py) validates before anything is sent, `plan_segment`
(resume.py) reads what a resumed ledger already settles, `run_segment`
(segment.py) sends and records, and `start_fleet` (fleet.py) does the same over
several worker processes. The summary at the end is the fold of the ledger.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Mapping
from typing import TextIO

import anyio

from launcher.config import RunOptions
from launcher.dlf.client import job_body, path_segment
from launcher.dlf.transport import backend_options
from launcher.errors import EXIT_INTERRUPTED, HaltError
from launcher.flow.dispatch import Tally
from launcher.flow.pacing import format_rate
from launcher.ledger import (
    Ledger,
    LiveFold,
    catch_up,
    default_ledger_path,
    fold,
    read_ledger,
    save_fold,
    usable_cpus,
)
from launcher.ledger.report import format_text, summary_of
from launcher.run.connect import connect, ensure_descriptors, resolve_endpoint
from launcher.run.metrics import serving_metrics
from launcher.run.plan import Plan, plan_manifest
from launcher.run.resume import Next, Segment, plan_segment, resume_history, step_lookup
from launcher.run.segment import RunResult, run_segment
from launcher.run.waves import has_waves

__all__ = ["launch", "print_dry_run", "resume_hint"]

EXIT_HALTED = HaltError.exit_code


def print_dry_run(
    plan: Plan,
    options: RunOptions,
    endpoint: str,
    out: TextIO,
    segment: Segment | None = None,
) -> None:
    """Print the requests a run would send (the first 20, then a count).

    For a resume (`segment` with its ledger's history), only the jobs the
    resume would send: not the settled ones, and those in doubt marked as
    checked with the service first.
    """
    history = segment.history if segment is not None else None
    jobs = plan.iter_jobs()
    step = None
    if segment is not None and history is not None:
        jobs = segment.to_send(jobs, options.retry_failed)
        step = step_lookup(history, retry_failed=options.retry_failed)
    count = checked = 0
    for job in jobs:
        count += 1
        doubt = step is not None and step(job.id) is Next.CHECK
        checked += doubt
        if count <= 20:
            action = job.action or options.action
            path = (
                f"/v1/{path_segment(job.project_id or '')}/jobs/{path_segment(job.name)}/{action}"
            )
            body = job_body(job).decode()  # exactly what a run would send
            workspace = f" workspace={job.workspace}" if job.workspace else ""
            first = " (after a status check: its last request may have reached the service)"
            out.write(f"POST {endpoint}{path}{workspace} {body}{first if doubt else ''}\n")
    if count > 20:
        out.write(f"... and {count - 20} more\n")
    resumed = ""
    if segment is not None and history is not None:
        resumed = (
            f" by this resume (segment {segment.number}; {checked} checked with the service "
            f"first; {segment.already_settled} already settled and skipped)"
        )
    out.write(
        f"dry run: {count} job(s) would be sent{resumed} at {format_rate(options.rate)}, "
        f"concurrency {options.concurrency}; nothing was sent\n"
    )


def resume_hint(result: RunResult, resume_command: str) -> str | None:
    """The line that says how to resume a run that ended with jobs left (None: none left)."""
    summary = result.summary
    left = summary is not None and (
        summary.outcomes.get("pending", 0) + summary.outcomes.get("unknown", 0) > 0
    )
    if result.ledger is None or not (left or result.exit_code in (EXIT_HALTED, EXIT_INTERRUPTED)):
        return None
    return f"launcher: to resume this run: {resume_command}"


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
    # 700, which found little at a far higher cost (benchmarks/RESULTS.md).
    gc.set_threshold(10_000)
    stdout = out if out is not None else sys.stdout
    endpoint = resolve_endpoint(options, env)
    if not options.dry_run:
        ensure_descriptors(options.concurrency)
    ledger_path = options.ledger or str(default_ledger_path(manifest))
    # A resume folds its ledger first: its latest header may spare re-validation.
    # (A dry run changes no file: it reads a crashed fleet's parts where they are.)
    resumed = resume_history(ledger_path, merge=not options.dry_run) if options.resume else None
    plan = plan_manifest(manifest, options, recorded=resumed.runs[-1] if resumed else None)
    if options.dry_run and resumed is None:
        print_dry_run(plan, options, endpoint, stdout)
        return RunResult(0, None, None)
    if plan.jobs == 0:
        stdout.write(f"{manifest}: no jobs for this run; nothing to do\n")
        return RunResult(0, None, None)

    segment = plan_segment(ledger_path, plan, options, resumed, endpoint=endpoint)
    if resumed is not None and resumed.counted_only and not segment.nothing_left:
        # The snapshot's counts said jobs are left to send: that needs each job's state.
        history = resume_history(ledger_path, saved=False, merge=not options.dry_run)
        segment = plan_segment(ledger_path, plan, options, history, endpoint=endpoint)
    if options.dry_run:
        print_dry_run(plan, options, endpoint, stdout, segment)
        return RunResult(0, None, None)
    # What this process holds now (modules, the plan, a resume's fold) lives to
    # the end: out of every later collection, which would find nothing in it and,
    # in forked workers, copy every page it touched.
    gc.freeze()
    # Waves need one process: the gate between two waves sees every job of the first.
    # So do --wait (one process follows every run it started) and --verify (one check).
    one_process = has_waves(plan.validation.waves) or options.wait or options.verify
    if not segment.nothing_left and options.workers != 1 and not one_process:
        from launcher.run.fleet import choose_workers, start_fleet

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
    tally = Tally()
    async with serving_metrics(options, tally), connect(options, env) as connection:
        # A new ledger (plan_segment refused one with content) is folded as it is
        # written, for the summary (see LiveFold).
        fresh = segment.history is None
        ledger = Ledger(ledger_path, fsync=options.fsync, mirror=fresh)
        live = LiveFold(ledger, plan.jobs) if fresh else None
        try:
            exit_code = await run_segment(
                plan, options, connection, ledger, segment, live=live, tally=tally
            )
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
    if summary.outcomes["pending"]:  # name the never-sent jobs' workspaces, as report does
        from launcher.run.reports import add_never_sent  # only a cut-short run needs it

        # The plan's jobs, unless a shard: the report counts every shard's (from the manifest).
        source = plan.iter_jobs if plan.shard is None else None
        add_never_sent(summary, history, [ledger_path], source)
    stdout.write(format_text(summary) + "\n")
    stdout.flush()
    save_fold(history)  # for the next --resume or report of this ledger
    return RunResult(exit_code, summary, ledger_path)
