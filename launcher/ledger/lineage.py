"""Which ledgers are one run, whether a run is still going, and how long it really ran.

`launcher report` merges ledgers only when they are one run: the segments of
a run are in one ledger (a resume appends, and its header names the segment
it resumes), and the shards of a run are ledgers whose headers share the
manifest hash, the shard count, the endpoint, the action and the project.
Anything else is a different run, and merging two runs would count each job
twice or call half of them pending. `run_key` says which run a ledger's first
header belongs to; `group_runs` groups ledgers by it.

A ledger's last segment without an `end` record was written by a process that
is still running, or that died. The header records the pid and host:
`segment_states` checks whether that process still exists when the host is
this one. `active_seconds` counts the time segments actually ran (the union of
their spans), not the gaps between an interruption and its resume.

Pure functions over `run` headers and `end` footers (the fold keeps both),
except `pid_alive`, which asks the operating system, and `segment_last_writes`,
which reads a few lines of a ledger through the checked decoder every reader uses.
"""

from __future__ import annotations

import mmap
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from launcher.ledger.events import RunHeader
from launcher.ledger.read import LedgerInvalid, checked_event, open_regular

__all__ = [
    "SegmentState",
    "active_seconds",
    "describe_state",
    "group_runs",
    "pid_alive",
    "run_key",
    "segment_last_writes",
    "segment_states",
]

Footer = Mapping[str, Any]


def run_key(header: RunHeader) -> tuple[Any, ...]:
    """What makes ledgers one run, read from a ledger's first `run` header.

    A sharded run: the manifest's hash, the shard count, the endpoint, the
    action and the project (each shard's ledger has its own run id). Any other
    run: its fleet id (the worker parts of `--workers`) or its run id.
    """
    shard = header.shard
    if shard is not None and "/" in shard:
        options = header.options
        return (
            "shards",
            header.manifest_sha256,
            shard.partition("/")[2],
            header.endpoint,
            options.get("action"),
            options.get("project_id"),
        )
    return ("run", header.fleet if header.fleet is not None else header.run_id)


def group_runs(first_headers: Sequence[tuple[str, RunHeader]]) -> list[list[str]]:
    """Ledger paths grouped by run (`run_key` of each one's first header), in given order."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for path, header in first_headers:
        groups.setdefault(run_key(header), []).append(path)
    return list(groups.values())


def describe_run(header: RunHeader) -> str:
    """A run in a few words, to tell runs apart in a message."""
    name = os.path.basename(header.manifest_path or "?")
    started = (header.started_at or "?")[:19]
    shard = f", shard {header.shard}" if header.shard else ""
    return f"run {(header.run_id or '?')[:8]} of {name} started {started}{shard}"


def active_seconds(
    headers: Sequence[RunHeader],
    footers: Sequence[Footer],
    last_t: float,
    last_writes: Mapping[str, float] | None = None,
) -> float:
    """How long the segments ran: the union of their spans, in seconds.

    A segment runs from its header's `t` to its footer's `t`. One without a
    footer (killed, or still running) ends at its last event when known
    (`last_writes`, by run id: see `segment_last_writes`), else where the
    segment resuming it began, else at the last event of the ledgers
    (`last_t`). Overlapping spans (shards or workers running at once) count
    once; the gaps between an interruption and its resume do not count.
    """
    ends: dict[Any, Any] = {
        f.get("run_id"): f.get("t") for f in footers if isinstance(f.get("t"), int | float)
    }
    for written_id, t in (last_writes or {}).items():
        ends.setdefault(written_id, t)
    resumed_at = {h.resumes: h.t for h in headers if h.t is not None}
    spans: list[tuple[float, float]] = []
    for header in headers:
        start = header.t
        if start is None:
            continue
        run_id = header.run_id
        end = ends.get(run_id)
        if end is None:
            end = resumed_at.get(run_id, last_t)
        if end is not None and end > start:
            spans.append((float(start), float(end)))
    total = 0.0
    reach = -float("inf")
    for start, end in sorted(spans):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


_HEADER_LINE = b'\n{"event":"run",'


def segment_last_writes(path: str | os.PathLike[str]) -> dict[str, float]:
    """For each segment another one resumes in the same ledger: the time of its last event.

    A killed segment has no `end` record; its last line before the next
    `run` header says when it stopped. Found with a byte search for header
    lines (orjson writes `{"event":"run",` first), so a ledger of any size
    costs a scan at memory speed and a few parsed lines. Each line parsed is
    decoded and checked as every reader does (`checked_event`): a bad one is
    `LedgerInvalid`, `FILE:LINE: problem` (exit 2).
    """
    found: dict[str, float] = {}
    with open_regular(path) as handle:  # (a FIFO or a device: refused, never waited on)
        if os.fstat(handle.fileno()).st_size == 0:
            return found
        view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    with view:
        position = view.find(_HEADER_LINE)
        while position >= 0:
            end = view.find(b"\n", position + 1)
            header = _event(view, position + 1, end if end >= 0 else len(view), path)
            resumes = header.get("resumes")
            if isinstance(resumes, str):
                t = _last_time_before(view, position, path)
                if t is not None:
                    found[resumes] = t
            position = view.find(_HEADER_LINE, position + 1)
    return found


def _event(view: mmap.mmap, start: int, end: int, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked event of the line at `view[start:end]` (its number is counted only
    when it is refused: a scan of the bytes before it)."""
    line = view[start:end]
    try:
        return checked_event(line, 0, path)
    except LedgerInvalid:
        number = view[:start].count(b"\n") + 1
        return checked_event(line, number, path)  # refused again, naming its line


def _last_time_before(view: mmap.mmap, position: int, path: str | os.PathLike[str]) -> float | None:
    """The `t` of the last event line ending at `position` that has one (a few lines back)."""
    end = position
    for _ in range(4):
        start = view.rfind(b"\n", 0, end) + 1
        t = _event(view, start, end, path).get("t")
        if isinstance(t, int | float):
            return float(t)
        if start == 0:
            return None
        end = start - 1
    return None


@dataclass(frozen=True, slots=True)
class SegmentState:
    """The state of a run's latest segment (one per shard or worker).

    `state` is the footer's reason (`complete`, `halted`, `deadline`,
    `interrupted`, ...) when the segment ended, else `running` (its process
    exists), `interrupted` (its process is gone: killed or crashed) or
    `unknown` (it ran on another host, which cannot be asked).
    """

    state: str
    pid: int | None = None
    host: str | None = None
    ended: bool = True  # the segment wrote its `end` record


def segment_states(
    headers: Sequence[RunHeader],
    footers: Sequence[Footer],
    *,
    this_host: str | None = None,
    alive: Callable[[int], bool] | None = None,
) -> list[SegmentState]:
    """The state of each latest segment: those no later segment resumes."""
    host_now = this_host if this_host is not None else socket.gethostname()
    is_alive = alive if alive is not None else pid_alive
    reasons = {f.get("run_id"): f.get("reason") for f in footers}
    resumed = {h.resumes for h in headers if h.resumes}
    states: list[SegmentState] = []
    for header in headers:
        run_id = header.run_id
        if run_id in resumed:
            continue
        pid, host = header.pid, header.host
        reason = reasons.get(run_id)
        if reason is not None or run_id in reasons:
            states.append(SegmentState(str(reason or "complete"), pid, host))
        elif host is not None and host != host_now:
            states.append(SegmentState("unknown", pid, host, ended=False))
        elif pid is not None and is_alive(pid):
            states.append(SegmentState("running", pid, host, ended=False))
        else:
            states.append(SegmentState("interrupted", pid, host, ended=False))
    return states


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (and, where /proc says, is a launcher).

    A pid is reused once its process is gone; on Linux the command line of a
    reused pid names some other program, so it does not pass for the run.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return True  # no /proc: existence is all we know
    return b"launcher" in command


def describe_state(states: Sequence[SegmentState], last_write_age: float | None) -> str:
    """The state of segments without an end record, in words (empty when every one ended:
    how they ended is the report's `stopped`).

    `running (pid 4242 on host-a, last write 3 s ago)`; `interrupted (pid 4242
    on host-a is gone; resume with --resume)`; `halted`; `running or
    interrupted (pid 4242 on host-b: another host, cannot check; ...)`.
    """
    parts: list[str] = []
    age = "" if last_write_age is None else f", last write {last_write_age:.0f} s ago"
    for state in states:
        who = f"pid {state.pid} on {state.host}" if state.pid is not None else "its process"
        if state.state == "running":
            parts.append(f"running ({who}{age})")
        elif state.state == "unknown":
            parts.append(f"running or interrupted ({who}: another host, cannot check{age})")
        elif not state.ended:
            parts.append(f"interrupted ({who} is gone without an end record; resume it)")
    unique: list[str] = []
    for part in parts:
        if part not in unique:
            unique.append(part)
    return "; ".join(unique)
