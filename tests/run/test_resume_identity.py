"""Resume is safe by construction: the run's target is part of its identity, and
failures that were the run's (credentials, a stop) are not final for the job."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from launch_helpers import (
    TEST_AK,
    TEST_SK,
    clean_env,
    job_lines,
    launcher,
    ledger_events,
    report_json,
    write_manifest,
)

from launcher.simulator.app import SimConfig, running

pytestmark = pytest.mark.anyio


def headers(ledger: Path) -> list[dict[str, object]]:
    return [e for e in ledger_events(ledger) if e["event"] == "run"]


async def test_resume_into_another_project_is_refused_unless_forced(tmp_path: Path) -> None:
    """Issue 16: `--resume --project-id projB` started every job again, in projB."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(20))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--rate", "0", "--ledger", str(ledger))
        first = await launcher(*base, "--project-id", "projA", "--deadline", "0.01")
        assert first.code in (0, 1), first.stderr
        before = sim.stats.requests
        refused = await launcher(*base, "--project-id", "projB", "--resume")
        assert refused.code == 2, refused.stderr
        assert "project_id projA -> projB" in refused.stderr
        assert "--force" in refused.stderr
        assert "--force is safe" not in refused.stderr  # jobs started in projA
        assert sim.stats.requests == before  # nothing sent
        assert len(headers(ledger)) == 1  # nor a segment begun
        forced = await launcher(*base, "--project-id", "projB", "--resume", "--force")
    assert forced.code in (0, 1), forced.stderr
    assert headers(ledger)[-1]["options"]["project_id"] == "projB"  # type: ignore[index]


async def test_resume_against_another_endpoint_is_refused(tmp_path: Path) -> None:
    """Issue 17: a resume against another endpoint after lost answers started jobs at both."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(10))
    ledger = tmp_path / "l.jsonl"
    async with running() as (_first, url_a), running() as (other, url_b):
        base = ("run", str(manifest), "--project-id", "p1", "--rate", "0", "--ledger", str(ledger))
        assert (await launcher(*base, "--endpoint", url_a)).code == 0
        refused = await launcher(*base, "--endpoint", url_b, "--resume")
        assert refused.code == 2, refused.stderr
        assert f"endpoint {url_a} -> {url_b}" in refused.stderr
    assert other.stats.requests == 0


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (("--action", "stop"), "action start -> stop"),
        (("--shard", "0/2"), "shard (none) -> 0/2"),
        (("--workspace", "ws9"), "workspace (none) -> ws9"),
    ],
)
async def test_resume_with_another_action_shard_or_workspace_is_refused(
    tmp_path: Path, changed: tuple[str, str], expected: str
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(10))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
                "--ledger", str(ledger))  # fmt: skip
        assert (await launcher(*base)).code == 0
        before = sim.stats.requests
        refused = await launcher(*base, *changed, "--resume")
        assert sim.stats.requests == before
    assert refused.code == 2, refused.stderr
    assert expected in refused.stderr


async def test_a_rejected_canary_is_sent_again_once_the_key_is_fixed(tmp_path: Path) -> None:
    """Issue 16: after a wrong SK, a resume left the canary `failed APIGW.0301` for good."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(12))
    ledger = tmp_path / "l.jsonl"
    config = SimConfig(aksk={TEST_AK: TEST_SK})
    async with running(config) as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
                "--ledger", str(ledger))  # fmt: skip
        wrong = await launcher(
            *base, env=clean_env(HUAWEICLOUD_SDK_AK=TEST_AK, HUAWEICLOUD_SDK_SK="not-the-secret")
        )
        assert wrong.code == 3, wrong.stderr
        assert report_json(ledger)["outcomes"]["failed"] == 1  # the canary, APIGW.0301
        fixed = await launcher(*base, "--resume")
    assert fixed.code == 0, fixed.stdout + fixed.stderr
    assert report_json(ledger)["outcomes"]["started"] == 12
    for n in range(12):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1


async def test_jobs_left_by_a_halt_or_a_deadline_are_sent_on_resume(tmp_path: Path) -> None:
    """A halt and a deadline stop the run, not the jobs: a resume sends every one left,
    while the failures that tripped the halt (DLF.0100, the job's own) stay final."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(3, prefix="missing") + job_lines(40))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(missing_prefix="missing-")) as (sim, url):
        base = ("run", str(manifest), "--endpoint", url, "--project-id", "p1",
                "--ledger", str(ledger), "--concurrency", "1")  # fmt: skip
        halted = await launcher(*base, "--rate", "0", "--halt", "fail=2")
        assert halted.code == 3, halted.stderr
        short = await launcher(*base, "--resume", "--rate", "20/s", "--deadline", "0.5")
        assert short.code == 1, short.stderr
        assert report_json(ledger)["outcomes"]["pending"] > 0
        final = await launcher(*base, "--resume", "--rate", "0")
    assert final.code == 1  # the three missing jobs failed for good
    assert report_json(ledger)["outcomes"] == {
        "started": 40, "failed": 3, "unknown": 0, "pending": 0
    }  # fmt: skip
    for n in range(40):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
    assert sim.stats.requests == 40 + 3  # each missing job once


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_jobs_that_never_reached_the_service_are_sent_on_resume(tmp_path: Path) -> None:
    """A network path that failed (here: nothing listening; DNS, TLS and proxy failures
    are recorded the same way, before any byte is written) is the run's failure: once
    the service is reachable, a resume sends every job, without --retry-failed. The
    endpoint was wrong: moving it needs --force, and the refusal says that is safe."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(8))
    ledger = tmp_path / "l.jsonl"
    wrong = f"http://127.0.0.1:{free_port()}"
    base = ("run", str(manifest), "--project-id", "p1", "--rate", "0", "--ledger", str(ledger),
            "--max-attempts", "1")  # fmt: skip
    down = await launcher(*base, "--endpoint", wrong)
    assert down.code == 1, down.stderr
    assert report_json(ledger)["outcomes"]["failed"] == 8
    async with running() as (sim, url):
        refused = await launcher(*base, "--endpoint", url, "--resume")
        assert refused.code == 2
        assert "--force is safe" in refused.stderr
        up = await launcher(*base, "--endpoint", url, "--resume", "--force")
    assert up.code == 0, up.stderr
    for n in range(8):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
