"""`--workers`: several dispatch processes, one ledger.

Policy (how many workers, each one's share of the limits, the exit code) and
the part-ledger protocol are tested without I/O beyond temporary files; the
fleet itself end to end, in subprocesses against the simulator.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import orjson
import pytest
from anyio.abc import Process
from hypothesis import given
from hypothesis import strategies as st
from launch_helpers import (
    clean_env,
    job_lines,
    launcher,
    ledger_events,
    report_json,
    sim_env,
    write_manifest,
)

from launcher.config import RunOptions, resolve_options
from launcher.errors import UsageError
from launcher.ledger import (
    Ledger,
    finish_merge,
    fold,
    lock_part,
    open_fleet,
    part_name,
    read_ledger,
)
from launcher.manifest.validate import Defaults, iter_jobs
from launcher.models import Job, Reply
from launcher.run.fleet import (
    choose_workers,
    fleet_exit_code,
    share,
    start_fleet,
    worker_options,
)
from launcher.run.plan import plan_manifest
from launcher.run.resume import Segment
from launcher.simulator import SimConfig, Simulator, running

# -- how many workers, and each one's share ------------------------------------------


@pytest.mark.parametrize(
    ("changes", "jobs", "cpus", "expected"),
    [
        ({"rate": 0.0}, 50_000, 2, 2),  # unlimited: every core
        ({"rate": 0.0}, 50_000, 8, 8),
        ({"rate": 30.0}, 50_000, 8, 1),  # the default limit: one process is plenty
        ({"rate": 1500.0}, 50_000, 8, 1),
        ({"rate": 5000.0}, 50_000, 8, 3),  # as many as the rate needs
        ({"rate": 5000.0}, 50_000, 2, 2),  # never more than the cores
        ({"rate": 0.0}, 6_000, 8, 1),  # too small to pay for another interpreter
        ({"rate": 0.0}, 12_000, 8, 2),
        ({"rate": 0.0, "concurrency": 3}, 50_000, 8, 3),  # bounds split into whole shares
        ({"rate": 0.0, "per_workspace": 2}, 50_000, 8, 2),
        ({"rate": 0.0, "workspaces": {"ws": (1, 0.0, 1)}}, 50_000, 8, 1),
        ({"rate": 0.0, "endpoint": "sim"}, 50_000, 8, 1),  # the simulator lives in-process
        ({"rate": 0.0, "dry_run": True}, 50_000, 8, 1),
        ({"workers": 4}, 100, 8, 4),  # asked for: given, whatever the rate
        ({"workers": 4}, 100, 1, 1),  # but not more than the usable cores
        ({"workers": 100_000}, 50_000, 2, 2),
        ({"workers": 4}, 3, 8, 3),  # but not more than there are jobs
    ],
)
def test_choose_workers(changes: dict[str, object], jobs: int, cpus: int, expected: int) -> None:
    options = replace(RunOptions(), **changes)  # type: ignore[arg-type]
    assert choose_workers(options, jobs, cpus) == expected


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_shares_are_whole_and_sum_to_the_total(total: int, count: int) -> None:
    shares = [share(total, index, count) for index in range(count)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1


def test_worker_options_split_every_limit() -> None:
    options = RunOptions(
        concurrency=65,
        per_workspace=9,
        rate=3000.0,
        retry_budget=500,
        halt="fail=10",
        workspaces={"ws-1": (5, 60.0, 2)},
    )
    parts = [worker_options(options, index, 2) for index in range(2)]
    assert [p.concurrency for p in parts] == [33, 32]
    assert [p.per_workspace for p in parts] == [5, 4]
    assert [p.rate for p in parts] == [1500.0, 1500.0]
    assert [p.workspaces["ws-1"] for p in parts] == [(3, 30.0, 2), (2, 30.0, 2)]
    assert [p.halt for p in parts] == ["fail=5", "fail=5"]
    assert [p.retry_budget for p in parts] == [250, 250]
    assert [p.canary for p in parts] == [True, False]  # worker 0's canary speaks for all
    assert all(p.workers == 1 and p.progress == "off" for p in parts)
    percent = worker_options(replace(options, halt="fail=5%"), 1, 2)
    assert percent.halt == "fail=5%"
    shared = worker_options(replace(options, redis="redis://localhost"), 0, 2)
    assert shared.rate == 3000.0  # a shared limit already counts every process


@pytest.mark.parametrize(
    ("codes", "interrupted", "all_started", "expected"),
    [
        ([0, 0], False, True, 0),
        ([0, 1], False, False, 1),
        ([0, 0], False, False, 1),  # the merged ledger decides, not the workers
        ([3, 130], False, False, 3),  # a safety stop wins over the stop it caused
        ([2, 0], False, False, 2),
        ([130, 130], True, False, 130),
        ([0, 0], True, True, 130),
    ],
)
def test_fleet_exit_code(
    codes: list[int], interrupted: bool, all_started: bool, expected: int
) -> None:
    assert fleet_exit_code(codes, interrupted, all_started) == expected


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "yaml"])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_line_shares_are_disjoint_and_cover_the_manifest(
    tmp_path: Path, suffix: str, count: int
) -> None:
    path = tmp_path / f"m.{suffix}"
    names = [f"job-{n}" for n in range(20)]
    if suffix == "jsonl":
        path.write_text("# jobs\n" + "".join(f'{{"name": "{n}"}}\n\n' for n in names))
    elif suffix == "csv":
        path.write_text("name\n" + "".join(f"{n}\n" for n in names))
    else:
        path.write_text("jobs:\n" + "".join(f"  - name: {n}\n" for n in names))
    defaults = Defaults(project_id="p1")
    shares = [list(iter_jobs(path, defaults, lines=(i, count))) for i in range(count)]
    names_sent = [job.name for share in shares for job in share]
    assert sorted(names_sent) == sorted(names)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # blank lines or not
    # A plan whose validation kept the jobs gives each worker the same share from memory.
    plan = plan_manifest(str(path), RunOptions(project_id="p1"))
    assert plan.validation.kept is not None
    assert [list(plan.iter_jobs((i, count))) for i in range(count)] == shares


def test_workers_that_cannot_be_forked_are_a_clear_error_and_nothing_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"name": "a"}\n{"name": "b"}\n')
    options = RunOptions(project_id="p1")
    plan = plan_manifest(str(manifest), options)

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    open_before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(UsageError, match="cannot start worker processes: Resource temp"):
        start_fleet(plan, options, Segment(), str(tmp_path / "l.jsonl"), 2, {})
    assert sorted(os.listdir("/proc/self/fd")) == open_before  # its pipes were closed
    assert not (tmp_path / "l.jsonl").exists()  # nothing was written, nor sent


# -- the part ledgers ------------------------------------------------------------------


def _job(n: int) -> Job:
    return Job(f"{n:032x}", f"job-{n}", (), None, "p1", line=n + 1)


def _write_part(path: Path, jobs: range, *, worker: str, torn: bool = False) -> None:
    ledger = Ledger(path, fsync="never")
    header = {"run_id": path.name, "segment": 1, "manifest": {"jobs": 6}}
    ledger.header({**header, "worker": worker, "fleet": "f" * 32})  # as a worker writes it
    for n in jobs:
        ledger.intent(_job(n), 1, "start")
        ledger.result(_job(n), 1, Reply(status=204, latency=0.001), "started", "started")
    ledger.close()
    if torn:
        with open(path, "ab") as handle:
            handle.write(b'{"event":"intent","job":"half')


def _fleet(tmp_path: Path) -> tuple[Path, object]:
    ledger = tmp_path / "l.jsonl"
    names = [part_name(ledger, "f" * 32, index) for index in range(2)]
    pending = open_fleet(ledger, {"fleet": "f" * 32, "count": 2, "parts": names})
    _write_part(tmp_path / names[0], range(3), worker="0/2")
    _write_part(tmp_path / names[1], range(3, 6), worker="1/2", torn=True)
    return ledger, pending


def _outcomes(ledger: Path) -> Counter[str]:
    history = fold([read_ledger(ledger)])
    return Counter(record.final for record, count in history.groups() for _ in range(count))


def test_a_reader_follows_parts_not_yet_merged(tmp_path: Path) -> None:
    ledger, _ = _fleet(tmp_path)
    read = read_ledger(ledger)
    history = fold([read])
    assert history.job_count == 6
    assert read.unmerged is not None
    assert read.torn_tail  # the torn line of part 1
    assert _outcomes(ledger) == Counter(started=6)


def test_merging_copies_complete_lines_and_removes_the_parts(tmp_path: Path) -> None:
    ledger, pending = _fleet(tmp_path)
    finish_merge(ledger, pending)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.jsonl"]
    kinds = [event["event"] for event in ledger_events(ledger)]
    assert (kinds[0], kinds[-1]) == ("workers", "merged")
    assert (kinds.count("result"), kinds.count("run")) == (6, 2)
    read = read_ledger(ledger)
    assert fold([read]).job_count == 6
    assert (read.unmerged, read.torn_tail) == (None, False)


def test_a_merge_cut_short_by_a_crash_is_skipped_then_redone(tmp_path: Path) -> None:
    ledger, _ = _fleet(tmp_path)
    part = sorted(tmp_path.glob("l.*.w0.jsonl"))[0]
    with open(ledger, "ab") as handle:  # a partial copy: half a part, half a line
        data = part.read_bytes()
        handle.write(data[: len(data) // 2])
    read = read_ledger(ledger)
    assert fold([read]).job_count == 6  # the copy is skipped, the parts are read
    assert read.unmerged is not None
    finish_merge(ledger, read.unmerged)
    assert _outcomes(ledger) == Counter(started=6)
    assert [e["event"] for e in ledger_events(ledger)].count("result") == 6


def test_parts_lost_before_merging_are_an_error(tmp_path: Path) -> None:
    ledger, _ = _fleet(tmp_path)
    for part in tmp_path.glob("l.*.w*.jsonl"):
        part.unlink()
    with pytest.raises(UsageError, match="missing and were never merged"):
        fold([read_ledger(ledger)])


def test_a_part_a_live_worker_holds_is_not_merged(tmp_path: Path) -> None:
    ledger, pending = _fleet(tmp_path)
    part = sorted(tmp_path.glob("l.*.w1.jsonl"))[0]
    fd = lock_part(part)
    try:
        with pytest.raises(UsageError, match="still writing"):
            finish_merge(ledger, pending, wait=0.2)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    finish_merge(ledger, pending)  # type: ignore[arg-type]
    assert _outcomes(ledger) == Counter(started=6)


def test_reading_can_stop_at_a_byte_offset(tmp_path: Path) -> None:
    ledger = tmp_path / "l.jsonl"
    _write_part(ledger, range(3), worker="0/1")
    size = ledger.stat().st_size
    _write_part(tmp_path / "more.jsonl", range(3, 5), worker="0/1")
    with open(ledger, "ab") as handle:
        handle.write((tmp_path / "more.jsonl").read_bytes())
    assert fold([read_ledger(ledger, end=size)]).job_count == 3
    assert fold([read_ledger(ledger)]).job_count == 5


# -- end to end --------------------------------------------------------------------------

pytest_anyio = pytest.mark.anyio


def _run_args(manifest: Path, url: str, ledger: Path, *extra: str) -> tuple[str, ...]:
    return (
        "run", str(manifest), "--endpoint", url, "--project-id", "p1",
        "--ledger", str(ledger), "--progress", "off", *extra,
    )  # fmt: skip


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("l.*.w*.jsonl"))


async def _until_started(sim: Simulator, count: int) -> None:
    with anyio.fail_after(60):
        while sum(sim.stats.starts.values()) < count:  # noqa: ASYNC110 - the sim has no event
            await anyio.sleep(0.02)


@asynccontextmanager
async def _fleet_under_way(
    tmp_path: Path, count: int, started: int, *flags: str, sim: SimConfig | None = None
) -> AsyncIterator[tuple[Simulator, Process, tuple[str, ...]]]:
    """A two-worker run of `count` jobs in a process of its own, once `started` have
    started: (the simulator, the parent process, its arguments, to resume with)."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(count))
    async with running(sim or SimConfig()) as (simulator, url):
        args = _run_args(manifest, url, tmp_path / "l.jsonl", "--workers", "2", *flags)
        parent = await anyio.open_process([sys.executable, "-m", "launcher", *args], env=sim_env())
        async with parent:
            await _until_started(simulator, started)
            yield simulator, parent, args


@pytest_anyio
async def test_two_workers_start_every_job_once_into_one_ledger(tmp_path: Path) -> None:
    count = 6000
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(count))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(fail_503=0.02, seed=3)) as (sim, url):
        done = await launcher(
            *_run_args(manifest, url, ledger, "--rate", "0", "--workers", "2", "--settle", "0.1")
        )
    assert done.code == 0, done.stderr
    for n in range(count):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
    assert not _parts(tmp_path)
    events = ledger_events(ledger)
    headers = [e for e in events if e["event"] == "run"]
    assert sorted(h["worker"] for h in headers) == ["0/2", "1/2"]
    assert [h["options"]["concurrency"] for h in headers] == [32, 32]
    report = report_json(ledger)
    assert report["jobs"] == count
    assert report["outcomes"] == {"started": count, "failed": 0, "unknown": 0, "pending": 0}
    assert f"started   {count}" in done.stdout  # the parent prints the whole run's summary
    # ... made from worker 0's fold and the other parts, as reading the ledger makes it.
    assert done.stdout == (await launcher("report", str(ledger))).stdout


@pytest_anyio
async def test_killing_the_parent_stops_its_workers_and_resume_finishes(tmp_path: Path) -> None:
    count = 4000
    ledger = tmp_path / "l.jsonl"
    flags = ("--rate", "800/s", "--timeout", "0.5", "--no-adaptive", "--backoff-base", "0.01")
    faults = SimConfig(reset_after=0.02, slow_fraction=0.01, slow_seconds=1.0, seed=11)
    async with _fleet_under_way(tmp_path, count, 600, *flags, sim=faults) as (sim, parent, args):
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
        cut = sum(sim.stats.starts.values())
        assert len(_parts(tmp_path)) == 2  # left behind, unmerged
        midway = report_json(ledger)  # report reads the parts meanwhile
        assert midway["jobs"] == count
        done = await launcher(*args, "--resume")
    assert 600 <= cut < count
    assert done.code == 0, done.stdout + done.stderr
    for n in range(count):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
    assert not _parts(tmp_path)
    report = report_json(ledger)
    assert report["outcomes"] == {"started": count, "failed": 0, "unknown": 0, "pending": 0}


@pytest_anyio
async def test_a_worker_killed_mid_run_leaves_its_jobs_to_resume(tmp_path: Path) -> None:
    count = 4000
    ledger = tmp_path / "l.jsonl"
    async with _fleet_under_way(tmp_path, count, 600, "--rate", "800/s") as (sim, parent, args):
        part = next(path for path in _parts(tmp_path) if path.name.endswith(".w1.jsonl"))
        header = orjson.loads(part.read_bytes().split(b"\n", 1)[0])
        assert header["worker"] == "1/2"
        assert header["pid"] != parent.pid  # a process of its own: forked
        os.kill(header["pid"], signal.SIGKILL)
        code = await parent.wait()
        assert code == 1  # worker 0 finished its share; the run did not start every job
        assert not _parts(tmp_path)  # the dead worker's part was merged all the same
        assert 0 < report_json(ledger)["outcomes"]["pending"] < count // 2 + 1
        done = await launcher(*args, "--resume")
    assert done.code == 0, done.stderr
    for n in range(count):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1


@pytest_anyio
async def test_an_interrupted_fleet_exits_130_and_resumes(tmp_path: Path) -> None:
    count = 3000
    ledger = tmp_path / "l.jsonl"
    async with _fleet_under_way(tmp_path, count, 300, "--rate", "600/s") as (sim, parent, args):
        parent.send_signal(signal.SIGINT)
        code = await parent.wait()
        assert code == 130
        assert not _parts(tmp_path)  # merged on the way out
        assert report_json(ledger)["outcomes"]["pending"] > 0
        done = await launcher(*args, "--resume")
    assert done.code == 0, done.stderr
    for n in range(count):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1


@pytest_anyio
async def test_bad_credentials_cost_one_request_not_one_per_worker(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(2000))
    ak, sk = "FLEETACCESSKEY00", "fleet-secret"
    async with running(SimConfig(aksk={ak: sk})) as (sim, url):
        done = await launcher(
            *_run_args(manifest, url, tmp_path / "l.jsonl", "--rate", "0", "--workers", "2"),
            env=clean_env(HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK="wrong"),
        )
    assert done.code == 3, done.stderr
    assert sim.stats.bad_signatures == 1
    assert sim.stats.requests == 1
    events = ledger_events(tmp_path / "l.jsonl")
    assert orjson.dumps(events).count(b'"intent"') == 1


@pytest.mark.parametrize(("given", "expected"), [("auto", 0), ("3", 3), (2, 2)])
def test_workers_option(given: object, expected: int) -> None:
    assert resolve_options({"workers": given}, {}, {}).workers == expected


@pytest.mark.parametrize("given", ["0", "many", -1, True])
def test_bad_workers_option_names_its_source(given: object) -> None:
    with pytest.raises(UsageError, match="--workers: must be auto or a whole number"):
        resolve_options({"workers": given}, {}, {})
