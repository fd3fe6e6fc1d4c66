"""Replay into another project and workspace; reports as CSV, filtered, broken down."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest
from launch_helpers import job_lines, launcher, report_json, write_manifest

from launcher.simulator import SimConfig, running

pytestmark = pytest.mark.anyio

MISSING = SimConfig(missing_prefix="missing-")


def append_torn_line(ledger: Path) -> None:
    with open(ledger, "ab") as handle:
        handle.write(b'{"event":"intent","job":"x","attempt":1,"t":1.0,"na')  # mid-write


async def first_run(tmp_path: Path, url: str) -> Path:
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        job_lines(30, workspace="ws1")
        + job_lines(10, prefix="other", workspace="ws2")
        + job_lines(5, prefix="missing", workspace="ws1"),
    )
    ledger = tmp_path / "l.jsonl"
    done = await launcher(
        "run", str(manifest), "--endpoint", url, "--project-id", "p1", "--rate", "0",
        "--ledger", str(ledger),
    )  # fmt: skip
    assert done.code == 1  # the missing ones failed
    return ledger


async def test_replay_only_started_into_another_project_with_remapped_workspace(
    tmp_path: Path,
) -> None:
    async with running(MISSING) as (sim, url):
        source = await first_run(tmp_path, url)
        sim.stats.reset()
        replay_ledger = tmp_path / "replay.jsonl"
        done = await launcher(
            "replay", str(source), "--endpoint", url, "--only", "started",
            "--project-id", "pdr", "--map-workspace", "ws1=dr1", "--rate", "0",
            "--ledger", str(replay_ledger),
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert sum(sim.stats.starts.values()) == 40
    for n in range(30):
        assert sim.stats.took_effect("start", "pdr", f"job-{n:04d}", "dr1") == 1
    for n in range(10):
        assert sim.stats.took_effect("start", "pdr", f"other-{n:04d}", "ws2") == 1
    assert not any(key[0] == "p1" for key in sim.stats.starts)
    report = report_json(replay_ledger)
    assert report["outcomes"]["started"] == 40
    assert report["jobs"] == 40
    manifest = tmp_path / "replay.manifest.jsonl"
    first = orjson.loads(manifest.read_bytes().splitlines()[0])
    assert first["project_id"] == "pdr"


async def test_replay_rejects_bad_arguments(tmp_path: Path) -> None:
    async with running(MISSING) as (_sim, url):
        source = await first_run(tmp_path, url)
        bad_only = await launcher("replay", str(source), "--endpoint", url, "--only", "done")
        bad_map = await launcher("replay", str(source), "--endpoint", url, "--map-workspace", "ws1")
    assert bad_only.code == 2
    assert "--only" in bad_only.stderr
    assert bad_map.code == 2
    assert "OLD=NEW" in bad_map.stderr


async def test_report_csv_filter_and_breakdowns(tmp_path: Path) -> None:
    async with running(MISSING) as (_sim, url):
        ledger = await first_run(tmp_path, url)
    rows_text = await launcher("report", str(ledger), "--format", "csv", "--outcome", "failed")
    rows = list(csv.DictReader(io.StringIO(rows_text.stdout)))
    assert len(rows) == 5
    assert {row["error_code"] for row in rows} == {"DLF.0100"}
    assert {row["workspace"] for row in rows} == {"ws1"}
    assert rows[0]["name"].startswith("missing-")
    everything = await launcher("report", str(ledger), "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(everything.stdout)))) == 45
    as_json = orjson.loads((await launcher("report", str(ledger), "--format", "json")).stdout)
    assert as_json["by_workspace"]["ws1"] == {
        "started": 30, "failed": 5, "unknown": 0, "pending": 0
    }  # fmt: skip
    assert as_json["failed_by_code"] == {"DLF.0100": 5}
    text = await launcher("report", str(ledger), "--outcome", "failed")
    assert "by workspace" in text.stdout
    assert "missing-0000 [ws1]  DLF.0100" in text.stdout


async def test_report_reads_a_ledger_that_is_still_being_written(tmp_path: Path) -> None:
    async with running(MISSING) as (_sim, url):
        ledger = await first_run(tmp_path, url)
    append_torn_line(ledger)
    done = await launcher("report", str(ledger), "--format", "json")
    assert done.code == 1  # five jobs failed (DLF.0100): not every job started
    assert orjson.loads(done.stdout)["torn_tail"] == [str(ledger)]


async def test_reports_of_several_ledgers_merge_and_flag_overlaps(tmp_path: Path) -> None:
    async with running(MISSING) as (_sim, url):
        a = tmp_path / "a"
        b = tmp_path / "b"
        a.mkdir()
        b.mkdir()
        first = await first_run(a, url)
        second = await first_run(b, url)  # the same jobs again: every one overlaps
    # Two runs of the same jobs: side by side, each whole (not 45 pending of 90).
    apart = await launcher("report", str(first), str(second), "--format", "json")
    runs = orjson.loads(apart.stdout)["runs"]
    assert [run["jobs"] for run in runs] == [45, 45]
    assert [run["outcomes"]["pending"] for run in runs] == [0, 0]
    text = await launcher("report", str(first), str(second))
    assert "== run 1 of 2" in text.stdout
    assert "2 different runs, reported side by side" in text.stdout
    csv_apart = await launcher("report", str(first), str(second), "--format", "csv")
    assert csv_apart.code == 2
    assert "2 different runs" in csv_apart.stderr
    # --merge-runs, when a user means it: one run, the overlap flagged.
    merged = orjson.loads(
        (
            await launcher("report", str(first), str(second), "--format", "json", "--merge-runs")
        ).stdout
    )
    assert merged["overlaps"] == 45
