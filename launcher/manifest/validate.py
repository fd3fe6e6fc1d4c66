"""Read, check and stream job manifests: JSONL (the contract), CSV and YAML.

A manifest lists the jobs to start. Every format carries the same fields:

``name`` (required)
    the DLF job name: a non-empty string without control characters.
``params``
    ``{"date": "2026-11-28"}`` or ``[{"name": "date", "value": "2026-11-28",
    "paramType": "variable"}]``; names 1-64 characters, values strings of at most
    1024 characters, ``paramType`` ``variable`` or ``constants``; no name twice.
``workspace``, ``project_id``
    non-empty, no whitespace or control characters (they travel in a URL and an
    HTTP header); when absent, the run's defaults apply.
``id``
    the job's key for resume, replay and reports; default: `job_identity` of the
    effective project, workspace, name and params. Unique within a manifest.
``action``
    ``start``, ``stop`` or ``run-immediate``; absent: the run's action.
``wave``
    a whole number from 0 to 1,000,000 (default 0): the jobs of wave k+1 are sent
    only once every job of the waves up to k has its final outcome (see
    `launcher.run.waves`). Not part of the identity. In CSV a cell of digits.

Unknown fields are errors (``parmas`` gets ``did you mean "params"?``), and so is
the same job twice (same project, workspace, name and params after defaults)
unless duplicates are allowed.

Format by suffix: ``.jsonl``/``.ndjson``/``.json`` → JSONL, ``.csv`` → CSV,
``.yaml``/``.yml`` → YAML, anything else → JSONL; ``fmt=`` overrides.

JSONL
    One JSON object per line, UTF-8. Blank lines and lines whose first non-blank
    character is ``#`` are skipped. ``null`` in an optional field means absent.
    Numbers, booleans and null are not strings: ``"date": 20261128`` is an error
    that says to quote it.

CSV
    UTF-8 (a leading BOM is fine), comma-separated, standard double-quote quoting
    (a quoted cell may span lines; ``""`` is a quote). Blank lines, and lines whose
    first non-blank character is ``#`` where a row would start, are skipped (so a
    job name that starts with ``#`` must be quoted). The first row is the header:

    * ``name``, ``workspace``, ``project_id``, ``id``, ``action``: the fields; an
      empty cell means absent.
    * ``param:NAME``: parameter NAME; an empty cell means the parameter is not
      sent for that row.
    * ``params`` (optional): the JSON form, object or list, for what the columns
      cannot say: ``paramType``, empty values, names with odd characters.

    Parameters are sent in header column order, the ``params`` column's entries at
    its position. The same parameter in a ``param:`` column and in ``params`` is an
    error. An unknown, empty or repeated header column is an error naming it (and
    no row is checked until the header is fixed). Every row has as many cells as
    the header; rows whose cells are all empty are skipped. A cell holds at most
    131072 characters (Python's csv limit). CSV values are always strings, so the
    quoting rule for numbers does not apply.

YAML
    A list of job mappings, or a mapping whose ``jobs:`` key holds that list
    (other top-level keys must start with ``x-``: a place for anchors). Fields as
    in JSON; unquoted ``20261128``, ``yes``, ``2026-11-28`` or ``~`` are a number,
    boolean, date or null to YAML, so they are errors that say to quote them.
    Anchors, aliases and ``<<`` merge keys work; a key twice in one mapping is an
    error. Problems name the line of the offending key; ``Job.line`` is the line
    where the job's mapping starts. YAML is read whole: it is not the bulk format.

JSONL and CSV are streamed: memory does not grow with the file, only with the
longest line (capped at `MAX_LINE_BYTES`) and, in `validate`, the duplicate
checks. Those keep, per job, a 64-bit prefix of its identity (and of its `id`,
when given) with the line it was first seen on, in flat arrays: 24-48 bytes a
job, 25-50 MB at a million. Two different jobs share a prefix with probability
about n²/2⁶⁵ (≈3e-8 at a million jobs); the later one would then be reported
as a duplicate by mistake, and `allow_duplicates` is the way out.

This module is the API; the work is split by stage. `manifest_lines` reads the
bytes (hashing them on the way) and splits them into lines; `manifest_jsonl`,
`manifest_csv` and `manifest_yaml` turn lines (or YAML's nodes) into each job's
fields; `manifest_rules` checks one job's fields and words every message;
`manifest_dupes` holds the keys `validate` checks duplicates against; and
`manifest_types` holds what passes between them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import IO, Final, Literal

import orjson

from launcher.errors import ManifestChanged, ManifestInvalid, UsageError
from launcher.manifest.dupes import _FirstLines, _key64
from launcher.manifest.jsonl import _count_jsonl, _scan_jsonl
from launcher.manifest.lines import (
    MAX_LINE_BYTES,
    _chunks,
    _Digests,
    _Hasher,
    _open,
    _raw_lines,
    _Verifier,
)
from launcher.manifest.records import Defaults, Problem, _Record
from launcher.manifest.rules import (
    _CONTROL_OR_SPACE,
    MAX_PARAM_NAME,
    MAX_PARAM_VALUE,
    _check_text,
    _Checker,
    _quote,
)
from launcher.models import Job, JobFields, JobParam, from_fields

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_PARAM_NAME",
    "MAX_PARAM_VALUE",
    "Defaults",
    "Problem",
    "Validation",
    "counted_digests",
    "detect_format",
    "file_digests",
    "file_sha256",
    "iter_jobs",
    "scan",
    "validate",
]

Format = Literal["jsonl", "csv", "yaml"]

_SUFFIXES: Final[Mapping[str, Format]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".yaml": "yaml",
    ".yml": "yaml",
}
_FMT_NAMES: Final[Mapping[str, Format]] = {
    **_SUFFIXES,
    **{k.lstrip("."): v for k, v in _SUFFIXES.items()},
}

# Frozen, so one shared instance is a safe default argument.
_NO_DEFAULTS: Final = Defaults()


@dataclass(frozen=True, slots=True)
class Validation:
    """The result of `validate`: counts, the first problems, and the file's hash."""

    path: str
    jobs: int  # valid jobs counted
    problems: tuple[Problem, ...]  # the first `max_listed`
    problem_count: int
    sha256: str  # hex SHA-256 of the file's bytes
    # Jobs that give their own `id` (None: not counted). With none, and without
    # duplicates allowed, no two jobs share an id (see `launcher.run.fleet`).
    given_ids: int | None = None
    # The jobs themselves, in manifest order, when `validate` was asked to keep them
    # and they fit (see `keep`); None: stream them from the file again.
    kept: Sequence[Job] | None = field(default=None, repr=False)
    # Valid jobs per wave (the `wave` field), by wave number: one entry when the
    # manifest has no waves. None: not counted (a resume that trusted its ledger).
    waves: Mapping[int, int] | None = None
    # SHA-256 of each 1 MiB chunk of the bytes validated (None: not recorded): what
    # `iter_jobs(checked=...)` compares the bytes it streams for sending to.
    chunks: tuple[bytes, ...] | None = field(default=None, repr=False)

    def raise_if_invalid(self) -> None:
        """Raise `ManifestInvalid` listing the first problems, if there are any."""
        if self.problem_count:
            raise ManifestInvalid([str(p) for p in self.problems], self.problem_count)


# --- public API ---------------------------------------------------------------


def detect_format(path: str | Path) -> Format:
    """The manifest format implied by the file name's suffix (JSONL when unknown)."""
    return _SUFFIXES.get(Path(path).suffix.lower(), "jsonl")


def scan(
    path: str | Path,
    defaults: Defaults = _NO_DEFAULTS,
    *,
    fmt: str | None = None,
    lines: tuple[int, int] | None = None,
) -> Iterator[Job | Problem]:
    """Stream the manifest: one Job per valid job line, one or more Problem per bad line.

    There is no cross-line check (duplicate jobs or ids) here; `validate` adds it.
    `Job.id` is the manifest's `id` or `job_identity(project, workspace, name,
    params)` with defaults applied; `Job.line` is the 1-based line; `Job.action`
    is as given or None. Defaults fill project_id/workspace when the line has none.
    Raises `UsageError` at once if the file cannot be opened. `lines=(i, n)`
    keeps only every n-th job from the i-th (0-based; one worker's share, see
    `launcher.run.fleet`); JSONL lines of other shares are not even parsed.
    """
    kind = _resolve_format(path, fmt)
    _check_defaults(defaults)
    f = _open(path)
    return _scan_jobs(f, str(path), kind, defaults, lines)


def validate(
    path: str | Path,
    defaults: Defaults = _NO_DEFAULTS,
    *,
    allow_duplicates: bool = False,
    max_listed: int = 20,
    fmt: str | None = None,
    keep: int = 0,
) -> Validation:
    """Check every rule, plus duplicate jobs and ids, in one streaming pass.

    The SHA-256 covers the file's raw bytes and is computed in the same pass, so
    it describes exactly the bytes that were checked. `keep`: up to this many
    jobs are kept (`Validation.kept`, as `iter_jobs` would give them), so that
    sending them needs no second pass; a manifest with more keeps none.
    """
    kind = _resolve_format(path, fmt)
    _check_defaults(defaults)
    name = str(path)
    hasher = _Digests()
    listed: list[Problem] = []
    count = 0
    jobs = 0
    seen_jobs = _FirstLines()
    seen_ids = _FirstLines()
    given_ids = 0
    sha256 = hashlib.sha256
    dumps = orjson.dumps
    from_bytes = int.from_bytes  # (big-endian: its default)
    add_job = seen_jobs.add
    kept: list[Job] | None = [] if keep > 0 else None
    digest = b""
    waves: Counter[int] = Counter()
    with _open(path) as f:
        if not allow_duplicates and kind != "yaml":  # (a YAML job spans several lines)
            # Sized up front: growing the table re-adds every key (and peaks in memory).
            seen_jobs.reserve(min(_expected_lines(f), _RESERVE_MAX))
        for item in _scan(f, name, kind, defaults, hasher):
            if isinstance(item, tuple):
                job_name, params, workspace, project_id, jid, _, line, wave = item
                problems: list[Problem] | None = None  # made only for a duplicate
                if jid is not None:
                    given_ids += 1
                    first = seen_ids.add(_key64(jid), line)
                    if first:
                        message = f"duplicate id {_quote(jid)}, first used on line {first}"
                        problems = [Problem(name, line, "id", message)]
                if not allow_duplicates or kept is not None:
                    # The canonical form `job_identity` hashes: the duplicate key is
                    # the identity's first 64 bits, without building Job objects.
                    digest = sha256(dumps((project_id, workspace, job_name, params))).digest()
                if not allow_duplicates:
                    first = add_job(from_bytes(digest[:8]), line)
                    if first:
                        message = (
                            f"duplicate of the job on line {first} "
                            "(same project, workspace, name and params)"
                        )
                        problems = [*(problems or ()), Problem(name, line, "job", message)]
                if problems is None:
                    jobs += 1
                    waves[wave] += 1
                    if kept is not None:
                        kept.append(_job(item, digest))
                        if jobs > keep:
                            kept = None  # too many to hold: they will be streamed again
                    continue
            else:
                problems = [item]
            for problem in problems:
                count += 1
                if len(listed) < max_listed:
                    listed.append(problem)
    if count:
        kept = None
    digest_hex = hasher.whole.hexdigest()
    chunks = tuple(hasher.chunks)
    return Validation(
        name, jobs, tuple(listed), count, digest_hex, given_ids, kept, dict(waves), chunks
    )


# The most keys `validate` reserves room for on an estimate: 24 MB of table.
_RESERVE_MAX: Final = 1 << 20


def _expected_lines(f: IO[bytes]) -> int:
    """About how many lines `f` holds, from the size and its first 64 KiB; 0 if unknown."""
    try:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return 0
        sample = os.pread(f.fileno(), 1 << 16, 0)
    except OSError:
        return 0  # the scan reports what is wrong with the file
    return info.st_size * (sample.count(b"\n") + 1) // max(len(sample), 1)


def iter_jobs(
    path: str | Path,
    defaults: Defaults = _NO_DEFAULTS,
    *,
    fmt: str | None = None,
    lines: tuple[int, int] | None = None,
    checked: Validation | Sequence[bytes] | None = None,
    on_change: Callable[[ManifestChanged], None] | None = None,
) -> Iterator[Job]:
    """Stream Jobs from an already validated manifest; raise `ManifestInvalid` on any Problem.

    Meant for the pass after `validate`, so a Problem here means the file changed
    in between: the iterator raises at that line instead of skipping it. Opening
    happens now, so a missing file raises `UsageError` before the first job.

    `checked`: the validation of this file (with its `chunks`), or the chunk
    digests `file_digests` gave for the bytes hashed. Each 1 MiB chunk
    read is then compared with the one validated before any job in it is
    yielded, and the iterator raises `ManifestChanged` at the first chunk that
    differs (or when the file grew or shrank): only checked bytes are sent.
    `on_change`: called with that error instead, and the iteration ends (a run
    stops its dispatcher with it: requests in flight finish, exit 3). The
    repeated-key check is skipped then: the bytes are the ones that passed it.
    """
    kind = _resolve_format(path, fmt)
    _check_defaults(defaults)
    verifier = None
    chunks = checked.chunks if isinstance(checked, Validation) else checked
    if chunks is not None:
        verifier = _Verifier(str(path), chunks)
    return _only_jobs(_open(path), str(path), kind, defaults, lines, verifier, on_change)


def _only_jobs(
    f: IO[bytes],
    path: str,
    kind: Format,
    defaults: Defaults,
    lines: tuple[int, int] | None,
    verifier: _Verifier | None,
    on_change: Callable[[ManifestChanged], None] | None,
) -> Iterator[Job]:
    # `_scan_jobs` without the Problems: one generator less per job on the send path.
    with f:
        try:
            for item in _records(f, path, kind, defaults, lines, verifier):
                if type(item) is not tuple:
                    raise ManifestInvalid([str(item)], 1)
                yield _job(item)
        except ManifestChanged as error:
            if on_change is None:
                raise
            on_change(error)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes (raises `UsageError` if it cannot be read)."""
    return file_digests(path)[0]


def file_digests(path: str | Path) -> tuple[str, tuple[bytes, ...]]:
    """The file's hex SHA-256, and its chunks' digests (`Validation.chunks`), in one pass."""
    hasher = _Digests()
    with _open(path) as f:
        for _ in _chunks(f, str(path), hasher):
            pass
    return hasher.whole.hexdigest(), tuple(hasher.chunks)


def counted_digests(
    path: str | Path, fmt: str | None = None
) -> tuple[str, tuple[bytes, ...], int | None]:
    """`file_digests`, and in the same pass how many jobs the file holds if it is valid.

    For a file whose bytes passed `validate` before (the same SHA-256): its
    count, taken from its own bytes rather than from anyone's record of it,
    without checking a job again. JSONL: the lines that are neither blank nor
    comments; CSV: the rows after the header that are not all empty. None for
    YAML (`validate` it: it is small) and for bytes that cannot be valid.
    """
    kind = _resolve_format(path, fmt)
    name = str(path)
    hasher = _Digests()
    jobs: int | None = None
    with _open(path) as f:
        if kind == "yaml":
            for _ in _chunks(f, name, hasher):
                pass
        else:
            lines = _raw_lines(f, name, hasher)
            if kind == "csv":
                from launcher.manifest.csv_rows import _count_csv

                jobs = _count_csv(lines, name)
            else:
                jobs = _count_jsonl(lines)
            for _ in lines:  # (after a line that ends the count: hash the rest)
                pass
    return hasher.whole.hexdigest(), tuple(hasher.chunks), jobs


# --- from the file to a scanner -----------------------------------------------


def _resolve_format(path: str | Path, fmt: str | None) -> Format:
    if fmt is None:
        return detect_format(path)
    kind = _FMT_NAMES.get(fmt.lower())
    if kind is None:
        raise UsageError(f"unknown manifest format {fmt!r}; expected jsonl, csv or yaml")
    return kind


def _check_defaults(defaults: Defaults) -> None:
    # The defaults end up in the same URL and header as manifest values, so they
    # obey the same rule; the CLI's flag names are its business, not ours.
    for label, value in (("project_id", defaults.project_id), ("workspace", defaults.workspace)):
        if value is not None:
            message = _check_text(value, _CONTROL_OR_SPACE, "whitespace or control characters")
            if message:
                raise UsageError(f"default {label} {_quote(value)}: {message}")


def _scan_jobs(
    f: IO[bytes], path: str, kind: Format, defaults: Defaults, lines: tuple[int, int] | None
) -> Iterator[Job | Problem]:
    with f:
        for item in _records(f, path, kind, defaults, lines):
            yield _job(item) if isinstance(item, tuple) else item


def _records(
    f: IO[bytes],
    path: str,
    kind: Format,
    defaults: Defaults,
    lines: tuple[int, int] | None,
    verifier: _Verifier | None = None,
) -> Iterator[_Record | Problem]:
    items = _scan(f, path, kind, defaults, verifier, lines)
    if lines is not None and kind != "jsonl":  # CSV and YAML: filter parsed records
        items = _share_of(items, *lines)
    return items


def _share_of(
    items: Iterator[_Record | Problem], index: int, count: int
) -> Iterator[_Record | Problem]:
    ordinal = -1
    for item in items:
        if isinstance(item, tuple):
            ordinal += 1
            if ordinal % count != index:
                continue
        yield item


def _job(record: _Record, digest: bytes | None = None) -> Job:
    """The Job of a checked record; `digest`: the SHA-256 of its canonical form, if at hand."""
    name, raw_params, workspace, project_id, jid, action, line, wave = record
    if jid is None:
        if digest is None:
            # `job_identity`, from the checker's (name, value, type) tuples: the same
            # JSON as its canonical form, without making the JobParams first.
            digest = _sha256(_dumps((project_id, workspace, name, raw_params))).digest()
        jid = digest[:16].hex()  # its first 32 hex digits
    params = tuple(map(from_fields, _JOB_PARAMS, raw_params))
    fields: JobFields = (jid, name, params, workspace, project_id, line, action, wave)
    return from_fields(Job, fields)


_sha256 = hashlib.sha256
_dumps = orjson.dumps
# Job(...) and JobParam(*param) without NamedTuple's Python-level __new__ (see
# `launcher.models.from_fields`): `map` calls `from_fields(JobParam, param)` at C speed.
_JOB_PARAMS = repeat(JobParam)


def _scan(
    f: IO[bytes],
    path: str,
    kind: Format,
    defaults: Defaults,
    hasher: _Hasher | None,
    share: tuple[int, int] | None = None,
) -> Iterator[_Record | Problem]:
    check = _Checker(path, defaults)
    # The CSV and YAML scanners (and PyYAML, ~20 ms) are imported by the runs that read them.
    if kind == "yaml":
        from launcher.manifest.yaml_nodes import MAX_YAML_BYTES, _scan_yaml, _too_large

        parts: list[bytes] = []
        size = 0
        for chunk in _chunks(f, path, hasher):
            size += len(chunk)
            if size > MAX_YAML_BYTES:  # read no further: it is refused whole
                return iter((_too_large(path),))
            parts.append(chunk)
        return _scan_yaml(b"".join(parts), path, check)
    lines = _raw_lines(f, path, hasher)
    if kind == "csv":
        from launcher.manifest.csv_rows import _scan_csv

        return _scan_csv(lines, path, check)
    # Bytes a verifier vouches for passed the repeated-key check when validated.
    return _scan_jsonl(lines, path, check, share, keys=not isinstance(hasher, _Verifier))
