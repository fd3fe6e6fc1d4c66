"""`History`: everything the ledgers say, folded (the result of `launcher.ledger.fold`).

Reports (`report`) and resume/replay planning (`plan`) both start here, so
they cannot disagree about a job. Memory grows with the number of jobs
(32-64 bytes each, in a `CompactMap`: 32 MB at a million), never with the
number of events, and the default fold makes no Python object per job (see
`launcher.ledger.state` for how a job is kept).

A job's final outcome is the `outcome` of its latest settling event (a
`result` or a `check`); a later attempt reopens it. Without one, the job is
`unknown` when its last request may have reached the service (an intent with
no result, or an ambiguous reply nobody settled) and `pending` when it
certainly did not (throttled, 5xx, refused connection, never sent). The time
of a job's last intent is kept only while it is unsettled (a small dict: jobs
leave it as they settle), since only a job in doubt needs it.

`Source` is one ledger of a fold and where its fold may continue (`catch_up`).
"""

from __future__ import annotations

import math
import os
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from launcher.errors import UsageError
from launcher.ledger.compact import CompactMap
from launcher.ledger.events import RunHeader
from launcher.ledger.read import open_regular
from launcher.ledger.state import (
    KNOWN_VERDICTS,
    LABEL_MAX,
    LAST_MAX,
    OUTCOME_NAMES,
    PRESENT,
    UNKNOWN_VERDICT,
    JobExtras,
    JobRecord,
    job_key,
    unpack_state,
)

__all__ = ["History", "Source", "extends"]


class History:
    """Everything the ledgers say, folded."""

    __slots__ = (
        "_counted",
        "_counts",
        "_keep",
        "_label_index",
        "_labels",
        "_sources",
        "_states",
        "_verdict_index",
        "_verdicts",
        "attempts",
        "declared_jobs",
        "extras",
        "first_t",
        "footers",
        "headers",
        "intent_times",
        "last_t",
        "latencies_us",
        "ledgers",
        "overlap_examples",
        "torn_tail",
    )

    def __init__(self, *, keep: frozenset[str] = frozenset()) -> None:
        self.headers: list[dict[str, Any]] = []
        self.footers: list[dict[str, Any]] = []
        self.ledgers: list[str] = []
        self.torn_tail: list[str] = []
        # Answered attempts' latency in whole microseconds (ledgers round to 1 µs):
        # 8 bytes each, and integers let the report select percentiles without sorting.
        self.latencies_us: array[int] = array("q")
        self.attempts = 0
        self.declared_jobs = 0  # the manifests' job counts (per ledger, latest segment)
        self.first_t = math.inf
        self.last_t = -math.inf
        self.overlap_examples: list[str] = []  # a few jobs found in more than one ledger
        # Last intent time of each unsettled job, by key; settled jobs leave it.
        self.intent_times: dict[int, float] = {}
        # Per-job extras by job id, in order of first mention (only with `keep`).
        self.extras: dict[str, JobExtras] | None = {} if keep else None
        self._keep = keep
        self._counts: Counter[int] | None = None  # states by count, for `groups`
        # Jobs only counted, not kept (a snapshot's, or fleet workers' counts merged):
        # their states by count. A fold with any cannot look up a job (see `counted_only`).
        self._counted: Counter[int] | None = None
        self._sources: list[Source] = []  # per ledger, in `ledgers` order
        self._states = CompactMap()
        self._labels: list[tuple[str | None, str | None]] = [(None, None)]
        self._label_index: dict[tuple[str | None, str | None], int] = {(None, None): 0}
        self._verdicts: list[str] = list(KNOWN_VERDICTS)
        self._verdict_index: dict[str, int] = {v: i for i, v in enumerate(KNOWN_VERDICTS)}

    @property
    def runs(self) -> list[RunHeader]:
        """The `run` headers (checked as they were folded), as typed views, in order.

        Built on each call from `headers`, which snapshots and worker parts carry as
        decoded JSON: one view per segment, a handful."""
        return [RunHeader.of(header) for header in self.headers]

    @property
    def manifest_sha256(self) -> str | None:
        """The manifest hash recorded by the latest segment."""
        for run in reversed(self.runs):
            if run.manifest_sha256 is not None:
                return run.manifest_sha256
        return None

    @property
    def job_count(self) -> int:
        """How many distinct jobs the ledgers mention."""
        counted = self._counted
        return len(self._states) + (sum(counted.values()) if counted else 0)

    @property
    def counted_only(self) -> bool:
        """Whether some jobs are counted but not kept: then counts and summaries are
        exact, and looking up a job (`record`, `state`, `in`, `items`) raises."""
        return self._counted is not None

    def _keys_needed(self) -> None:
        if self._counted is not None:
            raise RuntimeError("this fold counted jobs without keeping them: fold the ledger")

    def __contains__(self, job_id: object) -> bool:
        self._keys_needed()
        return isinstance(job_id, str) and job_key(job_id) in self._states

    def state(self, job_id: str) -> int:
        """The job's packed state (see `unpack_state`), 0 if the ledgers never mention it."""
        self._keys_needed()
        value = self._states.get(job_key(job_id))
        return value or 0

    def record(self, job_id: str) -> JobRecord | None:
        """The job as the ledgers leave it, or None if they never mention it."""
        self._keys_needed()
        key = job_key(job_id)
        packed = self._states.get(key, 0)
        if not packed:
            return None
        record = self.decode(packed, key)
        if self.extras is not None:
            _add_extras(record, self.extras.get(job_id))
        return record

    def decode(self, packed: int, key: int | None = None) -> JobRecord:
        """A packed state as a `JobRecord` (with `key`, its last intent time if unsettled)."""
        state = unpack_state(packed)
        workspace, failure = self._labels[state.label]
        return JobRecord(
            outcome=OUTCOME_NAMES[state.outcome],
            last=self._verdicts[state.last],
            permanent=state.permanent,
            reconciled=state.reconciled,
            attempts=state.attempts,
            last_intent_t=self.intent_times.get(key, 0.0) if key is not None else 0.0,
            failure=failure,
            workspace=workspace,
            sources=state.sources,
        )

    def groups(self) -> Iterator[tuple[JobRecord, int]]:
        """Every distinct job state once, decoded, with how many jobs are in it.

        This is how summaries count: jobs in the same state share one record
        (whose `last_intent_t` is 0.0), so a million jobs make a few hundred
        records, not a million. The order is not meaningful.
        """
        for packed, count in self.state_counts().items():
            yield self.decode(packed), count

    def state_counts(self) -> Counter[int]:
        """How many jobs are in each packed state (kept and counted ones alike); cached."""
        counts = self._counts
        if counts is None:  # one C-level pass over the table (0: an empty slot)
            counts = self._counts = Counter(self._states.nonzero_values())
            if self._counted:
                counts.update(self._counted)
        return counts

    def items(self) -> Iterator[tuple[str, JobRecord]]:
        """(job id, record) for every job, in order of first mention.

        Needs `fold(..., keep=...)` with "descriptions" or "details": only then
        are job ids kept at all.
        """
        extras = self.extras
        if extras is None:
            raise ValueError("job ids are kept only by fold(..., keep={'details'|'descriptions'})")
        self._keys_needed()
        states = self._states
        for job_id, extra in extras.items():
            key = job_key(job_id)
            record = self.decode(states.get(key, 0) or PRESENT, key)
            _add_extras(record, extra)
            yield job_id, record

    # -- the fold's interned tables -------------------------------------------

    def _label(self, workspace: str | None, failure: str | None) -> int:
        pair = (workspace, failure)
        index = self._label_index.get(pair)
        if index is None:
            index = len(self._labels)
            if index > LABEL_MAX:
                raise UsageError(
                    f"the ledgers name more than {LABEL_MAX} distinct (workspace, failure "
                    "code) pairs; this report cannot hold them"
                )
            self._labels.append(pair)
            self._label_index[pair] = index
        return index

    def _verdict(self, verdict: Any) -> int:
        index = self._verdict_index.get(verdict) if isinstance(verdict, str) else None
        if index is None:
            if not isinstance(verdict, str) or len(self._verdicts) > LAST_MAX:
                return UNKNOWN_VERDICT
            index = len(self._verdicts)
            self._verdicts.append(verdict)
            self._verdict_index[verdict] = index
        return index


def _add_extras(record: JobRecord, extra: JobExtras | None) -> None:
    if extra is not None:
        record.description = extra.description
        record.name = extra.name
        record.project_id = extra.project_id
        record.detail = extra.detail


@dataclass(slots=True)
class Source:
    """One ledger of a fold: its share of the counts, and where its fold may continue."""

    path: str
    jobs: int = 0  # the most jobs a `run` header of this ledger announced
    torn: bool = False  # its last line had no newline (yet)
    offset: int = -1  # bytes folded, to the end of the last complete line (-1: cannot continue)
    lines: int = 0  # complete lines folded (to number lines)
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file read
    tail: bytes = b""  # the last bytes before `offset`, to recognise the file again


def extends(source: Source) -> bool:
    """Whether the ledger is still the file folded, to `source.offset`, perhaps longer."""
    if source.offset < 0:
        return False
    try:
        with open_regular(source.path) as handle:
            info = os.fstat(handle.fileno())
            if (info.st_dev, info.st_ino) != source.identity or info.st_size < source.offset:
                return False
            handle.seek(source.offset - len(source.tail))
            return handle.read(len(source.tail)) == source.tail
    except (OSError, UsageError):
        return False
