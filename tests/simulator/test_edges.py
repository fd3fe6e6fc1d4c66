"""The simulator's imitations of the real service's edges: fuzzy names unless
preciseQuery, page-number paging with total, 504 after processing, refusals before
forwarding, error shapes, a skewed clock, TLS, 100 Continue and close-delimited answers."""

from __future__ import annotations

import email.utils
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from net_helpers import tls_files

from launcher.simulator import SimConfig, running

pytestmark = pytest.mark.anyio


async def get(
    session: aiohttp.ClientSession, url: str
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with session.get(url) as response:
        raw = await response.read()
        return response.status, orjson.loads(raw) if raw else None, response.headers


async def post(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.post(url, data=b"") as response:
        raw = await response.read()
        return response.status, orjson.loads(raw) if raw else None


async def test_instance_names_are_fuzzy_unless_precise_query() -> None:
    async with running() as (_, url), aiohttp.ClientSession() as session:
        for name in ("job1", "job10", "job1", "xjob1y"):
            assert (await post(session, f"{url}/v1/p/jobs/{name}/run-immediate"))[0] == 200
        base = f"{url}/v1/p/jobs/instances/detail?jobName=job1&limit=100"
        _, fuzzy, _ = await get(session, base)
        _, exact, _ = await get(session, base + "&preciseQuery=true")
    assert fuzzy["total"] == 4
    assert exact["total"] == 2
    assert {i["jobName"] for i in exact["instances"]} == {"job1"}
    assert all(i["instanceType"] == 2 for i in exact["instances"])


async def test_offset_is_a_page_number_and_total_counts_every_match() -> None:
    names = frozenset(f"j{n:02d}" for n in range(25))
    async with (
        running(SimConfig(known_jobs=names, real_time_jobs=frozenset({"j03"}))) as (_, url),
        aiohttp.ClientSession() as session,
    ):
        pages = [(await get(session, f"{url}/v1/p/jobs?limit=10&offset={n}"))[1] for n in range(4)]
        _, real_time, _ = await get(session, f"{url}/v1/p/jobs?jobType=REAL_TIME")
        _, batch, _ = await get(session, f"{url}/v1/p/jobs?jobType=BATCH&limit=100")
    assert [p["total"] for p in pages] == [25] * 4
    assert [len(p["jobs"]) for p in pages] == [10, 10, 5, 0]
    assert pages[1]["jobs"][0]["name"] == "j10"
    assert [j["name"] for j in real_time["jobs"]] == ["j03"]
    assert real_time["jobs"][0]["jobType"] == "REAL_TIME"
    assert batch["total"] == 24


async def test_504_after_processing_took_effect_and_refusals_did_not() -> None:
    async with (
        running(SimConfig(fail_504_after=0.5, refused_5xx=0.5, seed=1)) as (sim, url),
        aiohttp.ClientSession() as session,
    ):
        answers = [await post(session, f"{url}/v1/p/jobs/j{n}/start") for n in range(40)]
    late = [n for n, (status, _) in enumerate(answers) if status == 504]
    refused = [n for n, (status, _) in enumerate(answers) if status == 500]
    assert len(late) + len(refused) == 40
    assert late
    assert refused
    assert {answers[n][1]["error_code"] for n in late} == {"APIGW.0203"}
    assert {answers[n][1]["error_code"] for n in refused} == {"APIGW.0103"}
    for n in late:
        assert sim.stats.took_effect("start", "p", f"j{n}") == 1
    for n in refused:
        assert sim.stats.took_effect("start", "p", f"j{n}") == 0


async def test_a_late_call_is_answered_504_at_once_and_takes_effect_later() -> None:
    config = SimConfig(late_fraction=1.0, late_seconds=0.3, known_jobs=frozenset({"j1"}))
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        status, body = await post(session, f"{url}/v1/p/jobs/j1/start")
        assert (status, body["error_code"]) == (504, "APIGW.0203")
        _, before, _ = await get(session, f"{url}/v1/p/jobs?jobName=j1")
        assert sim.stats.took_effect("start", "p", "j1") == 0
        assert sim.late_pending == 1
        while sim.late_pending:  # noqa: ASYNC110 - the simulator has no event for this
            await anyio.sleep(0.02)
        _, after, _ = await get(session, f"{url}/v1/p/jobs?jobName=j1")
        assert sim.stats.took_effect("start", "p", "j1") == 1
        assert sim.stats.faults["late"] == 1
    assert before["jobs"][0]["status"] == "STOPPED"  # a status check sees the old state
    assert after["jobs"][0]["status"] == "SCHEDULING"


async def test_late_calls_still_pending_take_effect_when_the_simulator_stops() -> None:
    async with (
        running(SimConfig(late_fraction=1.0, late_seconds=60.0)) as (sim, url),
        aiohttp.ClientSession() as session,
    ):
        assert (await post(session, f"{url}/v1/p/jobs/j1/run-immediate"))[0] == 504
        assert sim.stats.took_effect("run-immediate", "p", "j1") == 0
    assert sim.late_pending == 0
    assert sim.stats.took_effect("run-immediate", "p", "j1") == 1


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("flat", {"error_code": "DLF.0100", "error_msg": "The job does not exists."}),
        ("camel", {"errorCode": "DLF.0100", "errorMsg": "The job does not exists."}),
        ("code", {"code": "DLF.0100", "message": "The job does not exists."}),
        ("nested", {"error": {"code": "DLF.0100", "message": "The job does not exists."}}),
    ],
)
async def test_error_shapes(shape: str, expected: dict[str, Any]) -> None:
    async with (
        running(SimConfig(error_shape=shape, missing_prefix="x")) as (_, url),
        aiohttp.ClientSession() as session,
    ):
        status, body = await post(session, f"{url}/v1/p/jobs/x1/start")
    assert status == 400
    body.pop("request_id")
    assert body == expected


async def test_a_skewed_clock_shows_in_date_and_plan_times() -> None:
    async with (
        running(SimConfig(clock_skew=-600.0)) as (_, url),
        aiohttp.ClientSession() as session,
    ):
        await post(session, f"{url}/v1/p/jobs/j/run-immediate")
        _, listed, headers = await get(session, f"{url}/v1/p/jobs/instances/detail")
    served = email.utils.parsedate_to_datetime(headers["Date"]).timestamp()  # type: ignore[index]
    assert 590 < time.time() - served < 610
    assert 590_000 < time.time() * 1000 - listed["instances"][0]["planTime"] < 610_000


async def test_tls_with_a_given_certificate(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    context = ssl.create_default_context(cafile=str(files.ca))
    config = SimConfig(tls_cert=str(files.cert), tls_key=str(files.key))
    async with running(config) as (sim, url), aiohttp.ClientSession() as session:
        assert url.startswith("https://127.0.0.1:")
        async with session.post(f"{url}/v1/p/jobs/j/start", ssl=context) as response:
            assert response.status == 204
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(f"{url}/v1/p/jobs/j/start")
    assert sim.stats.took_effect("start", "p", "j") == 1


async def test_100_continue_and_close_delimited_answers_on_the_wire() -> None:
    import anyio

    config = SimConfig(continue_100=True, close_delimited=True)
    async with running(config) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(
                b"POST /v1/p/jobs/j/run-immediate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            )
            raw = b""
            try:
                while True:
                    raw += await stream.receive()
            except anyio.EndOfStream:
                pass
    interim, _, final = raw.partition(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue"
    head, _, body = final.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"content-length" not in head.lower()
    assert orjson.loads(body)["instanceId"] > 0


async def test_one_instance_by_id_and_from_mapping_keys() -> None:
    config = SimConfig.from_mapping(
        {"instance-id-string": True, "clock_skew": 5, "error-shape": "nested"}
    )
    assert config.instance_id_string
    assert config.clock_skew == 5.0
    with pytest.raises(ValueError, match="error_shape"):
        SimConfig(error_shape="xml")
    with pytest.raises(ValueError, match="tls_key"):
        SimConfig(tls_cert="a.pem")
    async with running(config) as (_, url), aiohttp.ClientSession() as session:
        _, run = await post(session, f"{url}/v1/p/jobs/j/run-immediate")
        assert isinstance(run["instanceId"], str)
        status, found, _ = await get(session, f"{url}/v1/p/jobs/j/instances/{run['instanceId']}")
        missing, _, _ = await get(session, f"{url}/v1/p/jobs/j/instances/1")
    assert status == 200
    assert found["jobName"] == "j"
    assert missing == 400
