"""`launcher replay`: re-issue the jobs of a ledger as a new run, elsewhere.

The job list is rebuilt from the ledger alone (each job's first intent carries
its name, params, workspace and project), filtered by final outcome, with the
project replaced and workspaces renamed as asked. Jobs the run never sent are
not in its ledger; they come from the original manifest when it is still
there unchanged (its path and hash are in the ledger header).

The rebuilt list is written as a JSONL manifest beside the new ledger and then
launched like any manifest, so a replay is validated, paced, recorded and
resumable (`launcher run REPLAY-MANIFEST --ledger REPLAY-LEDGER --resume`)
exactly like a run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from launcher.errors import UsageError
from launcher.ledger.history import History, fold
from launcher.ledger.report import OUTCOMES
from launcher.ledger.writer import read_ledger
from launcher.logs import get_logger
from launcher.manifest.validate import Defaults, file_sha256, iter_jobs
from launcher.run.plan import has_content

__all__ = [
    "ReplayPlan",
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


def plan_replay(
    source: str,
    *,
    only: frozenset[str],
    project_id: str | None,
    workspace_map: Mapping[str, str],
    ledger: str | None,
) -> ReplayPlan:
    """Rebuild the job list of `source` and write it as the replay's manifest."""
    history = fold([read_ledger(source)], keep=frozenset({"descriptions"}))
    if not history.headers:
        raise UsageError(f"{source}: no run header; this is not a launcher ledger")
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
            f"it with `launcher run {manifest_path} --ledger {ledger_path} --resume`, or "
            "choose another --ledger for a new replay"
        )
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    count = from_manifest = 0
    with open(manifest_path, "wb") as out:
        for line in replay_jobs(
            history, only=only, project_id=project_id, workspace_map=workspace_map
        ):
            out.write(orjson.dumps(line) + b"\n")
            count += 1
        if "pending" in only:
            for line in _never_sent(history, project_id, workspace_map):
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


def _never_sent(
    history: History, project_id: str | None, workspace_map: Mapping[str, str]
) -> Iterator[dict[str, Any]]:
    """Jobs of the original manifest that the ledger never mentions (pending, never sent)."""
    header = history.runs[0]
    path = header.manifest_path
    if path is None or not os.path.exists(path):
        log.warning(
            "never-sent jobs cannot be replayed: the original manifest is gone", manifest=path
        )
        return
    if file_sha256(path) != header.manifest_sha256:
        log.warning(
            "never-sent jobs cannot be replayed: the original manifest changed", manifest=path
        )
        return
    options = header.options
    defaults = Defaults(project_id=options.get("project_id"), workspace=options.get("workspace"))
    for job in iter_jobs(path, defaults, fmt=header.manifest_format):
        if job.id in history:
            continue
        description = {
            "name": job.name,
            "workspace": job.workspace,
            "project_id": job.project_id,
            "params": [[p.name, p.value, p.param_type] for p in job.params],
            "action": job.action,
        }
        yield replay_line(job.id, description, project_id, workspace_map)


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
    return line
