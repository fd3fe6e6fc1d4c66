"""`--wait`: follow each accepted `run-immediate` to its end, beside the dispatcher.

The dispatcher sends; it does not wait. `Waiter.recorder` wraps the ledger as
the dispatcher's recorder: a `run-immediate` that settles `started` (answered
with its `instanceId`, or found by a status check after a lost answer) is
handed to the waiter, which polls `GET .../jobs/{name}/instances/{id}` (the
instance list, newest instance planned since the intent, when the id was
lost) until the run ends (`launcher.flow.waiting.FINAL`) or `--wait-timeout`
passes (then `unknown`). Without `--wait` none of this exists: the start path
is the same as before.

- Polls wait for the run's pacer (one rate limit for starts and polls) and
  back off per instance by `poll_delay` (2 s doubling to 60 s, jittered).
  At most `POLLS_IN_FLIGHT` polls are in flight.
- Waits are kept in one heap by next poll time: one small entry per run
  being followed, no task per run.
- Each status change is an `instance` event in the ledger
  (`launcher.ledger.instances` folds them); a timeout writes `unknown`.
- A resume (`follow_resumed`) follows again every started run of the
  manifest whose latest status is not final (timed-out ones included).
- An interrupt, `--deadline` or a ledger failure ends the wait at once:
  the runs not finished stay resumable.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio

from launcher.dlf.client import DlfClient
from launcher.dlf.listing import instance
from launcher.flow.dispatch import PLAN_TIME_SKEW, Dispatcher, Recorder
from launcher.flow.pacing import RateGate
from launcher.flow.waiting import (
    POLL_CAP,
    POLL_START,
    TIMED_OUT,
    is_final,
    poll_delay,
    run_failed,
)
from launcher.ledger import History, Ledger, fold, read_ledger
from launcher.ledger.instances import InstanceFold, fold_instances
from launcher.logs import get_logger
from launcher.models import Action, Conclusion, Job, Outcome, RecordedVerdict, Reply

__all__ = ["POLLS_IN_FLIGHT", "Waiter", "open_waiter", "waiting_summary"]

log = get_logger("launcher.run")

POLLS_IN_FLIGHT = 16
# Stop reasons that end the wait too (a wave's stop does not: its runs are running).
_ENDS_WAIT = frozenset({"interrupted", "deadline", "ledger"})
_TICK = 0.5  # seconds: how often an idle scheduler looks at the stop reason


@dataclass(slots=True)
class _Wait:
    job: Job
    instance_id: int | str | None
    since: float  # Unix time of the intent (or earlier): instances planned after it are ours
    deadline: float  # on the waiter's clock
    status: str | None = None
    polls: int = 0


@dataclass(slots=True)
class Waiter:
    """Follows accepted runs until they end (see the module docstring)."""

    client: DlfClient
    ledger: Ledger
    timeout: float
    action: Action  # the run's --action (a line's own `action` wins)
    run_since: float  # Unix time the run began: the floor for runs whose intent is unknown
    pacer: RateGate | None = None  # the dispatcher's: set once it exists
    poll_start: float = POLL_START  # the backoff's first step and cap (flow/waiting.py)
    poll_cap: float = POLL_CAP
    rand: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    dispatcher: Dispatcher | None = None
    outcomes: Counter[str] = field(default_factory=Counter)  # final statuses this segment saw
    earlier: Counter[str] = field(default_factory=Counter)  # ended before this segment
    _heap: list[tuple[float, int, _Wait]] = field(default_factory=list)
    _order: Iterator[int] = field(default_factory=itertools.count)
    _active: int = 0
    _closed: bool = False
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _idle: anyio.Event = field(default_factory=anyio.Event)

    # -- what is followed ---------------------------------------------------------

    def recorder(self, ledger: Recorder) -> Recorder:
        """`ledger`, handing every run-immediate that settles `started` to this waiter."""
        return _Following(ledger, self)

    def follow(self, job: Job, instance_id: int | str | None, since: float) -> None:
        """Follow the run of `job` (its instance id, when known), from now on."""
        wait = _Wait(job, instance_id, since, self.clock() + self.timeout)
        self._push(self.clock() + self._delay(0), wait)

    def follow_resumed(
        self,
        jobs: Iterable[Job],
        history: History,
        instances: InstanceFold,
        action: Action,
        since: float,
    ) -> None:
        """A resume: follow every started run-immediate of `jobs` whose run has not ended.

        Runs that ended in an earlier segment count in `earlier`. `since`: the
        run's first segment's start, for runs whose instance id was never read.
        """
        for job in jobs:
            if (job.action or action) != "run-immediate":
                continue
            packed = history.state(job.id)
            if not packed or history.decode(packed).outcome != "started":
                continue  # not started: it is sent (and followed) like any other
            status = instances.status(job.id)
            if is_final(status):
                self.earlier[status or ""] += 1
                continue
            wait = _Wait(job, instances.instance_id(job.id), since, self.clock() + self.timeout)
            wait.status = status
            self._push(self.clock(), wait)

    # -- results ----------------------------------------------------------------

    @property
    def failed(self) -> int:
        """Followed runs, this segment's and earlier ones', that did not succeed."""
        return sum(n for status, n in (self.outcomes + self.earlier).items() if run_failed(status))

    @property
    def pending(self) -> int:
        """Runs still being followed (or waiting for their first poll)."""
        return len(self._heap) + self._active

    # -- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Poll due runs until `close` and nothing is left, or the run stops for good."""
        limiter = anyio.Semaphore(POLLS_IN_FLIGHT)
        async with anyio.create_task_group() as tg:
            while not self._stopped():
                if not self._heap:
                    if self._active == 0:
                        self._idle.set()
                        if self._closed:
                            break
                    await self._sleep(_TICK)
                    continue
                due = self._heap[0][0]
                now = self.clock()
                if due > now:
                    await self._sleep(min(due - now, _TICK))
                    continue
                _, _, wait = heapq.heappop(self._heap)
                await limiter.acquire()
                self._active += 1
                tg.start_soon(self._poll, wait, limiter)
            tg.cancel_scope.cancel()  # stopped for good: polls in flight are abandoned
        self._idle.set()
        if self._heap:
            log.warning(
                "wait ended with runs not finished; --resume follows them", runs=self.pending
            )

    def close(self) -> None:
        """No more runs will be followed: `run` returns once the last one ends."""
        self._closed = True
        self._wake.set()

    async def idle(self) -> None:
        """Return once no run is being followed (for the gate between two waves)."""
        while self.pending and not self._stopped():
            self._idle = anyio.Event()
            self._wake.set()
            await self._idle.wait()

    def _stopped(self) -> bool:
        dispatcher = self.dispatcher
        return dispatcher is not None and dispatcher.stop_reason in _ENDS_WAIT

    async def _sleep(self, seconds: float) -> None:
        self._wake = anyio.Event()
        with anyio.move_on_after(seconds):
            await self._wake.wait()

    def _delay(self, polls: int) -> float:
        return poll_delay(polls, self.rand, start=self.poll_start, cap=self.poll_cap)

    def _push(self, due: float, wait: _Wait) -> None:
        heapq.heappush(self._heap, (min(due, wait.deadline), next(self._order), wait))
        self._wake.set()

    async def _poll(self, wait: _Wait, limiter: anyio.Semaphore) -> None:
        try:
            if self.clock() >= wait.deadline:
                self._end(wait, TIMED_OUT)
                return
            if self.pacer is not None:
                await self.pacer.wait()
            status = await self._ask(wait)
            if status is not None and status != wait.status:
                wait.status = status
                self.ledger.instance(wait.job, wait.instance_id, status)
            if is_final(status):
                self._end(wait, status or "")
                return
            wait.polls += 1
            self._push(self.clock() + self._delay(wait.polls), wait)
        finally:
            self._active -= 1
            limiter.release()
            self._wake.set()

    async def _ask(self, wait: _Wait) -> str | None:
        """The run's status now (None: the service did not say)."""
        if wait.instance_id is None:
            since_ms = int((wait.since - PLAN_TIME_SKEW) * 1000)
            reply, found = await self.client.instances(wait.job, since_ms)
            if reply.status != 200 or not found:
                return None
            newest = max(found, key=lambda entry: entry.get("planTime") or 0)
            instance_id = newest.get("instanceId")
            if isinstance(instance_id, int | str) and not isinstance(instance_id, bool):
                wait.instance_id = instance_id
            status = newest.get("status")
            return status if isinstance(status, str) else None
        job = wait.job
        lookup = await instance(
            self.client, job.project_id, job.workspace, job.name, wait.instance_id
        )
        payload = lookup.instance
        status = payload.get("status") if payload is not None else None
        return status if isinstance(status, str) else None

    def _end(self, wait: _Wait, status: str) -> None:
        if status == TIMED_OUT and wait.status != TIMED_OUT:
            self.ledger.instance(wait.job, wait.instance_id, TIMED_OUT)
        self.outcomes[status] += 1


class _Following:
    """A Recorder that passes everything to the ledger and hands started runs to the waiter."""

    __slots__ = ("_intents", "_ledger", "_waiter")

    def __init__(self, ledger: Recorder, waiter: Waiter) -> None:
        self._ledger = ledger
        self._waiter = waiter
        self._intents: dict[str, float] = {}  # run-immediate jobs in flight -> intent time

    def intent(self, job: Job, attempt: int, action: Action) -> None:
        if action == "run-immediate":
            self._intents[job.id] = time.time()
        self._ledger.intent(job, attempt, action)

    def result(
        self,
        job: Job,
        attempt: int,
        reply: Reply,
        verdict: RecordedVerdict,
        outcome: Outcome | None,
    ) -> None:
        self._ledger.result(job, attempt, reply, verdict, outcome)
        self._settled(job, outcome, reply.instance_id)

    def check(
        self,
        job: Job,
        attempt: int,
        reply: Reply,
        state: str | None,
        conclusion: Conclusion,
        outcome: Outcome | None = None,
    ) -> None:
        self._ledger.check(job, attempt, reply, state, conclusion, outcome)
        self._settled(job, outcome, None)

    def _settled(self, job: Job, outcome: Outcome | None, instance_id: int | str | None) -> None:
        if outcome is None:
            return
        waiter = self._waiter
        since = self._intents.pop(job.id, None)
        if outcome == "started" and (job.action or waiter.action) == "run-immediate":
            # No intent here: a resumed job in doubt that a check found started.
            waiter.follow(job, instance_id, since if since is not None else waiter.run_since)


def waiting_summary(waiter: Waiter) -> dict[str, Any]:
    """The wait's counts for the segment's footer."""
    return {
        "ended": dict(waiter.outcomes),
        "earlier": dict(waiter.earlier),
        "still_followed": waiter.pending,
    }


def open_waiter(
    options: Any, client: DlfClient, ledger: Ledger, segment: Any, jobs: Iterable[Job]
) -> tuple[Waiter, InstanceFold | None]:
    """The waiter of a `--wait` segment; a resume's also follows the runs left unfinished.

    `jobs`: the segment's share of the manifest (read once here, on a resume only).
    Returns the earlier segments' instance fold too (None on a first segment).
    """
    history: History | None = segment.history
    run_since = time.time()
    if history is not None and history.headers:
        started_at = history.runs[0].started_at  # a string, as checked on read
        if started_at is not None:
            with contextlib.suppress(ValueError):
                run_since = datetime.fromisoformat(started_at).timestamp()
    waiter = Waiter(client, ledger, options.wait_timeout, options.action, run_since)
    if history is None:
        return waiter, None
    if history.counted_only:  # a finished run's saved counts: each job's state is needed
        history = fold([read_ledger(ledger.path)])
    instances = fold_instances([read_ledger(ledger.path)])
    waiter.follow_resumed(jobs, history, instances, options.action, run_since)
    return waiter, instances
