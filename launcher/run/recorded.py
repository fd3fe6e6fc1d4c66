"""What a ledger recorded about its run, to continue it: `launcher resume LEDGER`.

A resume needs the run's manifest and options again. The ledger's latest
`run` header holds both (the manifest's path and hash, every option but the
secrets), so `recorded_options` turns them into a layer of option values
under the flags and the config file: flags given override them (and the new
segment's header records the result). Whatever the layers say, the resumed
run's target must still match (`resume.check_identity`): a resume can never
be aimed elsewhere by a forgotten flag or a different environment.

`resume_command` is the line an interrupted or halted run prints for it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import orjson

from launcher.config import RunOptions
from launcher.errors import UsageError
from launcher.ledger import read_ledger
from launcher.ledger.check import problem
from launcher.ledger.events import RunHeader
from launcher.ledger.read import LedgerInvalid, open_regular

__all__ = ["latest_header", "recorded_manifest", "recorded_options", "resume_command"]

# What a header records but a resume decides anew (a deadline bounded that
# invocation's time window), or cannot take back (the Redis URL is recorded
# without its password: LAUNCHER_REDIS_URL or --redis gives it again).
_NOT_REUSED = frozenset(
    {"resume", "force", "retry_failed", "dry_run", "ledger", "sim", "redis", "deadline"}
)
_HEADER_PREFIX = b'{"event":"run"'


def latest_header(ledger: str) -> dict[str, Any]:
    """The latest `run` header of `ledger` (UsageError when there is none).

    Header lines are found by their first bytes, without decoding every event,
    and checked as every reader checks them (`FILE:LINE: problem`, exit 2); a
    ledger that is not a regular file is refused before anything is read. A
    ledger whose headers are only in a crashed fleet's parts is read in full.
    """
    found: dict[str, Any] | None = None
    with open_regular(ledger) as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith(_HEADER_PREFIX) and line.endswith(b"\n"):
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise LedgerInvalid(f"{ledger}:{number}: not JSON") from None
                wrong = problem(event, ledger) if isinstance(event, dict) else "not an object"
                if wrong is not None:
                    raise LedgerInvalid(f"{ledger}:{number}: {wrong}")
                found = event
    if found is None:
        for event in read_ledger(ledger):
            if event.get("event") == "run":
                found = event
    if found is None:
        raise UsageError(f"{ledger}: no run header; this is not a launcher ledger")
    return found


def recorded_manifest(ledger: str, header: Mapping[str, Any], given: str | None) -> str:
    """The manifest to resume with: `given` (--manifest), else the one the header records."""
    if given is not None:
        return given
    path = RunHeader.of(header).manifest_path
    if not path:
        raise UsageError(f"{ledger}: the run header names no manifest; pass --manifest PATH")
    if not os.path.exists(path):
        raise UsageError(
            f"{ledger}: the run's manifest {path} is gone; pass --manifest PATH "
            "(its content must be the same: its hash is checked)"
        )
    return path


def recorded_options(header: Mapping[str, Any]) -> dict[str, Any]:
    """The run's options as the header records them, as values `resolve_options` takes.

    A fleet's worker records its share of the limits (`options`) and the run's
    own (`run_options`): the run's are the ones to resume with.
    """
    raw = header.get("run_options")
    if not isinstance(raw, dict):
        raw = header.get("options")
    if not isinstance(raw, dict):
        return {}
    known = {f.name for f in fields(RunOptions)} - _NOT_REUSED
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known or value is None:
            continue
        if name == "workers":
            value = "auto" if value == 0 else value
        elif name == "workspaces":
            value = _workspace_limits(value)
        values[name] = value
    return values


def _workspace_limits(value: object) -> dict[str, tuple[int, float, int]]:
    """Recorded `[workspaces]` limits, checked as a config file's are (a ledger is input)."""
    bad = UsageError(
        "the ledger's recorded options: workspaces: not {ID: [concurrency, rate, burst]}"
    )
    if not isinstance(value, dict):
        raise bad
    limits: dict[str, tuple[int, float, int]] = {}
    for workspace, entry in value.items():
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise bad
        concurrency, rate, burst = entry
        if not (
            _whole(concurrency, 0)
            and isinstance(rate, int | float)
            and not isinstance(rate, bool)
            and 0 <= rate < float("inf")
            and _whole(burst, 1)
        ):
            raise bad
        limits[str(workspace)] = (concurrency, float(rate), burst)
    return limits


def _whole(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def resume_command(ledger: str, config_path: str | None = None) -> str:
    """The command that resumes the run recorded in `ledger` (paths quoted for a shell)."""
    command = f"launcher resume {shlex.quote(ledger)}"
    if config_path:
        command += f" --config {shlex.quote(config_path)}"
    return command
