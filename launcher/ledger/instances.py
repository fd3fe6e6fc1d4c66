"""The `instance` events of `--wait`: each followed run's latest status, by job.

`launcher run --action run-immediate --wait` writes an `instance` event
(`{"event": "instance", "job", "t", "instance_id", "status"}`) whenever a poll
finds a run in a new status, and `unknown` when the wait timed out. This fold
reads them, and the `instance_id` of accepted `run-immediate` results (so a
resume can follow a run whose first poll never happened), in one pass over the
ledgers; the job fold (`launcher.ledger.fold`) passes them by. Only ledgers
whose run header says `wait` are read (`waited`): other runs pay nothing.

Memory grows with the followed runs (one small entry each), not with events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher.ledger.events import RunHeader
from launcher.ledger.read import LedgerRead

__all__ = ["InstanceFold", "fold_instances", "waited"]


def waited(headers: Iterable[RunHeader]) -> bool:
    """Whether any segment of a run followed its runs (`--wait`)."""
    return any(header.options.get("wait") for header in headers)


@dataclass(slots=True)
class InstanceFold:
    """Each followed job's latest (instance id, status); accepted runs' instance ids."""

    latest: dict[str, tuple[int | str | None, str]] = field(default_factory=dict)
    accepted: dict[str, int | str] = field(default_factory=dict)  # job -> instance id of its run

    def add(self, event: Mapping[str, Any]) -> None:
        """Fold one ledger event (anything but `instance` and `result` is passed by)."""
        kind = event.get("event")
        job = event.get("job")
        if not isinstance(job, str):
            return
        if kind == "instance":
            status = event.get("status")
            instance_id = event.get("instance_id")
            if isinstance(status, str):
                known = isinstance(instance_id, int | str) and not isinstance(instance_id, bool)
                self.latest[job] = (instance_id if known else None, status)
        elif kind == "result":
            instance_id = event.get("instance_id")
            if isinstance(instance_id, int | str) and not isinstance(instance_id, bool):
                self.accepted[job] = instance_id

    def status(self, job_id: str) -> str | None:
        entry = self.latest.get(job_id)
        return entry[1] if entry is not None else None

    def instance_id(self, job_id: str) -> int | str | None:
        entry = self.latest.get(job_id)
        if entry is not None and entry[0] is not None:
            return entry[0]
        return self.accepted.get(job_id)

    def counts(self) -> dict[str, int]:
        """Followed runs by latest status, most frequent first (ties by name)."""
        counts = Counter(status for _, status in self.latest.values())
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def fold_instances(reads: Iterable[LedgerRead]) -> InstanceFold:
    """The `instance` (and accepted `result`) events of `reads`, in order."""
    fold = InstanceFold()
    for read in reads:
        for event in read:
            fold.add(event)
    return fold
