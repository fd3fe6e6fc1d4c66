"""Snapshots: a finished ledger's fold, as counts, kept beside it (`<ledger>.fold`)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import Counter
from pathlib import Path

import orjson

from launcher.errors import UsageError
from launcher.ledger.check import MAX_TIME, problem
from launcher.ledger.folded import History, Source, extends
from launcher.ledger.read import MAX_LINE_BYTES, open_regular
from launcher.ledger.state import unpack_state

__all__ = ["SNAPSHOT_SUFFIX", "load_fold", "save_fold", "snapshot_path"]

# -- snapshots: a finished ledger's counts, kept beside it -------------------------------
#
# A resume of a finished 300,000-job run spent ~1.5 s folding 100 MB of JSON that
# the end of that run had just folded. The end of a run now saves its fold's
# counts beside the ledger (`<ledger>.fold`: a JSON line, then the latencies'
# raw bytes). Counts, not jobs: fold keys are per-process string hashes, and
# ids for every job would make the snapshot as slow to read as the ledger.
# Counts are all a summary needs, and all a resume needs when nothing is left
# to send; a resume that has jobs to send folds the ledger. A snapshot is
# used only while the ledger is exactly the file it describes (same file,
# same size, same last bytes); it is a cache: without it, only time changes.

SNAPSHOT_SUFFIX = ".fold"
_SNAPSHOT_VERSION = 1


def snapshot_path(ledger: str | os.PathLike[str]) -> Path:
    """Where the snapshot of `ledger`'s fold is kept."""
    return Path(f"{os.fspath(ledger)}{SNAPSHOT_SUFFIX}")


def save_fold(history: History) -> bool:
    """Save the counts of `history`, the fold of one whole ledger, beside it; True if saved.

    Written to a temporary file then renamed: a reader finds a whole snapshot
    or none. Nothing is saved for several ledgers, a torn one, or a fold that
    keeps per-job extras.
    """
    if len(history._sources) != 1 or history.extras is not None:
        return False
    source = history._sources[0]
    if source.offset < 0 or source.torn:
        return False
    head = {
        "snapshot": _SNAPSHOT_VERSION,
        "byteorder": sys.byteorder,  # of the latencies' bytes
        "source": [source.jobs, source.offset, source.lines, source.identity, source.tail.hex()],
        "counts": list(history.state_counts().items()),
        "labels": history._labels,
        "verdicts": history._verdicts,
        "latencies": len(history.latencies_us),
        "attempts": history.attempts,
        "declared_jobs": history.declared_jobs,
        "t": [history.first_t, history.last_t] if history.first_t <= history.last_t else None,
        "headers": history.headers,
        "footers": history.footers,
        "overlap_examples": history.overlap_examples,
    }
    target = snapshot_path(source.path)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:  # a new file (0600, never through a link): one found there is not ours to touch
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return False
    try:
        with open(fd, "wb") as out:
            out.write(orjson.dumps(head, option=orjson.OPT_APPEND_NEWLINE))
            history.latencies_us.tofile(out)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise OSError("not a snapshot file")  # replaced by no snapshot of ours
        os.replace(temporary, target)
    except (OSError, TypeError):  # TypeError: a header orjson cannot write; no snapshot then
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False
    return True


def _plausible(history: History) -> bool:
    """Whether a loaded snapshot holds only what a fold of a valid ledger can."""
    events = [*history.headers, *history.footers]
    return (
        all(type(event) is dict and problem(event) is None for event in events)
        and all(event.get("event") == "run" for event in history.headers)
        and all(event.get("event") == "end" for event in history.footers)
        and all(
            (workspace is None or isinstance(workspace, str))
            and (failure is None or isinstance(failure, str))
            for workspace, failure in history._labels
        )
        and all(n > 0 for n in (history._counted or {}).values())
        and history.attempts >= 0
        and history.declared_jobs >= 0
        and all(isinstance(job, str) for job in history.overlap_examples)
        and (
            history.first_t == math.inf or -MAX_TIME < history.first_t <= history.last_t < MAX_TIME
        )
    )


def load_fold(ledger: str | os.PathLike[str]) -> History | None:
    """The saved counts of `ledger`'s fold (`History.counted_only`), if the snapshot still
    describes the file exactly; else None."""
    path = os.fspath(ledger)
    history = History()
    try:
        with open_regular(snapshot_path(path), follow=False) as handle:
            head = orjson.loads(handle.readline(MAX_LINE_BYTES))
            if head["snapshot"] != _SNAPSHOT_VERSION or head["byteorder"] != sys.byteorder:
                return None
            history.latencies_us.fromfile(handle, head["latencies"])
            if handle.read(1):
                return None
        jobs, offset, lines, (device, inode), tail = head["source"]
        source = Source(path, jobs, False, offset, lines, (device, inode), bytes.fromhex(tail))
        if not extends(source) or os.stat(path).st_size != offset:
            return None  # not this ledger, or not all of it
        history._counted = Counter({int(state): int(n) for state, n in head["counts"]})
        history._labels = [(workspace, failure) for workspace, failure in head["labels"]]
        history._verdicts = [str(verdict) for verdict in head["verdicts"]]
        for packed in history._counted:  # each state must decode (a summary decodes them all)
            state = unpack_state(packed)
            if state.label >= len(history._labels) or state.last >= len(history._verdicts):
                return None
        history.attempts, history.declared_jobs = int(head["attempts"]), int(head["declared_jobs"])
        if head["t"] is not None:
            history.first_t, history.last_t = float(head["t"][0]), float(head["t"][1])
        history.headers, history.footers = list(head["headers"]), list(head["footers"])
        history.overlap_examples = list(head["overlap_examples"])
        # A snapshot is a cache, and input like the ledger: what a summary reads of it
        # must be what a fold of the ledger could hold, else the ledger is folded.
        if not _plausible(history):
            return None
    except (OSError, UsageError, EOFError, ValueError, TypeError, KeyError, IndexError):
        return None  # (orjson.JSONDecodeError is a ValueError)
    history._label_index = {pair: n for n, pair in enumerate(history._labels)}
    history._verdict_index = {verdict: n for n, verdict in enumerate(history._verdicts)}
    history._sources = [source]
    history.ledgers = [path]
    return history
