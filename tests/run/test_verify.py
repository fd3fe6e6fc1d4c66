"""`--verify` end to end: started jobs must read SCHEDULING after the run, stopped STOPPED."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import job_lines, launcher, ledger_events, report_json, write_manifest

from launcher.simulator.app import SimConfig, running

pytestmark = pytest.mark.anyio


async def test_verify_confirms_every_started_job(tmp_path: Path) -> None:
    lines = [*job_lines(150, workspace="ws1"), *job_lines(30, prefix="b", workspace="ws2")]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    ledger = tmp_path / "l.jsonl"
    estate = SimConfig(known_jobs=frozenset(line["name"] for line in lines))
    async with running(estate) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--ledger", str(ledger), "--verify",
        )  # fmt: skip
    assert done.code == 0, done.stdout + done.stderr
    # Each workspace lists the 180 known jobs: two pages of 100 each, and no more.
    assert sim.stats.by_route["jobs"] == 2 + 2
    report = report_json(ledger)
    assert report["verify"] == {"checked": 180, "mismatches": 0, "examples": []}
    assert "verify    180 checked, 0 not as expected" in done.stdout


async def test_a_job_not_in_the_state_its_call_set_is_a_mismatch(tmp_path: Path) -> None:
    """Wave 0 starts x; wave 1 stops it (another line: other params): x no longer SCHEDULING."""
    lines = [
        {"name": "x", "params": {"a": "1"}, "wave": 0},
        {"name": "y", "wave": 0},
        {"name": "x", "params": {"a": "2"}, "action": "stop", "wave": 1},
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    ledger = tmp_path / "l.jsonl"
    async with running() as (_sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--ledger", str(ledger), "--verify",
        )  # fmt: skip
    assert done.code == 1, done.stdout + done.stderr
    report = report_json(ledger)
    assert report["outcomes"]["started"] == 3
    assert report["verify"] == {
        "checked": 3,
        "mismatches": 1,
        "examples": ["(default)/x: STOPPED"],
    }
    (event,) = [e for e in ledger_events(ledger) if e["event"] == "verify"]
    assert (event["name"], event["expected"], event["found"]) == ("x", "SCHEDULING", "STOPPED")
