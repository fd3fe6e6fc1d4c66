"""The shared rate limit against a real redis-server: the Lua bucket, shared adaptive
state, losing Redis, and two real `launcher run` processes sharing one limit.

The fixture starts `redis-server` from PATH on a free loopback port (no
persistence, in a tmp dir). Without it these tests fail, unless
LAUNCHER_SKIP_REDIS=1 says to skip them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog
from launch_helpers import clean_env, job_lines, launcher, report_json, sim_env, write_manifest

from launcher.config import RunOptions, resolve_options
from launcher.dlf.auth import AkSkAuth, NoAuth
from launcher.dlf.signing import AkSk, Signer
from launcher.errors import UsageError
from launcher.flow.adaptive import MIN_RATE, MIN_SAMPLE, SCALE
from launcher.logs import redact_url, scrub
from launcher.scale.limits import (
    SharedCut,
    SharedLimits,
    SharedState,
    connect_shared,
    default_limit_key,
    open_shared_limits,
)
from launcher.simulator import SimConfig, running

pytestmark = pytest.mark.anyio


# -- the redis-server fixture ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on loopback: no persistence, its files in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            if os.environ.get("LAUNCHER_SKIP_REDIS") == "1":
                pytest.skip("redis-server not installed and LAUNCHER_SKIP_REDIS=1")
            pytest.fail(
                "redis-server is not on PATH: install it (apt-get install redis-server), "
                "or set LAUNCHER_SKIP_REDIS=1 to skip the shared-limit tests"
            )
        self._process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the whole session; tests keep apart by their keys."""
    if os.environ.get("LAUNCHER_SKIP_REDIS") == "1" and shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed and LAUNCHER_SKIP_REDIS=1")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop and restart it."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


_keys = itertools.count()


def fresh_key() -> str:
    """A limit key no other test uses (the session's server is shared)."""
    return f"test:{os.getpid()}:{time.time_ns()}:{next(_keys)}"


async def pace(limits: SharedLimits, workers: int, seconds: float, grants: list[float]) -> None:
    """`workers` tasks take slots for `seconds`, appending each grant's monotonic time."""
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            await limits.pacer.wait()
            grants.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)


def most_in_any_window(grants: list[float], seconds: float) -> int:
    """The most grants in any `seconds`-long window: what a server counting them sees."""
    ordered = sorted(grants)
    return max(
        sum(1 for t in ordered[i:] if t < start + seconds) for i, start in enumerate(ordered)
    )


# These tests pace against Redis's own clock, which no test can inject. They assert
# what a loaded machine cannot break: never more than the rate (a slow machine only
# sends less) and that every launcher gets its turn. How close to the rate pacing
# gets is a figure for benchmarks/flow.py, not a unit test.


# -- the Lua bucket -------------------------------------------------------------------------


async def test_the_script_spaces_slots_on_redis_time(redis_url: str) -> None:
    """Back-to-back claims of two launchers at 10/s: each slot is 100 ms after the one before.

    A claim's delay is its slot minus Redis's time at the claim; the claims are
    not instant (a loaded machine), so the delays are checked against the time
    the claims took, measured around them.
    """
    key = fresh_key()
    async with (
        await connect_shared(redis_url, key, ceiling=10.0, adaptive=False) as a,
        await connect_shared(redis_url, key, ceiling=10.0, adaptive=False) as b,
    ):
        delays = []
        began = time.monotonic()
        for limits in (a, b, a, b, a, b):
            state = await limits.pacer.reserve()
            assert state is not None
            delays.append(state.delay)
        took = time.monotonic() - began
    assert delays[0] == 0.0
    for earlier, later in itertools.pairwise(delays):
        # Never closer than 100 ms apart, and no later than 100 ms plus the claims' time.
        assert later - earlier <= 0.1 + 0.001
        assert later - earlier >= 0.1 - took - 0.001
    assert delays[-1] >= 0.5 - took - 0.001


async def test_two_pacers_on_one_key_share_one_evenly_spaced_rate(redis_url: str) -> None:
    key = fresh_key()
    grants_a: list[float] = []
    grants_b: list[float] = []
    async with (
        await connect_shared(redis_url, key, ceiling=200.0) as a,
        await connect_shared(redis_url, key, ceiling=200.0) as b,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pace, a, 16, 1.5, grants_a)
            tg.start_soon(pace, b, 16, 1.5, grants_b)
        trips = a.pacer.round_trips + b.pacer.round_trips
    grants = sorted(grants_a + grants_b)
    # Combined, not 2 x 200: over the whole run and in any 100 ms (no burst).
    assert len(grants) <= 200.0 * 1.5 + 2 * 16 + 1
    assert most_in_any_window(grants, 0.1) <= 26
    assert grants_a  # both launchers were served
    assert grants_b
    assert trips <= len(grants) + 2 * 32  # one round trip per send (plus the last claims)


async def test_different_limit_keys_do_not_share(redis_url: str) -> None:
    grants_a: list[float] = []
    grants_b: list[float] = []
    async with (
        await connect_shared(redis_url, fresh_key(), ceiling=100.0) as a,
        await connect_shared(redis_url, fresh_key(), ceiling=100.0) as b,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(pace, a, 8, 1.0, grants_a)
        tg.start_soon(pace, b, 8, 1.0, grants_b)
    # Not shared: each has its own 100/s, so together they may go past 100/s.
    assert len(grants_a) <= 100.0 * 1.0 + 8 + 1
    assert len(grants_b) <= 100.0 * 1.0 + 8 + 1
    assert len(grants_a) + len(grants_b) > 100.0 * 1.0 + 8 + 1


# -- shared adaptive state ------------------------------------------------------------------


def throttle(limits: SharedLimits) -> bool:
    """Feed `limits`' controller one congestion episode: 15 answers accepted, then a 429."""
    flow = limits.flow
    assert flow is not None
    now = time.monotonic()
    for n in range(MIN_SAMPLE):
        flow.on_send(now)
        if flow.on_answer(now, now, throttled=n == MIN_SAMPLE - 1):
            limits.pacer.set_rate(flow.rate, now)  # as the dispatcher does after a cut
            return True
    return False


async def test_a_cut_by_one_launcher_lowers_every_launchers_rate(redis_url: str) -> None:
    key = fresh_key()
    async with (
        await connect_shared(redis_url, key, ceiling=1000.0) as a,
        await connect_shared(redis_url, key, ceiling=1000.0) as b,
    ):
        await pace(a, 4, 0.2, [])
        await pace(b, 4, 0.2, [])  # both measure the fleet at its ceiling
        assert a.pacer.rate == b.pacer.rate == 1000.0
        assert a.flow is not None
        assert b.flow is not None
        assert throttle(a)
        cut_rate = a.flow.rate
        assert cut_rate < 1000.0
        assert a.flow.pending_cut is not None

        published = await a.pacer.reserve()  # the cut rides on a's next claim
        assert published is not None
        assert a.flow.pending_cut is None
        assert published.rate == pytest.approx(cut_rate, rel=0.01)

        seen = await b.pacer.reserve()  # b adopts it with its next claim
        assert seen is not None
        assert b.pacer.rate == pytest.approx(cut_rate, rel=0.01)
        assert b.flow.rate == pytest.approx(cut_rate, rel=0.01)
        assert b.flow.throttled
        assert b.flow.generation == a.flow.generation == published.generation
        assert b.flow.cuts == 0  # b did not cut: it adopted
        # Answers to requests b sent before the cut belong to the episode a's cut ended.
        before = time.monotonic() - 1.0
        assert not b.flow.on_answer(time.monotonic(), before, throttled=True)


async def test_two_cuts_of_one_episode_count_once(redis_url: str) -> None:
    key = fresh_key()
    async with (
        await connect_shared(redis_url, key, ceiling=1000.0) as a,
        await connect_shared(redis_url, key, ceiling=1000.0) as b,
    ):
        await a.pacer.reserve()
        await b.pacer.reserve()
        assert a.flow is not None
        assert b.flow is not None
        base = a.flow.generation
        a.flow.pending_cut = SharedCut(base, 400.0, 3.0)
        b.flow.pending_cut = SharedCut(base, 100.0, 2.0)
        first = await a.pacer.reserve()
        second = await b.pacer.reserve()  # based on the same generation: too late
        assert first is not None
        assert second is not None
        assert first.generation == second.generation == base + 1
        assert second.last_max == 400.0
        assert b.flow.pending_cut is None  # dropped, not retried


async def test_recovery_follows_the_cubic_curve(redis_url: str) -> None:
    """After a cut to W_max = 100/s, every claim is paced at C·(t − K)³ + W_max."""
    key = fresh_key()
    last_max = 100.0
    window = (last_max * 0.3 / SCALE) ** (1 / 3)  # K for β = 0.7
    async with (
        await connect_shared(redis_url, key, ceiling=1000.0) as a,
        await connect_shared(redis_url, key, ceiling=1000.0) as b,
    ):
        await a.pacer.reserve()
        assert a.flow is not None
        assert b.flow is not None
        a.flow.pending_cut = SharedCut(a.flow.generation, last_max, window)
        await a.pacer.reserve()
        samples: list[SharedState] = []

        async def observe() -> None:
            for _ in range(8):
                await anyio.sleep(0.15)
                state = await b.pacer.reserve()
                assert state is not None
                samples.append(state)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pace, a, 8, 1.3, [])  # the fleet keeps sending at the curve
            tg.start_soon(observe)
        assert b.flow.rate == pytest.approx(samples[-1].rate, rel=0.02)
    for state in samples:
        cubic = SCALE * (state.since_cut - window) ** 3 + last_max
        capped = min(cubic, 2 * state.fleet_rate) if state.fleet_rate > 0 else cubic
        assert state.curve == pytest.approx(max(MIN_RATE, capped), rel=1e-9)
        assert state.rate == state.curve  # below the ceiling
    first, last = samples[0], samples[-1]
    assert first.curve < last.curve < last_max
    assert last.curve == pytest.approx(SCALE * (last.since_cut - window) ** 3 + last_max)


async def test_a_late_launcher_starts_on_the_fleets_curve(redis_url: str) -> None:
    key = fresh_key()
    async with await connect_shared(redis_url, key, ceiling=1000.0) as a:
        await a.pacer.reserve()
        assert a.flow is not None
        a.flow.pending_cut = SharedCut(a.flow.generation, 50.0, 2.0)
        await a.pacer.reserve()
        async with await connect_shared(redis_url, key, ceiling=1000.0) as late:
            state = await late.pacer.reserve()
            assert state is not None
            assert state.rate < 100.0
            assert late.flow is not None
            assert late.flow.throttled


# -- Redis unreachable or lost --------------------------------------------------------------


async def test_unreachable_redis_is_a_usage_error_that_hides_the_password() -> None:
    url = f"redis://launcher:hunter2@127.0.0.1:{_free_port()}/0"
    with pytest.raises(UsageError) as caught:
        await connect_shared(url, "k", ceiling=10.0)
    message = str(caught.value)
    assert "hunter2" not in message
    assert f"redis://launcher:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in message
    assert caught.value.exit_code == 2


async def test_redis_optional_falls_back_to_local_limits_with_a_warning() -> None:
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    target = {"endpoint": "http://127.0.0.1:1", "auth": NoAuth(), "simulated": True}
    required = RunOptions(redis=url, limit_key="k")
    with pytest.raises(UsageError):
        await open_shared_limits(required, **target)
    optional = RunOptions(redis=url, limit_key="k", redis_optional=True)
    with structlog.testing.capture_logs() as logs:
        assert await open_shared_limits(optional, **target) is None
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert "hunter2" not in str(logs)


async def test_losing_redis_mid_run_paces_alone_at_the_share_then_shares_again(
    redis_server: RedisServer,
) -> None:
    key = fresh_key()
    async with (
        await connect_shared(redis_server.url, key, ceiling=200.0) as a,
        await connect_shared(redis_server.url, key, ceiling=200.0) as b,
    ):
        # Two seconds shared first: both launchers' and the fleet's rate meters have
        # closed several half-second buckets, so each launcher's share is measured.
        async with anyio.create_task_group() as tg:
            tg.start_soon(pace, a, 8, 2.0, [])
            tg.start_soon(pace, b, 8, 2.0, [])
        redis_server.stop()
        alone_a: list[float] = []
        alone_b: list[float] = []
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pace, a, 8, 1.0, alone_a)
                tg.start_soon(pace, b, 8, 1.0, alone_b)
        assert not a.pacer.shared
        assert not b.pacer.shared
        assert 0.3 < a.pacer.share < 0.7
        # Each paces alone at its share: together never 2 x 200.
        assert len(alone_a) + len(alone_b) <= 200.0 * 1.15 * 1.0 + 2 * 8
        assert any(entry["event"].startswith("redis lost") for entry in logs)

        redis_server.start()  # the same port: Redis is back (its state is gone)
        assert await a.pacer.probe()
        assert a.pacer.shared
        state = await a.pacer.reserve()
        assert state is not None
        assert state.rate == 200.0


# -- the shared concurrency cap -------------------------------------------------------------


async def test_shared_concurrency_caps_requests_in_flight_across_launchers(
    redis_url: str,
) -> None:
    key = fresh_key()
    in_flight = peak = done = 0

    async def request(limits: SharedLimits) -> None:
        nonlocal in_flight, peak, done
        assert limits.semaphore is not None
        for _ in range(5):
            async with limits.semaphore.slot():
                in_flight += 1
                peak = max(peak, in_flight)
                await anyio.sleep(0.03)
                in_flight -= 1
                done += 1

    async with (
        await connect_shared(redis_url, key, ceiling=0.0, concurrency=3) as a,
        await connect_shared(redis_url, key, ceiling=0.0, concurrency=3) as b,
        anyio.create_task_group() as tg,
    ):
        for limits in (a, b):
            for _ in range(8):
                tg.start_soon(request, limits)
    assert done == 80
    assert peak == 3  # 16 tasks in two launchers, never more than 3 at once


async def test_a_dead_launchers_slot_expires_and_a_live_ones_is_renewed(redis_url: str) -> None:
    from launcher.scale.concurrency import SharedSemaphore

    key = fresh_key()
    async with (
        await connect_shared(redis_url, key, ceiling=0.0) as a,
        await connect_shared(redis_url, key, ceiling=0.0) as b,
    ):
        holder = SharedSemaphore(a.redis, key, 1, lease=0.3)
        waiter = SharedSemaphore(b.redis, key, 1, lease=0.3)
        token = await holder.acquire()
        assert token is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.renew_forever)  # alive: renewed every 0.1 s
            with anyio.move_on_after(0.8):
                await waiter.acquire()
                pytest.fail("took a slot a live launcher holds")
            tg.cancel_scope.cancel()
        # The holder dies without releasing: its lease runs out within 0.3 s.
        with anyio.fail_after(2.0):
            assert await waiter.acquire() is not None


async def test_launcher_run_with_shared_concurrency_caps_what_the_service_sees(
    redis_url: str, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(16))
    async with running(SimConfig(latency=0.1)) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--no-canary", "--redis", redis_url, "--limit-key", fresh_key(),
            "--shared-concurrency", "2", "--ledger", str(tmp_path / "l.jsonl"),
            "--progress", "off", env=sim_env(),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert sim.stats.busiest_window(0.09) <= 2  # 2 in flight, each answered after 0.1 s
    span = sim.stats.arrivals[-1] - sim.stats.arrivals[0]
    assert span >= 0.6  # 16 requests, 2 at a time, 0.1 s each: 8 rounds


# -- keys and URLs --------------------------------------------------------------------------


def test_the_default_key_is_a_digest_of_host_and_access_key_never_the_secret() -> None:
    def aksk(ak: str, sk: str) -> AkSkAuth:
        return AkSkAuth(Signer(AkSk(ak, sk, None)))

    endpoint = "https://dayu-dlf.cn-north-4.myhuaweicloud.com"
    key = default_limit_key(endpoint, aksk("AKAKAKAKAK", "the-secret"))
    assert key.startswith("launcher:")
    assert len(key) == len("launcher:") + 16
    assert key == default_limit_key(endpoint + "/", aksk("AKAKAKAKAK", "another-secret"))
    assert key != default_limit_key(endpoint, aksk("OTHERAK000", "the-secret"))
    assert key != default_limit_key(
        "https://dayu-dlf.cn-east-3.myhuaweicloud.com", aksk("AKAKAKAKAK", "s")
    )
    assert "AKAKAKAKAK" not in key
    assert default_limit_key(endpoint, NoAuth()) != key  # no AK: the endpoint alone
    assert default_limit_key("http://127.0.0.1:1", None, simulated=True) == default_limit_key(
        "http://127.0.0.1:2", None, simulated=True
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:pw@h/1", "rediss://user:***@h/1"),
        ("redis://pw@h", "redis://***@h"),
        ("unix:///run/redis.sock?password=pw&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ],
)
def test_redis_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    if "pw" in url:
        assert "pw" not in scrub(f"failed: {url} said pw", url)


def test_the_ledger_records_the_redis_url_without_its_password() -> None:
    options = resolve_options({}, {}, {"LAUNCHER_REDIS_URL": "redis://:hunter2@h:6379/0"})
    assert options.redis == "redis://:hunter2@h:6379/0"
    assert options.public()["redis"] == "redis://:***@h:6379/0"


# -- end to end -----------------------------------------------------------------------------


async def test_two_launchers_at_400_per_second_share_one_400_per_second_limit(
    redis_url: str, tmp_path: Path
) -> None:
    """Two real `launcher run` processes, each --rate 400/s, on two halves of a manifest:
    the simulator sees 400/s combined, and every job starts exactly once."""
    jobs = job_lines(3000)
    halves = [write_manifest(tmp_path / f"half{n}.jsonl", jobs[n::2]) for n in range(2)]
    async with running(SimConfig()) as (sim, url):
        done: list[int] = []

        async def run_half(n: int) -> None:
            result = await launcher(
                "run", str(halves[n]), "--endpoint", url, "--project-id", "p1",
                "--rate", "400/s", "--redis", redis_url, "--progress", "off",
                "--ledger", str(tmp_path / f"ledger{n}.jsonl"), env=sim_env(),
            )  # fmt: skip
            assert result.code == 0, result.stderr
            done.append(n)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_half, 0)
            tg.start_soon(run_half, 1)
    assert sorted(done) == [0, 1]
    rate = sim.stats.achieved_rate()
    print(f"\ncombined rate measured by the simulator: {rate:.1f}/s over {len(jobs)} jobs")
    assert 360.0 <= rate <= 420.0
    assert all(sim.stats.took_effect("start", "p1", job["name"]) == 1 for job in jobs)
    for n in range(2):
        assert report_json(tmp_path / f"ledger{n}.jsonl")["outcomes"]["started"] == 1500


async def test_launcher_run_with_unreachable_redis_exits_2_and_sends_nothing(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    async with running(SimConfig()) as (sim, endpoint):
        refused = await launcher(
            "run", str(manifest), "--endpoint", endpoint, "--project-id", "p1",
            "--redis", url, "--ledger", str(tmp_path / "a.jsonl"), env=sim_env(),
        )  # fmt: skip
        assert sim.stats.requests == 0
        fallback = await launcher(
            "run", str(manifest), "--endpoint", endpoint, "--project-id", "p1",
            "--redis", url, "--redis-optional", "--ledger", str(tmp_path / "b.jsonl"),
            env=clean_env(HUAWEICLOUD_SDK_AK="AK0000000000", HUAWEICLOUD_SDK_SK="sk"),
        )  # fmt: skip
    assert refused.code == 2
    assert "cannot use Redis at redis://:***@127.0.0.1:" in refused.stderr
    assert fallback.code == 0, fallback.stderr
    assert "redis unreachable" in fallback.stderr
    assert "hunter2" not in refused.stderr + fallback.stderr
    assert "hunter2" not in (tmp_path / "b.jsonl").read_text()


# -- the Kubernetes example -----------------------------------------------------------------


def test_the_kubernetes_example_is_consistent(tmp_path: Path) -> None:
    """Its options load, its manifest validates, and N is the same everywhere."""
    import yaml

    from launcher.config import load_config_file
    from launcher.manifest.validate import Defaults, validate

    path = Path(__file__).resolve().parents[2] / "configs" / "k8s" / "indexed-job.yaml"
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}
    data = documents["ConfigMap"]["data"]
    (tmp_path / "launcher.toml").write_text(data["launcher.toml"])
    options = resolve_options(
        {}, load_config_file(tmp_path / "launcher.toml"), {"LAUNCHER_REDIS_URL": "redis://r"}
    )
    assert options.redis == "redis://r"
    (tmp_path / "nightly.jsonl").write_text(data["nightly.jsonl"])
    validate(
        str(tmp_path / "nightly.jsonl"), Defaults(project_id=options.project_id)
    ).raise_if_invalid()
    job = documents["Job"]["spec"]
    count = job["completions"]
    assert job["parallelism"] == count
    assert job["completionMode"] == "Indexed"
    script = job["template"]["spec"]["containers"][0]["args"][0]
    assert f'--shard "${{JOB_COMPLETION_INDEX}}/{count}"' in script
    assert f"-of-{count}.jsonl" in script
    assert "LAUNCHER_REDIS_URL" in documents["Secret"]["stringData"]


def test_the_kubernetes_cronjob_runs_the_nightly_restart_from_the_image(tmp_path: Path) -> None:
    """configs/k8s/nightly-restart-cronjob.yaml: a valid CronJob that runs the image's
    entrypoint with the ConfigMap of indexed-job.yaml, resumes its night, needs no Redis."""
    import re

    import yaml

    from launcher.config import load_config_file

    root = Path(__file__).resolve().parents[2]
    k8s = root / "configs" / "k8s"
    (cron,) = yaml.safe_load_all((k8s / "nightly-restart-cronjob.yaml").read_text())
    assert cron["apiVersion"] == "batch/v1"
    assert cron["kind"] == "CronJob"
    spec = cron["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    script = container["args"][0]
    assert "exec launcher run /manifest/nightly.jsonl" in script
    assert "--config /manifest/launcher.toml" in script
    assert '--ledger "$ledger" $resume' in script
    assert 'resume="--resume"' in script
    # The volumes and the ConfigMap/Secret are those of indexed-job.yaml.
    documents = {
        doc["kind"]: doc for doc in yaml.safe_load_all((k8s / "indexed-job.yaml").read_text())
    }
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {
        documents["ConfigMap"]["metadata"]["name"]
    }
    assert container["envFrom"][0]["secretRef"]["name"] == documents["Secret"]["metadata"]["name"]
    # One pod, the core image: the Secret's Redis URL is overridden empty, so no Redis.
    env = {item["name"]: item["value"] for item in container["env"]}
    data = documents["ConfigMap"]["data"]
    (tmp_path / "launcher.toml").write_text(data["launcher.toml"])
    secret_env = dict(documents["Secret"]["stringData"]) | env
    options = resolve_options({}, load_config_file(tmp_path / "launcher.toml"), secret_env)
    assert options.redis is None
    # The pod runs as the image's non-root user.
    dockerfile = (root / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    assert pod["securityContext"]["runAsUser"] == int(user.group(1)) != 0
    assert 'ENTRYPOINT ["launcher"]' in dockerfile
    assert re.search(r"^FROM python:3\.\d+-slim$", dockerfile, re.MULTILINE)
