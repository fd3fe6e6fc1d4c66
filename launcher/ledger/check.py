"""What a ledger event may hold: every field a reader uses, checked on read.

A ledger is data, never a command: a line with a field of the wrong type or
out of range is refused (`FILE:LINE: problem`, exit 2) before any reader uses
it, so no hand-edited or corrupted ledger can crash a report, a resume or a
replay, or steer them with an absurd value. `problem` says what is wrong with
an event, or None; `decode_lines` (in `launcher.ledger.read`) calls it for
every line it decodes. It is meant to be cheap: type checks of the fields as
decoded, most of them done at C speed by `map`.

Kinds this version does not know are accepted (with a valid `t`) and ignored
by the fold: a newer launcher may write more.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["MAX_LATENCY_MS", "MAX_SHARDS", "MAX_TIME", "part_name", "problem"]

# A Unix time (seconds) no ledger line can hold: past the year 5000, or before 1970.
MAX_TIME = 1e11
# An answer's latency (milliseconds): longer than 11 days is no answer's.
MAX_LATENCY_MS = 1e9
# `--shard I/N`: a report lists the shards it lacks, so N must stay countable.
MAX_SHARDS = 100_000
_MAX_JOBS = 1 << 40  # a manifest's jobs, as a header counts them
_MAX_WAVE = 1_000_000  # as the manifest rule allows
_MAX_PARTS = 4096  # worker processes a `workers` record may name

_NONE = type(None)
_STR: frozenset[type] = frozenset({str, _NONE})
_INT: frozenset[type] = frozenset({int, _NONE})
_NUMBER: frozenset[type] = frozenset({int, float, _NONE})
_SCALAR: frozenset[type] = frozenset({str, int, float, bool, _NONE})
_SHARD = re.compile(r"(\d{1,9})/(\d{1,9})")
_FLEET = re.compile(r"[A-Za-z0-9_-]{1,64}")

# The fields each kind may hold that readers use, by the types they may have
# (absent is None). `job` is checked apart: it must be there, a string.
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # kind: (strings, integers, numbers)
    "intent": (("action", "name", "workspace", "project_id"), ("attempt", "line", "wave"), ("t",)),
    "result": (
        ("verdict", "outcome", "error_code", "error_msg", "request_id", "failure", "detail"),
        ("attempt", "status"),
        ("t", "latency_ms"),
    ),
    "check": (
        ("state", "conclusion", "outcome", "error_code", "failure"),
        ("attempt", "status"),
        ("t",),
    ),
    "run": (
        (
            "run_id",
            "resumes",
            "shard",
            "worker",
            "fleet",
            "version",
            "endpoint",
            "started_at",
            "host",
        ),
        ("segment", "pid"),
        ("t",),
    ),
    "end": (("reason",), ("exit_code",), ("t",)),
    # --wait: a followed run's new status; --verify: a job not in the state set.
    "instance": (("status",), (), ("t",)),
    "verify": (("name", "workspace", "expected", "found"), (), ("t",)),
    "workers": (("fleet",), ("count",), ("t",)),
    "merged": (("fleet",), (), ("t",)),
}


def problem(event: dict[str, Any], ledger: str | os.PathLike[str] | None = None) -> str | None:
    """What is wrong with a decoded ledger event (a dict) of `ledger`, or None if nothing is.

    A `workers` record may name only the launcher's own parts of `ledger`
    (see `part_name`); with no `ledger`, none.
    """
    kind = event.get("event")
    if type(kind) is not str:
        return "event: missing, or not a string"
    fields = _FIELDS.get(kind)
    if fields is None:
        return _time(event.get("t"))
    strings, integers, numbers = fields
    get = event.get
    for names, allowed in ((strings, _STR), (integers, _INT), (numbers, _NUMBER)):
        if not allowed.issuperset(map(type, map(get, names))):  # at C speed
            for name in names:
                value = get(name)
                if type(value) not in allowed and not (allowed is _STR and isinstance(value, str)):
                    return f"{name}: {_kinds(allowed)}, not {_shown(value)}"
    found = _time(event.get("t"))
    if found is not None:
        return found
    if kind in _JOB_KINDS:
        return _job_event(kind, event)
    if kind == "workers":
        return _workers(event, ledger)
    return _OTHER[kind](event)


def _job_event(kind: str, event: dict[str, Any]) -> str | None:
    job = event.get("job")
    if type(job) is not str:
        return f"job: a string (the job's id), not {_shown(job)}"
    if kind == "result" or kind == "instance":
        instance = event.get("instance_id")
        if type(instance) not in (str, int, _NONE):
            return f"instance_id: a string or an integer, not {_shown(instance)}"
    if kind == "result":
        latency = event.get("latency_ms")
        if latency is not None and not 0.0 <= latency <= MAX_LATENCY_MS:
            return f"latency_ms: {latency!r} is not between 0 and {MAX_LATENCY_MS:.0e}"
    elif kind == "intent":
        params = event.get("params")
        if params is not None:
            if type(params) is not list:
                return f"params: a list, not {_shown(params)}"
            for param in params:
                if (
                    type(param) is not list
                    or len(param) != 3
                    or type(param[0]) is not str
                    or type(param[1]) not in _SCALAR
                    or type(param[2]) not in _STR
                ):
                    return f"params: each a [name, value, type] list, not {_shown(param)}"
    attempt = event.get("attempt")
    if attempt is not None and attempt < 0:
        return f"attempt: {attempt} is negative"
    wave = event.get("wave")
    if wave is not None and not 0 <= wave <= _MAX_WAVE:
        return f"wave: {wave} is not between 0 and {_MAX_WAVE:,}"
    return None


def _run(event: dict[str, Any]) -> str | None:
    for name in ("options", "run_options"):  # (run_options: a fleet worker's run's own)
        options = event.get(name)
        if options is not None and type(options) is not dict:
            return f"{name}: an object, not {_shown(options)}"
    manifest = event.get("manifest")
    if manifest is not None:
        if type(manifest) is not dict:
            return f"manifest: an object, not {_shown(manifest)}"
        for name in ("jobs", "total_jobs"):
            jobs = manifest.get(name)
            if jobs is not None and (type(jobs) is not int or not 0 <= jobs <= _MAX_JOBS):
                return f"manifest.{name}: a count of jobs, not {_shown(jobs)}"
        waves = manifest.get("waves")
        if waves is not None and (
            type(waves) is not dict
            or not all(type(jobs) is int and 0 <= jobs <= _MAX_JOBS for jobs in waves.values())
        ):
            return f"manifest.waves: a count of jobs per wave, not {_shown(waves)}"
        for name in ("sha256", "path", "format"):
            if type(manifest.get(name)) not in _STR:
                return f"manifest.{name}: a string, not {_shown(manifest.get(name))}"
    shard = event.get("shard")
    if shard is not None:
        match = _SHARD.fullmatch(shard)
        if match is None or not int(match[1]) < int(match[2]) <= MAX_SHARDS:
            return f"shard: I/N with 0 <= I < N <= {MAX_SHARDS}, not {shard[:40]!r}"
    return None


def _workers(event: dict[str, Any], ledger: str | os.PathLike[str] | None) -> str | None:
    fleet, parts = event.get("fleet"), event.get("parts")
    if not fleet or not _FLEET.fullmatch(fleet):
        return "fleet: a fleet id (letters, digits, - and _) is required"
    if type(parts) is not list or not 0 < len(parts) <= _MAX_PARTS:
        return f"parts: a list of 1 to {_MAX_PARTS} file names, not {_shown(parts)}"
    if ledger is None:
        return "parts: a worker's part cannot name parts of its own"
    for index, name in enumerate(parts):
        own = part_name(ledger, fleet, index)
        if name != own:
            return (
                f"parts: {_shown(name)} is not this ledger's part {index} ({own}); "
                "a workers record names only the launcher's own part files"
            )
    return _run(event)  # its `manifest`, if any, as a header's


def part_name(ledger: str | os.PathLike[str], fleet: str, index: int) -> str:
    """The file name of worker `index`'s part of `ledger` (next to it)."""
    path = Path(ledger)
    return f"{path.stem}.{fleet[:8]}.w{index}{path.suffix or '.jsonl'}"


def _merged(event: dict[str, Any]) -> str | None:
    return None if event.get("fleet") else "fleet: a non-empty string is required"


_JOB_KINDS = frozenset({"intent", "result", "check", "instance", "verify"})
_OTHER = {"run": _run, "end": lambda event: None, "merged": _merged}


def _time(t: Any) -> str | None:
    if t is None:
        return None
    if type(t) not in _NUMBER:
        return f"t: a number (Unix time), not {_shown(t)}"
    if not (math.isfinite(t) and abs(t) < MAX_TIME):
        return f"t: {t!r} is not a Unix time"
    return None


def _kinds(allowed: frozenset[type]) -> str:
    if allowed is _STR:
        return "a string"
    return "an integer" if allowed is _INT else "a number"


def _shown(value: Any) -> str:
    if value is None:
        return "missing"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"
