"""The dispatcher: launch a stream of jobs with bounded concurrency, pacing and retries.

It knows nothing of HTTP. It drives a `Service` (send an action, check a job's
state, refresh credentials) and a `Recorder` (the ledger), and decides what to
do with each reply through the pure functions of `launcher.flow.policy`.

Shape: `concurrency` workers pull jobs lazily, one at a time, straight from
the manifest iterator, each running one job's whole attempt loop before it
pulls the next. Memory is therefore proportional to the concurrency, never to
the manifest. Everything lives in one anyio task group.

With per-workspace limits (`--per-workspace`, `[workspaces."ID"]`), a worker
takes the next job whose workspace may send now from `WorkspaceQueues`
(`launcher.flow.workspaces`): a job whose workspace is at its limit waits in
its workspace's queue while the others go on (no head-of-line blocking).
Without such limits, none of this runs: a pull is one `next()`.

Stopping is designed in three strengths:
- `stop(reason)`: no new attempt starts; requests in flight finish and are
  recorded (graceful shutdown, `--deadline`, safety stops);
- cancelling the caller's scope: in-flight requests are abandoned (their
  intents stay in the ledger without results, so they read as `unknown`).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio

from launcher.errors import AuthFailed, HaltError, TlsFailed
from launcher.flow.adaptive import AdaptiveRate
from launcher.flow.pacing import Pacer, RateGate
from launcher.flow.policy import STARTED, HaltRule, RetryBudget, RetryPolicy, classify, retry_delay
from launcher.flow.workspaces import WorkspaceLimits, WorkspaceQueues
from launcher.models import (
    NOT_SENT,
    Action,
    Conclusion,
    Job,
    JobStatus,
    Outcome,
    RecordedVerdict,
    Reply,
    Verdict,
    failure_key,
)

__all__ = [
    "DispatchSettings",
    "Dispatcher",
    "Recorder",
    "Service",
    "Tally",
    "WorkspaceLimits",
    "auth_failure_message",
    "tls_failure_message",
]


class Service(Protocol):
    """What the dispatcher needs from the DLF client."""

    async def call(self, job: Job, action: Action) -> Reply: ...

    async def job_status(self, job: Job) -> JobStatus: ...

    async def instances(
        self, job: Job, min_plan_time_ms: int
    ) -> tuple[Reply, list[dict[str, Any]]]: ...

    async def refresh_auth(self) -> bool: ...


class Recorder(Protocol):
    """What the dispatcher needs from the ledger."""

    def intent(self, job: Job, attempt: int, action: Action) -> None: ...

    def result(
        self,
        job: Job,
        attempt: int,
        reply: Reply,
        verdict: RecordedVerdict,
        outcome: Outcome | None,
    ) -> None: ...

    def check(
        self,
        job: Job,
        attempt: int,
        reply: Reply,
        state: str | None,
        conclusion: Conclusion,
        outcome: Outcome | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """How a run dispatches. `per_workspace` 0 means only the global limit applies."""

    action: Action = "start"
    concurrency: int = 64
    per_workspace: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    canary: bool = True
    status_checks: int = 3  # tries at the status check that settles an ambiguous attempt
    # The settle window (`--settle`): a check's "not taken" (the old state: STOPPED after
    # a start, SCHEDULING after a stop, no instance after a run-immediate) is trusted only
    # this many seconds after the call could still be on its way: after the ambiguous
    # answer (a gateway answers 504 while its backend may do the work later), or on a
    # resume after the earlier run's intent (its process may have died with the request
    # written, and the bytes reach the service later). "Took effect" is trusted at once.
    settle: float = 5.0
    halt: HaltRule | None = None
    # Per-workspace overrides from the config file: workspace -> (concurrency, rate).
    workspaces: Mapping[str, WorkspaceLimits] = field(default_factory=dict)
    # Most jobs held in per-workspace queues, waiting for their workspace's limit.
    look_ahead: int = 10_000


@dataclass(slots=True)
class Tally:
    """Live counters of a run, read by the progress display."""

    total: int = 0
    done: int = 0
    started: int = 0
    failed: int = 0
    unknown: int = 0
    attempts: int = 0
    in_flight: int = 0
    throttled: int = 0
    checking: int = 0  # jobs whose lost answer is being checked (within --settle, mostly)
    failures: Counter[str] = field(default_factory=Counter)
    wave: str = ""  # the wave being sent, for the display ("" when the run has none)
    # Per-workspace limits: jobs read ahead and waiting for their workspace, and
    # each limited workspace's limit as (description, rate or 0.0).
    queued: Counter[str | None] = field(default_factory=Counter)
    limits: dict[str | None, tuple[str, float]] = field(default_factory=dict)


# What `_reconcile` found: the call took effect (the job is `started`), it certainly
# did not (`not_taken`: safe to send again), the check kept failing (`unknown`), or
# the run stopped before it could tell (`in_doubt`: the ledger still shows the lost
# answer, so a resume checks again, its window counted from the intent).
Settled = Literal["started", "not_taken", "unknown", "in_doubt"]

# What a status check says about an ambiguous `start`/`stop`.
_TOOK_EFFECT = {"start": "SCHEDULING", "stop": "STOPPED"}
_NOT_TAKEN = {"start": frozenset({"STOPPED", "PAUSED"}), "stop": frozenset({"SCHEDULING"})}


class Dispatcher:
    """Runs jobs through a `Service`, recording every attempt with a `Recorder`."""

    def __init__(
        self,
        service: Service,
        recorder: Recorder,
        pacer: RateGate,
        settings: DispatchSettings,
        *,
        tally: Tally | None = None,
        rand: random.Random | None = None,
        flow: AdaptiveRate | None = None,
        budget: RetryBudget | None = None,
        prior: Callable[[str], tuple[int, float | None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._recorder = recorder
        self._pacer = pacer
        self._settings = settings
        self.tally = tally if tally is not None else Tally()
        self._rand = rand if rand is not None else random.Random()
        self._flow = flow
        self._budget = budget
        self._prior = prior
        self._clock = clock
        self._stopped = anyio.Event()  # wakes jobs sleeping in a backoff when the run stops
        self._gated = settings.per_workspace > 0 or bool(settings.workspaces)
        self._workspaces = (
            WorkspaceQueues(
                settings.per_workspace,
                settings.workspaces,
                settings.look_ahead,
                clock,
                self.tally.queued,
                self.tally.limits,
            )
            if self._gated
            else None
        )
        self._local_pacer = isinstance(pacer, Pacer)
        self._stopping = False
        self.stop_reason: str | None = None
        self.halt_error: HaltError | None = None
        self._canary_answered = anyio.Event()
        self._released = False  # mirrors _canary_answered.is_set(), read on every pull
        self._canary_out = False  # the canary was pulled and is not answered yet

    # -- control --------------------------------------------------------------

    @property
    def pacer(self) -> RateGate:
        """The run's rate gate (`--wait` paces its polls by it too)."""
        return self._pacer

    @property
    def stopping(self) -> bool:
        """True once `stop` was called: no new attempt will start."""
        return self._stopping

    async def canary_answered(self) -> None:
        """Return once the canary has its answer (or the run stopped, or ran out of jobs)."""
        await self._canary_answered.wait()

    def stop(self, reason: str, error: HaltError | None = None) -> None:
        """Stop starting attempts; requests in flight finish. The first reason wins."""
        if not self._stopping:
            self._stopping = True
            self.stop_reason = reason
            self.halt_error = error
        self._stopped.set()
        self._release()  # release the workers waiting on the canary
        if self._workspaces is not None:
            self._workspaces.stop()  # and those waiting for a workspace

    async def run(self, jobs: Iterable[Job]) -> None:
        """Launch every job of `jobs` (pulled lazily) and return when all are settled."""
        source = iter(jobs)
        self._canary_out = False
        async with anyio.create_task_group() as tg:
            for _ in range(self._settings.concurrency):
                tg.start_soon(self._work, source)

    # -- tasks ----------------------------------------------------------------

    async def _work(self, source: Iterator[Job]) -> None:
        """Pull the next job from the shared iterator and run it, until none is left.

        Workers pull directly (the pull is synchronous, so no two interleave): no
        queue between a reader and the workers, whose hand-over cost a loop
        iteration per job, and a job is only read when a worker is free to send it.
        """
        canary = self._settings.canary
        workspaces = self._workspaces
        while not self._stopping:
            if not self._released:
                if self._canary_out:
                    await self._canary_answered.wait()
                    continue
                # The first request goes alone: if the credentials are wrong, one
                # rejection is all the service sees, not one per worker.
                self._canary_out = canary
            job = await workspaces.next_ready(source) if workspaces else next(source, None)
            if job is None:
                self._release()  # no job at all: nothing to wait for
                return
            try:
                await self._launch(job)
            finally:
                # A canary that never got an HTTP answer (service unreachable)
                # still releases the others: they will meet the same fate,
                # and each records it.
                if not self._released:
                    self._release()

    def _release(self) -> None:
        """The canary was answered (or the run stopped, or had no jobs): everyone may send."""
        self._released = True
        self._canary_answered.set()

    async def _attempt(self, job: Job, attempt: int, action: Action) -> tuple[Reply, float] | None:
        """Wait for a send slot, record the intent, send: (reply, intent Unix time).

        None: stopped before sending, or nothing could be sent.
        """
        workspaces = self._workspaces
        if workspaces is not None:
            gate = workspaces.gate(job.workspace)
            if gate.limiter is not None:
                try:
                    async with gate.limiter:
                        return await self._paced_attempt(job, attempt, action, gate.pacer)
                finally:
                    workspaces.slot_freed()  # its queue may go
            return await self._paced_attempt(job, attempt, action, gate.pacer)
        return await self._paced_attempt(job, attempt, action, None)

    async def _paced_attempt(
        self, job: Job, attempt: int, action: Action, workspace_pacer: Pacer | None
    ) -> tuple[Reply, float] | None:
        if workspace_pacer is not None:
            await workspace_pacer.wait()  # the workspace's own rate first, then the run's
        pacer = self._pacer
        if not self._local_pacer or pacer.rate > 0:
            # (An unlimited local Pacer's wait returns at once: skip its coroutine.)
            await pacer.wait()
        if self._stopping:
            return None
        intent_t = time.time()
        self._recorder.intent(job, attempt, action)
        tally = self.tally
        tally.attempts += 1
        tally.in_flight += 1
        flow = self._flow
        sent_at = self._clock()
        if flow is not None:
            flow.on_send(sent_at)
        try:
            reply = await self._service.call(job, action)
        except AuthFailed as error:
            # Credentials could not be obtained (an IAM login failed): nothing was
            # sent. Record that, so the job reads as pending, and stop the run.
            self._recorder.result(job, attempt, _NOT_SENT, NOT_SENT, None)
            self.stop("auth", error)
            return None
        finally:
            tally.in_flight -= 1
        if flow is not None:
            self._adapt(flow, reply, sent_at)
        return reply, intent_t

    def _adapt(self, flow: AdaptiveRate, reply: Reply, sent_at: float) -> None:
        """Feed the adaptive rate and hand its new rate to the pacer."""
        if reply.status is None:
            return  # no answer: says nothing about the service's limit
        now = self._clock()
        flow.on_answer(now, sent_at, reply.status == 429)
        if flow.throttled:
            pacer = self._pacer
            rate, current = flow.rate, pacer.rate
            # The curve moves a little on every answer; re-pace on cuts and on
            # climbs of more than 1%, not on every answer.
            if rate < current or rate > current * 1.01 or current <= 0:
                pacer.set_rate(rate, now)

    async def _launch(self, job: Job) -> None:
        """One job's attempt loop: send, classify, settle or back off and resend.

        `attempt` numbers attempts across ledger segments (a resumed job goes
        on from its last number); `tries` counts this run's, which
        `--max-attempts` bounds.
        """
        action: Action = job.action or self._settings.action
        policy = self._settings.retry
        refreshed = False
        attempt, in_doubt_since = self._prior(job.id) if self._prior is not None else (0, None)
        # A request of an earlier run may have reached the service: ask first.
        if (
            in_doubt_since is not None
            and await self._reconcile(job, attempt, action, in_doubt_since) != "not_taken"
        ):
            return None
        tries = 0
        while True:
            attempt += 1
            tries += 1
            sent = await (
                self._attempt(job, attempt, action)
                if self._gated
                else self._paced_attempt(job, attempt, action, None)
            )
            if sent is None:
                return None  # stopped while waiting for a slot: the job stays pending
            reply, intent_t = sent
            verdict = classify(reply)
            if verdict is Verdict.TLS_FAILED:
                # Nothing was sent, and nothing will be: every request would meet the
                # same certificate. The job stays pending; the run stops (exit 3).
                self._recorder.result(job, attempt, reply, NOT_SENT, None)
                self.stop("tls", TlsFailed(tls_failure_message(reply)))
                return None
            if not self._released and reply.status is not None and verdict not in _AUTH:
                self._release()
            last_try = tries >= policy.max_attempts

            if verdict is STARTED:
                if self._budget is not None:
                    self._budget.refund()
                return self._settle(job, attempt, reply, verdict, "started")
            if verdict is Verdict.PERMANENT:
                return self._settle(job, attempt, reply, verdict, "failed")
            if verdict is Verdict.REFRESH_AUTH and not refreshed and not last_try:
                refreshed = True
                self._recorder.result(job, attempt, reply, verdict, None)
                try:
                    if await self._service.refresh_auth():
                        continue
                except AuthFailed as error:
                    self._final(job, attempt, reply, "failed")
                    self.stop("auth", error)
                    return None
                verdict = Verdict.AUTH_FAILED
            if verdict in _AUTH:
                self._settle(job, attempt, reply, Verdict.AUTH_FAILED, "failed")
                self.stop("auth", AuthFailed(auth_failure_message(reply)))
                return None
            if verdict is Verdict.AMBIGUOUS:
                self._recorder.result(job, attempt, reply, verdict, None)
                settled = await self._reconcile(
                    job, attempt, action, intent_t, answered=self._clock()
                )
                if settled != "not_taken":
                    return None  # settled by the check: started, or unknown
                if last_try or not self._may_retry(verdict):
                    self._final(job, attempt, reply, "failed")
                    return None
            elif last_try or not self._may_retry(verdict):
                return self._settle(job, attempt, reply, verdict, "failed")
            else:
                self._recorder.result(job, attempt, reply, verdict, None)
            if verdict is Verdict.THROTTLED:
                self.tally.throttled += 1
            delay = retry_delay(verdict, reply, tries, policy, self._rand)
            if delay > 0.0:
                await self._pause(delay)
            if self._stopping:
                return None  # the ledger shows a retryable last attempt: the job is pending

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if the run stops meanwhile."""
        with anyio.move_on_after(delay):
            await self._stopped.wait()

    def _may_retry(self, verdict: Verdict) -> bool:
        return self._budget is None or self._budget.try_spend(verdict)

    async def _reconcile(
        self,
        job: Job,
        attempt: int,
        action: Action,
        intent_t: float,
        *,
        answered: float | None = None,
    ) -> Settled:
        """Settle an ambiguous attempt by asking the service; never resend blindly.

        `start` and `stop` are checked in the job list (SCHEDULING / STOPPED);
        `run-immediate` in the instance list: an instance of the job planned
        after the intent (less `PLAN_TIME_SKEW`) means it ran, because a
        duplicate run-immediate is a duplicate run.

        The settle window: a check that finds the call took effect settles the job
        at once, but one that finds the old state concludes `not_taken` (which
        allows a resend) only once `settle` seconds have passed since the ambiguous
        answer (`answered`, on the dispatcher's clock), or, on a resume (`answered`
        is None), since the earlier intent (`intent_t`, Unix time): the service may
        apply a call late (a 504 while the backend is still at it; the bytes of a
        crashed run's request, read after a quick check). Before that, the check is
        recorded `not_yet` and made again when the window ends. Returns `started`
        (it took effect), `not_taken` (safe to send again) or `unknown` (the check
        kept failing, `status_checks` times).

        A stopping run does not wait out the window (an operator's Ctrl-C at 3 a.m.
        is not held for `--settle`): the job is left `in_doubt`, with no conclusion
        recorded, and a resume makes the check, after the window since the intent.
        """
        policy = self._settings.retry
        now = self._clock()
        settle = self._settings.settle
        if answered is None:  # a resume: the earlier run's request may still arrive
            window_end = now + (intent_t + settle - time.time())
        else:
            window_end = answered + settle
        last_reply = _NO_REPLY
        tally = self.tally
        tally.checking += 1
        try:
            failed = 0
            waited = False  # slept to the window's end: the next "not taken" is trusted
            # Wait first: an answer that was lost may still be in the service's hands.
            delay = retry_delay(Verdict.TRANSIENT, _NO_REPLY, 1, policy, self._rand)
            while True:
                await self._pause(delay)
                if self._stopping:
                    return "in_doubt"
                if action == "run-immediate":
                    since_ms = int((intent_t - PLAN_TIME_SKEW) * 1000)
                    last_reply, instances = await self._service.instances(job, since_ms)
                    state = _instance_state(instances) if last_reply.status == 200 else None
                    took_effect = state is not None and state != "none"
                    not_taken = state == "none"
                else:
                    status = await self._service.job_status(job)
                    last_reply, state = status.reply, status.state
                    took_effect = state == _TOOK_EFFECT[action]
                    # Absent from a list that answered: the job does not exist, so the
                    # action cannot have worked; a resend gets the service's own verdict.
                    not_taken = (state is not None and state in _NOT_TAKEN[action]) or (
                        last_reply.status == 200 and not status.found
                    )
                if took_effect:
                    self._recorder.check(job, attempt, last_reply, state, "took_effect", "started")
                    self._count_final("started", None)
                    return "started"
                if not_taken:
                    early = window_end - self._clock()
                    if early <= 0.0 or waited:
                        self._recorder.check(job, attempt, last_reply, state, "not_taken")
                        return "not_taken"
                    # Too soon to tell: the call may still land. Look again at the end.
                    self._recorder.check(job, attempt, last_reply, state, "not_yet")
                    delay, waited = early, True
                    continue
                self._recorder.check(job, attempt, last_reply, state, "check_failed")
                failed += 1
                if failed >= self._settings.status_checks:
                    break
                delay = retry_delay(Verdict.TRANSIENT, _NO_REPLY, failed + 1, policy, self._rand)
        finally:
            tally.checking -= 1
        self._recorder.check(job, attempt, last_reply, None, "gave_up", "unknown")
        self._count_final("unknown", None)
        return "unknown"

    # -- bookkeeping ----------------------------------------------------------

    def _settle(
        self, job: Job, attempt: int, reply: Reply, verdict: Verdict, outcome: Outcome
    ) -> None:
        self._recorder.result(job, attempt, reply, verdict, outcome)
        self._count_final(outcome, reply)

    def _final(self, job: Job, attempt: int, reply: Reply, outcome: Outcome) -> None:
        self._recorder.check(job, attempt, reply, None, "attempts_exhausted", outcome)
        self._count_final(outcome, reply)

    def _count_final(self, outcome: Outcome, reply: Reply | None) -> None:
        tally = self.tally
        tally.done += 1
        if outcome == "started":
            tally.started += 1
        elif outcome == "failed":
            tally.failed += 1
            if reply is not None:
                tally.failures[
                    failure_key(reply.error_code, reply.status, reply.failure, reply.detail)
                ] += 1
            halt = self._settings.halt
            if halt is not None and halt.tripped(tally.failed, tally.done, tally.total):
                self.stop(
                    "halt",
                    HaltError(
                        f"failure threshold --halt {halt.describe()} crossed: "
                        f"{tally.failed} failed of {tally.done} settled"
                    ),
                )
        else:
            tally.unknown += 1


# How far the service's clock may be behind ours when matching instances to an intent.
PLAN_TIME_SKEW = 30.0


def _instance_state(instances: list[dict[str, Any]]) -> str:
    """`none`, or a description of the newest instance found (`instance 123 running`)."""
    if not instances:
        return "none"
    newest = max(instances, key=lambda entry: entry.get("planTime") or 0)
    return f"instance {newest.get('instanceId')} {newest.get('status')}"


_AUTH = frozenset({Verdict.AUTH_FAILED, Verdict.REFRESH_AUTH})
_NO_REPLY = Reply(None, 0.0)
_NOT_SENT = Reply(None, 0.0, error_msg="not sent: no credentials")


def tls_failure_message(reply: Reply) -> str:
    """Why the run stopped on a certificate that did not verify, and the way out."""
    return (
        f"{reply.detail or 'TLS certificate verification failed'}. Nothing was sent. If the "
        "endpoint uses a private CA, give its certificates with --ca-bundle PEM (it replaces "
        "the system trust store); check that the endpoint's host name is the certificate's."
    )


def auth_failure_message(reply: Reply) -> str:
    """Why the run stopped on a rejected request: the answer, and what to check."""
    detail = f"HTTP {reply.status}"
    if reply.error_code:
        detail += f" {reply.error_code}"
    if reply.error_msg:
        detail += f": {reply.error_msg}"
    return (
        f"authentication failed ({detail}); check the credentials, the project id and the "
        "endpoint. Stopped at once: repeated bad signatures lock an AK/SK pair for 5 minutes."
    )
