"""The ledger's events as types: what each kind holds, and `RunHeader`, a header's typed view.

The writer builds its events as these `TypedDict`s (plain dicts at run time: no
cost), so mypy checks every field it writes against what readers expect; the
names and meanings are the ledger's contract (README, "Ledger"). Readers get
events as decoded JSON (`dict[str, Any]`), checked field by field by
`launcher.ledger.check.problem` before any use.

A `run` header is read in many places (reports, resume, replay, lineage, the
fold's sizing): `RunHeader.of` turns a checked header into a frozen view with
typed fields once, instead of each reader digging in `header["manifest"]`.
"""

# No `from __future__ import annotations` here: TypedDict reads `NotRequired` from
# evaluated annotations (with strings, Python 3.11 takes every key as required).
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from launcher.models import Action, Conclusion, Outcome, RecordedVerdict

__all__ = [
    "CheckEvent",
    "EndFields",
    "InstanceEvent",
    "IntentEvent",
    "ManifestRecord",
    "ResultEvent",
    "RunFields",
    "RunHeader",
    "TallyRecord",
    "VerifyEvent",
]


class ManifestRecord(TypedDict):
    """A header's `manifest`: the file a segment ran, as it validated it."""

    path: str  # absolute
    sha256: str  # of the bytes validated
    jobs: int  # this segment's jobs (a shard's share)
    total_jobs: int  # the whole manifest's
    waves: NotRequired[dict[str, int]]  # jobs per wave ("1": 120, ...)
    format: str | None  # --format, None: from the file name


class RunFields(TypedDict):
    """The `run` header as a segment writes it (the writer adds `event` and `t`)."""

    run_id: str
    segment: int
    resumes: str | None  # the run id of the segment this one resumes
    version: str
    manifest: ManifestRecord
    shard: str | None  # I/N
    worker: NotRequired[str]  # I/N of a fleet's worker processes
    fleet: NotRequired[str]
    endpoint: str
    simulator: bool
    auth: str
    options: dict[str, Any]  # RunOptions.public()
    run_options: NotRequired[dict[str, Any]]  # a worker's: the whole run's options
    started_at: str  # ISO 8601, UTC
    host: str
    pid: int


class TallyRecord(TypedDict):
    done: int
    started: int
    failed: int
    unknown: int
    attempts: int


class EndFields(TypedDict):
    """The `end` footer as a segment writes it (the writer adds `event` and `t`)."""

    run_id: str
    reason: str  # "complete", or why the segment stopped
    exit_code: int
    elapsed_s: float
    finished_at: str
    tally: TallyRecord
    waves: NotRequired[dict[str, Any]]  # --waves: each wave's counts
    wait: NotRequired[dict[str, Any]]  # --wait: how the followed runs ended
    verify: NotRequired[dict[str, Any]]  # --verify: what the job list said after the run


class IntentEvent(TypedDict):
    """Written before an attempt's request leaves; the first attempt describes the job."""

    event: Literal["intent"]
    job: str
    attempt: int
    t: float
    action: Action
    name: NotRequired[str]
    workspace: NotRequired[str | None]
    project_id: NotRequired[str | None]
    params: NotRequired[list[list[str | None]]]  # [name, value, type]
    line: NotRequired[int]
    wave: NotRequired[int]  # when not 0


class ResultEvent(TypedDict):
    """What an attempt got back; `outcome` on the job's last attempt."""

    event: Literal["result"]
    job: str
    attempt: int
    t: float
    status: int | None
    latency_ms: float
    verdict: RecordedVerdict
    error_code: NotRequired[str]
    error_msg: NotRequired[str]
    request_id: NotRequired[str]
    failure: NotRequired[str]
    instance_id: NotRequired[int | str]
    detail: NotRequired[str]
    outcome: NotRequired[Outcome]


class CheckEvent(TypedDict):
    """A status check that settled (or tried to settle) an ambiguous attempt."""

    event: Literal["check"]
    job: str
    attempt: int
    t: float
    status: int | None
    state: str | None
    conclusion: Conclusion
    error_code: NotRequired[str]
    failure: NotRequired[str]
    detail: NotRequired[str]
    outcome: NotRequired[Outcome]


class InstanceEvent(TypedDict):
    """A followed run-immediate instance's new status (`--wait`)."""

    event: Literal["instance"]
    job: str
    t: float
    instance_id: int | str | None
    status: str


class VerifyEvent(TypedDict):
    """A job whose state after the run is not what its call set (`--verify`)."""

    event: Literal["verify"]
    job: str
    t: float
    name: str
    workspace: str | None
    expected: str
    found: str | None


_NOTHING: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class RunHeader:
    """A `run` header's fields, typed: built once by `of` from a header `check` passed.

    Every field may be absent from a hand-made or older header (None, options empty).
    """

    run_id: str | None = None
    segment: int | None = None
    resumes: str | None = None
    version: str | None = None
    shard: str | None = None
    worker: str | None = None
    fleet: str | None = None
    endpoint: str | None = None
    simulator: bool = False  # the run went to the built-in simulator
    started_at: str | None = None
    host: str | None = None
    pid: int | None = None
    t: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    manifest_path: str | None = None
    manifest_sha256: str | None = None
    manifest_format: str | None = None
    manifest_jobs: int | None = None  # this segment's jobs
    manifest_total_jobs: int | None = None  # the whole manifest's
    manifest_waves: Mapping[str, int] | None = None  # jobs per wave ("1": 120, ...)

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> "RunHeader":
        """The view of `event`, a decoded `run` header (or `workers` record) that
        `launcher.ledger.check.problem` passed: every field has the type it says."""
        get = event.get
        manifest = get("manifest") or _NOTHING
        return cls(
            run_id=get("run_id"),
            segment=get("segment"),
            resumes=get("resumes"),
            version=get("version"),
            shard=get("shard"),
            worker=get("worker"),
            fleet=get("fleet"),
            endpoint=get("endpoint"),
            simulator=bool(get("simulator")),
            started_at=get("started_at"),
            host=get("host"),
            pid=get("pid"),
            t=get("t"),
            options=get("options") or _NOTHING,
            manifest_path=manifest.get("path"),
            manifest_sha256=manifest.get("sha256"),
            manifest_format=manifest.get("format"),
            manifest_jobs=manifest.get("jobs"),
            manifest_total_jobs=manifest.get("total_jobs"),
            manifest_waves=manifest.get("waves"),
        )
