"""The fold's names in one place, for the rooms that imported them from here.

The fold is split by concern (see `launcher.ledger`): `state` (packed job
states), `folded` (`History`), `folder` and `fold` (the pass itself),
`parallel` (forked parts), `live` (`LiveFold`), `snapshot` (`.fold` files),
`parts` and `fleet_fold` (a fleet's workers' folds), `read` and `check` (the
line decoder, and what each field may hold). New code imports from
`launcher.ledger`; nothing in `launcher.ledger` imports this module.
"""

from __future__ import annotations

from launcher.ledger.fleet_fold import fold_fleet
from launcher.ledger.fold import catch_up, fold
from launcher.ledger.folded import History
from launcher.ledger.live import LiveFold
from launcher.ledger.parts import CountedPart, FoldedPart
from launcher.ledger.snapshot import SNAPSHOT_SUFFIX, load_fold, save_fold, snapshot_path
from launcher.ledger.state import (
    NOT_TAKEN,
    PERMANENT,
    JobExtras,
    JobRecord,
    JobState,
    job_key,
    pack_state,
    unpack_state,
)

__all__ = [
    "NOT_TAKEN",
    "PERMANENT",
    "SNAPSHOT_SUFFIX",
    "CountedPart",
    "FoldedPart",
    "History",
    "JobExtras",
    "JobRecord",
    "JobState",
    "LiveFold",
    "catch_up",
    "fold",
    "fold_fleet",
    "job_key",
    "load_fold",
    "pack_state",
    "save_fold",
    "snapshot_path",
    "unpack_state",
]
