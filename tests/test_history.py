"""The compact ledger fold: packed states round-trip, and it agrees with a plain dict fold."""

from __future__ import annotations

import math
import tempfile
from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.history import (
    NOT_TAKEN,
    PERMANENT,
    JobRecord,
    JobState,
    fold,
    pack_state,
    unpack_state,
)
from launcher.ledger import read_ledger
from launcher.plan import Next, next_step, step_lookup
from launcher.report import OUTCOMES, job_rows, latency_summary, percentile, ranked, summary_of

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
    assert summary.latency() == {
        "p50": round(percentile(latencies, 0.50), 3),
        "p90": round(percentile(latencies, 0.90), 3),
        "p99": round(percentile(latencies, 0.99), 3),
        "max": round(latencies[-1], 3) if latencies else 0.0,
    }
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
    assert latency_summary(array("q")) == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
