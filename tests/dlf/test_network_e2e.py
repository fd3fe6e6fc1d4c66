"""End to end over real networks: the CLI in a subprocess, the simulator over TLS with a
private CA, a real forward proxy, and a gateway that answers 504 after doing the work."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import (
    clean_env,
    job_lines,
    launcher,
    ledger_events,
    report_json,
    write_manifest,
)
from net_helpers import tinyproxy, tls_files

from launcher.simulator import SimConfig, running

pytestmark = pytest.mark.anyio

AK, SK = "NETACCESSKEY0000", "net-secret-key-never-printed"


def env(**extra: str) -> dict[str, str]:
    base = clean_env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        base.pop(name, None)
    base.update(extra)
    return base


async def test_an_untrusted_certificate_stops_the_run_and_sends_nothing(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(50))
    ledger = tmp_path / "l.jsonl"
    config = SimConfig(aksk={AK: SK}, tls_cert=str(files.cert), tls_key=str(files.key))
    async with running(config) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--ledger", str(ledger), env=env(),
        )  # fmt: skip
    assert done.code == 3, done.stderr
    assert "certificate" in done.stderr
    assert "--ca-bundle" in done.stderr
    assert sim.stats.requests == 0
    report = report_json(ledger)
    assert report["outcomes"]["started"] == 0
    assert report["outcomes"]["pending"] == 50
    details = {e.get("detail") for e in ledger_events(ledger) if e.get("event") == "result"}
    assert len(details) == 1
    assert "not trusted" in str(details.pop())


async def test_through_a_connect_proxy_and_directly_every_job_starts_once(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    config = SimConfig(aksk={AK: SK}, tls_cert=str(files.cert), tls_key=str(files.key))
    proxied = write_manifest(tmp_path / "a.jsonl", job_lines(400, prefix="via-proxy"))
    direct = write_manifest(tmp_path / "b.jsonl", job_lines(300, prefix="direct"))
    with tinyproxy(tmp_path, user="proxyuser", password="proxy-secret") as proxy:
        async with running(config) as (sim, url):
            common = ("--endpoint", url, "--project-id", "p1", "--rate", "0",
                      "--concurrency", "32", "--ca-bundle", str(files.ca))  # fmt: skip
            via = await launcher(
                "run", str(proxied), *common, "--ledger", str(tmp_path / "a.l"),
                env=env(HTTPS_PROXY=proxy.url),
            )  # fmt: skip
            tunnels = len(proxy.requests("CONNECT"))
            straight = await launcher(
                "run", str(direct), *common, "--ledger", str(tmp_path / "b.l"),
                env=env(HTTPS_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.1"),
            )  # fmt: skip
            after = len(proxy.requests("CONNECT"))
    assert via.code == 0, via.stderr
    assert straight.code == 0, straight.stderr
    assert 1 <= tunnels <= 40  # the pool's connections, not one per job
    assert after == tunnels  # NO_PROXY: none of the second run went through the proxy
    assert sim.stats.bad_signatures == 0
    for prefix, count in (("via-proxy", 400), ("direct", 300)):
        for n in range(count):
            assert sim.stats.took_effect("start", "p1", f"{prefix}-{n:04d}") == 1
    for output in (via.stdout + via.stderr, straight.stdout + straight.stderr):
        assert "proxy-secret" not in output
    for ledger in (tmp_path / "a.l", tmp_path / "b.l"):
        assert b"proxy-secret" not in ledger.read_bytes()


async def test_run_immediate_through_504s_and_lost_answers_runs_each_job_once(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(400))
    ledger = tmp_path / "l.jsonl"
    config = SimConfig(fail_504_after=0.05, reset_after=0.05, fail_503=0.02, seed=7)
    async with running(config) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--action", "run-immediate", "--concurrency", "32", "--backoff-base", "0.01",
            "--backoff-cap", "0.05", "--ledger", str(ledger), env=env(),
        )  # fmt: skip
    assert sim.stats.faults["504_after"] > 0
    assert sim.stats.faults["reset_after"] > 0
    runs = [sim.stats.took_effect("run-immediate", "p1", f"job-{n:04d}") for n in range(400)]
    assert max(runs) == 1, "a job ran twice"
    report = report_json(ledger)
    # Every 504 and lost answer was settled by the instance list, never by a resend.
    assert report["outcomes"]["started"] == sum(runs)
    assert report["outcomes"]["failed"] == 0
    assert done.code in (0, 1), done.stderr
    assert sum(runs) + report["outcomes"]["unknown"] + report["outcomes"]["pending"] == 400


async def test_start_after_a_504_checks_the_job_before_any_resend(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(200))
    ledger = tmp_path / "l.jsonl"
    config = SimConfig(fail_504_after=0.1, seed=11)
    async with running(config) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--backoff-base", "0.01", "--backoff-cap", "0.05", "--ledger", str(ledger),
            env=env(),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert all(sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1 for n in range(200))
    assert sim.stats.by_route["jobs"] >= sim.stats.faults["504_after"] > 0
    checks = [e for e in ledger_events(ledger) if e.get("event") == "check"]
    assert {e["conclusion"] for e in checks} == {"took_effect"}


async def test_an_unknown_region_is_a_usage_error(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(1))
    done = await launcher(
        "run", str(manifest), "--region", "cn-north4", "--project-id", "p1",
        "--ledger", str(tmp_path / "l.jsonl"), env=env(),
    )  # fmt: skip
    assert done.code == 2
    assert "did you mean cn-north-4" in done.stderr
    assert "--endpoint" in done.stderr


async def test_failures_without_an_answer_are_grouped_by_their_reason(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(3))
    ledger = tmp_path / "l.jsonl"
    done = await launcher(
        "run", str(manifest), "--endpoint", f"http://127.0.0.1:{port}", "--project-id", "p1",
        "--max-attempts", "1", "--no-canary", "--ledger", str(ledger), env=env(),
    )  # fmt: skip
    assert done.code == 1, done.stderr
    report = report_json(ledger)
    assert report["outcomes"]["failed"] == 3
    [(key, count)] = report["failed_by_code"].items()
    assert count == 3
    assert key.startswith("connect: cannot connect to 127.0.0.1:")


async def test_snapshot_lists_over_tls_through_the_proxy_flag(tmp_path: Path) -> None:
    # snapshot takes run's connection options: --proxy (with credentials, never shown),
    # --ca-bundle, AK/SK; the pages go through the proxy's tunnel.
    files = tls_files(tmp_path)
    jobs = [f"listed-{n:03d}" for n in range(120)]
    config = SimConfig(
        aksk={AK: SK},
        tls_cert=str(files.cert),
        tls_key=str(files.key),
        known_jobs=frozenset(jobs),
    )
    snap = tmp_path / "snap.jsonl"
    with tinyproxy(tmp_path, user="proxyuser", password="proxy-secret") as proxy:
        async with running(config) as (sim, url):
            done = await launcher(
                "snapshot", "--endpoint", url, "--project-id", "p1", "--rate", "0",
                "--ca-bundle", str(files.ca), "--proxy", proxy.url, "--workspace", "ws1",
                "--output", str(snap), env=env(),
            )  # fmt: skip
            tunnels = len(proxy.requests("CONNECT"))
    assert done.code == 0, done.stderr
    assert tunnels >= 1  # through the proxy, not around it
    assert sim.stats.bad_signatures == 0
    listed = [line for line in snap.read_bytes().splitlines() if line]
    assert len(listed) == len(jobs)
    assert "proxy-secret" not in done.stdout + done.stderr
