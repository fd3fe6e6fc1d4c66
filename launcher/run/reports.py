"""`launcher report`'s reading: ledgers grouped by run, each run's state, its never-sent jobs.

`read_runs` takes the ledger paths a user gave: a file that is not a ledger
(a manifest given by mistake) is refused (exit 2); the others are grouped by
run (`launcher.ledger.lineage.run_key`: segments and shards of one run merge,
different runs do not, unless `merge_runs`), and each group is folded once
and summarized with its state (running, interrupted, or how it ended).

The jobs a run never sent are read back from the manifest its ledger names.

A ledger records only the jobs a run attempted; a halted, interrupted or
deadline-bound run leaves the rest out. Each `run` header records the
manifest's path and SHA-256 and the options that decide job identities, so
`launcher report` can list the never-sent jobs too (CSV rows, `--outcome
pending`, pending by workspace) as long as the manifest is still there,
byte for byte. When it is not, `Unsent.missing` says why, and the report
counts those jobs without naming them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from launcher.errors import LauncherError, ManifestChanged, UsageError
from launcher.ledger import History, Summary, fold, load_fold, read_ledger, summary_of
from launcher.ledger.events import RunHeader
from launcher.ledger.lineage import (
    describe_run,
    describe_state,
    group_runs,
    segment_last_writes,
    segment_states,
)
from launcher.ledger.read import checked_event, open_regular
from launcher.manifest.validate import Defaults, file_digests, iter_jobs
from launcher.models import Job

__all__ = [
    "RunReport",
    "Unsent",
    "add_never_sent",
    "describe_runs",
    "first_record",
    "never_sent",
    "read_runs",
]


@dataclass(slots=True)
class RunReport:
    """One run's ledgers, folded and summarized, and its never-sent jobs when asked for."""

    paths: list[str]
    history: History
    summary: Summary
    unsent: Unsent | None


def first_record(path: str) -> dict[str, Any]:
    """The first line of a ledger: its `run` header (or a fleet's `workers` record).

    UsageError (exit 2) when `path` is missing or is not a ledger, e.g. a
    manifest given to `report` by mistake (which would otherwise report 0 jobs).
    """
    if not os.path.lexists(path):
        raise UsageError(f"{path}: no such file")
    with open_regular(path) as handle:  # (a FIFO or a device: refused, never waited on)
        line = handle.readline(1 << 20)
    try:
        record = orjson.loads(line) if line.strip() else None
    except orjson.JSONDecodeError:
        record = None
    if isinstance(record, dict) and record.get("event") in ("run", "workers"):
        # A ledger's: checked as every reader checks a line.
        return checked_event(line.rstrip(b"\n"), 1, path)
    looks = (
        ": it looks like a manifest (a job per line)"
        if isinstance(record, dict) and "name" in record
        else ""
    )
    raise UsageError(
        f"{path}: not a ledger (its first line is no `run` record){looks}; report reads the "
        "ledger a run wrote (--ledger, default ledgers/<manifest>-<UTC time>.jsonl)"
    )


def _run_header(path: str, record: dict[str, Any]) -> RunHeader:
    if record.get("event") == "run":
        return RunHeader.of(record)
    # A fleet's ledger opens with its `workers` record: the fleet id is the run's.
    return RunHeader(run_id=record.get("fleet"), fleet=record.get("fleet"))


def read_runs(
    paths: Sequence[str],
    *,
    merge_runs: bool = False,
    per_job: bool = False,
    now: float | None = None,
) -> list[RunReport]:
    """Fold and summarize `paths` run by run (all as one with `merge_runs`).

    With `per_job`, details are kept for per-job rows. When some jobs are
    pending, the never-sent ones are read back from the manifest (for per-job
    rows and pending by workspace).
    """
    firsts = [(path, _run_header(path, first_record(path))) for path in paths]
    groups = [list(paths)] if merge_runs else group_runs(firsts)
    reports: list[RunReport] = []
    clock = time.time() if now is None else now
    for group in groups:
        saved = load_fold(group[0]) if len(group) == 1 and not per_job else None
        history = saved or fold(
            (read_ledger(path) for path in group),
            keep=frozenset({"details"}) if per_job else frozenset(),
        )
        last_writes: dict[str, float] = {}
        if _killed_and_resumed(history):  # else every segment's end is in its footer
            for path in group:
                last_writes.update(segment_last_writes(path))
        summary = summary_of(history, last_writes)
        _state(summary, history, group, clock)
        unsent = None
        if summary.outcomes["pending"]:  # no job pending: none to read back
            unsent = add_never_sent(summary, history, group)
        reports.append(RunReport(list(group), history, summary, unsent))
    return reports


def add_never_sent(
    summary: Summary,
    history: History,
    paths: Sequence[str],
    jobs: Callable[[], Iterable[Job]] | None = None,
) -> Unsent:
    """Read the never-sent jobs back from the manifest, and count them in the summary's
    pending by workspace (notes in `summary.unlisted` when the manifest cannot tell).

    `launcher run` calls it for its own summary too, so that the two agree,
    with `jobs`: its plan's jobs (already validated, often in memory) instead of
    the manifest read again.
    """
    if history.counted_only:  # a snapshot or a live fold: counts, not which jobs
        history = fold(read_ledger(path) for path in paths)
    if jobs is not None:
        unsent = Unsent([job for job in jobs() if not history.state(job.id)])
    else:
        unsent = never_sent(history)
    for workspace, count in unsent.by_workspace().items():
        counts = summary.by_workspace.setdefault(
            workspace, {"started": 0, "failed": 0, "unknown": 0, "pending": 0}
        )
        counts["pending"] += count
    summary.by_workspace = dict(sorted(summary.by_workspace.items()))
    summary.unlisted = unsent.missing
    return unsent


def _killed_and_resumed(history: History) -> bool:
    """Whether a segment without an `end` record was resumed (its end is then in the file)."""
    ended = {footer.get("run_id") for footer in history.footers}
    runs = history.runs
    resumed = {run.resumes for run in runs}
    return any(run.run_id in resumed and run.run_id not in ended for run in runs)


def describe_runs(reports: Sequence[RunReport]) -> list[str]:
    """Each run in a few words, for a message that names them."""
    return [
        f"{', '.join(report.paths)}: "
        + (describe_run(report.history.runs[0]) if report.history.headers else "a run")
        for report in reports
    ]


def _state(summary: Summary, history: History, paths: Sequence[str], now: float) -> None:
    """Set the summary's state: running, interrupted, unknown, or how its segments ended."""
    states = segment_states(history.runs, history.footers)
    mtimes = [os.stat(path).st_mtime for path in paths if os.path.exists(path)]
    age = max(0.0, now - max(mtimes)) if mtimes else None
    summary.state_text = describe_state(states, age)
    names = [state.state for state in states]
    for name in ("running", "unknown", "interrupted"):
        if name in names:
            summary.state = name
            break
    else:
        summary.state = summary.stopped[0] if summary.stopped else "complete"
    summary.live = [
        {
            "pid": state.pid,
            "host": state.host,
            "last_write_s": None if age is None else round(age, 1),
            "state": state.state,
        }
        for state in states
        if not state.ended
    ]


@dataclass(slots=True)
class Unsent:
    """Never-sent jobs, and the manifests that could not be read back (with why)."""

    jobs: list[Job] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def by_workspace(self) -> dict[str, int]:
        """How many never-sent jobs each workspace has (`(default)` for none)."""
        counts: dict[str, int] = {}
        for job in self.jobs:
            key = job.workspace or "(default)"
            counts[key] = counts.get(key, 0) + 1
        return counts


def never_sent(history: History, headers: Sequence[RunHeader] | None = None) -> Unsent:
    """The jobs of the manifests named in `headers` (default: the history's) that the
    history never attempted, in manifest order, each manifest read once.

    Sharded runs: the whole manifest is read, since the jobs of a shard with no
    ledger were never sent by anyone (the report counts them as pending too).
    """
    unsent = Unsent()
    seen: set[tuple[Any, ...]] = set()
    listed: set[str] = set()
    for header in headers if headers is not None else history.runs:
        options = header.options
        path, digest = header.manifest_path, header.manifest_sha256
        key = (
            path,
            digest,
            options.get("project_id"),
            options.get("workspace"),
            options.get("manifest_format"),
        )
        if key in seen or path is None:
            continue
        seen.add(key)
        problem, chunks = _the_runs(path, digest)
        if problem is not None:
            unsent.missing.append(problem)
            continue
        defaults = Defaults(
            project_id=options.get("project_id"), workspace=options.get("workspace")
        )
        found: list[Job] = []
        try:  # only the bytes just hashed: a chunk that differs ends the listing
            for job in iter_jobs(
                path, defaults, fmt=options.get("manifest_format"), checked=chunks
            ):
                if job.id not in listed and not history.state(job.id):
                    listed.add(job.id)
                    found.append(job)
        except ManifestChanged:
            unsent.missing.append(f"{path}: the manifest changed while it was read")
            continue
        except LauncherError as error:
            unsent.missing.append(f"{path}: {error}")
            continue
        unsent.jobs.extend(found)
    return unsent


def _the_runs(path: str, digest: object) -> tuple[str | None, tuple[bytes, ...]]:
    """Why the manifest at `path` cannot list the run's jobs (None: it can), and the
    digests of its chunks (what its jobs are read against)."""
    if not os.path.isfile(path):
        return f"{path}: the run's manifest is not there any more", ()
    try:
        now, chunks = file_digests(path)
    except LauncherError as error:
        return str(error), ()
    if now != digest:
        return f"{path}: the manifest changed since the run (its SHA-256 differs)", ()
    return None, chunks
