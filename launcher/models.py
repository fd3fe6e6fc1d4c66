"""The records that flow through the launcher: a job and its parameters, and the words
the ledger records about them.

A `Job` is what one manifest line asks for, with the run's defaults (project,
workspace) already applied, so two lines that mean the same start are equal and
share one identity.

The vocabulary of outcomes, verdicts and check conclusions is defined here, once:
the dispatcher writes it (`launcher.flow`), the ledger folds it, reports, resume
and the load tester read it. `Verdict` is a `StrEnum` (the dispatcher compares
members with `is`); the others are `Literal` strings (written and read as plain
`str`, at no cost).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Final, Literal, NamedTuple

import orjson

__all__ = [
    "ACTIONS",
    "NOT_SENT",
    "STANDINGS",
    "Action",
    "Conclusion",
    "Failure",
    "Job",
    "JobFields",
    "JobParam",
    "JobParamFields",
    "JobStatus",
    "Outcome",
    "RecordedVerdict",
    "Reply",
    "ReplyFields",
    "Standing",
    "Verdict",
    "failure_key",
    "from_fields",
    "job_identity",
]

Action = Literal["start", "stop", "run-immediate"]
ACTIONS: tuple[Action, ...] = ("start", "stop", "run-immediate")


# The records made per job and per attempt are named tuples, not frozen dataclasses:
# as immutable, and built ~5x faster (a frozen dataclass's __init__ goes through
# object.__setattr__ once per field: ~4.6 µs for a Job, ~1 µs as a named tuple).


class JobParam(NamedTuple):
    """One entry of the request body's `jobParams` list."""

    name: str
    value: str
    param_type: str | None = None  # "variable" | "constants" | None (service default)


class Job(NamedTuple):
    """One job to launch, fully resolved.

    `id` is the manifest's `id` when given, else `job_identity(...)`; resume,
    replay, sharding and reports key on it. `line` is the manifest line it came
    from (1-based), for messages. `wave` orders the run (see `launcher.run.waves`);
    it is not part of the identity: the same job in two waves is a duplicate.
    """

    id: str
    name: str
    params: tuple[JobParam, ...]
    workspace: str | None
    project_id: str | None
    line: int = 0
    action: Action | None = None  # None: the run's --action
    wave: int = 0  # jobs of wave k+1 are sent once every job of waves <= k is settled


def job_identity(
    project_id: str | None,
    workspace: str | None,
    name: str,
    params: tuple[JobParam, ...],
) -> str:
    """A stable identity for a job: 32 hex digits of SHA-256 over its canonical form.

    Param order matters (the service receives a list), so it is kept as given.
    The same inputs give the same identity on every machine and in every
    version, because resume and replay compare identities across runs.
    """
    canonical = orjson.dumps(
        [project_id, workspace, name, [[p.name, p.value, p.param_type] for p in params]]
    )
    return hashlib.sha256(canonical).hexdigest()[:32]


class Failure(StrEnum):
    """How a request failed when no HTTP answer was read.

    `CONNECT` failures happen before any byte of the request was written
    (refused connection, DNS, proxy, TLS handshake), so resending is safe. `TLS`
    is a certificate or host name that failed verification: nothing was sent, and
    resending cannot help (the run stops). The others
    may follow a request the service received and acted on: ambiguous.
    """

    CONNECT = "connect"
    TLS = "tls"  # the certificate or host name did not verify: nothing was sent, permanent
    TIMEOUT = "timeout"
    DISCONNECT = "disconnect"


def failure_key(
    error_code: str | None,
    status: int | None,
    failure: str | None,
    detail: str | None = None,
    *,
    bare_status: bool = False,
) -> str:
    """How a failed attempt is counted, in run reports and load-test reports alike.

    Its error code (`DLF.0100`, `APIGW.0308`), else its HTTP status (`HTTP 503`:
    a bare number reads as a code; `bare_status`: `503`, as the load test's
    `errors` keys have always been, a contract scripts read), else how the request
    failed (`timeout`, `connect`, `disconnect`; `error` when nothing says), with
    its reason when one is given (`connect: cannot connect to ...`).
    """
    if error_code:
        return error_code
    if status is not None:
        return str(status) if bare_status else f"HTTP {status}"
    kind = str(failure) if failure else "error"  # (a `Failure` member: its plain value)
    return f"{kind}: {detail}" if detail else kind


class Reply(NamedTuple):
    """What one attempt got back: an HTTP answer, or a transport failure."""

    status: int | None  # None when no HTTP answer was read
    latency: float  # seconds, send to answer (or to failure)
    error_code: str | None = None
    error_msg: str | None = None
    request_id: str | None = None
    failure: Failure | None = None
    retry_after: float | None = None  # seconds, from a Retry-After header
    instance_id: int | str | None = None  # run-immediate's answer (a number, or a string)
    detail: str | None = None  # why no answer was read (transport failures), e.g. the TLS error


# Named tuples made per request (`Reply`) and per job (`Job`, `JobParam`) are built with
# `from_fields(Cls, fields)`: `tuple.__new__`, which skips NamedTuple's generated
# `__new__` (a Python function, which costs more than the whole tuple: benchmarks/RESULTS.md).
# `fields` is annotated with the class's `...Fields` type, so mypy checks each field:
#     fields: ReplyFields = (status, latency, None, None, request_id, None, after, None, None)
#     reply = from_fields(Reply, fields)
# tests/test_models.py checks each `...Fields` is its class's fields, in order.
from_fields = tuple.__new__
JobParamFields = tuple[str, str, str | None]
JobFields = tuple[str, str, tuple[JobParam, ...], str | None, str | None, int, Action | None, int]
ReplyFields = tuple[
    int | None,
    float,
    str | None,
    str | None,
    str | None,
    Failure | None,
    float | None,
    int | str | None,
    str | None,
]


class JobStatus(NamedTuple):
    """The job list's view of one job, used to settle ambiguous attempts.

    `state` is `SCHEDULING`, `STOPPED` or `PAUSED` when the list named the job;
    None when the list did not answer (see `reply`) or did not contain it.
    """

    reply: Reply
    state: str | None
    found: bool


class Verdict(StrEnum):
    """What one attempt's reply means for the job (`launcher.flow.policy.classify`)."""

    STARTED = "started"  # 2xx: the action took effect
    PERMANENT = "permanent"  # the service refused for good (job missing, bad params, wrong path)
    REFRESH_AUTH = "refresh_auth"  # token must be renewed (APIGW.0307): refresh, retry once
    AUTH_FAILED = "auth_failed"  # credentials rejected: stop the whole run
    THROTTLED = "throttled"  # 429: back off (honouring Retry-After) and retry
    TRANSIENT = "transient"  # refused before it reached the service: safe to resend
    AMBIGUOUS = "ambiguous"  # the request may have reached the service: check before resending
    TLS_FAILED = "tls_failed"  # the certificate did not verify: nothing sent, stop the run

    @property
    def retryable(self) -> bool:
        """True for verdicts that allow another attempt (ambiguous ones after a check)."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {Verdict.REFRESH_AUTH, Verdict.THROTTLED, Verdict.TRANSIENT, Verdict.AMBIGUOUS}
)

# A `result` event's `verdict` when the attempt's intent was written but nothing left
# the process: no credentials could be had (an IAM login failed), or the endpoint's
# certificate did not verify. No reply was classified, so it is not a `Verdict`: the
# ledger's verdicts are `RecordedVerdict`, and the fold reads `not_sent` as "safe to
# send again" (`launcher.ledger.state.NOT_TAKEN`).
NOT_SENT: Final = "not_sent"
RecordedVerdict = Verdict | Literal["not_sent"]

# A job's final outcome as the ledger records it (`outcome` of a `result` or `check`).
Outcome = Literal["started", "failed", "unknown"]
# Where a job stands in a report: its outcome, or `pending` (never sent, or its last
# attempt certainly did not take effect: a resume sends it).
Standing = Literal["started", "failed", "unknown", "pending"]
STANDINGS: tuple[Standing, ...] = ("started", "failed", "unknown", "pending")

# What a `check` event concluded about an ambiguous attempt: the call `took_effect`
# (the job is started), was `not_taken` (safe to resend), the check itself failed
# (`check_failed`, tried again) or kept failing (`gave_up`: the job is unknown); the
# job still reads its old state inside the settle window (`not_yet`: looked again
# when it ends, never resent before); or, with no check, that the attempts ran out
# (`attempts_exhausted`: the job failed).
Conclusion = Literal[
    "took_effect", "not_taken", "not_yet", "check_failed", "gave_up", "attempts_exhausted"
]
