"""Crash and resume end to end: kill -9 mid-run, resume, and nothing starts twice."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from launch_helpers import (
    job_lines,
    launcher,
    ledger_events,
    report_json,
    signal_when_started,
    write_manifest,
)

from launcher.simulator import SimConfig, running

pytestmark = pytest.mark.anyio


async def test_kill_9_twice_then_resume_starts_every_job_exactly_once(tmp_path: Path) -> None:
    count = 3000
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(count))
    ledger = tmp_path / "l.jsonl"
    faults = SimConfig(
        reset_after=0.02, slow_fraction=0.02, slow_seconds=1.5, fail_503=0.02, seed=5
    )
    run = (
        "run", str(manifest), "--endpoint", "", "--project-id", "p1", "--rate", "1000/s",
        "--concurrency", "64", "--timeout", "1", "--ledger", str(ledger), "--no-adaptive",
        "--backoff-base", "0.01", "--settle", "1",
    )  # fmt: skip
    async with running(faults) as (sim, url):
        args = tuple(url if a == "" else a for a in run)
        # SIGKILL: no flush, no footer; each once the run is under way.
        await signal_when_started(sim, 400, signal.SIGKILL, *args)
        first_cut = sum(sim.stats.starts.values())
        await signal_when_started(sim, 400, signal.SIGKILL, *args, "--resume")
        second_cut = sum(sim.stats.starts.values())
        done = await launcher(*args, "--resume")
    assert 0 < first_cut < second_cut < count  # both kills landed mid-run
    assert done.code == 0, done.stdout + done.stderr
    for n in range(count):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
    report = report_json(ledger)
    assert report["jobs"] == count
    assert report["outcomes"] == {"started": count, "failed": 0, "unknown": 0, "pending": 0}
    headers = [e for e in ledger_events(ledger) if e["event"] == "run"]
    assert [h["segment"] for h in headers] == [1, 2, 3]


async def test_resume_refuses_a_changed_manifest_unless_forced(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(20))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0")
        assert (await launcher(*base, "--ledger", str(ledger))).code == 0
        write_manifest(manifest, job_lines(25))
        refused = await launcher(*base, "--ledger", str(ledger), "--resume")
        assert refused.code == 2
        assert "manifest changed" in refused.stderr
        before = sim.stats.requests
        forced = await launcher(*base, "--ledger", str(ledger), "--resume", "--force")
    assert forced.code == 0, forced.stderr
    assert sim.stats.requests - before == 5  # only the five new jobs were sent
    assert report_json(ledger)["outcomes"]["started"] == 25


async def test_resuming_a_finished_run_sends_nothing(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(50))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0")
        assert (await launcher(*base, "--ledger", str(ledger))).code == 0
        before = sim.stats.requests
        again = await launcher(*base, "--ledger", str(ledger), "--resume")
    assert again.code == 0
    assert sim.stats.requests == before


async def test_a_fresh_run_refuses_a_ledger_that_holds_a_run(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    ledger = tmp_path / "l.jsonl"
    async with running() as (_sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0")
        assert (await launcher(*base, "--ledger", str(ledger))).code == 0
        again = await launcher(*base, "--ledger", str(ledger))
    assert again.code == 2
    assert "--resume" in again.stderr


async def test_permanent_failures_are_skipped_on_resume_unless_retried(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5) + job_lines(3, prefix="missing"))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(missing_prefix="missing-")) as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
                "--ledger", str(ledger))  # fmt: skip
        assert (await launcher(*base)).code == 1
        before = sim.stats.requests
        assert (await launcher(*base, "--resume")).code == 1
        assert sim.stats.requests == before
        assert (await launcher(*base, "--resume", "--retry-failed")).code == 1
        assert sim.stats.requests == before + 3


@pytest.mark.parametrize("action", ["run-immediate", "stop"])
async def test_lost_answers_of_run_immediate_and_stop_are_reconciled(
    tmp_path: Path, action: str
) -> None:
    """Every answer is lost after the call took effect: checks settle it, nothing repeats."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(20))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(reset_after=1.0)) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--action", action, "--ledger", str(ledger), "--backoff-base", "0.01",
        )  # fmt: skip
    assert done.code == 0, done.stdout + done.stderr
    for n in range(20):
        assert sim.stats.took_effect(action, "p1", f"job-{n:04d}") == 1
    report = report_json(ledger)
    assert report["outcomes"]["started"] == 20
    assert report["reconciled"] == 20
    checks = [e for e in ledger_events(ledger) if e["event"] == "check"]
    assert all(c["conclusion"] == "took_effect" for c in checks)
    if action == "run-immediate":
        assert all(c["state"].startswith("instance ") for c in checks)


def append_torn_line(ledger: Path) -> None:
    with open(ledger, "ab") as handle:
        handle.write(b'{"event":"intent","job":"x","attempt":1,"t":1.0,"na')


async def test_a_resumed_run_prints_what_report_says(tmp_path: Path) -> None:
    """The summary of a resume folds only what it appended: it must equal a full report."""
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        job_lines(150, workspace="ws1") + job_lines(6, prefix="missing", workspace="ws2"),
    )
    ledger = tmp_path / "l.jsonl"
    run = (
        "run", str(manifest), "--endpoint", "", "--project-id", "p1", "--ledger", str(ledger),
        "--progress", "off",
    )  # fmt: skip

    async def report_of() -> tuple[str, bool]:
        done = await launcher("report", str(ledger))
        outcomes = report_json(ledger)["outcomes"]
        all_started = outcomes["started"] == sum(outcomes.values())
        assert done.code == (0 if all_started else 1), done.stderr  # report's exit status
        return done.stdout, all_started

    async with running(SimConfig(missing_prefix="missing-")) as (_sim, url):
        args = tuple(url if a == "" else a for a in run)
        first = await launcher(*args, "--rate", "300/s", "--deadline", "0.2")
        assert first.code == 1, first.stderr  # cut short: some jobs pending
        append_torn_line(ledger)  # and a crash mid-write after it
        partial = await launcher(*args, "--resume", "--rate", "300/s", "--deadline", "0.2")
        text, all_started = await report_of()
        assert partial.stdout == text  # torn line, pending jobs and all
        assert partial.code == (0 if all_started else 1)
        finished = await launcher(*args, "--resume", "--rate", "0")
        text, all_started = await report_of()
        assert finished.stdout == text
        assert (finished.code, all_started) == (1, False)  # the missing ones failed for good
        again = await launcher(*args, "--resume", "--rate", "0")  # nothing left to send
        text, _ = await report_of()
        assert (again.stdout, again.code) == (text, 1)
    assert report_json(ledger)["outcomes"] == {
        "started": 150, "failed": 6, "unknown": 0, "pending": 0
    }  # fmt: skip
