"""Tests for the simulator and `launcher sim`: real sockets, a real aiohttp client, no mocks.

Every test starts its own simulator on a free loopback port (`running()`), talks HTTP to
it, and checks both what the client saw and what the simulator counted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import orjson
import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from launcher.dlf.signing import AkSk, Signer, canonical_query
from launcher.simulator import IamUser, SimConfig, SimStats, Simulator, running

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json;charset=UTF-8"}
BODY = orjson.dumps(
    {"jobParams": [{"name": "day", "value": "2024-10-30", "paramType": "variable"}]}
)
# What a client may see when the simulator resets the connection.
DISCONNECTS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Answer:
    """One HTTP answer, read completely."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        self.json: Any = orjson.loads(raw) if raw else None


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Send one request; `url` is already percent-encoded and sent exactly as given."""
    async with session.request(
        method, URL(url, encoded=True), data=body, headers=headers
    ) as response:
        return Answer(response.status, response.headers, await response.read())


def segment(name: str) -> str:
    """A job name as one encoded path segment (dots-only names escaped too)."""
    encoded = quote(name, safe="~")
    return encoded.replace(".", "%2E") if encoded.strip(".") == "" else encoded


def assert_error(answer: Answer, status: int, code: str) -> None:
    """An error answer: status, code, message and a request id that matches the header."""
    assert answer.status == status, answer.raw
    assert answer.json["error_code"] == code
    assert answer.json["error_msg"]
    assert answer.json["request_id"] == answer.headers["X-Request-Id"]


# ---------------------------------------------------------------------------- routes


async def test_start_stop_and_job_list() -> None:
    async with running() as (sim, url), aiohttp.ClientSession() as session:
        start = await call(session, "POST", f"{url}/v1/p1/jobs/daily-etl/start", body=BODY)
        assert start.status == 204
        assert start.raw == b""
        assert len(start.headers["X-Request-Id"]) == 32
        await call(session, "POST", f"{url}/v1/p1/jobs/weekly-etl/start", headers=JSON)
        await call(session, "POST", f"{url}/v1/p1/jobs/other/stop", body=b"{}")

        listed = await call(session, "GET", f"{url}/v1/p1/jobs?jobName=etl&jobType=BATCH")
        assert listed.status == 200
        assert listed.json == {
            "total": 2,
            "jobs": [
                {
                    "name": "daily-etl",
                    "jobType": "BATCH",
                    "status": "SCHEDULING",
                    "lastInstanceStatus": None,
                },
                {
                    "name": "weekly-etl",
                    "jobType": "BATCH",
                    "status": "SCHEDULING",
                    "lastInstanceStatus": None,
                },
            ],
        }
        page = await call(session, "GET", f"{url}/v1/p1/jobs?limit=1&offset=1")
        assert page.json["total"] == 3
        assert [job["name"] for job in page.json["jobs"]] == ["other"]
        assert page.json["jobs"][0]["status"] == "STOPPED"
        real_time = await call(session, "GET", f"{url}/v1/p1/jobs?jobType=REAL_TIME")
        assert real_time.json == {"total": 0, "jobs": []}
        other_project = await call(session, "GET", f"{url}/v1/p2/jobs")
        assert other_project.json["total"] == 0

        await call(session, "POST", f"{url}/v1/p1/jobs/daily-etl/stop")
        listed = await call(session, "GET", f"{url}/v1/p1/jobs?jobName=daily")
        assert listed.json["jobs"][0]["status"] == "STOPPED"

        bad_limit = await call(session, "GET", f"{url}/v1/p1/jobs?limit=0")
        assert_error(bad_limit, 400, "DLF.3051")

    assert sim.stats.took_effect("start", "p1", "daily-etl") == 1
    assert sim.stats.took_effect("stop", "p1", "daily-etl") == 1
    assert sim.stats.took_effect("stop", "p1", "other") == 1
    assert sim.stats.by_route["start"] == 2
    assert sim.stats.by_status[204] == 4


@pytest.mark.parametrize(
    "name",
    ["team/daily", "../etc", "..", "what?#now", "with space", "作业-每日", "café%2F"],
)
async def test_job_names_are_one_decoded_segment(name: str) -> None:
    async with running() as (sim, url), aiohttp.ClientSession() as session:
        started = await call(session, "POST", f"{url}/v1/p/jobs/{segment(name)}/start", body=BODY)
        assert started.status == 204, started.raw
        listed = await call(session, "GET", f"{url}/v1/p/jobs?jobName={quote(name, safe='')}")
        assert [job["name"] for job in listed.json["jobs"]] == [name]
    assert sim.stats.starts == Counter({("p", None, name): 1})


async def test_workspace_header_selects_the_state() -> None:
    async with running() as (sim, url), aiohttp.ClientSession() as session:
        await call(session, "POST", f"{url}/v1/p/jobs/j/start", headers={"workspace": "ws-1"})
        default = await call(session, "GET", f"{url}/v1/p/jobs")
        in_ws = await call(session, "GET", f"{url}/v1/p/jobs", headers={"workspace": "ws-1"})
    assert default.json["total"] == 0
    assert in_ws.json["jobs"][0]["status"] == "SCHEDULING"
    assert sim.stats.took_effect("start", "p", "j", "ws-1") == 1
    assert sim.stats.took_effect("start", "p", "j") == 0


async def test_run_immediate_and_instance_list() -> None:
    async with running() as (sim, url), aiohttp.ClientSession() as session:
        before_ms = int(time.time() * 1000)
        first = await call(session, "POST", f"{url}/v1/p/jobs/a%2Fb/run-immediate", body=BODY)
        second = await call(session, "POST", f"{url}/v1/p/jobs/a%2Fb/run-immediate")
        await call(session, "POST", f"{url}/v1/p/jobs/other/run-immediate")
        assert first.status == 200
        ids = [first.json["instanceId"], second.json["instanceId"]]
        assert all(isinstance(i, int) for i in ids)
        assert ids[0] != ids[1]

        base = f"{url}/v1/p/jobs/instances/detail"
        found = await call(session, "GET", f"{base}?jobName=a%2Fb&minPlanTime={before_ms}")
        assert found.status == 200
        assert found.json["total"] == 2
        newest = found.json["instances"][0]
        assert newest["instanceId"] == ids[1]  # newest first
        assert newest["jobName"] == "a/b"
        assert newest["status"] == "running"
        assert newest["planTime"] >= before_ms
        assert set(newest) >= {"startTime", "endTime"}

        later = await call(session, "GET", f"{base}?minPlanTime={int(time.time() * 1000) + 60_000}")
        assert later.json == {"total": 0, "instances": []}
        failed = await call(session, "GET", f"{base}?status=fail")
        assert failed.json["total"] == 0
        page = await call(session, "GET", f"{base}?limit=1")
        assert page.json["total"] == 3
        assert len(page.json["instances"]) == 1
        listed = await call(session, "GET", f"{url}/v1/p/jobs?jobName=a%2Fb")
        assert listed.json["jobs"][0]["lastInstanceStatus"] == "running"
    assert sim.stats.took_effect("run-immediate", "p", "a/b") == 2


async def test_unknown_jobs_answer_dlf_0100() -> None:
    config = SimConfig(known_jobs=frozenset({"a", "b", "missing-c"}), missing_prefix="missing-")
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        assert (await call(session, "POST", f"{url}/v1/p/jobs/a/start")).status == 204
        for name in ("zzz", "missing-c"):
            answer = await call(session, "POST", f"{url}/v1/p/jobs/{name}/start", body=BODY)
            assert_error(answer, 400, "DLF.0100")
            assert answer.json["error_msg"] == "The job does not exists."
        listed = await call(session, "GET", f"{url}/v1/p/jobs")
    assert [(j["name"], j["status"]) for j in listed.json["jobs"]] == [
        ("a", "SCHEDULING"),
        ("b", "STOPPED"),
    ]
    assert sum(sim.stats.starts.values()) == 1


async def test_every_job_exists_by_default_but_the_missing_prefix() -> None:
    async with (
        running(SimConfig(missing_prefix="gone-")) as (_sim, url),
        aiohttp.ClientSession() as session,
    ):
        assert (await call(session, "POST", f"{url}/v1/p/jobs/anything/stop")).status == 204
        gone = await call(session, "POST", f"{url}/v1/p/jobs/gone-1/stop")
    assert_error(gone, 400, "DLF.0100")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"jobParams": {}}',
        b'{"jobParams": ["x"]}',
        b'{"jobParams": [{"value": "v"}]}',
        orjson.dumps({"jobParams": [{"name": "n" * 65, "value": "v"}]}),
        orjson.dumps({"jobParams": [{"name": "n", "value": "v" * 1025}]}),
        b'{"jobParams": [{"name": "n", "value": 3}]}',
        b'{"jobParams": [{"name": "n", "value": "v", "paramType": "other"}]}',
        b'{"start_date": "20241030"}',
    ],
)
async def test_invalid_bodies_answer_dlf_3051(body: bytes) -> None:
    async with running() as (sim, url), aiohttp.ClientSession() as session:
        answer = await call(session, "POST", f"{url}/v1/p/jobs/j/start", body=body, headers=JSON)
    assert_error(answer, 400, "DLF.3051")
    assert not sim.stats.starts


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b'{"jobParams": []}',
        orjson.dumps({"jobParams": [{"name": "n" * 64, "value": "v" * 1024, "type": "constants"}]}),
        b'{"jobParams": null, "start_date": 20241030, "ignore_first_self_dep": true}',
    ],
)
async def test_valid_bodies_are_accepted(body: bytes) -> None:
    async with running() as (_sim, url), aiohttp.ClientSession() as session:
        answer = await call(session, "POST", f"{url}/v1/p/jobs/j/start", body=body, headers=JSON)
    assert answer.status == 204, answer.raw


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/p/jobs/j/start"),
        ("POST", "/v1/p/jobs/j/delete"),
        ("POST", "/v1/p/jobs"),
        ("POST", "/v1//jobs/j/start"),
        ("GET", "/v2/p/jobs"),
        ("GET", "/"),
    ],
)
async def test_unknown_routes_answer_apigw_0101(method: str, path: str) -> None:
    async with running() as (_sim, url), aiohttp.ClientSession() as session:
        answer = await call(session, method, url + path)
    assert_error(answer, 404, "APIGW.0101")


# ---------------------------------------------------------------------------- faults


async def _fire(
    session: aiohttp.ClientSession, url: str, count: int, concurrency: int = 32
) -> Counter[str]:
    """Start `count` distinct jobs; count outcomes by status (or "reset")."""
    outcomes: Counter[str] = Counter()
    names = iter(range(count))

    async def worker() -> None:
        for i in names:
            try:
                answer = await call(session, "POST", f"{url}/v1/p/jobs/job-{i}/start", body=BODY)
            except DISCONNECTS:
                outcomes["reset"] += 1
                continue
            outcomes[str(answer.status)] += 1
            if answer.status == 429:
                assert answer.json["error_code"] == "APIGW.0308"
            if answer.status in (429, 503):
                assert answer.headers["Retry-After"] == "2"

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return outcomes


async def test_fault_fractions_are_as_configured_and_seeded() -> None:
    config = SimConfig(
        fail_503=0.10,
        fail_500=0.05,
        fail_429=0.05,
        retry_after=2,
        reset_before=0.05,
        reset_after=0.05,
        seed=7,
    )
    count = 2000
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        outcomes = await _fire(session, url, count)
    stats = sim.stats
    assert sum(outcomes.values()) == count
    # Binomial standard deviation is at most ~0.7% here: allow 3%.
    expected = {"503": 0.10, "500": 0.05, "429": 0.05, "reset": 0.10, "204": 0.70}
    for outcome, fraction in expected.items():
        assert abs(outcomes[outcome] / count - fraction) < 0.03, (outcome, outcomes)
    # The server's own view agrees with the client's.
    assert stats.faults["503"] == outcomes["503"]
    assert stats.resets == outcomes["reset"]
    assert stats.by_status[204] == outcomes["204"]
    # A reset_after start took effect, a reset_before one did not.
    assert sum(stats.starts.values()) == outcomes["204"] + stats.faults["reset_after"]
    assert stats.requests == count == sum(stats.by_status.values()) + stats.resets

    # The same seed draws the same faults (in arrival order: compare the totals).
    async with running(config) as (again, url), aiohttp.ClientSession() as session:
        await _fire(session, url, count)
    assert again.stats.faults == stats.faults


@pytest.mark.parametrize(("kind", "took_effect"), [("reset_before", 0), ("reset_after", 1)])
async def test_reset_is_a_disconnect_and_counts_only_after(kind: str, took_effect: int) -> None:
    config = SimConfig.from_mapping({kind: 1.0})
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        with pytest.raises(DISCONNECTS):
            await call(session, "POST", f"{url}/v1/p/jobs/j/start", body=BODY)
        # The server is unharmed: queries are not faulted by default.
        listed = await call(session, "GET", f"{url}/v1/p/jobs")
    assert sim.stats.took_effect("start", "p", "j") == took_effect
    assert listed.json["total"] == took_effect
    assert sim.stats.faults[kind] == 1
    assert 500 not in sim.stats.by_status


async def test_faults_on_queries_flag() -> None:
    config = SimConfig(fail_503=1.0, faults_on_queries=True)
    async with running(config) as (_sim, url), aiohttp.ClientSession() as session:
        listed = await call(session, "GET", f"{url}/v1/p/jobs")
        detail = await call(session, "GET", f"{url}/v1/p/jobs/instances/detail")
    assert_error(listed, 503, "APIGW.0203")
    assert_error(detail, 503, "APIGW.0203")
    assert "Retry-After" not in listed.headers


async def test_slow_answers_take_effect_on_arrival() -> None:
    config = SimConfig(slow_fraction=1.0, slow_seconds=0.4)
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        statuses: list[int] = []

        async def start_job() -> None:
            answer = await call(session, "POST", f"{url}/v1/p/jobs/j/start", body=BODY)
            statuses.append(answer.status)

        began = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(start_job)
            await anyio.sleep(0.15)
            assert sim.stats.took_effect("start", "p", "j") == 1
            assert statuses == []  # taken effect, not answered yet
        assert statuses == [204]
        assert time.monotonic() - began >= 0.4
    assert sim.stats.faults["slow"] == 1


async def test_latency_is_added_to_every_answer() -> None:
    async with (
        running(SimConfig(latency=0.1, latency_jitter=0.05)) as (_sim, url),
        aiohttp.ClientSession() as session,
    ):
        began = time.monotonic()
        await call(session, "GET", f"{url}/v1/p/jobs")
        assert time.monotonic() - began >= 0.1


async def test_rate_limit_answers_apigw_0308() -> None:
    config = SimConfig(rate_limit=200, rate_burst=10)
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        outcomes: Counter[int] = Counter()
        deadline = time.monotonic() + 0.5

        async def worker() -> None:
            while time.monotonic() < deadline:
                answer = await call(session, "POST", f"{url}/v1/p/jobs/j/start")
                outcomes[answer.status] += 1
                if answer.status == 429:
                    assert_error(answer, 429, "APIGW.0308")
                    assert answer.json["error_msg"] == "The throttling threshold has been reached"

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
    stats = sim.stats
    span = stats.arrivals[-1] - stats.arrivals[0]
    # The bucket starts full (10) and refills at 200/s.
    assert outcomes[204] <= 10 + 200 * span + 1
    assert outcomes[204] >= 200 * span * 0.8
    assert outcomes[429] == stats.rate_limited > 0
    assert stats.achieved_rate() > 200  # the client was offering more than the limit


# ---------------------------------------------------------------------------- AK/SK


def _signed(
    signer: Signer,
    url: str,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    body: bytes,
) -> tuple[str, dict[str, str]]:
    """The URL and headers of a request signed like the launcher signs it."""
    headers = dict(JSON)
    signer.sign(method, URL(url).raw_authority, path, query, headers, body)
    target = url + path + ("?" + canonical_query(query) if query else "")
    return target, headers


async def test_signatures_are_checked() -> None:
    config = SimConfig(aksk={"AK1": "SK1", "AK2": "SK2"})
    good = Signer(AkSk("AK1", "SK1"))
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        for path in ("/v1/p/jobs/j/start", "/v1/p/jobs/team%2F%E4%BD%9C%E4%B8%9A/start"):
            target, headers = _signed(good, url, "POST", path, [], BODY)
            answer = await call(session, "POST", target, body=BODY, headers=headers)
            assert answer.status == 204, answer.raw
        for job_name, total in (("team/作业", 1), ("作业 x+y&z=1", 0)):
            query = [("jobName", job_name), ("limit", "5")]
            target, headers = _signed(good, url, "GET", "/v1/p/jobs", query, b"")
            listed = await call(session, "GET", target, headers=headers)
            assert listed.status == 200, listed.raw
            assert listed.json["total"] == total

        unsigned = await call(session, "POST", f"{url}/v1/p/jobs/j/start", body=BODY)
        assert_error(unsigned, 401, "APIGW.0301")
        assert "verify aksk signature fail" in unsigned.json["error_msg"]
        target, headers = _signed(good, url, "POST", "/v1/p/jobs/j/start", [], BODY)
        tampered = await call(session, "POST", target, body=BODY + b" ", headers=headers)
        assert_error(tampered, 401, "APIGW.0301")
        stranger = Signer(AkSk("AK9", "SK9"))
        target, headers = _signed(stranger, url, "POST", "/v1/p/jobs/j/start", [], BODY)
        unknown = await call(session, "POST", target, body=BODY, headers=headers)
        assert_error(unknown, 401, "APIGW.0301")
    assert sim.stats.bad_signatures == 3
    assert sim.stats.took_effect("start", "p", "j") == 1
    assert sim.stats.took_effect("start", "p", "team/作业") == 1


async def test_five_bad_signatures_lock_the_key() -> None:
    config = SimConfig(aksk={"AK1": "SK1", "AK2": "SK2"}, lockout_seconds=0.5)
    good, wrong, other = (
        Signer(AkSk("AK1", "SK1")),
        Signer(AkSk("AK1", "not-the-sk")),
        Signer(AkSk("AK2", "SK2")),
    )
    path = "/v1/p/jobs/j/start"

    async def send(session: aiohttp.ClientSession, url: str, signer: Signer) -> Answer:
        target, headers = _signed(signer, url, "POST", path, [], BODY)
        return await call(session, "POST", target, body=BODY, headers=headers)

    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        for _ in range(4):
            assert (await send(session, url, wrong)).status == 401
        assert (await send(session, url, good)).status == 204  # a success clears the streak
        for _ in range(5):
            assert (await send(session, url, wrong)).status == 401
        locked = await send(session, url, good)
        assert_error(locked, 401, "APIGW.0301")
        assert "AK access failed to reach the limit" in locked.json["error_msg"]
        assert (await send(session, url, other)).status == 204  # other keys are not locked
        await anyio.sleep(0.6)
        assert (await send(session, url, good)).status == 204
    assert sim.stats.bad_signatures == 9
    assert sim.stats.locked_out == 1
    assert sim.stats.took_effect("start", "p", "j") == 3


# ---------------------------------------------------------------------------- IAM tokens


def _login_body(password: str, *, project: str | None = "p") -> bytes:
    auth: dict[str, Any] = {
        "identity": {
            "methods": ["password"],
            "password": {"user": {"name": "alice", "password": password, "domain": {"name": "d"}}},
        }
    }
    if project is not None:
        auth["scope"] = {"project": {"id": project}}
    return orjson.dumps({"auth": auth})


async def test_iam_login_and_token_expiry() -> None:
    config = SimConfig(iam_users=(IamUser("alice", "pa:ss", "d"),), token_ttl=0.5)
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        wrong = await call(session, "POST", f"{url}/v3/auth/tokens", body=_login_body("nope"))
        assert_error(wrong, 401, wrong.json["error_code"])
        assert wrong.json["error"]["code"] == 401
        assert "X-Subject-Token" not in wrong.headers
        unscoped = await call(
            session, "POST", f"{url}/v3/auth/tokens", body=_login_body("pa:ss", project=None)
        )
        assert unscoped.status == 400

        login = await call(session, "POST", f"{url}/v3/auth/tokens", body=_login_body("pa:ss"))
        assert login.status == 201
        token = login.headers["X-Subject-Token"]
        expires = datetime.fromisoformat(login.json["token"]["expires_at"])
        assert 0 < expires.timestamp() - time.time() <= 0.5
        assert login.json["token"]["project"] == {"id": "p"}

        start = f"{url}/v1/p/jobs/j/start"
        assert (await call(session, "POST", start, headers={"X-Auth-Token": token})).status == 204
        assert_error(await call(session, "POST", start), 401, "APIGW.0301")
        bogus = await call(session, "POST", start, headers={"X-Auth-Token": "MIIbogus"})
        assert_error(bogus, 401, "APIGW.0301")
        await anyio.sleep(0.6)
        expired = await call(session, "POST", start, headers={"X-Auth-Token": token})
        assert_error(expired, 401, "APIGW.0307")
    assert sim.stats.took_effect("start", "p", "j") == 1
    assert sim.stats.by_route["iam"] == 3


async def test_static_tokens_never_expire() -> None:
    async with (
        running(SimConfig(tokens=frozenset({"tok"}))) as (_sim, url),
        aiohttp.ClientSession() as session,
    ):
        answer = await call(session, "GET", f"{url}/v1/p/jobs", headers={"X-Auth-Token": "tok"})
    assert answer.status == 200


# ---------------------------------------------------------------------------- stats


def test_stats_helpers() -> None:
    stats = SimStats()
    assert stats.achieved_rate() == 0.0
    assert stats.busiest_window() == 0
    stats.arrivals = array("d", [i / 100 for i in range(10)] + [1.0 + i / 1000 for i in range(5)])
    assert stats.busiest_window(0.1) == 10
    assert stats.busiest_window(0.005) == 5
    assert stats.achieved_rate() == pytest.approx(14 / 1.004)
    stats.requests = 15
    stats.starts[("p", None, "j")] += 1
    assert stats.to_json()["effects"] == [
        {"project": "p", "workspace": None, "name": "j", "start": 1, "stop": 0, "run-immediate": 0}
    ]
    stats.reset()
    assert stats.requests == 0
    assert len(stats.arrivals) == 0
    assert not stats.starts


async def test_stats_route_is_not_counted() -> None:
    async with running() as (sim, url), aiohttp.ClientSession() as session:
        await call(session, "POST", f"{url}/v1/p/jobs/a%2Fb/start")
        await call(session, "GET", f"{url}/nowhere")
        first = await call(session, "GET", f"{url}/_sim/stats")
        second = await call(session, "GET", f"{url}/_sim/stats")
    assert first.json == second.json
    assert first.json["requests"] == 2
    assert first.json["by_route"] == {"start": 1, "unknown": 1}
    assert first.json["by_status"] == {"204": 1, "404": 1}
    assert first.json["effects"][0]["name"] == "a/b"
    assert sim.stats.requests == 2
    assert len(sim.stats.arrivals) == 2


# ---------------------------------------------------------------------------- lifecycle & config


async def test_bind_failure_surfaces_in_the_caller() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with anyio.create_task_group() as tg:
            with pytest.raises(OSError, match="in use"):
                await tg.start(Simulator().serve, "127.0.0.1", port)
        with pytest.raises(OSError, match="in use"):
            async with running(port=port):
                pass


async def test_errors_in_the_block_are_not_wrapped() -> None:
    with pytest.raises(KeyError):
        async with running():
            raise KeyError("mine")


async def test_server_stops_when_the_context_exits() -> None:
    async with running() as (_sim, url):
        pass
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(session, "GET", f"{url}/v1/p/jobs")


def test_config_from_mapping() -> None:
    config = SimConfig.from_mapping(
        {
            "latency": 0.02,
            "fail-503": 0.05,
            "retry_after": 2,
            "rate_limit": 300,
            "known_jobs": ["a", "b"],
            "aksk": ["AK:S:K"],
            "iam_users": ["u:p:w:d", {"name": "v", "password": "q", "domain": "d"}],
            "faults_on_queries": True,
            "seed": 3,
        }
    )
    assert config.fail_503 == 0.05
    assert config.retry_after == 2.0
    assert config.known_jobs == frozenset({"a", "b"})
    assert dict(config.aksk or {}) == {"AK": "S:K"}
    assert config.iam_users == (IamUser("u", "p:w", "d"), IamUser("v", "q", "d"))
    assert "S:K" not in repr(config)
    assert "p:w" not in repr(config)
    assert SimConfig.from_mapping({}) == SimConfig()


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"fail_404": 0.1}, "fail_404"),
        ({"latency": True}, "latency"),
        ({"latency": "1"}, "latency"),
        ({"seed": 1.5}, "seed"),
        ({"faults_on_queries": 1}, "faults_on_queries"),
        ({"fail_503": 0.6, "fail_500": 0.6}, "more than 1"),
        ({"fail_503": 1.5}, "fail_503"),
        ({"aksk": ["no-colon-SECRET"]}, "aksk"),
        ({"known_jobs": "a"}, "known_jobs"),
        ({"rate_limit": 0}, "rate_limit"),
    ],
)
def test_config_from_mapping_rejects(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        SimConfig.from_mapping(mapping)
    assert "SECRET" not in str(caught.value)


# ---------------------------------------------------------------------------- `launcher sim`


def _sim_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "launcher", "sim", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HUAWEICLOUD_SDK_AK": "ENVAK", "HUAWEICLOUD_SDK_SK": "ENV-SECRET-SK"},
    )


def test_cli_prints_the_url_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    known = tmp_path / "jobs.txt"
    known.write_text("# jobs\nalpha\n\nmissing-beta\n", encoding="utf-8")
    process = _sim_process(
        "--port", "0", "--latency", "0.001", "--fail-503", "0", "--retry-after", "2",
        "--missing-prefix", "missing-", "--known-jobs", str(known), "--seed", "5",
        "--aksk", "AK1:CLI-SECRET-SK", "--check-signatures",
        "--iam-user", "u:CLI-SECRET-PW:d", "--token", "CLI-SECRET-TOKEN",
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/_sim/stats", timeout=5) as response:
            assert orjson.loads(response.read())["requests"] == 0
        request = urllib.request.Request(
            f"{url}/v1/p/jobs/alpha/start",
            method="POST",
            headers={"X-Auth-Token": "CLI-SECRET-TOKEN"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 204
        request = urllib.request.Request(f"{url}/v1/p/jobs/alpha/start", method="POST")
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(request, timeout=5)
        assert unsigned.value.code == 401
        unsigned.value.close()
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert out == ""  # only the URL line, already read
    assert "SECRET" not in err


def test_cli_usage_errors_exit_2() -> None:
    for args in (["--fail-503", "2"], ["--nonsense"], ["--aksk", "no-colon-SECRET"]):
        process = _sim_process(*args)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 2, (args, err)
        assert out == ""
        assert "SECRET" not in err


def test_cli_bind_failure_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = _sim_process("--port", str(taken.getsockname()[1]))
        out, err = process.communicate(timeout=10)
    assert process.returncode == 1
    assert out == ""
    assert "cannot listen" in err


async def _twenty_runs(config: SimConfig) -> tuple[list[str], dict[str, int]]:
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        ids = []
        for n in range(20):
            answer = await call(session, "POST", f"{url}/v1/p/jobs/j{n}/run-immediate")
            ids.append(answer.json["instanceId"])
        shown = await call(session, "GET", f"{url}/v1/p/jobs/j0/instances/{ids[0]}")
        assert shown.status == 200
        assert shown.json["status"] == "running"
        assert shown.json["instanceId"] == ids[0]
        other = await call(session, "GET", f"{url}/v1/p/jobs/j1/instances/{ids[0]}")
        assert other.status == 400  # DLF.0100: not this job's instance
        await anyio.sleep(0.4)
        statuses = []
        for n, instance_id in enumerate(ids):
            ended = await call(session, "GET", f"{url}/v1/p/jobs/j{n}/instances/{instance_id}")
            assert ended.json["endTime"] is not None
            statuses.append(ended.json["status"])
        return statuses, dict(sim.service.instance_statuses())


async def test_instances_end_after_run_seconds_with_a_seeded_status() -> None:
    """`run_seconds`/`run_fail`: runs end success or fail (seeded); the instance GET serves one."""
    config = SimConfig(run_seconds=0.3, run_fail=0.5, seed=7)
    statuses, counts = await _twenty_runs(config)
    assert set(statuses) == {"success", "fail"}
    assert counts == {s: statuses.count(s) for s in set(statuses)}
    assert (await _twenty_runs(config))[0] == statuses  # the same seed, the same ends
