"""One run end to end: plan, resume, send (in one process or a fleet), replay.

`launch` is what `launcher run` calls; `plan_manifest` validates and shards
before anything is sent; `plan_replay` rebuilds a run from a ledger; `connect`
turns options into an authenticated client; `latest_header`,
`recorded_options` and `recorded_manifest` give `launcher resume LEDGER` what
the ledger recorded, and `resume_hint` the line that says how to resume.
"""

from __future__ import annotations

from launcher.run.connect import Connection, connect, ensure_descriptors, resolve_endpoint
from launcher.run.plan import Plan, plan_manifest
from launcher.run.recorded import (
    latest_header,
    recorded_manifest,
    recorded_options,
    resume_command,
)
from launcher.run.replay import parse_only, parse_workspace_map, plan_replay
from launcher.run.runner import launch, resume_hint
from launcher.run.segment import RunResult

__all__ = [
    "Connection",
    "Plan",
    "RunResult",
    "connect",
    "ensure_descriptors",
    "latest_header",
    "launch",
    "parse_only",
    "parse_workspace_map",
    "plan_manifest",
    "plan_replay",
    "recorded_manifest",
    "recorded_options",
    "resolve_endpoint",
    "resume_command",
    "resume_hint",
]
