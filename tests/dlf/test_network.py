"""The client on real networks: a real forward proxy (tinyproxy), TLS with a private CA
(trustme), and the HTTP edges of real servers (100 Continue, close-delimited answers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from net_helpers import TlsFiles, tinyproxy, tls_files

from launcher.dlf.auth import Auth, NoAuth
from launcher.dlf.client import DlfClient
from launcher.dlf.iam import IamPasswordAuth
from launcher.dlf.proxy import ProxySettings
from launcher.errors import AuthFailed, UsageError
from launcher.flow.policy import Verdict, classify
from launcher.models import Failure, Job, JobParam
from launcher.simulator import IamUser, SimConfig, running

pytestmark = pytest.mark.anyio

JOBS = [Job(str(n), f"job-{n}", (), None, "p1") for n in range(30)]
USER = IamUser("alice", "pa:ss-word", "acme")


def no_auth(_: Callable[[], aiohttp.ClientSession]) -> Auth:
    return NoAuth()


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return tls_files(tmp_path)


def tls_config(files: TlsFiles, **kw: object) -> SimConfig:
    return SimConfig(tls_cert=str(files.cert), tls_key=str(files.key), **kw)  # type: ignore[arg-type]


# -- TLS ----------------------------------------------------------------------------


async def test_an_untrusted_certificate_is_a_named_tls_failure_and_nothing_is_sent(
    tls: TlsFiles,
) -> None:
    async with running(tls_config(tls)) as (sim, url):
        assert url.startswith("https://")
        async with DlfClient(url, no_auth, concurrency=4, timeout=5) as client:
            reply = await client.call(JOBS[0], "start")
    assert reply.status is None
    assert reply.failure is Failure.TLS
    assert reply.detail is not None
    assert "not trusted" in reply.detail
    assert "certificate" in reply.detail
    assert classify(reply) is Verdict.TLS_FAILED
    assert sim.stats.requests == 0


async def test_a_host_name_mismatch_is_a_named_tls_failure(tmp_path: Path) -> None:
    files = tls_files(tmp_path, "dlf.example.test")  # trusted CA, other host name
    async with (
        running(tls_config(files)) as (sim, url),
        DlfClient(url, no_auth, concurrency=4, timeout=5, ca_bundle=str(files.ca)) as client,
    ):
        reply = await client.call(JOBS[0], "start")
    assert reply.failure is Failure.TLS
    assert reply.detail is not None
    assert "mismatch" in reply.detail.lower() or "hostname" in reply.detail.lower()
    assert sim.stats.requests == 0


async def test_ca_bundle_makes_a_private_ca_trusted(tls: TlsFiles) -> None:
    async with (
        running(tls_config(tls)) as (sim, url),
        DlfClient(url, no_auth, concurrency=4, timeout=5, ca_bundle=str(tls.ca)) as c,
    ):
        replies = [await c.call(job, "start") for job in JOBS[:5]]
    assert [r.status for r in replies] == [204] * 5
    assert sim.stats.starts[("p1", None, "job-0")] == 1


async def test_iam_login_verifies_the_certificate_even_when_dlf_is_plain_http(
    tls: TlsFiles,
) -> None:
    # DLF on http, IAM on https with a private CA: the password must not go to IAM
    # unless IAM's certificate verifies (it used to be sent with verification off).
    async with (
        running() as (dlf, dlf_url),  # (its own tokens are not IAM's: no checks there)
        running(tls_config(tls, iam_users=(USER,))) as (iam, iam_url),
    ):

        def login(session: Callable[[], aiohttp.ClientSession]) -> Auth:
            return IamPasswordAuth(
                session, iam_url, USER.name, USER.password, USER.domain, "p1", attempts=1
            )

        async with DlfClient(dlf_url, login, concurrency=2, timeout=5) as client:
            with pytest.raises(AuthFailed) as failed:
                await client.authenticate()
        assert "certificate" in str(failed.value)
        assert "--ca-bundle" in str(failed.value)
        assert USER.password not in str(failed.value)
        assert iam.stats.requests == 0

        async with DlfClient(
            dlf_url, login, concurrency=2, timeout=5, ca_bundle=str(tls.ca)
        ) as client:
            await client.authenticate()
            reply = await client.call(JOBS[0], "start")
    assert reply.status == 204
    assert iam.stats.by_route["iam"] == 1
    assert dlf.stats.starts[("p1", None, "job-0")] == 1


# -- proxies ------------------------------------------------------------------------


async def test_https_goes_through_a_connect_tunnel_with_proxy_credentials(
    tmp_path: Path, tls: TlsFiles
) -> None:
    with tinyproxy(tmp_path, user="proxyuser", password="proxy-pass") as proxy:
        proxies = ProxySettings.resolve(None, {"HTTPS_PROXY": proxy.url})
        async with (
            running(tls_config(tls)) as (sim, url),
            DlfClient(
                url, no_auth, concurrency=4, timeout=5, ca_bundle=str(tls.ca), proxies=proxies
            ) as client,
        ):
            assert client.proxy is not None
            assert "proxy-pass" not in client.proxy
            replies = [await client.call(job, "start") for job in JOBS]
            status = await client.job_status(JOBS[0])
        tunnels = proxy.requests("CONNECT 127.0.0.1:")
    assert [r.status for r in replies] == [204] * len(JOBS)
    assert status.state == "SCHEDULING"
    assert sum(sim.stats.starts.values()) == len(JOBS)
    # Keep-alive inside the tunnels: far fewer CONNECTs than requests, at least one.
    assert 1 <= len(tunnels) <= 8


async def test_http_goes_through_the_proxy_in_absolute_form(tmp_path: Path) -> None:
    with tinyproxy(tmp_path, user="u", password="pass-2") as proxy:
        proxies = ProxySettings.resolve(proxy.url, {})
        async with (
            running() as (sim, url),
            DlfClient(url, no_auth, concurrency=4, timeout=5, proxies=proxies) as c,
        ):
            replies = [await c.call(job, "start") for job in JOBS[:10]]
        forwarded = proxy.requests(f"POST {url}/v1/p1/jobs/")
    assert [r.status for r in replies] == [204] * 10
    assert len(forwarded) == 10
    assert sum(sim.stats.starts.values()) == 10


async def test_a_proxy_that_wants_credentials_is_a_connect_failure_without_secrets(
    tmp_path: Path, tls: TlsFiles
) -> None:
    with tinyproxy(tmp_path, user="u", password="right") as proxy:
        wrong = proxy.url.replace(":right@", ":wrong-secret@")
        proxies = ProxySettings.resolve(wrong, {})
        async with (
            running(tls_config(tls)) as (sim, url),
            DlfClient(
                url, no_auth, concurrency=1, timeout=5, ca_bundle=str(tls.ca), proxies=proxies
            ) as client,
        ):
            reply = await client.call(JOBS[0], "start")
    assert reply.failure is Failure.CONNECT
    assert reply.detail is not None
    assert "refused CONNECT" in reply.detail  # (tinyproxy answers 401 there, not 407)
    assert "wrong-secret" not in reply.detail
    assert sim.stats.requests == 0


async def test_no_proxy_sends_matching_hosts_directly(tmp_path: Path) -> None:
    with tinyproxy(tmp_path) as proxy:
        env = {"http_proxy": proxy.url, "NO_PROXY": "example.com, 127.0.0.1"}
        async with (
            running() as (sim, url),
            DlfClient(
                url, no_auth, concurrency=2, timeout=5, proxies=ProxySettings.resolve(None, env)
            ) as client,
        ):
            reply = await client.call(JOBS[0], "start")
        assert proxy.requests() == []
    assert reply.status == 204
    assert sim.stats.requests == 1


async def test_the_iam_login_goes_through_the_same_proxy(tmp_path: Path) -> None:
    with tinyproxy(tmp_path, user="u", password="pw") as proxy:
        async with running(SimConfig(iam_users=(USER,))) as (sim, url):

            def login(session: Callable[[], aiohttp.ClientSession]) -> Auth:
                return IamPasswordAuth(
                    session, url, USER.name, USER.password, USER.domain, "p1", attempts=1
                )

            proxies = ProxySettings.resolve(None, {"HTTP_PROXY": proxy.url})
            async with DlfClient(url, login, concurrency=2, timeout=5, proxies=proxies) as c:
                await c.authenticate()
                reply = await c.call(JOBS[0], "start")
        logins = proxy.requests(f"POST {url}/v3/auth/tokens")
    assert reply.status == 204
    assert len(logins) == 1
    assert sim.stats.by_route["iam"] == 1


# -- HTTP edges ---------------------------------------------------------------------


async def test_interim_100_continue_answers_are_skipped() -> None:
    async with (
        running(SimConfig(continue_100=True, missing_prefix="gone")) as (sim, url),
        DlfClient(url, no_auth, concurrency=2, timeout=5) as client,
    ):
        started = [await client.call(job, "start") for job in JOBS[:5]]
        missing = await client.call(Job("m", "gone-1", (), None, "p1"), "start")
        run = await client.call(JOBS[0], "run-immediate")
    assert [r.status for r in started] == [204] * 5
    assert missing.status == 400
    assert missing.error_code == "DLF.0100"
    assert run.status == 200
    assert isinstance(run.instance_id, int)
    assert sum(sim.stats.starts.values()) == 5


async def test_close_delimited_answers_are_complete_answers() -> None:
    config = SimConfig(close_delimited=True, missing_prefix="gone", fail_503=0.5, seed=3)
    async with (
        running(config) as (sim, url),
        DlfClient(url, no_auth, concurrency=2, timeout=5) as client,
    ):
        replies = [await client.call(job, "start") for job in JOBS]
        missing = await client.call(Job("m", "gone-1", (), None, "p1"), "start")
    statuses = {r.status for r in replies}
    assert statuses == {204, 503}  # every answer read, none taken for a lost one
    assert all(r.failure is None for r in replies)
    assert next(r for r in replies if r.status == 503).error_code == "APIGW.0203"
    assert missing.status == 400
    assert classify(missing) is Verdict.PERMANENT  # was "disconnect", i.e. ambiguous
    assert sim.stats.faults["503"] > 0


@pytest.mark.parametrize("shape", ["flat", "camel", "code", "nested"])
async def test_every_error_body_shape_is_read(shape: str) -> None:
    async with (
        running(SimConfig(error_shape=shape, missing_prefix="gone")) as (_, url),
        DlfClient(url, no_auth, concurrency=1, timeout=5) as client,
    ):
        reply = await client.call(Job("m", "gone-1", (), None, "p1"), "start")
    assert (reply.status, reply.error_code) == (400, "DLF.0100")
    assert reply.error_msg == "The job does not exists."


async def test_a_string_instance_id_is_kept() -> None:
    async with (
        running(SimConfig(instance_id_string=True)) as (_, url),
        DlfClient(url, no_auth, concurrency=1, timeout=5) as client,
    ):
        reply = await client.call(JOBS[0], "run-immediate")
    assert reply.status == 200
    assert isinstance(reply.instance_id, str)
    assert reply.instance_id.isdigit()


async def test_stop_sends_no_body() -> None:
    async with (
        running() as (sim, url),
        DlfClient(url, no_auth, concurrency=1, timeout=5) as client,
    ):
        job = Job("1", "j", (JobParam("bizdate", "2026-11-28"),), None, "p1")
        assert (await client.call(job, "start")).status == 204
        assert (await client.call(job, "stop")).status == 204
    assert sim.stats.stops[("p1", None, "j")] == 1
    assert sim.stats.stop_bodies == 0


async def test_an_unreadable_ca_bundle_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "not.pem"
    bad.write_text("not a certificate")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(UsageError, match="--ca-bundle"):
            async with DlfClient(
                "https://127.0.0.1:9", no_auth, concurrency=1, timeout=5, ca_bundle=str(path)
            ):
                pass
