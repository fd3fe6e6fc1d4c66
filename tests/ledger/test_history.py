"""The compact ledger fold: packed states round-trip, and it agrees with a plain dict fold."""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fold_helpers import observed
from hypothesis import given, settings
from hypothesis import strategies as st

import launcher.ledger.parallel as parallel_module
from launcher.errors import UsageError
from launcher.ledger import (
    NOT_TAKEN,
    PERMANENT,
    JobRecord,
    LedgerRead,
    catch_up,
    fold,
    job_key,
    part_name,
    read_ledger,
)
from launcher.ledger.folder import Folder
from launcher.ledger.read import LedgerInvalid
from launcher.ledger.report import (
    OUTCOMES,
    job_rows,
    latency_summary,
    percentile,
    ranked,
    summary_of,
)
from launcher.ledger.state import JobState, pack_state, unpack_state
from launcher.run.resume import Next, next_step, step_lookup

STATES = st.builds(
    JobState,
    outcome=st.integers(0, 3),
    last=st.integers(0, 31),
    permanent=st.booleans(),
    reconciled=st.booleans(),
    sources=st.integers(0, 15),
    attempts=st.integers(0, 0xFFFF),
    ledger=st.integers(0, 0xFFFF),
    label=st.integers(0, 2**18 - 1),
)


@given(STATES)
def test_state_packing_round_trips(state: JobState) -> None:
    packed = pack_state(state)
    assert 0 < packed < 2**64  # fits a 64-bit slot, and never 0 (an empty slot)
    assert unpack_state(packed) == state


@given(sources=st.integers(16, 10**6), attempts=st.integers(0x10000, 10**9))
def test_sources_and_attempts_saturate(sources: int, attempts: int) -> None:
    state = JobState(0, 0, False, False, sources, attempts, 0, 0)
    assert unpack_state(pack_state(state))[4:6] == (15, 0xFFFF)


@pytest.mark.parametrize(
    "state",
    [
        JobState(4, 0, False, False, 0, 0, 0, 0),
        JobState(0, 32, False, False, 0, 0, 0, 0),
        JobState(0, 0, False, False, 0, 0, 0x10000, 0),
        JobState(0, 0, False, False, 0, 0, 0, 2**18),
        JobState(0, 0, False, False, -1, 0, 0, 0),
    ],
)
def test_fields_that_cannot_saturate_must_fit(state: JobState) -> None:
    with pytest.raises(ValueError, match="out of range"):
        pack_state(state)


# -- the fold against a reference: the dict-of-records fold it replaced -------


def reference_fold(
    ledgers: list[list[dict[str, Any]]], settled_since_intent: set[str] | None = None
) -> dict[str, JobRecord]:
    """The previous implementation's rules, one JobRecord per job in a dict.

    `settled_since_intent` collects jobs settled (started or failed) after their
    last intent: the compact fold forgets their intent time at that point.
    """
    jobs: dict[str, JobRecord] = {}
    settled = settled_since_intent if settled_since_intent is not None else set()
    for events in ledgers:
        seen_here: set[str] = set()
        for event in events:
            kind = event["event"]
            if kind == "intent":
                record = jobs.setdefault(event["job"], JobRecord(workspace=event.get("workspace")))
                if event["job"] not in seen_here:
                    seen_here.add(event["job"])
                    record.sources += 1
                record.attempts += 1
                record.last = "intent"
                record.outcome = None
                record.last_intent_t = float(event["t"])
                settled.discard(event["job"])
                if "name" in event and record.name is None:
                    record.name = event["name"]
                    record.project_id = event.get("project_id")
            elif kind == "result":
                record = jobs.setdefault(event["job"], JobRecord())
                record.last = event.get("verdict", "?")
                record.detail = (
                    event.get("status"),
                    event.get("error_code"),
                    event.get("error_msg"),
                    event.get("request_id"),
                    event.get("instance_id") or record.instance_id(),
                )
                if event.get("outcome") is not None:
                    reference_settle(record, event["outcome"], event, settled)
                    record.permanent = record.last in PERMANENT
            elif kind == "check":
                record = jobs.setdefault(event["job"], JobRecord())
                if event.get("outcome") is not None:
                    reference_settle(record, event["outcome"], event, settled)
                    record.permanent = False
                    record.reconciled = event.get("conclusion") == "took_effect"
                elif event.get("conclusion") == "not_taken":
                    record.last = "transient"
    return jobs


def reference_settle(
    record: JobRecord, outcome: str, event: dict[str, Any], settled: set[str]
) -> None:
    record.outcome = outcome
    if outcome in ("started", "failed"):
        settled.add(event["job"])
    if outcome != "failed":
        record.failure = None
    elif isinstance(event.get("error_code"), str):
        record.failure = event["error_code"]
    elif event.get("status") is not None:
        record.failure = f"HTTP {event['status']}"
    else:
        record.failure = event.get("failure") or "error"


JOB_IDS = st.sampled_from([f"{n:032x}" for n in range(6)] + ["etl-01", "etl-02", ""])
VERDICTS = st.sampled_from(
    ["started", "permanent", "throttled", "transient", "ambiguous", "auth_failed", "odd"]
)


def events_strategy() -> st.SearchStrategy[list[dict[str, Any]]]:
    intent = st.fixed_dictionaries(
        {"event": st.just("intent"), "job": JOB_IDS},
        optional={
            "workspace": st.sampled_from(["ws1", "ws2", None]),
            "name": st.sampled_from(["a", "b"]),
            "project_id": st.sampled_from(["p1", None]),
        },
    )
    result = st.fixed_dictionaries(
        {
            "event": st.just("result"),
            "job": JOB_IDS,
            "verdict": VERDICTS,
            "status": st.sampled_from([204, 400, 503, None]),
            "latency_ms": st.integers(0, 3_000_000).map(lambda us: us / 1000),
        },
        optional={
            "outcome": st.sampled_from(["started", "failed"]),
            "error_code": st.sampled_from(["DLF.0100", "APIGW.0308"]),
            "failure": st.sampled_from(["timeout", "connect"]),
            "request_id": st.sampled_from(["r1", "r2"]),
            "instance_id": st.sampled_from([11, 12]),
        },
    )
    check = st.fixed_dictionaries(
        {
            "event": st.just("check"),
            "job": JOB_IDS,
            "conclusion": st.sampled_from(["took_effect", "not_taken", "check_failed"]),
        },
        optional={
            "outcome": st.sampled_from(["started", "failed", "unknown"]),
            "status": st.sampled_from([200, None]),
        },
    )
    return st.lists(st.one_of(intent, result, check), max_size=60)


def write_ledgers(directory: Path, ledgers: list[list[dict[str, Any]]]) -> list[Path]:
    paths = []
    t = 1_000.0
    for n, events in enumerate(ledgers):
        path = directory / f"l{n}.jsonl"
        with open(path, "wb") as out:
            out.write(orjson.dumps({"event": "run", "t": t, "run_id": f"r{n}"}) + b"\n")
            for event in events:
                t += 0.5
                event["t"] = t
                out.write(orjson.dumps(event) + b"\n")
        paths.append(path)
    return paths


@settings(max_examples=150, deadline=None)
@given(ledgers=st.lists(events_strategy(), min_size=1, max_size=3))
def test_fold_agrees_with_the_dict_fold(ledgers: list[list[dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        paths = write_ledgers(Path(directory), ledgers)
        compact = fold([read_ledger(p) for p in paths])
        detailed = fold([read_ledger(p) for p in paths], keep=frozenset({"details"}))
    settled_since_intent: set[str] = set()
    expected = reference_fold(ledgers, settled_since_intent)
    assert compact.job_count == len(expected)
    assert [job_id for job_id, _ in detailed.items()] == list(expected)  # first-mention order
    step = step_lookup(compact, retry_failed=False)
    for job_id, want in expected.items():
        got = compact.record(job_id)
        assert got is not None
        in_doubt = next_step(want, retry_failed=False) is Next.CHECK
        fields = ("outcome", "last", "permanent", "reconciled", "attempts", "failure")
        assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields]
        assert (got.workspace, got.sources, got.final) == (want.workspace, want.sources, want.final)
        # The intent time is kept while a job is unsettled; a job that a check
        # reopens after it settled (the launcher never writes that) has lost it.
        if in_doubt and want.attempts and job_id not in settled_since_intent:
            assert got.last_intent_t == want.last_intent_t
        for retry_failed in (False, True):
            assert next_step(got, retry_failed=retry_failed) is next_step(
                want, retry_failed=retry_failed
            )
        assert step(job_id) is next_step(want, retry_failed=False)
    for job_id, got in detailed.items():
        want = expected[job_id]
        assert (got.name, got.project_id, got.detail) == (want.name, want.project_id, want.detail)

    summary = summary_of(compact)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for record in expected.values():
        outcomes[record.final] += 1
    assert summary.outcomes == outcomes
    assert summary.overlaps == sum(r.sources > 1 for r in expected.values())
    assert set(summary.overlap_examples) <= {k for k, r in expected.items() if r.sources > 1}
    assert summary.reconciled == sum(
        r.final == "started" and r.reconciled for r in expected.values()
    )
    failed: dict[str, int] = {}
    for record in expected.values():
        if record.final == "failed":
            failed[record.failure or "error"] = failed.get(record.failure or "error", 0) + 1
    assert summary.failed_by_code == failed
    latencies = sorted(
        e["latency_ms"]
        for events in ledgers
        for e in events
        if e["event"] == "result" and e.get("status") is not None
    )
    assert summary.latency() == (
        {
            "p50": round(percentile(latencies, 0.50), 3),
            "p90": round(percentile(latencies, 0.90), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(latencies[-1], 3),
        }
        if latencies
        else dict.fromkeys(("p50", "p90", "p99", "max"))  # no answer: no latency
    )
    rows = list(job_rows(detailed))
    assert [(row["job"], row["outcome"]) for row in rows] == [
        (k, r.final) for k, r in expected.items()
    ]


def test_pending_and_unknown_follow_the_last_verdict(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = [
        {"event": "intent", "job": "a", "workspace": "ws1"},
        {"event": "result", "job": "a", "verdict": "throttled", "status": 429, "latency_ms": 1.0},
        {"event": "intent", "job": "b"},
    ]
    (path,) = write_ledgers(tmp_path, [events])
    history = fold([read_ledger(path)])
    a, b = history.record("a"), history.record("b")
    assert a is not None
    assert b is not None
    assert (a.final, a.workspace, a.last in NOT_TAKEN) == ("pending", "ws1", True)
    assert (b.final, b.last_intent_t > 0) == ("unknown", True)
    assert list(history.intent_times) != []  # only unsettled jobs are there


# -- percentiles without sorting ------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.integers(0, 2**40) | st.integers(0, 300) | st.integers(-5, 5), min_size=1, max_size=400
    ),
    ranks=st.lists(st.integers(0, 450), max_size=6),
)
def test_ranked_equals_sorting(values: list[int], ranks: list[int]) -> None:
    ordered = sorted(values)
    found = ranked(array("q", values), ranks)
    assert found == {r: ordered[r - 1] for r in ranks if 1 <= r <= len(values)}


def test_latency_summary_of_a_million_has_no_sort() -> None:
    values = array("q", (n * 7919 % 1_000_003 for n in range(1, 200_001)))
    ordered = sorted(values)
    n = len(ordered)
    assert latency_summary(values) == {
        "p50": ordered[math.ceil(0.5 * n) - 1] / 1000,
        "p90": ordered[math.ceil(0.9 * n) - 1] / 1000,
        "p99": ordered[math.ceil(0.99 * n) - 1] / 1000,
        "max": ordered[-1] / 1000,
    }
    # Nothing answered: no latency at all, not a latency of 0 ms.
    assert latency_summary(array("q")) == {"p50": None, "p90": None, "p99": None, "max": None}


# -- the fold's own reader: the same as iterating LedgerRead, and it continues -----


class Iterated:
    """A ledger folded through `LedgerRead` iteration (the fold reads a `LedgerRead` itself)."""

    def __init__(self, read: LedgerRead) -> None:
        self.read = read
        self.path = read.path

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.read)

    @property
    def positions(self) -> Any:
        return self.read.positions

    @property
    def torn_tail(self) -> bool:
        return self.read.torn_tail


EVENTS = st.lists(events_strategy(), min_size=1, max_size=3).map(
    lambda ledgers: [event for events in ledgers for event in events]
)
HEADERS = st.fixed_dictionaries(
    {"event": st.just("run"), "run_id": st.sampled_from(["r1", "r2"])},
    optional={"manifest": st.fixed_dictionaries({"jobs": st.integers(0, 50)})},
)
FOOTERS = st.fixed_dictionaries(
    {"event": st.just("end"), "reason": st.just("complete"), "exit_code": st.integers(0, 1)}
)
ODD_LINES = st.sampled_from(
    [b"", b"   ", b"[1, 2]", b'"text"', b"42", b"null", b"{not json", b'{"event":"intent"',
     b"\x00\x00\x00", b'{"event":"other","t":5}', b'{"t":"0"}', b"\xff\xfe"]
)  # fmt: skip


def ledger_lines() -> st.SearchStrategy[list[bytes]]:
    """Lines of a ledger: events as the writer writes them (or spaced), and odd lines."""
    event = st.one_of(
        EVENTS.flatmap(lambda events: st.sampled_from(events) if events else st.nothing()),
        HEADERS,
        FOOTERS,
    )
    times = st.one_of(
        st.floats(0, 2e9, allow_nan=False), st.integers(0, 2**40), st.just(-0.0), st.none()
    )

    def line(item: tuple[dict[str, Any], Any, bool]) -> bytes:
        event, t, spaced = item
        event = dict(event)
        if t is not None:
            event["t"] = t
        text = orjson.dumps(event)
        return text.replace(b",", b", ") if spaced else text

    written = st.tuples(event, times, st.booleans()).map(line)
    return st.lists(st.one_of(written, written, written, ODD_LINES), max_size=80)


def write_lines(path: Path, lines: list[bytes], torn: bytes = b"") -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines) + torn)


def write_line_ledgers(directory: str, ledgers: list[tuple[list[bytes], bytes]]) -> list[Path]:
    """Each (lines, torn tail) as `l<n>.jsonl` in `directory`; their paths."""
    paths = []
    for n, (lines, torn) in enumerate(ledgers):
        path = Path(directory) / f"l{n}.jsonl"
        write_lines(path, lines, torn)
        paths.append(path)
    return paths


def job_ids_in(*groups: list[bytes]) -> set[str]:
    found = set(job_ids_of_strategy())
    for lines in groups:
        for line in lines:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and isinstance(event.get("job"), str):
                found.add(event["job"])
    return found


def job_ids_of_strategy() -> list[str]:
    return [f"{n:032x}" for n in range(6)] + ["etl-01", "etl-02", "", "never"]


TORN = st.sampled_from([b"", b"", b'{"event":"result","job":"etl-01","verdict":"sta', b"  "])


@settings(max_examples=150, deadline=None)
@given(
    ledgers=st.lists(st.tuples(ledger_lines(), TORN), min_size=1, max_size=3),
    keep=st.sampled_from([frozenset(), frozenset({"details"}), frozenset({"descriptions"})]),
)
def test_reading_the_file_equals_iterating_ledger_read(
    ledgers: list[tuple[list[bytes], bytes]], keep: frozenset[str]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        paths = write_line_ledgers(directory, ledgers)
        direct = [read_ledger(p) for p in paths]
        iterated = [read_ledger(p) for p in paths]
        try:
            want = fold([Iterated(r) for r in iterated], keep=keep)
        except LedgerInvalid as error:  # lines every reader refuses, alike
            with pytest.raises(LedgerInvalid, match=re.escape(str(error))):
                fold(direct, keep=keep)
            return
        got = fold(direct, keep=keep)
    ids = job_ids_in(*(lines for lines, _ in ledgers))
    assert observed(got, ids) == observed(want, ids)
    assert [r.torn_tail for r in direct] == [r.torn_tail for r in iterated]


@settings(max_examples=150, deadline=None)
@given(before=ledger_lines(), torn=TORN, after=ledger_lines(), more=ledger_lines())
def test_catch_up_folds_what_was_appended_as_a_new_fold_would(
    before: list[bytes], torn: bytes, after: list[bytes], more: list[bytes]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "l.jsonl"
        write_lines(path, before, torn)
        try:
            history = fold([read_ledger(path)])
        except LedgerInvalid:
            return
        with open(path, "ab") as out:  # a new segment, after a torn line if there was one
            out.write(b"".join(line + b"\n" for line in after))
        try:
            fresh = fold([read_ledger(path)])
        except LedgerInvalid as error:
            with pytest.raises(LedgerInvalid, match=re.escape(str(error))):
                catch_up(history)
            return
        caught_up = catch_up(history)
        assert caught_up is history  # only the appended bytes were read
        ids = job_ids_in(before, after, more)
        assert observed(caught_up, ids) == observed(fresh, ids)
        with open(path, "ab") as out:  # and again, with nothing new or more
            out.write(b"".join(line + b"\n" for line in more))
        try:
            fresh = fold([read_ledger(path)])
        except LedgerInvalid:
            return
        assert observed(catch_up(caught_up), ids) == observed(fresh, ids)


@settings(max_examples=60, deadline=None)
@given(lines=ledger_lines(), torn=TORN, data=st.data())
def test_a_fold_up_to_end_reads_what_ledger_read_reads(
    lines: list[bytes], torn: bytes, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "l.jsonl"
        write_lines(path, lines, torn)
        end = data.draw(st.integers(0, path.stat().st_size + 2))
        direct, iterated = read_ledger(path, end=end), read_ledger(path, end=end)
        try:
            want = fold([Iterated(iterated)])
        except LedgerInvalid:
            return
        got = fold([direct])
        ids = job_ids_in(lines)
        assert observed(got, ids) == observed(want, ids)
        assert direct.torn_tail == iterated.torn_tail
        with open(path, "ab") as out:
            out.write(b'{"event":"intent","job":"etl-01","t":5.0}\n')
        try:
            fresh = fold([read_ledger(path)])
        except LedgerInvalid:
            return
        assert observed(catch_up(got), ids) == observed(fresh, ids)  # read again, in full


def test_catch_up_of_a_replaced_ledger_folds_it_again(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = [
        {"event": "intent", "job": "a", "workspace": "ws1"},
        {"event": "result", "job": "a", "verdict": "started", "status": 204, "latency_ms": 1.0,
         "outcome": "started"},
    ]  # fmt: skip
    (path,) = write_ledgers(tmp_path, [events])
    history = fold([read_ledger(path)])
    replaced = tmp_path / "new.jsonl"
    replaced.write_bytes(orjson.dumps(events[0]) + b"\n" + orjson.dumps(events[0]) + b"\n")
    replaced.replace(path)  # another file now, not the one folded plus more
    again = catch_up(history)
    assert again is not history
    assert observed(again, ["a"]) == observed(fold([read_ledger(path)]), ["a"])


def fleet_ledger(tmp_path: Path, merged: bool, parts_exist: bool) -> Path:
    """A ledger of a run with two workers (see `launcher.run.fleet`), merged or not."""
    ledger = tmp_path / "l.jsonl"
    part_names = [part_name(ledger, "f" * 32, index) for index in range(2)]
    parts: list[list[dict[str, Any]]] = [
        [{"event": "run", "t": 2.0, "run_id": f"w{index}", "worker": f"{index}/2",
          "fleet": "f" * 32},
         {"event": "intent", "job": f"job{index}", "t": 3.0, "workspace": "ws"},
         {"event": "result", "job": f"job{index}", "t": 4.0, "verdict": "started",
          "status": 204, "latency_ms": 2.5, "outcome": "started"}]
        for index in range(2)
    ]  # fmt: skip
    lines = [orjson.dumps({"event": "run", "t": 1.0, "run_id": "parent"})]
    lines.append(orjson.dumps({"event": "workers", "fleet": "f" * 32, "parts": part_names}))
    if parts_exist:
        for name, events in zip(part_names, parts, strict=True):
            write_lines(tmp_path / name, [orjson.dumps(event) for event in events])
        lines.append(b'{"event":"intent","job":"partial copy"')  # a merge cut short
    else:
        lines += [orjson.dumps(event) for events in parts for event in events]
    if merged:
        lines.append(orjson.dumps({"event": "merged", "fleet": "f" * 32, "t": 5.0}))
    lines.append(orjson.dumps({"event": "end", "t": 6.0, "run_id": "parent"}))
    write_lines(ledger, lines)
    return ledger


@pytest.mark.parametrize(
    ("merged", "parts_exist"), [(True, False), (False, False), (False, True), (True, True)]
)
def test_worker_parts_are_read_as_ledger_read_reads_them(
    tmp_path: Path, merged: bool, parts_exist: bool
) -> None:
    ledger = fleet_ledger(tmp_path, merged, parts_exist)
    if not merged and not parts_exist:  # lost: both refuse the ledger
        with pytest.raises(UsageError, match="missing and were never merged") as iterated:
            fold([Iterated(read_ledger(ledger))])
        with pytest.raises(UsageError) as direct:
            fold([read_ledger(ledger)])
        assert str(direct.value) == str(iterated.value)
        return
    read = read_ledger(ledger)
    got = fold([read])
    want = fold([Iterated(read_ledger(ledger))])
    ids = ["job0", "job1"]
    assert observed(got, ids) == observed(want, ids)
    assert got.job_count == 2
    assert (read.unmerged is not None) == parts_exist  # for finish_merge, as before


def test_a_ledger_counts_the_most_jobs_its_headers_announce(tmp_path: Path) -> None:
    header = {"event": "run", "t": 1.0, "manifest": {"jobs": 10}}
    events: list[dict[str, Any]] = [
        {"event": "intent", "job": "a"},
        {"event": "result", "job": "a", "verdict": "started", "status": 204, "latency_ms": 1.0,
         "outcome": "started"},
    ]  # fmt: skip
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    smaller = {**header, "t": 3.0, "manifest": {"jobs": 3}}
    write_lines(one, [orjson.dumps(e) for e in [header, *events, smaller]])
    write_lines(two, [orjson.dumps({**header, "manifest": {"jobs": 4}})])
    history = fold([read_ledger(one), read_ledger(two)])
    assert history.declared_jobs == 14  # a resumed ledger: its largest header, not their sum
    assert summary_of(history).outcomes == {"started": 1, "failed": 0, "unknown": 0, "pending": 13}
    with open(two, "ab") as out:
        out.write(orjson.dumps({**header, "t": 4.0, "manifest": {"jobs": 6}}) + b"\n")
    assert catch_up(history).declared_jobs == 16


def test_a_table_with_no_header_grows_as_jobs_come(tmp_path: Path) -> None:
    jobs = [f"job-{n}" for n in range(20_000)]  # far more than the table's first 4096 slots
    lines = [orjson.dumps({"event": "intent", "job": job, "t": 1.0}) for job in jobs]
    write_lines(tmp_path / "l.jsonl", lines + lines[:100])
    history = fold([read_ledger(tmp_path / "l.jsonl")])
    table = history._states
    assert history.job_count == len(table) == 20_000
    assert len(table) <= table.capacity // 2  # never fuller than half: probing stays short
    assert sorted(table) == sorted(job_key(job) for job in jobs)
    assert history.record("job-7") == JobRecord(attempts=2, sources=1, last_intent_t=1.0)
    assert history.record("job-19999") == JobRecord(attempts=1, sources=1, last_intent_t=1.0)
    for count in range(2040, 2060):  # around the first growth (4096 slots, 2048 keys)
        write_lines(tmp_path / "l.jsonl", lines[:count])
        table = fold([read_ledger(tmp_path / "l.jsonl")])._states
        assert len(table) == count
        assert len(table) <= table.capacity // 2


# -- folding a large file in parallel parts -------------------------------------------


@contextlib.contextmanager
def parallel_parts(cpus: int) -> Iterator[list[int]]:
    """Fold every file in up to `cpus` parallel parts, however small; yields the forks made."""
    forks: list[int] = []
    fork = parallel_module._fork

    def counted(*args: Any) -> Any:
        forks.append(1)
        return fork(*args)

    saved = (parallel_module.PART_BYTES, parallel_module.usable_cpus, parallel_module._fork)
    parallel_module.PART_BYTES = 1
    parallel_module.usable_cpus = lambda: cpus
    parallel_module._fork = counted
    try:
        yield forks
    finally:
        (parallel_module.PART_BYTES, parallel_module.usable_cpus, parallel_module._fork) = saved


@settings(max_examples=120, deadline=None)
@given(
    ledgers=st.lists(st.tuples(ledger_lines(), TORN), min_size=1, max_size=2),
    cpus=st.integers(2, 5),
)
def test_folding_in_parallel_parts_equals_one_pass(
    ledgers: list[tuple[list[bytes], bytes]], cpus: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        paths = write_line_ledgers(directory, ledgers)
        try:
            want = fold([Iterated(read_ledger(p)) for p in paths])
        except LedgerInvalid as error:
            with parallel_parts(cpus), pytest.raises(LedgerInvalid, match=re.escape(str(error))):
                fold([read_ledger(p) for p in paths], parallel=True)
            return
        direct = [read_ledger(p) for p in paths]
        with parallel_parts(cpus):
            got = fold(direct, parallel=True)
        iterated = [read_ledger(p) for p in paths]
        for read in iterated:
            list(read)
    ids = job_ids_in(*(lines for lines, _ in ledgers))
    assert observed(got, ids) == observed(want, ids)
    assert [r.torn_tail for r in direct] == [r.torn_tail for r in iterated]


def run_of_jobs(count: int, *, retried: int = 0, odd_verdict: bool = False) -> list[bytes]:
    """A launcher run as it writes its ledger: intents, and results a little later."""
    lines = [orjson.dumps({"event": "run", "t": 1.0, "manifest": {"jobs": count}})]
    pending: list[bytes] = []
    for n in range(count):
        job = f"{n:032x}"
        lines.append(orjson.dumps(
            {"event": "intent", "job": job, "attempt": 1, "t": 2.0 + n, "action": "start",
             "name": f"job-{n}", "workspace": f"ws{n % 3}", "project_id": "p1", "params": [],
             "line": n + 1}
        ))  # fmt: skip
        verdict = "throttled" if n < retried else "started"
        if odd_verdict and n == count - 9:  # in the last part
            verdict = "odd"
        result = {"event": "result", "job": job, "attempt": 1, "t": 2.5 + n, "status": 204,
                  "latency_ms": 1.5 + n % 7, "verdict": verdict}  # fmt: skip
        if verdict == "started":
            result["outcome"] = "started"
        pending.append(orjson.dumps(result))
        if len(pending) > 5:  # answers come back while later jobs are sent
            lines.append(pending.pop(0))
    lines += pending
    for n in range(retried):  # and a second attempt, much later
        job = f"{n:032x}"
        lines.append(orjson.dumps({"event": "intent", "job": job, "attempt": 2, "t": 9e3 + n}))
        lines.append(orjson.dumps(
            {"event": "result", "job": job, "attempt": 2, "t": 9e3 + n, "status": 204,
             "latency_ms": 3.0, "verdict": "started", "outcome": "started"}
        ))  # fmt: skip
    lines.append(orjson.dumps({"event": "end", "t": 1e4, "exit_code": 0}))
    return lines


@pytest.mark.parametrize(
    ("retried", "odd_verdict", "torn"),
    [(0, False, b""), (40, False, b'{"event":"intent"'), (0, True, b""), (300, False, b"")],
)
def test_parts_hand_jobs_that_straddle_them_to_the_parent(
    tmp_path: Path, retried: int, odd_verdict: bool, torn: bytes
) -> None:
    path = tmp_path / "l.jsonl"
    lines = run_of_jobs(600, retried=retried, odd_verdict=odd_verdict)
    del lines[-8:-1]  # a crash: the last jobs have no answer (or were not sent)
    write_lines(path, lines, torn)
    want = fold([Iterated(read_ledger(path))])
    merged: list[bool] = []
    merge = Folder.merge

    def noted(folder: Any, ordinal: int, part: Any) -> bool:
        merged.append(merge(folder, ordinal, part))
        return merged[-1]

    Folder.merge = noted  # type: ignore[method-assign]
    try:
        with parallel_parts(3) as forks:
            got = fold([read_ledger(path)], parallel=True)
    finally:
        Folder.merge = merge  # type: ignore[method-assign]
    assert len(forks) == 2
    # Merged, but for the part with a verdict the launcher never writes: folded again.
    assert merged == ([True, False] if odd_verdict else [True, True])
    ids = [f"{n:032x}" for n in range(600)]
    assert observed(got, ids) == observed(want, ids)
    assert 598 <= got.job_count == want.job_count
    assert got.intent_times  # the jobs in doubt keep their intent time
    with open(path, "r+b") as out:  # and it continues (its torn line cut) as one pass would
        out.seek(out.truncate(out.seek(0, os.SEEK_END) - len(torn)))
        out.write(b"\n".join(run_of_jobs(3)) + b"\n")
    with parallel_parts(3):
        fresh = fold([read_ledger(path)], parallel=True)
        assert observed(catch_up(got), ids) == observed(fresh, ids)


@st.composite
def shuffled_runs(draw: st.DrawFn) -> list[bytes]:
    """A run's ledger (`run_of_jobs`), then lines dropped, moved, doubled and spoilt."""
    lines = run_of_jobs(draw(st.integers(1, 120)), retried=draw(st.integers(0, 20)))
    for _ in range(draw(st.integers(0, 12))):
        at = draw(st.integers(0, len(lines) - 1))
        change = draw(st.sampled_from(["drop", "move", "double", "odd", "strip"]))
        if change == "drop":  # an answer never written: the job stays in doubt
            del lines[at]
        elif change == "move":  # an answer before its intent, or much later
            lines.insert(draw(st.integers(0, len(lines) - 1)), lines.pop(at))
        elif change == "double":
            lines.insert(at, lines[at])
        elif change == "odd":
            lines.insert(at, draw(ODD_LINES))
        elif lines[at].startswith(b'{"event":'):  # an intent without its description,
            try:  # or a result without its outcome (odd lines may only look like events)
                event = orjson.loads(lines[at])
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                event.pop("name", None)
                event.pop("outcome", None)
                lines[at] = orjson.dumps(event)
        if not lines:
            break
    return lines


@settings(max_examples=120, deadline=None)
@given(lines=shuffled_runs(), torn=TORN, cpus=st.integers(2, 5))
def test_parts_of_a_shuffled_run_fold_as_one_pass(
    lines: list[bytes], torn: bytes, cpus: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "l.jsonl"
        write_lines(path, lines, torn)
        try:
            want = fold([Iterated(read_ledger(path))])
        except LedgerInvalid as error:
            with parallel_parts(cpus), pytest.raises(LedgerInvalid, match=re.escape(str(error))):
                fold([read_ledger(path)], parallel=True)
            return
        with parallel_parts(cpus):
            got = fold([read_ledger(path)], parallel=True)
    ids = job_ids_in(lines)
    assert observed(got, ids) == observed(want, ids)


def test_a_job_met_first_by_its_answer_stays_the_parents(tmp_path: Path) -> None:
    lines = run_of_jobs(300)
    late = "f" * 32  # in the last part: its answer, then its first intent, then more
    lines[-2:-2] = [
        orjson.dumps({"event": "result", "job": late, "t": 7.0, "status": 503,
                      "latency_ms": 1.0, "verdict": "transient"}),
        orjson.dumps({"event": "intent", "job": late, "attempt": 1, "t": 8.0, "name": "late"}),
        orjson.dumps({"event": "intent", "job": late, "attempt": 2, "t": 9.0}),
    ]  # fmt: skip
    path = tmp_path / "l.jsonl"
    write_lines(path, lines)
    want = fold([Iterated(read_ledger(path))])
    with parallel_parts(2) as forks:
        got = fold([read_ledger(path)], parallel=True)
    assert forks
    ids = [late, *(f"{n:032x}" for n in range(300))]
    assert observed(got, ids) == observed(want, ids)
    assert got.record(late) == JobRecord(attempts=2, sources=1, last_intent_t=9.0)


def test_a_child_that_fails_leaves_its_part_to_the_parent(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    write_lines(path, run_of_jobs(300))
    want = fold([Iterated(read_ledger(path))])

    def broken(*args: Any) -> Any:
        raise RuntimeError("the child failed")

    saved = parallel_module.fold_part
    parallel_module.fold_part = broken
    try:
        with parallel_parts(2) as forks:
            got = fold([read_ledger(path)], parallel=True)
    finally:
        parallel_module.fold_part = saved
    assert forks
    ids = [f"{n:032x}" for n in range(300)]
    assert observed(got, ids) == observed(want, ids)


def test_only_a_fold_that_asks_forks(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    write_lines(path, run_of_jobs(300))
    with parallel_parts(4) as forks:
        fold([read_ledger(path)])  # a report: one process, its memory as documented
        assert not forks
        fold([read_ledger(path)], parallel=True)  # a resume
        assert len(forks) == 3
