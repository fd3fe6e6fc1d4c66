"""Helpers for end-to-end tests: write manifests, run the real CLI in a subprocess."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

CREDENTIAL_VARIABLES = (
    "HUAWEICLOUD_SDK_AK",
    "HUAWEICLOUD_SDK_SK",
    "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "HUAWEICLOUD_SDK_PROJECT_ID",
    "HUAWEICLOUD_SDK_REGION",
    "HUAWEICLOUD_IAM_TOKEN",
    "HUAWEICLOUD_IAM_USERNAME",
    "HUAWEICLOUD_IAM_PASSWORD",
    "HUAWEICLOUD_IAM_DOMAIN",
)


def write_manifest(path: Path, jobs: Iterable[Mapping[str, Any]]) -> Path:
    """Write `jobs` as a JSONL manifest."""
    path.write_bytes(b"".join(orjson.dumps(dict(job)) + b"\n" for job in jobs))
    return path


def job_lines(count: int, prefix: str = "job", **fields: Any) -> list[dict[str, Any]]:
    """`count` manifest lines named prefix-0000..., each with a date param."""
    return [
        {"name": f"{prefix}-{n:04d}", "params": {"bizdate": "2026-11-28"}, **fields}
        for n in range(count)
    ]


@dataclass
class Completed:
    """A finished CLI run."""

    code: int
    stdout: str
    stderr: str


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any real credentials, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env.update(extra)
    return env


# Credentials for a simulator that does not check signatures: a real endpoint
# needs some, so every run against a standalone simulator carries these.
TEST_AK, TEST_SK = "TESTACCESSKEY", "test-secret-key"


def sim_env(**extra: str) -> dict[str, str]:
    """`clean_env` with the harmless test credentials."""
    return clean_env(HUAWEICLOUD_SDK_AK=TEST_AK, HUAWEICLOUD_SDK_SK=TEST_SK, **extra)


async def launcher(*args: str, env: Mapping[str, str] | None = None) -> Completed:
    """Run `python -m launcher ARGS` and wait for it (the simulator keeps serving meanwhile)."""
    result = await anyio.run_process(
        [sys.executable, "-m", "launcher", *args],
        env=dict(env) if env is not None else sim_env(),
        check=False,
    )
    return Completed(result.returncode, result.stdout.decode(), result.stderr.decode())


async def until_started(sim: Any, count: int, *, limit: float = 60.0) -> None:
    """Wait until the simulator `sim` has taken `count` starts in all (polled; at most
    `limit` seconds). Tests that interrupt a run do it once it is under way, not after
    a fixed sleep, which a loaded machine outlasts before the first request."""
    with anyio.fail_after(limit):
        while sum(sim.stats.starts.values()) < count:  # noqa: ASYNC110 - the sim has no event
            await anyio.sleep(0.02)


async def signal_when_started(
    sim: Any, count: int, signum: int, *args: str, env: Mapping[str, str] | None = None
) -> int:
    """Start `python -m launcher ARGS`, send it `signum` once `sim` has taken `count`
    more starts, and return its exit status."""
    goal = sum(sim.stats.starts.values()) + count
    process = await anyio.open_process(
        [sys.executable, "-m", "launcher", *args],
        env=dict(env) if env is not None else sim_env(),
    )
    async with process:
        await until_started(sim, goal)
        process.send_signal(signum)
        with anyio.fail_after(60):
            return await process.wait()


def report_json(ledger: Path) -> dict[str, Any]:
    """`launcher report LEDGER --format json`, in-process (pure file reading)."""
    from launcher.ledger.report import summarize, to_json
    from launcher.ledger.writer import read_ledger

    return to_json(summarize([read_ledger(ledger)]))


def ledger_events(ledger: Path) -> list[dict[str, Any]]:
    """Every event of a ledger."""
    return [orjson.loads(line) for line in ledger.read_bytes().splitlines() if line.strip()]
