"""The wait loop without sockets: status changes recorded once, lost ids found, timeout, stop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from launcher.dlf.listing import QueryAnswer
from launcher.models import Job, Reply
from launcher.run.wait import Waiter

pytestmark = pytest.mark.anyio

OK = Reply(200, 0.0)


class FakeClient:
    """Answers each job's polls from a script of statuses (the last one repeats)."""

    def __init__(self, scripts: dict[str, list[str]], on_poll: Any = None) -> None:
        self.scripts = {name: iter(statuses) for name, statuses in scripts.items()}
        self.last: dict[str, str] = {}
        self.polls: list[tuple[str, str, int | None]] = []
        self.on_poll = on_poll

    def _next(self, name: str) -> str:
        status = next(self.scripts[name], None) or self.last[name]
        self.last[name] = status
        if self.on_poll is not None:
            self.on_poll()
        return status

    async def query(
        self, project_id: str | None, workspace: str | None, path: str, params: Any
    ) -> QueryAnswer:
        """`GET /jobs/{name}/instances/{id}`, as `launcher.dlf.listing.instance` asks it."""
        _, jobs, name, instances, raw_id = path.split("/")
        assert (jobs, instances) == ("jobs", "instances")
        instance_id = int(raw_id)
        self.polls.append(("get", name, instance_id))
        return QueryAnswer(OK, {"instanceId": instance_id, "status": self._next(name)}, None)

    async def instances(self, job: Job, since_ms: int) -> tuple[Reply, list[dict[str, Any]]]:
        self.polls.append(("list", job.name, None))
        status = self._next(job.name)
        return OK, [
            {"instanceId": 1, "planTime": 1, "status": "success"},  # an older run: not ours
            {"instanceId": 77, "planTime": 5, "status": status},
        ]


class FakeLedger:
    def __init__(self) -> None:
        self.events: list[tuple[str, int | None, str]] = []

    def instance(self, job: Job, instance_id: int | None, status: str) -> None:
        self.events.append((job.name, instance_id, status))


def job(name: str) -> Job:
    return Job(name, name, (), None, "p1")


def waiter(client: FakeClient, ledger: FakeLedger, **more: Any) -> Waiter:
    return Waiter(
        client,  # type: ignore[arg-type]
        ledger,  # type: ignore[arg-type]
        more.pop("timeout", 60.0),
        "run-immediate",
        time.time(),
        poll_start=0.001,
        poll_cap=0.004,
        **more,
    )


async def follow_all(w: Waiter, jobs: Iterator[tuple[Job, int | None]]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.run)
        for j, instance_id in jobs:
            w.follow(j, instance_id, time.time())
        w.close()
        await w.idle()
        tg.cancel_scope.cancel()


async def test_each_status_change_is_recorded_once_until_the_end() -> None:
    client = FakeClient(
        {
            "a": ["waiting", "running", "running", "running", "success"],
            "b": ["running", "fail"],
        }
    )
    ledger = FakeLedger()
    w = waiter(client, ledger)
    with anyio.fail_after(10):
        await follow_all(w, iter([(job("a"), 10), (job("b"), 11)]))
    assert [e for e in ledger.events if e[0] == "a"] == [
        ("a", 10, "waiting"),
        ("a", 10, "running"),
        ("a", 10, "success"),
    ]
    assert [e for e in ledger.events if e[0] == "b"] == [("b", 11, "running"), ("b", 11, "fail")]
    assert sum(1 for p in client.polls if p[1] == "a") == 5  # no poll after the end
    assert w.outcomes == {"success": 1, "fail": 1}
    assert w.failed == 1
    assert w.pending == 0


async def test_a_lost_instance_id_is_found_in_the_list_then_polled_by_id() -> None:
    client = FakeClient({"a": ["running", "running", "success"]})
    ledger = FakeLedger()
    w = waiter(client, ledger)
    with anyio.fail_after(10):
        await follow_all(w, iter([(job("a"), None)]))
    assert client.polls == [("list", "a", None), ("get", "a", 77), ("get", "a", 77)]
    assert ledger.events == [("a", 77, "running"), ("a", 77, "success")]


async def test_a_run_not_ended_by_the_timeout_ends_unknown() -> None:
    offset = [0.0]

    def later() -> None:  # every poll moves the waiter's clock 4 s on
        offset[0] += 4.0

    client = FakeClient({"a": ["running"]}, on_poll=later)
    ledger = FakeLedger()
    w = waiter(client, ledger, timeout=10.0, clock=lambda: time.monotonic() + offset[0])
    with anyio.fail_after(10):
        await follow_all(w, iter([(job("a"), 5)]))
    assert len(client.polls) == 3  # at 0, 4 and 8 s on its clock; at 12 s it is over
    assert ledger.events == [("a", 5, "running"), ("a", 5, "unknown")]
    assert w.outcomes == {"unknown": 1}
    assert w.failed == 1


class Stopped:
    stop_reason = "interrupted"


async def test_an_interrupt_ends_the_wait_with_runs_left_to_resume() -> None:
    client = FakeClient({"a": ["running"]})
    w = waiter(client, FakeLedger(), dispatcher=Stopped())
    w.follow(job("a"), 5, time.time())
    with anyio.fail_after(5):
        await w.run()
    assert w.pending == 1
    assert client.polls == []
