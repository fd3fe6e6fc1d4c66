"""Reading a ledger: the one line decoder, and `LedgerRead`, which streams a ledger's events.

`decode_lines` turns complete lines (without their newline) into events; the
fold (`launcher.ledger.folder`) calls it a chunk at a time, `LedgerRead` a
line at a time, so both agree on what a bad line is and on which events are a
fleet's `workers` and `merged` records. A run with worker processes names its
parts (the launcher's own sibling files, see `part_name`) in a `workers`
record; `part_paths`, `parts_pending` and `missing_parts` are how either reader
follows them.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from launcher.errors import UsageError
from launcher.ledger.check import part_name, problem

__all__ = [
    "FLEET_EVENTS",
    "MAX_LINE_BYTES",
    "LedgerInvalid",
    "LedgerRead",
    "Unmerged",
    "decode_lines",
    "missing_parts",
    "part_name",
    "part_paths",
    "parts_pending",
    "read_ledger",
]

# How many of the events it yielded last a `LedgerRead` can place (file and line).
POSITIONS = 1024
# The records of a run with worker processes (see `LedgerRead`).
FLEET_EVENTS = frozenset({"workers", "merged"})
# The longest line a ledger may hold: an intent carries a manifest line (at most
# 16 MiB) and its escaping. A longer line is refused, not read on and on.
MAX_LINE_BYTES = 40 << 20


class LedgerInvalid(UsageError):
    """A ledger line that is not a valid event: `FILE:LINE: problem` (exit 2)."""


def decode_lines(
    lines: Sequence[bytes], first: int, path: str | os.PathLike[str]
) -> list[dict[str, Any]]:
    """The events of complete lines of the ledger `path` (without their newline, numbered
    from `first`): one JSON object each, else `LedgerInvalid`, naming the file and line.

    A blank line is refused too: the launcher never writes one. Only a torn
    last line, which has no newline, is not for this function: readers
    tolerate it. What the events hold is checked as they are folded, where
    each field is used (see `launcher.ledger.check`).
    """
    loads = orjson.loads
    try:  # the common case, at C speed: every line an object
        events = list(map(loads, lines))
    except orjson.JSONDecodeError:
        pass
    else:
        if set(map(type, events)) <= _DICT:
            return events
    for number, line in enumerate(lines, first):
        if len(line) > MAX_LINE_BYTES:
            raise LedgerInvalid(f"{path}:{number}: a line over {MAX_LINE_BYTES} bytes")
        try:
            event = loads(line)
        except orjson.JSONDecodeError as error:
            found = "an empty line" if not line.strip() else f"not JSON ({error})"
            raise LedgerInvalid(f"{path}:{number}: {found}") from None
        if type(event) is not dict:
            raise LedgerInvalid(f"{path}:{number}: not a JSON object")
    raise AssertionError("unreachable: a line failed to decode, then decoded")


_DICT = frozenset({dict})


class LedgerRead:
    """A ledger's events, streamed: iterate it once (memory stays flat at any size).

    Works on a ledger that a running launcher is still appending to: a last
    line without its newline is treated as not yet written. After iteration,
    `torn_tail` says whether such a line was skipped (a crash mid-write, or a
    write in progress). Any other line that is not a valid event is refused
    (`LedgerInvalid`, exit 2): a ledger is data, and a corrupt line in the
    middle of one is not skipped silently. `bad_lines` stays empty (kept for
    callers that read it).

    A run with several worker processes (`--workers`) writes a `workers`
    record naming one part file per worker, and when they are done copies the
    parts into the ledger and writes a `merged` record. Reading follows the
    parts while they exist (a run in progress, or one that crashed before
    merging) and skips any partial copy of them; `unmerged` then says where
    the copy belongs, for `finish_merge`. A record may name only the
    launcher's own parts (`part_name`), each a regular file whose header is
    that fleet's worker's (see `parts_pending`). `end` limits reading to the
    first `end` bytes (what a fleet's workers resume from).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        end: int | None = None,
        part: bool = False,
        positions: deque[tuple[Path, int]] | None = None,
    ) -> None:
        self.path = Path(path)
        # Where the events yielded last come from (file, line): for the fold's errors.
        self.positions = deque(maxlen=POSITIONS) if positions is None else positions
        self.end = end
        self.part = part  # a worker's part: it may not name parts itself
        self.torn_tail = False
        self.bad_lines: list[int] = []
        self.unmerged: Unmerged | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        end = self.end
        skipping: str | None = None  # a fleet whose copy in this file is read from its parts
        expected: dict[str, list[str]] = {}  # fleets whose parts are gone: merged, they said
        with open_regular(self.path) as handle:
            offset = 0
            number = 0
            while raw := handle.readline(MAX_LINE_BYTES + 2):
                number += 1
                offset += len(raw)
                if end is not None and offset > end:
                    break
                if len(raw) > MAX_LINE_BYTES + raw.endswith(b"\n"):
                    raise LedgerInvalid(f"{self.path}:{number}: a line over {MAX_LINE_BYTES} bytes")
                if not raw.endswith(b"\n"):
                    if raw.strip() and skipping is None:
                        self.torn_tail = True
                    continue
                if skipping is not None:  # a partial copy may hold anything: not decoded
                    if raw.startswith(b'{"event":"merged"'):
                        try:
                            marker = decode_lines([raw[:-1]], number, self.path)
                        except LedgerInvalid:
                            continue
                        if marker and marker[0].get("fleet") == skipping:
                            skipping = None
                    continue
                event = decode_lines([raw[:-1]], number, self.path)[0]
                self.positions.append((self.path, number))
                kind = event.get("event")
                if kind in FLEET_EVENTS:
                    found = problem(event, None if self.part else self.path)
                    if found is not None:
                        raise LedgerInvalid(f"{self.path}:{number}: {found}")
                if kind == "workers":
                    parts = parts_pending(self.path, event)
                    fleet = event["fleet"]
                    yield event
                    if parts:
                        # Not merged yet (or merged, not yet cleaned up): the parts
                        # are the record; a copy that follows here is skipped.
                        self.unmerged = Unmerged(offset, event, parts)
                        for part in parts:
                            read = LedgerRead(part, part=True, positions=self.positions)
                            yield from read
                            self.torn_tail = self.torn_tail or read.torn_tail
                        skipping = fleet
                    else:
                        expected[fleet] = [p.name for p in part_paths(self.path, event)]
                    continue
                if kind == "merged":
                    expected.pop(event["fleet"], None)
                yield event
        if expected and end is None:
            raise missing_parts(self.path, expected)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event as a list: for small ledgers and tests only."""
        return list(self)


def open_regular(path: str | os.PathLike[str], *, follow: bool = True) -> BinaryIO:
    """`path` opened to read, if it is a regular file; else `UsageError` (exit 2).

    A FIFO, a device (`/dev/zero`) or a directory is refused at once: opening
    does not wait for a FIFO's writer, reading never starts. With `follow`
    False, a symbolic link is refused too.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise UsageError(f"{path}: cannot read the ledger: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{path}: not a regular file; a ledger is a file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_ledger(path: str | os.PathLike[str], *, end: int | None = None) -> LedgerRead:
    """A streaming reader of the ledger at `path` (nothing is read until iterated)."""
    return LedgerRead(path, end=end)


@dataclass(frozen=True, slots=True)
class Unmerged:
    """A `workers` record whose parts are still separate files."""

    offset: int  # where the record ends in the ledger: the copy of the parts goes here
    record: dict[str, Any]
    parts: list[Path]


def parts_pending(ledger: str | os.PathLike[str], record: Mapping[str, Any]) -> list[Path]:
    """The parts of a `workers` record that are still to be read instead of the ledger's
    copy (all of them exist: not merged, or merged but not yet removed), else [].

    Each must be a regular file (not a link) whose first line, if it has one,
    is the header of that fleet's worker; else `LedgerInvalid`, and nothing
    is read, copied or removed.
    """
    parts = part_paths(ledger, record)
    if not parts or not all(part.exists() or part.is_symlink() for part in parts):
        return []
    fleet, count = record.get("fleet"), len(parts)
    for index, part in enumerate(parts):
        with open_regular(part, follow=False) as handle:
            first = handle.readline(MAX_LINE_BYTES + 1)
        if not first.endswith(b"\n"):
            continue  # empty, or its header not written yet: nothing to follow but that
        header = decode_lines([first[:-1]], 1, part)
        if (
            header[0].get("event") != "run"
            or header[0].get("fleet") != fleet
            or header[0].get("worker") != f"{index}/{count}"
        ):
            raise LedgerInvalid(
                f"{ledger}: its workers record names {part.name}, which is not the part "
                f"of worker {index}/{count} of fleet {fleet}; nothing was read or changed"
            )
    return parts


def missing_parts(ledger: str | os.PathLike[str], expected: Mapping[str, list[str]]) -> UsageError:
    """The error for `workers` records whose parts are gone without a `merged` record."""
    missing = ", ".join(name for names in expected.values() for name in names)
    return UsageError(
        f"{ledger}: the worker ledgers {missing} are missing and were never merged "
        "into this ledger; restore them next to it"
    )


def part_paths(ledger: str | os.PathLike[str], record: Mapping[str, Any]) -> list[Path]:
    """The part files a `workers` record names: the launcher's own, next to the ledger.

    Their names are those `part_name` gives (`decode_lines` refuses any
    other record), so they are made from the ledger's name here, never taken
    from the record.
    """
    names = record.get("parts")
    fleet = record.get("fleet")
    if not isinstance(names, list) or not isinstance(fleet, str):
        return []
    folder = Path(ledger).parent
    return [folder / part_name(ledger, fleet, index) for index in range(len(names))]
