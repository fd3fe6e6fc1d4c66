"""The values that pass between the manifest stages: defaults in; records and problems out.

`launcher.manifest.validate` re-exports `Defaults` and `Problem`, its public types. The
private ones here are how the line reader, the format scanners and the field
checker talk to each other; nothing outside the `manifest*` modules uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from launcher.models import Action, JobParamFields

__all__ = ["Defaults", "Problem", "_Column", "_Param", "_Record", "_Scalar"]


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


class _Scalar(NamedTuple):
    """A YAML scalar that is not a string: kept as its source text for messages."""

    kind: str  # "number", "boolean", "null", "date", ...
    text: str


# A parameter as the checker keeps it: (name, value, paramType).
_Param = JobParamFields
# One valid job as the scanners yield it: (name, params, workspace, project_id,
# id, action, line, wave), defaults applied. Plain tuples, not `Job`s: `validate`
# needs no Job objects, and building them (and their JobParams) would be most
# of its time; `scan` builds them.
_Record = tuple[str, list[_Param], str | None, str | None, str | None, Action | None, int, int]


# A CSV header column: made by `manifest_csv`'s header check, read by `_Checker.csv_row`.
class _Column(NamedTuple):
    kind: Literal["field", "param", "params"]
    arg: str  # the field name, or the parameter name
    label: str  # the column as messages name it
