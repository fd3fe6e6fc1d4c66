"""The field rules: one job's fields in; its `_Record` (defaults applied) or its Problems out.

Every format ends here. JSONL and YAML give `_Checker.job` a mapping (YAML's
with a line per field), CSV gives `_Checker.csv_row` a row and the header's
layout; both meet in `_Checker.finish`. The message helpers below are shared
with the format scanners, so every format words the same fault the same way.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

from launcher.manifest.json_keys import duplicate_key
from launcher.manifest.records import Defaults, Problem, _Column, _Param, _Record, _Scalar
from launcher.models import ACTIONS

__all__ = [
    "MAX_PARAM_NAME",
    "MAX_PARAM_VALUE",
    "MAX_WAVE",
    "_CONTROL_OR_SPACE",
    "_Checker",
    "_check_text",
    "_kind",
    "_quote",
    "_show",
    "_too_long_name",
    "_unknown",
]

MAX_PARAM_NAME: Final = 64  # DLF API: "It cannot exceed 64 characters."
MAX_PARAM_VALUE: Final = 1024  # DLF API: "It cannot exceed 1024 characters."
_FIELDS: Final = ("name", "params", "workspace", "project_id", "id", "action", "wave")
MAX_WAVE: Final = 1_000_000
_FIELD_SET: Final = frozenset(_FIELDS)
_ENTRY_KEYS: Final = ("name", "value", "paramType")
_ENTRY_KEY_SET: Final = frozenset(_ENTRY_KEYS)
_PARAM_TYPES: Final = ("variable", "constants")

# C0, DEL and C1: never meaningful in a job name or id, and a CR/LF in a value
# that becomes an HTTP header would be header injection.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_OR_SPACE: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_NO_SPACE: Final = "whitespace or control characters"
_PLAIN_KEY: Final = re.compile(r"[\w.:-]+")
_DIGITS: Final = re.compile(r"[0-9]{1,7}")
_REPEATED_KEY: Final = "the same key twice in one object (JSON would keep only the last)"


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
        if at is None:
            record = self._plain_job(obj, line)
            if record is not None:
                return record
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

    def _plain_job(self, obj: dict[str, Any], line: int) -> _Record | None:
        """The common JSON job in one pass, or None to apply the rules in full.

        Known fields, a printable name, params absent or an object of short
        strings, workspace and project clean or absent, id and action absent or
        plainly valid: exactly what `finish` accepts on its first test of each
        field, and the same record; anything else (a fault, or a doubt) returns
        None, and the full rules say what is wrong.
        """
        if not (obj.keys() <= _FIELD_SET):
            return None
        name = obj.get("name")
        if not (type(name) is str and name and name.isprintable()):
            return None
        params: list[_Param] = []
        value = obj.get("params")
        if value is not None:
            if type(value) is not dict:
                return None
            for pname, pvalue in value.items():
                if not (
                    type(pvalue) is str
                    and 0 < len(pname) <= MAX_PARAM_NAME
                    and len(pvalue) <= MAX_PARAM_VALUE
                ):
                    return None
                params.append((pname, pvalue, None))
        workspace = obj.get("workspace")
        if workspace is None:
            workspace = self.defaults.workspace
        elif not (type(workspace) is str and _plain_header(workspace)):
            return None
        project_id = obj.get("project_id")
        if project_id is None:
            project_id = self.defaults.project_id
        elif not (type(project_id) is str and _plain_header(project_id)):
            return None
        jid = obj.get("id")
        if jid is not None and not (type(jid) is str and jid and jid.isprintable()):
            return None
        action = obj.get("action")
        if action is not None and not (type(action) is str and action in ACTIONS):
            return None
        wave = obj.get("wave")
        if wave is None:
            wave = 0
        elif not (type(wave) is int and 0 <= wave <= MAX_WAVE):
            return None
        return (name, params, workspace, project_id, jid, action, line, wave)

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
        fields: dict[str, str | int] = {}
        params: list[_Param] = []
        seen: dict[str, str] = {}
        for column, cell in zip(layout, row, strict=True):
            if not cell:
                continue
            if column.kind == "field":
                # A CSV cell is always text: a wave of plain digits is its number.
                fields[column.arg] = (
                    int(cell) if column.arg == "wave" and _DIGITS.fullmatch(cell) else cell
                )
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
                    repeated = duplicate_key(cell, value, "params")
                    if repeated is not None:
                        errs.append((_show(repeated), _REPEATED_KEY))
                    elif value is not None:
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
        workspace = _header_field(errs, "workspace", workspace, self.defaults.workspace)
        project_id = _header_field(errs, "project_id", project_id, self.defaults.project_id)
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
        wave = _wave(errs, obj.get("wave"))
        if not errs:
            return (name, params, workspace, project_id, jid, action, line, wave)
        path = self.path
        if at is None:
            return [Problem(path, line, _show(field), message) for field, message in errs]
        return [
            Problem(path, at.get(field, line), _show(field), message) for field, message in errs
        ]


def _wave(errs: list[tuple[str, str]], value: Any) -> int:
    """`wave`: a whole number from 0 to `MAX_WAVE`; 0 when absent or null."""
    if value is None:
        return 0
    if type(value) is int and 0 <= value <= MAX_WAVE:
        return value
    if _is_null(value):
        return 0
    if type(value) is _Scalar and value.kind == "number" and _DIGITS.fullmatch(value.text):
        number = int(value.text)
        if number <= MAX_WAVE:
            return number
    message = f"must be a whole number from 0 to {MAX_WAVE}, got {_describe(value)}"
    if type(value) is str and _DIGITS.fullmatch(value):
        message += f"; write it without quotes: {value}"
    errs.append(("wave", message))
    return 0


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


def _plain_header(value: str) -> bool:
    """`_header_field`'s first test: a clean value for an HTTP header."""
    return bool(value) and value.isprintable() and " " not in value


def _header_field(errs: list[tuple[str, str]], field: str, value: Any, default: Any) -> Any:
    """`workspace`/`project_id`: the value, or the run's default when absent or null.

    They travel in an HTTP header, so whitespace and control characters are
    errors (CR/LF would be header injection). The fast path is a few C calls.
    """
    if value is None:
        return default
    if type(value) is str and _plain_header(value):
        return value
    if _is_null(value):
        return default
    _check_into(errs, field, value, _CONTROL_OR_SPACE, _NO_SPACE)
    return value


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
