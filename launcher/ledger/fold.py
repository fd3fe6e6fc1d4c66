"""`fold` and `catch_up`: one pass over ledgers' events, into a `History`.

How a ledger is read: the fold reads a `LedgerRead`'s file itself, a
megabyte at a time, with exactly the semantics of iterating it (torn tail,
bad lines refused, `end`, worker parts), and keeps where it stopped: `catch_up` then
folds only what a ledger gained since, which is how a resumed run summarizes
its ledger without reading it twice. A file of at least two 32 MB parts, on a
machine with more than one CPU, may be folded in parts by forked children
(`fold(..., parallel=True)`, as a resume does, see `launcher.ledger.parallel`),
with the result of one pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from launcher.errors import UsageError
from launcher.ledger.folded import History, Source, extends
from launcher.ledger.folder import CountedOnly, Folder, PartsUnmerged
from launcher.ledger.parallel import fold_parallel, part_bounds
from launcher.ledger.read import LedgerRead, open_regular

__all__ = ["catch_up", "fold", "fold_file"]


def fold(
    reads: Iterable[LedgerRead], *, keep: frozenset[str] = frozenset(), parallel: bool = False
) -> History:
    """Fold one or more ledgers (several: shards of one run) into a `History`.

    `keep` may hold `descriptions` (each job's first intent, for replay) and
    `details` (each job's latest result, for per-job report rows). With
    `parallel`, a large file is folded in parts by forked processes when
    there are CPUs for them (see `Folder.parallel`): the same result, sooner,
    for more resident memory while it runs (each child's, its copy of this
    process' pages included).

    A `LedgerRead` is read here, a chunk at a time, exactly as iterating it
    reads it (torn tail, bad lines refused, `end`, merged or missing worker parts),
    and the fold remembers where it stopped in each ledger, for `catch_up`.
    Only a run whose worker parts are still separate files is left to
    `LedgerRead`, which follows them. Any other iterable of events is folded
    as it comes.
    """
    reads = list(reads)
    history = History(keep=keep)
    folder = Folder(history, parallel=parallel)
    try:
        for read in reads:
            _read(folder, read, direct=True)
    except PartsUnmerged:
        history = History(keep=keep)
        folder = Folder(history)
        for read in reads:
            if type(read) is LedgerRead:
                read.torn_tail = False  # as new: read again
            _read(folder, read, direct=False)
    return history


def catch_up(history: History) -> History:
    """`history` with what its ledgers gained since they were folded (a new segment, say).

    Only the bytes appended since are read (from the start of a torn last
    line, if the fold met one), as more of the same ledgers, so the result is
    what `fold` of the ledgers gives now. When a ledger is not the file folded
    plus appended lines (it shrank or was replaced, was read up to an `end`
    or by `LedgerRead`), every ledger is folded again. Use the history
    returned: `history` itself, updated, or a new one.
    """
    sources = history._sources
    if sources and all(extends(source) for source in sources):
        folder = Folder(history)
        try:
            for ordinal, source in enumerate(sources):
                fold_file(folder, source, ordinal, None)
        except (PartsUnmerged, CountedOnly):
            pass  # worker parts appeared, or jobs that `history` cannot keep: fold anew
        else:
            history.torn_tail = [source.path for source in sources if source.torn]
            return history
    return fold([LedgerRead(source.path) for source in sources], keep=history._keep)


def _read(folder: Folder, read: LedgerRead, *, direct: bool) -> None:
    """Fold one more ledger (`direct`: read a `LedgerRead`'s file here, not through it)."""
    history = folder.history
    ordinal = len(history._sources)
    source = Source(str(read.path))
    history._sources.append(source)
    history.ledgers.append(source.path)
    if direct and type(read) is LedgerRead:
        end = getattr(read, "end", None)
        fold_file(folder, source, ordinal, end)
        read.torn_tail = source.torn
        if end is not None:
            source.offset = -1  # not all of it was read: `catch_up` starts again
    else:
        folder.events(read, ordinal, lines=False)
        source.torn = bool(read.torn_tail)
    if source.torn:
        history.torn_tail.append(source.path)


def fold_file(folder: Folder, source: Source, ordinal: int, end: int | None) -> None:
    """Fold a ledger file from `source.offset` on (0 if new), as `LedgerRead` reads it.

    Only the first `end` bytes, if given; updates `source` to where it
    stopped. Raises `PartsUnmerged` at a `workers` record whose parts all exist.
    A large file is folded in parts, in parallel (see `launcher.ledger.parallel`).
    """
    path = folder.path = Path(source.path)
    start = max(source.offset, 0)
    folder.number = source.lines
    folder.expected = {}
    try:
        with open_regular(path) as handle:
            info = os.fstat(handle.fileno())
            bounds = part_bounds(folder, handle, start, info.st_size) if end is None else []
            if bounds:
                tail = fold_parallel(folder, handle, ordinal, [start, *bounds])
            else:
                tail = folder.range(handle, ordinal, start, end)
    except OSError as error:
        raise UsageError(f"{path}: cannot read the ledger: {error.strerror}") from None
    folder.finish(source, tail, info, end)
