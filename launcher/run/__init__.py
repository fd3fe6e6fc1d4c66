"""One run end to end: plan, resume, send (in one process or a fleet), replay.

`launch` is what `launcher run` calls; `plan_manifest` validates and shards
before anything is sent; `plan_replay` rebuilds a run from a ledger; `connect`
turns options into an authenticated client; `read_runs` reads ledgers run by
run for `launcher report` (with each run's state and never-sent jobs);
`serving_metrics` serves `--metrics-port`.
"""

from __future__ import annotations

from launcher.run.connect import Connection, connect, resolve_endpoint
from launcher.run.metrics import serving_metrics
from launcher.run.plan import Plan, plan_manifest
from launcher.run.replay import parse_only, parse_workspace_map, plan_replay
from launcher.run.reports import RunReport, describe_runs, read_runs
from launcher.run.runner import launch
from launcher.run.segment import RunResult

__all__ = [
    "Connection",
    "Plan",
    "RunReport",
    "RunResult",
    "connect",
    "describe_runs",
    "launch",
    "parse_only",
    "parse_workspace_map",
    "plan_manifest",
    "plan_replay",
    "read_runs",
    "resolve_endpoint",
    "serving_metrics",
]
