"""Tests for launcher.dlf.auth: environment precedence (which strategy, which IAM endpoint)
and the simple strategies. IAM password login itself: tests/dlf/test_iam.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from launcher.dlf.auth import (
    AkSkAuth,
    Auth,
    NoAuth,
    StaticTokenAuth,
    auth_from_env,
)
from launcher.dlf.iam import IamPasswordAuth
from launcher.dlf.signing import AkSk, Signer, verify
from launcher.errors import UsageError

pytestmark = pytest.mark.anyio

PASSWORD = "Pa55-w0rd-SECRET"
SK = "sk-SECRET-value"
TOKEN = "MIItoken-SECRET"
SEC_TOKEN = "sts-SECRET-token"
SECRETS = (PASSWORD, SK, TOKEN, SEC_TOKEN)


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def _token_of(auth: Auth) -> str:
    headers: dict[str, str] = {}
    await auth.apply("POST", "h", "/v1/p/jobs/j/start", [], headers, b"{}")
    return headers["X-Auth-Token"]


# ------------------------------------------------------------------------ environment

ENV_AKSK = {"HUAWEICLOUD_SDK_AK": "HPUAEXAMPLE", "HUAWEICLOUD_SDK_SK": SK}
ENV_TOKEN = {"HUAWEICLOUD_IAM_TOKEN": TOKEN}
ENV_PASSWORD = {
    "HUAWEICLOUD_IAM_USERNAME": "alice",
    "HUAWEICLOUD_IAM_PASSWORD": PASSWORD,
    "HUAWEICLOUD_IAM_DOMAIN": "acme",
}


async def test_env_precedence(session: aiohttp.ClientSession) -> None:
    def pick(env: dict[str, str], **kw: Any) -> Auth:
        kw.setdefault("iam_endpoint", "https://iam.cn-north-4.myhuaweicloud.com")
        kw.setdefault("project_id", "proj-1")
        return auth_from_env(env, session=session, **kw)

    everything = {**ENV_AKSK, **ENV_TOKEN, **ENV_PASSWORD}
    assert isinstance(pick(everything), AkSkAuth)
    assert pick(everything).describe() == "aksk AK=HPUA…"
    temporary = pick({**everything, "HUAWEICLOUD_SDK_SECURITY_TOKEN": SEC_TOKEN})
    assert temporary.describe() == "aksk-temporary AK=HPUA…"
    assert isinstance(pick({**ENV_TOKEN, **ENV_PASSWORD}), StaticTokenAuth)
    password = pick(ENV_PASSWORD)
    assert isinstance(password, IamPasswordAuth)
    assert password.describe() == "iam-password user=alice domain=acme project=proj-1"
    # Empty values count as unset.
    blank = {"HUAWEICLOUD_SDK_AK": "", "HUAWEICLOUD_SDK_SK": "", "HUAWEICLOUD_IAM_TOKEN": ""}
    assert isinstance(pick({**blank, **ENV_PASSWORD}), IamPasswordAuth)
    # Endpoint and project fall back to the SDK's variables.
    fallback = pick(
        {
            **ENV_PASSWORD,
            "HUAWEICLOUD_SDK_REGION": "eu-west-101",
            "HUAWEICLOUD_SDK_PROJECT_ID": "proj-env",
        },
        iam_endpoint=None,
        project_id=None,
    )
    assert "project=proj-env" in fallback.describe()
    # eu-west-101 has no IAM host of its own in the SDK's table: its global fallback.
    assert "https://iam.myhuaweicloud.com/v3/auth/tokens" in repr(fallback)
    explicit = pick(
        {**ENV_PASSWORD, "HUAWEICLOUD_SDK_IAM_ENDPOINT": "https://iam.example.test"},
        iam_endpoint=None,
    )
    assert "https://iam.example.test/v3/auth/tokens" in repr(explicit)
    for auth in (temporary, password, fallback, pick(ENV_TOKEN)):
        _assert_no_secret(repr(auth) + auth.describe())


@pytest.mark.parametrize(
    ("env", "kw", "expected"),
    [
        ({"HUAWEICLOUD_SDK_AK": "AK"}, {}, "HUAWEICLOUD_SDK_AK is set but HUAWEICLOUD_SDK_SK"),
        ({"HUAWEICLOUD_SDK_SK": SK}, {}, "HUAWEICLOUD_SDK_SK is set but HUAWEICLOUD_SDK_AK"),
        (
            {"HUAWEICLOUD_SDK_SK": SK, **ENV_TOKEN},
            {},
            "HUAWEICLOUD_SDK_SK is set but HUAWEICLOUD_SDK_AK",
        ),
        ({"HUAWEICLOUD_SDK_SECURITY_TOKEN": SEC_TOKEN}, {}, "HUAWEICLOUD_SDK_SECURITY_TOKEN"),
        (
            {},
            {},
            "HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK (and HUAWEICLOUD_SDK_SECURITY_TOKEN for "
            "temporary keys), or HUAWEICLOUD_IAM_TOKEN, or HUAWEICLOUD_IAM_USERNAME, "
            "HUAWEICLOUD_IAM_PASSWORD and HUAWEICLOUD_IAM_DOMAIN",
        ),
        (
            {"HUAWEICLOUD_IAM_PASSWORD": PASSWORD},
            {},
            "needs HUAWEICLOUD_IAM_USERNAME, HUAWEICLOUD_IAM_DOMAIN too",
        ),
        (ENV_PASSWORD, {"iam_endpoint": None}, "needs an IAM endpoint"),
        (ENV_PASSWORD, {"project_id": None}, "needs a project id"),
        (ENV_PASSWORD, {"iam_endpoint": "iam.example.test"}, "http(s) URL"),
        ({**ENV_PASSWORD, "HUAWEICLOUD_SDK_REGION": "bad region!"}, {"iam_endpoint": None}, "bad"),
    ],
)
async def test_env_errors(
    session: aiohttp.ClientSession, env: dict[str, str], kw: dict[str, Any], expected: str
) -> None:
    args: dict[str, Any] = {"iam_endpoint": "https://iam.test", "project_id": "p", **kw}
    with pytest.raises(UsageError) as info:
        auth_from_env(env, session=session, **args)
    assert expected in str(info.value)
    _assert_no_secret(str(info.value))


# ------------------------------------------------------------------- simple strategies


async def test_simple_strategies() -> None:
    headers: dict[str, str] = {}
    none = NoAuth()
    await none.apply("GET", "h", "/", [], headers, b"")
    assert headers == {}
    assert not await none.refresh()
    assert none.describe() == "none"

    static = StaticTokenAuth(TOKEN)
    assert await _token_of(static) == TOKEN
    assert not await static.refresh()
    assert static.describe() == "iam-token (static)"

    aksk = AkSkAuth(Signer(AkSk("AKID1234", SK, SEC_TOKEN)))
    signed: dict[str, str] = {"Content-Type": "application/json"}
    await aksk.apply("POST", "h.test", "/v1/p/jobs/j/start", [("a", "1")], signed, b"{}")
    assert signed["X-Security-Token"] == SEC_TOKEN
    reason = verify(
        "POST",
        "/v1/p/jobs/j/start",
        [("a", "1")],
        signed,
        b"{}",
        {"AKID1234": SK}.get,
        now=datetime.now(UTC),
    )
    assert reason is None
    assert not await aksk.refresh()
    assert aksk.describe() == "aksk-temporary AK=AKID…"

    for auth in (none, static, aksk):
        assert isinstance(auth, Auth)
        _assert_no_secret(repr(auth) + str(auth) + auth.describe())
    with pytest.raises(ValueError, match="empty"):
        StaticTokenAuth("")


@pytest.mark.parametrize(
    ("flag", "env", "region", "expected"),
    [
        # As the SDK: the variable wins over the region; the option wins over both.
        (
            None,
            {"HUAWEICLOUD_SDK_IAM_ENDPOINT": "https://iam.corp"},
            "cn-north-4",
            "https://iam.corp",
        ),
        (
            "https://iam.flag",
            {"HUAWEICLOUD_SDK_IAM_ENDPOINT": "https://iam.corp"},
            "cn-north-4",
            "https://iam.flag",
        ),
        (None, {}, "cn-north-4", "https://iam.cn-north-4.myhuaweicloud.com"),
        (
            None,
            {"HUAWEICLOUD_SDK_REGION": "ap-southeast-3"},
            None,
            "https://iam.ap-southeast-3.myhuaweicloud.com",
        ),
        (None, {}, "eu-west-101", "https://iam.myhuaweicloud.com"),  # the SDK's fallback
    ],
)
async def test_iam_endpoint_precedence(
    session: aiohttp.ClientSession,
    flag: str | None,
    env: dict[str, str],
    region: str | None,
    expected: str,
) -> None:
    auth = auth_from_env(
        {**ENV_PASSWORD, **env}, session=session, iam_endpoint=flag, project_id="p", region=region
    )
    assert isinstance(auth, IamPasswordAuth)
    assert auth.url == expected + "/v3/auth/tokens"
