"""Resume and replay planning from a ledger: pure folding, a table of cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config import RunOptions
from launcher.ledger.history import JobRecord, fold
from launcher.ledger.writer import Ledger, read_ledger
from launcher.models import Failure, Job, JobParam, Reply
from launcher.run.replay import replay_jobs
from launcher.run.resume import (
    Next,
    current_identity,
    describe_changes,
    identity_changes,
    next_step,
    recorded_identity,
    step_lookup,
)


@pytest.mark.parametrize(
    ("record", "retry_failed", "step"),
    [
        (None, False, Next.SEND),
        (JobRecord(outcome="started"), False, Next.SKIP),
        (JobRecord(outcome="started"), True, Next.SKIP),
        (JobRecord(outcome="failed", permanent=True), False, Next.SKIP),
        (JobRecord(outcome="failed", permanent=True), True, Next.SEND),
        (JobRecord(outcome="failed", permanent=False), False, Next.SEND),  # attempts exhausted
        (JobRecord(outcome="unknown"), False, Next.CHECK),
        (JobRecord(last="intent"), False, Next.CHECK),  # in flight at a crash
        (JobRecord(last="ambiguous"), False, Next.CHECK),
        (JobRecord(last="transient"), False, Next.SEND),
        (JobRecord(last="throttled"), False, Next.SEND),
        (JobRecord(last="not_sent"), False, Next.SEND),
        # Failures of the run, not of the job: sent again without --retry-failed.
        (
            JobRecord(outcome="failed", last="auth_failed", permanent=True, failure="APIGW.0301"),
            False,
            Next.SEND,
        ),
        (
            JobRecord(outcome="failed", last="auth_failed", permanent=True, failure="HTTP 403"),
            False,
            Next.SEND,
        ),
        (JobRecord(outcome="failed", last="refresh_auth", failure="APIGW.0307"), False, Next.SEND),
        (
            JobRecord(outcome="failed", last="permanent", permanent=True, failure="APIGW.0302"),
            False,
            Next.SEND,
        ),
        (
            JobRecord(outcome="failed", last="permanent", permanent=True, failure="tls"),
            False,
            Next.SEND,
        ),
        (
            JobRecord(outcome="failed", last="permanent", permanent=True, failure="dns: no host"),
            False,
            Next.SEND,
        ),
        (JobRecord(outcome="failed", last="transient", failure="connect"), False, Next.SEND),
        (
            JobRecord(outcome="failed", last="auth_failed", permanent=True, failure="APIG.0301"),
            False,
            Next.SEND,
        ),
        (  # 404 API not published: a wrong host or path, the run's endpoint
            JobRecord(outcome="failed", last="permanent", permanent=True, failure="APIGW.0101"),
            False,
            Next.SEND,
        ),
        # ...while the job's own failures stay final, even on a 403.
        (
            JobRecord(outcome="failed", last="auth_failed", permanent=True, failure="DLF.6888"),
            False,
            Next.SKIP,
        ),
        (
            JobRecord(outcome="failed", last="auth_failed", permanent=True, failure="DLF.6888"),
            True,
            Next.SEND,
        ),
        (
            JobRecord(outcome="failed", last="permanent", permanent=True, failure="DLF.0100"),
            False,
            Next.SKIP,
        ),
        (
            JobRecord(outcome="failed", last="permanent", permanent=True, failure="HTTP 404"),
            False,
            Next.SKIP,
        ),
        (
            JobRecord(outcome="failed", last="permanent", permanent=True, failure="APIGW.0308"),
            False,
            Next.SKIP,
        ),
    ],
)
def test_next_step(record: JobRecord | None, retry_failed: bool, step: Next) -> None:
    assert next_step(record, retry_failed=retry_failed) is step


def job(name: str, workspace: str | None = "ws1") -> Job:
    return Job(
        id=f"id-{name}",
        name=name,
        params=(JobParam("d", "1", "variable"),),
        workspace=workspace,
        project_id="p1",
    )


def write_history(path: Path) -> None:
    ledger = Ledger(path, fsync="never")
    ledger.header({"run_id": "r1", "manifest": {"sha256": "abc", "jobs": 5}})
    for name, reply, verdict, outcome in [
        ("ok", Reply(204, 0.0), "started", "started"),
        ("gone", Reply(400, 0.0, error_code="DLF.0100"), "permanent", "failed"),
        ("busy", Reply(503, 0.0), "transient", None),
        ("lost", Reply(None, 1.0, failure=Failure.TIMEOUT), "ambiguous", None),
    ]:
        ledger.intent(job(name), 1, "start")
        ledger.result(job(name), 1, reply, verdict, outcome)
    ledger.intent(job("crashed", None), 1, "start")  # no result: killed in flight
    ledger.close()


def test_fold_keeps_what_resume_needs(tmp_path: Path) -> None:
    write_history(tmp_path / "l.jsonl")
    folded = fold([read_ledger(tmp_path / "l.jsonl")])
    ids = ["id-ok", "id-gone", "id-busy", "id-lost", "id-crashed"]
    steps = {k: next_step(folded.record(k), retry_failed=False) for k in ids}
    assert steps == {
        "id-ok": Next.SKIP,
        "id-gone": Next.SKIP,
        "id-busy": Next.SEND,
        "id-lost": Next.CHECK,
        "id-crashed": Next.CHECK,
    }
    assert folded.job_count == 5
    assert folded.record("id-never") is None
    assert "id-ok" in folded
    assert "id-never" not in folded
    # The by-id lookup a resume uses agrees with next_step on decoded records.
    step = step_lookup(folded, retry_failed=False)
    assert {k: step(k) for k in [*ids, "id-never"]} == {**steps, "id-never": Next.SEND}
    assert folded.manifest_sha256 == "abc"
    crashed = folded.record("id-crashed")
    assert crashed is not None
    assert crashed.last_intent_t > 0
    # The default fold keeps no job ids: listing jobs needs keep=...
    with pytest.raises(ValueError, match="keep"):
        next(folded.items())


def test_replay_rebuilds_jobs_with_project_and_workspace_remapped(tmp_path: Path) -> None:
    write_history(tmp_path / "l.jsonl")
    folded = fold([read_ledger(tmp_path / "l.jsonl")], keep=frozenset({"descriptions"}))
    lines = list(
        replay_jobs(
            folded,
            only=frozenset({"started", "unknown"}),
            project_id="pdr",
            workspace_map={"ws1": "dr1"},
        )
    )
    assert [line["name"] for line in lines] == ["ok", "lost", "crashed"]
    assert lines[0] == {
        "id": "id-ok",
        "name": "ok",
        "params": [{"name": "d", "value": "1", "paramType": "variable"}],
        "workspace": "dr1",
        "project_id": "pdr",
    }
    assert "workspace" not in lines[2]  # the default workspace stays the default


@pytest.mark.parametrize(
    ("header", "changes"),
    [
        ({}, []),  # an old header records nothing: nothing to compare
        ({"endpoint": "https://a/", "simulator": False}, []),  # trailing slash
        ({"endpoint": "https://b", "simulator": False}, [("endpoint", "https://b", "https://a")]),
        (
            {"endpoint": "http://127.0.0.1:9", "simulator": True},
            [("endpoint", "sim", "https://a")],
        ),
        (
            {"options": {"project_id": "p1", "workspace": None, "action": "start"}, "shard": None},
            [],
        ),
        ({"options": {"project_id": "p0"}}, [("project_id", "p0", "p1")]),
        ({"options": {"action": "stop"}}, [("action", "stop", "start")]),
        ({"options": {"workspace": "w"}}, [("workspace", "w", None)]),
        ({"shard": "1/2"}, [("shard", "1/2", None)]),
    ],
)
def test_identity_changes(
    header: dict[str, object], changes: list[tuple[str, object, object]]
) -> None:
    current = current_identity(RunOptions(project_id="p1"), "https://a")
    assert identity_changes(recorded_identity(header), current) == changes


def test_described_changes_never_show_a_password() -> None:
    text = describe_changes([("endpoint", "https://u:secret@a", "https://b")])
    assert "secret" not in text
    assert text.endswith("-> https://b")
