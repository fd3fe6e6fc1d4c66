"""Resume's shortcuts, in process: no re-validation of an unchanged manifest, no
manifest pass when the ledger already settles every job."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import job_lines, write_manifest, write_run

from launcher.config import RunOptions
from launcher.ledger import RunHeader, fold, read_ledger
from launcher.manifest.validate import file_sha256
from launcher.run import plan as planning
from launcher.run import resume

OPTIONS = RunOptions(project_id="p1", resume=True)


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


def test_wave_counts_come_from_the_manifest_never_from_the_header(
    tmp_path: Path, validations: list[str]
) -> None:
    """A header's wave counts are a claim: waves are the manifest's own."""
    plain = write_manifest(tmp_path / "m.jsonl", job_lines(30))
    write_run(tmp_path / "l.jsonl", plain, OPTIONS, settle=10)
    # (or any count: not read)
    recorded = replace(latest_header(tmp_path / "l.jsonl"), manifest_waves=None)
    plan = planning.plan_manifest(str(plain), OPTIONS, recorded=recorded)
    assert validations == []  # no line can name a wave: all 30 in wave 0, from the bytes
    assert plan.validation.waves == {0: 30}
    waved = write_manifest(
        tmp_path / "w.jsonl", job_lines(10) + job_lines(20, prefix="late", wave=1)
    )
    write_run(tmp_path / "w-l.jsonl", waved, OPTIONS, settle=0)
    # forged: one wave, so no gate
    recorded = replace(latest_header(tmp_path / "w-l.jsonl"), manifest_waves={"0": 30})
    plan = planning.plan_manifest(str(waved), OPTIONS, recorded=recorded)
    assert validations == [str(waved)]  # a line names a wave: validated, and counted
    assert plan.validation.waves == {0: 10, 1: 20}


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


def test_a_shard_counts_its_size_from_the_manifest_not_the_header(
    tmp_path: Path, validations: list[str]
) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", job_lines(60))
    sharded = replace(OPTIONS, shard="1/3")
    first = planning.plan_manifest(str(manifest), sharded)  # validates, counts the shard
    write_run(tmp_path / "l.jsonl", manifest, sharded, settle=0)
    # a forged claim: the shard's jobs are counted
    header = replace(latest_header(tmp_path / "l.jsonl"), manifest_jobs=1)
    again = planning.plan_manifest(str(manifest), sharded, recorded=header)
    assert validations == [str(manifest)]  # only the first time
    assert again.jobs == first.jobs < 60
    assert again.jobs > 1


@pytest.mark.parametrize(
    ("name", "text", "jobs"),
    [
        ("m.jsonl", b'\xef\xbb\xbf{"name":"a"}\n\n  # c\n\t\n{"name":"b"}\n  {"name":"c"}', 3),
        ("m.csv", b'name,param:d\n# c\n\n,\na,1\nb,"2\n# in a cell"\n', 2),
    ],
)
def test_the_count_of_an_unchanged_manifest_is_its_own(
    tmp_path: Path, validations: list[str], name: str, text: bytes, jobs: int
) -> None:
    manifest = tmp_path / name
    manifest.write_bytes(text)
    assert planning.plan_manifest(str(manifest), OPTIONS).jobs == jobs  # validated
    write_run(tmp_path / "l.jsonl", manifest, OPTIONS, settle=0)
    forged = latest_header(tmp_path / "l.jsonl")
    header = replace(forged, manifest_total_jobs=1000, manifest_jobs=1000)
    plan = planning.plan_manifest(str(manifest), OPTIONS, recorded=header)
    assert validations == [str(manifest)]  # the resume counted, did not validate
    assert (plan.jobs, plan.validation.jobs) == (jobs, jobs)


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
