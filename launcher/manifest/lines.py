"""A manifest's bytes: read in fixed-size chunks, hashed on the way, split into lines.

The first stage of every scan: JSONL and CSV read the lines, YAML the chunks.
Memory stays one chunk plus one line, and a line is capped at `MAX_LINE_BYTES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Final, Protocol

from launcher.errors import UsageError
from launcher.manifest.records import Problem

__all__ = [
    "MAX_LINE_BYTES",
    "_BOM",
    "_Hasher",
    "_chunks",
    "_open",
    "_raw_lines",
    "_too_long",
    "_utf8_problem",
]

# Longer lines are reported, not parsed, so that one runaway line (a binary file,
# a missing newline) cannot make the reader hold unbounded memory.
MAX_LINE_BYTES: Final = 16 << 20

_CHUNK: Final = 1 << 20
_BOM: Final = b"\xef\xbb\xbf"


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _open(path: str | Path) -> IO[bytes]:
    try:
        return open(path, "rb")  # the caller closes it
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _chunks(f: IO[bytes], path: str, hasher: _Hasher | None) -> Iterator[bytes]:
    """The file in fixed-size chunks, each fed to `hasher` on the way."""
    while True:
        try:
            chunk = f.read(_CHUNK)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        if not chunk:
            return
        if hasher is not None:
            hasher.update(chunk)
        yield chunk


def _raw_lines(f: IO[bytes], path: str, hasher: _Hasher | None) -> Iterator[bytes | None]:
    """The file's lines without their b"\\n", or None for a line over MAX_LINE_BYTES.

    Reads fixed-size chunks (hashing each) and splits them itself: faster than
    iterating the file object, and memory stays one chunk plus one line.
    """
    tail = b""
    overlong = False
    for chunk in _chunks(f, path, hasher):
        parts = chunk.split(b"\n")
        rest = parts.pop()
        if parts:
            if overlong:
                overlong = False
                yield None
            else:
                head = tail + parts[0] if tail else parts[0]
                yield head if len(head) <= MAX_LINE_BYTES else None
            yield from islice(parts, 1, None)
            tail = rest
        elif not overlong:
            tail += rest
        if len(tail) > MAX_LINE_BYTES:
            overlong = True
            tail = b""
    if overlong:
        yield None
    elif tail:
        yield tail


def _utf8_problem(path: str, line: int, raw: bytes, exc: UnicodeDecodeError) -> Problem:
    return Problem(
        path,
        line,
        "line",
        f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
    )


def _too_long(path: str, line: int) -> Problem:
    return Problem(path, line, "line", f"longer than {MAX_LINE_BYTES} bytes; not read")
