"""Parts of a ledger folded elsewhere, in the form the fold merges (`Folder.merge`).

A `FoldedPart` is a fold of part of a file by a forked child of this process
(`launcher.ledger.parallel`) or a fleet worker's `LiveFold` in this process:
its keys are this process's string hashes. A `CountedPart` is counts only,
as JSON, from any process (see `launcher.ledger.fleet_fold`). Both carry the
fold's totals (`Totals`).
"""

from __future__ import annotations

import base64
import math
import zlib
from array import array
from dataclasses import dataclass
from typing import Any

import orjson

from launcher.ledger.folded import History

__all__ = ["CountedPart", "FoldedPart", "Tail", "Totals", "totals_of"]


@dataclass(slots=True)
class Tail:
    """Where reading a file stopped."""

    position: int  # the offset reached
    carry: bytes  # what follows the last newline read (a line not complete yet)
    at_end: bool  # the end of the file was reached (then `carry` is its last line)
    last: bytes | None  # the last complete line folded, if any


@dataclass
class Totals:
    """What every kind of part carries besides its jobs: the fold's totals."""

    labels: list[tuple[str | None, str | None]]
    verdicts: list[str]
    latencies: array[int]
    attempts: int
    first_t: float
    last_t: float
    jobs: int  # the most jobs its `run` headers announce
    headers: list[dict[str, Any]]
    footers: list[dict[str, Any]]


def totals_of(history: History, ordinal: int) -> dict[str, Any]:
    """`Totals`' fields as `history` (of ledger `ordinal`) has them, to make a part with."""
    return {
        "labels": history._labels,
        "verdicts": history._verdicts,
        "latencies": history.latencies_us,
        "attempts": history.attempts,
        "first_t": history.first_t,
        "last_t": history.last_t,
        "jobs": history._sources[ordinal].jobs,
        "headers": history.headers,
        "footers": history.footers,
    }


@dataclass
class FoldedPart(Totals):
    """A fold of one part of a ledger, to merge: a forked child's (see `Folder.parallel`),
    or a fleet worker's of its part file (see `fold_fleet`)."""

    tail: Tail
    lines: int
    fleet_ops: list[tuple[str, list[str] | None]]
    orphans: list[dict[str, Any]]  # events of jobs not new in the part, for the parent to fold
    keys: array[int]  # the part's jobs (new ones only) and their states
    states: array[int]
    times: dict[int, float]


@dataclass
class CountedPart(Totals):
    """A part of a ledger folded to counts: its jobs' states by count, not the jobs.

    What a fleet worker hands its parent (see `fold_fleet`), as JSON: a
    worker's fold keys are string hashes of its own process's seed, which the
    parent's cannot match, but counts travel. Merged as counts only where no
    job of the part can be anywhere else in the ledger.
    """

    size: int  # bytes of the part file folded: all of it
    lines: int
    counts: list[tuple[int, int]]  # (packed state, jobs in it)

    def to_json(self) -> bytes:
        """One line of JSON (the latencies as base64 of their bytes, deflated: a
        million of them are 8 MB raw, ~1-2 MB so, and the parent reads them whole)."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        packed = zlib.compress(self.latencies.tobytes(), 1)
        fields["latencies"] = base64.b64encode(packed).decode()
        fields["t"] = [self.first_t, self.last_t] if self.first_t <= self.last_t else None
        del fields["first_t"], fields["last_t"]
        return orjson.dumps(fields)

    @classmethod
    def from_json(cls, data: bytes) -> CountedPart:
        """The part `to_json` wrote (ValueError, KeyError or TypeError if it is not one)."""
        fields = orjson.loads(data)
        latencies = array("q")
        packed = base64.b64decode(fields.pop("latencies"), validate=True)
        try:
            latencies.frombytes(zlib.decompress(packed))
        except zlib.error as error:
            raise ValueError(f"latencies: {error}") from None
        times = fields.pop("t")
        first_t, last_t = times if times is not None else (math.inf, -math.inf)
        part = cls(latencies=latencies, first_t=first_t, last_t=last_t, **fields)
        part.counts = [(int(state), int(n)) for state, n in part.counts]
        part.labels = [(workspace, failure) for workspace, failure in part.labels]
        return part
