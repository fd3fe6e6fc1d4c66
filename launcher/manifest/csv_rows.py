"""CSV: a header row of fields and `param:NAME` columns, then one job a row.

The header becomes a layout of `_Column`s once; each data row is then checked
against it by `_Checker.csv_row`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from typing import Final

from launcher.manifest.lines import _BOM, _too_long, _utf8_problem
from launcher.manifest.records import Problem, _Column, _Record
from launcher.manifest.rules import MAX_PARAM_NAME, _Checker, _show, _too_long_name, _unknown

__all__ = ["_scan_csv"]

_CSV_FIELDS: Final = ("name", "workspace", "project_id", "id", "action", "wave")
_CSV_COLUMNS: Final = (*_CSV_FIELDS, "params")
_PARAM_COLUMN_TYPO: Final = re.compile(r"(?i)params?[\W_]+(\S.*)")


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
