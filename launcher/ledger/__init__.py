"""The ledger: what a run writes (`writer`), how it is read (`read`), folded
(`fold`, into a `History`) and reported (`report`).

Modules, lowest first (each imports only those before it):
`events` (each event's fields as types, `RunHeader`: a checked header's typed
view) · `compact` (CompactMap) · `state` (a job's packed state) · `check` (what an
event may hold, worker part names) · `read` (the line decoder, `LedgerRead`,
regular files only) · `writer` (`Ledger`, fleet merges)
· `folded` (`History`) · `parts` (parts folded elsewhere) · `folder` (the fold
pass) · `parallel` (forked parts, `usable_cpus`) · `fold` (`fold`,
`catch_up`) · `live` (`LiveFold`) · `snapshot` (`.fold` files) · `fleet_fold`
· `lineage` (which ledgers are one run) · `report`. Other rooms import the
names below from `launcher.ledger`.
"""

from launcher.ledger.compact import CompactMap
from launcher.ledger.events import RunHeader
from launcher.ledger.fleet_fold import fold_fleet
from launcher.ledger.fold import catch_up, fold
from launcher.ledger.folded import History
from launcher.ledger.live import LiveFold
from launcher.ledger.parallel import usable_cpus
from launcher.ledger.parts import CountedPart, FoldedPart
from launcher.ledger.read import LedgerRead, Unmerged, part_name, read_ledger
from launcher.ledger.report import (
    CSV_COLUMNS,
    OUTCOMES,
    Summary,
    dumps_json,
    exit_status,
    format_rows,
    format_text,
    job_rows,
    pending_rows,
    summarize,
    summary_of,
    to_json,
    write_csv,
)
from launcher.ledger.snapshot import SNAPSHOT_SUFFIX, load_fold, save_fold, snapshot_path
from launcher.ledger.state import NOT_TAKEN, PERMANENT, JobExtras, JobRecord, job_key
from launcher.ledger.writer import (
    FsyncPolicy,
    Ledger,
    create_private,
    default_ledger_path,
    finish_merge,
    lock_part,
    open_fleet,
    write_all,
)

__all__ = [
    "CSV_COLUMNS",
    "NOT_TAKEN",
    "OUTCOMES",
    "PERMANENT",
    "SNAPSHOT_SUFFIX",
    "CompactMap",
    "CountedPart",
    "FoldedPart",
    "FsyncPolicy",
    "History",
    "JobExtras",
    "JobRecord",
    "Ledger",
    "LedgerRead",
    "LiveFold",
    "RunHeader",
    "Summary",
    "Unmerged",
    "catch_up",
    "create_private",
    "default_ledger_path",
    "dumps_json",
    "exit_status",
    "finish_merge",
    "fold",
    "fold_fleet",
    "format_rows",
    "format_text",
    "job_key",
    "job_rows",
    "load_fold",
    "lock_part",
    "open_fleet",
    "part_name",
    "pending_rows",
    "read_ledger",
    "save_fold",
    "snapshot_path",
    "summarize",
    "summary_of",
    "to_json",
    "usable_cpus",
    "write_all",
    "write_csv",
]
