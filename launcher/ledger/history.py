"""What ledgers say: one pass over their events, one packed 64-bit state per job.

Reports (`report`) and resume/replay planning (`plan`) both start here, so
they cannot disagree about a job. The pass streams: memory grows with the
number of jobs (32-64 bytes each, in a `CompactMap`: 32 MB at a million),
never with the number of events, and the default fold makes no Python object
per job.

A job's final outcome is the `outcome` of its latest settling event (a
`result` or a `check`); a later attempt reopens it. Without one, the job is
`unknown` when its last request may have reached the service (an intent with
no result, or an ambiguous reply nobody settled) and `pending` when it
certainly did not (throttled, 5xx, refused connection, never sent).

How a job is kept:

- its key is `job_key(job_id)`: 64 bits of Python's (per-process, keyed
  SipHash) string hash. Two different jobs share a key with probability about
  n²/2⁶⁵ (≈3e-8 at a million jobs), whatever their ids look like; they would
  then be folded as one job. Keys never leave the process (but for its forked
  children, which share its hash seed), so the per-process seed does not matter;
- its state is one 64-bit int (`JobState` says what each bit means): outcome,
  last verdict, permanent, reconciled, sources and attempts (both saturating),
  the ledger that last mentioned it (to count sources), and an index into an
  interned table of (workspace, failure code) pairs;
- the time of its last intent is kept only while it is unsettled (a small
  dict: jobs leave it as they settle), since only a job in doubt needs it;
- with `keep={"descriptions"}` (replay) or `keep={"details"}` (per-job report
  rows), each job also gets a `JobExtras` in a dict keyed by its id: those are
  opt-in and per job by nature.

`JobRecord` is a decoded view, built on demand (`History.record`,
`History.items`, `History.groups`); it is not what is stored.

How a ledger is read: the fold reads a `LedgerRead`'s file itself, a
megabyte at a time, with exactly the semantics of iterating it (torn tail,
bad lines, `end`, worker parts), and keeps where it stopped: `catch_up` then
folds only what a ledger gained since, which is how a resumed run summarizes
its ledger without reading it twice. A file of at least two 32 MB parts, on a
machine with more than one CPU, may be folded in parts by forked children
(`fold(..., parallel=True)`, as a resume does), with the result of one pass.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import math
import os
import pickle
import signal
import sys
import threading
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from launcher.errors import UsageError
from launcher.ledger.compact import CompactMap
from launcher.ledger.writer import (
    MERGED_PREFIX,
    WORKERS_PREFIX,
    Ledger,
    LedgerRead,
    missing_parts,
    part_paths,
    parts_pending,
)

__all__ = [
    "NOT_TAKEN",
    "PERMANENT",
    "SNAPSHOT_SUFFIX",
    "CountedPart",
    "FoldedPart",
    "History",
    "JobExtras",
    "JobRecord",
    "JobState",
    "LiveFold",
    "catch_up",
    "fold",
    "fold_fleet",
    "job_key",
    "load_fold",
    "pack_state",
    "save_fold",
    "snapshot_path",
    "unpack_state",
]

# Verdicts of a last attempt that certainly did not take effect: safe to send again.
NOT_TAKEN = frozenset({"throttled", "transient", "refresh_auth", "not_sent", "tls_failed"})
# Verdicts of a failure that a resend cannot fix.
PERMANENT = frozenset({"permanent", "auth_failed"})

_M64 = (1 << 64) - 1
_OVERLAP_EXAMPLES = 5  # overlapping job ids kept to name in the summary
_JOB_EVENTS = frozenset({"intent", "result", "check"})

# -- the packed state ---------------------------------------------------------
# Bit 0 is always set, so a stored state is never 0 (the value of an empty slot).
_PRESENT = 1
_OUTCOME_SHIFT, _OUTCOME_MAX = 1, 3  # 0 none, 1 started, 2 failed, 3 unknown
_PERMANENT_BIT = 1 << 3
_RECONCILED_BIT = 1 << 4
_SOURCES_SHIFT, _SOURCES_MAX = 5, 15  # saturating: "more than one" is what matters
_ATTEMPTS_SHIFT, _ATTEMPTS_MAX = 9, 0xFFFF  # saturating: max-attempts is 5 by default
_LAST_SHIFT, _LAST_MAX = 25, 31  # index into the verdict table (0 = "intent")
_LEDGER_SHIFT, _LEDGER_MAX = 30, 0xFFFF  # 1 + (ledger ordinal - 1) % 65535; 0 = never
_LABEL_SHIFT, _LABEL_MAX = 46, (1 << 18) - 1  # index into (workspace, failure) pairs

_OUTCOME_FIELD = _OUTCOME_MAX << _OUTCOME_SHIFT
_LAST_FIELD = _LAST_MAX << _LAST_SHIFT
_LEDGER_FIELD = _LEDGER_MAX << _LEDGER_SHIFT
_BELOW_LABEL = (1 << _LABEL_SHIFT) - 1
# Masks and increments the fold uses on every event, computed once (Python does
# not fold expressions of named constants).
_NO_OUTCOME = ~_OUTCOME_FIELD
_NO_LAST = ~_LAST_FIELD
_NO_LEDGER = ~_LEDGER_FIELD
_NOT_PERMANENT = ~_PERMANENT_BIT
_NOT_RECONCILED = ~_RECONCILED_BIT
_REOPENED = ~(_OUTCOME_FIELD | _LAST_FIELD)  # no outcome, last = "intent" (index 0)
_ONE_SOURCE = 1 << _SOURCES_SHIFT
_ONE_ATTEMPT = 1 << _ATTEMPTS_SHIFT

_OUTCOMES: tuple[str | None, ...] = (None, "started", "failed", "unknown")
_STARTED, _FAILED, _UNKNOWN = 1, 2, 3
_STARTED_BITS = _STARTED << _OUTCOME_SHIFT
_UNKNOWN_BITS = _UNKNOWN << _OUTCOME_SHIFT
# An outcome this version does not know is kept as `unknown`: a resume then
# checks the job with the service instead of trusting or resending it.
_OUTCOME_CODES = {"started": _STARTED, "failed": _FAILED, "unknown": _UNKNOWN}

# The verdict table starts with every verdict the launcher writes, so their
# indexes are the same in every fold; others are added as met, up to _LAST_MAX,
# and past that read as "?" (not in NOT_TAKEN, like any unknown verdict).
_KNOWN_VERDICTS = (
    "intent",
    "started",
    "permanent",
    "refresh_auth",
    "auth_failed",
    "throttled",
    "transient",
    "ambiguous",
    "not_sent",
    "tls_failed",
    "?",
)
_TRANSIENT = _KNOWN_VERDICTS.index("transient")
_UNKNOWN_VERDICT = _KNOWN_VERDICTS.index("?")


def job_key(job_id: str) -> int:
    """The 64-bit key a job is kept under (per process: see the module docstring).

    Never 0 (the hash of "" is 0): the fold's inlined probe takes a 0 in the
    key array for an empty slot, so 0 joins 1, one more alias among 2^64.
    """
    return hash(job_id) & _M64 or 1


class JobState(NamedTuple):
    """A packed job state, unpacked: integer codes and indexes, as stored."""

    outcome: int  # 0 none, 1 started, 2 failed, 3 unknown
    last: int  # index into the fold's verdict table (0 = "intent")
    permanent: bool
    reconciled: bool
    sources: int  # saturates at 15
    attempts: int  # saturates at 65535
    ledger: int  # the last ledger that counted the job among its sources (0: none)
    label: int  # index into the fold's (workspace, failure) table


def pack_state(state: JobState) -> int:
    """`state` as one 64-bit int; sources and attempts saturate, other fields must fit."""
    if not (
        0 <= state.outcome <= _OUTCOME_MAX
        and 0 <= state.last <= _LAST_MAX
        and 0 <= state.ledger <= _LEDGER_MAX
        and 0 <= state.label <= _LABEL_MAX
        and state.sources >= 0
        and state.attempts >= 0
    ):
        raise ValueError(f"job state out of range: {state}")
    return (
        _PRESENT
        | state.outcome << _OUTCOME_SHIFT
        | (_PERMANENT_BIT if state.permanent else 0)
        | (_RECONCILED_BIT if state.reconciled else 0)
        | min(state.sources, _SOURCES_MAX) << _SOURCES_SHIFT
        | min(state.attempts, _ATTEMPTS_MAX) << _ATTEMPTS_SHIFT
        | state.last << _LAST_SHIFT
        | state.ledger << _LEDGER_SHIFT
        | state.label << _LABEL_SHIFT
    )


def unpack_state(packed: int) -> JobState:
    """The fields of a packed state."""
    return JobState(
        outcome=(packed >> _OUTCOME_SHIFT) & _OUTCOME_MAX,
        last=(packed >> _LAST_SHIFT) & _LAST_MAX,
        permanent=bool(packed & _PERMANENT_BIT),
        reconciled=bool(packed & _RECONCILED_BIT),
        sources=(packed >> _SOURCES_SHIFT) & _SOURCES_MAX,
        attempts=(packed >> _ATTEMPTS_SHIFT) & _ATTEMPTS_MAX,
        ledger=(packed >> _LEDGER_SHIFT) & _LEDGER_MAX,
        label=packed >> _LABEL_SHIFT,
    )


@dataclass(slots=True)
class JobRecord:
    """One job as the ledgers leave it (a decoded view of its packed state)."""

    outcome: str | None = None  # started | failed | unknown | None (not settled)
    last: str = "intent"  # "intent", or the last result's verdict
    permanent: bool = False  # the failure was a permanent one (DLF.*, 404, auth)
    reconciled: bool = False  # started, as a status check found after a lost answer
    attempts: int = 0  # saturates at 65535
    last_intent_t: float = 0.0  # Unix time of the last attempt's intent (unsettled jobs only)
    failure: str | None = None  # error code (or `HTTP 503`, `timeout`) of a failure
    workspace: str | None = None
    sources: int = 0  # how many ledgers mention the job (more than 1: sharding overlap)
    description: dict[str, Any] | None = None  # first intent (with keep="descriptions")
    name: str | None = None  # with keep="details": the job's name and project...
    project_id: str | None = None
    # ...and its latest answer: (status, error_code, error_msg, request_id, instance_id)
    detail: tuple[Any, ...] | None = None

    def instance_id(self) -> Any:
        """The run-immediate instance recorded by an earlier answer, if any."""
        return self.detail[4] if self.detail is not None else None

    @property
    def final(self) -> str:
        """The job's outcome for reports: started, failed, unknown or pending."""
        if self.outcome is not None:
            return self.outcome
        return "pending" if self.last in NOT_TAKEN else "unknown"


@dataclass(slots=True)
class JobExtras:
    """What `keep` asks to hold per job, beyond its packed state."""

    description: dict[str, Any] | None = None  # the first intent with a description
    name: str | None = None
    project_id: str | None = None
    detail: tuple[Any, ...] | None = None  # the latest answer, as in `JobRecord.detail`

    def instance_id(self) -> Any:
        """The run-immediate instance recorded by an earlier answer, if any."""
        return self.detail[4] if self.detail is not None else None


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
        self._sources: list[_Source] = []  # per ledger, in `ledgers` order
        self._states = CompactMap()
        self._labels: list[tuple[str | None, str | None]] = [(None, None)]
        self._label_index: dict[tuple[str | None, str | None], int] = {(None, None): 0}
        self._verdicts: list[str] = list(_KNOWN_VERDICTS)
        self._verdict_index: dict[str, int] = {v: i for i, v in enumerate(_KNOWN_VERDICTS)}

    @property
    def manifest_sha256(self) -> str | None:
        """The manifest hash recorded by the latest segment."""
        for header in reversed(self.headers):
            digest = (header.get("manifest") or {}).get("sha256")
            if isinstance(digest, str):
                return digest
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
            outcome=_OUTCOMES[state.outcome],
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
            counts = self._counts = Counter(filter(None, self._states.values))
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
            record = self.decode(states.get(key, 0) or _PRESENT, key)
            _add_extras(record, extra)
            yield job_id, record

    # -- the fold's interned tables -------------------------------------------

    def _label(self, workspace: str | None, failure: str | None) -> int:
        pair = (workspace, failure)
        index = self._label_index.get(pair)
        if index is None:
            index = len(self._labels)
            if index > _LABEL_MAX:
                raise UsageError(
                    f"the ledgers name more than {_LABEL_MAX} distinct (workspace, failure "
                    "code) pairs; this report cannot hold them"
                )
            self._labels.append(pair)
            self._label_index[pair] = index
        return index

    def _verdict(self, verdict: Any) -> int:
        index = self._verdict_index.get(verdict) if isinstance(verdict, str) else None
        if index is None:
            if not isinstance(verdict, str) or len(self._verdicts) > _LAST_MAX:
                return _UNKNOWN_VERDICT
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


def fold(
    reads: Iterable[LedgerRead], *, keep: frozenset[str] = frozenset(), parallel: bool = False
) -> History:
    """Fold one or more ledgers (several: shards of one run) into a `History`.

    `keep` may hold `descriptions` (each job's first intent, for replay) and
    `details` (each job's latest result, for per-job report rows). With
    `parallel`, a large file is folded in parts by forked processes when
    there are CPUs for them (see `_Folder.parallel`): the same result, sooner,
    for more resident memory while it runs (each child's, its copy of this
    process' pages included).

    A `LedgerRead` is read here, a chunk at a time, exactly as iterating it
    reads it (torn tail, bad lines, `end`, merged or missing worker parts),
    and the fold remembers where it stopped in each ledger, for `catch_up`.
    Only a run whose worker parts are still separate files is left to
    `LedgerRead`, which follows them. Any other iterable of events is folded
    as it comes.
    """
    reads = list(reads)
    history = History(keep=keep)
    folder = _Folder(history, parallel=parallel)
    try:
        for read in reads:
            folder.read(read, direct=True)
    except _Unmerged:
        history = History(keep=keep)
        folder = _Folder(history)
        for read in reads:
            if type(read) is LedgerRead:
                read.torn_tail, read.bad_lines = False, []  # as new: read again
            folder.read(read, direct=False)
    return history


def catch_up(history: History) -> History:
    """`history` with what its ledgers gained since they were folded (a new segment, say).

    Only the bytes appended since are read (from the start of a torn last
    line, if the fold met one), as more of the same ledgers, so the result is
    what `fold` of the ledgers gives now. When a ledger is not the file folded
    plus appended lines (it shrank or was replaced, was read up to an `end`
    or by `LedgerRead`), every ledger is folded again. Use the history
    returned: `history` itself, updated, or a new one.
    """
    sources = history._sources
    if sources and all(_extends(source) for source in sources):
        folder = _Folder(history)
        try:
            for ordinal, source in enumerate(sources):
                folder.file(source, ordinal, None)
        except (_Unmerged, _CountedOnly):
            pass  # worker parts appeared, or jobs that `history` cannot keep: fold anew
        else:
            history.torn_tail = [source.path for source in sources if source.torn]
            return history
    return fold([LedgerRead(source.path) for source in sources], keep=history._keep)


class LiveFold:
    """The fold of a new ledger, made from the events its `Ledger` writes, not read back.

    Reading back what a run wrote, for its summary, cost as much again as the
    fold itself: ~5 µs a job of JSON decoding, on one core, after the last
    answer. The writer's own event mappings (`Ledger(mirror=True)`) fold the
    same way for half that, during the run: `take` folds what was written
    since the last call. `history` gives the result, which is what `fold` of
    the file gives, once it has checked that the file is the ledger's and
    holds exactly what it wrote (else it folds the file, as before). Only for
    a ledger that was empty when opened: earlier content was never mirrored.
    """

    def __init__(self, ledger: Ledger, jobs: int) -> None:
        """Fold what `ledger` (made with `mirror=True`) writes about some `jobs` jobs."""
        if not ledger.mirror_intact:
            raise ValueError("LiveFold needs a Ledger made with mirror=True")
        self.ledger = ledger
        self._history = History()
        self._source = _Source(str(ledger.path))
        self._history._sources.append(self._source)
        self._history.ledgers.append(self._source.path)
        self._folder = _Folder(self._history)
        # Sized for the jobs this writer sends, not the run's whole count its header
        # gives: a fleet worker sends a share, and each worker's table is resident.
        self._history._states.reserve(min(jobs, 1 << 21))
        self._folder.sized_by_headers = False

    def take(self) -> None:
        """Fold the events the ledger recorded since the last call."""
        events = self.ledger.take_events()
        if events:
            self._folder.events(events, 0, lines=False)
            self._folder.number += len(events)  # one line each

    def history(self) -> History:
        """The ledger's fold, once its `Ledger` is closed: as `fold` of the file would give."""
        end = self._written_tail()
        if end is None:
            return fold([LedgerRead(self._source.path)])
        source = self._source
        source.offset, source.lines, source.tail, source.identity = end
        return self._history

    def part(self) -> FoldedPart | None:
        """For a fleet's parent, once the `Ledger` (a worker's part) is closed: the fold,
        in the form `fold_fleet` merges; None if the file is not exactly what was written."""
        end = self._written_tail()
        if end is None:
            return None
        written, _, tail, _ = end
        return _part_of(self._folder, _Tail(written, b"", True, tail[:-1]), 0)

    def counts(self) -> CountedPart | None:
        """For a fleet's parent, once the `Ledger` (a worker's part) is closed: the fold
        as counts (see `CountedPart`); None if the file is not exactly what was written."""
        end = self._written_tail()
        if end is None:
            return None
        history = self._history
        counts = list(history.state_counts().items())
        return CountedPart(size=end[0], lines=end[1], counts=counts, **_totals_of(history, 0))

    def _written_tail(self) -> tuple[int, int, bytes, tuple[int, int]] | None:
        """(bytes, lines, last bytes, file identity) of the ledger, if it is exactly what
        was written and folded here; else None."""
        ledger = self.ledger
        self.take()
        written = ledger.bytes_written
        try:
            with open(self._source.path, "rb") as handle:
                info = os.fstat(handle.fileno())
                handle.seek(max(0, written - 64))
                tail = handle.read(64)
        except OSError:
            return None
        identity = (info.st_dev, info.st_ino)
        if (
            ledger.mirror_intact
            and ledger.start_size == 0
            and identity == ledger.identity
            and info.st_size == written
            and tail.endswith(b"\n")
        ):
            return written, self._folder.number, tail, identity
        return None


# -- snapshots: a finished ledger's counts, kept beside it -------------------------------
#
# A resume of a finished 300,000-job run spent ~1.5 s folding 100 MB of JSON that
# the end of that run had just folded. The end of a run now saves its fold's
# counts beside the ledger (`<ledger>.fold`: a JSON line, then the latencies'
# raw bytes). Counts, not jobs: fold keys are per-process string hashes, and
# ids for every job would make the snapshot as slow to read as the ledger.
# Counts are all a summary needs, and all a resume needs when nothing is left
# to send; a resume that has jobs to send folds the ledger. A snapshot is
# used only while the ledger is exactly the file it describes (same file,
# same size, same last bytes); it is a cache: without it, only time changes.

SNAPSHOT_SUFFIX = ".fold"
_SNAPSHOT_VERSION = 1


def snapshot_path(ledger: str | os.PathLike[str]) -> Path:
    """Where the snapshot of `ledger`'s fold is kept."""
    return Path(f"{os.fspath(ledger)}{SNAPSHOT_SUFFIX}")


def save_fold(history: History) -> bool:
    """Save the counts of `history`, the fold of one whole ledger, beside it; True if saved.

    Written to a temporary file then renamed: a reader finds a whole snapshot
    or none. Nothing is saved for several ledgers, a torn one, or a fold that
    keeps per-job extras.
    """
    if len(history._sources) != 1 or history.extras is not None:
        return False
    source = history._sources[0]
    if source.offset < 0 or source.torn:
        return False
    head = {
        "snapshot": _SNAPSHOT_VERSION,
        "byteorder": sys.byteorder,  # of the latencies' bytes
        "source": [source.jobs, source.offset, source.lines, source.identity, source.tail.hex()],
        "counts": list(history.state_counts().items()),
        "labels": history._labels,
        "verdicts": history._verdicts,
        "latencies": len(history.latencies_us),
        "attempts": history.attempts,
        "declared_jobs": history.declared_jobs,
        "t": [history.first_t, history.last_t] if history.first_t <= history.last_t else None,
        "headers": history.headers,
        "footers": history.footers,
        "overlap_examples": history.overlap_examples,
    }
    target = snapshot_path(source.path)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(orjson.dumps(head, option=orjson.OPT_APPEND_NEWLINE))
            history.latencies_us.tofile(out)
        os.replace(temporary, target)
    except (OSError, TypeError):  # TypeError: a header orjson cannot write; no snapshot then
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False
    return True


def load_fold(ledger: str | os.PathLike[str]) -> History | None:
    """The saved counts of `ledger`'s fold (`History.counted_only`), if the snapshot still
    describes the file exactly; else None."""
    path = os.fspath(ledger)
    history = History()
    try:
        with open(snapshot_path(path), "rb") as handle:
            head = orjson.loads(handle.readline())
            if head["snapshot"] != _SNAPSHOT_VERSION or head["byteorder"] != sys.byteorder:
                return None
            history.latencies_us.fromfile(handle, head["latencies"])
            if handle.read(1):
                return None
        jobs, offset, lines, (device, inode), tail = head["source"]
        source = _Source(path, jobs, False, offset, lines, (device, inode), bytes.fromhex(tail))
        if not _extends(source) or os.stat(path).st_size != offset:
            return None  # not this ledger, or not all of it
        history._counted = Counter({int(state): int(n) for state, n in head["counts"]})
        history._labels = [(workspace, failure) for workspace, failure in head["labels"]]
        history._verdicts = [str(verdict) for verdict in head["verdicts"]]
        for packed in history._counted:  # each state must decode (a summary decodes them all)
            state = unpack_state(packed)
            if state.label >= len(history._labels) or state.last >= len(history._verdicts):
                return None
        history.attempts, history.declared_jobs = int(head["attempts"]), int(head["declared_jobs"])
        if head["t"] is not None:
            history.first_t, history.last_t = float(head["t"][0]), float(head["t"][1])
        history.headers, history.footers = list(head["headers"]), list(head["footers"])
        history.overlap_examples = list(head["overlap_examples"])
    except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError):
        return None  # (orjson.JSONDecodeError is a ValueError)
    history._label_index = {pair: n for n, pair in enumerate(history._labels)}
    history._verdict_index = {verdict: n for n, verdict in enumerate(history._verdicts)}
    history._sources = [source]
    history.ledgers = [path]
    return history


def fold_fleet(
    path: str,
    bounds: Sequence[int],
    parts: Sequence[FoldedPart | CountedPart | None],
    *,
    disjoint: bool = False,
) -> History:
    """The fold of a fleet's merged ledger, taking its workers' folds of their parts.

    `bounds` (from `finish_merge`) are where each part's copy starts in the
    ledger, then where the `merged` record starts; `parts[i]` is worker i's
    fold of its part, or None (or absent): a part whose fold is missing or
    does not fit (its size is not its copy's) is folded from the file.

    - A `FoldedPart` (`LiveFold.part()`, made in this process: its keys are
      this process's string hashes) is merged as `fold(parallel=True)` merges
      a forked child's, unless one of its jobs was met before it.
    - A `CountedPart` (`LiveFold.counts()`, from any process) is merged as
      counts, only when `disjoint` says that no job is in two parts (a new
      run of a manifest validated without duplicates or given ids) and the
      ledger held no job before the parts. The fold then counts those jobs
      without keeping them (`History.counted_only`).

    Either way the summary is that of folding the file in one pass.
    """
    history = History()
    folder = _Folder(history)
    source = _Source(path)
    history._sources.append(source)
    history.ledgers.append(path)
    folder.path = Path(path)
    folder.disjoint = disjoint
    # The table holds only the jobs merged or read: counted parts' jobs are not in it.
    folder.sized_by_headers = False
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            folder.range(handle, 0, 0, bounds[0])
            counts_fit = disjoint and history.job_count == 0
            for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
                part = parts[n] if n < len(parts) else None
                if isinstance(part, FoldedPart):
                    merged = part.tail.position == hi - lo and folder.merge(0, part)
                else:
                    merged = (
                        part is not None
                        and counts_fit
                        and part.size == hi - lo
                        and folder.merge_counts(0, part)
                    )
                if not merged:
                    folder.range(handle, 0, lo, hi)
            tail = folder.range(handle, 0, bounds[-1], None)  # the `merged` record, and on
    except OSError as error:
        raise UsageError(f"{path}: cannot read the ledger: {error.strerror}") from None
    folder.finish(source, tail, info, None)
    if source.torn:
        history.torn_tail.append(path)
    return history


@dataclass(slots=True)
class _Source:
    """One ledger of a fold: its share of the counts, and where its fold may continue."""

    path: str
    jobs: int = 0  # the most jobs a `run` header of this ledger announced
    torn: bool = False  # its last line had no newline (yet)
    offset: int = -1  # bytes folded, to the end of the last complete line (-1: cannot continue)
    lines: int = 0  # complete lines folded (for bad line numbers)
    identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file read
    tail: bytes = b""  # the last bytes before `offset`, to recognise the file again


def _extends(source: _Source) -> bool:
    """Whether the ledger is still the file folded, to `source.offset`, perhaps longer."""
    if source.offset < 0:
        return False
    try:
        with open(source.path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if (info.st_dev, info.st_ino) != source.identity or info.st_size < source.offset:
                return False
            handle.seek(source.offset - len(source.tail))
            return handle.read(len(source.tail)) == source.tail
    except OSError:
        return False


class _Unmerged(Exception):
    """A `workers` record names parts that still exist: only `LedgerRead` follows them."""


class _CountedOnly(Exception):
    """A job's event for a fold that keeps no jobs: only a fold of the ledger can take it."""


@dataclass(slots=True)
class _Tail:
    """Where reading a file stopped."""

    position: int  # the offset reached
    carry: bytes  # what follows the last newline read (a line not complete yet)
    at_end: bool  # the end of the file was reached (then `carry` is its last line)
    last: bytes | None  # the last complete line folded, if any


@dataclass
class _Totals:
    """What every kind of part carries besides its jobs: the fold's totals."""

    labels: list[tuple[str | None, str | None]]
    verdicts: list[str]
    latencies: array[int]
    attempts: int
    first_t: float
    last_t: float
    jobs: int  # the most jobs its `run` headers announce
    headers: list[dict[str, Any]]
    footers: list[dict[str, Any]]


def _totals_of(history: History, ordinal: int) -> dict[str, Any]:
    """`_Totals`' fields as `history` (of ledger `ordinal`) has them, to make a part with."""
    return {
        "labels": history._labels,
        "verdicts": history._verdicts,
        "latencies": history.latencies_us,
        "attempts": history.attempts,
        "first_t": history.first_t,
        "last_t": history.last_t,
        "jobs": history._sources[ordinal].jobs,
        "headers": history.headers,
        "footers": history.footers,
    }


@dataclass
class FoldedPart(_Totals):
    """A fold of one part of a ledger, to merge: a forked child's (see `_Folder.parallel`),
    or a fleet worker's of its part file (see `fold_fleet`)."""

    tail: _Tail
    lines: int
    bad_lines: list[int]  # numbered from the part's start
    fleet_ops: list[tuple[str, list[str] | None]]
    orphans: list[bytes]  # lines of jobs not new in the part, for the parent to fold
    keys: array[int]  # the part's jobs (new ones only) and their states
    states: array[int]
    times: dict[int, float]


@dataclass
class CountedPart(_Totals):
    """A part of a ledger folded to counts: its jobs' states by count, not the jobs.

    What a fleet worker hands its parent (see `fold_fleet`), as JSON: a
    worker's fold keys are string hashes of its own process's seed, which the
    parent's cannot match, but counts travel. Merged as counts only where no
    job of the part can be anywhere else in the ledger.
    """

    size: int  # bytes of the part file folded: all of it
    lines: int
    counts: list[tuple[int, int]]  # (packed state, jobs in it)

    def to_json(self) -> bytes:
        """One line of JSON (the latencies as base64 of their bytes, deflated: a
        million of them are 8 MB raw, ~1-2 MB so, and the parent reads them whole)."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        packed = zlib.compress(self.latencies.tobytes(), 1)
        fields["latencies"] = base64.b64encode(packed).decode()
        fields["t"] = [self.first_t, self.last_t] if self.first_t <= self.last_t else None
        del fields["first_t"], fields["last_t"]
        return orjson.dumps(fields)

    @classmethod
    def from_json(cls, data: bytes) -> CountedPart:
        """The part `to_json` wrote (ValueError, KeyError or TypeError if it is not one)."""
        fields = orjson.loads(data)
        latencies = array("q")
        packed = base64.b64decode(fields.pop("latencies"), validate=True)
        try:
            latencies.frombytes(zlib.decompress(packed))
        except zlib.error as error:
            raise ValueError(f"latencies: {error}") from None
        times = fields.pop("t")
        first_t, last_t = times if times is not None else (math.inf, -math.inf)
        part = cls(latencies=latencies, first_t=first_t, last_t=last_t, **fields)
        part.counts = [(int(state), int(n)) for state, n in part.counts]
        part.labels = [(workspace, failure) for workspace, failure in part.labels]
        return part


class _Child:
    """A forked process folding a part; `result` waits for it."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd

    def result(self) -> FoldedPart | None:
        """Its fold, or None if it failed (then the part is folded here)."""
        with open(self.fd, "rb") as pipe:
            self.fd = -1
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        if status != 0 or not data:
            return None
        part = pickle.loads(data)  # our own child's bytes
        return part if isinstance(part, FoldedPart) else None

    def stop(self) -> None:
        """Kill it if it still runs (this process failed meanwhile), and reap it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0


def _fork(function: Callable[..., FoldedPart], *args: Any) -> _Child:
    """Run `function(*args)` in a forked child; its result comes back pickled through a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, write, and leave without any cleanup of the parent's
        code = 0
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps(function(*args), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:
                payload = pickle.dumps(None)
            with open(write_fd, "wb") as pipe:
                pipe.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return _Child(pid, read_fd)


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _announced_jobs(handle: BinaryIO, start: int) -> int:
    """The jobs the first lines from `start` announce (a `run` header, a `workers` record).

    Only a hint, to size tables: 0 when there is none.
    """
    handle.seek(start)
    for _ in range(4):
        try:
            jobs = orjson.loads(handle.readline())["manifest"]["jobs"]
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            continue
        if type(jobs) is int and jobs > 0:
            return jobs
    return 0


# A file is folded in parallel parts of at least this size, at most this many.
_PARALLEL_PART_BYTES = 32 << 20
_PARALLEL_MAX_PARTS = 8
# The records of a run with worker processes (see `LedgerRead`), found as it finds them.
_FLEET_PREFIXES = (WORKERS_PREFIX, MERGED_PREFIX)
_CHUNK = 1 << 20  # bytes read at a time


class _Folder:
    """A fold in progress: what it keeps between ledgers, chunks and calls."""

    __slots__ = (
        "bad_lines",
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
        # The file being read (see `file`): its path, lines read so far, bad
        # lines, and fleets whose parts are gone (merged, they said).
        self.path = Path()
        self.number = 0
        self.bad_lines: list[int] = []
        self.expected: dict[str, list[str]] = {}
        self.fleet_ops: list[tuple[str, list[str] | None]] = []  # `workers`, `merged` met
        # In a child folding a part (see `parallel`): the lines of jobs it leaves to
        # the parent, in order, and their ids.
        self.orphans: list[bytes] | None = None
        self.orphan_ids: set[str] = set()

    def read(self, read: LedgerRead, *, direct: bool) -> None:
        """Fold one more ledger (`direct`: read a `LedgerRead`'s file here, not through it)."""
        history = self.history
        ordinal = len(history._sources)
        source = _Source(str(read.path))
        history._sources.append(source)
        history.ledgers.append(source.path)
        if direct and type(read) is LedgerRead:
            end = getattr(read, "end", None)
            self.file(source, ordinal, end)
            read.torn_tail, read.bad_lines = source.torn, self.bad_lines
            if end is not None:
                source.offset = -1  # not all of it was read: `catch_up` starts again
        else:
            self.events(read, ordinal, lines=False)
            source.torn = bool(read.torn_tail)
        if source.torn:
            history.torn_tail.append(source.path)

    def file(self, source: _Source, ordinal: int, end: int | None) -> None:
        """Fold a ledger file from `source.offset` on (0 if new), as `LedgerRead` reads it.

        Only the first `end` bytes, if given; updates `source` to where it
        stopped. Raises `_Unmerged` at a `workers` record whose parts all exist.
        A large file is folded in parts, in parallel (see `parallel`).
        """
        path = self.path = Path(source.path)
        start = max(source.offset, 0)
        self.number = source.lines
        self.bad_lines = []
        self.expected = {}
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                bounds = self.bounds(handle, start, info.st_size) if end is None else []
                if bounds:
                    tail = self.parallel(handle, ordinal, [start, *bounds])
                else:
                    tail = self.range(handle, ordinal, start, end)
        except OSError as error:
            raise UsageError(f"{path}: cannot read the ledger: {error.strerror}") from None
        self.finish(source, tail, info, end)

    def finish(self, source: _Source, tail: _Tail, info: os.stat_result, end: int | None) -> None:
        """Note in `source` where reading its file stopped (missing parts: `UsageError`)."""
        if self.expected and end is None:
            raise missing_parts(self.path, self.expected)
        source.torn = tail.at_end and bool(tail.carry.strip())
        source.offset = tail.position - len(tail.carry)
        source.lines = self.number
        source.identity = (info.st_dev, info.st_ino)
        if tail.last is not None:
            source.tail = (tail.last + b"\n")[-64:]

    def range(self, handle: BinaryIO, ordinal: int, start: int, end: int | None) -> _Tail:
        """Fold the complete lines from `start` to the end of the file, or up to `end`."""
        handle.seek(start)
        position = start
        carry = b""
        last: bytes | None = None
        while True:
            size = _CHUNK if end is None else min(_CHUNK, end - position)
            data = handle.read(size) if size > 0 else b""
            if not data:
                # The end of the file, or of what `end` allows: what is left is
                # the file's torn last line only at the end of the file.
                at_end = end is None or size > 0 or not handle.read(1)
                return _Tail(position, carry, at_end, last)
            position += len(data)
            lines = data.split(b"\n")
            lines[0] = carry + lines[0]
            carry = lines.pop()
            if lines:
                self.events(lines, ordinal, lines=True)
                self.number += len(lines)
                last = lines[-1]

    def fleet_record(self, raw: bytes, event: dict[str, Any]) -> None:
        """Note a `workers` or `merged` record as `LedgerRead` does (`_Unmerged`: parts exist)."""
        if raw.startswith(WORKERS_PREFIX):
            if parts_pending(self.path, event):
                raise _Unmerged(str(self.path))
            fleet = str(event.get("fleet"))
            names = [part.name for part in part_paths(self.path, event)]
            self.expected[fleet] = names
            self.fleet_ops.append((fleet, names))
        elif raw.startswith(MERGED_PREFIX):
            fleet = str(event.get("fleet"))
            self.expected.pop(fleet, None)
            self.fleet_ops.append((fleet, None))

    # -- a large file, in parallel ----------------------------------------------
    #
    # The file is cut at line starts into parts. Each part after the first is
    # folded by a forked child into a History of its own, from nothing; this
    # process folds the first part meanwhile, then takes each child's result
    # in order. A job the child met first with its first intent (name and
    # all) is new there unless the states so far hold it; its state from the
    # child is then exactly what folding on here would give, and is merged
    # as is. Every other job of the part (a result or retry of a job sent
    # before it, say) is left out of the child's counts: the child hands back
    # its lines, folded here after the merge. Whenever that does not hold (a
    # job of the part is known here after all, the child failed or met an
    # odd verdict, a fleet record), the part is folded here, so the result is
    # always that of folding the file in one pass.

    def bounds(self, handle: BinaryIO, start: int, size: int) -> list[int]:
        """Where the parts after the first start (line starts), or [] to fold in one pass."""
        if not self.parallel_ok:
            return []
        parts = min(_cpus(), (size - start) // _PARALLEL_PART_BYTES, _PARALLEL_MAX_PARTS)
        if (
            parts < 2
            or self.history.extras is not None
            or not sys.platform.startswith("linux")  # fork() with nothing to fear from it
            or threading.active_count() > 1  # ... in a process with one thread
        ):
            return []
        bounds: list[int] = []
        for n in range(1, parts):
            handle.seek(start + (size - start) * n // parts)
            handle.readline()  # to the start of the next line
            bound = handle.tell()
            if bound < size and (not bounds or bound > bounds[-1]):
                bounds.append(bound)
        return bounds

    def parallel(self, handle: BinaryIO, ordinal: int, bounds: list[int]) -> _Tail:
        """Fold the parts between `bounds` (the last to the end of the file), in parallel."""
        # The jobs the header announces, to size the tables: a child's for its share,
        # and this one's once they are forked (their copy need not hold it).
        hint = _announced_jobs(handle, bounds[0])
        share = hint // len(bounds) * 9 // 8  # a part's jobs, and some
        children = [
            _fork(self.part, ordinal, lo, hi, share)
            for lo, hi in zip(bounds[1:], [*bounds[2:], None], strict=True)
        ]
        self.history._states.reserve(min(self.history.declared_jobs + hint, 1 << 21))
        try:
            tail = self.range(handle, ordinal, bounds[0], bounds[1])
            for child, lo, hi in zip(children, bounds[1:], [*bounds[2:], None], strict=True):
                result = child.result()
                if result is not None and self.merge(ordinal, result):
                    tail = result.tail
                else:  # fold it here, as in one pass
                    tail = self.range(handle, ordinal, lo, hi)
        finally:
            for child in children:
                child.stop()
        return tail

    def part(self, ordinal: int, start: int, end: int | None, hint: int) -> FoldedPart:
        """In a child: fold the part from `start` to `end` (None: the end of the file)."""
        history = History()
        history.ledgers = list(self.history.ledgers)
        history._sources = [_Source(source.path) for source in self.history._sources]
        history._states.reserve(min(hint, 1 << 21))
        folder = _Folder(history)
        folder.path = self.path
        folder.orphans = []
        with open(self.path, "rb") as handle:
            tail = folder.range(handle, ordinal, start, end)
        return _part_of(folder, tail, ordinal)

    def merge_counts(self, ordinal: int, part: CountedPart) -> bool:
        """Take a part's counts (its jobs then stay uncounted in the table: see
        `History.counted_only`); False (nothing taken) if its verdicts differ."""
        history = self.history
        if len(part.verdicts) > len(_KNOWN_VERDICTS):  # its states' verdict indexes differ
            return False
        counted = history._counted
        if counted is None:
            counted = history._counted = Counter()
        label = history._label
        for state, jobs in part.counts:
            workspace, failure = part.labels[state >> _LABEL_SHIFT]
            counted[(state & _BELOW_LABEL) | label(workspace, failure) << _LABEL_SHIFT] += jobs
        history._counts = None
        self.add_totals(ordinal, part)
        return True

    def add_totals(self, ordinal: int, part: FoldedPart | CountedPart) -> None:
        """Add what a merged part carries besides its jobs (see `_Totals`)."""
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
        if len(part.verdicts) > len(_KNOWN_VERDICTS) or any(  # new verdicts: order matters
            line.startswith(_FLEET_PREFIXES) for line in part.orphans
        ):
            return False
        table = history._states
        source = history._sources[ordinal]
        declared = history.declared_jobs + max(0, part.jobs - source.jobs)
        sized = min(declared, 1 << 21) if self.sized_by_headers else 0
        table.reserve(max(sized, len(table) + len(part.keys)))
        keys, values = table.keys, table.values  # room for all: no growing from here
        mask = len(keys) - 1
        free: list[int] = []  # where each key of the part goes: the first free slot
        for key in part.keys:
            i = key & mask
            k = keys[i]
            while k and k != key:
                i = (i + 1) & mask
                k = keys[i]
            if k:
                return False  # known here after all: its state is not the child's to give
            free.append(i)
        label = history._label
        relabeled: dict[int, int] = {}
        for key, state, i in zip(part.keys, part.states, free, strict=True):
            new = relabeled.get(state)
            if new is None:
                workspace, failure = part.labels[state >> _LABEL_SHIFT]
                index = label(workspace, failure)
                new = relabeled[state] = (state & _BELOW_LABEL) | index << _LABEL_SHIFT
            while keys[i]:  # taken by a key of the part before it: probe on
                i = (i + 1) & mask
            keys[i], values[i] = key, new
        table.note_added(len(part.keys))
        history._counts = None
        history.intent_times.update(part.times)
        self.bad_lines += [self.number + n for n in part.bad_lines]
        for fleet, names in part.fleet_ops:
            if names is None:
                self.expected.pop(fleet, None)
            else:
                self.expected[fleet] = names
        self.events(part.orphans, ordinal, lines=True)  # in order; all decode
        self.add_totals(ordinal, part)
        return True

    def events(self, items: Iterable[Any], ordinal: int, *, lines: bool) -> None:
        """Fold events of ledger `ordinal`, in order: decoded, or complete lines to decode.

        With `lines`, `items` are lines of the file being read (without their
        newline), decoded here as `LedgerRead` decodes them. A fold that keeps
        no jobs (`History.counted_only`) takes only events about no job (a
        resumed segment that had nothing to send): `_CountedOnly` otherwise.
        """
        if self.history._counted is not None and not self.disjoint:
            items = self._no_job_events(items, lines)
            lines = False
        self._events(items, ordinal, lines=lines)

    def _no_job_events(self, items: Iterable[Any], lines: bool) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for item in items:
            try:
                event = orjson.loads(item) if lines else item
            except orjson.JSONDecodeError:
                raise _CountedOnly from None  # (a full fold numbers bad lines)
            if type(event) is not dict or event.get("event") in _JOB_EVENTS:
                raise _CountedOnly
            if lines and item.startswith(_FLEET_PREFIXES):
                self.fleet_record(item, event)
            events.append(event)
        return events

    def _events(self, items: Iterable[Any], ordinal: int, *, lines: bool) -> None:
        history = self.history
        descriptions, details = self.descriptions, self.details
        extras = history.extras
        table = history._states
        slot = table.slot
        # The table's arrays, read again whenever slot() may have added a key (and grown).
        keys, values = table.keys, table.values
        mask = len(keys) - 1
        room = table.room()  # keys this loop may put in their empty home slot itself
        added = 0  # keys it put there, for table.note_added()
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
        here = 1 + ordinal % _LEDGER_MAX  # never 0: 0 means "no ledger yet"
        fresh: dict[Any, int] = {}  # workspace -> the state of a job new with an intent here
        fresh_bits = _ONE_SOURCE | here << _LEDGER_SHIFT | _ONE_ATTEMPT
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        bad = self.bad_lines
        orphans, orphan_ids = self.orphans, self.orphan_ids
        touched = False  # whether a job's state changed (then `groups` counts again)
        # This loop runs once per event (2-3 per job): lookups are inlined (job_key,
        # the first probe of the table, adding a key) and the common cases come first.
        for number, item in enumerate(items, self.number + 1):
            if lines:
                try:
                    event = loads(item)
                    kind = event.get("event")
                except decode_error:
                    if item.strip():
                        bad.append(number)
                    continue
                except AttributeError:  # valid JSON, not an object
                    bad.append(number)
                    continue
                if item.startswith(_FLEET_PREFIXES):
                    self.fleet_record(item, event)
            else:
                event = item
                kind = event.get("event")
            t = event.get("t")
            if t is not None:
                if t > last_t:
                    last_t = t
                if t < first_t:
                    first_t = t
            if kind in _JOB_EVENTS:
                touched = True
                job_id = event["job"]
                key = hash(job_id) & _M64 or 1  # job_key(), inlined
                i = key & mask
                k = keys[i]
                if k != key:  # not at its home slot
                    if not k and room:  # a new key, and its home slot is free: add it there
                        keys[i] = key
                        room -= 1
                        added += 1
                    else:  # probe, maybe add (and grow)
                        table.note_added(added)
                        added = 0
                        i = slot(key)
                        keys, values = table.keys, table.values
                        mask = len(keys) - 1
                        room = table.room()
                state = values[i]
                if (
                    not state
                    and orphans is not None
                    and (kind != "intent" or "name" not in event or job_id in orphan_ids)
                ):  # a part folded apart: a job not new here is the parent's to fold
                    orphan_ids.add(job_id)
                    orphans.append(item)
                    continue
                if extras is not None:
                    extra = extras.get(job_id) or extras.setdefault(job_id, JobExtras())
                if kind == "result":
                    state = state or _PRESENT
                    verdict = event.get("verdict", "?")
                    try:
                        index = verdict_index[verdict]
                    except (KeyError, TypeError):
                        index = verdict_of(verdict)
                    state = (state & _NO_LAST) | index << _LAST_SHIFT
                    latency = event.get("latency_ms")
                    if latency is not None and event.get("status") is not None:
                        latencies(round(latency * 1000))
                    if details:
                        extra.detail = (
                            event.get("status"),
                            event.get("error_code"),
                            event.get("error_msg"),
                            event.get("request_id"),
                            event.get("instance_id") or extra.instance_id(),
                        )
                    outcome = event.get("outcome")
                    if outcome is not None:
                        if outcome == "started" and labels[state >> _LABEL_SHIFT][1] is None:
                            state = (state & _NO_OUTCOME) | _STARTED_BITS
                        else:
                            state = _settle(state, outcome, event, labels, label)
                        if verdict in PERMANENT:
                            state |= _PERMANENT_BIT
                        else:
                            state &= _NOT_PERMANENT
                        if state & _OUTCOME_FIELD != _UNKNOWN_BITS:
                            times.pop(key, None)  # settled for good: its intent time is moot
                elif kind == "intent":
                    if not state:  # a new job: its label is its workspace, no failure yet
                        workspace = event.get("workspace")
                        try:
                            state = fresh[workspace]
                        except KeyError:
                            try:
                                index = plain_labels[workspace]
                            except KeyError:
                                index = plain_labels[workspace] = label(workspace, None)
                            state = fresh[workspace] = _PRESENT | index << _LABEL_SHIFT | fresh_bits
                    else:
                        if (state >> _LEDGER_SHIFT) & _LEDGER_MAX != here:
                            # The first intent of this job in this ledger: one more source.
                            sources = (state >> _SOURCES_SHIFT) & _SOURCES_MAX
                            if sources < _SOURCES_MAX:
                                state += _ONE_SOURCE
                            if sources == 1 and len(examples) < _OVERLAP_EXAMPLES:
                                examples.append(job_id)
                            state = (state & _NO_LEDGER) | here << _LEDGER_SHIFT
                        if (state >> _ATTEMPTS_SHIFT) & _ATTEMPTS_MAX < _ATTEMPTS_MAX:
                            state += _ONE_ATTEMPT
                        state &= _REOPENED  # a new attempt reopens a settled job
                    attempts += 1
                    times[key] = float(t or 0.0)
                    if extras is not None and "name" in event:
                        if descriptions and extra.description is None:
                            extra.description = event
                        if details and extra.name is None:
                            extra.name = event["name"]
                            extra.project_id = event.get("project_id")
                else:  # a check
                    state = state or _PRESENT
                    conclusion = event.get("conclusion")
                    outcome = event.get("outcome")
                    if outcome is not None:
                        state = _settle(state, outcome, event, labels, label) & _NOT_PERMANENT
                        if conclusion == "took_effect":
                            state |= _RECONCILED_BIT
                        else:
                            state &= _NOT_RECONCILED
                        if state & _OUTCOME_FIELD != _UNKNOWN_BITS:
                            times.pop(key, None)
                    elif conclusion == "not_taken":
                        # The check said it did not happen.
                        state = (state & _NO_LAST) | _TRANSIENT << _LAST_SHIFT
                values[i] = state
            elif kind == "run":
                history.headers.append(event)
                manifest = event.get("manifest") or {}
                jobs = int(manifest.get("jobs") or 0)
                if jobs > source.jobs:  # a ledger counts the most jobs its headers announce
                    history.declared_jobs += jobs - source.jobs
                    source.jobs = jobs
                # Size the table for the jobs the headers announce (capped: a header
                # is input too): growing while full is when memory peaks.
                table.note_added(added)
                added = 0
                if self.sized_by_headers:
                    table.reserve(min(history.declared_jobs, 1 << 21))
                keys, values = table.keys, table.values
                mask = len(keys) - 1
                room = table.room()
            elif kind == "end":
                history.footers.append(event)
        table.note_added(added)
        if touched:
            history._counts = None
        history.first_t, history.last_t = first_t, last_t
        history.attempts = attempts


def _part_of(folder: _Folder, tail: _Tail, ordinal: int) -> FoldedPart:
    """A fold of part of a ledger (`folder`'s, up to `tail`), as `_Folder.merge` takes it."""
    history = folder.history
    table = history._states
    return FoldedPart(
        tail=tail,
        lines=folder.number,
        bad_lines=folder.bad_lines,
        fleet_ops=folder.fleet_ops,
        orphans=folder.orphans or [],
        keys=array("Q", compress(table.keys, table.values)),
        states=array("Q", filter(None, table.values)),
        times=history.intent_times,
        **_totals_of(history, ordinal),
    )


def _settle(
    state: int,
    outcome: str,
    event: dict[str, Any],
    labels: list[tuple[str | None, str | None]],
    label: Callable[[str | None, str | None], int],
) -> int:
    """`state` with `outcome` and its failure code (the error, else the status or failure)."""
    code = _OUTCOME_CODES.get(outcome, _UNKNOWN)
    state = (state & _NO_OUTCOME) | code << _OUTCOME_SHIFT
    failure: str | None = None
    if code == _FAILED:
        error_code = event.get("error_code")
        status = event.get("status")
        if isinstance(error_code, str):
            failure = error_code
        elif status is not None:
            failure = f"HTTP {status}"
        else:
            failure = event.get("failure") or "error"
            detail = event.get("detail")
            if isinstance(detail, str) and detail:
                failure = f"{failure}: {detail}"  # the summary groups failures by reason
    workspace, before = labels[state >> _LABEL_SHIFT]
    if failure != before:
        state = (state & _BELOW_LABEL) | label(workspace, failure) << _LABEL_SHIFT
    return state
