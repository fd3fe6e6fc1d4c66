"""`launcher snapshot` against the simulator: paging edge cases, filters, retries, round trip."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
from launch_helpers import launcher, write_manifest

from launcher.run.snapshot import parse_states
from launcher.simulator.app import SimConfig, running

pytestmark = pytest.mark.anyio


def names(count: int) -> list[str]:
    return [f"job-{n:04d}" for n in range(count)]


def read_lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("count", [0, 1, 100, 101, 250])
async def test_snapshot_pages_until_total_and_round_trips(tmp_path: Path, count: int) -> None:
    every = names(count)
    scheduled = every[::4]
    estate = SimConfig(known_jobs=frozenset(every))
    async with running(estate) as (sim, url):
        base = ("--endpoint", url, "--project-id", "p1", "--rate", "0")
        if scheduled:  # start a quarter of ws1; the rest of ws1, and ws2, stay STOPPED
            first = write_manifest(
                tmp_path / "first.jsonl", [{"name": n, "workspace": "ws1"} for n in scheduled]
            )
            ran = await launcher("run", str(first), *base, "--ledger", str(tmp_path / "a.jsonl"))
            assert ran.code == 0, ran.stderr
        listed_before = sim.stats.by_route["jobs"]
        snap = tmp_path / "snap.jsonl"
        done = await launcher(
            "snapshot", *base, "--workspace", "ws1", "--status", "SCHEDULING",
            "--output", str(snap),
        )  # fmt: skip
        assert done.code == 0, done.stderr
        pages = sim.stats.by_route["jobs"] - listed_before
        assert pages == max(1, math.ceil(count / 100))  # 100 jobs: one page, `total` says so
        lines = read_lines(snap)
        assert lines == [{"name": n, "workspace": "ws1", "project_id": "p1"} for n in scheduled]
        # An empty snapshot is an empty manifest: run and validate want --allow-empty.
        empty_ok = () if scheduled else ("--allow-empty",)
        valid = await launcher("validate", str(snap), *empty_ok)
        assert valid.code == 0, valid.stderr
        again = await launcher(
            "run", str(snap), *base, *empty_ok, "--ledger", str(tmp_path / "b.jsonl")
        )
        assert again.code == 0, again.stderr
    for name in scheduled:
        assert sim.stats.took_effect("start", "p1", name, "ws1") == 2  # once more, exactly


async def test_several_workspaces_and_a_name_filter_to_stdout(tmp_path: Path) -> None:
    every = names(30)
    async with running(SimConfig(known_jobs=frozenset(every))) as (_sim, url):
        done = await launcher(
            "snapshot", "--endpoint", url, "--project-id", "p1", "--workspace", "ws1",
            "--workspace", "ws2", "--name-filter", "job-001", "--output", "-",
        )  # fmt: skip
    assert done.code == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    expected = [f"job-{n:04d}" for n in range(10, 20)]
    assert lines == [
        {"name": name, "workspace": workspace, "project_id": "p1"}
        for workspace in ("ws1", "ws2")
        for name in expected
    ]


async def test_failing_pages_are_retried(tmp_path: Path) -> None:
    every = names(450)
    faults = SimConfig(known_jobs=frozenset(every), fail_503=0.4, faults_on_queries=True, seed=3)
    snap = tmp_path / "snap.jsonl"
    async with running(faults) as (sim, url):
        done = await launcher(
            "snapshot", "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--max-attempts", "20", "--output", str(snap),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert sim.stats.faults["503"] > 0
    assert [line["name"] for line in read_lines(snap)] == every


async def test_a_page_that_keeps_failing_writes_nothing(tmp_path: Path) -> None:
    faults = SimConfig(known_jobs=frozenset(names(5)), fail_503=1.0, faults_on_queries=True)
    snap = tmp_path / "snap.jsonl"
    async with running(faults) as (_sim, url):
        done = await launcher(
            "snapshot", "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--max-attempts", "2", "--output", str(snap),
        )  # fmt: skip
    assert done.code == 1
    assert "page 0 of the job list failed (HTTP 503" in done.stderr
    assert not snap.exists()


def test_status_filter_parsing() -> None:
    assert parse_states(None) is None
    assert parse_states("scheduling, STOPPED") == {"SCHEDULING", "STOPPED"}
    with pytest.raises(Exception, match="--status"):
        parse_states("RUNNING")


async def test_a_seeded_estate_of_three_workspaces(tmp_path: Path) -> None:
    """1,000 jobs in each of three workspaces, a quarter STOPPED (seeded): the snapshot of
    ws1's SCHEDULING jobs is exactly those, and running it starts each of them once."""
    every = names(1000)
    estate = SimConfig(known_jobs=frozenset(every), scheduled_fraction=0.75, seed=15)
    snap = tmp_path / "snap.jsonl"
    async with running(estate) as (sim, url):
        base = ("--endpoint", url, "--project-id", "p1", "--rate", "0")
        done = await launcher(
            "snapshot", *base, "--workspace", "ws1", "--status", "SCHEDULING",
            "--output", str(snap),
        )  # fmt: skip
        assert done.code == 0, done.stderr
        expected = [n for n in every if sim.service.initial_status("p1", "ws1", n) == "SCHEDULING"]
        other = [n for n in every if sim.service.initial_status("p1", "ws2", n) == "SCHEDULING"]
        ran = await launcher("run", str(snap), *base, "--ledger", str(tmp_path / "l.jsonl"))
        assert ran.code == 0, ran.stderr
    assert 700 < len(expected) < 800
    assert expected != other  # drawn per workspace
    assert [line["name"] for line in read_lines(snap)] == expected
    for name in every:
        assert sim.stats.took_effect("start", "p1", name, "ws1") == (name in expected)
