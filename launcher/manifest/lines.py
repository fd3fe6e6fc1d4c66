"""A manifest's bytes: read in fixed-size chunks, hashed on the way, split into lines.

The first stage of every scan: JSONL and CSV read the lines, YAML the chunks.
Memory stays one chunk plus one line, and a line is capped at `MAX_LINE_BYTES`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import islice
from pathlib import Path
from typing import IO, Final, Protocol

from launcher.errors import ManifestChanged, UsageError
from launcher.manifest.records import Problem

__all__ = [
    "MAX_LINE_BYTES",
    "_BOM",
    "_Digests",
    "_Hasher",
    "_Verifier",
    "_chunks",
    "_open",
    "_raw_lines",
    "_too_long",
    "_utf8_problem",
    "open_regular",
    "stdin_spooled",
]

# Longer lines are reported, not parsed, so that one runaway line (a binary file,
# a missing newline) cannot make the reader hold unbounded memory.
MAX_LINE_BYTES: Final = 16 << 20

_CHUNK: Final = 1 << 20
_BOM: Final = b"\xef\xbb\xbf"


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


class _Digests:
    """The file's SHA-256, and one SHA-256 per chunk: what `_Verifier` compares a re-read to.

    32 bytes a MiB (32 KiB for a GiB manifest), for ~0.6 ms of CPU a MiB.
    """

    __slots__ = ("chunks", "whole")

    def __init__(self) -> None:
        self.whole = hashlib.sha256()
        self.chunks: list[bytes] = []

    def update(self, data: bytes, /) -> None:
        self.whole.update(data)
        self.chunks.append(_sha256(data).digest())


class _Verifier:
    """Checks each chunk of a re-read against the digests of the validated read.

    `update` raises `ManifestChanged` for a chunk that differs, before the
    reader splits it into lines: no job from changed bytes is ever yielded.
    `end` raises it when the file grew or shrank.
    """

    __slots__ = ("_chunks", "_index", "_path")

    def __init__(self, path: str, chunks: Sequence[bytes]) -> None:
        self._path = path
        self._chunks = chunks
        self._index = 0

    def update(self, data: bytes, /) -> None:
        index = self._index
        chunks = self._chunks
        if index >= len(chunks) or _sha256(data).digest() != chunks[index]:
            self._changed(index * _CHUNK)
        self._index = index + 1

    def end(self) -> None:
        if self._index != len(self._chunks):
            self._changed(self._index * _CHUNK)

    def _changed(self, offset: int) -> None:
        raise ManifestChanged(
            f"{self._path}: the manifest changed while it was being sent (its bytes from "
            f"offset {offset} differ from the ones validated); no job from the changed part "
            "was sent. Put the validated file back and resume with --resume (or check "
            "the new one and resume with --force)"
        )


_sha256 = hashlib.sha256


def _open(path: str | Path) -> IO[bytes]:
    return open_regular(path, "manifest", hint="; give - to read the manifest from stdin")


def open_regular(path: str | os.PathLike[str], what: str, *, hint: str = "") -> IO[bytes]:
    """Open a regular file for reading, or raise `UsageError` (exit 2) saying why not.

    A FIFO, a device (`/dev/zero`, `/dev/urandom`, a terminal), a socket or a
    directory is refused: reading one may never end. The open itself does not
    block (O_NONBLOCK: a FIFO without a writer would wait forever), and the
    check is on the descriptor opened, so nothing can be swapped in between.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{path}: cannot read: Is a directory")
        if not stat.S_ISREG(mode):
            raise UsageError(
                f"{path}: not a regular file ({_file_kind(mode)}): a {what} must be a regular "
                f"file{hint}"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")  # the caller closes it
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


@contextmanager
def stdin_spooled(path: str) -> Iterator[str]:
    """`path`, or for ``-`` a private copy of stdin (0600, removed on exit).

    The manifest is read from stdin whole, into a file only this user can read,
    before it is validated: validation, the send pass and every worker then
    read the same regular file, and nothing is sent before the whole input
    has been checked.
    """
    if path != "-":
        yield path
        return
    if sys.stdin.isatty():
        raise UsageError("-: the manifest is read from stdin, but stdin is a terminal; pipe it in")
    fd, spool = tempfile.mkstemp(prefix="launcher-stdin-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_capped(sys.stdin.buffer, out)
        yield spool
    finally:
        with suppress(FileNotFoundError):
            os.unlink(spool)


# Stdin is copied to disk before it is checked: a runaway producer (`cat
# /dev/urandom |`) must not fill the disk. A larger manifest can be a file.
MAX_STDIN_BYTES: Final = 1 << 30


def _copy_capped(source: IO[bytes], out: IO[bytes]) -> None:
    copied = 0
    while chunk := source.read(_CHUNK):
        copied += len(chunk)
        if copied > MAX_STDIN_BYTES:
            raise UsageError(
                f"-: stdin holds more than {MAX_STDIN_BYTES >> 30} GiB; give a manifest "
                "this large as a file"
            )
        out.write(chunk)


def _chunks(f: IO[bytes], path: str, hasher: _Hasher | None) -> Iterator[bytes]:
    """The file in fixed-size chunks, each fed to `hasher` on the way."""
    while True:
        try:
            chunk = f.read(_CHUNK)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        if not chunk:
            if isinstance(hasher, _Verifier):
                hasher.end()  # a file that got longer or shorter
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
