"""`LiveFold`: the fold of a ledger a run is writing, from the events it writes.

Reading back what a run wrote, for its summary, cost as much again as the
fold itself; a run folds its writer's own event mappings instead, as it goes,
and falls back to folding the file if the file is not exactly what it wrote.
"""

from __future__ import annotations

import os

from launcher.ledger.fold import fold
from launcher.ledger.folded import History, Source
from launcher.ledger.folder import Folder, part_of
from launcher.ledger.parts import CountedPart, FoldedPart, Tail, totals_of
from launcher.ledger.read import LedgerRead
from launcher.ledger.writer import Ledger

__all__ = ["LiveFold"]


class LiveFold:
    """The fold of a new ledger, made from the events its `Ledger` writes, not read back.

    Reading back what a run wrote, for its summary, cost as much again as the
    fold itself: ~5 µs a job of JSON decoding, on one core, after the last
    answer. The writer's own event mappings (`Ledger(mirror=True)`) fold the
    same way for half that, during the run: `take` folds what was written
    since the last call. `history` gives the result, which is what `fold` of
    the file gives, once it has checked that the file is the ledger's and
    holds exactly what it wrote (else it folds the file, as before). Only for
    a ledger that was empty when opened: earlier content was never mirrored.
    """

    def __init__(self, ledger: Ledger, jobs: int) -> None:
        """Fold what `ledger` (made with `mirror=True`) writes about some `jobs` jobs."""
        if not ledger.mirror_intact:
            raise ValueError("LiveFold needs a Ledger made with mirror=True")
        self.ledger = ledger
        self._history = History()
        self._source = Source(str(ledger.path))
        self._history._sources.append(self._source)
        self._history.ledgers.append(self._source.path)
        self._folder = Folder(self._history)
        # Sized for the jobs this writer sends, not the run's whole count its header
        # gives: a fleet worker sends a share, and each worker's table is resident.
        self._history._states.reserve(min(jobs, 1 << 21))
        self._folder.sized_by_headers = False

    def take(self) -> None:
        """Fold the events the ledger recorded since the last call."""
        events = self.ledger.take_events()
        if events:
            self._folder.events(events, 0, lines=False)
            self._folder.number += len(events)  # one line each

    def history(self) -> History:
        """The ledger's fold, once its `Ledger` is closed: as `fold` of the file would give."""
        end = self._written_tail()
        if end is None:
            return fold([LedgerRead(self._source.path)])
        source = self._source
        source.offset, source.lines, source.tail, source.identity = end
        return self._history

    def part(self) -> FoldedPart | None:
        """For a fleet's parent, once the `Ledger` (a worker's part) is closed: the fold,
        in the form `fold_fleet` merges; None if the file is not exactly what was written."""
        end = self._written_tail()
        if end is None:
            return None
        written, _, tail, _ = end
        return part_of(self._folder, Tail(written, b"", True, tail[:-1]), 0)

    def counts(self) -> CountedPart | None:
        """For a fleet's parent, once the `Ledger` (a worker's part) is closed: the fold
        as counts (see `CountedPart`); None if the file is not exactly what was written."""
        end = self._written_tail()
        if end is None:
            return None
        history = self._history
        counts = list(history.state_counts().items())
        return CountedPart(size=end[0], lines=end[1], counts=counts, **totals_of(history, 0))

    def _written_tail(self) -> tuple[int, int, bytes, tuple[int, int]] | None:
        """(bytes, lines, last bytes, file identity) of the ledger, if it is exactly what
        was written and folded here; else None."""
        ledger = self.ledger
        self.take()
        written = ledger.bytes_written
        try:
            with open(self._source.path, "rb") as handle:
                info = os.fstat(handle.fileno())
                handle.seek(max(0, written - 64))
                tail = handle.read(64)
        except OSError:
            return None
        identity = (info.st_dev, info.st_ino)
        if (
            ledger.mirror_intact
            and ledger.start_size == 0
            and identity == ledger.identity
            and info.st_size == written
            and tail.endswith(b"\n")
        ):
            return written, self._folder.number, tail, identity
        return None
