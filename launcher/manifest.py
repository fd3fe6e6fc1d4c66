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
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import re
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, Final, Literal, NamedTuple, Protocol

import orjson
import yaml

from launcher.errors import ManifestInvalid, UsageError
from launcher.models import ACTIONS, Action, Job, JobParam, job_identity

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_PARAM_NAME",
    "MAX_PARAM_VALUE",
    "Defaults",
    "Problem",
    "Validation",
    "detect_format",
    "file_sha256",
    "iter_jobs",
    "scan",
    "validate",
]

Format = Literal["jsonl", "csv", "yaml"]

MAX_PARAM_NAME: Final = 64  # DLF API: "It cannot exceed 64 characters."
MAX_PARAM_VALUE: Final = 1024  # DLF API: "It cannot exceed 1024 characters."
# Longer lines are reported, not parsed, so that one runaway line (a binary file,
# a missing newline) cannot make the reader hold unbounded memory.
MAX_LINE_BYTES: Final = 16 << 20

_CHUNK: Final = 1 << 20
_BOM: Final = b"\xef\xbb\xbf"
_FIELDS: Final = ("name", "params", "workspace", "project_id", "id", "action")
_FIELD_SET: Final = frozenset(_FIELDS)
_ENTRY_KEYS: Final = ("name", "value", "paramType")
_ENTRY_KEY_SET: Final = frozenset(_ENTRY_KEYS)
_PARAM_TYPES: Final = ("variable", "constants")
_CSV_FIELDS: Final = ("name", "workspace", "project_id", "id", "action")
_CSV_COLUMNS: Final = (*_CSV_FIELDS, "params")
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

# C0, DEL and C1: never meaningful in a job name or id, and a CR/LF in a value
# that becomes an HTTP header would be header injection.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_OR_SPACE: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_NO_SPACE: Final = "whitespace or control characters"
_PARAM_COLUMN_TYPO: Final = re.compile(r"(?i)params?[\W_]+(\S.*)")
_PLAIN_KEY: Final = re.compile(r"[\w.:-]+")

_YAML_KINDS: Final[Mapping[str, str]] = {
    "tag:yaml.org,2002:int": "number",
    "tag:yaml.org,2002:float": "number",
    "tag:yaml.org,2002:bool": "boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "date",
    "tag:yaml.org,2002:binary": "binary",
}
_YAML_STR: Final = "tag:yaml.org,2002:str"
_YAML_MERGE: Final = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Defaults:
    """The run's defaults for manifest lines that name no project or workspace."""

    project_id: str | None = None
    workspace: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one manifest line (or YAML node)."""

    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class Validation:
    """The result of `validate`: counts, the first problems, and the file's hash."""

    path: str
    jobs: int  # valid jobs counted
    problems: tuple[Problem, ...]  # the first `max_listed`
    problem_count: int
    sha256: str  # hex SHA-256 of the file's bytes

    def raise_if_invalid(self) -> None:
        """Raise `ManifestInvalid` listing the first problems, if there are any."""
        if self.problem_count:
            raise ManifestInvalid([str(p) for p in self.problems], self.problem_count)


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


class _Scalar(NamedTuple):
    """A YAML scalar that is not a string: kept as its source text for messages."""

    kind: str  # "number", "boolean", "null", "date", ...
    text: str


# A parameter as the checker keeps it: (name, value, paramType).
_Param = tuple[str, str, str | None]
# One valid job as the scanners yield it: (name, params, workspace, project_id,
# id, action, line), defaults applied. Plain tuples, not `Job`s: `validate`
# needs no Job objects, and building them (and their JobParams) would be most
# of its time; `scan` builds them.
_Record = tuple[str, list[_Param], str | None, str | None, str | None, Action | None, int]


# --- public API ---------------------------------------------------------------


def detect_format(path: str | Path) -> Format:
    """The manifest format implied by the file name's suffix (JSONL when unknown)."""
    return _SUFFIXES.get(Path(path).suffix.lower(), "jsonl")


def scan(
    path: str | Path, defaults: Defaults = Defaults(), *, fmt: str | None = None
) -> Iterator[Job | Problem]:
    """Stream the manifest: one Job per valid job line, one or more Problem per bad line.

    There is no cross-line check (duplicate jobs or ids) here; `validate` adds it.
    `Job.id` is the manifest's `id` or `job_identity(project, workspace, name,
    params)` with defaults applied; `Job.line` is the 1-based line; `Job.action`
    is as given or None. Defaults fill project_id/workspace when the line has none.
    Raises `UsageError` at once if the file cannot be opened.
    """
    kind = _resolve_format(path, fmt)
    _check_defaults(defaults)
    f = _open(path)
    return _scan_jobs(f, str(path), kind, defaults)


def validate(
    path: str | Path,
    defaults: Defaults = Defaults(),
    *,
    allow_duplicates: bool = False,
    max_listed: int = 20,
    fmt: str | None = None,
) -> Validation:
    """Check every rule, plus duplicate jobs and ids, in one streaming pass.

    The SHA-256 covers the file's raw bytes and is computed in the same pass, so
    it describes exactly the bytes that were checked.
    """
    kind = _resolve_format(path, fmt)
    _check_defaults(defaults)
    name = str(path)
    hasher = hashlib.sha256()
    listed: list[Problem] = []
    count = 0
    jobs = 0
    seen_jobs = _FirstLines()
    seen_ids = _FirstLines()
    sha256 = hashlib.sha256
    dumps = orjson.dumps
    with _open(path) as f:
        for item in _scan(f, name, kind, defaults, hasher):
            if isinstance(item, tuple):
                job_name, params, workspace, project_id, jid, _, line = item
                problems: list[Problem] = []
                if jid is not None:
                    first = seen_ids.add(_key64(jid), line)
                    if first:
                        message = f"duplicate id {_quote(jid)}, first used on line {first}"
                        problems.append(Problem(name, line, "id", message))
                if not allow_duplicates:
                    # The canonical form `job_identity` hashes, so this key is the
                    # identity's first 64 bits, without building Job objects.
                    canonical = dumps((project_id, workspace, job_name, params))
                    key = int.from_bytes(sha256(canonical).digest()[:8], "big")
                    first = seen_jobs.add(key, line)
                    if first:
                        message = (
                            f"duplicate of the job on line {first} "
                            "(same project, workspace, name and params)"
                        )
                        problems.append(Problem(name, line, "job", message))
                if not problems:
                    jobs += 1
                    continue
            else:
                problems = [item]
            for problem in problems:
                count += 1
                if len(listed) < max_listed:
                    listed.append(problem)
    return Validation(name, jobs, tuple(listed), count, hasher.hexdigest())


def iter_jobs(
    path: str | Path, defaults: Defaults = Defaults(), *, fmt: str | None = None
) -> Iterator[Job]:
    """Stream Jobs from an already validated manifest; raise `ManifestInvalid` on any Problem.

    Meant for the pass after `validate`, so a Problem here means the file changed
    in between: the iterator raises at that line instead of skipping it. Opening
    happens now, so a missing file raises `UsageError` before the first job.
    """
    return _only_jobs(scan(path, defaults, fmt=fmt))


def _only_jobs(items: Iterator[Job | Problem]) -> Iterator[Job]:
    for item in items:
        if isinstance(item, Problem):
            raise ManifestInvalid([str(item)], 1)
        yield item


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes (raises `UsageError` if it cannot be read)."""
    hasher = hashlib.sha256()
    with _open(path) as f:
        for _ in _chunks(f, str(path), hasher):
            pass
    return hasher.hexdigest()


# --- files and lines ----------------------------------------------------------


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


def _open(path: str | Path) -> IO[bytes]:
    try:
        return open(path, "rb")  # the caller closes it
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _raw_lines(f: IO[bytes], path: str, hasher: _Hasher | None) -> Iterator[bytes | None]:
    """The file's lines without their b"\\n", or None for a line over MAX_LINE_BYTES.

    Reads fixed-size chunks (hashing each) and splits them itself: faster than
    iterating the file object, and memory stays one chunk plus one line.
    """
    tail = b""
    overlong = False
    for chunk in _chunks(f, path, hasher):
        parts = chunk.split(b"\n")
        rest = parts.pop()
        if parts:
            if overlong:
                overlong = False
                yield None
            else:
                head = tail + parts[0] if tail else parts[0]
                yield head if len(head) <= MAX_LINE_BYTES else None
            yield from islice(parts, 1, None)
            tail = rest
        elif not overlong:
            tail += rest
        if len(tail) > MAX_LINE_BYTES:
            overlong = True
            tail = b""
    if overlong:
        yield None
    elif tail:
        yield tail


def _scan_jobs(
    f: IO[bytes], path: str, kind: Format, defaults: Defaults
) -> Iterator[Job | Problem]:
    with f:
        for item in _scan(f, path, kind, defaults, None):
            yield _job(item) if isinstance(item, tuple) else item


def _job(record: _Record) -> Job:
    name, raw_params, workspace, project_id, jid, action, line = record
    params = tuple(JobParam(n, v, t) for n, v, t in raw_params)
    return Job(
        id=jid or job_identity(project_id, workspace, name, params),
        name=name,
        params=params,
        workspace=workspace,
        project_id=project_id,
        line=line,
        action=action,
    )


def _scan(
    f: IO[bytes], path: str, kind: Format, defaults: Defaults, hasher: _Hasher | None
) -> Iterator[_Record | Problem]:
    check = _Checker(path, defaults)
    if kind == "yaml":
        data = b"".join(_chunks(f, path, hasher))
        return _scan_yaml(data, path, check)
    lines = _raw_lines(f, path, hasher)
    if kind == "csv":
        return _scan_csv(lines, path, check)
    return _scan_jsonl(lines, path, check)


def _chunks(f: IO[bytes], path: str, hasher: _Hasher | None) -> Iterator[bytes]:
    """The file in fixed-size chunks, each fed to `hasher` on the way."""
    while True:
        try:
            chunk = f.read(_CHUNK)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        if not chunk:
            return
        if hasher is not None:
            hasher.update(chunk)
        yield chunk


def _utf8_problem(path: str, line: int, raw: bytes, exc: UnicodeDecodeError) -> Problem:
    return Problem(
        path,
        line,
        "line",
        f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
    )


def _too_long(path: str, line: int) -> Problem:
    return Problem(path, line, "line", f"longer than {MAX_LINE_BYTES} bytes; not read")


# --- JSONL --------------------------------------------------------------------


def _scan_jsonl(
    lines: Iterator[bytes | None], path: str, check: _Checker
) -> Iterator[_Record | Problem]:
    loads = orjson.loads
    job = check.job
    lineno = 0
    for raw in lines:
        lineno += 1
        if raw is None:
            yield _too_long(path, lineno)
            continue
        # Parse first and look at blank/comment/BOM lines only on failure: the
        # common line is a job, and this keeps its path to a single call.
        try:
            obj = loads(raw)
        except orjson.JSONDecodeError as exc:
            stripped = raw.strip()
            if not stripped or stripped[0] == 0x23:  # '#'
                continue
            if lineno == 1 and raw.startswith(_BOM):
                try:
                    obj = loads(raw[3:])
                except orjson.JSONDecodeError:
                    yield _json_problem(path, lineno, raw, exc)
                    continue
            else:
                yield _json_problem(path, lineno, raw, exc)
                continue
        if type(obj) is not dict:
            yield Problem(
                path, lineno, "json", f"expected a JSON object (one per line), got {_kind(obj)}"
            )
            continue
        result = job(obj, lineno)
        if isinstance(result, list):
            yield from result
        else:
            yield result


def _json_problem(path: str, line: int, raw: bytes, exc: orjson.JSONDecodeError) -> Problem:
    # orjson reports bad UTF-8 as a JSON error without a position; find it.
    try:
        raw.decode()
    except UnicodeDecodeError as bad:
        return _utf8_problem(path, line, raw, bad)
    return Problem(path, line, "json", f"invalid JSON: {exc.msg} (column {exc.colno})")


# --- CSV ----------------------------------------------------------------------


class _CsvSource:
    """Feeds `csv.reader` decoded lines, tracking where each record starts.

    Before each record the scanner sets `at_start`; comment and blank lines are
    skipped only there, so a `#` or blank line inside a quoted cell stays data.
    """

    def __init__(self, lines: Iterator[bytes | None], path: str) -> None:
        self.lines = lines
        self.path = path
        self.lineno = 0
        self.start = 0
        self.at_start = True
        self.bad: list[Problem] = []

    def __iter__(self) -> _CsvSource:
        return self

    def __next__(self) -> str:
        for raw in self.lines:
            self.lineno += 1
            if raw is None:
                self.bad.append(_too_long(self.path, self.lineno))
                text = ""
            else:
                if self.lineno == 1 and raw.startswith(_BOM):
                    raw = raw[3:]
                if self.at_start:
                    s = raw.lstrip()
                    if not s or s[0] == 0x23:  # blank or '#'
                        continue
                try:
                    text = raw.decode()
                except UnicodeDecodeError as exc:
                    self.bad.append(_utf8_problem(self.path, self.lineno, raw, exc))
                    text = raw.decode(errors="replace")
            if self.at_start:
                self.at_start = False
                self.start = self.lineno
            return text + "\n"
        raise StopIteration


class _Column(NamedTuple):
    kind: Literal["field", "param", "params"]
    arg: str  # the field name, or the parameter name
    label: str  # the column as messages name it


def _scan_csv(
    lines: Iterator[bytes | None], path: str, check: _Checker
) -> Iterator[_Record | Problem]:
    src = _CsvSource(lines, path)
    # strict: a stray quote is an error instead of silently becoming data.
    reader = csv.reader(src, strict=True)
    layout: list[_Column] | None = None
    while True:
        src.at_start = True
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            message = str(exc)
            if "unexpected end of data" in message:
                message += " (a quoted cell is not closed)"
            yield from src.bad
            src.bad.clear()
            yield Problem(path, src.start, "csv", message)
            if layout is None:
                break
            continue
        if src.bad:
            yield from src.bad
            src.bad.clear()
            if layout is None:
                break
            continue
        if layout is None:
            layout, problems = _csv_layout(row, path, src.start)
            if problems:
                yield from problems
                break
            continue
        if not any(row):
            continue
        result = check.csv_row(row, layout, src.start)
        if isinstance(result, list):
            yield from result
        else:
            yield result
    # Header unusable: every row would fail the same way, so say it once; read
    # on only so that `validate`'s hash covers the whole file.
    for _ in lines:
        pass


def _csv_layout(row: list[str], path: str, line: int) -> tuple[list[_Column], list[Problem]]:
    layout: list[_Column] = []
    problems: list[Problem] = []
    first: dict[tuple[str, str], int] = {}
    for number, cell in enumerate(row, 1):
        label = cell.strip()
        column: _Column | None = None
        if label in _CSV_FIELDS:
            column = _Column("field", label, label)
        elif label == "params":
            column = _Column("params", "", label)
        elif label.startswith("param:"):
            pname = label[6:].strip()
            if not pname:
                problems.append(
                    Problem(path, line, _show(label), "parameter column without a name")
                )
            elif len(pname) > MAX_PARAM_NAME:
                problems.append(Problem(path, line, _show(label), _too_long_name(pname)))
            else:
                column = _Column("param", pname, label)
        elif not label:
            problems.append(Problem(path, line, f"column {number}", "empty column name"))
        else:
            problems.append(Problem(path, line, _show(label), _unknown_column(label)))
        if column is None:
            continue
        key = (column.kind, column.arg)
        if key in first:
            problems.append(
                Problem(path, line, _show(label), f"duplicate column (also column {first[key]})")
            )
            continue
        first[key] = number
        layout.append(column)
    if not problems and ("field", "name") not in first:
        problems.append(Problem(path, line, "header", 'no "name" column'))
    return layout, problems


def _unknown_column(label: str) -> str:
    typo = _PARAM_COLUMN_TYPO.fullmatch(label)
    if typo:
        return f'unknown column; did you mean "param:{typo.group(1)}"?'
    return _unknown(label, (*_CSV_COLUMNS, "param:NAME"), "column")


# --- YAML ---------------------------------------------------------------------


def _scan_yaml(data: bytes, path: str, check: _Checker) -> Iterator[_Record | Problem]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        begin = data.rfind(b"\n", 0, exc.start) + 1
        yield Problem(
            path,
            line,
            "line",
            f"invalid UTF-8 (byte 0x{data[exc.start]:02x} at column {exc.start - begin + 1})",
        )
        return
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(str(s) for s in (exc.context, exc.problem) if s) or str(exc)
        if mark is not None:
            yield Problem(path, mark.line + 1, "yaml", f"{what} (column {mark.column + 1})")
        else:
            yield Problem(path, 1, "yaml", what)
        return
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        yield Problem(path, line, "yaml", f"character U+{exc.character:04X} is not allowed")
        return
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error is one of the above
        yield Problem(path, 1, "yaml", str(exc))
        return
    except RecursionError:
        # PyYAML composes recursively: `[[[[...` a thousand deep exhausts the stack.
        yield Problem(path, 1, "yaml", "nested too deeply")
        return
    if root is None:
        return
    walker = _YamlWalker(path)
    items: yaml.Node = root
    if isinstance(root, yaml.MappingNode):
        top = walker.mapping(root, "")
        for key, (_, key_line) in top.items():
            if key != "jobs" and not key.startswith("x-"):
                message = _unknown(key, ("jobs",), "top-level key")
                walker.problems.append(
                    Problem(path, key_line, _show(key), f"{message} (anchors go under x-... keys)")
                )
        yield from walker.take()
        if "jobs" not in top:
            yield Problem(path, _line(root), "jobs", "required: the list of jobs")
            return
        items = top["jobs"][0]
        if _yaml_kind(items) == "null":
            return
    if not isinstance(items, yaml.SequenceNode):
        yield Problem(
            path,
            _line(items),
            "jobs",
            f"expected a list of jobs, got {_yaml_kind(items)}",
        )
        return
    for node in items.value:
        if not isinstance(node, yaml.MappingNode):
            yield Problem(path, _line(node), "job", f"expected a mapping, got {_yaml_kind(node)}")
            continue
        obj, at = walker.job(node)
        structural = walker.take()
        result = check.job(obj, _line(node), at)
        if structural:
            yield from structural
            if isinstance(result, list):
                yield from result
        elif isinstance(result, list):
            yield from result
        else:
            yield result


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _yaml_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "object"
    if isinstance(node, yaml.SequenceNode):
        return "array"
    if node.tag == _YAML_STR:
        return "string"
    return _YAML_KINDS.get(node.tag, f"value tagged {node.tag}")


class _YamlWalker:
    """Turns YAML nodes into the plain values `_Checker` expects, with a line per field.

    Only the levels a job has are converted (job → params → entry → scalar);
    deeper values become empty containers, which is all a "must be a string"
    message needs, and which keeps recursive alias graphs from looping.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []

    def take(self) -> list[Problem]:
        problems, self.problems = self.problems, []
        return problems

    def job(self, node: yaml.MappingNode) -> tuple[dict[str, Any], dict[str, int]]:
        obj: dict[str, Any] = {}
        at: dict[str, int] = {}
        for key, (value, line) in self.mapping(node, "").items():
            at[key] = line
            if key == "params":
                obj[key] = self.params(value, at)
            else:
                obj[key] = self.leaf(value, key)
        return obj, at

    def params(self, node: yaml.Node, at: dict[str, int]) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key, (value, line) in self.mapping(node, "params").items():
                field = f"params.{key}"
                at[field] = line
                out[key] = self.leaf(value, field)
            return out
        if isinstance(node, yaml.SequenceNode):
            entries: list[Any] = []
            for i, item in enumerate(node.value):
                prefix = f"params[{i}]"
                at[prefix] = _line(item)
                if isinstance(item, yaml.MappingNode):
                    entry: dict[str, Any] = {}
                    for key, (value, line) in self.mapping(item, prefix).items():
                        field = f"{prefix}.{key}"
                        at[field] = line
                        entry[key] = self.leaf(value, field)
                    entries.append(entry)
                else:
                    entries.append(self.leaf(item, prefix))
            return entries
        return self.leaf(node, "params")

    def leaf(self, node: yaml.Node, field: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            return {}
        if isinstance(node, yaml.SequenceNode):
            return []
        value = str(node.value)
        if node.tag != _YAML_STR:
            return _Scalar(_yaml_kind(node), value)
        try:
            value.encode()
        except UnicodeEncodeError:
            # A "\ud800" escape in a double-quoted scalar: no UTF-8 form to send.
            self.problems.append(
                Problem(self.path, _line(node), _show(field), "contains a lone surrogate")
            )
            return value.encode(errors="replace").decode()
        return value

    def mapping(
        self, node: yaml.MappingNode, prefix: str, depth: int = 0
    ) -> dict[str, tuple[yaml.Node, int]]:
        """The mapping's keys (as written) → (value node, key line), merges applied.

        PyYAML's own constructor would silently keep the last of two equal keys
        and type keys (`yes:` → True); here a repeated key is an error and a key
        is the text the user wrote.
        """
        own: dict[str, tuple[yaml.Node, int]] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            line = _line(key_node)
            if key_node.tag == _YAML_MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    Problem(self.path, line, prefix or "job", "a key must be plain text")
                )
                continue
            key = str(key_node.value)
            if key in own:
                self.problems.append(
                    Problem(
                        self.path,
                        line,
                        _show(f"{prefix}.{key}" if prefix else key),
                        f"duplicate key (first on line {own[key][1]})",
                    )
                )
                continue
            own[key] = (value_node, line)
        if not merges:
            return own
        # YAML merge keys as PyYAML applies them: the mapping's own keys win,
        # then earlier merge sources over later ones.
        sources: list[yaml.Node] = []
        for merge in merges:
            sources.extend(merge.value if isinstance(merge, yaml.SequenceNode) else [merge])
        merged: dict[str, tuple[yaml.Node, int]] = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode) or depth > 20:
                self.problems.append(
                    Problem(
                        self.path,
                        _line(source),
                        prefix or "job",
                        "<< must merge a mapping (or a list of mappings)",
                    )
                )
                continue
            merged.update(self.mapping(source, prefix, depth + 1))
        merged.update(own)
        return merged


# --- the rules ----------------------------------------------------------------


class _Checker:
    """Applies the field rules to one job: its `_Record`, or its Problems."""

    def __init__(self, path: str, defaults: Defaults) -> None:
        self.path = path
        self.defaults = defaults

    def job(
        self, obj: dict[str, Any], line: int, at: Mapping[str, int] | None = None
    ) -> _Record | list[Problem]:
        """A JSON or YAML job mapping: `at` gives YAML's line per field."""
        errs: list[tuple[str, str]] = []
        if not (obj.keys() <= _FIELD_SET):
            errs.extend(
                (key, _unknown(key, _FIELDS, "field")) for key in obj if key not in _FIELD_SET
            )
        params: list[_Param] = []
        value = obj.get("params")
        if value is not None:
            self.json_params(value, "params", errs, params, None)
        return self.finish(obj, params, errs, line, at)

    def csv_row(self, row: list[str], layout: list[_Column], line: int) -> _Record | list[Problem]:
        """One CSV data row under the header's `layout`."""
        if len(row) != len(layout):
            return [
                Problem(
                    self.path,
                    line,
                    "row",
                    f"has {len(row)} cells, the header has {len(layout)}",
                )
            ]
        errs: list[tuple[str, str]] = []
        fields: dict[str, str] = {}
        params: list[_Param] = []
        seen: dict[str, str] = {}
        for column, cell in zip(layout, row, strict=True):
            if not cell:
                continue
            if column.kind == "field":
                fields[column.arg] = cell
            elif column.kind == "param":
                if len(cell) > MAX_PARAM_VALUE:
                    errs.append((column.label, _too_long_value(cell)))
                elif column.arg in seen:
                    errs.append((column.label, _duplicate_param(column.arg, seen)))
                else:
                    seen[column.arg] = f"column {column.label}"
                    params.append((column.arg, cell, None))
            else:
                try:
                    value = orjson.loads(cell)
                except orjson.JSONDecodeError as exc:
                    errs.append(("params", f"invalid JSON: {exc.msg} (column {exc.colno})"))
                else:
                    if value is not None:
                        self.json_params(value, "params", errs, params, seen)
        return self.finish(fields, params, errs, line, None)

    def json_params(
        self,
        value: Any,
        prefix: str,
        errs: list[tuple[str, str]],
        out: list[_Param],
        seen: dict[str, str] | None,
    ) -> None:
        """Check `params` in its JSON form (object or list), appending to `out`.

        `seen` maps the names so far to where they were set; None means no other
        source of parameters, so an object's keys cannot repeat and go unchecked.
        """
        if type(value) is dict:
            for pname, pvalue in value.items():
                if (
                    type(pvalue) is str
                    and 0 < len(pname) <= MAX_PARAM_NAME
                    and len(pvalue) <= MAX_PARAM_VALUE
                    and (seen is None or pname not in seen)
                ):
                    if seen is not None:
                        seen[pname] = f"{prefix}.{pname}"
                    out.append((pname, pvalue, None))
                    continue
                field = f"{prefix}.{pname}"
                if not pname:
                    errs.append((field, "parameter name must not be empty"))
                elif len(pname) > MAX_PARAM_NAME:
                    errs.append((field, _too_long_name(pname)))
                if type(pvalue) is not str:
                    errs.append((field, _not_string(pvalue)))
                elif len(pvalue) > MAX_PARAM_VALUE:
                    errs.append((field, _too_long_value(pvalue)))
                elif seen is not None and pname in seen:
                    errs.append((field, _duplicate_param(pname, seen)))
        elif type(value) is list:
            if seen is None:
                seen = {}
            for i, entry in enumerate(value):
                self.entry(entry, f"{prefix}[{i}]", errs, out, seen)
        elif _is_null(value):
            pass
        else:
            errs.append((prefix, f"must be an object or a list, got {_kind(value)}"))

    def entry(
        self,
        entry: Any,
        prefix: str,
        errs: list[tuple[str, str]],
        out: list[_Param],
        seen: dict[str, str],
    ) -> None:
        """One `{"name", "value", "paramType"?}` entry of the list form."""
        if type(entry) is not dict:
            errs.append((prefix, f'expected an object with "name" and "value", got {_kind(entry)}'))
            return
        n_errs = len(errs)
        if not (entry.keys() <= _ENTRY_KEY_SET):
            errs.extend(
                (f"{prefix}.{key}", _unknown(key, _ENTRY_KEYS, "key"))
                for key in entry
                if key not in _ENTRY_KEY_SET
            )
        pname = entry.get("name")
        if _is_null(pname):
            errs.append((f"{prefix}.name", "required"))
        elif type(pname) is not str:
            errs.append((f"{prefix}.name", _not_string(pname)))
        elif not pname:
            errs.append((f"{prefix}.name", "must not be empty"))
        elif len(pname) > MAX_PARAM_NAME:
            errs.append((f"{prefix}.name", _too_long_name(pname)))
        pvalue = entry.get("value")
        if "value" not in entry:
            errs.append((f"{prefix}.value", "required"))
        elif type(pvalue) is not str:
            errs.append((f"{prefix}.value", _not_string(pvalue)))
        elif len(pvalue) > MAX_PARAM_VALUE:
            errs.append((f"{prefix}.value", _too_long_value(pvalue)))
        ptype = entry.get("paramType")
        if _is_null(ptype):
            ptype = None
        elif ptype not in _PARAM_TYPES:
            errs.append(
                (
                    f"{prefix}.paramType",
                    f"must be variable or constants, got {_describe(ptype)}",
                )
            )
        if type(pname) is str and pname:
            # Checked even when the entry has other faults: one fix round, not two.
            if pname in seen:
                errs.append((f"{prefix}.name", _duplicate_param(pname, seen)))
            else:
                seen[pname] = prefix
        if len(errs) > n_errs or type(pname) is not str or type(pvalue) is not str:
            return  # (the type tests only narrow: a non-string was reported above)
        out.append((pname, pvalue, ptype))

    def finish(
        self,
        obj: Mapping[str, Any],
        params: list[_Param],
        errs: list[tuple[str, str]],
        line: int,
        at: Mapping[str, int] | None,
    ) -> _Record | list[Problem]:
        """Check the scalar fields, apply defaults, and make the record (or the Problems)."""
        # Any: JSON and YAML give anything here; the tests below narrow it.
        name: Any = obj.get("name")
        workspace: Any = obj.get("workspace")
        project_id: Any = obj.get("project_id")
        jid: Any = obj.get("id")
        action: Any = obj.get("action")
        # Each test starts with the common case (a clean string) so that a good
        # line costs a few C calls; the slow branches sort out null and errors.
        if not (type(name) is str and name and name.isprintable()):
            if _is_null(name):
                errs.append(("name", "required"))
            else:
                _check_into(errs, "name", name, _CONTROL, "control characters")
        if workspace is None:
            workspace = self.defaults.workspace
        elif not (
            type(workspace) is str
            and workspace
            and workspace.isprintable()
            and " " not in workspace
        ):
            if _is_null(workspace):
                workspace = self.defaults.workspace
            else:
                _check_into(errs, "workspace", workspace, _CONTROL_OR_SPACE, _NO_SPACE)
        if project_id is None:
            project_id = self.defaults.project_id
        elif not (
            type(project_id) is str
            and project_id
            and project_id.isprintable()
            and " " not in project_id
        ):
            if _is_null(project_id):
                project_id = self.defaults.project_id
            else:
                _check_into(errs, "project_id", project_id, _CONTROL_OR_SPACE, _NO_SPACE)
        if jid is not None and not (type(jid) is str and jid and jid.isprintable()):
            if _is_null(jid):
                jid = None
            else:
                _check_into(errs, "id", jid, _CONTROL, "control characters")
        if action is not None and (action not in ACTIONS or type(action) is not str):
            if _is_null(action):
                action = None
            else:
                errs.append(
                    ("action", f"must be one of {', '.join(ACTIONS)}; got {_describe(action)}")
                )
        if not errs:
            return (name, params, workspace, project_id, jid, action, line)
        path = self.path
        if at is None:
            return [Problem(path, line, _show(field), message) for field, message in errs]
        return [
            Problem(path, at.get(field, line), _show(field), message) for field, message in errs
        ]


# --- messages -----------------------------------------------------------------


def _is_null(value: Any) -> bool:
    return value is None or (type(value) is _Scalar and value.kind == "null")


def _kind(value: Any) -> str:
    if type(value) is _Scalar:
        return value.kind
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__  # pragma: no cover - JSON and YAML give no other kind


def _describe(value: Any) -> str:
    """`value` for a message: a quoted string, or its kind and source text."""
    if type(value) is str:
        return _quote(value)
    if _is_null(value):
        return "null"
    if type(value) is _Scalar:
        return f"{value.kind} {value.text}" if value.text else value.kind
    if isinstance(value, bool | int | float):
        return f"{_kind(value)} {orjson.dumps(value).decode()}"
    return _kind(value)


def _not_string(value: Any) -> str:
    """The message for a non-string where a string belongs, with the fix when there is one."""
    if type(value) is _Scalar:
        text: str | None = value.text
    elif value is None or isinstance(value, bool | int | float):
        text = orjson.dumps(value).decode()
    else:
        text = None
    if text is None:
        return f"must be a string, got {_kind(value)}"
    return f"must be a string, got {_describe(value)}; quote it: {_quote(text)}"


def _check_into(
    errs: list[tuple[str, str]], field: str, value: Any, bad: re.Pattern[str], what: str
) -> None:
    message = _check_text(value, bad, what)
    if message:
        errs.append((field, message))


def _check_text(value: Any, bad: re.Pattern[str], what: str) -> str | None:
    """None if `value` is a non-empty string free of `bad` characters, else why not."""
    if type(value) is not str:
        return _not_string(value)
    if not value:
        return "must not be empty"
    found = bad.search(value)
    if found is None:
        return None
    return f"must not contain {what} (U+{ord(found.group()):04X} at character {found.start() + 1})"


def _too_long_name(pname: str) -> str:
    return f"parameter name is {len(pname)} characters, at most {MAX_PARAM_NAME} allowed"


def _too_long_value(pvalue: str) -> str:
    return f"value is {len(pvalue)} characters, at most {MAX_PARAM_VALUE} allowed"


def _duplicate_param(pname: str, seen: Mapping[str, str]) -> str:
    return f"duplicate parameter {_quote(pname)} (also {seen[pname]})"


def _unknown(key: str, choices: tuple[str, ...], what: str) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    if close:
        return f'unknown {what}; did you mean "{close[0]}"?'
    return f"unknown {what} (expected {', '.join(choices)})"


def _quote(text: str, limit: int = 60) -> str:
    """`text` as a JSON string for a message: escapes control characters, shortened."""
    if len(text) > limit:
        return orjson.dumps(text[:limit]).decode()[:-1] + '..."'
    return orjson.dumps(text).decode()


def _show(field: str) -> str:
    """A field path fit for a one-line message: odd characters escaped, length capped."""
    if _PLAIN_KEY.fullmatch(field) or (field.isprintable() and len(field) <= 80):
        return field
    return _quote(field, 80)


def _key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _FirstLines:
    """A set of 64-bit keys, each with the line it was first seen on.

    A dict[int, int] costs ~110 bytes a job (two int objects plus the table);
    this open-addressing table in two flat arrays costs 12 bytes a slot at a
    load of 1/4-1/2, so a million jobs fit in 25-50 MB.
    """

    __slots__ = ("count", "keys", "limit", "lines", "mask")

    def __init__(self, bits: int = 12) -> None:
        size = 1 << bits
        self.keys = array("Q", bytes(8 * size))  # 0 marks an empty slot
        self.lines = array("I", bytes(4 * size))
        self.mask = size - 1
        self.limit = size >> 1
        self.count = 0

    def add(self, key: int, line: int) -> int:
        """Record `key` first seen on `line`; return 0 if new, else its first line."""
        key = key or 1  # 0 is the empty marker; one more alias among 2^64 is harmless
        keys = self.keys
        mask = self.mask
        i = key & mask
        while True:
            k = keys[i]
            if k == 0:
                keys[i] = key
                self.lines[i] = line
                self.count += 1
                if self.count > self.limit:
                    self._grow()
                return 0
            if k == key:
                return self.lines[i]
            i = (i + 1) & mask

    def _grow(self) -> None:
        old_keys, old_lines = self.keys, self.lines
        size = (self.mask + 1) * 2
        keys = array("Q", bytes(8 * size))
        lines = array("I", bytes(4 * size))
        mask = size - 1
        for j, k in enumerate(old_keys):
            if k:
                i = k & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i] = k
                lines[i] = old_lines[j]
        self.keys, self.lines, self.mask, self.limit = keys, lines, mask, size >> 1
