"""`launcher loadtest`: the schedule, thresholds, latency correction, drops, and whole runs.

Pure parts (schedule, thresholds, measure, recorder) are table tests and
hypothesis with made-up times. The engine runs on real sockets: against
the simulator, or a small aiohttp server that stalls its answers on purpose.
The CLI runs in a subprocess, as operators run it.
"""

from __future__ import annotations

import itertools
import math
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from launch_helpers import Completed, clean_env, job_lines, sim_env, write_manifest

from launcher.cli.loadtest import load_config, loadtest_settings
from launcher.config import RunOptions
from launcher.dlf.auth import NoAuth
from launcher.dlf.client import DlfClient
from launcher.errors import UsageError
from launcher.flow.policy import Verdict
from launcher.loadtest.runner import LoadTest, drive, job_cycle
from launcher.loadtest.schedule import (
    LoadSettings,
    Schedule,
    Stage,
    Threshold,
    constant_stages,
    error_key,
    evaluate_thresholds,
    measure,
    parse_ramp,
    parse_threshold,
)
from launcher.loadtest.stats import LatencyHistogram, Recorder, quantile
from launcher.models import Failure, Job, Reply
from launcher.simulator import SimConfig, running

ROOT = Path(__file__).resolve().parents[2]
AK, SK = "LOADTESTACCESSKEY", "loadtest-secret-key"


def _command() -> list[str]:
    """`launcher loadtest` once registered in cli.py; its own module until then."""
    from launcher.cli.main import cli

    if "loadtest" in cli.commands:
        return [sys.executable, "-m", "launcher", "loadtest"]
    return [sys.executable, "-m", "launcher.cli.loadtest"]


async def loadtest(*args: str, env: dict[str, str] | None = None) -> Completed:
    """Run the load-test CLI in a subprocess and wait for it."""
    result = await anyio.run_process(
        [*_command(), *args],
        env=env if env is not None else sim_env(),
        check=False,
        stdin=subprocess.DEVNULL,  # a script's stdin: a warning, never a question
    )
    return Completed(result.returncode, result.stdout.decode(), result.stderr.decode())


# --- the schedule -------------------------------------------------------------------------


def test_constant_rate_sends_rate_times_duration_from_zero() -> None:
    schedule = Schedule(constant_stages(500.0, 10.0))
    assert schedule.requests == 5000
    assert schedule.time_of(0) == 0.0
    assert schedule.time_of(1) == pytest.approx(0.002)
    assert schedule.time_of(4999) == pytest.approx(9.998)
    assert schedule.time_of(5000) is None
    assert schedule.rate_at(3.0) == 500.0
    assert schedule.rate_at(10.0) == 0.0


@pytest.mark.parametrize(
    ("ramp", "requests", "checks"),
    [
        # 0 -> 500/s over 30 s is 7,500 requests; N(t) = 500 t² / 60, so request 1,875 is at 15 s.
        ("0/s->500/s:30s,500/s:60s", 37_500, {1875: 15.0, 7500: 30.0, 7501: 30.002}),
        ("100/s:1s", 100, {0: 0.0, 99: 0.99}),
        ("0/s:5s,100/s:1s", 100, {0: 5.0, 50: 5.5}),  # a pause, then load
        ("100/s->0/s:2s", 100, {0: 0.0, 75: 1.0}),  # ramp down: N(1) = 75
        ("->200/s:1s,->0/s:1s", 200, {100: 1.0}),  # `->TO` ramps from the previous rate
        ("120/m:1m", 120, {1: 0.5}),
        ("50/s:500ms", 25, {24: 0.48}),
    ],
)
def test_ramps_put_each_request_at_the_rate_integral(
    ramp: str, requests: int, checks: dict[int, float]
) -> None:
    schedule = Schedule(parse_ramp(ramp))
    assert schedule.requests == requests
    for k, offset in checks.items():
        assert schedule.time_of(k) == pytest.approx(offset, abs=1e-9)
    assert schedule.time_of(requests) is None


@pytest.mark.parametrize(
    ("ramp", "message"),
    [
        ("", "FROM->TO:DURATION"),
        ("500/s", "FROM->TO:DURATION"),
        ("500/s:", "FROM->TO:DURATION"),
        ("fast:10s", "invalid rate"),
        ("500/s:soon", "invalid duration"),
        ("0/s:10s", "nothing would be sent"),
        ("0/s-500/s:10s", "FROM->TO:DURATION"),
        ("100/s:10s,,100/s:1s", "FROM->TO:DURATION"),
    ],
)
def test_bad_ramps_are_refused_with_a_hint(ramp: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ramp(ramp)


stages_strategy = st.lists(
    st.builds(
        Stage,
        st.floats(0.0, 2000.0),
        st.floats(0.0, 2000.0),
        st.floats(0.01, 30.0),
    ),
    min_size=1,
    max_size=5,
).filter(lambda stages: sum(s.requests for s in stages) >= 1.0)


@settings(max_examples=200, deadline=None)
@given(stages_strategy, st.data())
def test_any_schedule_is_ordered_and_matches_its_integral(
    stages: list[Stage], data: st.DataObject
) -> None:
    schedule = Schedule(stages)
    total = sum(s.requests for s in stages)
    assert schedule.requests == math.ceil(total - 1e-9)
    last = int(schedule.requests) - 1
    ks = sorted({0, last, *data.draw(st.lists(st.integers(0, last), max_size=20))})
    times = [schedule.time_of(k) for k in ks]
    assert all(t is not None for t in times)
    offsets = [t for t in times if t is not None]
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0.0
    assert offsets[-1] <= schedule.duration
    for k, offset in zip(ks, offsets, strict=True):
        # Request k is due exactly when k requests have come due before it.
        assert schedule.due_by(offset) == pytest.approx(k, rel=1e-6, abs=1e-6)


class FakeClock:
    """A clock that only moves when the scheduler sleeps; each wake-up is late by some jitter."""

    def __init__(self, late: float, seed: int = 1) -> None:
        self.now = 1000.0
        self._late = late
        self._rand = random.Random(seed)

    def __call__(self) -> float:
        return self.now

    async def sleep_until(self, deadline: float) -> None:
        if deadline > self.now:  # a deadline already passed costs no sleep (and no lateness)
            self.now = deadline + self._rand.uniform(0.0, self._late)


@pytest.mark.anyio
async def test_scheduler_does_not_drift_over_a_long_run() -> None:
    """100,000 slots at 1,000/s with every wake-up up to 3 ms late: slot k is still at k ms."""
    clock = FakeClock(late=0.003)
    start = clock.now
    deadlines: list[float] = []
    lateness: list[float] = []

    def on_slot(deadline: float, now: float) -> bool:
        deadlines.append(deadline)
        lateness.append(now - deadline)
        return True

    schedule = Schedule(constant_stages(1000.0, 100.0))
    used, end = await drive(schedule, start, on_slot, clock=clock, sleep_until=clock.sleep_until)
    assert (used, end) == (100_000, None)
    assert all(abs(d - (start + k / 1000.0)) < 1e-9 for k, d in enumerate(deadlines))
    assert max(lateness) <= 0.003 + 1e-9  # late by one wake-up at most, never by their sum
    assert clock.now - start < 100.0 + 0.003 + 1e-9
    # What accumulating sleeps would have done with the same wake-ups: seconds behind.
    naive = FakeClock(late=0.003)
    for _ in range(100_000):
        await naive.sleep_until(naive.now + 0.001)
    assert naive.now - start > 100.0 + 100.0


@pytest.mark.anyio
async def test_scheduler_stops_where_the_manifest_ran_out() -> None:
    clock = FakeClock(late=0.0)
    jobs = iter(range(7))
    used, end = await drive(
        Schedule(constant_stages(10.0, None)),
        clock.now,
        lambda deadline, now: next(jobs, None) is not None,
        clock=clock,
        sleep_until=clock.sleep_until,
    )
    assert (used, end) == (7, pytest.approx(0.7))


def test_jobs_are_used_once_or_in_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []

    def stream() -> Iterator[Job]:
        opened.append(1)
        return iter([Job(f"id{n}", f"job-{n}", (), None, "p1") for n in range(3)])

    assert [j.name for j in job_cycle(stream, jobs=3, once=True)] == ["job-0", "job-1", "job-2"]
    cycled = [j.name for j in itertools.islice(job_cycle(stream, jobs=3, once=False), 7)]
    assert cycled == ["job-0", "job-1", "job-2", "job-0", "job-1", "job-2", "job-0"]
    assert len(opened) == 2  # the cycle read the manifest once, then used memory
    monkeypatch.setattr("launcher.loadtest.runner.CACHE_JOBS", 2)
    opened.clear()
    streamed = [j.name for j in itertools.islice(job_cycle(stream, jobs=3, once=False), 7)]
    assert streamed == cycled
    assert len(opened) == 3  # too big to keep: read again at each end


# --- latency and errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheduled", "answered", "service", "latency"),
    [
        (10.0, 10.02, 0.02, 0.02),  # sent on time: latency is the service time
        (10.0, 10.52, 0.02, 0.52),  # sent 0.5 s late: the wait counts
        (10.0, 10.019, 0.02, 0.02),  # clock skew between timers: never below service time
        (10.0, 11.0, -0.001, 1.0),
    ],
)
def test_latency_counts_from_the_scheduled_time(
    scheduled: float, answered: float, service: float, latency: float
) -> None:
    sample = measure(scheduled, answered, service)
    assert sample.latency == pytest.approx(latency)
    assert sample.service == pytest.approx(max(0.0, service))


@pytest.mark.parametrize(
    ("reply", "key"),
    [
        (Reply(204, 0.01), None),
        (Reply(200, 0.01, instance_id=5), None),
        (Reply(429, 0.01, error_code="APIGW.0308"), "APIGW.0308"),
        (Reply(400, 0.01, error_code="DLF.0100"), "DLF.0100"),
        (Reply(503, 0.01), "503"),  # bare, as the interface's `errors` keys promise
        (Reply(None, 1.0, failure=Failure.TIMEOUT), "timeout"),
        (Reply(None, 0.0, failure=Failure.CONNECT), "connect"),
        (Reply(None, 0.1, failure=Failure.DISCONNECT), "disconnect"),
    ],
)
def test_errors_are_keyed_by_code_status_or_failure(reply: Reply, key: str | None) -> None:
    from launcher.flow.policy import classify

    assert error_key(reply, classify(reply)) == key


def test_unclassifiable_reply_is_still_an_error() -> None:
    assert error_key(Reply(None, 0.0), Verdict.AMBIGUOUS) == "error"


# --- thresholds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "family", "stat", "op", "limit"),
    [
        ("p99<500ms", "latency", 99.0, "<", 500.0),
        ("p95<200ms", "latency", 95.0, "<", 200.0),
        ("p50<=50ms", "latency", 50.0, "<=", 50.0),
        ("p99.9 < 1s", "latency", 99.9, "<", 1000.0),
        ("p(99)<2s", "latency", 99.0, "<", 2000.0),
        ("max<2s", "latency", "max", "<", 2000.0),
        ("latency_p90<300ms", "latency", 90.0, "<", 300.0),
        ("service_p99<150ms", "service", 99.0, "<", 150.0),
        ("service_time_max<1m", "service", "max", "<", 60000.0),
        ("mean<40ms", "latency", "mean", "<", 40.0),
        ("error_rate<1%", "error_rate", None, "<", 0.01),
        ("error_rate<=0.05", "error_rate", None, "<=", 0.05),
        ("drop_rate<0.1%", "drop_rate", None, "<", 0.001),
        ("rate>=490/s", "rate", None, ">=", 490.0),
        ("rate>29400/m", "rate", None, ">", 490.0),
        ("dropped<1", "dropped", None, "<", 1.0),
        ("errors<=10", "errors", None, "<=", 10.0),
        ("requests>=4900", "requests", None, ">=", 4900.0),
    ],
)
def test_thresholds_parse(
    text: str, family: str, stat: float | str | None, op: str, limit: float
) -> None:
    threshold = parse_threshold(text)
    assert (threshold.family, threshold.stat, threshold.op) == (family, stat, op)
    assert threshold.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99", "METRIC OP VALUE"),
        ("p99=500ms", "METRIC OP VALUE"),
        ("p99<500", "give the latency a unit"),
        ("p101<1s", "above 0 and at most 100"),
        ("p0<1s", "above 0 and at most 100"),
        ("latency<1s", "unknown metric"),
        ("q99<1s", "unknown metric"),
        ("error_rate<150%", "between 0% and 100%"),
        ("error_rate<2", "fraction between 0 and 1"),
        ("rate>=fast", "invalid rate"),
        ("p99<soon", "invalid duration"),
        ("dropped<-1", "a count"),
    ],
)
def test_bad_thresholds_are_refused_with_a_hint(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_threshold(text)


def test_thresholds_are_judged_on_their_values() -> None:
    rules = [parse_threshold(t) for t in ("p99<500ms", "error_rate<1%", "rate>=490/s")]
    values: dict[str, float | None] = {"latency": 612.0, "error_rate": 0.004, "rate": 495.0}

    def lookup(threshold: Threshold) -> float | None:
        return values[threshold.family]

    results = evaluate_thresholds(rules, lookup)
    assert [r.passed for r in results] == [False, True, True]
    # During the run, the rate is not judged, and no data yet is no breach.
    values["latency"] = None
    live = evaluate_thresholds(rules, lookup, final=False)
    assert [r.threshold.text for r in live] == ["p99<500ms", "error_rate<1%"]
    assert all(r.passed for r in live)
    # At the end, no data fails a latency goal.
    assert not evaluate_thresholds(rules[:1], lookup)[0].passed


# --- statistics ---------------------------------------------------------------------------


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=300), st.floats(0.1, 100.0))
def test_quantile_is_the_nearest_rank(values: list[float], q: float) -> None:
    ordered = sorted(values)
    value = quantile(ordered, q)
    at_or_below = sum(v <= value for v in ordered)
    assert at_or_below >= q / 100.0 * len(ordered) - 1e-9
    assert sum(v < value for v in ordered) < q / 100.0 * len(ordered) + 1e-9


def test_hdr_histogram_reports_to_three_digits() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 1001):
        histogram.record(ms / 1000.0)
    summary = histogram.summary_ms()
    assert summary["p50"] == pytest.approx(500.0, rel=1e-3)
    assert summary["p99"] == pytest.approx(990.0, rel=1e-3)
    assert summary["p99.9"] == pytest.approx(999.0, rel=1e-3)
    assert summary["max"] == pytest.approx(1000.0, rel=1e-3)
    histogram.record(1e9)  # beyond an hour: clamped, not lost
    assert histogram.count == 1001


def test_recorder_closes_seconds_with_their_own_counts() -> None:
    recorder = Recorder(100.0)
    for k in range(10):
        recorder.slot(100.0 + k * 0.1, 100.0 + k * 0.1 + 0.001, sent=k < 8)
    for k in range(5):
        recorder.done(measure(100.0 + k * 0.1, 100.5 + k * 0.1, 0.02), "503" if k == 0 else None)
    first = recorder.close_second(101.0, target_rate=10.0, cpu_pct=12.0)
    assert (first.second, first.scheduled, first.sent, first.dropped) == (0, 10, 8, 2)
    assert (first.completed, first.errors, first.in_flight) == (5, 1, 8)
    assert first.p50_ms == pytest.approx(500.0)
    assert first.service_p99_ms == pytest.approx(20.0)
    assert first.lag_ms == pytest.approx(1.0)
    assert first.error_codes == (("503", 1),)
    for _ in range(3):
        recorder.done(measure(100.5, 101.2, 0.7), None)
    second = recorder.close_second(101.6, target_rate=10.0, cpu_pct=3.0)
    assert (second.second, second.scheduled, second.completed, second.in_flight) == (1, 0, 3, 3)
    assert second.length == pytest.approx(0.6)
    assert recorder.in_flight == 0
    assert recorder.in_flight_peak == 8
    assert recorder.errors == {"503": 1}
    drop_rate = recorder.value_for(parse_threshold("drop_rate<1%"), elapsed=1.0)
    assert drop_rate == pytest.approx(0.2)
    assert recorder.value_for(parse_threshold("rate>1/s"), elapsed=2.0) == 4.0


def test_report_as_png_draws_even_a_run_with_drops(tmp_path: Path) -> None:
    from launcher.loadtest.charts import write_report

    recorder = Recorder(0.0)
    rows = []
    for second in range(3):
        for k in range(50):
            recorder.slot(second + k / 50, second + k / 50, sent=k % 10 != 0)
            if k % 10:
                recorder.done(
                    measure(second + k / 50, second + k / 50 + 0.02 * (1 + k % 3), 0.02), None
                )
        rows.append(recorder.close_second(second + 1.0, target_rate=50.0, cpu_pct=5.0))
    summary = {"requests": recorder.completed, "achieved_rate": 45.0, "target_rate": 50.0}
    write_report(str(tmp_path / "r.png"), summary, rows, recorder)
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")


# --- options ------------------------------------------------------------------------------


def test_config_file_with_a_loadtest_table(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'endpoint = "sim"\nproject-id = "p1"\nmax-attempts = 6\nrate = "30/s"\n'
        '[workspaces."ws"]\nrate = "1/s"\n[sim]\nlatency = 0.01\n'
        '[loadtest]\nrate = "200/s"\nduration = "5s"\nmax-in-flight = 64\n'
        'thresholds = ["p99<300ms"]\nsummary-json = "out/s.json"\n'
    )
    values, table = load_config(str(config))
    assert values["endpoint"] == "sim"
    assert values["sim"] == {"latency": 0.01}
    assert table["summary_json"] == str(tmp_path / "out/s.json")  # relative to the file
    settings_ = loadtest_settings({}, table, RunOptions(), config_path=str(config))
    assert settings_.schedule.requests == 1000  # the table's 200/s, not run's 30/s
    assert settings_.max_attempts == 1  # run's max-attempts does not leak in
    assert settings_.max_in_flight == 64
    assert [t.text for t in settings_.thresholds] == ["p99<300ms"]
    # Flags win: a --rate replaces the table's schedule, --threshold its thresholds.
    flagged = loadtest_settings(
        {"rate": "50/s", "duration": "2s", "thresholds": ("p50<1s",)}, table, RunOptions()
    )
    assert flagged.schedule.requests == 100
    assert [t.text for t in flagged.thresholds] == ["p50<1s"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, "no load"),
        ({"rate": "500/s"}, "--rate needs --duration"),
        ({"rate": "0", "duration": "1s"}, "more than 0"),
        ({"ramp": "0/s->5/s:1s", "rate": "5/s"}, "not both"),
        ({"ramp": "5/s"}, "FROM->TO"),
        ({"rate": "5/s", "duration": "1s", "max_in_flight": 0}, "--max-in-flight: must be at"),
        ({"rate": "5/s", "duration": "1s", "thresholds": ("p99<<1s",)}, "--threshold"),
        ({"rate": "5/s", "duration": "1s", "metrics_port": 70000}, "at most 65535"),
    ],
)
def test_bad_load_options_are_usage_errors(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        loadtest_settings(flags, {}, RunOptions())


def test_unknown_loadtest_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[loadtest]\nrtae = "5/s"\n')
    with pytest.raises(UsageError, match="rtae"):
        load_config(str(config))


# --- the engine on real sockets -------------------------------------------------------------


@dataclass
class StallServer:
    """A DLF-shaped server answering 204 at once, except while a stall holds every answer."""

    stall_at: float = math.inf  # seconds after the first request
    stall_for: float = 0.0
    hold: float = 0.0  # seconds every answer takes
    arrivals: list[float] = field(default_factory=list)
    first: float | None = None

    async def handle(self, _request: web.Request) -> web.Response:
        now = time.monotonic()
        self.arrivals.append(now)
        if self.first is None:
            self.first = now
        begin = self.first + self.stall_at
        end = begin + self.stall_for
        wait = self.hold
        if begin <= now < end:
            wait = max(wait, end - now)  # held until the stall is over
        if wait:
            await anyio.sleep(wait)
        return web.Response(status=204)

    def rate(self) -> float:
        """Arrivals per second between the first and the last, as the server saw them."""
        span = self.arrivals[-1] - self.arrivals[0]
        return (len(self.arrivals) - 1) / span


@asynccontextmanager
async def serving(server: StallServer) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/{project}/jobs/{name}/{action}", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


def jobs_forever() -> Iterator[Job]:
    return itertools.cycle([Job(f"id{n}", f"job-{n}", (), None, "p1") for n in range(10)])


def quiet(schedule: Schedule, **overrides: Any) -> LoadSettings:
    return LoadSettings(
        schedule=schedule, live=False, handle_signals=False, canary=False, **overrides
    )


@asynccontextmanager
async def client_for(url: str, concurrency: int = 1024) -> AsyncIterator[DlfClient]:
    async with DlfClient(url, lambda _s: NoAuth(), concurrency=concurrency, timeout=10.0) as c:
        yield c


@pytest.mark.anyio
async def test_slots_beyond_the_in_flight_cap_are_dropped_and_counted() -> None:
    """Answers take 0.4 s, 5 in flight at most, 100/s for 1 s: most slots dropped, none queued."""
    server = StallServer(hold=0.4)
    async with serving(server) as url, client_for(url) as client:
        engine = LoadTest(
            client, jobs_forever(), quiet(Schedule(constant_stages(100.0, 1.0)), max_in_flight=5)
        )
        result = await engine.run()
    summary = result.summary
    assert summary["scheduled"] == 100
    assert summary["sent"] + summary["dropped"] == 100
    assert summary["sent"] == len(server.arrivals)  # a drop never reaches the server
    assert summary["in_flight_peak"] == 5
    assert 80 <= summary["dropped"] <= 92  # ~5 sent per 0.4 s answer cycle
    assert summary["requests"] == summary["sent"]  # every one sent was waited for
    assert sum(row.dropped for row in result.rows) == summary["dropped"]


async def closed_loop(url: str, rate: float, seconds: float) -> list[float]:
    """The naive measurement: one connection, send, wait for the answer, send the next."""
    samples: list[float] = []
    async with aiohttp.ClientSession() as session:
        start = anyio.current_time()
        for k in itertools.count():
            due = start + k / rate
            if due - start >= seconds:
                break
            await anyio.sleep_until(due)
            sent = anyio.current_time()
            async with session.post(f"{url}/v1/p1/jobs/job-0/start") as response:
                await response.read()
            samples.append(anyio.current_time() - sent)
    return sorted(samples)


@pytest.mark.anyio
async def test_a_stall_shows_in_corrected_latency_and_not_in_a_closed_loop() -> None:
    """Every answer held for 0.4 s in a 1.6 s run at 200/s.

    Open loop, the requests that fell in the stall all waited: a quarter of
    them, so p90 and p99 show it, in latency and in service time alike. A
    closed loop sends one request into the stall and waits with it, so its
    p99 misses the stall entirely: coordinated omission.
    """
    server = StallServer(stall_at=0.6, stall_for=0.4)
    async with serving(server) as url, client_for(url) as client:
        engine = LoadTest(client, jobs_forever(), quiet(Schedule(constant_stages(200.0, 1.6))))
        result = await engine.run()
    summary = result.summary
    assert summary["dropped"] == 0
    assert summary["requests"] == 320
    assert summary["latency_ms"]["p99"] >= 300.0
    assert summary["latency_ms"]["p90"] >= 100.0
    assert summary["service_time_ms"]["p99"] >= 300.0
    assert summary["in_flight_peak"] >= 60  # the stalled requests were all out at once
    assert any(row.p99_ms >= 300.0 for row in result.rows)

    naive_server = StallServer(stall_at=0.6, stall_for=0.4)
    async with serving(naive_server) as url:
        naive = await closed_loop(url, 200.0, 1.6)
    assert max(naive) >= 0.3  # it did wait through the stall, once...
    assert quantile(naive, 99.0) < 0.1  # ...and its p99 does not show it


@pytest.mark.anyio
async def test_a_busy_client_shows_in_latency_but_not_in_service_time() -> None:
    """The event loop is blocked for 0.3 s mid-run (a GC pause, a busy client).

    The server answered everything at once, so service times stay small, but
    the requests due during the pause left late: their latency, counted from
    the schedule, carries the pause.
    """
    server = StallServer()
    async with serving(server) as url, client_for(url) as client:
        engine = LoadTest(client, jobs_forever(), quiet(Schedule(constant_stages(200.0, 1.5))))
        async with anyio.create_task_group() as tg:

            async def pause() -> None:
                await anyio.sleep(0.6)
                time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop is the point

            tg.start_soon(pause)
            result = await engine.run()
    summary = result.summary
    assert summary["requests"] == 300
    assert summary["latency_ms"]["max"] >= 250.0
    assert summary["latency_ms"]["p90"] >= 50.0  # ~60 of 300 requests were due in the pause
    assert summary["service_time_ms"]["p90"] < 50.0
    assert summary["scheduler_lag_ms"]["max"] >= 250.0


# --- the command line ------------------------------------------------------------------------


def _summary(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


@pytest.mark.anyio
async def test_against_the_simulator_with_every_output(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(20))
    summary_path = tmp_path / "s.json"
    series = tmp_path / "t.csv"
    report = tmp_path / "r.html"
    async with running(SimConfig(latency=0.02)) as (sim, url):
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "200/s",
            "--duration", "2s", "--summary-json", str(summary_path), "--timeseries", str(series),
            "--report", str(report), "--threshold", "p99<10s", "--threshold", "rate>=190/s",
            "--threshold", "error_rate<1%",
        )  # fmt: skip
    assert done.code == 0, done.stderr
    summary = _summary(summary_path)
    assert summary["requests"] == 400
    assert 195.0 <= summary["achieved_rate"] <= 205.0
    assert summary["dropped"] == 0
    assert summary["errors"] == {}
    assert summary["latency_ms"]["p50"] >= 19.0  # a 20 ms service (how much more: timing)
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p95", "p99", "p99.9", "max"}
    assert set(summary["service_time_ms"]) >= {"p50", "p90", "p99", "max"}
    assert summary["service_time_ms"]["p50"] <= summary["latency_ms"]["p50"]
    assert [t["pass"] for t in summary["thresholds"]] == [True, True, True]
    assert sim.stats.requests == sim.stats.by_route["start"] == 400 + 1  # and the canary
    rows = series.read_text().splitlines()
    assert rows[0].startswith("second,scheduled,sent,completed,dropped,errors,p50_ms,p99_ms")
    assert len(rows) - 1 >= 2  # a row a second of a 2 s run (more if the machine stalled)
    assert sum(int(row.split(",")[2]) for row in rows[1:]) == 400
    page = report.read_text()
    assert '<img alt="latency over time' in page
    assert "data:image/png;base64," in page
    assert "achieved 200.0/s" in done.stdout
    assert "(target 200/s)" in done.stderr  # the live view
    assert "p99" in done.stderr


@pytest.mark.anyio
async def test_a_held_answer_breaches_p99_and_exits_99(tmp_path: Path) -> None:
    """The stall scenario, shorter: every answer held for 0.8 s mid-way in a 2.4 s run at 300/s."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    summary_path = tmp_path / "s.json"
    server = StallServer(stall_at=0.8, stall_for=0.8)
    async with serving(server) as url:
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "300/s",
            "--duration", "2.4s", "--threshold", "p99<200ms", "--no-canary",
            "--summary-json", str(summary_path),
        )  # fmt: skip
    assert done.code == 99, done.stderr
    summary = _summary(summary_path)
    assert summary["latency_ms"]["p99"] >= 400.0
    p99 = summary["latency_ms"]["p99"]
    assert summary["thresholds"] == [
        {"threshold": "p99<200ms", "value": p99, "shown": f"{p99:.2f} ms", "pass": False}
    ]
    assert "BREACHED" in done.stdout
    # Open loop: every scheduled request reached the server, the stall held none back.
    assert summary["scheduled"] == summary["sent"] == len(server.arrivals) == 720


@pytest.mark.anyio
async def test_once_sends_each_job_once_then_stops(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(40, workspace="ws-1"))
    summary_path = tmp_path / "s.json"
    async with running() as (sim, url):
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "400/s", "--once",
            "--no-canary", "--summary-json", str(summary_path), "--action", "run-immediate",
        )  # fmt: skip
    assert done.code == 0, done.stderr
    summary = _summary(summary_path)
    assert summary["requests"] == 40
    assert summary["stop_reason"] == "manifest_exhausted"
    assert summary["sent"] == summary["scheduled"] == 40  # then the manifest ran out
    for n in range(40):
        assert sim.stats.took_effect("run-immediate", "p1", f"job-{n:04d}", "ws-1") == 1


@pytest.mark.anyio
async def test_errors_are_counted_by_code_and_abort_on_fail_stops_early(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(3) + job_lines(1, prefix="missing"))
    summary_path = tmp_path / "s.json"
    async with running(SimConfig(missing_prefix="missing-")) as (_sim, url):
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "200/s",
            "--duration", "30s", "--threshold", "error_rate<5%", "--abort-on-fail",
            "--summary-json", str(summary_path),
        )  # fmt: skip
    assert done.code == 99, done.stderr
    summary = _summary(summary_path)
    assert summary["stop_reason"] == "threshold"
    assert summary["sent"] < 200 * 30  # stopped early: not the 30 s schedule
    assert set(summary["errors"]) == {"DLF.0100"}
    assert summary["error_rate"] == pytest.approx(0.25, abs=0.02)
    assert "aborting" in done.stderr


@pytest.mark.anyio
async def test_wrong_credentials_cost_one_request_and_exit_3(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    async with running(SimConfig(aksk={AK: SK})) as (sim, url):
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "500/s",
            "--duration", "5s",
            env=clean_env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK="not-the-secret"),
        )  # fmt: skip
    assert done.code == 3
    assert "authentication failed" in done.stderr
    assert sim.stats.requests == 1


@pytest.mark.anyio
async def test_signed_requests_pass_the_gateway_check(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    summary_path = tmp_path / "s.json"
    async with running(SimConfig(aksk={AK: SK})) as (sim, url):
        done = await loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "100/s",
            "--duration", "0.5s", "--summary-json", str(summary_path), "--no-live",
            env=clean_env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert _summary(summary_path)["errors"] == {}
    assert sim.stats.bad_signatures == 0


BAD_INPUT = {
    "manifest": (["--rate", "10/s", "--duration", "1s"], '{"name": "a", "parmas": {}}\n',
                 "m.jsonl:1: parmas:"),
    "threshold": (["--rate", "10/s", "--duration", "1s", "--threshold", "p99<500"],
                  '{"name": "a"}\n', "give the latency a unit"),
    "ramp": (["--ramp", "0/s->10/s"], '{"name": "a"}\n', "FROM->TO:DURATION"),
    "no-duration": (["--rate", "10/s"], '{"name": "a"}\n', "--rate needs --duration"),
    "empty": (["--rate", "10/s", "--duration", "1s"], "# nothing\n", "no jobs"),
    "report-dir": (["--rate", "10/s", "--duration", "1s", "--report", "/nonexistent/r.html"],
                   '{"name": "a"}\n', "--report /nonexistent/r.html: no such directory"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
@pytest.mark.anyio
async def test_bad_input_exits_2_and_sends_nothing(tmp_path: Path, case: str) -> None:
    args, text, message = BAD_INPUT[case]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(text)
    async with running() as (sim, url):
        done = await loadtest(str(manifest), "--endpoint", url, "--project-id", "p1", *args)
    assert done.code == 2, done.stderr
    assert message in done.stderr
    assert sim.stats.requests == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.anyio
async def test_prometheus_metrics_while_running_and_interrupt_exits_130(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    summary_path = tmp_path / "s.json"
    port = _free_port()
    async with running(SimConfig(latency=0.01)) as (_sim, url):
        process = await anyio.open_process(
            [*_command(), str(manifest), "--endpoint", url, "--project-id", "p1",
             "--rate", "100/s", "--duration", "60s", "--metrics-port", str(port),
             "--summary-json", str(summary_path), "--no-live"],
            env=sim_env(),
        )  # fmt: skip
        async with process, aiohttp.ClientSession() as session:
            text = ""
            with anyio.fail_after(15):
                while "launcher_loadtest_sent_total 1" not in text:
                    await anyio.sleep(0.3)
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                            text = await response.text()
                    except aiohttp.ClientConnectionError:
                        continue
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(15):
                code = await process.wait()
    assert code == 130
    # Latency as a Prometheus histogram (aggregatable), quantiles under their own name with
    # clean labels: "0.999", never 0.9990000000000001.
    assert "# TYPE launcher_loadtest_latency_seconds histogram" in text
    assert 'launcher_loadtest_latency_seconds_bucket{le="0.025"}' in text
    assert 'launcher_loadtest_latency_seconds_bucket{le="+Inf"}' in text
    assert "launcher_loadtest_latency_seconds_count" in text
    assert 'launcher_loadtest_latency_quantile_seconds{quantile="0.999"}' in text
    assert "0.9990000000000001" not in text
    assert "launcher_loadtest_in_flight" in text
    summary = _summary(summary_path)
    assert summary["stop_reason"] == "interrupted"
    assert summary["requests"] == summary["sent"] > 0  # in-flight requests were waited for
    assert summary["sent"] < 100 * 60  # interrupted: not the 60 s schedule


@pytest.mark.anyio
async def test_the_shipped_config_runs_against_the_embedded_simulator(tmp_path: Path) -> None:
    summary_path = tmp_path / "s.json"
    done = await loadtest(
        str(ROOT / "configs/demo.jsonl"), "--config", str(ROOT / "configs/loadtest.toml"),
        "--rate", "100/s", "--duration", "1s", "--summary-json", str(summary_path),
        env=clean_env(),
    )  # fmt: skip
    assert done.code == 0, done.stderr + done.stdout
    summary = _summary(summary_path)
    assert summary["requests"] == 100
    assert summary["latency_ms"]["p50"] >= 15.0  # the [sim] table's latency
