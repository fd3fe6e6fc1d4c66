"""The dispatcher against an in-memory `Service` (its one swap point): limits, retries,
ambiguity, canary and stopping. The real ledger records every run and the report
reads it back, so these also cover the ledger-report round trip without sockets."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.errors import AuthFailed, TlsFailed
from launcher.flow.dispatch import Dispatcher, DispatchSettings, WorkspaceLimits
from launcher.flow.pacing import Pacer, TokenBucket
from launcher.flow.policy import RetryPolicy
from launcher.ledger import Ledger, fold, read_ledger
from launcher.ledger.report import Summary, summarize
from launcher.models import Action, Failure, Job, JobStatus, Reply
from launcher.run.resume import Next, next_step

pytestmark = pytest.mark.anyio

OK = Reply(204, 0.001)


def make_jobs(count: int, workspace: str | None = None, prefix: str = "job") -> list[Job]:
    return [
        Job(
            id=f"{prefix}-{n}",
            name=f"{prefix}-{n}",
            params=(),
            workspace=workspace,
            project_id="p",
            line=n + 1,
        )
        for n in range(count)
    ]


class FakeService:
    """Answers from a per-job script (then 204), tracks concurrency and effects."""

    def __init__(self, script: dict[str, list[Reply]] | None = None, delay: float = 0.0) -> None:
        self.script = {name: list(replies) for name, replies in (script or {}).items()}
        self.delay = delay
        self.calls: list[str] = []
        self.in_flight = 0
        self.peak = 0
        self.peak_by_workspace: dict[str | None, int] = defaultdict(int)
        self._by_workspace: dict[str | None, int] = defaultdict(int)
        self.state: dict[str, str] = {}
        self.status_script: dict[str, list[JobStatus]] = {}
        self.refreshes = 0
        self.refresh_result = True
        self.first_call_alone: bool | None = None
        self.calls_seen = anyio.Event()  # set once `notify_after` calls were made
        self.notify_after = 0
        self.looked = anyio.Event()  # set at the first status check

    async def call(self, job: Job, action: Action) -> Reply:
        self.calls.append(job.name)
        if len(self.calls) == self.notify_after:
            self.calls_seen.set()
        self.in_flight += 1
        self._by_workspace[job.workspace] += 1
        self.peak = max(self.peak, self.in_flight)
        self.peak_by_workspace[job.workspace] = max(
            self.peak_by_workspace[job.workspace], self._by_workspace[job.workspace]
        )
        try:
            await anyio.sleep(self.delay)
            if len(self.calls) == 1:
                await anyio.sleep(0.02)  # give others the chance to (wrongly) start
                self.first_call_alone = self.peak == 1
            replies = self.script.get(job.name)
            reply = replies.pop(0) if replies else OK
            if reply.status == 204 or reply.failure is Failure.TIMEOUT:
                self.state[job.name] = "SCHEDULING"
            return reply
        finally:
            self.in_flight -= 1
            self._by_workspace[job.workspace] -= 1

    async def job_status(self, job: Job) -> JobStatus:
        self.looked.set()
        scripted = self.status_script.get(job.name)
        if scripted:
            return scripted.pop(0)
        state = self.state.get(job.name, "STOPPED")
        return JobStatus(Reply(200, 0.001), state, True)

    async def instances(
        self, job: Job, min_plan_time_ms: int
    ) -> tuple[Reply, list[dict[str, Any]]]:
        return Reply(200, 0.001), []

    async def refresh_auth(self) -> bool:
        self.refreshes += 1
        return self.refresh_result


async def dispatch(
    tmp_path: Path,
    jobs: list[Job] | Iterator[Job],
    service: FakeService,
    *,
    concurrency: int = 8,
    per_workspace: int = 0,
    max_attempts: int = 4,
    canary: bool = True,
    total: int | None = None,
    workspaces: dict[str, WorkspaceLimits] | None = None,
    look_ahead: int = 10_000,
    stop_after: int = 0,
    settle: float = 0.05,
) -> tuple[Dispatcher, Summary]:
    """Dispatch `jobs` to `service`; with `stop_after`, stop the run once that many calls
    were made (the rest end pending). `settle`: a short window, so a check that finds a
    lost answer's call not taken resends soon."""
    ledger_path = tmp_path / "ledger.jsonl"
    ledger = Ledger(ledger_path, fsync="never")
    count = total if total is not None else len(jobs)  # type: ignore[arg-type]
    ledger.header({"run_id": "r1", "manifest": {"jobs": count}})
    settings = DispatchSettings(
        concurrency=concurrency,
        per_workspace=per_workspace,
        retry=RetryPolicy(max_attempts=max_attempts, base=0.001, cap=0.01, throttle_base=0.001),
        canary=canary,
        workspaces=workspaces or {},
        look_ahead=look_ahead,
        settle=settle,
    )
    dispatcher = Dispatcher(service, ledger, Pacer(TokenBucket(0.0)), settings)
    if stop_after:
        service.notify_after = stop_after
        async with anyio.create_task_group() as tg:

            async def stop_when_seen() -> None:
                await service.calls_seen.wait()
                dispatcher.stop("enough")

            tg.start_soon(stop_when_seen)
            await dispatcher.run(jobs)
            tg.cancel_scope.cancel()
    else:
        await dispatcher.run(jobs)
    ledger.footer({"reason": dispatcher.stop_reason or "complete"})
    ledger.close()
    return dispatcher, summarize([read_ledger(ledger_path)])


async def test_every_job_starts_once_and_the_report_agrees(tmp_path: Path) -> None:
    service = FakeService(delay=0.001)
    _, summary = await dispatch(tmp_path, make_jobs(200), service)
    assert sorted(service.calls) == sorted(job.name for job in make_jobs(200))
    assert summary.jobs == 200
    assert summary.outcomes == {"started": 200, "failed": 0, "unknown": 0, "pending": 0}
    assert summary.attempts == 200


async def test_in_flight_never_exceeds_the_concurrency(tmp_path: Path) -> None:
    service = FakeService(delay=0.002)
    await dispatch(tmp_path, make_jobs(100), service, concurrency=7)
    assert service.peak == 7


async def test_per_workspace_limit_holds_while_others_proceed(tmp_path: Path) -> None:
    jobs = [
        j
        for pair in zip(make_jobs(40, "ws-a", "a"), make_jobs(40, "ws-b", "b"), strict=True)
        for j in pair
    ]
    service = FakeService(delay=0.002)
    await dispatch(tmp_path, jobs, service, concurrency=10, per_workspace=3)
    assert service.peak_by_workspace["ws-a"] <= 3
    assert service.peak_by_workspace["ws-b"] <= 3
    assert service.peak >= 4  # the two workspaces ran side by side


async def test_a_slow_workspace_at_the_head_does_not_hold_back_the_others(
    tmp_path: Path,
) -> None:
    """Issue 16: `ws-warehouse` at 5/s at the head of the manifest held every other
    workspace back (their first request after 16.8 s). Here it is at 1/s: after its
    first job, each next one waits a second, and the 30 others go meanwhile."""
    jobs = make_jobs(6, "ws-warehouse", "wh") + make_jobs(30, "ws-other", "o")
    service = FakeService()
    dispatcher, summary = await dispatch(
        tmp_path,
        jobs,
        service,
        concurrency=4,
        workspaces={"ws-warehouse": WorkspaceLimits(rate=1.0)},
        stop_after=31,  # the canary and the 30 others: then stop (no need to wait 5 s)
    )
    assert service.calls[:31] == ["wh-0"] + [f"o-{n}" for n in range(30)]
    assert summary.outcomes["started"] >= 31
    assert dispatcher.tally.limits == {"ws-warehouse": ("1/s", 1.0)}


async def test_a_workspace_at_its_in_flight_limit_does_not_hold_back_the_others(
    tmp_path: Path,
) -> None:
    class SlowWarehouse(FakeService):
        async def call(self, job: Job, action: Action) -> Reply:
            if job.workspace == "ws-warehouse":
                await anyio.sleep(0.3)
            return await super().call(job, action)

    jobs = make_jobs(5, "ws-warehouse", "wh") + make_jobs(30, "ws-other", "o")
    service = SlowWarehouse()
    dispatcher, _ = await dispatch(
        tmp_path,
        jobs,
        service,
        concurrency=4,
        canary=False,
        workspaces={"ws-warehouse": WorkspaceLimits(concurrency=1)},
    )
    # wh-0 is in flight (0.3 s); the others all go before wh-1 may.
    assert service.calls.index("wh-1") > service.calls.index("o-29")
    assert service.peak_by_workspace["ws-warehouse"] == 1
    assert sorted(service.calls) == sorted(job.name for job in jobs)
    assert dispatcher.tally.queued == {}


async def test_jobs_read_ahead_of_their_workspace_stay_bounded(tmp_path: Path) -> None:
    """The queues hold at most `look_ahead` jobs: a manifest of one slow workspace is not
    read into memory while the workers wait for it."""
    read = 0
    sent_at_read: list[int] = []
    service = FakeService()

    def source() -> Iterator[Job]:
        nonlocal read
        for job in make_jobs(40, "ws-warehouse", "wh") + make_jobs(10, "ws-other", "o"):
            read += 1
            sent_at_read.append(read - len(service.calls))  # read, not yet sent
            yield job

    _, summary = await dispatch(
        tmp_path,
        source(),
        service,
        concurrency=4,
        canary=False,
        total=50,
        look_ahead=5,
        workspaces={"ws-warehouse": WorkspaceLimits(rate=200.0)},
    )
    assert summary.outcomes["started"] == 50
    assert max(sent_at_read) <= 5 + 4 + 1  # queued, in the workers' hands, and this one


class _NullRecorder:
    def intent(self, *args: Any) -> None: ...

    def result(self, *args: Any) -> None: ...

    def check(self, *args: Any, **kwargs: Any) -> None: ...


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=40),
    limits=st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.tuples(st.integers(0, 3), st.sampled_from([0.0, 400.0, 2000.0])),
    ),
    concurrency=st.integers(1, 6),
    look_ahead=st.integers(1, 6),
    canary=st.booleans(),
)
def test_per_workspace_queues_send_every_job_once_within_its_limits(
    layout: list[str | None],
    limits: dict[str, tuple[int, float]],
    concurrency: int,
    look_ahead: int,
    canary: bool,
) -> None:
    """Whatever the mix of workspaces and limits: every job is sent exactly once, no
    workspace exceeds its in-flight limit, and the queues end empty."""
    jobs = [
        Job(id=f"j{n}", name=f"j{n}", params=(), workspace=ws, project_id="p", line=n + 1)
        for n, ws in enumerate(layout)
    ]
    service = FakeService(delay=0.0005)
    settings_ = DispatchSettings(
        concurrency=concurrency,
        canary=canary,
        look_ahead=look_ahead,
        workspaces={ws: WorkspaceLimits(c, r) for ws, (c, r) in limits.items()},
    )

    async def main() -> Dispatcher:
        dispatcher = Dispatcher(service, _NullRecorder(), Pacer(TokenBucket(0.0)), settings_)
        with anyio.fail_after(10):
            await dispatcher.run(jobs)
        return dispatcher

    dispatcher = anyio.run(main)
    assert sorted(service.calls) == sorted(job.name for job in jobs)
    for ws, (cap, _rate) in limits.items():
        if cap:
            assert service.peak_by_workspace[ws] <= cap
    assert not dispatcher.tally.queued
    assert service.peak <= concurrency


async def test_transient_failures_are_retried_until_started(tmp_path: Path) -> None:
    script = {
        "job-0": [Reply(503, 0.0), Reply(500, 0.0)],
        "job-1": [Reply(429, 0.0, error_code="APIGW.0308")],
        "job-2": [Reply(None, 0.0, failure=Failure.CONNECT)],
    }
    service = FakeService(script)
    _, summary = await dispatch(tmp_path, make_jobs(3), service, canary=False)
    assert summary.outcomes["started"] == 3
    assert service.calls.count("job-0") == 3
    assert summary.attempts == 3 + 2 + 2


async def test_permanent_failures_are_not_retried_and_counted_by_code(tmp_path: Path) -> None:
    missing = Reply(400, 0.0, error_code="DLF.0100", error_msg="The job does not exists.")
    service = FakeService({"job-1": [missing]})
    _, summary = await dispatch(tmp_path, make_jobs(3), service)
    assert service.calls.count("job-1") == 1
    assert summary.outcomes["failed"] == 1
    assert summary.failed_by_code == {"DLF.0100": 1}


async def test_attempts_are_bounded_and_exhaustion_is_a_failure(tmp_path: Path) -> None:
    service = FakeService({"job-0": [Reply(503, 0.0)] * 10})
    _, summary = await dispatch(tmp_path, make_jobs(1), service, max_attempts=3)
    assert service.calls.count("job-0") == 3
    assert summary.outcomes["failed"] == 1
    assert summary.failed_by_code == {"HTTP 503": 1}


async def test_a_lost_answer_is_checked_not_resent_when_the_start_took_effect(
    tmp_path: Path,
) -> None:
    service = FakeService({"job-0": [Reply(None, 1.0, failure=Failure.TIMEOUT)]})
    _, summary = await dispatch(tmp_path, make_jobs(1), service)
    assert service.calls == ["job-0"]
    assert summary.outcomes["started"] == 1
    assert summary.reconciled == 1


async def test_a_lost_answer_is_resent_when_the_check_says_it_did_not_start(
    tmp_path: Path,
) -> None:
    service = FakeService({"job-0": [Reply(None, 0.0, failure=Failure.DISCONNECT)]})
    _, summary = await dispatch(tmp_path, make_jobs(1), service)
    assert service.calls == ["job-0", "job-0"]
    assert summary.outcomes["started"] == 1
    # The quick look is too soon to trust "not taken"; the look after the window is.
    events = read_ledger(tmp_path / "ledger.jsonl").events
    assert [e["conclusion"] for e in events if e["event"] == "check"] == ["not_yet", "not_taken"]


async def test_a_call_found_in_effect_is_settled_at_once_whatever_the_window(
    tmp_path: Path,
) -> None:
    """The window only delays a resend: a check that finds the call in effect settles it."""
    service = FakeService({"job-0": [Reply(504, 0.0, error_code="APIGW.0203")]})
    service.state["job-0"] = "SCHEDULING"
    with anyio.fail_after(10):
        _, summary = await dispatch(tmp_path, make_jobs(1), service, settle=3600.0)
    assert summary.outcomes["started"] == 1
    assert service.calls == ["job-0"]


async def test_a_stop_inside_the_window_leaves_the_job_in_doubt_at_once(tmp_path: Path) -> None:
    """Ctrl-C is not held for --settle: the job keeps its lost answer, unconcluded,
    and a resume checks it (never a blind resend)."""
    service = FakeService({"job-0": [Reply(None, 0.0, failure=Failure.DISCONNECT)]})
    ledger = Ledger(tmp_path / "ledger.jsonl", fsync="never")
    ledger.header({"run_id": "r1", "manifest": {"jobs": 1}})
    settings = DispatchSettings(
        concurrency=1, retry=RetryPolicy(base=0.001, cap=0.01), settle=3600.0
    )
    dispatcher = Dispatcher(service, ledger, Pacer(TokenBucket(0.0)), settings)
    with anyio.fail_after(10):  # far inside the hour-long window
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run, make_jobs(1))
            # The quick look found STOPPED (`not_yet`); the job now waits out the window.
            await service.looked.wait()
            dispatcher.stop("interrupted")
    ledger.close()
    assert service.calls == ["job-0"]
    assert dispatcher.tally.checking == 0
    read = read_ledger(tmp_path / "ledger.jsonl")
    assert [e["conclusion"] for e in read.events if e["event"] == "check"] == ["not_yet"]
    record = fold([read_ledger(tmp_path / "ledger.jsonl")]).record("job-0")
    assert record is not None
    assert record.outcome is None
    assert next_step(record, retry_failed=False) is Next.CHECK


async def test_when_the_check_keeps_failing_the_job_ends_unknown(tmp_path: Path) -> None:
    service = FakeService({"job-0": [Reply(None, 0.0, failure=Failure.DISCONNECT)]})
    service.status_script["job-0"] = [JobStatus(Reply(503, 0.0), None, False)] * 5
    _, summary = await dispatch(tmp_path, make_jobs(1), service)
    assert service.calls == ["job-0"]
    assert summary.outcomes["unknown"] == 1
    events = read_ledger(tmp_path / "ledger.jsonl").events
    assert [e["conclusion"] for e in events if e["event"] == "check"] == [
        "check_failed",
        "check_failed",
        "check_failed",
        "gave_up",
    ]


async def test_canary_goes_alone_and_bad_credentials_stop_the_run(tmp_path: Path) -> None:
    rejected = Reply(401, 0.0, error_code="APIGW.0301", error_msg="verify aksk signature fail")
    service = FakeService({f"job-{n}": [rejected] for n in range(100)})
    dispatcher, summary = await dispatch(tmp_path, make_jobs(100), service, concurrency=64)
    assert service.calls == ["job-0"]
    assert isinstance(dispatcher.halt_error, AuthFailed)
    assert "APIGW.0301" in str(dispatcher.halt_error)
    assert summary.outcomes["failed"] == 1
    assert summary.outcomes["pending"] == 99


async def test_canary_is_alone_even_when_it_succeeds(tmp_path: Path) -> None:
    service = FakeService(delay=0.001)
    await dispatch(tmp_path, make_jobs(50), service, concurrency=16)
    assert service.first_call_alone is True
    assert service.peak > 1


async def test_expired_token_is_refreshed_once_then_the_run_goes_on(tmp_path: Path) -> None:
    expired = Reply(401, 0.0, error_code="APIGW.0307")
    service = FakeService({"job-0": [expired]})
    dispatcher, summary = await dispatch(tmp_path, make_jobs(5), service)
    assert service.refreshes == 1
    assert dispatcher.halt_error is None
    assert summary.outcomes["started"] == 5


async def test_a_token_that_stays_rejected_after_refresh_halts(tmp_path: Path) -> None:
    expired = Reply(401, 0.0, error_code="APIGW.0307")
    service = FakeService({"job-0": [expired, expired]})
    dispatcher, _ = await dispatch(tmp_path, make_jobs(5), service)
    assert isinstance(dispatcher.halt_error, AuthFailed)
    assert service.calls == ["job-0", "job-0"]  # never more than 2 rejected requests


async def test_jobs_are_pulled_lazily(tmp_path: Path) -> None:
    """Memory stays proportional to the concurrency: the feeder is never far ahead."""
    pulled = 0
    service = FakeService(delay=0.001)
    max_lead = 0

    def jobs() -> Iterator[Job]:
        nonlocal pulled, max_lead
        for job in make_jobs(500):
            pulled += 1
            max_lead = max(max_lead, pulled - len(service.calls))
            yield job

    await dispatch(tmp_path, jobs(), service, concurrency=8, total=500)
    assert pulled == 500
    assert max_lead <= 8 * 2 + 2


async def test_stop_leaves_unsent_jobs_pending(tmp_path: Path) -> None:
    service = FakeService(delay=0.005)
    service.notify_after = 20
    ledger = Ledger(tmp_path / "l.jsonl", fsync="never")
    ledger.header({"run_id": "r", "manifest": {"jobs": 1000}})
    dispatcher = Dispatcher(
        service, ledger, Pacer(TokenBucket(0.0)), DispatchSettings(concurrency=4)
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run, itertools.islice(make_jobs(1000), 1000))
        await service.calls_seen.wait()
        dispatcher.stop("interrupted")
    ledger.close()
    summary = summarize([read_ledger(tmp_path / "l.jsonl")])
    assert summary.outcomes["unknown"] == 0  # in-flight requests finished and were recorded
    assert summary.outcomes["started"] == len(service.calls)
    assert summary.outcomes["pending"] == 1000 - len(service.calls)


async def test_an_untrusted_certificate_stops_the_run_after_the_canary(tmp_path: Path) -> None:
    tls = Reply(None, 0.0, failure=Failure.TLS, detail="TLS certificate of h:443 not trusted: x")
    service = FakeService({f"job-{n}": [tls] for n in range(20)})
    dispatcher, summary = await dispatch(tmp_path, make_jobs(20), service)
    assert service.calls == ["job-0"]  # nothing else was even tried
    assert dispatcher.stop_reason == "tls"
    assert isinstance(dispatcher.halt_error, TlsFailed)
    assert dispatcher.halt_error.exit_code == 3
    assert "not trusted" in str(dispatcher.halt_error)
    assert "--ca-bundle" in str(dispatcher.halt_error)
    assert summary.outcomes == {"started": 0, "failed": 0, "unknown": 0, "pending": 20}


async def test_a_5xx_on_start_is_checked_before_any_resend(tmp_path: Path) -> None:
    # The gateway's 504 came back while the start took effect: the check says so.
    service = FakeService({"job-0": [Reply(504, 0.0, error_code="APIGW.0203")]})
    service.state["job-0"] = "SCHEDULING"
    _, summary = await dispatch(tmp_path, make_jobs(1), service)
    assert service.calls == ["job-0"]
    assert summary.outcomes["started"] == 1


async def test_a_refusal_before_forwarding_is_resent_without_a_check(tmp_path: Path) -> None:
    service = FakeService({"job-0": [Reply(500, 0.0, error_code="APIGW.0103")]})
    service.state["job-0"] = "SCHEDULING"  # a check would (wrongly) settle it as started
    _, summary = await dispatch(tmp_path, make_jobs(1), service)
    assert service.calls == ["job-0", "job-0"]
    assert summary.outcomes["started"] == 1


async def test_failures_without_an_answer_are_counted_by_their_reason(tmp_path: Path) -> None:
    refused = Reply(None, 0.0, failure=Failure.CONNECT, detail="cannot connect to h:1: refused")
    service = FakeService({f"job-{n}": [refused] * 9 for n in range(2)})
    dispatcher, summary = await dispatch(tmp_path, make_jobs(2), service, max_attempts=2)
    assert summary.failed_by_code == {"connect: cannot connect to h:1: refused": 2}
    assert dispatcher.tally.failures == summary.failed_by_code


class LateInstances(FakeService):
    """run-immediate: the first call's answer is lost, and its instance only shows in the
    list `late` seconds later (the service was still processing it)."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late
        self.runs: list[float] = []

    async def call(self, job: Job, action: Action) -> Reply:
        self.calls.append(job.name)
        self.runs.append(time.monotonic())
        if len(self.runs) == 1:
            return Reply(None, 0.0, failure=Failure.TIMEOUT, detail="no answer within 10 s")
        return Reply(200, 0.0, instance_id=len(self.runs))

    async def instances(
        self, job: Job, min_plan_time_ms: int
    ) -> tuple[Reply, list[dict[str, Any]]]:
        visible = [t for t in self.runs if time.monotonic() >= t + self.late]
        found = [
            {"instanceId": n, "status": "running", "planTime": 1} for n, _ in enumerate(visible)
        ]
        return Reply(200, 0.001), found


@pytest.mark.parametrize(("settle", "runs"), [(0.0, 2), (0.4, 1)])
async def test_run_immediate_waits_for_a_late_instance_before_any_resend(
    tmp_path: Path, settle: float, runs: int
) -> None:
    service = LateInstances(late=0.2)
    ledger = Ledger(tmp_path / "l.jsonl", fsync="never")
    ledger.header({"run_id": "r1", "manifest": {"jobs": 1}})
    settings = DispatchSettings(
        action="run-immediate",
        concurrency=1,
        retry=RetryPolicy(max_attempts=4, base=0.001, cap=0.01),
        settle=settle,
    )
    dispatcher = Dispatcher(service, ledger, Pacer(TokenBucket(0.0)), settings)
    await dispatcher.run(make_jobs(1))
    ledger.close()
    # Without the settle time the early check sees no instance and runs the job again.
    assert len(service.runs) == runs
    assert dispatcher.tally.started == 1


class LateRun(LateInstances):
    """A resume: the earlier run's run-immediate (written just before a crash) makes its
    instance `late` seconds after its intent."""

    def __init__(self, intent_t: float, late: float) -> None:
        super().__init__(late)
        self.earlier = time.monotonic() + (intent_t - time.time())

    async def call(self, job: Job, action: Action) -> Reply:
        self.calls.append(job.name)
        self.runs.append(time.monotonic())
        return Reply(200, 0.0, instance_id=len(self.runs))

    async def instances(
        self, job: Job, min_plan_time_ms: int
    ) -> tuple[Reply, list[dict[str, Any]]]:
        reply, found = await super().instances(job, min_plan_time_ms)
        if time.monotonic() >= self.earlier + self.late:
            found.append({"instanceId": 0, "status": "running", "planTime": 1})
        return reply, found


@pytest.mark.parametrize(("settle", "runs"), [(0.0, 2), (0.4, 1)])
async def test_a_resume_waits_for_a_run_of_the_earlier_segment_before_resending(
    tmp_path: Path, settle: float, runs: int
) -> None:
    intent_t = time.time()
    service = LateRun(intent_t, late=0.2)
    ledger = Ledger(tmp_path / "l.jsonl", fsync="never")
    ledger.header({"run_id": "r2", "manifest": {"jobs": 1}})
    settings = DispatchSettings(
        action="run-immediate",
        concurrency=1,
        retry=RetryPolicy(max_attempts=4, base=0.001, cap=0.01),
        settle=settle,
    )
    dispatcher = Dispatcher(
        service, ledger, Pacer(TokenBucket(0.0)), settings, prior=lambda _: (1, intent_t)
    )
    await dispatcher.run(make_jobs(1))
    ledger.close()
    # The earlier segment's run happens in any case; without the settle time the quick
    # check found no instance and this segment ran the job a second time.
    assert 1 + len(service.runs) == runs
    assert dispatcher.tally.started == 1


class LateStart(FakeService):
    """start/stop: the first call's answer is lost, and the call takes effect only `late`
    seconds after it was sent (the backend was still at it when the gateway gave up)."""

    def __init__(self, action: Action, late: float, earlier: float | None = None) -> None:
        super().__init__()
        self.action = action
        self.late = late
        self.effects: list[float] = []  # when each call takes effect (monotonic)
        if earlier is not None:  # a call of an earlier segment, sent at Unix time `earlier`
            self.effects.append(time.monotonic() + (earlier - time.time()) + late)

    async def call(self, job: Job, action: Action) -> Reply:
        self.calls.append(job.name)
        if not self.effects:
            self.effects.append(time.monotonic() + self.late)
            return Reply(504, 0.0, error_code="APIGW.0203")
        self.effects.append(time.monotonic())
        return Reply(204, 0.0)

    async def job_status(self, job: Job) -> JobStatus:
        landed = any(time.monotonic() >= t for t in self.effects)
        before, after = (
            ("STOPPED", "SCHEDULING") if self.action == "start" else ("SCHEDULING", "STOPPED")
        )
        return JobStatus(Reply(200, 0.001), after if landed else before, True)


def _late_settings(action: Action, settle: float) -> DispatchSettings:
    return DispatchSettings(
        action=action,
        concurrency=1,
        retry=RetryPolicy(max_attempts=4, base=0.001, cap=0.01),
        settle=settle,
    )


@pytest.mark.parametrize("action", ["start", "stop"])
@pytest.mark.parametrize(("settle", "effects"), [(0.0, 2), (0.4, 1)])
async def test_start_and_stop_wait_out_the_window_before_any_resend(
    tmp_path: Path, action: Action, settle: float, effects: int
) -> None:
    service = LateStart(action, late=0.2)
    ledger = Ledger(tmp_path / "l.jsonl", fsync="never")
    ledger.header({"run_id": "r1", "manifest": {"jobs": 1}})
    dispatcher = Dispatcher(
        service, ledger, Pacer(TokenBucket(0.0)), _late_settings(action, settle)
    )
    await dispatcher.run(make_jobs(1))
    ledger.close()
    # Without the window the quick check sees the old state and sends the call again.
    assert len(service.effects) == effects
    assert dispatcher.tally.started == 1
    assert dispatcher.tally.checking == 0


@pytest.mark.parametrize(("settle", "effects"), [(0.0, 2), (0.4, 1)])
async def test_a_resume_waits_out_the_window_of_a_start_written_before_a_crash(
    tmp_path: Path, settle: float, effects: int
) -> None:
    intent_t = time.time()
    service = LateStart("start", late=0.2, earlier=intent_t)
    ledger = Ledger(tmp_path / "l.jsonl", fsync="never")
    ledger.header({"run_id": "r2", "manifest": {"jobs": 1}})
    dispatcher = Dispatcher(
        service,
        ledger,
        Pacer(TokenBucket(0.0)),
        _late_settings("start", settle),
        prior=lambda _: (1, intent_t),
    )
    await dispatcher.run(make_jobs(1))
    ledger.close()
    # The earlier segment's start lands in any case; without the window the quick check
    # found the job STOPPED and this segment started it a second time.
    assert len(service.effects) == effects
    assert dispatcher.tally.started == 1


async def test_jobs_being_checked_are_counted_while_they_wait(tmp_path: Path) -> None:
    service = LateStart("start", late=0.2)
    ledger = Ledger(tmp_path / "l.jsonl", fsync="never")
    ledger.header({"run_id": "r1", "manifest": {"jobs": 1}})
    dispatcher = Dispatcher(service, ledger, Pacer(TokenBucket(0.0)), _late_settings("start", 0.5))
    seen = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher.run, make_jobs(1))
        with anyio.fail_after(10):
            while not service.calls:  # noqa: ASYNC110 - the fake has no event for this
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)  # answered 504 at once: now within the window
        seen.append(dispatcher.tally.checking)
    assert seen == [1]
    assert dispatcher.tally.checking == 0
