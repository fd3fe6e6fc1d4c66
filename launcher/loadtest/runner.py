"""`launcher loadtest`: an open-loop load generator that speaks DataArts auth and error codes.

Requests leave at their scheduled times whatever the answers (wrk2, k6's
arrival-rate executors): the scheduler sleeps until the absolute time of slot
k, computed from the start and the rate integral (`Schedule.time_of`), and
hands the slot to a new task in the request task group. It never waits for an
answer. When `max_in_flight` requests are already out, the slot is dropped and
counted, never queued, so a slow service shows up as latency and drops rather
than as a quietly lower rate.

Latency is measured from the slot's scheduled time (corrected for coordinated
omission), service time around the HTTP exchange; both go to HDR histograms
(`loadtest_stats`). A ticker closes each second: live view on stderr, a CSV
row, client-bottleneck warnings and, with `--abort-on-fail`, threshold checks.

Task layout (all structured, all inside one task group):

    run ─┬─ ticker, signal watcher            (helpers, cancelled at the end)
         └─ drain scope ── request group ─┬─ scheduler (in its own cancel scope)
                                          └─ one task per request
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

import anyio
import anyio.abc

from launcher.config import RunOptions
from launcher.errors import EXIT_INTERRUPTED, AuthFailed, TlsFailed, UsageError
from launcher.flow.dispatch import auth_failure_message, tls_failure_message
from launcher.flow.policy import classify, retry_delay
from launcher.loadtest.output import (
    TimeseriesWriter,
    build_summary,
    format_summary,
    live_line,
    metrics_server,
    write_summary_json,
)
from launcher.loadtest.schedule import (
    LoadAction,
    LoadSettings,
    Schedule,
    error_key,
    evaluate_thresholds,
    measure,
    side_effect_warning,
)
from launcher.loadtest.stats import Recorder, SecondRow
from launcher.logs import get_logger
from launcher.models import Action, Job, JobStatus, Reply, Verdict
from launcher.run.connect import connect, ensure_descriptors, resolve_endpoint

__all__ = [
    "EXIT_ALL_FAILED",
    "EXIT_THRESHOLDS",
    "LoadResult",
    "LoadSettings",
    "LoadTest",
    "Service",
    "check_outputs",
    "drive",
    "job_cycle",
    "run_loadtest",
]

EXIT_THRESHOLDS = 99  # a --threshold was breached (k6's exit code for the same)
# Not one request was answered with a start (all errors, or none completed),
# thresholds or not: a load test of nothing but failures did not pass.
EXIT_ALL_FAILED = 98
# Manifests up to this many jobs are cycled from memory; longer ones are streamed
# from the file again at each end, so memory never grows with the manifest.
CACHE_JOBS = 100_000
# The client is the bottleneck when it is this busy: its latencies include its own delay.
BUSY_CPU_PCT = 90.0
BUSY_LAG_MS = 5.0
# --abort-on-fail judges thresholds only once this many answers are in, so the first
# slow answer of a run is not taken for its p99 (nor one error for a 100% error rate).
ABORT_MIN_ANSWERS = 50
_RETRYABLE = frozenset({Verdict.TRANSIENT, Verdict.THROTTLED, Verdict.REFRESH_AUTH})

StopReason = Literal["complete", "manifest_exhausted", "threshold", "auth", "interrupted"]

log = get_logger("launcher.loadtest.runner")


class Service(Protocol):
    """What the engine needs from `DlfClient` (tests may pass their own)."""

    async def call(self, job: Job, action: Action) -> Reply:
        """Send `action` for `job`; never raises for HTTP trouble."""
        ...

    async def refresh_auth(self) -> bool:
        """Renew credentials after APIGW.0307; True when a retry may succeed."""
        ...

    async def job_status(self, job: Job) -> JobStatus:
        """GET the job list filtered by `job`'s name (`--action list`): changes nothing."""
        ...


async def send(service: Service, job: Job, action: LoadAction) -> Reply:
    """One request of a load test. `list` is read-only whatever the manifest line says:
    a line's own `action` is not followed then, so a probe can never start a job."""
    if action == "list":
        return (await service.job_status(job)).reply
    return await service.call(job, job.action or action)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """How a load test ended: its exit code, the summary (as JSON-ready data) and the seconds."""

    exit_code: int
    summary: dict[str, Any]
    rows: tuple[SecondRow, ...]


SlotHandler = Callable[[float, float], bool]


async def drive(
    schedule: Schedule,
    start: float,
    on_slot: SlotHandler,
    *,
    clock: Callable[[], float] = anyio.current_time,
    sleep_until: Callable[[float], Awaitable[None]] = anyio.sleep_until,
) -> tuple[int, float | None]:
    """Call `on_slot(deadline, woke_at)` at each slot's time; return (slots used, end offset).

    Slot k is due at `start + schedule.time_of(k)`: an absolute deadline from
    the start, never the sum of earlier sleeps, so wake-up errors do not add
    up over a long run. A late wake-up fires every slot already due at once
    (their lateness is in their corrected latency). `on_slot` returning False
    ends the run there (the manifest ran out); the end offset is then that
    slot's time, else None (the schedule ran to its end).
    """
    for k in itertools.count():
        offset = schedule.time_of(k)
        if offset is None:
            return k, None
        deadline = start + offset
        await sleep_until(deadline)
        if not on_slot(deadline, clock()):
            return k, offset
    raise AssertionError("unreachable")  # pragma: no cover


def job_cycle(stream: Callable[[], Iterator[Job]], *, jobs: int, once: bool) -> Iterator[Job]:
    """The jobs `stream()` gives, once or over and over.

    A manifest of up to `CACHE_JOBS` jobs is cycled from memory; a longer one
    is streamed again from the file at each end, so memory stays flat.
    """
    if once:
        yield from stream()
        return
    if jobs <= 0:
        raise UsageError("no jobs to send")
    if jobs <= CACHE_JOBS:
        cached = list(stream())
        while True:
            yield from cached
    while True:
        yield from stream()


class LoadTest:
    """One open-loop run against `service`: schedule, send, measure, report."""

    def __init__(
        self,
        service: Service,
        jobs: Iterator[Job],
        settings: LoadSettings,
        *,
        endpoint: str = "",
        err: TextIO | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._service = service
        self._jobs = jobs
        self.settings = settings
        self._endpoint = endpoint
        self._err = err if err is not None else sys.stderr
        self._clock = clock
        self._start = 0.0
        self.recorder = self._new_recorder(0.0)
        self.rows: list[SecondRow] = []
        self._requests: anyio.abc.TaskGroup | None = None
        self._schedule_scope = anyio.CancelScope()
        self._stop_reason: StopReason = "complete"
        self._stop_error: Exception | None = None
        self._window_end: float | None = None
        self._busy_seconds = 0
        self._cpu_mark = (0.0, 0.0)
        self._writer: TimeseriesWriter | None = None
        self._random = random.Random()  # backoff jitter (only with --max-attempts > 1)
        # Where each stage ends (seconds from the start), to tell a slot's stage in O(1).
        spans = settings.schedule.spans()
        self._stage_ends = [begin + duration for begin, duration in spans[:-1]]
        self._stage = 0

    def _new_recorder(self, start: float) -> Recorder:
        stage_latency = any(
            t.stage is not None and t.family in ("latency", "service")
            for t in self.settings.thresholds
        )
        return Recorder(start, stages=self.settings.schedule.spans(), stage_latency=stage_latency)

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> LoadResult:
        """Run the schedule to its end (or a stop), drain, and return the result."""
        settings = self.settings
        wall_start = time.time()
        self._writer = TimeseriesWriter(settings.timeseries) if settings.timeseries else None
        cpu_start = time.process_time()
        try:
            async with anyio.create_task_group() as helpers:
                self._start = self._clock()
                self.recorder = self._new_recorder(self._start)
                self._cpu_mark = (self._start, time.process_time())
                drain_scope = anyio.CancelScope()
                helpers.start_soon(self._ticker)
                if settings.handle_signals:
                    helpers.start_soon(self._signals, drain_scope)
                with drain_scope:
                    async with anyio.create_task_group() as requests:
                        self._requests = requests
                        with self._schedule_scope:
                            _used, end = await drive(
                                settings.schedule, self._start, self._on_slot, clock=self._clock
                            )
                            if end is not None:
                                self._stop_reason = "manifest_exhausted"
                            self._window_end = (
                                end if end is not None else settings.schedule.duration
                            )
                helpers.cancel_scope.cancel()
            finished = self._clock()
            if finished - self._start > len(self.rows) + 0.001:
                self._close_second(finished)  # the last, partial second
        finally:
            if self._writer is not None:
                self._writer.close()
        cpu_pct = (time.process_time() - cpu_start) / max(1e-9, finished - self._start) * 100.0
        return self._result(finished, wall_start, cpu_pct)

    def _stop(self, reason: StopReason, error: Exception | None = None) -> None:
        """Send nothing more; requests in flight finish (and are measured). First reason wins."""
        if self._stop_reason == "complete":
            self._stop_reason = reason
            self._stop_error = error
            if self._window_end is None:
                self._window_end = self._clock() - self._start
        self._schedule_scope.cancel()

    def _on_slot(self, deadline: float, now: float) -> bool:
        recorder = self.recorder
        stage = self._stage
        ends = self._stage_ends
        # Deadlines only grow, so the stage only moves on (1 ns of slack for float sums).
        while stage < len(ends) and deadline - self._start >= ends[stage] - 1e-9:
            stage += 1
        self._stage = stage
        if recorder.in_flight >= self.settings.max_in_flight:
            recorder.slot(deadline, now, sent=False, stage=stage)  # k6's dropped iteration
            return True
        job = next(self._jobs, None)
        if job is None:
            return False
        recorder.slot(deadline, now, sent=True, stage=stage)
        assert self._requests is not None
        self._requests.start_soon(self._request, job, deadline, stage)
        return True

    async def _request(self, job: Job, deadline: float, stage: int = 0) -> None:
        settings = self.settings
        action = settings.action
        finished = False
        try:
            attempt = 1
            while True:
                try:
                    reply = await send(self._service, job, action)
                except AuthFailed as error:  # an IAM login failed: nothing was sent
                    self._stop("auth", error)
                    return
                verdict = classify(reply)
                if verdict is Verdict.REFRESH_AUTH and not await self._refresh():
                    verdict = Verdict.AUTH_FAILED
                if verdict is Verdict.AUTH_FAILED:
                    # Five bad AK/SK signatures in a row lock the key: stop at the first.
                    self._stop("auth", AuthFailed(auth_failure_message(reply)))
                if attempt >= settings.max_attempts or verdict not in _RETRYABLE:
                    break
                self.recorder.retries += 1
                await anyio.sleep(
                    retry_delay(verdict, reply, attempt, settings.retry, self._random)
                    if verdict is not Verdict.REFRESH_AUTH
                    else 0.0
                )
                attempt += 1
            self.recorder.done(
                measure(deadline, self._clock(), reply.latency),
                error_key(reply, verdict),
                answered=reply.status is not None,
                stage=stage,
            )
            finished = True
        finally:
            if not finished:
                self.recorder.abandoned()

    async def _refresh(self) -> bool:
        try:
            return await self._service.refresh_auth()
        except AuthFailed:
            return False

    # -- once a second -------------------------------------------------------------------

    async def _ticker(self) -> None:
        for second in itertools.count(1):
            await anyio.sleep_until(self._start + second)
            self._close_second(self._clock())

    def _close_second(self, now: float) -> None:
        then, cpu_then = self._cpu_mark
        cpu_now = time.process_time()
        self._cpu_mark = (now, cpu_now)
        cpu_pct = (cpu_now - cpu_then) / (now - then) * 100.0 if now > then else 0.0
        closed = len(self.rows)
        # The target in the middle of the second being closed (which may be a partial last one).
        middle = closed + min(1.0, max(0.0, now - self._start - closed)) / 2.0
        target = self.settings.schedule.rate_at(middle)
        row = self.recorder.close_second(now, target_rate=target, cpu_pct=round(cpu_pct, 1))
        self.rows.append(row)
        if self._writer is not None:
            self._writer.write(row)
        # A sliver of a last second says nothing about CPU: 1 ms of work in 1 ms is "100%".
        busy = row.length >= 0.5 and (
            row.cpu_pct >= BUSY_CPU_PCT or (row.scheduled > 0 and row.lag_ms >= BUSY_LAG_MS)
        )
        self._busy_seconds += busy
        if self.settings.live:
            self._show(row, busy)
        if self.settings.abort_on_fail and self._stop_reason == "complete":
            self._judge_live()

    def _show(self, row: SecondRow, busy: bool) -> None:
        recorder = self.recorder
        if self.settings.live_json:
            log.info(
                "loadtest second",
                second=row.second + 1,
                target_rate=round(row.target_rate, 1),
                rate=round(row.rate, 1),
                completed=row.completed,
                in_flight=recorder.in_flight,
                dropped=row.dropped,
                p50_ms=None if row.p50_ms is None else round(row.p50_ms, 2),
                p99_ms=None if row.p99_ms is None else round(row.p99_ms, 2),
                errors=dict(row.error_codes),
                cpu_pct=row.cpu_pct,
                lag_ms=round(row.lag_ms, 2),
                client_bottleneck=busy,
            )
            return
        self._err.write(live_line(row, recorder.in_flight) + "\n")
        if busy:
            self._err.write(
                f"        warning: the load generator is the bottleneck (CPU {row.cpu_pct:.0f}% "
                f"of one core, scheduler {row.lag_ms:.1f} ms late on average): latencies "
                "include client delay; lower the rate or run more generators\n"
            )
        self._err.flush()

    def _judge_live(self) -> None:
        recorder = self.recorder
        if recorder.completed < ABORT_MIN_ANSWERS:
            return
        elapsed = self._clock() - self._start
        results = evaluate_thresholds(
            self.settings.thresholds,
            lambda t: recorder.value_for(t, elapsed=elapsed),
            final=False,
        )
        failed = [r for r in results if not r.passed]
        if failed:
            names = ", ".join(f"{r.threshold.text} at {r.threshold.show(r.value)}" for r in failed)
            self._err.write(f"launcher: threshold breached ({names}): aborting the run\n")
            self._stop("threshold")

    async def _signals(self, drain_scope: anyio.CancelScope) -> None:
        interrupted = False
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for _signum in received:
                if not interrupted:
                    interrupted = True
                    self._err.write(
                        "launcher: interrupted: no new requests; waiting for those in flight "
                        "(a second signal abandons them)\n"
                    )
                    self._stop("interrupted")
                else:
                    drain_scope.cancel()

    def recorder_view(self) -> tuple[Recorder, float, SecondRow | None]:
        """What the metrics endpoint reads: the recorder, the target rate now, the last second."""
        offset = self._clock() - self._start
        return (
            self.recorder,
            self.settings.schedule.rate_at(offset),
            (self.rows[-1] if self.rows else None),
        )

    # -- the end -------------------------------------------------------------------------

    def _result(self, finished: float, wall_start: float, cpu_pct: float) -> LoadResult:
        recorder = self.recorder
        window = max(self._window_end or 0.0, recorder.last_send - self._start)
        results = evaluate_thresholds(
            self.settings.thresholds, lambda t: recorder.value_for(t, elapsed=window)
        )
        passed = all(r.passed for r in results)
        reason = self._stop_reason
        if reason == "auth":
            exit_code = AuthFailed.exit_code
        elif reason == "interrupted":
            exit_code = EXIT_INTERRUPTED
        elif not passed or reason == "threshold":
            exit_code = EXIT_THRESHOLDS
        elif recorder.scheduled > 0 and recorder.completed == recorder.error_count:
            exit_code = EXIT_ALL_FAILED
        else:
            exit_code = 0
        summary = build_summary(
            recorder,
            self.settings,
            results,
            window=window,
            elapsed=finished - self._start,
            target_requests=self.settings.schedule.due_by(window),
            busy_seconds=self._busy_seconds,
            cpu_pct=cpu_pct,
            stop_reason=reason,
            exit_code=exit_code,
            endpoint=self._endpoint,
            started_at=datetime.fromtimestamp(wall_start, UTC).isoformat(),
        )
        if self._stop_error is not None:
            summary["stop_error"] = str(self._stop_error)
        return LoadResult(exit_code, summary, tuple(self.rows))


def _count(value: float) -> float | int | None:
    """A schedule's size for logs: whole when it is, None when open-ended."""
    if math.isinf(value):
        return None
    return int(value) if value == int(value) else value


# --- wiring for the command line -------------------------------------------------------


async def run_loadtest(
    manifest: str,
    options: RunOptions,
    settings: LoadSettings,
    env: Mapping[str, str],
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> LoadResult:
    """Validate the manifest as `run` does, warn, connect, send a canary, load-test, write
    outputs.

    When the action has side effects (every action but `list`) and the
    settings do not acknowledge them (`--yes`), a warning with the number of
    calls goes to `err`; then `confirm` (the CLI passes one only when stdin
    is a terminal) may refuse, and nothing is sent (UsageError). Raises
    UsageError (exit 2) for bad input, before anything is sent, and
    AuthFailed (exit 3) when the canary's credentials are refused.
    """
    from launcher.run.plan import plan_manifest

    stdout = out if out is not None else sys.stdout
    stderr = err if err is not None else sys.stderr
    check_outputs(settings)
    # Before anything is printed or sent: no user info in the endpoint (the
    # warning below names it), no control character in a credential.
    resolve_endpoint(options, env)
    # The same validation as `run`: same messages, exit 2, nothing sent.
    # (Its own message for an empty manifest: `run`'s names --allow-empty, not ours.)
    plan = plan_manifest(manifest, replace(options, allow_empty=True))
    if plan.jobs == 0:
        raise UsageError(f"{manifest}: no jobs to send")
    ensure_descriptors(settings.max_in_flight, "--max-in-flight")
    warning = side_effect_warning(settings, plan.jobs, options.endpoint or options.region or "")
    if warning is not None and not settings.acknowledged:
        stderr.write(f"launcher: warning: {warning}\n")
        stderr.flush()
        if confirm is not None and not confirm("Send them?"):
            raise UsageError("not confirmed: nothing was sent (--yes skips the question)")
    async with connect(options, env, concurrency=settings.max_in_flight) as connection:
        jobs = job_cycle(plan.iter_jobs, jobs=plan.jobs, once=settings.once)
        engine = LoadTest(connection.client, jobs, settings, endpoint=connection.url, err=stderr)
        metrics: AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if settings.metrics_port is not None:
            metrics = metrics_server(
                engine.recorder_view,
                settings.metrics_host,
                settings.metrics_port,
                announce=lambda url: stderr.write(f"launcher: Prometheus metrics at {url}\n"),
            )
        # The metrics endpoint binds first: a port in use stops the run before any request.
        async with metrics:
            if settings.canary:
                await _canary(connection.client, next(plan.iter_jobs()), settings.action)
            log.info(
                "loadtest starting",
                endpoint=connection.url,
                requests=_count(settings.schedule.requests),
                duration_s=_count(settings.schedule.duration),
                max_in_flight=settings.max_in_flight,
                jobs=plan.jobs,
                auth=connection.client.auth.describe(),
            )
            result = await engine.run()
    _write_outputs(result, settings, engine.recorder, stdout)
    return result


def check_outputs(settings: LoadSettings) -> None:
    """Refuse output paths that cannot be written (UsageError), before anything is sent.

    Otherwise a typo in `--report` would be found only after a long run.
    """
    for flag, path in (
        ("--summary-json", settings.summary_json),
        ("--timeseries", settings.timeseries),
        ("--report", settings.report),
    ):
        if path is None:
            continue
        directory = Path(path).absolute().parent
        if not directory.is_dir():
            raise UsageError(f"{flag} {path}: no such directory {directory}")
        if not os.access(directory, os.W_OK) or Path(path).is_dir():
            raise UsageError(f"{flag} {path}: cannot write there")
        if Path(path).is_symlink():  # (and `private_file` opens with O_NOFOLLOW)
            raise UsageError(f"{flag} {path}: is a symbolic link; refused")


async def _canary(client: Service, job: Job, action: LoadAction) -> None:
    """Send one request before the clock starts, and stop at once if it is refused.

    Wrong credentials then cost one refusal, not a burst (five bad signatures
    lock an AK/SK pair). It also opens the first connection. It is in no figure.
    """
    reply = await send(client, job, action)
    verdict = classify(reply)
    if verdict is Verdict.REFRESH_AUTH and await client.refresh_auth():
        return
    if verdict in (Verdict.AUTH_FAILED, Verdict.REFRESH_AUTH):
        raise AuthFailed(auth_failure_message(reply))
    if verdict is Verdict.TLS_FAILED:  # the certificate will not verify for any request
        raise TlsFailed(tls_failure_message(reply))


def _write_outputs(
    result: LoadResult, settings: LoadSettings, recorder: Recorder, out: TextIO
) -> None:
    if settings.summary_json:
        write_summary_json(settings.summary_json, result.summary)
    if settings.report:
        from launcher.loadtest.charts import write_report  # matplotlib: only for --report

        write_report(settings.report, result.summary, result.rows, recorder, settings.thresholds)
    out.write(format_summary(result.summary) + "\n")
    out.flush()
