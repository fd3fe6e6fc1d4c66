"""The ledger: an append-only JSONL record of a run, written ahead of every send.

Events, one per line (field names are part of the contract, see README):

- `run`: the header (run id, version, manifest path and hash, endpoint, options);
- `intent`: written, and handed to the OS, before a request leaves the process;
- `result`: what that attempt got back, with the job's final `outcome` on its
  last attempt;
- `check`: a status query that settled an ambiguous attempt;
- `end`: the footer, with the run's counts and exit code.

Intents reach the OS before their request leaves (a crash after the send
then always leaves a trace): each is written through at once, or, when the
sender takes that on (`defer_intents`), all those of a loop iteration in one
write just before their requests go. Results are group-committed: buffered
and written together every few milliseconds, or with the next intents.
`fsync` decides how hard the bytes are pushed to disk: `always` (every write),
`batch` (fdatasync by the flusher, at most every `SYNC_INTERVAL`), or
`never` (the OS decides).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio
import orjson

from launcher.errors import LedgerFailed, UsageError
from launcher.models import Action, Job, Reply

__all__ = [
    "FsyncPolicy",
    "Ledger",
    "LedgerRead",
    "Unmerged",
    "default_ledger_path",
    "finish_merge",
    "lock_part",
    "open_fleet",
    "part_name",
    "part_paths",
    "read_ledger",
]

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
        mirror: bool = False,
    ) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self.flush_interval = flush_interval
        self._pending: list[bytes] = []
        self._dirty = False  # written since the last fsync
        # With `mirror`, the events written, as mappings, until `take_events` (see there).
        self._mirror: list[dict[str, Any]] | None = [] if mirror else None
        self.mirror_intact = mirror  # every event taken or to take was written in full
        self._intents_deferred = False  # see `defer_intents`
        self.bytes_written = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            info = os.fstat(self._fd)
        except OSError as error:
            raise UsageError(f"{self.path}: cannot open the ledger: {error.strerror}") from None
        self.start_size = info.st_size  # what the file held before this run
        self.identity = (info.st_dev, info.st_ino)  # the file written, should it be replaced
        self._closed = False

    # -- events ---------------------------------------------------------------

    def header(self, fields: Mapping[str, Any]) -> None:
        """Write the `run` header at once."""
        line = _line({"event": "run", "t": time.time(), **fields})
        self._pending.append(line)
        if self._mirror is not None:
            self._mirror.append(orjson.loads(line))  # as a reader will see it
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
            if job.wave:
                event["wave"] = job.wave
        self._pending.append(_line(event))
        if self._mirror is not None:
            self._mirror.append(event)
        if not self._intents_deferred:
            self.write_intents()

    def defer_intents(self) -> Callable[[], None]:
        """Stop writing each intent through as it is recorded; return `write_intents`,
        which the sender must call before any request leaves.

        For a sender that can call it once for many requests (`HttpPool.write_ahead`):
        the intents still reach the OS before their requests do, in one write.
        """
        self._intents_deferred = True
        return self.write_intents

    def write_intents(self) -> None:
        """Write everything recorded so far (and under `always`, sync it)."""
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
            # Whole microseconds, in ms (round(x, 3) is twice the cost: decimal rounding).
            "latency_ms": int(reply.latency * 1_000_000.0 + 0.5) / 1000,
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
        if reply.detail is not None:
            event["detail"] = reply.detail  # why no answer was read (connect, TLS, timeout)
        if outcome is not None:
            event["outcome"] = outcome
        self._pending.append(_line(event))
        if self._mirror is not None:
            self._mirror.append(event)
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
        if reply.detail is not None:
            event["detail"] = reply.detail
        if outcome is not None:
            event["outcome"] = outcome
        self._pending.append(_line(event))
        if self._mirror is not None:
            self._mirror.append(event)
        if len(self._pending) >= _RESULTS_PER_WRITE:
            self.flush()

    def instance(self, job: Job, instance_id: int | str | None, status: str) -> None:
        """Record a followed run's new status (`--wait`; see `launcher.ledger.instances`)."""
        event = {
            "event": "instance",
            "job": job.id,
            "t": time.time(),
            "instance_id": instance_id,
            "status": status,
        }
        self._pending.append(_line(event))
        if self._mirror is not None:
            self._mirror.append(event)
        if len(self._pending) >= _RESULTS_PER_WRITE:
            self.flush()

    def verify(self, job: Job, expected: str, found: str | None) -> None:
        """Record a job whose state after the run is not what its call set (`--verify`)."""
        event = {
            "event": "verify",
            "job": job.id,
            "t": time.time(),
            "name": job.name,
            "workspace": job.workspace,
            "expected": expected,
            "found": found,
        }
        self._pending.append(_line(event))
        if self._mirror is not None:
            self._mirror.append(event)
        if len(self._pending) >= _RESULTS_PER_WRITE:
            self.flush()

    def footer(self, fields: Mapping[str, Any]) -> None:
        """Write the `end` footer and push everything to disk."""
        line = _line({"event": "end", "t": time.time(), **fields})
        self._pending.append(line)
        if self._mirror is not None:
            self._mirror.append(orjson.loads(line))
        self.flush()
        self._sync()

    # -- writing --------------------------------------------------------------

    def flush(self) -> None:
        """Write every buffered event to the file (one write call)."""
        if not self._pending or self._closed:
            return
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        try:
            written = os.write(self._fd, data)
            if written < len(data):  # a short write: rare, finish it
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self._fd, view) :]
        except OSError as error:
            self.mirror_intact = False  # some events are not in the file
            raise LedgerFailed(f"{self.path}: cannot write the ledger: {error.strerror}") from None
        self.bytes_written += len(data)
        self._dirty = True

    def take_events(self) -> list[dict[str, Any]]:
        """The events recorded since the last call, as the mappings their lines encode.

        Only with `mirror`. For a reader in this process that would otherwise read
        the lines back (the end-of-run summary): the mappings hold what decoding
        the lines gives (strings, numbers, None, lists, mappings; a verdict is a
        `str` enum). They may run ahead of the file by the events not flushed
        yet; `mirror_intact` turns False if a write fails.
        """
        taken = self._mirror
        if taken is None:
            raise RuntimeError("take_events needs a Ledger made with mirror=True")
        self._mirror = []
        return taken

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

    A run with several worker processes (`--workers`) writes a `workers`
    record naming one part file per worker, and when they are done copies the
    parts into the ledger and writes a `merged` record. Reading follows the
    parts while they exist (a run in progress, or one that crashed before
    merging) and skips any partial copy of them; `unmerged` then says where
    the copy belongs, for `finish_merge`. `end` limits reading to the first
    `end` bytes (what a fleet's workers resume from).
    """

    def __init__(self, path: str | os.PathLike[str], *, end: int | None = None) -> None:
        self.path = Path(path)
        self.end = end
        self.torn_tail = False
        self.bad_lines: list[int] = []
        self.unmerged: Unmerged | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loads = orjson.loads
        end = self.end
        skipping: str | None = None  # a fleet whose copy in this file is read from its parts
        expected: dict[str, list[str]] = {}  # fleets whose parts are gone: merged, they said
        try:
            with open(self.path, "rb") as handle:
                offset = 0
                for number, raw in enumerate(handle, 1):
                    offset += len(raw)
                    if end is not None and offset > end:
                        break
                    if not raw.endswith(b"\n"):
                        if raw.strip() and skipping is None:
                            self.torn_tail = True
                        continue
                    if skipping is not None:
                        if raw.startswith(MERGED_PREFIX):
                            marker = _loads_or_none(raw)
                            if marker is not None and marker.get("fleet") == skipping:
                                skipping = None
                        continue
                    try:
                        event = loads(raw)
                    except orjson.JSONDecodeError:
                        if raw.strip():
                            self.bad_lines.append(number)
                        continue
                    if not isinstance(event, dict):
                        self.bad_lines.append(number)
                        continue
                    if raw.startswith(WORKERS_PREFIX):
                        parts = parts_pending(self.path, event)
                        fleet = str(event.get("fleet"))
                        yield event
                        if parts:
                            # Not merged yet (or merged, not yet cleaned up): the parts
                            # are the record; a copy that follows here is skipped.
                            self.unmerged = Unmerged(offset, event, parts)
                            for part in parts:
                                read = LedgerRead(part)
                                yield from read
                                self.torn_tail = self.torn_tail or read.torn_tail
                            skipping = fleet
                        else:
                            expected[fleet] = [p.name for p in part_paths(self.path, event)]
                        continue
                    if raw.startswith(MERGED_PREFIX):
                        expected.pop(str(event.get("fleet")), None)
                    yield event
        except OSError as error:
            raise UsageError(f"{self.path}: cannot read the ledger: {error.strerror}") from None
        if expected and end is None:
            raise missing_parts(self.path, expected)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event as a list: for small ledgers and tests only."""
        return list(self)


# orjson keeps insertion order and every event starts with its kind: a prefix
# test finds the rare fleet records without decoding the common lines twice.
WORKERS_PREFIX = b'{"event":"workers"'
MERGED_PREFIX = b'{"event":"merged"'


def parts_pending(ledger: str | os.PathLike[str], record: Mapping[str, Any]) -> list[Path]:
    """The parts of a `workers` record that are still to be read instead of the ledger's
    copy (all of them exist: not merged, or merged but not yet removed), else []."""
    parts = part_paths(ledger, record)
    return parts if parts and all(part.exists() for part in parts) else []


def missing_parts(ledger: str | os.PathLike[str], expected: Mapping[str, list[str]]) -> UsageError:
    """The error for `workers` records whose parts are gone without a `merged` record."""
    missing = ", ".join(name for names in expected.values() for name in names)
    return UsageError(
        f"{ledger}: the worker ledgers {missing} are missing and were never merged "
        "into this ledger; restore them next to it"
    )


def _loads_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


@dataclass(frozen=True, slots=True)
class Unmerged:
    """A `workers` record whose parts are still separate files."""

    offset: int  # where the record ends in the ledger: the copy of the parts goes here
    record: dict[str, Any]
    parts: list[Path]


def part_paths(ledger: str | os.PathLike[str], record: Mapping[str, Any]) -> list[Path]:
    """The part files a `workers` record names (names relative to the ledger's folder)."""
    names = record.get("parts")
    if not isinstance(names, list):
        return []
    folder = Path(ledger).parent
    return [folder / Path(str(name)).name for name in names]


def part_name(ledger: str | os.PathLike[str], fleet: str, index: int) -> str:
    """The file name of worker `index`'s part of `ledger` (next to it)."""
    path = Path(ledger)
    return f"{path.stem}.{fleet[:8]}.w{index}{path.suffix or '.jsonl'}"


def open_fleet(ledger: str | os.PathLike[str], record: Mapping[str, Any]) -> Unmerged:
    """Create the (empty) part files, then append the `workers` record naming them.

    The parts exist before the record does, so a reader never finds the
    record with its parts missing unless they were merged (or lost).
    """
    path = Path(ledger)
    parts = part_paths(path, record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for part in parts:
            with open(part, "xb"):
                pass
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _write_all(fd, _line({"event": "workers", **record}))
            os.fsync(fd)
            offset = os.fstat(fd).st_size
        finally:
            os.close(fd)
    except OSError as error:
        raise LedgerFailed(f"{path}: cannot start the worker ledgers: {error.strerror}") from None
    return Unmerged(offset, {"event": "workers", **record}, parts)


def finish_merge(
    ledger: str | os.PathLike[str], pending: Unmerged, *, wait: float = 0.0
) -> list[int]:
    """Copy a fleet's parts into the ledger after its `workers` record, then delete them.

    Idempotent and crash-safe: the ledger is cut back to the record first
    (dropping any partial copy a crash left), every complete line of each part
    is appended, then the `merged` record; only once that is on disk are the
    parts removed. A part still locked by a live worker (one of a crashed
    parent, finishing its requests in flight) is waited for up to `wait`
    seconds, then refused. Returns where each part's copy starts in the ledger,
    then where the `merged` record does.
    """
    path = Path(ledger)
    locks: list[int] = []
    bounds: list[int] = []
    try:
        for part in pending.parts:
            fd = os.open(part, os.O_RDONLY)
            locks.append(fd)
            _lock_within(fd, part, wait)
        with open(path, "r+b") as out:
            out.truncate(pending.offset)
            out.seek(pending.offset)
            for fd in locks:
                bounds.append(out.tell())
                _copy_complete_lines(fd, out)
            bounds.append(out.tell())
            fleet = pending.record.get("fleet")
            out.write(_line({"event": "merged", "fleet": fleet, "t": time.time()}))
            out.flush()
            os.fsync(out.fileno())
        for part in pending.parts:
            part.unlink(missing_ok=True)
    except OSError as error:
        raise LedgerFailed(f"{path}: cannot merge the worker ledgers: {error.strerror}") from None
    finally:
        for fd in locks:
            os.close(fd)
    return bounds


def _lock_within(fd: int, part: Path, wait: float) -> None:
    give_up = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= give_up:
                raise UsageError(
                    f"{part}: a worker of the run is still writing it; "
                    "wait for it to exit (or stop it) and try again"
                ) from None
            time.sleep(0.1)


def lock_part(path: str | os.PathLike[str]) -> int:
    """Hold an exclusive lock on a worker's part for as long as the returned fd is open."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _copy_complete_lines(fd: int, out: BinaryIO) -> None:
    """Append `fd`'s bytes up to its last newline (a torn last line is dropped)."""
    os.lseek(fd, 0, os.SEEK_SET)
    carry = b""
    while chunk := os.read(fd, 1 << 20):
        cut = chunk.rfind(b"\n")
        if cut < 0:
            carry += chunk
            continue
        out.write(carry)
        out.write(chunk[: cut + 1])
        carry = chunk[cut + 1 :]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_ledger(path: str | os.PathLike[str], *, end: int | None = None) -> LedgerRead:
    """A streaming reader of the ledger at `path` (nothing is read until iterated)."""
    return LedgerRead(path, end=end)
