"""One run end to end: plan, resume, send (in one process or a fleet), replay.

`launch` is what `launcher run` calls; `plan_manifest` validates and shards
before anything is sent; `plan_replay` rebuilds a run from a ledger; `connect`
turns options into an authenticated client.
"""

from __future__ import annotations

from launcher.run.connect import Connection, connect, ensure_descriptors, resolve_endpoint
from launcher.run.plan import Plan, plan_manifest
from launcher.run.replay import parse_only, parse_workspace_map, plan_replay
from launcher.run.runner import launch
from launcher.run.segment import RunResult

__all__ = [
    "Connection",
    "Plan",
    "RunResult",
    "connect",
    "ensure_descriptors",
    "launch",
    "parse_only",
    "parse_workspace_map",
    "plan_manifest",
    "plan_replay",
    "resolve_endpoint",
]
