"""The smaller guards of a run, each against the real CLI in a subprocess: the descriptor
limit checked against --concurrency up front, --workers capped by the usable cores,
and Ctrl-C while the manifest is being validated exits 130."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import orjson
import pytest
from launch_helpers import job_lines, report_json, sim_env, write_manifest
from raw_listener import raw_listener

from launcher.run.fleet import usable_cpus
from launcher.simulator.app import running

pytestmark = pytest.mark.anyio


def _limited(soft: int, hard: int, *args: str) -> list[str]:
    """`python -m launcher ARGS` under an open-file limit of (soft, hard)."""
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        f"sys.argv = ['launcher', *{list(args)!r}]; "
        "runpy.run_module('launcher', run_name='__main__')"
    )
    return [sys.executable, "-c", code]


async def test_concurrency_over_the_descriptor_limit_is_refused_up_front(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(50))
    with raw_listener() as wire:
        args = ["run", str(manifest), "--endpoint", wire.url, "--project-id", "p1",
                "--concurrency", "1000", "--ledger", str(tmp_path / "l.jsonl")]  # fmt: skip
        done = await anyio.run_process(_limited(256, 256, *args), env=sim_env(), check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "--concurrency 1000 needs about 1064 file descriptors" in stderr
    assert "ulimit -n" in stderr
    assert wire.connections == 0
    assert not (tmp_path / "l.jsonl").exists()


async def test_a_soft_descriptor_limit_is_raised_when_the_hard_one_allows(tmp_path: Path) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip("the hard open-file limit is too low here")
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(300))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        args = ["run", str(manifest), "--endpoint", url, "--project-id", "p1",
                "--concurrency", "1000", "--rate", "0", "--ledger", str(ledger),
                "--workers", "1"]  # fmt: skip
        done = await anyio.run_process(_limited(256, 2000, *args), env=sim_env(), check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert sum(sim.stats.starts.values()) == 300
    assert report_json(ledger)["outcomes"]["started"] == 300


async def test_workers_are_capped_by_the_usable_cores(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(2000))
    ledger = tmp_path / "l.jsonl"
    async with running() as (sim, url):
        done = await anyio.run_process(
            [sys.executable, "-m", "launcher", "run", str(manifest), "--endpoint", url,
             "--project-id", "p1", "--rate", "0", "--workers", "100000", "--ledger", str(ledger),
             "--log-format", "json", "--progress", "off"],
            env=sim_env(),
            check=False,
        )  # fmt: skip
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    capped = [
        orjson.loads(line)
        for line in stderr.splitlines()
        if line.startswith("{") and "capped" in line
    ]
    assert capped, stderr
    assert capped[0]["asked"] == 100000
    assert capped[0]["cores"] == usable_cpus()
    assert sum(sim.stats.starts.values()) == 2000
    headers = [e for e in map(orjson.loads, ledger.read_bytes().splitlines()) if "run_id" in e]
    workers = {h.get("worker") for h in headers if h.get("worker")}
    assert len(workers) <= usable_cpus()


def _reading(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open and has read some of it (Linux /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        for fd in fds.iterdir():
            if os.readlink(fd) == str(path):
                info = (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text()
                return int(info.split()[1]) > 0  # "pos:\tN"
    except OSError:
        return False
    return False


@pytest.mark.skipif(not Path("/proc/self/fdinfo").exists(), reason="needs Linux /proc")
async def test_ctrl_c_during_validation_exits_130_and_sends_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    line = orjson.dumps({"name": "job-x", "params": {"pad": "p" * 60}})
    with manifest.open("wb") as out:
        for n in range(1_000_000):  # seconds of validation: time to interrupt it
            out.write(line.replace(b"job-x", b"job-%d" % n) + b"\n")
    with raw_listener() as wire:
        process = await anyio.open_process(
            [sys.executable, "-m", "launcher", "run", str(manifest), "--endpoint", wire.url,
             "--project-id", "p1", "--ledger", str(tmp_path / "l.jsonl")],
            env=sim_env(),
        )  # fmt: skip
        async with process:
            with anyio.fail_after(60):
                while not _reading(process.pid, manifest):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(60):
                code = await process.wait()
            assert process.stderr is not None
            stderr = (await process.stderr.receive()).decode()
    assert code == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    assert wire.connections == 0
