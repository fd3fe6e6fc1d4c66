"""Folding a large ledger file in parts, in parallel, by forked children.

The file is cut at line starts into parts. Each part after the first is
folded by a forked child into a History of its own, from nothing; this
process folds the first part meanwhile, then takes each child's result
in order. A job the child met first with its first intent (name and
all) is new there unless the states so far hold it; its state from the
child is then exactly what folding on here would give, and is merged
as is. Every other job of the part (a result or retry of a job sent
before it, say) is left out of the child's counts: the child hands back
its lines, folded here after the merge. Whenever that does not hold (a
job of the part is known here after all, the child failed or met an
odd verdict, a fleet record), the part is folded here, so the result is
always that of folding the file in one pass.

`usable_cpus` is the one definition of how many CPUs this process may use.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from launcher.ledger.folded import History, Source
from launcher.ledger.folder import Folder, part_of
from launcher.ledger.parts import FoldedPart, Tail
from launcher.ledger.read import LedgerInvalid, decode_lines, open_regular

__all__ = ["MAX_PARTS", "PART_BYTES", "fold_parallel", "fold_part", "part_bounds", "usable_cpus"]


class _Child:
    """A forked process folding a part; `result` waits for it."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd

    def result(self) -> FoldedPart | None:
        """Its fold, or None if it failed (then the part is folded here)."""
        with open(self.fd, "rb") as pipe:
            self.fd = -1
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        if status != 0 or not data:
            return None
        part = pickle.loads(data)  # our own child's bytes
        return part if isinstance(part, FoldedPart) else None

    def stop(self) -> None:
        """Kill it if it still runs (this process failed meanwhile), and reap it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0


def _fork(function: Callable[..., FoldedPart], *args: Any) -> _Child:
    """Run `function(*args)` in a forked child; its result comes back pickled through a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, write, and leave without any cleanup of the parent's
        code = 0
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps(function(*args), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:
                payload = pickle.dumps(None)
            with open(write_fd, "wb") as pipe:
                pipe.write(payload)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return _Child(pid, read_fd)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _announced_jobs(handle: BinaryIO, start: int) -> int:
    """The jobs the first lines from `start` announce (a `run` header, a `workers` record).

    Only a hint, to size tables: 0 when there is none.
    """
    handle.seek(start)
    for _ in range(4):
        line = handle.readline()
        try:
            events = decode_lines([line[:-1]], 1, "") if line.endswith(b"\n") else []
        except LedgerInvalid:  # the fold will say where
            events = []
        manifest = events[0].get("manifest") if events else None
        jobs = manifest.get("jobs") if isinstance(manifest, dict) else None
        if type(jobs) is int and jobs > 0:
            return jobs
    return 0


# A file is folded in parallel parts of at least this size, at most this many.
PART_BYTES = 32 << 20
MAX_PARTS = 8


def part_bounds(folder: Folder, handle: BinaryIO, start: int, size: int) -> list[int]:
    """Where the parts after the first start (line starts), or [] to fold in one pass."""
    if not folder.parallel_ok:
        return []
    parts = min(usable_cpus(), (size - start) // PART_BYTES, MAX_PARTS)
    if (
        parts < 2
        or folder.history.extras is not None
        or not sys.platform.startswith("linux")  # fork() with nothing to fear from it
        or threading.active_count() > 1  # ... in a process with one thread
    ):
        return []
    bounds: list[int] = []
    for n in range(1, parts):
        handle.seek(start + (size - start) * n // parts)
        handle.readline()  # to the start of the next line
        bound = handle.tell()
        if bound < size and (not bounds or bound > bounds[-1]):
            bounds.append(bound)
    return bounds


def fold_parallel(folder: Folder, handle: BinaryIO, ordinal: int, bounds: list[int]) -> Tail:
    """Fold the parts between `bounds` (the last to the end of the file), in parallel."""
    # The jobs the header announces, to size the tables: a child's for its share,
    # and this one's once they are forked (their copy need not hold it).
    hint = _announced_jobs(handle, bounds[0])
    share = hint // len(bounds) * 9 // 8  # a part's jobs, and some
    children = [
        _fork(fold_part, folder, ordinal, lo, hi, share)
        for lo, hi in zip(bounds[1:], [*bounds[2:], None], strict=True)
    ]
    folder.history._states.reserve(min(folder.history.declared_jobs + hint, 1 << 21))
    try:
        tail = folder.range(handle, ordinal, bounds[0], bounds[1])
        for child, lo, hi in zip(children, bounds[1:], [*bounds[2:], None], strict=True):
            result = child.result()
            if result is not None and folder.merge(ordinal, result):
                tail = result.tail
            else:  # fold it here, as in one pass
                tail = folder.range(handle, ordinal, lo, hi)
    finally:
        for child in children:
            child.stop()
    return tail


def fold_part(folder: Folder, ordinal: int, start: int, end: int | None, hint: int) -> FoldedPart:
    """In a child: fold the part from `start` to `end` (None: the end of the file)."""
    history = History()
    history.ledgers = list(folder.history.ledgers)
    history._sources = [Source(source.path) for source in folder.history._sources]
    history._states.reserve(min(hint, 1 << 21))
    child = Folder(history)
    child.path = folder.path
    child.orphans = []
    with open_regular(folder.path) as handle:
        tail = child.range(handle, ordinal, start, end)
    return part_of(child, tail, ordinal)
