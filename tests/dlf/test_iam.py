"""Tests for launcher.dlf.iam: IAM password login against a real aiohttp server on 127.0.0.1
(single flight, early and forced refresh, failures that never reveal the password), and the
IAM endpoint of a region."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anyio
import anyio.abc
import orjson
import pytest
from aiohttp import web

from launcher.dlf.auth import Auth
from launcher.dlf.iam import IamPasswordAuth, iam_endpoint_for_region
from launcher.errors import AuthFailed, UsageError

pytestmark = pytest.mark.anyio

PASSWORD = "Pa55-w0rd-SECRET"


def _assert_no_secret(text: str) -> None:
    assert PASSWORD not in text


# -------------------------------------------------------------------- fake IAM server


@dataclass
class FakeIam:
    """A tiny IAM: issues tokens "tok-N"; its behaviour is set per test."""

    url: str = ""
    logins: int = 0  # answered with a token
    calls: int = 0  # every POST
    delay: float = 0.0
    lifetime: timedelta = timedelta(hours=24)
    with_issued_at: bool = True
    failures: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # served first
    fail_always: tuple[int, dict[str, Any]] | None = None
    omit_subject: bool = False
    bodies: list[Any] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.bodies.append(orjson.loads(await request.read()))
        self.content_types.append(request.headers.get("Content-Type", ""))
        if self.delay:
            await anyio.sleep(self.delay)
        if self.failures or self.fail_always:
            status, body = self.failures.pop(0) if self.failures else self.fail_always  # type: ignore[misc]
            return web.Response(status=status, body=orjson.dumps(body))
        self.logins += 1
        issued = datetime.now(UTC)
        token: dict[str, Any] = {"expires_at": _iso(issued + self.lifetime), "methods": ["pw"]}
        if self.with_issued_at:
            token["issued_at"] = _iso(issued)
        headers = {} if self.omit_subject else {"X-Subject-Token": f"tok-{self.logins}"}
        return web.Response(status=201, body=orjson.dumps({"token": token}), headers=headers)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
async def iam() -> AsyncIterator[FakeIam]:
    fake = FakeIam()
    app = web.Application()
    app.router.add_post("/v3/auth/tokens", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _password_auth(
    session: aiohttp.ClientSession, iam: FakeIam, clock: Clock | None = None, **kw: Any
) -> IamPasswordAuth:
    kw.setdefault("retry_delay", 0.01)
    if clock is not None:
        kw["clock"] = clock
    return IamPasswordAuth(session, iam.url, "alice", PASSWORD, "acme", "proj-1", **kw)


async def _token_of(auth: Auth) -> str:
    headers: dict[str, str] = {}
    await auth.apply("POST", "h", "/v1/p/jobs/j/start", [], headers, b"{}")
    return headers["X-Auth-Token"]


def test_iam_endpoint_for_region() -> None:
    assert iam_endpoint_for_region("cn-north-4") == "https://iam.cn-north-4.myhuaweicloud.com"
    assert iam_endpoint_for_region("ap-southeast-1") == (
        "https://iam.ap-southeast-1.myhuaweicloud.com"
    )
    # As the SDK (huaweicloudsdkcore/auth/endpoint.py): a region without its own IAM
    # host falls back to the global one; eu-west-0 (Paris) has its own.
    assert iam_endpoint_for_region("eu-west-101") == "https://iam.myhuaweicloud.com"
    assert iam_endpoint_for_region("eu-west-0") == "https://iam.eu-west-0.myhuaweicloud.com"
    for bad in ("", "cn north 4", "evil.com/x", "CN-NORTH-4", "cn", "cn-north-99"):
        with pytest.raises(UsageError):
            iam_endpoint_for_region(bad)


# ---------------------------------------------------------------------- IAM password


async def test_single_flight_first_login(iam: FakeIam, session: aiohttp.ClientSession) -> None:
    iam.delay = 0.05  # long enough for all 64 to pile up behind the first
    auth = _password_auth(session, iam)
    tokens: list[str] = []

    async def one() -> None:
        tokens.append(await _token_of(auth))

    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(one)
    assert iam.calls == iam.logins == 1
    assert tokens == ["tok-1"] * 64
    assert auth.logins == 1
    assert iam.content_types == ["application/json;charset=utf8"]
    assert iam.bodies[0] == {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "alice", "password": PASSWORD, "domain": {"name": "acme"}}
                },
            },
            "scope": {"project": {"id": "proj-1"}},
        }
    }
    _assert_no_secret(repr(auth) + auth.describe())


@pytest.mark.parametrize(
    ("lifetime", "margin", "renew_after"),
    [
        (timedelta(hours=24), 1800.0, 86400 - 1800),  # margin is the smaller
        (timedelta(hours=1), 1800.0, 3600 - 360),  # 10 % of the lifetime is the smaller
        (timedelta(seconds=60), 1800.0, 54),
    ],
)
async def test_early_refresh(
    iam: FakeIam,
    session: aiohttp.ClientSession,
    lifetime: timedelta,
    margin: float,
    renew_after: float,
) -> None:
    iam.lifetime = lifetime
    clock = Clock()
    auth = _password_auth(session, iam, clock, refresh_margin=margin)
    assert await _token_of(auth) == "tok-1"
    start = clock.now
    clock.now = start + renew_after - 1
    assert await _token_of(auth) == "tok-1"
    assert iam.logins == 1
    clock.now = start + renew_after + 1
    assert await _token_of(auth) == "tok-2"
    assert await _token_of(auth) == "tok-2"
    assert iam.logins == 2


async def test_lifetime_without_issued_at(iam: FakeIam, session: aiohttp.ClientSession) -> None:
    iam.lifetime = timedelta(hours=1)
    iam.with_issued_at = False  # falls back to expires_at - our wall clock
    clock = Clock()
    auth = _password_auth(session, iam, clock)
    await _token_of(auth)
    clock.now += 3600 - 362
    assert await _token_of(auth) == "tok-1"
    clock.now += 4
    assert await _token_of(auth) == "tok-2"


async def test_others_keep_old_token_during_renewal(
    iam: FakeIam, session: aiohttp.ClientSession
) -> None:
    iam.lifetime = timedelta(hours=1)
    clock = Clock()
    auth = _password_auth(session, iam, clock)
    await _token_of(auth)
    clock.now += 3300  # in the renewal window, token still valid
    iam.delay = 0.1
    tokens: list[str] = []

    async def one() -> None:
        tokens.append(await _token_of(auth))

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(one)
    assert iam.logins == 2
    assert tokens.count("tok-2") == 1  # the renewer
    assert tokens.count("tok-1") == 15  # nobody queued behind the login


async def test_failed_renewal_keeps_valid_token(
    iam: FakeIam, session: aiohttp.ClientSession
) -> None:
    iam.lifetime = timedelta(hours=1)
    clock = Clock()
    auth = _password_auth(session, iam, clock, attempts=1)
    await _token_of(auth)
    start = clock.now
    iam.fail_always = (503, {"error_msg": "busy", "error_code": "IAM.0100"})
    clock.now = start + 3300
    assert await _token_of(auth) == "tok-1"  # renewal failed, token still valid
    calls = iam.calls
    assert await _token_of(auth) == "tok-1"
    assert iam.calls == calls  # no new attempt on every request
    clock.now = start + 3599  # too close to expiry to keep using it
    with pytest.raises(AuthFailed, match=r"HTTP 503 IAM\.0100: busy"):
        await _token_of(auth)


async def test_forced_refresh_single_flight(iam: FakeIam, session: aiohttp.ClientSession) -> None:
    clock = Clock()
    auth = _password_auth(session, iam, clock)
    assert await _token_of(auth) == "tok-1"
    clock.now += 600
    iam.delay = 0.05
    results: list[bool] = []

    async def one() -> None:
        results.append(await auth.refresh())

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(one)
    assert results == [True] * 16
    assert iam.logins == 2
    assert await _token_of(auth) == "tok-2"
    # A late refresh for a request that carried tok-1 reuses the fresh login...
    clock.now += 5
    assert await auth.refresh()
    assert iam.logins == 2
    # ...but a later one logs in again.
    clock.now += 10
    assert await auth.refresh()
    assert iam.logins == 3
    assert await _token_of(auth) == "tok-3"


async def test_concurrent_refreshes_share_one_login_without_quiet_period(
    iam: FakeIam, session: aiohttp.ClientSession
) -> None:
    # Waiters for the lock see that a login happened meanwhile (generation check), even
    # when the quiet period after a login is off.
    auth = _password_auth(session, iam, min_relogin_interval=0.0)
    await _token_of(auth)
    iam.delay = 0.05
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(auth.refresh)
    assert iam.logins == 2


async def test_refresh_before_any_login(iam: FakeIam, session: aiohttp.ClientSession) -> None:
    auth = _password_auth(session, iam)
    assert await auth.refresh()
    assert iam.logins == 1
    assert await _token_of(auth) == "tok-1"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            {"error_msg": "The username or password is wrong.", "error_code": "IAM.0002"},
            "HTTP 401 IAM.0002: The username or password is wrong.",
        ),
        (
            401,
            {"error": {"code": 401, "message": "Unauthorized.", "title": "Unauthorized"}},
            "HTTP 401: Unauthorized.",
        ),
        (403, {"error_msg": f"bad password {PASSWORD}", "error_code": "IAM.0101"}, "***"),
        (400, {"unexpected": True}, "HTTP 400"),
    ],
)
async def test_failed_login(
    iam: FakeIam,
    session: aiohttp.ClientSession,
    status: int,
    body: dict[str, Any],
    expected: str,
) -> None:
    iam.fail_always = (status, body)
    auth = _password_auth(session, iam)
    with pytest.raises(AuthFailed) as info:
        await _token_of(auth)
    message = str(info.value)
    assert expected in message
    assert "alice" in message
    assert PASSWORD not in message
    assert iam.calls == 1  # never retry a refused login: IAM locks accounts
    with pytest.raises(AuthFailed) as again:
        await auth.refresh()
    assert PASSWORD not in str(again.value)


async def test_transient_failures_are_retried(iam: FakeIam, session: aiohttp.ClientSession) -> None:
    iam.failures = [(503, {"error_msg": "busy"}), (429, {"error_msg": "slow down"})]
    auth = _password_auth(session, iam, attempts=3)
    assert await _token_of(auth) == "tok-1"
    assert iam.calls == 3

    iam.fail_always = (502, {})
    other = _password_auth(session, iam, attempts=2)
    with pytest.raises(AuthFailed, match="HTTP 502"):
        await _token_of(other)
    assert iam.calls == 5


async def test_missing_subject_token(iam: FakeIam, session: aiohttp.ClientSession) -> None:
    iam.omit_subject = True
    with pytest.raises(AuthFailed, match="without an X-Subject-Token"):
        await _token_of(_password_auth(session, iam))


async def test_unreachable_iam(session: aiohttp.ClientSession) -> None:
    # A port that was just free: nothing listens there.
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    auth = IamPasswordAuth(
        session,
        f"http://127.0.0.1:{port}",
        "alice",
        PASSWORD,
        "acme",
        "proj-1",
        attempts=2,
        retry_delay=0.01,
    )
    with pytest.raises(AuthFailed, match="cannot reach IAM") as info:
        await _token_of(auth)
    assert PASSWORD not in str(info.value)
    # Not chained to aiohttp's exception, whose frames hold the request body.
    assert info.value.__context__ is None
    assert info.value.__cause__ is None


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="IAM password is empty") as info:
        IamPasswordAuth(None, "https://iam.test", "alice", "", "acme", "p")  # type: ignore[arg-type]
    _assert_no_secret(str(info.value))
