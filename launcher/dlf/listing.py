"""Paged reads of the job list and the instance list: complete, exact, reusable.

Paging follows the official SDK (huaweicloudsdkdgc v1 `ListJobsRequest`,
`ListJobInstancesRequest`): `limit` is the page size and `offset` the page NUMBER
(from 0), not a row offset. A listing reads pages until it has seen `total` entries
(or a page comes back empty or short), so nothing past the first page is missed.

    jobs(querier, project_id, workspace, *, job_type=None, name=None, status=None)
        -> AsyncIterator[JobEntry]          every job, page after page
    find_job(querier, project_id, workspace, name) -> JobLookup
        the job named exactly `name` (the service's `jobName` filter is a substring match)
    instances(querier, project_id, workspace, *, name=None, precise=True, min_plan_ms=None,
              max_plan_ms=None, status=None, instance_type=None) -> AsyncIterator[dict]
    instance(querier, project_id, workspace, name, instance_id) -> InstanceLookup
        GET /v1/{project}/jobs/{name}/instances/{id}

A page that does not answer 200 ends the iteration by raising `ListingFailed`, which
carries the failed `Reply`: a partial listing is never passed off as a whole one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any, NamedTuple, Protocol

from launcher.dlf.paths import path_segment
from launcher.models import Reply

__all__ = [
    "PAGE_SIZE",
    "InstanceLookup",
    "JobEntry",
    "JobLookup",
    "ListingFailed",
    "Querier",
    "QueryAnswer",
    "find_job",
    "instance",
    "instances",
    "jobs",
]

PAGE_SIZE = 100  # the documented maximum `limit` of both lists
_MAX_PAGES = 100_000  # a service whose `total` keeps growing cannot hold us forever


class QueryAnswer(NamedTuple):
    """One GET's result: the reply, its JSON object (None if not one), the service's clock
    from its `Date` header (Unix seconds, None without one)."""

    reply: Reply
    payload: dict[str, Any] | None
    service_time: float | None


class Querier(Protocol):
    """What a listing needs: one signed GET under /v1/{project_id} (`DlfClient.query`)."""

    async def query(
        self,
        project_id: str | None,
        workspace: str | None,
        path: str,
        params: Sequence[tuple[str, str]],
    ) -> QueryAnswer: ...


class ListingFailed(Exception):
    """A page of a listing did not answer 200; `reply` says how it failed."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(
            f"listing failed: HTTP {reply.status}"
            if reply.status is not None
            else f"listing failed: {reply.failure} {reply.detail or ''}".rstrip()
        )
        self.reply = reply


class JobEntry(NamedTuple):
    """One job of the job list."""

    name: str
    job_type: str | None
    status: str | None  # batch jobs: SCHEDULING, STOPPED or PAUSED
    last_instance_status: str | None
    raw: dict[str, Any]


class JobLookup(NamedTuple):
    """`find_job`'s answer: `entry` when listed; `reply` is the last page's reply."""

    reply: Reply
    entry: JobEntry | None
    complete: bool  # every page was read (so `entry is None` means: not there)


class InstanceLookup(NamedTuple):
    """`instance`'s answer: the instance's JSON object when the service returned one."""

    reply: Reply
    instance: dict[str, Any] | None


async def _pages(
    querier: Querier,
    project_id: str | None,
    workspace: str | None,
    path: str,
    params: list[tuple[str, str]],
    key: str,
    page_size: int,
) -> AsyncGenerator[tuple[QueryAnswer, list[dict[str, Any]]]]:
    seen = 0
    for page in range(_MAX_PAGES):
        answer = await querier.query(
            project_id,
            workspace,
            path,
            [*params, ("limit", str(page_size)), ("offset", str(page))],
        )
        payload = answer.payload
        if answer.reply.status != 200 or payload is None:
            raise ListingFailed(answer.reply)
        entries = [entry for entry in payload.get(key) or () if isinstance(entry, dict)]
        yield answer, entries
        seen += len(entries)
        total = payload.get("total")
        if isinstance(total, bool) or not isinstance(total, int):
            total = None
        if not entries or len(entries) < page_size or (total is not None and seen >= total):
            return


async def jobs(
    querier: Querier,
    project_id: str | None,
    workspace: str | None,
    *,
    job_type: str | None = None,
    name: str | None = None,
    status: str | None = None,
    page_size: int = PAGE_SIZE,
) -> AsyncGenerator[JobEntry]:
    """Every job of the list (all types unless `job_type`), page after page.

    `name` is passed as the service's `jobName` filter (a substring match there);
    `status` filters here, since the list has no such parameter.
    """
    params: list[tuple[str, str]] = []
    if name:
        params.append(("jobName", name))
    if job_type:
        params.append(("jobType", job_type))
    pages = _pages(querier, project_id, workspace, "/jobs", params, "jobs", page_size)
    async with aclosing(pages):
        async for _, entries in pages:
            for raw in entries:
                entry = _job_entry(raw)
                if entry is not None and (status is None or entry.status == status):
                    yield entry


async def find_job(
    querier: Querier,
    project_id: str | None,
    workspace: str | None,
    name: str,
    *,
    page_size: int = PAGE_SIZE,
) -> JobLookup:
    """The job named exactly `name`, reading every page of the `jobName` matches."""
    params = [("jobName", name)]
    reply = Reply(None, 0.0)
    pages = _pages(querier, project_id, workspace, "/jobs", params, "jobs", page_size)
    try:
        async with aclosing(pages):
            async for answer, entries in pages:
                reply = answer.reply
                for raw in entries:
                    if raw.get("name") == name:
                        return JobLookup(reply, _job_entry(raw), True)
    except ListingFailed as failed:
        return JobLookup(failed.reply, None, False)
    return JobLookup(reply, None, True)


async def instances(
    querier: Querier,
    project_id: str | None,
    workspace: str | None,
    *,
    name: str | None = None,
    precise: bool = True,
    min_plan_ms: int | None = None,
    max_plan_ms: int | None = None,
    status: str | None = None,
    instance_type: str | None = None,
    page_size: int = PAGE_SIZE,
) -> AsyncGenerator[tuple[QueryAnswer, list[dict[str, Any]]]]:
    """Pages of the instance list: (the page's answer, its instances).

    With `name` and `precise` (the default) the service matches the job name exactly
    (`preciseQuery=true`); the instances are still filtered by exact name here, in case
    a service ignores the flag.
    """
    params: list[tuple[str, str]] = []
    if name:
        params.append(("jobName", name))
        if precise:
            params.append(("preciseQuery", "true"))
    if min_plan_ms is not None:
        params.append(("minPlanTime", str(min_plan_ms)))
    if max_plan_ms is not None:
        params.append(("maxPlanTime", str(max_plan_ms)))
    if status:
        params.append(("status", status))
    if instance_type:
        params.append(("instanceType", instance_type))
    path = "/jobs/instances/detail"
    pages = _pages(querier, project_id, workspace, path, params, "instances", page_size)
    async with aclosing(pages):
        async for answer, entries in pages:
            if name:
                entries = [entry for entry in entries if entry.get("jobName") == name]
            yield answer, entries


async def instance(
    querier: Querier,
    project_id: str | None,
    workspace: str | None,
    name: str,
    instance_id: int | str,
) -> InstanceLookup:
    """One instance's details (`GET /v1/{project}/jobs/{name}/instances/{instance_id}`)."""
    path = f"/jobs/{path_segment(name)}/instances/{path_segment(str(instance_id))}"
    answer = await querier.query(project_id, workspace, path, ())
    if answer.reply.status != 200:
        return InstanceLookup(answer.reply, None)
    return InstanceLookup(answer.reply, answer.payload)


def _job_entry(raw: dict[str, Any]) -> JobEntry | None:
    name = raw.get("name")
    if not isinstance(name, str):
        return None
    job_type, status, last = raw.get("jobType"), raw.get("status"), raw.get("lastInstanceStatus")
    return JobEntry(
        name,
        job_type if isinstance(job_type, str) else None,
        status if isinstance(status, str) else None,
        last if isinstance(last, str) else None,
        raw,
    )
