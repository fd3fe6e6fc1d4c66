"""Nothing unchecked reaches the wire: credentials, project ids, workspaces and endpoint
URLs with a control character, or URLs with user info, are refused before any byte is
sent. Proved against the real CLI and a raw TCP listener that logs every byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from launch_helpers import clean_env, job_lines, launcher, sim_env, write_manifest
from raw_listener import raw_listener

from launcher.dlf.auth import check_credentials, check_url
from launcher.errors import UsageError

pytestmark = pytest.mark.anyio

SMUGGLE = (
    "\r\n\r\nPOST /v1/p/jobs/SMUGGLED/start HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
)
PASSWORD = "Pw-Hunter2-Secret"


async def _run(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(3))
    done = await launcher(
        "run", str(manifest), "--ledger", str(tmp_path / "l.jsonl"), "--timeout", "1",
        "--max-attempts", "1", "--rate", "0", "--progress", "off", *args, env=env,
    )  # fmt: skip
    return done.code, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HUAWEICLOUD_IAM_TOKEN", "tok" + SMUGGLE),
        ("HUAWEICLOUD_SDK_SECURITY_TOKEN", "st" + SMUGGLE),
        ("HUAWEICLOUD_SDK_AK", "AK" + SMUGGLE),
        ("HUAWEICLOUD_SDK_SK", "sk\x1b[2J"),
        ("HUAWEICLOUD_IAM_PASSWORD", "pw\x7f"),
        ("HUAWEICLOUD_SDK_PROJECT_ID", "p1\r\nX-Evil: 1"),
    ],
)
async def test_control_character_in_a_credential_sends_nothing(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = (
        clean_env(HUAWEICLOUD_IAM_TOKEN="good-token")
        if variable != "HUAWEICLOUD_SDK_AK" and variable != "HUAWEICLOUD_SDK_SK"
        else sim_env()
    )
    if variable == "HUAWEICLOUD_SDK_SECURITY_TOKEN":
        env = sim_env()
    env[variable] = value
    with raw_listener() as wire:
        code, output = await _run(tmp_path, env, "--endpoint", wire.url, "--project-id", "p1")
    assert code == 2, output
    assert variable in output
    assert "control character" in output
    assert "SMUGGLED" not in output
    assert "X-Evil" not in output
    assert wire.connections == 0
    assert wire.received == b""
    assert not (tmp_path / "l.jsonl").exists()


async def test_control_character_in_project_or_workspace_from_any_source(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('workspace = "ws\\r\\nX-Evil: 1"\n')
    manifest = write_manifest(
        tmp_path / "bad.jsonl", [{"name": "a"}, {"name": "b", "workspace": "w\r\nX-Evil: 1"}]
    )
    with raw_listener() as wire:
        cases = [
            await _run(tmp_path, sim_env(), "--endpoint", wire.url, "--project-id", "p\r\n1"),
            await _run(tmp_path, sim_env(), "--endpoint", wire.url, "--config", str(config)),
            await _run(
                tmp_path, sim_env(HUAWEICLOUD_SDK_PROJECT_ID="p\x85"), "--endpoint", wire.url
            ),
        ]
        done = await launcher(
            "run", str(manifest), "--endpoint", wire.url, "--project-id", "p1",
            "--ledger", str(tmp_path / "l2.jsonl"), env=sim_env(),
        )  # fmt: skip
    for code, output in cases:
        assert code == 2, output
        assert "X-Evil" not in output
    assert "--project-id" in cases[0][1]
    assert "workspace" in cases[1][1]
    assert str(config) in cases[1][1]
    assert "HUAWEICLOUD_SDK_PROJECT_ID" in cases[2][1]
    assert done.code == 2
    assert f"{manifest}:2: workspace" in done.stderr
    assert wire.connections == 0
    assert wire.received == b""


@pytest.mark.parametrize("dry_run", [False, True])
async def test_endpoint_with_user_info_is_refused_and_never_printed(
    tmp_path: Path, dry_run: bool
) -> None:
    with raw_listener() as wire:
        url = f"http://ops:{PASSWORD}@127.0.0.1:{wire.port}"
        extra = ("--dry-run",) if dry_run else ()
        code, output = await _run(
            tmp_path, sim_env(), "--endpoint", url, "--project-id", "p1", *extra
        )
        config = tmp_path / "c.toml"
        config.write_text(f'endpoint = "{url}/"\n')
        code2, output2 = await _run(
            tmp_path, sim_env(), "--config", str(config), "--project-id", "p1", *extra
        )
    for exit_code, text in ((code, output), (code2, output2)):
        assert exit_code == 2, text
        assert "user info" in text
        assert PASSWORD not in text
    assert wire.connections == 0
    assert wire.received == b""
    assert not (tmp_path / "l.jsonl").exists()


async def test_iam_endpoint_with_user_info_is_refused(tmp_path: Path) -> None:
    with raw_listener() as wire:
        code, output = await _run(
            tmp_path, sim_env(), "--endpoint", wire.url, "--project-id", "p1",
            "--iam-endpoint", f"https://u:{PASSWORD}@iam.example",
        )  # fmt: skip
    assert code == 2
    assert "--iam-endpoint" in output
    assert PASSWORD not in output
    assert wire.connections == 0


async def test_loadtest_refuses_a_bad_token_and_a_user_info_endpoint(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(3))
    outputs = tmp_path / "out"
    outputs.mkdir()
    files = ("--summary-json", str(outputs / "s.json"), "--timeseries", str(outputs / "t.csv"))
    with raw_listener() as wire:
        bad_token = await launcher(
            "loadtest", str(manifest), "--endpoint", wire.url, "--project-id", "p1",
            "--duration", "1s", "--rate", "5/s", "--timeout", "1", *files,
            env=clean_env(HUAWEICLOUD_IAM_TOKEN="t" + SMUGGLE),
        )  # fmt: skip
        user_info = await launcher(
            "loadtest", str(manifest), "--endpoint", f"http://u:{PASSWORD}@127.0.0.1:{wire.port}",
            "--project-id", "p1", "--duration", "1s", "--rate", "5/s", "--timeout", "1", *files,
        )  # fmt: skip
    assert bad_token.code == 2, bad_token.stderr
    assert "HUAWEICLOUD_IAM_TOKEN" in bad_token.stderr
    assert "SMUGGLED" not in bad_token.stderr
    assert user_info.code == 2, user_info.stderr
    assert PASSWORD not in user_info.stdout + user_info.stderr
    assert wire.connections == 0
    assert wire.received == b""
    assert not any(PASSWORD in p.read_text(errors="replace") for p in outputs.iterdir())


@pytest.mark.parametrize("char", ["\x00", "\r", "\n", "\t", "\x1b", "\x7f", "\x85", "\x9f"])
def test_check_credentials_names_the_variable_never_the_value(char: str) -> None:
    env = {"HUAWEICLOUD_SDK_AK": "GOODAK", "HUAWEICLOUD_SDK_SK": "topsecret" + char + "tail"}
    with pytest.raises(UsageError) as caught:
        check_credentials(env)
    assert "HUAWEICLOUD_SDK_SK" in str(caught.value)
    assert "topsecret" not in str(caught.value)
    assert "tail" not in str(caught.value)


def test_check_credentials_accepts_ordinary_values() -> None:
    check_credentials({"HUAWEICLOUD_SDK_AK": "AK123", "HUAWEICLOUD_IAM_PASSWORD": "p@ss w0rd!é"})


@pytest.mark.parametrize(
    "url",
    ["https://u:p@host", "https://u@host/x", "http://a:b@127.0.0.1:80/path?q=1"],
)
def test_check_url_refuses_user_info(url: str) -> None:
    with pytest.raises(UsageError, match="user info") as caught:
        check_url(url, "--endpoint")
    assert ":p@" not in str(caught.value)
    assert "a:b" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["https://dlf.cn-north-4.myhuaweicloud.com", "http://127.0.0.1:8080/x?a=b@c", "sim"]
)
def test_check_url_accepts_plain_urls(url: str) -> None:
    check_url(url, "--endpoint")


_CONTROLS = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20),
    variable=st.sampled_from(
        [
            "HUAWEICLOUD_SDK_AK",
            "HUAWEICLOUD_SDK_SK",
            "HUAWEICLOUD_SDK_SECURITY_TOKEN",
            "HUAWEICLOUD_IAM_TOKEN",
            "HUAWEICLOUD_IAM_USERNAME",
            "HUAWEICLOUD_IAM_PASSWORD",
            "HUAWEICLOUD_IAM_DOMAIN",
            "HUAWEICLOUD_SDK_PROJECT_ID",
            "HUAWEICLOUD_SDK_REGION",
            "HUAWEICLOUD_SDK_IAM_ENDPOINT",
        ]
    ),
)
def test_a_credential_is_refused_exactly_when_it_holds_a_control_character(
    text: str, variable: str
) -> None:
    env = {variable: text}
    if any(c in _CONTROLS for c in text):
        with pytest.raises(UsageError) as caught:
            check_credentials(env)
        assert variable in str(caught.value)
    else:
        check_credentials(env)
