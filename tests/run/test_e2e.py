"""End to end: the real CLI in a subprocess against the simulator over real sockets."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
from launch_helpers import (
    clean_env,
    job_lines,
    launcher,
    ledger_events,
    report_json,
    signal_when_started,
    write_manifest,
)

from launcher.ledger.check import problem
from launcher.ledger.events import CheckEvent, EndFields, IntentEvent, ResultEvent, RunFields
from launcher.models import NOT_SENT, Conclusion, Outcome, Verdict
from launcher.simulator import IamUser, SimConfig, running

# Each kind's type (`launcher.ledger.events`), and the keys the writer adds to it.
_TYPED: dict[str, tuple[Any, frozenset[str]]] = {
    "run": (RunFields, frozenset({"event", "t"})),
    "intent": (IntentEvent, frozenset()),
    "result": (ResultEvent, frozenset()),
    "check": (CheckEvent, frozenset()),
    "end": (EndFields, frozenset({"event", "t"})),
}


def assert_events_are_their_types(events: list[dict[str, Any]]) -> None:
    """Every event a run wrote has exactly the keys its TypedDict declares (the required
    ones all there), its words from the vocabulary, and passes the reader's check."""
    assert {event["event"] for event in events} >= _TYPED.keys()  # every typed kind met
    for event in events:
        if event["event"] not in _TYPED:  # a fleet's records, ...: not typed here
            continue
        typed, added = _TYPED[event["event"]]
        required = typed.__required_keys__ | added
        assert required <= event.keys() <= required | typed.__optional_keys__, event
        assert problem(event) is None, event
        if "verdict" in event:
            assert event["verdict"] in {*Verdict, NOT_SENT}
        if "outcome" in event:
            assert event["outcome"] in get_args(Outcome)
        if "conclusion" in event:
            assert event["conclusion"] in get_args(Conclusion)


pytestmark = pytest.mark.anyio

AK, SK = "E2EACCESSKEY0000", "e2e-secret-key-never-printed"


async def test_signed_bulk_run_with_missing_jobs(tmp_path: Path) -> None:
    """2,000 real jobs start exactly once; 20 missing ones fail with DLF.0100; exit 1."""
    manifest = write_manifest(
        tmp_path / "m.jsonl", job_lines(2000) + job_lines(20, prefix="missing")
    )
    ledger = tmp_path / "l.jsonl"
    config = SimConfig(aksk={AK: SK}, missing_prefix="missing-")
    async with running(config) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1",
            "--rate", "0", "--concurrency", "64", "--ledger", str(ledger),
            env=clean_env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK),
        )  # fmt: skip
    assert done.code == 1, done.stderr
    assert sim.stats.bad_signatures == 0
    for n in range(2000):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
    report = report_json(ledger)
    assert report["jobs"] == 2020
    assert report["outcomes"] == {"started": 2000, "failed": 20, "unknown": 0, "pending": 0}
    assert report["failed_by_code"] == {"DLF.0100": 20}
    failed = [e for e in ledger_events(ledger) if e.get("outcome") == "failed"]
    assert {e["error_code"] for e in failed} == {"DLF.0100"}
    cli_report = await launcher("report", str(ledger), "--format", "json")
    assert orjson.loads(cli_report.stdout)["outcomes"] == report["outcomes"]
    assert "DLF.0100" in done.stdout  # the summary names the failure


async def test_wrong_secret_key_stops_after_one_rejected_request(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(1000))
    async with running(SimConfig(aksk={AK: SK})) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--concurrency", "64", "--ledger", str(tmp_path / "l.jsonl"),
            env=clean_env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK="not-the-secret"),
        )  # fmt: skip
    assert done.code == 3
    assert "authentication failed" in done.stderr
    assert sim.stats.bad_signatures <= 2
    assert sim.stats.locked_out == 0


@pytest.mark.parametrize(
    "name", ["a/b", "..", ".", "what?", "x#y", "with space", "zürich-日本", "~tilde", "%41"]
)
async def test_any_job_name_reaches_the_service_as_one_segment(tmp_path: Path, name: str) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", [{"name": name, "workspace": "ws-1"}])
    async with running(SimConfig(aksk={AK: SK})) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1",
            "--ledger", str(tmp_path / "l.jsonl"),
            env=clean_env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK),
        )  # fmt: skip
    assert done.code == 0, done.stderr + done.stdout
    assert sim.stats.took_effect("start", "p1", name, "ws-1") == 1


BAD_MANIFESTS = {
    "missing-name": ('{"params": {}}\n', "m.jsonl:1: name:"),
    "number-param": ('{"name": "a"}\n{"name": "b", "params": {"d": 5}}\n', "m.jsonl:2: params.d:"),
    "typo": ('{"name": "a", "parmas": {}}\n', "m.jsonl:1: parmas:"),
    "crlf-workspace": ('{"name": "a", "workspace": "w\\r\\nX: y"}\n', "m.jsonl:1: workspace:"),
    "bad-type": ('{"name": "a", "params": [{"name": "d", "value": "1", "paramType": "x"}]}\n',
                 "m.jsonl:1: params[0].paramType:"),
    "duplicate": ('{"name": "a"}\n{"name": "a"}\n', "m.jsonl:2:"),
    "long-value": ('{"name": "a", "params": {"d": "' + "v" * 1025 + '"}}\n',
                   "m.jsonl:1: params.d:"),
    "not-json": ('{"name": "a"}\n{name: b}\n', "m.jsonl:2:"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
async def test_bad_input_exits_2_naming_the_line_and_sends_nothing(
    tmp_path: Path, case: str
) -> None:
    text, expected = BAD_MANIFESTS[case]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(text)
    async with running() as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1",
            "--ledger", str(tmp_path / "l.jsonl"),
        )  # fmt: skip
        validated = await launcher("validate", str(manifest))
    assert done.code == 2
    assert expected in done.stderr
    assert validated.code == 2
    assert expected in validated.stderr
    assert sim.stats.requests == 0
    assert not (tmp_path / "l.jsonl").exists()


async def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"name": "a"}\n{"name": "\xff"}\n')
    done = await launcher("validate", str(manifest))
    assert done.code == 2
    assert "m.jsonl:2:" in done.stderr
    assert "UTF-8" in done.stderr


async def test_first_twenty_errors_are_listed_and_the_rest_counted(tmp_path: Path) -> None:
    lines = [{"name": f"j{n}", "parmas": {}} for n in range(30)]  # one error per line
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    done = await launcher("validate", str(manifest))
    assert done.code == 2
    assert "m.jsonl:20:" in done.stderr
    assert "m.jsonl:21:" not in done.stderr
    assert "more" in done.stderr


async def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    typed = {"name": "typed", "params": [{"name": "m", "value": "full", "paramType": "constants"}]}
    manifest = write_manifest(tmp_path / "m.jsonl", [typed, *job_lines(30, workspace="ws-9")])
    async with running() as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--dry-run"
        )
    assert done.code == 0
    assert '"paramType":"constants"' in done.stdout  # the body exactly as a run sends it
    assert "/v1/p1/jobs/job-0000/start workspace=ws-9" in done.stdout
    assert "11 more" in done.stdout
    assert sim.stats.requests == 0


async def test_faults_end_with_every_job_started_exactly_once(tmp_path: Path) -> None:
    """5xx, 429, resets before and after processing, slow answers: exit 0, no duplicates."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(600))
    ledger = tmp_path / "l.jsonl"
    config = SimConfig(
        fail_503=0.05, fail_500=0.03, fail_429=0.05, reset_before=0.03, reset_after=0.03,
        slow_fraction=0.02, slow_seconds=1.5, seed=11,
    )  # fmt: skip
    async with running(config) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--no-adaptive", "--timeout", "1", "--max-attempts", "6",
            "--backoff-base", "0.01", "--ledger", str(ledger), "--settle", "0.1",
        )  # fmt: skip
    # (No fault here applies a call late: a short --settle window is safe, and keeps the
    # retries after "not taken" among the successes that refund the retry budget.)
    assert done.code == 0, done.stdout + done.stderr
    for n in range(600):
        assert sim.stats.took_effect("start", "p1", f"job-{n:04d}") == 1
    report = report_json(ledger)
    assert report["outcomes"]["started"] == 600
    assert report["reconciled"] >= 1  # lost answers were settled by a status check
    checks = [e for e in ledger_events(ledger) if e["event"] == "check"]
    assert {"took_effect", "not_taken"} <= {c["conclusion"] for c in checks}
    assert_events_are_their_types(ledger_events(ledger))


async def test_adaptive_rate_finds_an_unknown_server_limit(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(1200))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(rate_limit=300)) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
            "--max-attempts", "20", "--ledger", str(ledger),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert sum(sim.stats.starts.values()) == 1200  # every job, each once
    throttled = sim.stats.rate_limited
    assert throttled / sim.stats.requests < 0.10  # the limit was found, not hammered
    # How close goodput comes to the limit is a timing, measured where timings belong:
    # benchmarks/flow.py (and, with an injected clock, tests/flow/test_adaptive.py).


async def test_pacing_never_exceeds_the_rate(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(400))
    async with running() as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "200/s",
            "--ledger", str(tmp_path / "l.jsonl"),
        )  # fmt: skip
    assert done.code == 0
    assert sim.stats.achieved_rate() <= 200 * 1.03
    # rate/10 is 20; a margin for a busy CI machine, where timers fire late.
    assert sim.stats.busiest_window(0.1) <= 28


async def test_halt_threshold_stops_dispatching_with_exit_3(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(300, prefix="missing"))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(missing_prefix="missing-")) as (_sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "100/s",
            "--halt", "fail=5", "--concurrency", "4", "--ledger", str(ledger),
        )  # fmt: skip
    assert done.code == 3
    assert "fail=5" in done.stderr
    report = report_json(ledger)
    assert report["outcomes"]["failed"] >= 5
    assert report["outcomes"]["pending"] > 200


async def test_deadline_leaves_unsent_jobs_pending_and_exits_1(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(300))
    ledger = tmp_path / "l.jsonl"
    async with running() as (_sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "100/s",
            "--deadline", "1s", "--ledger", str(ledger),
        )  # fmt: skip
    assert done.code == 1
    report = report_json(ledger)
    assert report["outcomes"]["pending"] > 100
    assert report["outcomes"]["started"] + report["outcomes"]["pending"] == 300
    assert report["stop_reasons"] == ["deadline"]


async def test_sigint_stops_gracefully_records_everything_and_exits_130(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(2000))
    ledger = tmp_path / "l.jsonl"
    async with running(SimConfig(latency=0.05)) as (sim, url):
        code = await signal_when_started(
            sim, 100, signal.SIGINT, "run", str(manifest), "--endpoint", url,
            "--project-id", "p1", "--rate", "200/s", "--ledger", str(ledger),
        )  # fmt: skip
    assert code == 130
    report = report_json(ledger)
    assert report["outcomes"]["unknown"] == 0  # in-flight requests were waited for
    started = report["outcomes"]["started"]
    assert started == sum(sim.stats.starts.values())
    assert started + report["outcomes"]["pending"] == 2000
    assert ledger_events(ledger)[-1]["reason"] == "interrupted"


HAS_DEV_FULL = Path("/dev/full").exists()
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not HAS_DEV_FULL, reason="no /dev/full to stand for a full disk")
async def test_a_device_as_ledger_sends_nothing_and_exits_2(tmp_path: Path) -> None:
    # /dev/full fails every write: a ledger must be a regular file, refused before sending.
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(10))
    async with running() as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--ledger", "/dev/full"
        )
    assert done.code == 2
    assert "/dev/full: not a regular file" in done.stderr
    assert sim.stats.requests == 0


async def test_demo_config_runs_against_the_embedded_simulator(tmp_path: Path) -> None:
    done = await launcher(
        "run", str(ROOT / "configs/demo.jsonl"), "--config", str(ROOT / "configs/demo.toml"),
        "--ledger", str(tmp_path / "demo.jsonl"),
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert "started   300" in done.stdout


async def test_iam_token_expiring_mid_run_is_renewed(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(400))
    user = IamUser("ops", "pw-e2e", "acme")
    env = clean_env(
        HUAWEICLOUD_IAM_USERNAME="ops", HUAWEICLOUD_IAM_PASSWORD="pw-e2e",
        HUAWEICLOUD_IAM_DOMAIN="acme",
    )  # fmt: skip
    async with running(SimConfig(iam_users=(user,), token_ttl=1.0)) as (sim, url):
        done = await launcher(
            "run", str(manifest), "--endpoint", url, "--iam-endpoint", url,
            "--project-id", "p1", "--rate", "200/s", "--ledger", str(tmp_path / "l.jsonl"),
            env=env,
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert sim.stats.by_route["iam"] >= 2  # logged in again before (or when) it expired
    assert sum(sim.stats.starts.values()) == 400


async def test_per_workspace_limits_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('rate = "0"\n[workspaces."ws-slow"]\nrate = "20/s"\nconcurrency = 2\n')
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        job_lines(20, prefix="slow", workspace="ws-slow")
        + job_lines(200, prefix="fast", workspace="ws-fast"),
    )
    ledger = tmp_path / "l.jsonl"
    async with running() as (_sim, url):
        done = await launcher(
            "run", str(manifest), "--config", str(config), "--endpoint", url,
            "--project-id", "p1", "--ledger", str(ledger),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    intents = [e for e in ledger_events(ledger) if e["event"] == "intent"]
    slow = [e["t"] for e in intents if e["workspace"] == "ws-slow"]
    fast = [e["t"] for e in intents if e["workspace"] == "ws-fast"]
    assert max(slow) - min(slow) >= 19 / 20 * 0.97  # paced at 20/s
    assert max(fast) - min(fast) < 0.9  # the other workspace was not held back
