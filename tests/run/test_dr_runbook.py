"""The README's disaster-recovery runbook runs as written (issue 16: runbooks that cannot mislead).

The commands are read from the README itself (every ```sh block of the
runbook, in order) and run in a scratch directory against the simulator:
`--endpoint` is added to those that send, and `<DR project>` filled in.
Before them, a nightly run writes the ledger the runbook starts from.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from launch_helpers import Completed, job_lines, sim_env, write_manifest

from launcher.simulator.app import running

ROOT = Path(__file__).resolve().parents[2]
DR_PROJECT = "dr-project-0001"


def runbook_commands() -> list[str]:
    """The runbook's commands, in order: each ```sh block's lines, continuations joined."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Runbook: disaster-recovery replay into another region")
    end = readme.index("\n### ", start + 1)
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", readme[start:end], flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "export ")):
                commands.append(line)
    return commands


async def shell(command: str, cwd: Path, endpoint: str) -> Completed:
    """Run one runbook line (`launcher ...`, with an optional `> FILE`) in `cwd`."""
    words = shlex.split(command.replace("<DR project>", DR_PROJECT))
    target = None
    if ">" in words:
        at = words.index(">")
        words, target = words[:at], words[at + 1]
    assert words[0] == "launcher", command
    if words[1] in ("run", "replay", "resume"):
        words += ["--endpoint", endpoint]  # the simulator instead of the DR region
    result = await anyio.run_process(
        [sys.executable, "-m", "launcher", *words[1:]],
        cwd=cwd,
        env=sim_env(),
        check=False,
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout.decode()
    if target is not None:
        (cwd / target).write_text(out)
    return Completed(result.returncode, out, result.stderr.decode())


def test_the_runbook_has_its_steps() -> None:
    commands = runbook_commands()
    kinds = [shlex.split(c.replace("<DR project>", "x"))[1] for c in commands]
    assert kinds == ["report", "replay", "replay", "resume", "report", "report"]
    assert "--dry-run" in commands[1]
    assert commands[2] == commands[1].replace(" --dry-run", "")  # "the same command without"


@pytest.mark.anyio
async def test_the_dr_runbook_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs/dr-replay.toml", tmp_path / "configs/dr-replay.toml")
    jobs = job_lines(6, prefix="fin", workspace="ws-finance") + job_lines(
        4, prefix="ops", workspace="ws-ops"
    )
    write_manifest(tmp_path / "nightly.jsonl", jobs)
    async with running() as (sim, url):
        nightly = await shell(
            "launcher run nightly.jsonl --project-id primary-0001 --rate 0 --progress off "
            "--ledger ledgers/nightly-2026-11-28.jsonl",
            tmp_path,
            url,
        )
        assert nightly.code == 0, nightly.stderr
        for number, command in enumerate(runbook_commands(), 1):
            done = await shell(command, tmp_path, url)
            assert done.code == 0, f"runbook command {number}: {command}\n{done.stderr}"
        for job in jobs:
            workspace = {"ws-finance": "dr-finance", "ws-ops": "dr-ops"}[job["workspace"]]
            # Started once in the DR project, whatever the dry run and the resume did.
            assert sim.stats.took_effect("start", DR_PROJECT, job["name"], workspace) == 1
            assert (
                sim.stats.took_effect("start", "primary-0001", job["name"], job["workspace"]) == 1
            )
    rows = list(csv.DictReader(io.StringIO((tmp_path / "dr-2026-11-28.csv").read_text())))
    assert len(rows) == len(jobs)
    assert {row["outcome"] for row in rows} == {"started"}
    assert {row["project_id"] for row in rows} == {DR_PROJECT}
