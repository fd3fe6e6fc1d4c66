"""`--verify`: after the last call, check that started jobs read SCHEDULING (stopped: STOPPED).

A 204 says the service accepted a start; the job list says what it did. After
the segment's last call, `verify` lists every (project, workspace) the
manifest's `start`/`stop` jobs name, paged and paced as `launcher snapshot`
lists (`list_workspace`), then makes one pass over the manifest: each job the
ledger says was started by a `start` must read `SCHEDULING`, by a `stop`
`STOPPED`. Jobs that failed are already counted as failed: they are not
checked again. `run-immediate` has `--wait` instead.

Which jobs were started comes from a fold of the ledger (earlier segments'
included), read after the calls: the fold keeps 32-64 bytes a job, the
listings one entry per listed job; nothing else is held per job.

Each mismatch is a `verify` event in the ledger (`{"event": "verify", "job",
"name", "workspace", "expected", "found"}`; `found` null: not in the list);
the footer's `verify` holds the counts, which the report shows; any mismatch,
or a listing that failed, makes the exit status 1.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

from launcher.dlf.client import DlfClient
from launcher.flow.pacing import Pacer, RateGate, TokenBucket
from launcher.flow.policy import RetryPolicy
from launcher.ledger.history import History, fold
from launcher.ledger.writer import Ledger, read_ledger
from launcher.logs import get_logger
from launcher.models import Action, Job
from launcher.run.snapshot import SnapshotFailed, list_workspace

__all__ = ["EXPECTED", "verify"]

log = get_logger("launcher.run")

EXPECTED = {"start": "SCHEDULING", "stop": "STOPPED"}
_EXAMPLES = 10


async def verify(
    client: DlfClient,
    ledger: Ledger,
    jobs: Callable[[], Iterable[Job]],
    action: Action,
    policy: RetryPolicy,
    pacer: RateGate | None = None,
) -> dict[str, Any]:
    """Check the started jobs against the job list; the counts for the footer."""
    gate = pacer if pacer is not None else Pacer(TokenBucket(0.0, 1))
    ledger.flush()
    history = fold([read_ledger(ledger.path)])
    started = _started(history)
    places = sorted(
        {(job.project_id, job.workspace) for job in jobs() if (job.action or action) in EXPECTED},
        key=lambda place: (place[0] or "", place[1] or ""),
    )
    listed: dict[tuple[str | None, str | None], dict[str, str | None]] = {}
    rand = random.Random()
    try:
        for project_id, workspace in places:
            listing = await list_workspace(
                client, gate, policy, project_id, workspace, states=None, name_filter=None,
                rand=rand,
            )  # fmt: skip
            listed[(project_id, workspace)] = listing.jobs
    except SnapshotFailed as error:
        log.error("verify: the job list could not be read", error=str(error))
        return {"checked": 0, "mismatches": 0, "error": str(error)}
    checked = mismatches = 0
    examples: list[str] = []
    for job in jobs():
        job_action = job.action or action
        expected = EXPECTED.get(job_action)
        if expected is None or not started(job.id):
            continue
        checked += 1
        found = listed.get((job.project_id, job.workspace), {}).get(job.name)
        if found == expected:
            continue
        mismatches += 1
        ledger.verify(job, expected, found)
        if len(examples) < _EXAMPLES:
            examples.append(f"{job.workspace or '(default)'}/{job.name}: {found or 'not listed'}")
    if mismatches:
        log.warning("verify: jobs not in the state their call set", mismatches=mismatches)
    return {"checked": checked, "mismatches": mismatches, "examples": examples}


def _started(history: History) -> Callable[[str], bool]:
    """Whether the ledger says a job was started (decoding each distinct state once)."""
    judged: dict[int, bool] = {}

    def started(job_id: str) -> bool:
        packed = history.state(job_id)
        if not packed:
            return False
        found = judged.get(packed)
        if found is None:
            found = judged[packed] = history.decode(packed).outcome == "started"
        return found

    return started
