"""The plan of a run: which manifest, validated how, and which part of it is this run's.

`plan_manifest` validates the whole manifest before anything is sent. A resume
(`--resume`) may skip the validation: when the ledger's latest `run` header
records this very manifest (the same SHA-256), this launcher version and the
same options that decide identities and validity (`project_id`, `workspace`,
`allow_duplicates`, `manifest_format`, and the format the file name implies),
the manifest passed exactly this validation when that segment started, so it
is only hashed and its jobs counted, in one pass that checks no job (0.1 s
instead of 2.5 s at 300,000 lines; the count is the file's own, never the
header's); anything different, and it is validated in full as on a first run.

`--shard I/N` takes the I-th of N disjoint parts, by a stable hash of each
job's identity (`shard_of`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import islice

from launcher import __version__
from launcher.config import RunOptions
from launcher.errors import ManifestChanged, ManifestInvalid, UsageError
from launcher.flow.shard import parse_shard, shard_of
from launcher.ledger.events import RunHeader
from launcher.logs import get_logger
from launcher.manifest.validate import (
    Defaults,
    Validation,
    counted_digests,
    detect_format,
    iter_jobs,
    scan,
    validate,
)
from launcher.models import Job

__all__ = [
    "GRACE_SECONDS",
    "Plan",
    "file_size",
    "has_content",
    "plan_manifest",
    "same_identities",
]

# A manifest this small has its jobs kept by the validation, for the send path
# to take from memory instead of reading and checking every line again. At
# ~0.5 KB a job that is <= 50 MB; a larger one is streamed twice.
KEEP_BYTES = 8 << 20
KEEP_JOBS = 100_000
GRACE_SECONDS = 30.0  # how long a first SIGINT/SIGTERM waits for requests in flight

log = get_logger("launcher.run")


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated manifest and the part of it this run is responsible for."""

    manifest: str
    validation: Validation
    defaults: Defaults
    fmt: str | None
    shard: tuple[int, int] | None  # (index, count) with --shard I/N
    jobs: int  # jobs this run handles: the shard's, or all of them

    def iter_jobs(
        self,
        lines: tuple[int, int] | None = None,
        on_change: Callable[[ManifestChanged], None] | None = None,
    ) -> Iterator[Job]:
        """Stream this run's jobs from the manifest (the shard's only, with --shard);
        `lines=(i, n)`: only every n-th job from the i-th (a worker's share).

        Jobs the validation kept are not read again: exactly the jobs whose bytes
        were checked and hashed, whatever happens to the file meanwhile. Streamed
        ones are compared chunk by chunk with the bytes validated: `ManifestChanged`
        (or `on_change`, see `iter_jobs`) at the first difference.
        """
        kept = self.validation.kept
        if kept is None:
            jobs = iter_jobs(
                self.manifest,
                self.defaults,
                fmt=self.fmt,
                lines=lines,
                checked=self.validation,
                on_change=on_change,
            )
        elif lines is None:
            jobs = iter(kept)
        else:
            jobs = islice(kept, lines[0], None, lines[1])
        if self.shard is None:
            return jobs
        index, count = self.shard
        return (job for job in jobs if shard_of(job.id, count) == index)


def plan_manifest(manifest: str, options: RunOptions, *, recorded: RunHeader | None = None) -> Plan:
    """Validate the whole manifest before anything is sent (raises ManifestInvalid).

    `recorded` is the latest `run` header of the ledger a resume continues:
    when it shows that this manifest already passed this validation (see the
    module docstring), the file is hashed instead of validated again.
    """
    defaults = Defaults(project_id=options.project_id, workspace=options.workspace)
    validation = _validated_before(manifest, options, recorded)
    if validation is None:
        validation = validate(
            manifest,
            defaults,
            allow_duplicates=options.allow_duplicates,
            fmt=options.manifest_format,
            keep=KEEP_JOBS if file_size(manifest) <= KEEP_BYTES else 0,
        )
        validation.raise_if_invalid()
        if options.project_id is None:
            missing = [
                f"{manifest}:{item.line}: project_id: no project id; set project_id on the "
                "line, --project-id, or HUAWEICLOUD_SDK_PROJECT_ID"
                for item in scan(manifest, defaults, fmt=options.manifest_format)
                if isinstance(item, Job) and not item.project_id
            ]
            if missing:
                raise ManifestInvalid(missing[:20], len(missing))
    if validation.jobs == 0 and not options.allow_empty:
        # An empty manifest is most often a generator that failed: not a success.
        raise UsageError(
            f"{manifest}: no jobs in the manifest (empty, or only blank and comment lines); "
            "pass --allow-empty when nothing to do is expected"
        )
    shard = parse_shard(options.shard) if options.shard else None
    plan = Plan(manifest, validation, defaults, options.manifest_format, shard, validation.jobs)
    if shard is not None:
        # The shard's size, for progress, reports and exit codes: counted from the
        # manifest (one more streaming pass), never taken from a ledger's claim.
        plan = replace(plan, jobs=sum(1 for _ in plan.iter_jobs()))
    return plan


# The options that decide which jobs a manifest holds, their identities, and
# whether it is valid: a ledger written with others describes other jobs.
_IDENTITY_OPTIONS = ("project_id", "workspace", "allow_duplicates", "manifest_format")


def same_identities(header: RunHeader, manifest: str, options: RunOptions) -> bool:
    """Whether a `run` header was written by this version with this run's identity options."""
    recorded_options = header.options
    recorded_path = header.manifest_path
    return (
        header.version == __version__
        and all(recorded_options.get(name) == getattr(options, name) for name in _IDENTITY_OPTIONS)
        # Without --format the file name decides the format: the same bytes as
        # a .csv are other jobs than as a .jsonl.
        and recorded_path is not None
        and detect_format(recorded_path) == detect_format(manifest)
    )


def _validated_before(
    manifest: str, options: RunOptions, recorded: RunHeader | None
) -> Validation | None:
    """The validation `recorded` (a ledger's latest header) vouches for, if it does.

    The header is written only after its segment validated the manifest, with
    the hash of exactly the bytes it checked; the same bytes under the same
    rules and options pass again, so only the hash needs computing. The count
    of jobs is the file's own, taken in the same pass (`counted_digests`), and
    so are its waves (one, when no line can name a wave; else it is validated): a
    ledger is data, and a count it claims could make a resume think every job
    settled and send none of the rest.
    """
    if recorded is None or not same_identities(recorded, manifest, options):
        return None
    digest, chunks, jobs = counted_digests(manifest, options.manifest_format)
    if digest != recorded.manifest_sha256 or jobs is None:
        return None  # (None: bytes that may hold waves, or a YAML file: validated again)
    log.info("manifest unchanged since the ledger's last segment: not validated again")
    waves = {0: jobs} if jobs else {}  # no line names a wave: all in wave 0
    return Validation(manifest, jobs, (), 0, digest, waves=waves, chunks=chunks)


def file_size(path: str) -> int:
    """The size of `path`, 0 when it cannot be read (whoever opens it says why)."""
    try:
        return os.path.getsize(path)
    except OSError:  # (validate, or the ledger's open, says why, naming the file)
        return 0


def has_content(path: str) -> bool:
    """Whether `path` exists and holds anything."""
    return file_size(path) > 0
