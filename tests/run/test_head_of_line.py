"""No head-of-line blocking between workspaces, end to end against the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import job_lines, launcher, ledger_events, report_json, write_manifest

from launcher.simulator.app import running

pytestmark = pytest.mark.anyio


async def test_a_rate_limited_workspace_first_in_the_manifest_holds_back_no_other(
    tmp_path: Path,
) -> None:
    """Issue 16: `ws-warehouse` at 5/s at the head of the manifest held back every other
    workspace. Here at 2/s, with more of its jobs than workers: its third job may go
    1 s after its first, and the 30 jobs of the other workspace are all sent before."""
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        job_lines(6, prefix="wh", workspace="ws-warehouse")
        + job_lines(30, prefix="other", workspace="ws-other"),
    )
    config = tmp_path / "launcher.toml"
    config.write_text('[workspaces."ws-warehouse"]\nrate = "2/s"\n')
    ledger = tmp_path / "l.jsonl"
    async with running() as (_sim, url):
        done = await launcher(
            "run", str(manifest), "--config", str(config), "--endpoint", url,
            "--project-id", "p1", "--rate", "0", "--concurrency", "4", "--ledger", str(ledger),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    order = [e["job"] for e in ledger_events(ledger) if e["event"] == "intent"]
    names = {e["job"]: e["name"] for e in ledger_events(ledger) if e["event"] == "intent"}
    sent = [names[job] for job in order]
    assert sent.index("wh-0002") > max(sent.index(f"other-{n:04d}") for n in range(30))
    assert report_json(ledger)["outcomes"]["started"] == 36
