"""Load tests that fail or write files: every request failed is a non-zero exit (98) even
without a threshold, and every output file is created 0600 and never through a link.
The real CLI against the simulator."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import anyio
import orjson
import pytest
from launch_helpers import job_lines, sim_env, write_manifest

from launcher.loadtest.runner import EXIT_ALL_FAILED
from launcher.simulator.app import SimConfig, running

pytestmark = pytest.mark.anyio


async def _loadtest(*args: str) -> tuple[int, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "launcher", "loadtest", *args], env=sim_env(), check=False
    )
    return done.returncode, (done.stdout + done.stderr).decode()


@pytest.mark.parametrize("fault", ["missing", "500"])
async def test_every_request_failed_exits_98_without_any_threshold(
    tmp_path: Path, fault: str
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5, prefix="missing"))
    config = SimConfig(missing_prefix="missing-") if fault == "missing" else SimConfig(fail_500=1.0)
    summary = tmp_path / "s.json"
    async with running(config) as (_sim, url):
        code, output = await _loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "50/s",
            "--duration", "1s", "--summary-json", str(summary), "--no-live",
        )  # fmt: skip
    assert code == EXIT_ALL_FAILED == 98, output
    document = orjson.loads(summary.read_bytes())
    assert document["exit_code"] == 98
    assert document["requests"] == 50
    assert sum(document["errors"].values()) == 50


async def test_some_successes_still_exit_0(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(4) + job_lines(1, prefix="missing"))
    async with running(SimConfig(missing_prefix="missing-")) as (_sim, url):
        code, output = await _loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "50/s",
            "--duration", "1s", "--no-live",
        )  # fmt: skip
    assert code == 0, output


async def test_outputs_are_created_0600(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    outputs = [tmp_path / "s.json", tmp_path / "t.csv", tmp_path / "r.html"]
    outputs[1].write_text("old\n")
    outputs[1].chmod(0o644)  # an existing file is made private too
    async with running() as (_sim, url):
        code, output = await _loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "50/s",
            "--duration", "1s", "--no-live", "--summary-json", str(outputs[0]),
            "--timeseries", str(outputs[1]), "--report", str(outputs[2]),
        )  # fmt: skip
    assert code == 0, output
    for path in outputs:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert outputs[1].read_text().startswith("second,")
    assert "data:image/png;base64," in outputs[2].read_text()


async def test_a_link_planted_at_an_output_path_is_refused(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "s.json"
    link.symlink_to(target)
    async with running() as (sim, url):
        code, output = await _loadtest(
            str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "20/s",
            "--duration", "1s", "--no-live", "--summary-json", str(link),
        )  # fmt: skip
    assert code == 2, output
    assert "symbolic link" in output
    assert sim.stats.requests == 0  # refused before anything was sent
    assert target.read_text() == "keep me\n"


async def test_the_manifest_can_come_from_stdin(tmp_path: Path) -> None:
    data = b"".join(orjson.dumps(line) + b"\n" for line in job_lines(7))
    async with running() as (sim, url):
        done = await anyio.run_process(
            [sys.executable, "-m", "launcher", "loadtest", "-", "--endpoint", url,
             "--project-id", "p1", "--rate", "100/s", "--once", "--no-canary", "--no-live"],
            input=data,
            env=sim_env(TMPDIR=str(tmp_path)),
            check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert sum(sim.stats.starts.values()) == 7
    assert os.listdir(tmp_path) == []  # the copy of stdin is gone


async def test_an_empty_manifest_is_refused_without_naming_runs_flag(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("# nothing\n")
    code, output = await _loadtest(
        str(manifest), "--endpoint", "sim", "--rate", "10/s", "--duration", "1s"
    )
    assert code == 2, output
    assert "no jobs to send" in output
    assert "--allow-empty" not in output
