"""`launcher snapshot`: the service's job list as a manifest that `validate` and `run` accept.

For each `--workspace` (the default one when none is given), the job list is
read page by page (`GET /v1/{project_id}/jobs`, `limit` 100, `offset` the page
number from 0, as the SDK's `ListJobsRequest` has it) until `total` jobs were
seen, or a page comes back empty or short. Every page waits for the run's
pacer (`--rate`) and is retried like a call (`launcher.flow.policy.classify`,
full-jitter backoff, `--max-attempts`); a page that still fails ends the
snapshot with exit 1 and writes nothing: a partial list is never passed off as
the whole one.

Filters: `--status` (SCHEDULING, STOPPED, PAUSED; the list has no such query,
so it is applied here) and `--name-filter` (the service's `jobName`, a
substring match, checked here again). Each job is one line
`{"name", "workspace", "project_id"}`; a job listed twice (the list moved
while it was read) is written once.

Each page is one `DlfClient.query` (`_page`), the primitive `launcher.dlf.listing`
builds on; the paging loop is here because each page is paced and retried.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
import orjson

from launcher.config import RunOptions
from launcher.dlf.client import DlfClient
from launcher.dlf.listing import PAGE_SIZE as JOB_PAGE
from launcher.dlf.transport import backend_options
from launcher.errors import LauncherError, UsageError
from launcher.flow.pacing import Pacer, RateGate, TokenBucket
from launcher.flow.policy import RetryPolicy, Verdict, classify, retry_delay
from launcher.logs import get_logger
from launcher.models import Reply
from launcher.run.connect import connect

__all__ = ["JOB_STATES", "SnapshotFailed", "list_workspace", "parse_states", "snapshot"]

log = get_logger("launcher.snapshot")

JOB_STATES = ("SCHEDULING", "STOPPED", "PAUSED")
_PROGRESS_PAGES = 20  # a progress line every this many pages
_MAX_PAGES = 100_000  # a list whose total keeps growing cannot hold us forever


class SnapshotFailed(LauncherError):
    """A page of the job list kept failing: nothing was written."""

    exit_code = 1


def parse_states(text: str | None) -> frozenset[str] | None:
    """`--status SCHEDULING,STOPPED` as a set (None: every state); UsageError if unknown."""
    if not text:
        return None
    states = frozenset(part.strip().upper() for part in text.split(",") if part.strip())
    unknown = sorted(states - set(JOB_STATES))
    if unknown or not states:
        raise UsageError(f"--status: expected {', '.join(JOB_STATES)}; got {text!r}")
    return states


@dataclass(frozen=True, slots=True)
class Listing:
    """One workspace's matching jobs (name -> state), in list order, and its pages."""

    jobs: dict[str, str | None]
    pages: int
    total: int


async def _page(
    client: DlfClient, project_id: str | None, workspace: str | None, page: int, name: str | None
) -> tuple[Reply, dict[str, Any] | None]:
    """One page of the job list (`DlfClient.query`, as `launcher.dlf.listing` reads it);
    the listing's own pager has no per-page retry, which a snapshot needs."""
    params = [("limit", str(JOB_PAGE)), ("offset", str(page))]  # offset: a page number
    if name:
        params.append(("jobName", name))  # the service matches it as a substring
    answer = await client.query(project_id, workspace, "/jobs", params)
    return answer.reply, answer.payload if answer.reply.status == 200 else None


async def list_workspace(
    client: DlfClient,
    pacer: RateGate,
    policy: RetryPolicy,
    project_id: str | None,
    workspace: str | None,
    *,
    states: frozenset[str] | None,
    name_filter: str | None,
    rand: random.Random,
) -> Listing:
    """Every job of one workspace that passes the filters (raises SnapshotFailed)."""
    jobs: dict[str, str | None] = {}
    seen = 0
    total = 0
    for page in range(_MAX_PAGES):
        payload = await _page_with_retries(
            client, pacer, policy, project_id, workspace, page, name_filter, rand
        )
        entries = [e for e in payload.get("jobs") or () if isinstance(e, dict)]
        raw_total = payload.get("total")
        if isinstance(raw_total, int) and not isinstance(raw_total, bool):
            total = raw_total
        for entry in entries:
            name = entry.get("name")
            if not isinstance(name, str) or name in jobs:
                continue
            if name_filter and name_filter not in name:
                continue
            state = entry.get("status")
            if states is not None and state not in states:
                continue
            jobs[name] = state if isinstance(state, str) else None
        seen += len(entries)
        if (page + 1) % _PROGRESS_PAGES == 0:
            log.info("listing", workspace=workspace, pages=page + 1, seen=seen, total=total)
        if not entries or len(entries) < JOB_PAGE or seen >= total:
            return Listing(jobs, page + 1, total)
    raise SnapshotFailed(f"workspace {workspace or '(default)'}: the list did not end")


async def _page_with_retries(
    client: DlfClient,
    pacer: RateGate,
    policy: RetryPolicy,
    project_id: str | None,
    workspace: str | None,
    page: int,
    name_filter: str | None,
    rand: random.Random,
) -> dict[str, Any]:
    reply = Reply(None, 0.0)
    for attempt in range(1, policy.max_attempts + 1):
        await pacer.wait()
        reply, payload = await _page(client, project_id, workspace, page, name_filter)
        if payload is not None:
            return payload
        verdict = classify(reply)
        # A list changes nothing: any failure without a permanent answer may be retried.
        if verdict in (Verdict.PERMANENT, Verdict.AUTH_FAILED) or attempt == policy.max_attempts:
            break
        if verdict is Verdict.REFRESH_AUTH:
            await client.refresh_auth()
        await anyio.sleep(retry_delay(verdict, reply, attempt, policy, rand))
    detail = f"HTTP {reply.status}" if reply.status is not None else str(reply.failure)
    if reply.error_code:
        detail += f" {reply.error_code}"
    raise SnapshotFailed(
        f"workspace {workspace or '(default)'}: page {page} of the job list failed ({detail}); "
        "nothing written"
    )


async def _snapshot(
    options: RunOptions,
    env: Mapping[str, str],
    workspaces: Sequence[str | None],
    states: frozenset[str] | None,
    name_filter: str | None,
) -> list[bytes]:
    lines: list[bytes] = []
    policy = RetryPolicy(
        max_attempts=options.max_attempts, base=options.backoff_base, cap=options.backoff_cap
    )
    pacer = Pacer(TokenBucket(options.rate, options.burst))
    rand = random.Random()
    async with connect(options, env, concurrency=4) as connection:
        for workspace in workspaces:
            listing = await list_workspace(
                connection.client,
                pacer,
                policy,
                options.project_id,
                workspace,
                states=states,
                name_filter=name_filter,
                rand=rand,
            )
            log.info(
                "listed",
                workspace=workspace,
                pages=listing.pages,
                total=listing.total,
                kept=len(listing.jobs),
            )
            lines.extend(
                orjson.dumps(
                    {"name": name, "workspace": workspace, "project_id": options.project_id}
                )
                + b"\n"
                for name in listing.jobs
            )
    return lines


def snapshot(
    options: RunOptions,
    env: Mapping[str, str],
    *,
    workspaces: Sequence[str],
    states: frozenset[str] | None,
    name_filter: str | None,
    output: str,
    stdout: TextIO | None = None,
) -> int:
    """List, filter, write the manifest; the number of jobs written."""
    if not options.project_id:
        raise UsageError("snapshot: no project id; give --project-id or HUAWEICLOUD_SDK_PROJECT_ID")
    chosen: list[str | None] = list(dict.fromkeys(workspaces)) or [options.workspace]
    lines = anyio.run(
        _snapshot, options, env, chosen, states, name_filter, backend_options=backend_options()
    )
    data = b"".join(lines)
    if output == "-":
        out = stdout if stdout is not None else sys.stdout
        out.write(data.decode())
        out.flush()
    else:
        _write_atomically(Path(output), data)
    return len(lines)


def _write_atomically(path: Path, data: bytes) -> None:
    """A whole manifest or none: written beside `path`, then renamed over it."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        with tempfile.NamedTemporaryFile(
            dir=directory, prefix=f".{path.name}.", delete=False
        ) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except OSError as error:
        raise UsageError(f"{path}: cannot write the snapshot: {error.strerror}") from None
