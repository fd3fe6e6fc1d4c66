"""ledger/events.py: a `run` header's typed view, built once from a checked header."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from launcher.errors import UsageError
from launcher.ledger.check import problem
from launcher.ledger.events import RunHeader
from launcher.run.reports import read_runs

HEADER = {
    "event": "run",
    "t": 1700000000.5,
    "run_id": "r1",
    "segment": 2,
    "resumes": "r0",
    "version": "1.0",
    "manifest": {"path": "/m.jsonl", "sha256": "ab" * 32, "jobs": 3, "total_jobs": 9},
    "shard": "1/3",
    "endpoint": "https://dlf.example",
    "options": {"project_id": "p1", "action": "start"},
    "started_at": "2026-12-05T12:00:00+00:00",
    "host": "box",
    "pid": 42,
}


def test_the_view_holds_every_field_a_reader_uses() -> None:
    assert problem(HEADER) is None
    run = RunHeader.of(HEADER)
    assert (run.run_id, run.segment, run.resumes, run.version) == ("r1", 2, "r0", "1.0")
    assert (run.manifest_path, run.manifest_sha256) == ("/m.jsonl", "ab" * 32)
    assert (run.manifest_jobs, run.manifest_total_jobs, run.manifest_format) == (3, 9, None)
    assert (run.shard, run.endpoint, run.host, run.pid, run.t) == (
        "1/3",
        "https://dlf.example",
        "box",
        42,
        1700000000.5,
    )
    assert run.options["project_id"] == "p1"


def test_a_header_without_manifest_or_options_reads_as_absent() -> None:
    run = RunHeader.of({"event": "run", "run_id": "r"})
    assert run.manifest_sha256 is None
    assert run.manifest_jobs is None
    assert dict(run.options) == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [("pid", "42"), ("host", 7), ("started_at", ["x"]), ("manifest", {"jobs": "3"})],
)
def test_a_header_field_of_the_wrong_type_is_refused(field: str, value: object) -> None:
    assert problem({**HEADER, field: value}) is not None


def test_report_refuses_a_first_header_the_check_refuses(tmp_path: Path) -> None:
    """The first line read to group ledgers by run is checked like every other line."""
    ledger = tmp_path / "l.jsonl"
    ledger.write_bytes(orjson.dumps({**HEADER, "manifest": {"jobs": "many"}}) + b"\n")
    with pytest.raises(UsageError, match=r"l\.jsonl:1: manifest\.jobs"):
        read_runs([str(ledger)])
