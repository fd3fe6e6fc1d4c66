"""`launcher replay`: re-issue the jobs of a ledger as a new run, elsewhere.

The job list is rebuilt from the ledger alone (each job's first intent carries
its name, params, workspace and project), filtered by final outcome, with the
project replaced and workspaces renamed as asked. Jobs the run never sent are
not in its ledger; they come from the original manifest when it is still
there unchanged (its path and hash are in the ledger header).

The rebuilt list is written as a JSONL manifest beside the new ledger and then
launched like any manifest, so a replay is validated, paced, recorded and
resumable (`launcher resume REPLAY-LEDGER`) exactly like a run.

Checked before anything is written or sent (`UsageError`, exit 2):
- every `--map-workspace` OLD names a workspace the ledger knows (a typo
  would silently rename nothing), with a suggestion;
- when the run left jobs never sent and `pending` is replayed, their
  manifest is still there, unchanged, or named with `--manifest PATH` (a
  missing manifest would silently shrink the plan);
- the replay aims elsewhere than its source (another endpoint, project or
  workspace): to the same target, every job would start a second time,
  unless `--force`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from launcher.errors import ManifestChanged, UsageError
from launcher.flow.shard import parse_shard, shard_of
from launcher.ledger import OUTCOMES, History, create_private, fold, read_ledger
from launcher.logs import get_logger, redact_url
from launcher.manifest.validate import Defaults, file_digests, iter_jobs
from launcher.run.plan import has_content

__all__ = [
    "ReplayPlan",
    "check_new_target",
    "check_workspace_map",
    "parse_only",
    "parse_workspace_map",
    "plan_replay",
    "replay_jobs",
    "replay_line",
]

log = get_logger("launcher.run.replay")


def parse_only(text: str | None) -> frozenset[str]:
    """`started,failed` → those outcomes; None → all of them."""
    if text is None:
        return frozenset(OUTCOMES)
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = chosen - set(OUTCOMES)
    if unknown or not chosen:
        raise UsageError(
            f"--only: {', '.join(sorted(unknown)) or 'nothing'} is not an outcome; "
            f"choose from {','.join(OUTCOMES)}"
        )
    return chosen


def parse_workspace_map(pairs: tuple[str, ...]) -> dict[str, str]:
    """`("ws1=dr1", ...)` → `{"ws1": "dr1"}`; whitespace or a missing side is an error."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new or any(c.isspace() for c in pair):
            raise UsageError(f"--map-workspace {pair!r}: write it as OLD=NEW")
        if old in mapping:
            raise UsageError(f"--map-workspace: {old} is mapped twice")
        mapping[old] = new
    return mapping


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """The manifest a replay will run, and how many jobs it holds by source outcome."""

    manifest: Path
    ledger: Path
    jobs: int
    from_manifest: int  # never-sent jobs taken from the original manifest


def check_workspace_map(source: str, history: History, workspace_map: Mapping[str, str]) -> None:
    """Every OLD of `--map-workspace OLD=NEW` must be a workspace of the source ledger."""
    known = {record.workspace for record, _ in history.groups() if record.workspace is not None}
    for header in history.runs:
        workspace = header.options.get("workspace")
        if isinstance(workspace, str):  # (options are the run's, as recorded: any JSON)
            known.add(workspace)
    for old in workspace_map:
        if old not in known:
            close = difflib.get_close_matches(old, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            listed = ", ".join(sorted(known)) or "none"
            raise UsageError(
                f"--map-workspace {old}={workspace_map[old]}: {source} has no job in workspace "
                f"{old}{hint} (its workspaces: {listed})"
            )


def check_new_target(
    source: str,
    history: History,
    *,
    endpoint: str,
    project_id: str | None,
    workspace_map: Mapping[str, str],
    force: bool,
    only: frozenset[str] = frozenset(),
) -> None:
    """Refuse a replay aimed at its source's own endpoint and project, unless `force`.

    A new target is another endpoint (`--endpoint`, `--region`), another
    project (`--project-id` other than every project the source's jobs name),
    or a workspace renamed to another one (`--map-workspace`). Jobs in doubt
    (`unknown`) replayed to their own target are sent without the status check
    (and settle window) that `launcher resume` makes first: the message says so.
    """
    header = history.runs[-1]
    recorded = "sim" if header.simulator else header.endpoint
    if recorded is not None and recorded.rstrip("/") != endpoint.rstrip("/"):
        return
    if any(old != new for old, new in workspace_map.items()):
        return
    if project_id is not None:
        projects = {(record.description or {}).get("project_id") for _, record in history.items()}
        projects.add(header.options.get("project_id"))
        if project_id not in projects:
            return
    in_doubt = (
        f" Jobs in doubt would be sent without a check: `launcher resume {source}` checks "
        "each with the service first (after --settle), and sends only those not started."
        if "unknown" in only
        else ""
    )
    if force:
        log.warning(
            "replaying to the source's own endpoint and project (--force)",
            source=source,
            unchecked="jobs in doubt are sent without a status check" if in_doubt else None,
        )
        return
    raise UsageError(
        f"{source}: this replay aims at the endpoint ({redact_url(endpoint)}) and project "
        "its source ran against: every job would start there a second time. Give a new "
        "target (--project-id, --endpoint/--region, --map-workspace OLD=NEW), or --force "
        f"if that is what you mean.{in_doubt}"
    )


def plan_replay(
    source: str,
    *,
    only: frozenset[str],
    project_id: str | None,
    workspace_map: Mapping[str, str],
    ledger: str | None,
    endpoint: str | None = None,
    force: bool = False,
    manifest: str | None = None,
) -> ReplayPlan:
    """Rebuild the job list of `source` and write it as the replay's manifest.

    `endpoint` (the replay's, as resolved; None: not checked) and `force` are
    for `check_new_target`; `manifest` names the source run's manifest when
    it moved (its hash must match the recorded one).
    """
    history = fold([read_ledger(source)], keep=frozenset({"descriptions"}))
    if not history.headers:
        raise UsageError(f"{source}: no run header; this is not a launcher ledger")
    check_workspace_map(source, history, workspace_map)
    if endpoint is not None:
        check_new_target(
            source,
            history,
            endpoint=endpoint,
            project_id=project_id,
            workspace_map=workspace_map,
            force=force,
            only=only,
        )
    original = _original_manifest(source, history, manifest) if "pending" in only else None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    ledger_path = (
        Path(ledger) if ledger else Path("ledgers") / f"replay-{Path(source).stem}-{stamp}.jsonl"
    )
    manifest_path = ledger_path.with_name(ledger_path.stem + ".manifest.jsonl")
    # A replay manifest whose ledger is empty or absent started nothing (a --dry-run
    # wrote it, or the replay stopped before its first request): written anew. One
    # whose ledger holds a run belongs to that run, which resumes from it.
    if manifest_path.exists() and has_content(str(ledger_path)):
        raise UsageError(
            f"{manifest_path}: exists, and {ledger_path} holds the replay it started: continue "
            f"it with `launcher resume {ledger_path}`, or "
            "choose another --ledger for a new replay"
        )
    count = from_manifest = 0
    with _new_manifest(manifest_path) as out:
        for line in replay_jobs(
            history, only=only, project_id=project_id, workspace_map=workspace_map
        ):
            out.write(orjson.dumps(line) + b"\n")
            count += 1
        if original is not None:
            for line in _never_sent(history, *original, project_id, workspace_map):
                out.write(orjson.dumps(line) + b"\n")
                count += 1
                from_manifest += 1
    log.info(
        "replay planned",
        source=source,
        jobs=count,
        from_original_manifest=from_manifest,
        manifest=str(manifest_path),
        only=",".join(sorted(only)),
    )
    return ReplayPlan(manifest_path, ledger_path, count, from_manifest)


def _new_manifest(path: Path) -> BinaryIO:
    """The replay's manifest, made anew as ledgers are: 0600, never through a link.

    One left by a replay that started nothing (see `plan_replay`) is removed
    first; a symbolic link there is removed, never followed.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return open(create_private(path), "wb")
    except OSError as error:
        raise UsageError(f"{path}: cannot write the replay manifest: {error.strerror}") from None


def _original_manifest(
    source: str, history: History, given: str | None
) -> tuple[str, tuple[bytes, ...]] | None:
    """The source run's manifest and its chunks' digests (what its jobs are read
    against), when jobs of the run may never have been sent (None: none were).

    Those jobs are only in the manifest: a manifest that is gone or changed
    is refused (UsageError) rather than replaying fewer jobs than the run had.
    The header's count of jobs is a claim: when it says the ledger mentions
    every job, the manifest is still read if it is there unchanged.
    """
    header = history.runs[-1]
    jobs = header.manifest_jobs
    path = given or header.manifest_path
    recorded = header.manifest_sha256
    if given is None and (jobs is None or jobs <= history.job_count):
        if path is not None and os.path.isfile(path):
            digest, chunks = file_digests(path)
            if digest == recorded:
                return path, chunks
        return None  # the ledger mentions every job of the run, its header says
    unsent = f"{jobs - history.job_count} job(s)" if jobs is not None else "jobs"
    if path is None or not os.path.exists(path):
        raise UsageError(
            f"{source}: {unsent} of the run were never sent and are only in its manifest "
            f"{path}, which is gone; point at it with --manifest PATH, or leave them out "
            "with --only started,failed,unknown"
        )
    digest, chunks = file_digests(path)
    if digest != recorded:
        raise UsageError(
            f"{path}: not the manifest of the run in {source} (sha256 {str(recorded)[:12]}… "
            f"then, {digest[:12]}… now): its {unsent} never sent cannot be taken from it; "
            "point at the original with --manifest PATH, or leave them out with "
            "--only started,failed,unknown"
        )
    return path, chunks


def _never_sent(
    history: History,
    path: str,
    chunks: tuple[bytes, ...],
    project_id: str | None,
    workspace_map: Mapping[str, str],
) -> Iterator[dict[str, Any]]:
    """Jobs of the original manifest that the ledger never mentions (pending, never sent).

    Only the bytes hashed (and found to be the run's) are read: a chunk that
    differs (`chunks`) stops the replay before anything is sent.
    """
    header = history.runs[-1]
    options = header.options
    defaults = Defaults(project_id=options.get("project_id"), workspace=options.get("workspace"))
    shard = header.shard
    index, count = parse_shard(shard) if shard is not None else (0, 1)
    jobs = iter_jobs(path, defaults, fmt=header.manifest_format, checked=chunks)
    try:
        for job in jobs:
            if job.id in history or (count > 1 and shard_of(job.id, count) != index):
                continue  # recorded, or another shard's
            description = {
                "name": job.name,
                "workspace": job.workspace,
                "project_id": job.project_id,
                "params": [[p.name, p.value, p.param_type] for p in job.params],
                "action": job.action,
                "wave": job.wave,
            }
            yield replay_line(job.id, description, project_id, workspace_map)
    except ManifestChanged:
        raise UsageError(
            f"{path}: the original manifest changed while it was read for the replay "
            "(its bytes differ from the run's); nothing was sent"
        ) from None


def replay_jobs(
    history: History,
    *,
    only: frozenset[str],
    project_id: str | None,
    workspace_map: Mapping[str, str],
) -> Iterator[dict[str, Any]]:
    """Manifest lines for the jobs whose final outcome is in `only`.

    Needs `fold(..., keep=frozenset({"descriptions"}))`. `project_id` replaces
    every job's project; `workspace_map` renames workspaces (OLD=NEW). Each
    line keeps the job's original identity as its `id`, so the replay's
    ledger can be matched against the source ledger.
    """
    for job_id, record in history.items():
        if record.final not in only:
            continue
        description = record.description
        if description is None:
            raise UsageError(
                f"job {job_id}: the ledger lacks its description (its first attempt's intent)"
            )
        yield replay_line(job_id, description, project_id, workspace_map)


def replay_line(
    job_id: str,
    description: Mapping[str, Any],
    project_id: str | None,
    workspace_map: Mapping[str, str],
) -> dict[str, Any]:
    """One manifest line for a job described by an intent (or a manifest `Job`'s fields)."""
    workspace = description.get("workspace")
    if workspace is not None:
        workspace = workspace_map.get(workspace, workspace)
    line: dict[str, Any] = {
        "id": job_id,
        "name": description["name"],
        "params": [
            {"name": name, "value": value, **({"paramType": kind} if kind else {})}
            for name, value, kind in description.get("params") or ()
        ],
    }
    if workspace is not None:
        line["workspace"] = workspace
    project = project_id or description.get("project_id")
    if project is not None:
        line["project_id"] = project
    action = description.get("action")
    if action not in (None, "start"):
        line["action"] = action
    wave = description.get("wave")
    if wave:
        line["wave"] = wave  # a replay keeps the original run's order
    return line
