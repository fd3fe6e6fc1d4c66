"""The fold itself: `Folder` folds a ledger's events, in order, into a `History`.

It reads a ledger file a megabyte at a time (`range`), decodes each chunk's
lines with `decode_lines` (the decoder `LedgerRead` uses too), and updates
each job's packed state (see `launcher.ledger.state`) in the history's
`CompactMap`: one `slots` call a chunk finds (or adds) every job of the chunk,
then one pass applies the events. It also merges parts folded elsewhere: a
forked child's (`launcher.ledger.parallel`) or a fleet worker's
(`launcher.ledger.fleet_fold`), see `merge` and `merge_counts`.
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from launcher.ledger.check import MAX_LATENCY_MS, MAX_TIME, problem
from launcher.ledger.events import RunHeader
from launcher.ledger.folded import History, Source
from launcher.ledger.parts import CountedPart, FoldedPart, Tail, totals_of
from launcher.ledger.read import (
    FLEET_EVENTS,
    MAX_LINE_BYTES,
    LedgerInvalid,
    decode_lines,
    missing_parts,
    part_paths,
    parts_pending,
)
from launcher.ledger.state import (
    ATTEMPTS_MAX,
    ATTEMPTS_SHIFT,
    BELOW_LABEL,
    FAILED,
    JOB_EVENTS,
    KNOWN_VERDICTS,
    LABEL_SHIFT,
    LAST_SHIFT,
    LEDGER_MAX,
    LEDGER_SHIFT,
    M64,
    NO_LAST,
    NO_LEDGER,
    NO_OUTCOME,
    NOT_PERMANENT,
    NOT_RECONCILED,
    ONE_ATTEMPT,
    ONE_SOURCE,
    OUTCOME_CODES,
    OUTCOME_FIELD,
    OUTCOME_SHIFT,
    OVERLAP_EXAMPLES,
    PERMANENT,
    PERMANENT_BIT,
    PRESENT,
    RECONCILED_BIT,
    REOPENED,
    SOURCES_MAX,
    SOURCES_SHIFT,
    STARTED_BITS,
    TRANSIENT,
    UNKNOWN,
    UNKNOWN_BITS,
    JobExtras,
)
from launcher.models import failure_key

__all__ = ["CHUNK", "CountedOnly", "Folder", "PartsUnmerged", "part_of", "settle"]


class PartsUnmerged(Exception):
    """A `workers` record names parts that still exist: only `LedgerRead` follows them."""


class CountedOnly(Exception):
    """A job's event for a fold that keeps no jobs: only a fold of the ledger can take it."""


class _Bad(Exception):
    """An event a reader cannot take (`event`: which, when known; `problem`: why)."""

    def __init__(self, event: dict[str, Any] | None, problem: str | None = None) -> None:
        self.event, self.problem = event, problem


def _index(batch: list[dict[str, Any]], event: dict[str, Any] | None, ledger: str) -> int:
    """Where `event` is in `batch` (None: the first event with a problem of its own)."""
    for index, item in enumerate(batch):
        if item is event or (event is None and problem(item, ledger) is not None):
            return index
    return 0


CHUNK = 1 << 20  # bytes read at a time
# Events decoded and folded at a time: a larger batch is slower (its events no
# longer fit the CPU's caches), a smaller one pays the per-batch set-up more often.
_BATCH = 128


class Folder:
    """A fold in progress: what it keeps between ledgers, chunks and calls."""

    __slots__ = (
        "descriptions",
        "details",
        "disjoint",
        "expected",
        "fleet_ops",
        "history",
        "number",
        "orphan_ids",
        "orphans",
        "parallel_ok",
        "path",
        "plain_labels",
        "sized_by_headers",
    )

    def __init__(self, history: History, *, parallel: bool = False) -> None:
        self.history = history
        self.parallel_ok = parallel  # a large file may be folded in parallel parts
        self.descriptions = "descriptions" in history._keep
        self.details = "details" in history._keep
        self.plain_labels: dict[Any, int] = {}  # workspace -> the label (workspace, no failure)
        # Jobs met are known to be none of those only counted (see `fold_fleet`).
        self.disjoint = False
        # Whether a `run` header's job count sizes the table (a LiveFold sizes its own).
        self.sized_by_headers = True
        # The file being read (see `fold.fold_file`): its path, lines read so far,
        # and fleets whose parts are gone (merged, they said).
        self.path = Path()
        self.number = 0
        self.expected: dict[str, list[str]] = {}
        self.fleet_ops: list[tuple[str, list[str] | None]] = []  # `workers`, `merged` met
        # In a child folding a part (see `parallel`): the lines of jobs it leaves to
        # the parent, in order, and their ids.
        self.orphans: list[dict[str, Any]] | None = None
        self.orphan_ids: set[str] = set()

    def finish(self, source: Source, tail: Tail, info: os.stat_result, end: int | None) -> None:
        """Note in `source` where reading its file stopped (missing parts: `UsageError`)."""
        if self.expected and end is None:
            raise missing_parts(self.path, self.expected)
        source.torn = tail.at_end and bool(tail.carry.strip())
        source.offset = tail.position - len(tail.carry)
        source.lines = self.number
        source.identity = (info.st_dev, info.st_ino)
        if tail.last is not None:
            source.tail = (tail.last + b"\n")[-64:]

    def range(self, handle: BinaryIO, ordinal: int, start: int, end: int | None) -> Tail:
        """Fold the complete lines from `start` to the end of the file, or up to `end`."""
        handle.seek(start)
        position = start
        carry = b""
        last: bytes | None = None
        while True:
            size = CHUNK if end is None else min(CHUNK, end - position)
            data = handle.read(size) if size > 0 else b""
            if not data:
                # The end of the file, or of what `end` allows: what is left is
                # the file's torn last line only at the end of the file.
                at_end = end is None or size > 0 or not handle.read(1)
                return Tail(position, carry, at_end, last)
            position += len(data)
            lines = data.split(b"\n")
            lines[0] = carry + lines[0]
            carry = lines.pop()
            if len(carry) > MAX_LINE_BYTES or (lines and len(lines[0]) > MAX_LINE_BYTES):
                number = self.number + 1 if lines and len(lines[0]) > MAX_LINE_BYTES else 0
                number = number or self.number + len(lines) + 1
                raise LedgerInvalid(f"{self.path}:{number}: a line over {MAX_LINE_BYTES} bytes")
            if lines:
                self.events(lines, ordinal, lines=True)
                self.number += len(lines)
                last = lines[-1]

    def fleet_record(self, kind: str, event: dict[str, Any]) -> None:
        """Note a `workers` or `merged` record as `LedgerRead` does (parts left: raise)."""
        if kind == "workers":
            if parts_pending(self.path, event):
                raise PartsUnmerged(str(self.path))
            fleet = str(event.get("fleet"))
            names = [part.name for part in part_paths(self.path, event)]
            self.expected[fleet] = names
            self.fleet_ops.append((fleet, names))
        else:
            fleet = str(event.get("fleet"))
            self.expected.pop(fleet, None)
            self.fleet_ops.append((fleet, None))

    def merge_counts(self, ordinal: int, part: CountedPart) -> bool:
        """Take a part's counts (its jobs then stay uncounted in the table: see
        `History.counted_only`); False (nothing taken) if its verdicts differ."""
        history = self.history
        if len(part.verdicts) > len(KNOWN_VERDICTS):  # its states' verdict indexes differ
            return False
        counted = history._counted
        if counted is None:
            counted = history._counted = Counter()
        label = history._label
        for state, jobs in part.counts:
            workspace, failure = part.labels[state >> LABEL_SHIFT]
            counted[(state & BELOW_LABEL) | label(workspace, failure) << LABEL_SHIFT] += jobs
        history._counts = None
        self.add_totals(ordinal, part)
        return True

    def add_totals(self, ordinal: int, part: FoldedPart | CountedPart) -> None:
        """Add what a merged part carries besides its jobs (see `Totals`)."""
        history = self.history
        source = history._sources[ordinal]
        history.declared_jobs += max(0, part.jobs - source.jobs)
        source.jobs = max(source.jobs, part.jobs)
        history.headers += part.headers
        history.footers += part.footers
        history.latencies_us.extend(part.latencies)
        history.attempts += part.attempts
        history.first_t = min(history.first_t, part.first_t)
        history.last_t = max(history.last_t, part.last_t)
        self.number += part.lines

    def merge(self, ordinal: int, part: FoldedPart) -> bool:
        """Take a child's fold of the next part; False (nothing taken) if it cannot be exact."""
        history = self.history
        if len(part.verdicts) > len(KNOWN_VERDICTS):  # new verdicts: order matters
            return False
        table = history._states
        source = history._sources[ordinal]
        declared = history.declared_jobs + max(0, part.jobs - source.jobs)
        if self.sized_by_headers:
            table.reserve(min(declared, 1 << 21))
        if table.holds_any(part.keys):
            return False  # a job known here after all: its state is not the child's to give
        label = history._label
        relabeled: dict[int, int] = {}
        states = array("Q")
        for state in part.states:
            new = relabeled.get(state)
            if new is None:
                workspace, failure = part.labels[state >> LABEL_SHIFT]
                index = label(workspace, failure)
                new = relabeled[state] = (state & BELOW_LABEL) | index << LABEL_SHIFT
            states.append(new)
        table.add_absent(part.keys, states)
        history._counts = None
        history.intent_times.update(part.times)
        for fleet, names in part.fleet_ops:
            if names is None:
                self.expected.pop(fleet, None)
            else:
                self.expected[fleet] = names
        self.events(part.orphans, ordinal, lines=False)  # in order
        self.add_totals(ordinal, part)
        return True

    def events(self, items: Iterable[Any], ordinal: int, *, lines: bool) -> None:
        """Fold events of ledger `ordinal`, in order: decoded, or complete lines to decode.

        With `lines`, `items` are lines of the file being read (without their
        newline), decoded here as `LedgerRead` decodes them. A fold that keeps
        no jobs (`History.counted_only`) takes only events about no job (a
        resumed segment that had nothing to send): `CountedOnly` otherwise.
        """
        if lines:  # decoded a batch at a time: a few KB of events, hot in the cache
            items = items if isinstance(items, list) else list(items)
            first = self.number + 1
            for start in range(0, len(items), _BATCH):
                batch = self._decode(items[start : start + _BATCH], first + start, ordinal)
                try:
                    if self.history._counted is not None and not self.disjoint:
                        self._no_job_events(batch)
                    self._events(batch, ordinal, lines=True)
                except _Bad as bad:
                    number = first + start + _index(batch, bad.event, str(self.path))
                    found = self._explain(batch, bad)
                    raise LedgerInvalid(f"{self.path}:{number}: {found}") from None
            return
        events = iter(items)  # decoded events (a `LedgerRead`, say): a batch at a time
        positions = getattr(items, "positions", None)  # where a `LedgerRead`'s come from
        while True:
            taken: list[dict[str, Any]] = []
            try:
                taken.extend(islice(events, _BATCH))
            except LedgerInvalid:  # a line it cannot decode: the events before it first
                self._events_of(taken, ordinal, positions)
                raise
            if not taken:
                return
            self._events_of(taken, ordinal, positions)

    def _events_of(self, batch: list[dict[str, Any]], ordinal: int, positions: Any) -> None:
        """Fold decoded events (see `events`); `LedgerInvalid` names a bad one's place."""
        if not batch:
            return
        try:
            if self.history._counted is not None and not self.disjoint:
                self._no_job_events(batch)
            self._events(batch, ordinal, lines=False)
        except _Bad as bad:
            where = str(self.history._sources[ordinal].path)
            back = len(batch) - _index(batch, bad.event, where)
            if positions is not None and back <= len(positions):
                where = "{}:{}".format(*positions[-back])
            raise LedgerInvalid(f"{where}: {self._explain(batch, bad)}") from None

    def _explain(self, batch: list[dict[str, Any]], bad: _Bad) -> str:
        event = bad.event if bad.event is not None else batch[_index(batch, None, str(self.path))]
        return bad.problem or problem(event, self.path) or "not a valid ledger event"

    def _decode(self, lines: list[bytes], first: int, ordinal: int) -> list[dict[str, Any]]:
        """`decode_lines`, in order: a bad line is refused only once the lines before it
        are folded, as `LedgerRead` would (a `workers` record among them hands the
        rest to it: `PartsUnmerged`; it skips the partial copy of parts that follows)."""
        try:
            return decode_lines(lines, first, self.path)
        except LedgerInvalid:
            for n, line in enumerate(lines):
                try:
                    decode_lines([line], first + n, self.path)
                except LedgerInvalid:
                    self.events(lines[:n], ordinal, lines=True)  # an earlier problem first
                    raise
            raise

    def _no_job_events(self, events: list[dict[str, Any]]) -> None:
        """`CountedOnly` if any of `events` is about a job."""
        for event in events:
            kind = event.get("event")
            if type(kind) is str and kind in JOB_EVENTS:
                raise CountedOnly

    def _events(self, items: list[Any], ordinal: int, *, lines: bool) -> None:
        """Fold decoded events; `_Bad` for one a reader cannot take.

        Each field is checked where it is used, as it is used: its type (an
        operation on a value of the wrong type raises, and is caught here
        once for the whole loop) and its range. `check.problem` says why.
        """
        history = self.history
        descriptions, details = self.descriptions, self.details
        extras = history.extras
        table = history._states
        times = history.intent_times
        examples = history.overlap_examples
        latencies = history.latencies_us.append
        label = history._label
        labels = history._labels
        plain_labels = self.plain_labels
        verdict_index = history._verdict_index
        verdict_of = history._verdict
        first_t, last_t = history.first_t, history.last_t
        attempts = history.attempts
        source = history._sources[ordinal]
        here = 1 + ordinal % LEDGER_MAX  # never 0: 0 means "no ledger yet"
        fresh: dict[Any, int] = {}  # workspace -> the state of a job new with an intent here
        fresh_bits = ONE_SOURCE | here << LEDGER_SHIFT | ONE_ATTEMPT
        orphans, orphan_ids = self.orphans, self.orphan_ids
        events: list[dict[str, Any]] = items
        # Every job of these events, found (or added, with state 0) in one call:
        # slots stay valid until the table grows, which only a `run` header makes it do.
        event: dict[str, Any] | None = None  # the event being folded, for `_Bad`
        try:
            keys = [
                hash(event["job"]) & M64 or 1  # job_key(), inlined
                for event in events
                if event.get("event") in JOB_EVENTS
            ]
            slots = table.slots(keys)
            values = table.values
            j = 0  # the next job event's place in `keys` and `slots`
            touched = False  # whether a job's state changed (then `groups` counts again)
            # This loop runs once per event (2-3 per job): the common cases come first.
            for event in events:
                kind = event.get("event")
                t = event.get("t")
                if t is not None:
                    if not -MAX_TIME < t < MAX_TIME:  # a string: TypeError; NaN too
                        raise _Bad(event)
                    if t > last_t:
                        last_t = t
                    if t < first_t:
                        first_t = t
                if kind in JOB_EVENTS:
                    touched = True
                    job_id = event["job"]
                    if type(job_id) is not str:
                        raise _Bad(event)
                    key = keys[j]
                    i = slots[j]
                    j += 1
                    state = values[i]
                    if (
                        not state
                        and orphans is not None
                        and (kind != "intent" or "name" not in event or job_id in orphan_ids)
                    ):  # a part folded apart: a job not new here is the parent's to fold
                        orphan_ids.add(job_id)
                        orphans.append(event)
                        continue
                    if extras is not None:
                        extra = extras.get(job_id) or extras.setdefault(job_id, JobExtras())
                    if kind == "result":
                        state = state or PRESENT
                        verdict = event.get("verdict", "?")
                        try:
                            index = verdict_index[verdict]
                        except (KeyError, TypeError):
                            if verdict is not None and not isinstance(verdict, str):
                                raise _Bad(event) from None
                            index = verdict_of(verdict)
                        state = (state & NO_LAST) | index << LAST_SHIFT
                        latency = event.get("latency_ms")
                        if latency is not None:
                            if not 0.0 <= latency <= MAX_LATENCY_MS:  # NaN too
                                raise _Bad(event)
                            if event.get("status") is not None:
                                latencies(round(latency * 1000))
                        if details:
                            if problem(event) is not None:  # every field it keeps
                                raise _Bad(event)
                            extra.detail = (
                                event.get("status"),
                                event.get("error_code"),
                                event.get("error_msg"),
                                event.get("request_id"),
                                event.get("instance_id") or extra.instance_id(),
                            )
                        outcome = event.get("outcome")
                        if outcome is not None:
                            if outcome == "started" and labels[state >> LABEL_SHIFT][1] is None:
                                state = (state & NO_OUTCOME) | STARTED_BITS
                            else:
                                state = settle(state, outcome, event, labels, label)
                            if verdict in PERMANENT:
                                state |= PERMANENT_BIT
                            else:
                                state &= NOT_PERMANENT
                            if state & OUTCOME_FIELD != UNKNOWN_BITS:
                                times.pop(key, None)  # settled for good: its intent time is moot
                    elif kind == "intent":
                        if not state:  # a new job: its label is its workspace, no failure yet
                            workspace = event.get("workspace")
                            try:
                                state = fresh[workspace]
                            except KeyError:
                                if workspace is not None and not isinstance(workspace, str):
                                    raise _Bad(event) from None
                                try:
                                    index = plain_labels[workspace]
                                except KeyError:
                                    index = plain_labels[workspace] = label(workspace, None)
                                state = fresh[workspace] = (
                                    PRESENT | index << LABEL_SHIFT | fresh_bits
                                )
                        else:
                            if (state >> LEDGER_SHIFT) & LEDGER_MAX != here:
                                # The first intent of this job in this ledger: one more source.
                                sources = (state >> SOURCES_SHIFT) & SOURCES_MAX
                                if sources < SOURCES_MAX:
                                    state += ONE_SOURCE
                                if sources == 1 and len(examples) < OVERLAP_EXAMPLES:
                                    examples.append(job_id)
                                state = (state & NO_LEDGER) | here << LEDGER_SHIFT
                            if (state >> ATTEMPTS_SHIFT) & ATTEMPTS_MAX < ATTEMPTS_MAX:
                                state += ONE_ATTEMPT
                            state &= REOPENED  # a new attempt reopens a settled job
                        attempts += 1
                        times[key] = float(t or 0.0)
                        if extras is not None and "name" in event:
                            if problem(event) is not None:  # every field it keeps
                                raise _Bad(event)
                            if descriptions and extra.description is None:
                                extra.description = event
                            if details and extra.name is None:
                                extra.name = event["name"]
                                extra.project_id = event.get("project_id")
                    else:  # a check
                        state = state or PRESENT
                        conclusion = event.get("conclusion")
                        outcome = event.get("outcome")
                        if outcome is not None:
                            state = settle(state, outcome, event, labels, label) & NOT_PERMANENT
                            if conclusion == "took_effect":
                                state |= RECONCILED_BIT
                            else:
                                state &= NOT_RECONCILED
                            if state & OUTCOME_FIELD != UNKNOWN_BITS:
                                times.pop(key, None)
                        elif conclusion == "not_taken":
                            # The check said it did not happen.
                            state = (state & NO_LAST) | TRANSIENT << LAST_SHIFT
                    values[i] = state
                elif kind == "run":
                    found = problem(event)
                    if found is not None:
                        raise _Bad(event, found)
                    history.headers.append(event)
                    jobs = RunHeader.of(event).manifest_jobs or 0
                    if jobs > source.jobs:  # a ledger counts the most jobs its headers announce
                        history.declared_jobs += jobs - source.jobs
                        source.jobs = jobs
                    # Size the table for the jobs the headers announce (capped: a header
                    # is input too): growing while full is when memory peaks.
                    if self.sized_by_headers and table.reserve(min(history.declared_jobs, 1 << 21)):
                        slots[j:] = table.slots(keys[j:])  # it grew: the slots moved
                        values = table.values
                elif kind == "end":
                    found = problem(event)
                    if found is not None:
                        raise _Bad(event, found)
                    history.footers.append(event)
                elif kind in FLEET_EVENTS:
                    if lines:  # (a `LedgerRead` checked those it yields)
                        found = problem(event, self.path)
                        if found is not None:
                            raise _Bad(event, found)
                        self.fleet_record(kind, event)
                elif type(kind) is not str:
                    raise _Bad(event)
        except (TypeError, KeyError, ValueError, OverflowError, AttributeError):
            raise _Bad(event) from None
        if touched:
            history._counts = None
        history.first_t, history.last_t = first_t, last_t
        history.attempts = attempts


def part_of(folder: Folder, tail: Tail, ordinal: int) -> FoldedPart:
    """A fold of part of a ledger (`folder`'s, up to `tail`), as `Folder.merge` takes it."""
    history = folder.history
    keys, states = history._states.nonzero_items()
    return FoldedPart(
        tail=tail,
        lines=folder.number,
        fleet_ops=folder.fleet_ops,
        orphans=folder.orphans or [],
        keys=keys,
        states=states,
        times=history.intent_times,
        **totals_of(history, ordinal),
    )


def settle(
    state: int,
    outcome: str,
    event: dict[str, Any],
    labels: list[tuple[str | None, str | None]],
    label: Callable[[str | None, str | None], int],
) -> int:
    """`state` with `outcome` and its failure code (the error, else the status or failure)."""
    if not isinstance(outcome, str):
        raise _Bad(event)
    code = OUTCOME_CODES.get(outcome, UNKNOWN)
    state = (state & NO_OUTCOME) | code << OUTCOME_SHIFT
    failure: str | None = None
    if code == FAILED:
        error_code = event.get("error_code")
        status = event.get("status")
        failure = event.get("failure")
        if problem(event) is not None:  # its error code, status, failure: every field used
            raise _Bad(event)
        # (the summary groups transport failures by reason: `detail`)
        failure = failure_key(error_code, status, failure, event.get("detail"))
    workspace, before = labels[state >> LABEL_SHIFT]
    if failure != before:
        state = (state & BELOW_LABEL) | label(workspace, failure) << LABEL_SHIFT
    return state
