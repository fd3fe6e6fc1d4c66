"""`fold_fleet`: the fold of a fleet's merged ledger, from its workers' folds of their parts."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

from launcher.errors import UsageError
from launcher.ledger.folded import History, Source
from launcher.ledger.folder import Folder
from launcher.ledger.parts import CountedPart, FoldedPart
from launcher.ledger.read import open_regular

__all__ = ["fold_fleet"]


def fold_fleet(
    path: str,
    bounds: Sequence[int],
    parts: Sequence[FoldedPart | CountedPart | None],
    *,
    disjoint: bool = False,
) -> History:
    """The fold of a fleet's merged ledger, taking its workers' folds of their parts.

    `bounds` (from `finish_merge`) are where each part's copy starts in the
    ledger, then where the `merged` record starts; `parts[i]` is worker i's
    fold of its part, or None (or absent): a part whose fold is missing or
    does not fit (its size is not its copy's) is folded from the file.

    - A `FoldedPart` (`LiveFold.part()`, made in this process: its keys are
      this process's string hashes) is merged as `fold(parallel=True)` merges
      a forked child's, unless one of its jobs was met before it.
    - A `CountedPart` (`LiveFold.counts()`, from any process) is merged as
      counts, only when `disjoint` says that no job is in two parts (a new
      run of a manifest validated without duplicates or given ids) and the
      ledger held no job before the parts. The fold then counts those jobs
      without keeping them (`History.counted_only`).

    Either way the summary is that of folding the file in one pass.
    """
    history = History()
    folder = Folder(history)
    source = Source(path)
    history._sources.append(source)
    history.ledgers.append(path)
    folder.path = Path(path)
    folder.disjoint = disjoint
    # The table holds only the jobs merged or read: counted parts' jobs are not in it.
    folder.sized_by_headers = False
    try:
        with open_regular(path) as handle:
            info = os.fstat(handle.fileno())
            folder.range(handle, 0, 0, bounds[0])
            counts_fit = disjoint and history.job_count == 0
            for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
                part = parts[n] if n < len(parts) else None
                if isinstance(part, FoldedPart):
                    merged = part.tail.position == hi - lo and folder.merge(0, part)
                else:
                    merged = (
                        part is not None
                        and counts_fit
                        and part.size == hi - lo
                        and folder.merge_counts(0, part)
                    )
                if not merged:
                    folder.range(handle, 0, lo, hi)
            tail = folder.range(handle, 0, bounds[-1], None)  # the `merged` record, and on
    except OSError as error:
        raise UsageError(f"{path}: cannot read the ledger: {error.strerror}") from None
    folder.finish(source, tail, info, None)
    if source.torn:
        history.torn_tail.append(path)
    return history
