"""The ledger: an append-only JSONL record of a run, written ahead of every send.

Events, one per line (field names are part of the contract, see README):

- `run`: the header (run id, version, manifest path and hash, endpoint, options);
- `intent`: written, and handed to the OS, before a request leaves the process;
- `result`: what that attempt got back, with the job's final `outcome` on its
  last attempt;
- `check`: a status query that settled an ambiguous attempt;
- `end`: the footer, with the run's counts and exit code.

Intents are written through at once (a crash after the send then always
leaves a trace); results are group-committed: buffered and written together
every few milliseconds, or before the next intent, whichever comes first.
`fsync` decides how hard the bytes are pushed to disk: `always` (every write),
`batch` (fdatasync by the flusher, at most every `SYNC_INTERVAL`), or
`never` (the OS decides).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import anyio
import orjson

from launcher.errors import LedgerFailed, UsageError
from launcher.models import Action, Job, Reply

__all__ = ["FsyncPolicy", "Ledger", "LedgerRead", "default_ledger_path", "read_ledger"]

FsyncPolicy = Literal["always", "batch", "never"]

_RESULTS_PER_WRITE = 512  # group-commit size: past this many buffered results, write now
SYNC_INTERVAL = 0.05  # seconds between fdatasyncs under --fsync batch


def _datasync(fd: int) -> None:
    # fdatasync skips the metadata flush fsync does; the length is data here.
    getattr(os, "fdatasync", os.fsync)(fd)


def default_ledger_path(manifest: str | os.PathLike[str], now: float | None = None) -> Path:
    """`ledgers/<manifest-stem>-<UTC timestamp>.jsonl` (relative to the working directory)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return Path("ledgers") / f"{Path(manifest).stem}-{stamp}.jsonl"


class Ledger:
    """Writes one run's events to an append-only JSONL file.

    Every method raises `LedgerFailed` when the file cannot be written: the
    dispatcher must then stop, because an unrecorded send breaks resume.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "batch",
        flush_interval: float = 0.005,
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self.flush_interval = flush_interval
        self._pending: list[bytes] = []
        self._dirty = False  # written since the last fsync
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise UsageError(f"{self.path}: cannot open the ledger: {error.strerror}") from None
        self._closed = False

    # -- events ---------------------------------------------------------------

    def header(self, fields: Mapping[str, Any]) -> None:
        """Write the `run` header at once."""
        self._pending.append(_line({"event": "run", "t": time.time(), **fields}))
        self.flush()

    def intent(self, job: Job, attempt: int, action: Action) -> None:
        """Record that `attempt` of `job` is about to be sent, and write it through now.

        The first attempt carries the job's description (name, params,
        workspace, project) so that a ledger alone is enough to replay a run.
        """
        event: dict[str, Any] = {
            "event": "intent",
            "job": job.id,
            "attempt": attempt,
            "t": time.time(),
            "action": action,
        }
        if attempt == 1:
            event["name"] = job.name
            event["workspace"] = job.workspace
            event["project_id"] = job.project_id
            event["params"] = [[p.name, p.value, p.param_type] for p in job.params]
            event["line"] = job.line
        self._pending.append(_line(event))
        self.flush()
        if self._fsync == "always":
            self._sync()

    def result(
        self,
        job: Job,
        attempt: int,
        reply: Reply,
        verdict: str,
        outcome: str | None,
    ) -> None:
        """Record what `attempt` got back; `outcome` is the job's final one, on its last attempt."""
        event: dict[str, Any] = {
            "event": "result",
            "job": job.id,
            "attempt": attempt,
            "t": time.time(),
            "status": reply.status,
            "latency_ms": round(reply.latency * 1000.0, 3),
            "verdict": verdict,
        }
        if reply.error_code is not None:
            event["error_code"] = reply.error_code
        if reply.error_msg is not None:
            event["error_msg"] = reply.error_msg
        if reply.request_id is not None:
            event["request_id"] = reply.request_id
        if reply.failure is not None:
            event["failure"] = reply.failure.value
        if reply.instance_id is not None:
            event["instance_id"] = reply.instance_id
        if outcome is not None:
            event["outcome"] = outcome
        self._pending.append(_line(event))
        if len(self._pending) >= _RESULTS_PER_WRITE:
            self.flush()

    def check(
        self,
        job: Job,
        attempt: int,
        reply: Reply,
        state: str | None,
        conclusion: str,
        outcome: str | None = None,
    ) -> None:
        """Record a status check made to settle an ambiguous attempt, and what it concluded."""
        event: dict[str, Any] = {
            "event": "check",
            "job": job.id,
            "attempt": attempt,
            "t": time.time(),
            "status": reply.status,
            "state": state,
            "conclusion": conclusion,
        }
        if reply.error_code is not None:
            event["error_code"] = reply.error_code
        if reply.failure is not None:
            event["failure"] = reply.failure.value
        if outcome is not None:
            event["outcome"] = outcome
        self._pending.append(_line(event))
        if len(self._pending) >= _RESULTS_PER_WRITE:
            self.flush()

    def footer(self, fields: Mapping[str, Any]) -> None:
        """Write the `end` footer and push everything to disk."""
        self._pending.append(_line({"event": "end", "t": time.time(), **fields}))
        self.flush()
        self._sync()

    # -- writing --------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered event to the file (one write call)."""
        if not self._pending or self._closed:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            raise LedgerFailed(f"{self.path}: cannot write the ledger: {error.strerror}") from None
        self._dirty = True

    def _sync(self) -> None:
        if not self._dirty or self._closed:
            return
        try:
            os.fsync(self._fd)
        except OSError as error:
            raise LedgerFailed(f"{self.path}: cannot sync the ledger: {error.strerror}") from None
        self._dirty = False

    async def run_flusher(self) -> None:
        """Group commit until cancelled: write every `flush_interval`, and under `batch`
        fdatasync at most every `SYNC_INTERVAL`.

        Writing hands the bytes to the OS, which is what survives a killed
        process; syncing is what survives a power cut, and costs a thread hop
        and a disk flush. At thousands of starts a second, syncing every 5 ms
        cost ~40 us per start (measured); every 50 ms keeps the window of
        results a power cut can lose at 50 ms. Intents are written through
        at once either way.
        """
        loop_time = anyio.current_time
        next_sync = loop_time() + SYNC_INTERVAL
        while True:
            await anyio.sleep(self.flush_interval)
            self.flush()
            if self._fsync == "batch" and self._dirty and loop_time() >= next_sync:
                self._dirty = False
                next_sync = loop_time() + SYNC_INTERVAL
                fd = self._fd
                try:
                    await anyio.to_thread.run_sync(_datasync, fd)
                except OSError as error:
                    raise LedgerFailed(
                        f"{self.path}: cannot sync the ledger: {error.strerror}"
                    ) from None

    def close(self) -> None:
        """Flush what is buffered and close the file; safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
            if self._fsync != "never":
                self._sync()
        finally:
            self._closed = True
            os.close(self._fd)


def _line(event: Mapping[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


class LedgerRead:
    """A ledger's events, streamed: iterate it once (memory stays flat at any size).

    Works on a ledger that a running launcher is still appending to: a last
    line without its newline is treated as not yet written. After iteration,
    `torn_tail` says whether such a line was skipped (a crash mid-write, or a
    write in progress) and `bad_lines` lists other unreadable lines.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.torn_tail = False
        self.bad_lines: list[int] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loads = orjson.loads
        try:
            with open(self.path, "rb") as handle:
                for number, raw in enumerate(handle, 1):
                    if not raw.endswith(b"\n"):
                        if raw.strip():
                            self.torn_tail = True
                        continue
                    try:
                        event = loads(raw)
                    except orjson.JSONDecodeError:
                        if raw.strip():
                            self.bad_lines.append(number)
                        continue
                    if isinstance(event, dict):
                        yield event
                    else:
                        self.bad_lines.append(number)
        except OSError as error:
            raise UsageError(f"{self.path}: cannot read the ledger: {error.strerror}") from None

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event as a list: for small ledgers and tests only."""
        return list(self)


def read_ledger(path: str | os.PathLike[str]) -> LedgerRead:
    """A streaming reader of the ledger at `path` (nothing is read until iterated)."""
    return LedgerRead(path)
