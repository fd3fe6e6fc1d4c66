"""The ledger file: write-ahead intents, group-committed results, tolerant reading."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import orjson
import pytest

from launcher.errors import LedgerFailed
from launcher.ledger import Ledger, default_ledger_path, read_ledger
from launcher.models import Failure, Job, JobParam, Reply

JOB = Job(
    id="j1",
    name="nightly/etl",
    params=(JobParam("date", "2026-11-28", "variable"),),
    workspace="ws-1",
    project_id="p1",
    line=3,
)


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_deferred_intents_wait_for_the_senders_call(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync="never")
    write_intents = ledger.defer_intents()
    ledger.intent(JOB, 1, "start")
    ledger.intent(JOB, 2, "start")
    assert path.read_bytes() == b""  # the sender writes them, just before its requests
    write_intents()
    assert [event["attempt"] for event in read_ledger(path)] == [1, 2]
    ledger.close()


def test_intent_is_on_disk_before_the_call_returns(tmp_path: Path) -> None:
    """A crash right after intent() must still leave the intent in the file."""
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync="never")
    ledger.intent(JOB, 1, "start")
    (event,) = lines(path)  # read by another handle, before close
    assert event["event"] == "intent"
    assert event["job"] == "j1"
    assert event["name"] == "nightly/etl"
    assert event["params"] == [["date", "2026-11-28", "variable"]]
    assert event["workspace"] == "ws-1"
    ledger.close()


def test_only_the_first_attempt_repeats_the_job_description(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with_close = Ledger(path, fsync="never")
    with_close.intent(JOB, 1, "start")
    with_close.intent(JOB, 2, "start")
    with_close.close()
    first, second = lines(path)
    assert "name" in first
    assert "name" not in second


def test_results_are_group_committed_and_flushed_by_the_next_intent(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync="never")
    ledger.intent(JOB, 1, "start")
    ledger.result(JOB, 1, Reply(503, 0.012, request_id="rq"), "transient", None)
    assert len(lines(path)) == 1  # buffered
    ledger.intent(JOB, 2, "start")
    events = lines(path)
    assert [e["event"] for e in events] == ["intent", "result", "intent"]
    assert events[1]["status"] == 503
    assert events[1]["latency_ms"] == 12.0
    assert events[1]["request_id"] == "rq"
    ledger.close()


def test_result_fields(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync="always")
    reply = Reply(400, 0.002, error_code="DLF.0100", error_msg="The job does not exists.")
    ledger.result(JOB, 1, reply, "permanent", "failed")
    ledger.result(JOB, 2, Reply(None, 1.0, failure=Failure.TIMEOUT), "ambiguous", None)
    ledger.close()
    failed, lost = lines(path)
    assert failed["error_code"] == "DLF.0100"
    assert failed["outcome"] == "failed"
    assert lost["status"] is None
    assert lost["failure"] == "timeout"
    assert "outcome" not in lost


@pytest.mark.anyio
async def test_the_flusher_commits_results_without_a_following_intent(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync="batch", flush_interval=0.001)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ledger.run_flusher)
        ledger.result(JOB, 1, Reply(204, 0.001), "started", "started")
        await anyio.sleep(0.1)  # a hundred flush intervals
        committed = path.read_bytes()
        tg.cancel_scope.cancel()
    ledger.close()
    assert orjson.loads(committed)["outcome"] == "started"


def test_a_torn_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync="never")
    ledger.intent(JOB, 1, "start")
    ledger.close()
    with open(path, "ab") as handle:
        handle.write(b'{"event":"result","job":"j1","attem')
    read = read_ledger(path)
    assert [e["event"] for e in read.events] == ["intent"]
    assert read.torn_tail is True  # known once the file was read


def test_an_unwritable_ledger_raises_ledger_failed(tmp_path: Path) -> None:
    """A write the OS refuses (here: the ledger's descriptor made read-only) stops the run."""
    ledger = Ledger(tmp_path / "l.jsonl", fsync="never")
    os.dup2(os.open(tmp_path / "l.jsonl", os.O_RDONLY), ledger._fd)
    with pytest.raises(LedgerFailed, match="cannot write the ledger"):
        ledger.intent(JOB, 1, "start")


def test_default_path_names_the_manifest_and_utc_time() -> None:
    path = default_ledger_path("configs/nightly.jsonl", now=0.0)
    assert path == Path("ledgers/nightly-19700101T000000Z.jsonl")
