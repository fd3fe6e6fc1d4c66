"""Paged listings and exact reconciliation queries, against the simulator's paging."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.dlf import listing
from launcher.dlf.auth import Auth, NoAuth
from launcher.dlf.client import DlfClient
from launcher.models import Job, Reply
from launcher.simulator import SimConfig, Simulator, running

pytestmark = pytest.mark.anyio

# job1, job10 ... job1149: "job1" is a substring of 261 other names.
NAMES = [f"job{n}" for n in range(1, 1150)]


def no_auth(_: Callable[[], aiohttp.ClientSession]) -> Auth:
    return NoAuth()


@asynccontextmanager
async def client_for(config: SimConfig) -> AsyncIterator[tuple[Simulator, DlfClient]]:
    async with (
        running(config) as (sim, url),
        DlfClient(url, no_auth, concurrency=8, timeout=5) as client,
    ):
        yield sim, client


def job(name: str) -> Job:
    return Job(name, name, (), "ws", "p1")


async def test_the_job_list_is_read_to_its_total() -> None:
    config = SimConfig(known_jobs=frozenset(NAMES), real_time_jobs=frozenset({"job7"}))
    async with client_for(config) as (sim, client):
        await client.call(job("job1"), "start")
        everything = [e async for e in listing.jobs(client, "p1", "ws")]
        batch = [e async for e in listing.jobs(client, "p1", "ws", job_type="BATCH")]
        ones = [e.name async for e in listing.jobs(client, "p1", "ws", name="job1")]
        scheduling = [e async for e in listing.jobs(client, "p1", "ws", status="SCHEDULING")]
        pages = sim.stats.by_route["jobs"]
    assert sorted(e.name for e in everything) == sorted(NAMES)
    assert len(batch) == len(NAMES) - 1
    assert sorted(ones) == sorted(n for n in NAMES if "job1" in n)
    assert [e.name for e in scheduling] == ["job1"]
    assert pages >= 12 + 11 + 3 + 12  # 100 a page


async def test_job_status_finds_the_exact_name_past_the_first_page() -> None:
    # Names sort job1, job10, job100, ...: with 100 a page, "job1149" is on page 3 of
    # the jobName=job11 matches and a first-page-only check would not find it.
    config = SimConfig(known_jobs=frozenset(NAMES), real_time_jobs=frozenset({"job1149"}))
    async with client_for(config) as (_, client):
        assert (await client.call(job("job1149"), "start")).status == 204
        status = await client.job_status(job("job1149"))
        other = await client.job_status(job("job114"))
        absent = await client.job_status(job("job11499"))
    assert (status.state, status.found) == ("SCHEDULING", True)  # a REAL_TIME job too
    assert (other.state, other.found) == ("STOPPED", True)
    assert (absent.state, absent.found, absent.reply.status) == (None, False, 200)


async def test_instances_are_exact_and_complete() -> None:
    async with client_for(SimConfig()) as (sim, client):
        for _ in range(3):
            await client.call(job("job1"), "run-immediate")
        for _ in range(150):
            await client.call(job("job10"), "run-immediate")
        reply, mine = await client.instances(job("job1"), 0)
        _, theirs = await client.instances(job("job10"), 0)
        fuzzy = [
            entry
            async for _, page in listing.instances(client, "p1", "ws", name="job1", precise=False)
            for entry in page
        ]
    assert reply.status == 200
    assert len(mine) == 3
    assert {e["jobName"] for e in mine} == {"job1"}
    assert len(theirs) == 150  # two pages
    assert len(fuzzy) == 3  # the service matched job10 too; the exact filter here did not
    assert sim.stats.runs[("p1", "ws", "job1")] == 3


async def test_the_instance_window_follows_the_services_clock() -> None:
    # The service's clock runs 120 s behind ours: an instance it planned "now" has a
    # plan time 120 s before our intent. Searching from our intent alone finds nothing.
    async with client_for(SimConfig(clock_skew=-120.0)) as (_, client):
        intent_ms = int(time.time() * 1000) - 30_000
        run = await client.call(job("late"), "run-immediate")
        reply, found = await client.instances(job("late"), intent_ms)
    assert run.status == 200
    assert reply.status == 200
    assert [e["instanceId"] for e in found] == [run.instance_id]


async def test_one_instance_by_id() -> None:
    async with client_for(SimConfig()) as (_, client):
        run = await client.call(job("j"), "run-immediate")
        assert run.instance_id is not None
        found = await listing.instance(client, "p1", "ws", "j", run.instance_id)
        missing = await listing.instance(client, "p1", "ws", "j", 1)
    assert found.instance is not None
    assert found.instance["status"] == "running"
    assert (missing.instance, missing.reply.status) == (None, 400)


async def test_a_failed_page_is_never_passed_off_as_a_whole_listing() -> None:
    config = SimConfig(known_jobs=frozenset(NAMES), fail_503=1.0, faults_on_queries=True)
    async with client_for(config) as (_, client):
        with pytest.raises(listing.ListingFailed) as failed:
            [e async for e in listing.jobs(client, "p1", "ws")]
        status = await client.job_status(job("job1"))
    assert failed.value.reply.status == 503
    assert (status.found, status.reply.status) == (False, 503)


class PagedList:
    """A Querier over an in-memory list: `offset` is a page number, as in the SDK."""

    def __init__(self, names: list[str], *, total: bool = True, fail_page: int | None = None):
        self.names = names
        self.total = total
        self.fail_page = fail_page
        self.pages: list[int] = []

    async def query(
        self,
        project_id: str | None,
        workspace: str | None,
        path: str,
        params: object,
    ) -> listing.QueryAnswer:
        query = dict(params)  # type: ignore[call-overload]
        limit, page = int(query["limit"]), int(query["offset"])
        self.pages.append(page)
        if page == self.fail_page:
            return listing.QueryAnswer(Reply(503, 0.0), {"error_code": "x"}, None)
        rows = [{"name": n} for n in self.names[page * limit : (page + 1) * limit]]
        payload: dict[str, object] = {"jobs": rows}
        if self.total:
            payload["total"] = len(self.names)
        return listing.QueryAnswer(Reply(200, 0.0), payload, None)


@given(count=st.integers(0, 350), size=st.integers(1, 120), total=st.booleans())
async def test_pages_reassemble_the_whole_list(count: int, size: int, total: bool) -> None:
    names = [f"n{i}" for i in range(count)]
    source = PagedList(names, total=total)
    got = [e.name async for e in listing.jobs(source, "p", None, page_size=size)]
    assert got == names
    assert source.pages == list(range(len(source.pages)))  # page numbers, in order
    assert len(source.pages) <= count // size + 1


async def test_a_failed_page_midway_raises_with_its_reply() -> None:
    source = PagedList([f"n{i}" for i in range(250)], fail_page=1)
    seen: list[str] = []

    async def read_all() -> None:
        seen.extend([entry.name async for entry in listing.jobs(source, "p", None)])

    with pytest.raises(listing.ListingFailed) as failed:
        await read_all()
    assert seen == []  # nothing half-read was handed on as the list
    assert source.pages == [0, 1]
    assert failed.value.reply.status == 503
    lookup = await listing.find_job(source, "p", None, "n240")
    assert (lookup.entry, lookup.complete, lookup.reply.status) == (None, False, 503)
