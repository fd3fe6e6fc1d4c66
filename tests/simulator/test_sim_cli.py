"""`launcher sim` as a standalone process: where it really listens, and its secrets from
the environment (out of `ps`), proved with real runs against it."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from launch_helpers import clean_env, job_lines, launcher, write_manifest

pytestmark = pytest.mark.anyio

SK = "sim-secret-key-from-env"
PASSWORD = "sim-Pa55word-from-env"


@asynccontextmanager
async def sim_process(*args: str, **env: str) -> AsyncIterator[tuple[Process, str, list[str]]]:
    """`launcher sim ARGS` in a subprocess: (process, its URL, its stderr lines so far)."""
    process = await anyio.open_process(
        [sys.executable, "-m", "launcher", "sim", *args], env=clean_env(**env)
    )
    async with process:
        assert process.stdout is not None
        assert process.stderr is not None
        out = b""
        with anyio.fail_after(20):
            while not out.endswith(b"\n"):
                out += await process.stdout.receive()
        err = b""
        with anyio.fail_after(20):
            while err.count(b"\n") < 2:
                err += await process.stderr.receive()
        try:
            yield process, out.decode().strip(), err.decode().splitlines()
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                await process.wait()


async def test_a_wildcard_host_is_reported_as_such(tmp_path: Path) -> None:
    async with sim_process("--host", "0.0.0.0") as (_process, url, err):
        port = url.rsplit(":", 1)[1]
        assert any(
            f"listening on 0.0.0.0:{port} (every interface: reachable from other hosts)" in line
            for line in err
        ), err
        manifest = write_manifest(tmp_path / "m.jsonl", job_lines(3))
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1",
            "--ledger", str(tmp_path / "l.jsonl"),
            env=clean_env(HUAWEICLOUD_SDK_AK="AK", HUAWEICLOUD_SDK_SK="SK"),
        )  # fmt: skip
        assert done.code == 0, done.stderr


async def test_loopback_is_reported_as_loopback() -> None:
    async with sim_process() as (_process, url, err):
        assert url.startswith("http://127.0.0.1:")
        assert any(f"listening on 127.0.0.1:{url.rsplit(':', 1)[1]}" in line for line in err)
        assert not any("every interface" in line for line in err)


async def test_secrets_from_the_environment_are_checked_and_not_in_ps(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(5))
    async with sim_process(
        LAUNCHER_SIM_AKSK=f"ENVAK0001:{SK}\nOTHERAK:other-secret",
        LAUNCHER_SIM_IAM_USERS=f"ops:{PASSWORD}:acme",
    ) as (_process, url, err):
        assert not any("warning" in line for line in err)
        runs = {}
        for label, env, extra in (
            ("aksk", {"HUAWEICLOUD_SDK_AK": "ENVAK0001", "HUAWEICLOUD_SDK_SK": SK}, ()),
            ("bad-sk", {"HUAWEICLOUD_SDK_AK": "ENVAK0001", "HUAWEICLOUD_SDK_SK": "wrong"}, ()),
            (
                "password",
                {
                    "HUAWEICLOUD_IAM_USERNAME": "ops",
                    "HUAWEICLOUD_IAM_PASSWORD": PASSWORD,
                    "HUAWEICLOUD_IAM_DOMAIN": "acme",
                },
                ("--iam-endpoint", url),
            ),
        ):
            done = await launcher(
                "run", str(manifest), "--endpoint", url, "--project-id", "p1",
                "--ledger", str(tmp_path / f"{label}.jsonl"), *extra, env=clean_env(**env),
            )  # fmt: skip
            runs[label] = done.code
    assert runs == {"aksk": 0, "bad-sk": 3, "password": 0}


async def test_secrets_on_the_command_line_still_work_with_a_warning() -> None:
    async with sim_process("--aksk", f"CLIAK:{SK}") as (_process, _url, err):
        pass
    assert any("visible to every local user" in line for line in err), err
    assert not any(SK in line for line in err)


async def test_a_fifo_as_the_job_list_or_config_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "jobs"
    os.mkfifo(fifo)
    for option in ("--known-jobs", "--config"):
        with anyio.fail_after(20):
            done = await anyio.run_process(
                [sys.executable, "-m", "launcher", "sim", option, str(fifo)],
                env=clean_env(),
                check=False,
            )
        assert done.returncode == 2, done.stderr
        assert b"not a regular file (a FIFO)" in done.stderr
