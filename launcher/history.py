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
  then be folded as one job. Keys never leave the process, so the per-process
  hash seed does not matter;
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
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from launcher.compact import CompactMap
from launcher.errors import UsageError
from launcher.ledger import LedgerRead

__all__ = [
    "NOT_TAKEN",
    "PERMANENT",
    "History",
    "JobExtras",
    "JobRecord",
    "JobState",
    "fold",
    "job_key",
    "pack_state",
    "unpack_state",
]

# Verdicts of a last attempt that certainly did not take effect: safe to send again.
NOT_TAKEN = frozenset({"throttled", "transient", "refresh_auth", "not_sent"})
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
        "_label_index",
        "_labels",
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

    def __init__(self, *, extras: bool = False) -> None:
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
        self.extras: dict[str, JobExtras] | None = {} if extras else None
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
        return len(self._states)

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and job_key(job_id) in self._states

    def state(self, job_id: str) -> int:
        """The job's packed state (see `unpack_state`), 0 if the ledgers never mention it."""
        value = self._states.get(job_key(job_id))
        return value or 0

    def record(self, job_id: str) -> JobRecord | None:
        """The job as the ledgers leave it, or None if they never mention it."""
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
        counts = Counter(self._states.values)  # one C-level pass; 0 = empty slots
        counts.pop(0, None)
        for packed, count in counts.items():
            yield self.decode(packed), count

    def items(self) -> Iterator[tuple[str, JobRecord]]:
        """(job id, record) for every job, in order of first mention.

        Needs `fold(..., keep=...)` with "descriptions" or "details": only then
        are job ids kept at all.
        """
        extras = self.extras
        if extras is None:
            raise ValueError("job ids are kept only by fold(..., keep={'details'|'descriptions'})")
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


def fold(reads: Iterable[LedgerRead], *, keep: frozenset[str] = frozenset()) -> History:
    """Fold one or more ledgers (several: shards of one run) into a `History`.

    `keep` may hold `descriptions` (each job's first intent, for replay) and
    `details` (each job's latest result, for per-job report rows).
    """
    descriptions = "descriptions" in keep
    details = "details" in keep
    history = History(extras=descriptions or details)
    extras = history.extras
    table = history._states
    slot = table.slot
    # The table's arrays, read again whenever slot() may have added a key (and grown).
    keys, values = table.keys, table.values
    mask = len(keys) - 1
    times = history.intent_times
    examples = history.overlap_examples
    latencies = history.latencies_us.append
    label = history._label
    labels = history._labels
    plain_labels: dict[Any, int] = {}  # workspace -> the label (workspace, no failure)
    verdict_index = history._verdict_index
    verdict_of = history._verdict
    first_t, last_t = history.first_t, history.last_t
    attempts = 0
    for ordinal, read in enumerate(reads):
        history.ledgers.append(str(read.path))
        here = 1 + ordinal % _LEDGER_MAX  # never 0: 0 means "no ledger yet"
        ledger_jobs = 0
        # This loop runs once per event (2-3 per job): lookups are inlined (job_key,
        # the first probe of the table) and the common cases come first.
        for event in read:
            kind = event.get("event")
            t = event.get("t")
            if t is not None:
                if t > last_t:
                    last_t = t
                if t < first_t:
                    first_t = t
            if kind in _JOB_EVENTS:
                job_id = event["job"]
                key = hash(job_id) & _M64 or 1  # job_key(), inlined
                i = key & mask
                if keys[i] != key:  # not at its home slot: probe, maybe add (and grow)
                    i = slot(key)
                    keys, values = table.keys, table.values
                    mask = len(keys) - 1
                state = values[i]
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
                            index = plain_labels[workspace]
                        except KeyError:
                            index = plain_labels[workspace] = label(workspace, None)
                        state = _PRESENT | index << _LABEL_SHIFT
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
                ledger_jobs = max(ledger_jobs, int(manifest.get("jobs") or 0))
                # Size the table for the jobs the header announces (capped: a header
                # is input too): growing while full is when memory peaks.
                table.reserve(min(history.declared_jobs + ledger_jobs, 1 << 21))
                keys, values = table.keys, table.values
                mask = len(keys) - 1
            elif kind == "end":
                history.footers.append(event)
        history.declared_jobs += ledger_jobs
        if read.torn_tail:
            history.torn_tail.append(str(read.path))
    history.first_t, history.last_t = first_t, last_t
    history.attempts = attempts
    return history


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
    workspace, before = labels[state >> _LABEL_SHIFT]
    if failure != before:
        state = (state & _BELOW_LABEL) | label(workspace, failure) << _LABEL_SHIFT
    return state
