"""One job's state as the fold keeps it: a packed 64-bit int, and its decoded views.

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
- with `keep={"descriptions"}` (replay) or `keep={"details"}` (per-job report
  rows), each job also gets a `JobExtras` in a dict keyed by its id: those are
  opt-in and per job by nature.

`JobRecord` is a decoded view, built on demand (`History.record`,
`History.items`, `History.groups`); it is not what is stored. The bit layout's
masks are public names here because the fold (`launcher.ledger.folder`)
applies them inline on every event; nothing outside `launcher.ledger` uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from launcher.models import NOT_SENT, Outcome, Standing, Verdict

__all__ = [
    "NOT_TAKEN",
    "PERMANENT",
    "JobExtras",
    "JobRecord",
    "JobState",
    "job_key",
    "pack_state",
    "unpack_state",
]

# Verdicts of a last attempt that certainly did not take effect: safe to send again.
# (Plain `str`s, as decoded lines hold them: a set of those is probed at C speed.)
NOT_TAKEN = frozenset(
    map(
        str,
        (Verdict.THROTTLED, Verdict.TRANSIENT, Verdict.REFRESH_AUTH, NOT_SENT, Verdict.TLS_FAILED),
    )
)
# Verdicts of a failure that a resend cannot fix.
PERMANENT = frozenset(map(str, (Verdict.PERMANENT, Verdict.AUTH_FAILED)))

M64 = (1 << 64) - 1
OVERLAP_EXAMPLES = 5  # overlapping job ids kept to name in the summary
JOB_EVENTS = frozenset({"intent", "result", "check"})

# -- the packed state ---------------------------------------------------------
# Bit 0 is always set, so a stored state is never 0 (the value of an empty slot).
PRESENT = 1
OUTCOME_SHIFT, OUTCOME_MAX = 1, 3  # 0 none, 1 started, 2 failed, 3 unknown
PERMANENT_BIT = 1 << 3
RECONCILED_BIT = 1 << 4
SOURCES_SHIFT, SOURCES_MAX = 5, 15  # saturating: "more than one" is what matters
ATTEMPTS_SHIFT, ATTEMPTS_MAX = 9, 0xFFFF  # saturating: max-attempts is 5 by default
LAST_SHIFT, LAST_MAX = 25, 31  # index into the verdict table (0 = "intent")
LEDGER_SHIFT, LEDGER_MAX = 30, 0xFFFF  # 1 + (ledger ordinal - 1) % 65535; 0 = never
LABEL_SHIFT, LABEL_MAX = 46, (1 << 18) - 1  # index into (workspace, failure) pairs

OUTCOME_FIELD = OUTCOME_MAX << OUTCOME_SHIFT
LAST_FIELD = LAST_MAX << LAST_SHIFT
LEDGER_FIELD = LEDGER_MAX << LEDGER_SHIFT
BELOW_LABEL = (1 << LABEL_SHIFT) - 1
# Masks and increments the fold uses on every event, computed once (Python does
# not fold expressions of named constants).
NO_OUTCOME = ~OUTCOME_FIELD
NO_LAST = ~LAST_FIELD
NO_LEDGER = ~LEDGER_FIELD
NOT_PERMANENT = ~PERMANENT_BIT
NOT_RECONCILED = ~RECONCILED_BIT
REOPENED = ~(OUTCOME_FIELD | LAST_FIELD)  # no outcome, last = "intent" (index 0)
ONE_SOURCE = 1 << SOURCES_SHIFT
ONE_ATTEMPT = 1 << ATTEMPTS_SHIFT

OUTCOME_NAMES: tuple[Outcome | None, ...] = (None, "started", "failed", "unknown")
STARTED, FAILED, UNKNOWN = 1, 2, 3
STARTED_BITS = STARTED << OUTCOME_SHIFT
UNKNOWN_BITS = UNKNOWN << OUTCOME_SHIFT
# An outcome this version does not know is kept as `unknown`: a resume then
# checks the job with the service instead of trusting or resending it.
OUTCOME_CODES: dict[str, int] = {"started": STARTED, "failed": FAILED, "unknown": UNKNOWN}

# The verdict table starts with every verdict the launcher writes, so their
# indexes are the same in every fold; others are added as met, up to LAST_MAX,
# and past that read as "?" (not in NOT_TAKEN, like any unknown verdict).
KNOWN_VERDICTS: tuple[str, ...] = (
    "intent",
    *(
        str(verdict)
        for verdict in (
            Verdict.STARTED,
            Verdict.PERMANENT,
            Verdict.REFRESH_AUTH,
            Verdict.AUTH_FAILED,
            Verdict.THROTTLED,
            Verdict.TRANSIENT,
            Verdict.AMBIGUOUS,
            NOT_SENT,
            Verdict.TLS_FAILED,
        )
    ),
    "?",
)
TRANSIENT = KNOWN_VERDICTS.index("transient")
UNKNOWN_VERDICT = KNOWN_VERDICTS.index("?")


def job_key(job_id: str) -> int:
    """The 64-bit key a job is kept under (per process: see the module docstring).

    Never 0 (the hash of "" is 0): the fold's inlined probe takes a 0 in the
    key array for an empty slot, so 0 joins 1, one more alias among 2^64.
    """
    return hash(job_id) & M64 or 1


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
        0 <= state.outcome <= OUTCOME_MAX
        and 0 <= state.last <= LAST_MAX
        and 0 <= state.ledger <= LEDGER_MAX
        and 0 <= state.label <= LABEL_MAX
        and state.sources >= 0
        and state.attempts >= 0
    ):
        raise ValueError(f"job state out of range: {state}")
    return (
        PRESENT
        | state.outcome << OUTCOME_SHIFT
        | (PERMANENT_BIT if state.permanent else 0)
        | (RECONCILED_BIT if state.reconciled else 0)
        | min(state.sources, SOURCES_MAX) << SOURCES_SHIFT
        | min(state.attempts, ATTEMPTS_MAX) << ATTEMPTS_SHIFT
        | state.last << LAST_SHIFT
        | state.ledger << LEDGER_SHIFT
        | state.label << LABEL_SHIFT
    )


def unpack_state(packed: int) -> JobState:
    """The fields of a packed state."""
    return JobState(
        outcome=(packed >> OUTCOME_SHIFT) & OUTCOME_MAX,
        last=(packed >> LAST_SHIFT) & LAST_MAX,
        permanent=bool(packed & PERMANENT_BIT),
        reconciled=bool(packed & RECONCILED_BIT),
        sources=(packed >> SOURCES_SHIFT) & SOURCES_MAX,
        attempts=(packed >> ATTEMPTS_SHIFT) & ATTEMPTS_MAX,
        ledger=(packed >> LEDGER_SHIFT) & LEDGER_MAX,
        label=packed >> LABEL_SHIFT,
    )


@dataclass(slots=True)
class JobRecord:
    """One job as the ledgers leave it (a decoded view of its packed state)."""

    outcome: Outcome | None = None  # None: not settled
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
    def final(self) -> Standing:
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
