"""`--wait` end to end: accepted runs are followed to their end, against the simulator."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from launch_helpers import job_lines, launcher, ledger_events, report_json, sim_env, write_manifest

from launcher.simulator.app import SimConfig, Simulator, running

pytestmark = pytest.mark.anyio


def run_args(manifest: Path, ledger: Path, url: str, *more: str) -> tuple[str, ...]:
    return (
        "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
        "--action", "run-immediate", "--wait", "--ledger", str(ledger), *more,
    )  # fmt: skip


def server_counts(sim: Simulator) -> dict[str, int]:
    return dict(sim.service.instance_statuses())


async def test_wait_follows_every_run_to_its_end(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(60))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(run_seconds=1.5, run_fail=0.3, seed=4)) as (sim, url):
        done = await launcher(*run_args(manifest, ledger, url))
        # Read at once: the launcher returned only when no run was still running.
        counts = server_counts(sim)
    assert set(counts) == {"success", "fail"}, counts
    assert counts["fail"] > 0
    assert done.code == 1, done.stdout + done.stderr  # some runs failed
    for n in range(60):
        assert sim.stats.took_effect("run-immediate", "p1", f"job-{n:04d}") == 1
    report = report_json(ledger)
    assert report["outcomes"]["started"] == 60
    assert report["instances"] == counts
    assert "runs" in done.stdout
    events = [e for e in ledger_events(ledger) if e["event"] == "instance"]
    # One event per status change: running (the first poll may already see the end), then final.
    assert {e["status"] for e in events} <= {"running", "success", "fail"}
    assert len(events) <= 120
    assert all(isinstance(e["instance_id"], int) for e in events)


async def test_all_runs_succeeding_exit_0(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(10))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(run_seconds=0.5)) as (_sim, url):
        done = await launcher(*run_args(manifest, ledger, url))
    assert done.code == 0, done.stdout + done.stderr
    assert report_json(ledger)["instances"] == {"success": 10}


async def test_runs_not_ended_by_the_timeout_are_unknown(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(run_seconds=3600)) as (_sim, url):
        done = await launcher(*run_args(manifest, ledger, url, "--wait-timeout", "3s"))
    assert done.code == 1
    report = report_json(ledger)
    assert report["outcomes"]["started"] == 5
    assert report["instances"] == {"unknown": 5}


async def test_lost_answers_are_followed_through_the_instance_list(tmp_path: Path) -> None:
    """Every run-immediate answer is lost: a check finds the run, the wait finds its instance."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(8))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(reset_after=1.0, run_seconds=0.5)) as (sim, url):
        done = await launcher(*run_args(manifest, ledger, url, "--backoff-base", "0.01"))
    assert done.code == 0, done.stdout + done.stderr
    for n in range(8):
        assert sim.stats.took_effect("run-immediate", "p1", f"job-{n:04d}") == 1
    assert report_json(ledger)["instances"] == {"success": 8}


async def test_resume_picks_up_waiting(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(20))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(run_seconds=4.0, run_fail=0.25, seed=9)) as (sim, url):
        args = run_args(manifest, ledger, url)
        process = await anyio.open_process([sys.executable, "-m", "launcher", *args], env=sim_env())
        async with process:
            with anyio.fail_after(30):  # every run accepted (they last 4 s): kill
                while sum(sim.stats.runs.values()) < 20:  # noqa: ASYNC110 - no event
                    await anyio.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        assert sum(sim.stats.runs.values()) == 20
        assert "success" not in server_counts(sim)
        resumed = await launcher(*args, "--resume")
        counts = server_counts(sim)
    assert sum(sim.stats.runs.values()) == 20  # nothing ran twice
    assert resumed.code == (1 if counts.get("fail") else 0), resumed.stdout + resumed.stderr
    assert report_json(ledger)["instances"] == counts
    assert "running" not in counts


async def test_waves_wait_for_the_runs_of_the_wave_before(tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [
        *job_lines(4, prefix="late", wave=1),
        *job_lines(4, prefix="early", wave=0),
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(run_seconds=1.0)) as (sim, url):
        done = await launcher(*run_args(manifest, ledger, url))
        instances = [i for space in sim.service._instances.values() for i in space]
    assert done.code == 0, done.stdout + done.stderr
    early_end = max(i["endTime"] for i in instances if str(i["jobName"]).startswith("early"))
    late_plan = min(i["planTime"] for i in instances if str(i["jobName"]).startswith("late"))
    assert early_end <= late_plan


async def test_a_failed_run_closes_the_wave_gate(tmp_path: Path) -> None:
    lines = [*job_lines(3, prefix="early", wave=0), *job_lines(3, prefix="late", wave=1)]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(run_seconds=0.2, run_fail=1.0)) as (sim, url):
        done = await launcher(*run_args(manifest, ledger, url))
    assert done.code == 1
    assert not any(key[2].startswith("late") for key in sim.stats.runs)
    report = report_json(ledger)
    assert report["instances"] == {"fail": 3}
    assert report["waves"][0]["runs_failed"] == 3
    assert report["outcomes"]["pending"] == 3


async def test_a_resume_follows_runs_that_timed_out(tmp_path: Path) -> None:
    """A finished run whose waits timed out: `--resume` (nothing left to send) follows them on."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(6))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(run_seconds=3.0)) as (sim, url):
        first = await launcher(*run_args(manifest, ledger, url, "--wait-timeout", "1s"))
        assert first.code == 1
        assert report_json(ledger)["instances"] == {"unknown": 6}
        again = await launcher(*run_args(manifest, ledger, url, "--resume"))
    assert again.code == 0, again.stdout + again.stderr
    assert sum(sim.stats.runs.values()) == 6
    assert report_json(ledger)["instances"] == {"success": 6}
