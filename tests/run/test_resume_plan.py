"""Resume's shortcuts, in process: no re-validation of an unchanged manifest, no
manifest pass when the ledger already settles every job."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import job_lines, write_manifest

from launcher import __version__
from launcher.config import RunOptions
from launcher.ledger.events import RunHeader
from launcher.ledger.history import fold
from launcher.ledger.writer import Ledger, read_ledger
from launcher.manifest.validate import Defaults, file_sha256, iter_jobs
from launcher.models import Reply
from launcher.run import plan as planning
from launcher.run import resume

OPTIONS = RunOptions(project_id="p1", resume=True)


def write_run(
    ledger: Path, manifest: Path, options: RunOptions, *, settle: int, **header: Any
) -> None:
    """A ledger like `launcher run` writes: a header, then `settle` jobs started."""
    jobs = list(iter_jobs(manifest, Defaults(project_id=options.project_id)))
    out = Ledger(ledger, fsync="never")
    out.header(
        {
            "run_id": "r1",
            "segment": 1,
            "version": __version__,
            "manifest": {
                "path": str(manifest.resolve()),
                "sha256": file_sha256(manifest),
                "jobs": len(jobs),
                "total_jobs": len(jobs),
                "format": options.manifest_format,
                "waves": {"0": len(jobs)},
            },
            "shard": options.shard,
            "options": options.public(),
            **header,
        }
    )
    for job in jobs[:settle]:
        out.intent(job, 1, "start")
        out.result(job, 1, Reply(204, 0.01), "started", "started")
    out.close()


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths `planning.validate` was called on (it still validates)."""
    calls: list[str] = []
    real = planning.validate

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(planning, "validate", counting)
    return calls


def latest_header(ledger: Path) -> RunHeader:
    return fold([read_ledger(ledger)]).runs[-1]


def test_an_unchanged_manifest_is_hashed_not_validated(
    tmp_path: Path, validations: list[str]
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(30))
    write_run(tmp_path / "l.jsonl", manifest, OPTIONS, settle=10)
    recorded = latest_header(tmp_path / "l.jsonl")
    plan = planning.plan_manifest(str(manifest), OPTIONS, recorded=recorded)
    assert validations == []
    assert (plan.jobs, plan.validation.jobs, plan.validation.problem_count) == (30, 30, 0)
    assert plan.validation.sha256 == file_sha256(manifest)
    assert plan.validation.waves == {0: 30}


def test_a_header_without_wave_counts_means_a_full_validation(
    tmp_path: Path, validations: list[str]
) -> None:
    """The waves of a reused validation come from the header: without them, validate."""
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(30))
    write_run(tmp_path / "l.jsonl", manifest, OPTIONS, settle=10)
    recorded = replace(latest_header(tmp_path / "l.jsonl"), manifest_waves=None)
    plan = planning.plan_manifest(str(manifest), OPTIONS, recorded=recorded)
    assert validations == [str(manifest)]
    assert plan.validation.waves == {0: 30}


@pytest.mark.parametrize(
    "change",
    [
        {"workspace": "ws9"},  # another default workspace: other identities
        {"project_id": "p2"},
        {"allow_duplicates": True},
        {"manifest_format": "jsonl"},
    ],
)
def test_other_identity_options_mean_a_full_validation(
    tmp_path: Path, validations: list[str], change: dict[str, Any]
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(30))
    write_run(tmp_path / "l.jsonl", manifest, OPTIONS, settle=30)
    now = replace(OPTIONS, **change)
    plan = planning.plan_manifest(str(manifest), now, recorded=latest_header(tmp_path / "l.jsonl"))
    assert validations == [str(manifest)]
    assert plan.jobs == 30


def test_changed_bytes_or_another_version_mean_a_full_validation(
    tmp_path: Path, validations: list[str]
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(30))
    write_run(tmp_path / "l.jsonl", manifest, OPTIONS, settle=30)
    write_run(tmp_path / "old.jsonl", manifest, OPTIONS, settle=30, version="0.0.1")
    planning.plan_manifest(str(manifest), OPTIONS, recorded=latest_header(tmp_path / "old.jsonl"))
    assert len(validations) == 1
    write_manifest(manifest, job_lines(31))
    plan = planning.plan_manifest(
        str(manifest), OPTIONS, recorded=latest_header(tmp_path / "l.jsonl")
    )
    assert len(validations) == 2
    assert plan.jobs == 31


def test_a_shard_takes_its_size_from_the_header_of_the_same_shard(
    tmp_path: Path, validations: list[str]
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(60))
    sharded = replace(OPTIONS, shard="1/3")
    first = planning.plan_manifest(str(manifest), sharded)  # validates, counts the shard
    write_run(tmp_path / "l.jsonl", manifest, sharded, settle=0)
    header = replace(latest_header(tmp_path / "l.jsonl"), manifest_jobs=first.jobs)
    again = planning.plan_manifest(str(manifest), sharded, recorded=header)
    assert validations == [str(manifest)]  # only the first time
    assert again.jobs == first.jobs < 60


def test_nothing_left_skips_the_manifest_pass(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(40))
    ledger = tmp_path / "l.jsonl"
    write_run(ledger, manifest, OPTIONS, settle=40)
    plan = planning.plan_manifest(str(manifest), OPTIONS, recorded=latest_header(ledger))
    segment = resume.plan_segment(str(ledger), plan, OPTIONS, endpoint="sim")
    assert segment.nothing_left
    assert (segment.already_started, segment.already_settled) == (40, 40)
    assert list(segment.to_send(plan.iter_jobs(), retry_failed=False)) == []
    gc.collect()  # an unclosed manifest would warn here (warnings are errors)


def test_an_unsettled_job_means_a_manifest_pass(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(40))
    ledger = tmp_path / "l.jsonl"
    write_run(ledger, manifest, OPTIONS, settle=39)
    plan = planning.plan_manifest(str(manifest), OPTIONS, recorded=latest_header(ledger))
    segment = resume.plan_segment(str(ledger), plan, OPTIONS, endpoint="sim")
    assert not segment.nothing_left
    assert [job.name for job in segment.to_send(plan.iter_jobs(), retry_failed=False)] == [
        "job-0039"
    ]
    prior = segment.prior(retry_failed=False)
    assert prior is not None
    assert prior("never-seen") == (0, None)


def test_a_ledger_of_another_manifest_is_never_taken_as_settling_this_one(
    tmp_path: Path,
) -> None:
    """An earlier segment forced onto other jobs: their count must not stand in for ours."""
    other = write_manifest(tmp_path / "other.jsonl", job_lines(40, prefix="other"))
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(40))
    ledger = tmp_path / "l.jsonl"
    write_run(ledger, other, OPTIONS, settle=40)
    write_run(tmp_path / "forced.jsonl", manifest, OPTIONS, settle=0)
    with open(ledger, "ab") as out:  # then a segment forced onto `manifest`
        out.write((tmp_path / "forced.jsonl").read_bytes())
    plan = planning.plan_manifest(str(manifest), OPTIONS, recorded=latest_header(ledger))
    segment = resume.plan_segment(str(ledger), plan, OPTIONS, endpoint="sim")
    assert not segment.nothing_left
    assert len(list(segment.to_send(plan.iter_jobs(), retry_failed=False))) == 40
