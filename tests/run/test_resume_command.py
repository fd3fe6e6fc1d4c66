"""`launcher resume LEDGER`: a resume needs nothing but the ledger, and a run that
ends with jobs left says how to resume it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from launch_helpers import (
    Completed,
    job_lines,
    launcher,
    ledger_events,
    report_json,
    sim_env,
    write_manifest,
)

from launcher.simulator.app import running

pytestmark = pytest.mark.anyio


async def interrupted(after: float, *args: str) -> Completed:
    """Run `launcher ARGS`, SIGTERM it after `after` seconds, wait for its graceful end."""
    process = await anyio.open_process([sys.executable, "-m", "launcher", *args], env=sim_env())
    output: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def drain(name: str, stream: Any) -> None:
        async for chunk in stream:
            output[name] += chunk

    async with process, anyio.create_task_group() as tg:
        tg.start_soon(drain, "stdout", process.stdout)
        tg.start_soon(drain, "stderr", process.stderr)
        await anyio.sleep(after)
        process.send_signal(signal.SIGTERM)
        code = await process.wait()
    return Completed(code, output["stdout"].decode(), output["stderr"].decode())


async def test_an_interrupted_run_says_how_to_resume_and_resume_needs_only_the_ledger(
    tmp_path: Path,
) -> None:
    """Issue 16: `--resume` needed every option again, and an interrupted run did not
    print the command that resumes it."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(200))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        cut = await interrupted(
            1.5, "run", str(manifest), "--endpoint", url, "--project-id", "p1",
            "--rate", "40/s", "--concurrency", "3", "--ledger", str(ledger), "--progress", "off",
        )  # fmt: skip
        assert cut.code == 130, cut.stderr
        assert f"to resume this run: launcher resume {ledger}" in cut.stderr
        assert 0 < sim.stats.requests < 200
        done = await launcher("resume", str(ledger), "--rate", "0")
    assert done.code == 0, done.stderr
    assert "to resume" not in done.stderr
    for n in range(200):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
    headers = [e for e in ledger_events(ledger) if e["event"] == "run"]
    assert headers[1]["options"]["project_id"] == "p1"  # recorded, reused
    assert headers[1]["options"]["concurrency"] == 3
    assert headers[1]["options"]["rate"] == 0.0  # the flag given, recorded
    assert headers[1]["manifest"]["path"] == str(manifest.resolve())


async def test_run_resume_with_only_the_ledger_reuses_the_recorded_run(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(30))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        first = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "100/s",
            "--ledger", str(ledger), "--deadline", "0.1",
        )  # fmt: skip
        assert first.code == 1, first.stderr
        assert f"launcher resume {ledger}" in first.stderr  # jobs left: pending
        again = await launcher("run", "--resume", "--ledger", str(ledger), "--rate", "0")
    assert again.code == 0, again.stderr
    assert report_json(ledger)["outcomes"]["started"] == 30
    for n in range(30):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1


async def test_resume_still_refuses_a_target_that_a_flag_changes(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(10))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        base = ("--endpoint", url, "--rate", "0", "--ledger", str(ledger))
        assert (await launcher("run", str(manifest), "--project-id", "p1", *base)).code == 0
        before = sim.stats.requests
        refused = await launcher("resume", str(ledger), "--project-id", "p2")
        assert sim.stats.requests == before
    assert refused.code == 2
    assert "project_id p1 -> p2" in refused.stderr


async def test_resume_of_a_moved_manifest_needs_it_named(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(10))
    ledger = tmp_path / "l.jsonl"
    async with running() as (_sim, url):
        first = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--ledger", str(ledger),
        )  # fmt: skip
        assert first.code == 0, first.stderr
        moved = manifest.rename(tmp_path / "moved.jsonl")
        gone = await launcher("resume", str(ledger))
        assert gone.code == 2
        assert "--manifest" in gone.stderr
        named = await launcher("resume", str(ledger), "--manifest", str(moved))
    assert named.code == 0, named.stderr


async def test_a_halted_run_says_how_to_resume(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(1))
    ledger = tmp_path / "l.jsonl"
    config = tmp_path / "c.toml"
    config.write_text('[sim]\nmissing_prefix = "job-"\n')
    first = await launcher(
        "run", str(manifest), "--config", str(config), "--endpoint", "sim", "--project-id",
        "p1", "--ledger", str(ledger), "--halt", "fail=1",
    )  # fmt: skip
    assert first.code == 3, first.stderr
    assert f"launcher resume {ledger} --config {config}" in first.stderr


async def test_a_resume_dry_run_shows_what_the_resume_would_send(tmp_path: Path) -> None:
    """Issue 17: `--resume --dry-run` ignored the ledger and listed the whole manifest."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(40))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1",
                "--ledger", str(ledger))  # fmt: skip
        first = await launcher(*base, "--rate", "100/s", "--deadline", "0.15")
        assert first.code == 1, first.stderr
        pending = report_json(ledger)["outcomes"]["pending"]
        assert 0 < pending < 40
        before, size = sim.stats.requests, ledger.stat().st_size
        dry = await launcher(*base, "--resume", "--dry-run")
        assert sim.stats.requests == before
    assert dry.code == 0, dry.stderr
    assert f"dry run: {pending} job(s) would be sent by this resume" in dry.stdout
    assert ledger.stat().st_size == size  # nothing written
    assert dry.stdout.count("POST ") == min(pending, 20)


async def test_resume_reads_a_ledger_as_every_reader_does(tmp_path: Path) -> None:
    """Issue 17's rules hold for `launcher resume` too: a FIFO is refused at once (no
    wait for a writer), a header field of the wrong kind is FILE:LINE, exit 2."""
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    refused = await launcher("resume", str(fifo))
    assert refused.code == 2, refused.stderr
    assert "not a regular file" in refused.stderr
    ledger = tmp_path / "l.jsonl"
    header = {"event": "run", "t": 1.0, "manifest": {"path": "m.jsonl"}, "run_options": [1]}
    ledger.write_bytes(orjson.dumps(header) + b"\n")
    bad = await launcher("resume", str(ledger))
    assert bad.code == 2, bad.stderr
    assert f"{ledger}:1: run_options: an object" in bad.stderr
