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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from launcher.errors import UsageError

__all__ = [
    "FLEET_EVENTS",
    "LedgerRead",
    "Unmerged",
    "decode_lines",
    "missing_parts",
    "part_name",
    "part_paths",
    "parts_pending",
    "read_ledger",
]

# The records of a run with worker processes (see `LedgerRead`).
FLEET_EVENTS = frozenset({"workers", "merged"})


def decode_lines(lines: Sequence[bytes], first: int, bad: list[int]) -> list[dict[str, Any]]:
    """The events of complete ledger lines (without their newline), numbered from `first`.

    A blank line is skipped; so is a line that is not a JSON object, whose
    number is added to `bad`.
    """
    loads = orjson.loads
    try:  # the common case, at C speed: every line an object
        events = list(map(loads, lines))
        if set(map(type, events)) <= {dict}:
            return events
    except orjson.JSONDecodeError:
        pass
    events = []
    for number, line in enumerate(lines, first):
        try:
            event = loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                bad.append(number)
            continue
        if type(event) is not dict:
            bad.append(number)
            continue
        events.append(event)
    return events


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
                    if skipping is not None:  # a partial copy may hold anything: not decoded
                        if raw.startswith(b'{"event":"merged"'):
                            marker = decode_lines([raw[:-1]], number, [])
                            if marker and marker[0].get("fleet") == skipping:
                                skipping = None
                        continue
                    decoded = decode_lines([raw[:-1]], number, self.bad_lines)
                    if not decoded:
                        continue
                    event = decoded[0]
                    kind = event.get("event")
                    if kind == "workers":
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
                    if kind == "merged":
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
