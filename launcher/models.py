"""The records that flow through the launcher: a job and its parameters.

A `Job` is what one manifest line asks for, with the run's defaults (project,
workspace) already applied, so two lines that mean the same start are equal and
share one identity.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Literal, NamedTuple

import orjson

__all__ = [
    "ACTIONS",
    "Action",
    "Failure",
    "Job",
    "JobParam",
    "JobStatus",
    "Reply",
    "failure_key",
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
    error_code: str | None, status: int | None, failure: str | None, detail: str | None = None
) -> str:
    """How a failed attempt is counted, in run reports and load-test reports alike.

    Its error code (`DLF.0100`, `APIGW.0308`), else its HTTP status (`HTTP 503`:
    a bare number reads as a code), else how the request failed (`timeout`,
    `connect`, `disconnect`; `error` when nothing says), with its reason when
    one is given (`connect: cannot connect to ...`).
    """
    if error_code:
        return error_code
    if status is not None:
        return f"HTTP {status}"
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


class JobStatus(NamedTuple):
    """The job list's view of one job, used to settle ambiguous attempts.

    `state` is `SCHEDULING`, `STOPPED` or `PAUSED` when the list named the job;
    None when the list did not answer (see `reply`) or did not contain it.
    """

    reply: Reply
    state: str | None
    found: bool
