"""No secret (SK, security token, IAM token, password) ever reaches stdout, stderr, logs,
the ledger or the report: checked on successful and failing runs, text and JSON logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import clean_env, job_lines, launcher, write_manifest

from launcher.ledger import read_ledger
from launcher.ledger.report import dumps_json, format_text, summarize
from launcher.simulator import IamUser, SimConfig, running

pytestmark = pytest.mark.anyio

AK = "SECRETTESTAK0001"
SK = "sk-6f1d9a0c2b7e4f35a8d1"
SECURITY_TOKEN = "st-9e8d7c6b5a4f3e2d1c0b"
STATIC_TOKEN = "tok-0a1b2c3d4e5f6a7b8c9d"
PASSWORD = "pw-Zq8!xV3#mN6$tR1"
SECRETS = (SK, SECURITY_TOKEN, STATIC_TOKEN, PASSWORD)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
            assert secret[3:13] not in text  # not even a recognisable piece


async def run_and_collect(tmp_path: Path, url: str, env: dict[str, str], *extra: str) -> int:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(40, workspace="ws-1"))
    ledger = tmp_path / "l.jsonl"
    outputs: list[str] = []
    for log_format in ("json", "console"):
        if ledger.exists():
            ledger.unlink()
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1",
            "--ledger", str(ledger), "--log-format", log_format, "--log-level", "debug",
            "--progress", "lines", "--rate", "0", *extra, env=env,
        )  # fmt: skip
        outputs += [done.stdout, done.stderr]
        if ledger.exists():
            summary = summarize([read_ledger(ledger)])
            outputs += [ledger.read_text(), dumps_json(summary), format_text(summary)]
    assert_no_secret(*outputs)
    return done.code


async def test_aksk_with_security_token_success_and_failure(tmp_path: Path) -> None:
    env = clean_env(
        HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK, HUAWEICLOUD_SDK_SECURITY_TOKEN=SECURITY_TOKEN
    )
    async with running(SimConfig(aksk={AK: SK})) as (_sim, url):
        assert await run_and_collect(tmp_path, url, env) == 0
    async with running(SimConfig(aksk={AK: "another-sk"})) as (_sim, url):
        assert await run_and_collect(tmp_path, url, env) == 3  # rejected: error paths too


async def test_static_iam_token(tmp_path: Path) -> None:
    env = clean_env(HUAWEICLOUD_IAM_TOKEN=STATIC_TOKEN)
    async with running(SimConfig(tokens=frozenset({STATIC_TOKEN}))) as (_sim, url):
        assert await run_and_collect(tmp_path, url, env) == 0
    async with running(SimConfig(tokens=frozenset({"other"}))) as (_sim, url):
        assert await run_and_collect(tmp_path, url, env) == 3


async def test_iam_password_login_right_and_wrong(tmp_path: Path) -> None:
    user = IamUser("ops", PASSWORD, "acme")
    async with running(SimConfig(iam_users=(user,))) as (sim, url):
        env = clean_env(
            HUAWEICLOUD_IAM_USERNAME="ops",
            HUAWEICLOUD_IAM_PASSWORD=PASSWORD,
            HUAWEICLOUD_IAM_DOMAIN="acme",
        )
        assert await run_and_collect(tmp_path, url, env, "--iam-endpoint", url) == 0
        wrong = dict(env, HUAWEICLOUD_IAM_PASSWORD=PASSWORD[::-1])
        before = sim.stats.by_route.copy()
        assert await run_and_collect(tmp_path, url, wrong, "--iam-endpoint", url) == 3
        after = sim.stats.by_route
    assert before["start"] == 80  # two runs of 40 jobs with the right password
    assert after["start"] == before["start"]  # a failed login sends no start at all
