"""JSONL, the contract: one JSON object per line, each checked by `_Checker.job`."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from launcher.manifest.json_keys import duplicate_key
from launcher.manifest.lines import _BOM, _too_long, _utf8_problem
from launcher.manifest.records import Problem, _Record
from launcher.manifest.rules import _Checker, _kind, _show

__all__ = ["_count_jsonl", "_scan_jsonl"]


def _scan_jsonl(
    lines: Iterator[bytes | None],
    path: str,
    check: _Checker,
    share: tuple[int, int] | None = None,
    *,
    keys: bool = True,
) -> Iterator[_Record | Problem]:
    """`keys`: look for repeated keys (off only for bytes already validated with it on)."""
    loads = orjson.loads
    job = check.job
    lineno = 0
    index, count = share or (0, 1)
    ordinal = -1  # jobs seen, for `share`: blank and comment lines are not jobs
    for raw in lines:
        lineno += 1
        if count > 1 and raw is not None:
            head = raw.lstrip()
            if not head or head[0] == 0x23:  # '#'
                continue
            ordinal += 1
            if ordinal % count != index:
                continue  # another worker's job: not even parsed
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
        if keys:
            # No key can repeat when the line has no more colons (or, when no
            # escaped quote or whitespace before a colon can skew that count, no
            # more `":`) than the keys counted: see `duplicate_key`, whose two
            # first tests are made inline here for the common job.
            counted = len(obj)
            colons = raw.count(b":")
            if colons > counted:
                params = obj.get("params")
                if type(params) is dict:
                    counted += len(params)
                if colons > counted and (
                    raw.count(b'":') > counted
                    or b'\\"' in raw
                    or b" :" in raw
                    or b"\t:" in raw
                    or b"\r:" in raw
                ):
                    repeated = duplicate_key(raw, obj)
                    if repeated is not None:
                        yield _repeated_key(path, lineno, repeated)
                        continue
        result = job(obj, lineno)
        if isinstance(result, list):
            yield from result
        else:
            yield result


def _count_jsonl(lines: Iterator[bytes | None]) -> int | None:
    """The jobs of a valid JSONL manifest, all of wave 0, from its lines alone: those
    neither blank nor comments (the rule `_scan_jsonl` skips lines by). Nothing is
    parsed (~0.15 s a million lines). None when a count cannot say it all: a line over
    the cap (not valid), or one that may name a wave (`"wave"`, or an escape
    `\\u00XX` that could spell it): then the manifest is validated for its waves.
    """
    count = 0
    for raw in lines:
        if raw is None:
            return None
        head = raw.lstrip()
        if head and head[0] != 0x23:  # '#'
            if b'"wave"' in raw or b"\\u00" in raw:
                return None
            count += 1
    return count


def _repeated_key(path: str, line: int, field: str) -> Problem:
    return Problem(
        path, line, _show(field), "the same key twice in one object (JSON would keep only the last)"
    )


def _json_problem(path: str, line: int, raw: bytes, exc: orjson.JSONDecodeError) -> Problem:
    # orjson reports bad UTF-8 as a JSON error without a position; find it.
    try:
        raw.decode()
    except UnicodeDecodeError as bad:
        return _utf8_problem(path, line, raw, bad)
    return Problem(path, line, "json", f"invalid JSON: {exc.msg} (column {exc.colno})")
