"""LiveFold: folding a ledger from the events its writer writes equals reading the file back."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from fold_helpers import observed, observed_counts
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.flow.policy import Verdict
from launcher.ledger import (
    CountedPart,
    FoldedPart,
    Ledger,
    LiveFold,
    catch_up,
    finish_merge,
    fold,
    fold_fleet,
    load_fold,
    open_fleet,
    part_name,
    read_ledger,
    save_fold,
    snapshot_path,
    summary_of,
)
from launcher.ledger.read import LedgerInvalid
from launcher.models import Failure, Job, JobParam, Reply

JOBS = [
    Job(f"job-{n}", f"name-{n}", (JobParam("d", str(n), None),), ws, project, line=n + 1)
    for n, (ws, project) in enumerate([("ws1", "p1"), (None, "p1"), ("ws2", None), (None, None)])
]
REPLIES = st.builds(
    Reply,
    status=st.sampled_from([200, 204, 400, 429, 503, None]),
    latency=st.floats(0.0, 30.0),
    error_code=st.sampled_from([None, "DLF.0100", "APIGW.0308"]),
    error_msg=st.sampled_from([None, "no such job"]),
    request_id=st.sampled_from([None, "r1"]),
    failure=st.sampled_from([None, *Failure]),
    instance_id=st.sampled_from([None, 7]),
)
OUTCOMES = st.sampled_from([None, "started", "failed", "unknown"])
INTENT = st.tuples(st.just("intent"), st.integers(0, 3), st.integers(1, 4))
RESULT = st.tuples(
    st.just("result"), st.integers(0, 3), st.integers(1, 4), REPLIES, st.sampled_from(Verdict),
    OUTCOMES,
)  # fmt: skip
CHECK = st.tuples(
    st.just("check"), st.integers(0, 3), st.integers(1, 4), REPLIES,
    st.sampled_from([None, "SCHEDULING", "STOPPED"]),
    st.sampled_from(["took_effect", "not_taken", "check_failed", "gave_up"]), OUTCOMES,
)  # fmt: skip
OPERATIONS = st.lists(st.one_of(INTENT, RESULT, CHECK, st.just(("take",))), max_size=40)


def record(ledger: Ledger, live: LiveFold | None, operation: tuple[Any, ...]) -> None:
    """Apply one operation through the recorder API the dispatcher uses."""
    kind = operation[0]
    if kind == "take":
        if live is not None:
            live.take()
    elif kind == "intent":
        ledger.intent(JOBS[operation[1]], operation[2], "start")
    elif kind == "result":
        _, job, attempt, reply, verdict, outcome = operation
        ledger.result(JOBS[job], attempt, reply, verdict, outcome)
    else:
        _, job, attempt, reply, state, conclusion, outcome = operation
        ledger.check(JOBS[job], attempt, reply, state, conclusion, outcome)


def write_segment(path: Path, operations: list[tuple[Any, ...]], live_fold: bool) -> LiveFold:
    ledger = Ledger(path, fsync="never", mirror=live_fold)
    live = LiveFold(ledger, len(JOBS)) if live_fold else None
    ledger.header({"run_id": "r1", "manifest": {"jobs": 4, "sha256": "ab"}, "opts": (1, 2)})
    for operation in operations:
        record(ledger, live, operation)
    ledger.footer({"reason": "complete", "exit_code": 1})
    ledger.close()
    assert live is not None or not live_fold
    return live  # type: ignore[return-value]


IDS = [job.id for job in JOBS]


@settings(max_examples=150, deadline=None)
@given(operations=OPERATIONS, more=OPERATIONS)
def test_the_live_fold_is_the_fold_of_the_file(
    operations: list[tuple[Any, ...]], more: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "l.jsonl"
        live = write_segment(path, operations, live_fold=True)
        history = live.history()
        assert observed(history, IDS) == observed(fold([read_ledger(path)]), IDS)
        # It remembers where the file ends, as a fold does: a resume catches up from there.
        write_segment(path, more, live_fold=False)
        caught_up = catch_up(history)
        assert caught_up is history  # only the new segment was read
        assert observed(caught_up, IDS) == observed(fold([read_ledger(path)]), IDS)


def test_a_file_that_is_not_what_was_written_is_read_instead(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    operations = [("intent", 0, 1), ("result", 0, 1, Reply(204, 0.01), Verdict.STARTED, "started")]
    live = write_segment(path, operations, live_fold=True)
    with open(path, "ab") as out:  # someone else appended to it
        out.write(b'{"event":"intent","job":"other","attempt":1,"t":5.0}\n')
    history = live.history()
    assert history.job_count == 2
    assert observed(history, [*IDS, "other"]) == observed(
        fold([read_ledger(path)]), [*IDS, "other"]
    )


def test_a_replaced_file_is_read_instead(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    live = write_segment(path, [("intent", 1, 1)], live_fold=True)
    data = path.read_bytes()
    os.rename(path, tmp_path / "old.jsonl")  # (kept: its inode is not reused)
    path.write_bytes(data.replace(b"job-1", b"job-9"))  # same size, another file
    assert live.history().record("job-9") is not None


def test_a_failed_write_makes_the_fold_read_the_file(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, fsync="never", mirror=True)
    live = LiveFold(ledger, 1)
    ledger.intent(JOBS[0], 1, "start")
    ledger.mirror_intact = False  # as flush() leaves it when a write fails
    ledger.close()
    assert live.history().record("job-0") is not None


def test_only_a_mirroring_ledger_can_be_folded_live(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.jsonl", fsync="never")
    with pytest.raises(ValueError, match="mirror"):
        LiveFold(ledger, 1)
    with pytest.raises(RuntimeError, match="mirror"):
        ledger.take_events()
    ledger.close()


# -- a fleet: each worker folds its part, the parent merges the folds -----------------


def write_fleet(
    directory: Path, shares: list[list[tuple[Any, ...]]], earlier: list[tuple[Any, ...]] | None
) -> tuple[Path, list[int], list[FoldedPart | None]]:
    """A fleet run's ledger (after an earlier run, if `earlier`): (path, bounds, folds)."""
    path = directory / "l.jsonl"
    if earlier is not None:
        write_segment(path, earlier, live_fold=False)
    names = [part_name(path, "f" * 32, index) for index in range(len(shares))]
    pending = open_fleet(path, {"fleet": "f" * 32, "count": len(shares), "parts": names})
    folds = [write_segment(directory / name, share, live_fold=True).part() for name, share in
             zip(names, shares, strict=True)]  # fmt: skip
    return path, finish_merge(path, pending), folds


SHARES = st.lists(OPERATIONS, min_size=1, max_size=3)


@settings(max_examples=100, deadline=None)
@given(shares=SHARES, earlier=st.none() | OPERATIONS, lost=st.sets(st.integers(0, 2)))
def test_merging_the_workers_folds_is_the_fold_of_the_merged_ledger(
    shares: list[list[tuple[Any, ...]]], earlier: list[tuple[Any, ...]] | None, lost: set[int]
) -> None:
    # The workers' shares may hold the same jobs (as --allow-duplicates allows), an
    # earlier run may know them, and some folds may be lost: those parts are read.
    with tempfile.TemporaryDirectory() as directory:
        path, bounds, folds = write_fleet(Path(directory), shares, earlier)
        assert all(fold is not None for fold in folds)
        folds = [None if n in lost else fold for n, fold in enumerate(folds)]
        merged = fold_fleet(str(path), bounds, folds)
        assert observed(merged, IDS) == observed(fold([read_ledger(path)]), IDS)
        write_segment(path, shares[0], live_fold=False)  # a resume catches up from its end
        assert observed(catch_up(merged), IDS) == observed(fold([read_ledger(path)]), IDS)


def test_disjoint_shares_are_merged_not_read(tmp_path: Path) -> None:
    shares = [
        [("intent", n, 1), ("result", n, 1, Reply(204, 0.01), Verdict.STARTED, "started")]
        for n in range(3)
    ]
    path, bounds, folds = write_fleet(tmp_path, shares, None)
    with open(path, "r+b") as handle:  # spoil the parts' copies: only the folds can tell
        handle.seek(bounds[0])
        handle.write(b" " * (bounds[-1] - bounds[0] - 1))
    merged = fold_fleet(str(path), bounds, folds)
    assert summary_of(merged).outcomes["started"] == 3
    with pytest.raises(LedgerInvalid, match=":2: an empty line"):  # no events there now
        fold([read_ledger(path)])


# -- counts: what other processes' folds and snapshots carry ---------------------------


def disjoint_shares(shares: list[list[tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
    """Each worker's operations on jobs of its own (job n of worker w: JOBS[n] renamed)."""
    return [
        [(op[0], op[1] + 4 * w, *op[2:]) if op[0] != "take" else op for op in share]
        for w, share in enumerate(shares)
    ]


JOBS += [job._replace(id=f"{job.id}-{w}") for w in (1, 2) for job in JOBS]


@settings(max_examples=100, deadline=None)
@given(shares=SHARES, lost=st.sets(st.integers(0, 2)))
def test_workers_counts_merge_to_the_fold_of_the_merged_ledger(
    shares: list[list[tuple[Any, ...]]], lost: set[int]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path, bounds, counts = write_fleet_counts(Path(directory), disjoint_shares(shares))
        counts = [None if n in lost else part for n, part in enumerate(counts)]
        merged = fold_fleet(str(path), bounds, counts, disjoint=True)
        assert merged.counted_only == any(part is not None for part in counts)
        assert observed_counts(merged) == observed_counts(fold([read_ledger(path)]))
        write_segment(path, [], live_fold=False)  # a segment that sent nothing: caught up
        assert catch_up(merged) is merged
        assert observed_counts(merged) == observed_counts(fold([read_ledger(path)]))
        write_segment(path, [("intent", 0, 9)], live_fold=False)  # one that sent: read it all
        assert not catch_up(merged).counted_only
        assert observed_counts(catch_up(merged)) == observed_counts(fold([read_ledger(path)]))


def write_fleet_counts(
    directory: Path, shares: list[list[tuple[Any, ...]]]
) -> tuple[Path, list[int], list[CountedPart | None]]:
    path = directory / "l.jsonl"
    names = [part_name(path, "f" * 32, index) for index in range(len(shares))]
    pending = open_fleet(path, {"fleet": "f" * 32, "count": len(shares), "parts": names})
    counts = []
    for name, share in zip(names, shares, strict=True):
        part = write_segment(directory / name, share, live_fold=True).counts()
        assert part is not None
        counts.append(CountedPart.from_json(part.to_json()))  # as a worker sends them
    return path, finish_merge(path, pending), counts


def test_counts_are_merged_only_where_no_job_can_be_twice(tmp_path: Path) -> None:
    shares = [[("intent", 0, 1), ("result", 0, 1, Reply(204, 0.01), Verdict.STARTED, "started")]]
    path, bounds, counts = write_fleet_counts(tmp_path, shares * 2)  # job 0 twice
    assert not fold_fleet(str(path), bounds, counts).counted_only  # not vouched for: read
    assert fold_fleet(str(path), bounds, counts).job_count == 1
    spoiled = tmp_path / "spoiled"
    spoiled.mkdir()
    path, bounds, counts = write_fleet_counts(spoiled, disjoint_shares(shares * 3))
    with open(path, "r+b") as handle:  # spoil the parts' copies: only the counts can tell
        handle.seek(bounds[0])
        handle.write(b" " * (bounds[-1] - bounds[0] - 1))
    assert summary_of(fold_fleet(str(path), bounds, counts, disjoint=True)).outcomes["started"] == 3


def test_a_fold_that_only_counts_refuses_lookups(tmp_path: Path) -> None:
    path, bounds, counts = write_fleet_counts(tmp_path, [[("intent", 0, 1)]])
    merged = fold_fleet(str(path), bounds, counts, disjoint=True)
    for lookup in (lambda: merged.record("x"), lambda: merged.state("x"), lambda: "x" in merged):
        with pytest.raises(RuntimeError, match="counted"):
            lookup()


# -- snapshots ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(operations=OPERATIONS)
def test_a_snapshot_holds_the_counts_of_the_fold(operations: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "l.jsonl"
        history = write_segment(path, operations, live_fold=True).history()
        assert save_fold(history)
        saved = load_fold(path)
        assert saved is not None
        assert saved.counted_only
        assert (
            observed_counts(saved)
            == observed_counts(history)
            == observed_counts(fold([read_ledger(path)]))
        )


def test_a_snapshot_is_used_only_for_the_file_it_describes(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    history = write_segment(path, [("intent", 0, 1)], live_fold=True).history()
    assert save_fold(history)
    assert load_fold(str(path)) is not None
    assert load_fold(tmp_path / "other.jsonl") is None
    with open(path, "ab") as out:  # a segment since
        out.write(b'{"event":"end","t":9.0}\n')
    assert load_fold(path) is None
    assert save_fold(catch_up(history))
    assert load_fold(path) is not None
    data = path.read_bytes()
    os.rename(path, tmp_path / "old.jsonl")  # replaced by another file of the same bytes
    path.write_bytes(data)
    assert load_fold(path) is None
    snapshot = snapshot_path(path)
    snapshot.write_bytes(snapshot.read_bytes()[:-3])  # cut short
    assert load_fold(path) is None
    snapshot.write_bytes(b"{not json\n")
    assert load_fold(path) is None


def test_a_snapshot_whose_states_do_not_decode_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    operations = [("intent", 0, 1), ("result", 0, 1, Reply(204, 0.01), Verdict.STARTED, "started")]
    assert save_fold(write_segment(path, operations, live_fold=True).history())
    snapshot = snapshot_path(path)
    head, _, latencies = snapshot.read_bytes().partition(b"\n")
    fields = orjson.loads(head)
    assert load_fold(path) is not None
    for bad in ({"labels": []}, {"verdicts": []}):
        snapshot.write_bytes(orjson.dumps({**fields, **bad}) + b"\n" + latencies)
        assert load_fold(path) is None  # a summary of it would fail on an index


def test_folds_of_several_ledgers_or_torn_ones_are_not_saved(tmp_path: Path) -> None:
    one, two = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_segment(one, [], live_fold=False)
    write_segment(two, [], live_fold=False)
    assert not save_fold(fold([read_ledger(one), read_ledger(two)]))
    with open(one, "ab") as out:
        out.write(b'{"event":"intent"')
    assert not save_fold(fold([read_ledger(one)]))
    assert not snapshot_path(one).exists()
