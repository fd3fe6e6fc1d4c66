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

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio
import orjson

from launcher.errors import LedgerFailed, UsageError
from launcher.ledger.events import (
    CheckEvent,
    EndFields,
    InstanceEvent,
    IntentEvent,
    ResultEvent,
    RunFields,
    VerifyEvent,
)
from launcher.ledger.read import Unmerged, part_paths
from launcher.logs import get_logger
from launcher.models import Action, Conclusion, Job, Outcome, RecordedVerdict, Reply

__all__ = [
    "FsyncPolicy",
    "Ledger",
    "create_private",
    "default_ledger_path",
    "finish_merge",
    "lock_part",
    "open_fleet",
    "write_all",
]

FsyncPolicy = Literal["always", "batch", "never"]
log = get_logger("launcher.ledger")

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
        self._mirror: list[Mapping[str, Any]] | None = [] if mirror else None
        self.mirror_intact = mirror  # every event taken or to take was written in full
        self._intents_deferred = False  # see `defer_intents`
        self.bytes_written = 0
        self._fd = open_for_append(self.path)
        try:
            # A torn last line (a crash mid-write) would run into this run's first
            # line and leave a corrupt line in the middle: it goes, and is reported.
            self.torn_cut = _cut_torn_line(self._fd, self.path)
            info = os.fstat(self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self.start_size = info.st_size  # what the file held before this run
        self.identity = (info.st_dev, info.st_ino)  # the file written, should it be replaced
        self._closed = False

    # -- events ---------------------------------------------------------------

    def header(self, fields: RunFields) -> None:
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
        event: IntentEvent = {
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
        verdict: RecordedVerdict,
        outcome: Outcome | None,
    ) -> None:
        """Record what `attempt` got back; `outcome` is the job's final one, on its last attempt."""
        event: ResultEvent = {
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
        self._buffer(event)

    def check(
        self,
        job: Job,
        attempt: int,
        reply: Reply,
        state: str | None,
        conclusion: Conclusion,
        outcome: Outcome | None = None,
    ) -> None:
        """Record a status check made to settle an ambiguous attempt, and what it concluded."""
        event: CheckEvent = {
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
        self._buffer(event)

    def _buffer(self, event: ResultEvent | CheckEvent) -> None:
        """Buffer a result or check (and mirror it); write the group once it is full."""
        pending = self._pending
        pending.append(_line(event))
        if self._mirror is not None:
            self._mirror.append(event)
        if len(pending) >= _RESULTS_PER_WRITE:
            self.flush()

    def instance(self, job: Job, instance_id: int | str | None, status: str) -> None:
        """Record a followed run's new status (`--wait`; see `launcher.ledger.instances`)."""
        event: InstanceEvent = {
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
        event: VerifyEvent = {
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

    def footer(self, fields: EndFields) -> None:
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

    def take_events(self) -> list[Mapping[str, Any]]:
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


def create_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY) -> int:
    """A new file at `path`, opened with `flags`: created 0600 with `O_EXCL` (never one
    that exists) and `O_NOFOLLOW` (never through a symbolic link); `OSError` as `os.open`
    raises it. What the launcher writes names jobs, parameters and hosts: ledgers,
    worker parts, `.fold` snapshots and replay manifests are all made here.
    """
    flags |= os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o600)


def open_for_append(path: Path) -> int:
    """A ledger (or part) opened to append: created 0600 if new (`O_EXCL`), never
    through a symbolic link, and only if it is a regular file (else `UsageError`).

    `/dev/null`, a FIFO or a device would swallow the record of what is sent:
    refused before anything is.
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC  # read: its last line
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = create_private(path, flags)
        except FileExistsError:
            fd = os.open(path, flags | os.O_NONBLOCK)  # a FIFO: ENXIO, not a wait
    except OSError as error:
        reason = error.strerror
        if error.errno == errno.ELOOP:
            reason = "it is a symbolic link (give the file it points to)"
        elif error.errno == errno.ENXIO:
            reason = "it is not a regular file"
        raise UsageError(f"{path}: cannot open the ledger: {reason}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{path}: not a regular file; a ledger must be one")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _cut_torn_line(fd: int, path: Path) -> int:
    """Cut a last line without its newline from the file; how many bytes were cut."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    end = size
    while end > 0:  # back to the last newline, a block at a time
        start = max(0, end - (1 << 16))
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    try:
        os.ftruncate(fd, end)
    except OSError as error:
        raise UsageError(f"{path}: cannot cut its torn last line: {error.strerror}") from None
    log.warning(
        "ledger: cut a torn last line (an interrupted write) before appending",
        ledger=str(path),
        bytes=size - end,
    )
    return size - end


def _line(event: Mapping[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


def open_fleet(ledger: str | os.PathLike[str], record: Mapping[str, Any]) -> Unmerged:
    """Create the (empty) part files, then append the `workers` record naming them.

    The parts exist before the record does, so a reader never finds the
    record with its parts missing unless they were merged (or lost).
    """
    path = Path(ledger)
    parts = part_paths(path, record)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for part in parts:  # new files only, 0600, never through a link
            os.close(create_private(part))
        fd = open_for_append(path)
        try:
            write_all(fd, _line({"event": "workers", **record}))
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
    parts removed. Only a partial copy is ever cut: if what follows the record
    is anything else, nothing is changed (`UsageError`); if it is the whole
    copy and its `merged` record (a crash before the parts were removed), the
    parts are only removed. A part still locked by a live worker (one of a crashed
    parent, finishing its requests in flight) is waited for up to `wait`
    seconds, then refused. Returns where each part's copy starts in the ledger,
    then where the `merged` record does.
    """
    path = Path(ledger)
    locks: list[int] = []
    bounds: list[int] = []
    try:
        for part in pending.parts:
            fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            locks.append(fd)
            _lock_within(fd, part, wait)
        with open(path, "r+b") as out:
            copied = _copied(path, out.fileno(), pending, locks)
            if copied is not None:  # merged already: only the parts are left to remove
                for part in pending.parts:
                    part.unlink(missing_ok=True)
                return copied
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


def _copied(
    ledger_path: Path, ledger: int, pending: Unmerged, parts: list[int]
) -> list[int] | None:
    """Check what follows the `workers` record in the ledger: nothing, or part of the
    parts' copy (None: cut it and copy again), or the whole copy and its `merged`
    record (its bounds); anything else is not the launcher's to cut (`UsageError`)."""
    offset = pending.offset
    after = os.fstat(ledger).st_size - offset
    if after <= 0:
        return None
    position = offset
    bounds: list[int] = []
    for fd in parts:
        bounds.append(position)
        for piece in _complete_lines(fd):
            have = os.pread(ledger, len(piece), position)
            if not piece.startswith(have):
                raise _not_a_copy(ledger_path, pending)
            position += len(have)
            if len(have) < len(piece):
                return None  # a partial copy, up to the end of the file
    bounds.append(position)
    rest = os.pread(ledger, 1 << 16, position)
    if not rest:
        return None  # the whole copy, but no `merged` record yet
    merged, newline, more = rest.partition(b"\n")
    try:
        record = orjson.loads(merged) if newline and not more else None
    except orjson.JSONDecodeError:
        record = None
    if (
        isinstance(record, dict)
        and record.get("event") == "merged"
        and record.get("fleet") == pending.record.get("fleet")
    ):
        return bounds
    raise _not_a_copy(ledger_path, pending)


def _not_a_copy(path: Path, pending: Unmerged) -> UsageError:
    return UsageError(
        f"{path}: its workers record (ending at byte {pending.offset}) is followed by lines "
        "that are not a copy of the worker ledgers it names; nothing was cut, copied or removed"
    )


def _complete_lines(fd: int) -> Iterator[bytes]:
    """`fd`'s bytes up to its last newline (a torn last line is left out), in chunks."""
    os.lseek(fd, 0, os.SEEK_SET)
    carry = b""
    while chunk := os.read(fd, 1 << 20):
        cut = chunk.rfind(b"\n")
        if cut < 0:
            carry += chunk
            continue
        yield carry + chunk[: cut + 1]
        carry = chunk[cut + 1 :]


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
    for piece in _complete_lines(fd):
        out.write(piece)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (`os.write` may take less at a time); OSError as it raises."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
