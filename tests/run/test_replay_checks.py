"""Replay checks its inputs before anything is written or sent: workspace names, the
source run's manifest, and the target (issues 16 and 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import job_lines, launcher, ledger_events, report_json, write_manifest

from launcher.simulator.app import running

pytestmark = pytest.mark.anyio


async def source_run(tmp_path: Path, url: str, *extra: str) -> tuple[Path, Path]:
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        job_lines(20, workspace="ws-finance") + job_lines(20, prefix="ops", workspace="ws-ops"),
    )
    ledger = tmp_path / "l.jsonl"
    done = await launcher(
        "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--ledger", str(ledger),
        *extra,
    )  # fmt: skip
    assert done.code in (0, 1), done.stderr
    return manifest, ledger


async def test_a_typo_in_map_workspace_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    """Issue 16: `--map-workspace ws-fnance=...` was silently ignored."""
    async with running() as (sim, url):
        _, ledger = await source_run(tmp_path, url, "--rate", "0")
        before = sim.stats.requests
        replay_ledger = tmp_path / "replay.jsonl"
        typo = await launcher(
            "replay", str(ledger), "--endpoint", url, "--map-workspace", "ws-fnance=dr-finance",
            "--ledger", str(replay_ledger), "--rate", "0",
        )  # fmt: skip
        assert sim.stats.requests == before
    assert typo.code == 2
    assert "did you mean ws-finance?" in typo.stderr
    assert not replay_ledger.exists()
    assert not replay_ledger.with_name("replay.manifest.jsonl").exists()


async def test_a_moved_manifest_is_refused_not_a_smaller_plan(tmp_path: Path) -> None:
    """Issue 16: a moved manifest made a replay's plan shrink (1,627 jobs to 17), exit 0."""
    async with running() as (sim, url):
        manifest, ledger = await source_run(tmp_path, url, "--rate", "100/s", "--deadline", "0.1")
        unsent = 40 - len({e["job"] for e in ledger_events(ledger) if e["event"] == "intent"})
        assert unsent > 0  # the deadline cut the run: some jobs were never sent
        moved = manifest.rename(tmp_path / "moved.jsonl")
        sim.stats.reset()
        args = ("replay", str(ledger), "--endpoint", url, "--project-id", "p2", "--rate", "0")
        refused = await launcher(*args, "--ledger", str(tmp_path / "r1.jsonl"))
        assert refused.code == 2
        assert "--manifest PATH" in refused.stderr
        assert f"{unsent} job(s) of the run were never sent" in refused.stderr
        assert sim.stats.requests == 0
        write_manifest(tmp_path / "other.jsonl", job_lines(40))
        wrong = await launcher(
            *args,
            "--ledger",
            str(tmp_path / "r2.jsonl"),
            "--manifest",
            str(tmp_path / "other.jsonl"),
        )
        assert wrong.code == 2
        assert "not the manifest of the run" in wrong.stderr
        named = await launcher(
            *args, "--ledger", str(tmp_path / "r3.jsonl"), "--manifest", str(moved)
        )
    assert named.code == 0, named.stderr
    assert sum(sim.stats.starts.values()) == 40  # every job of the run, none lost
    assert report_json(tmp_path / "r3.jsonl")["outcomes"]["started"] == 40


async def test_a_replay_to_its_own_target_is_refused_without_force(tmp_path: Path) -> None:
    """Issue 17: `replay --only started` to the same endpoint and project started
    everything twice, with no warning."""
    async with running() as (sim, url):
        _, ledger = await source_run(tmp_path, url, "--rate", "0")
        sim.stats.reset()
        base = ("replay", str(ledger), "--endpoint", url, "--only", "started", "--rate", "0")
        same = await launcher(*base, "--ledger", str(tmp_path / "r1.jsonl"))
        same_project = await launcher(
            *base, "--project-id", "p1", "--ledger", str(tmp_path / "r2.jsonl")
        )
        assert sim.stats.requests == 0
        elsewhere = await launcher(
            *base, "--project-id", "p2", "--ledger", str(tmp_path / "r3.jsonl")
        )
        forced = await launcher(*base, "--force", "--ledger", str(tmp_path / "r4.jsonl"))
    for refused in (same, same_project):
        assert refused.code == 2
        assert "second time" in refused.stderr
        assert "--force" in refused.stderr
        assert "launcher resume" not in refused.stderr  # no job in doubt was asked for
    assert elsewhere.code == 0, elsewhere.stderr
    assert forced.code == 0, forced.stderr
    assert sim.stats.took_effect("start", "p2", "job-0000", "ws-finance") == 1
    assert sim.stats.took_effect("start", "p1", "job-0000", "ws-finance") == 1  # forced


async def test_a_replay_of_jobs_in_doubt_to_their_own_target_points_at_resume(
    tmp_path: Path,
) -> None:
    """Jobs in doubt replayed where they ran would be sent without the status check and
    settle window a resume makes first: the refusal names the command that checks."""
    async with running() as (sim, url):
        _, ledger = await source_run(tmp_path, url, "--rate", "0")
        sim.stats.reset()
        refused = await launcher(
            "replay", str(ledger), "--endpoint", url, "--only", "unknown,pending",
            "--ledger", str(tmp_path / "r1.jsonl"),
        )  # fmt: skip
    assert refused.code == 2
    assert f"launcher resume {ledger}" in refused.stderr
    assert sim.stats.requests == 0
