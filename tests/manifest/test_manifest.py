"""Tests for launcher.manifest.validate: the field rules in every format, streaming, duplicates."""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from launcher.errors import ManifestInvalid, UsageError
from launcher.manifest import csv_rows as manifest_csv
from launcher.manifest import dupes as manifest_dupes
from launcher.manifest import lines as manifest_lines
from launcher.manifest import rules as manifest_rules
from launcher.manifest.validate import (
    Defaults,
    Problem,
    Validation,
    counted_digests,
    detect_format,
    file_sha256,
    iter_jobs,
    scan,
    validate,
)
from launcher.manifest.validate import _job as _job  # the send pass's record -> Job
from launcher.models import ACTIONS, Job, JobParam, job_identity

# The module itself: the package's `validate` is the function of that name.
manifest = importlib.import_module("launcher.manifest.validate")

# --- helpers ------------------------------------------------------------------

NO_DEFAULTS = Defaults()


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def jsonl(*objs: Any) -> str:
    return "".join(orjson.dumps(o).decode() + "\n" for o in objs)


def messages(path: Path, defaults: Defaults = NO_DEFAULTS, **kw: Any) -> list[str]:
    return [str(p) for p in validate(path, defaults, max_listed=1000, **kw).problems]


def scanned(path: Path, defaults: Defaults = NO_DEFAULTS, **kw: Any) -> list[Job | Problem]:
    return list(scan(path, defaults, **kw))


def only_jobs(path: Path, defaults: Defaults = NO_DEFAULTS, **kw: Any) -> list[Job]:
    items = scanned(path, defaults, **kw)
    assert all(isinstance(i, Job) for i in items), items
    return [i for i in items if isinstance(i, Job)]


def one_problem(tmp_path: Path, line: Any, name: str = "m.jsonl") -> str:
    """The single message for a one-line JSONL manifest holding `line`."""
    text = line if isinstance(line, str) else jsonl(line)
    path = write(tmp_path, name, text)
    found = messages(path)
    assert len(found) == 1, found
    return found[0]


def expected_job(
    name: str,
    params: tuple[JobParam, ...] = (),
    workspace: str | None = None,
    project_id: str | None = None,
    line: int = 1,
    action: str | None = None,
    jid: str | None = None,
) -> Job:
    return Job(
        id=jid or job_identity(project_id, workspace, name, params),
        name=name,
        params=params,
        workspace=workspace,
        project_id=project_id,
        line=line,
        action=action,  # type: ignore[arg-type]
    )


# --- JSONL: good lines ----------------------------------------------------------


def test_jsonl_contract_examples(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        '{"name": "myJob", "params": {"date": "2026-11-28"}, "workspace": "ws-1"}\n'
        '{"name": "other", "params": [{"name": "date", "value": "2026-11-28",'
        ' "paramType": "variable"}]}\n',
    )
    jobs = only_jobs(path, Defaults(project_id="p1"))
    assert jobs == [
        expected_job("myJob", (JobParam("date", "2026-11-28"),), "ws-1", "p1", 1),
        expected_job("other", (JobParam("date", "2026-11-28", "variable"),), None, "p1", 2),
    ]
    v = validate(path, Defaults(project_id="p1"))
    assert (v.jobs, v.problem_count, v.problems) == (2, 0, ())
    v.raise_if_invalid()  # valid: no exception


def test_all_fields_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        jsonl(
            {
                "name": "a",
                "workspace": "w",
                "project_id": "p",
                "id": "job-1",
                "action": "run-immediate",
                "params": {"x": "1", "y": "2"},
            },
            {"name": "b"},
            {"name": "c", "workspace": None, "project_id": None, "id": None, "action": None},
            {"name": "d", "params": None},
        ),
    )
    defaults = Defaults(project_id="P", workspace="W")
    jobs = only_jobs(path, defaults)
    assert jobs[0] == Job(
        id="job-1",
        name="a",
        params=(JobParam("x", "1"), JobParam("y", "2")),
        workspace="w",
        project_id="p",
        line=1,
        action="run-immediate",
    )
    # Absent and null both mean "use the default"; the identity includes the defaults.
    assert jobs[1] == expected_job("b", (), "W", "P", 2)
    assert jobs[2] == expected_job("c", (), "W", "P", 3)
    assert jobs[3] == expected_job("d", (), "W", "P", 4)
    assert jobs[1].id == job_identity("P", "W", "b", ())


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_is_accepted(tmp_path: Path, action: str) -> None:
    path = write(tmp_path, "m.jsonl", jsonl({"name": "a", "action": action}))
    assert only_jobs(path)[0].action == action


def test_comments_blank_lines_and_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        "# header comment\n"
        "\n"
        '{"name": "a"}\r\n'
        "   \t \r\n"
        "   # indented comment with \xff bad bytes is still a comment\n".encode("latin-1")
        + b'{"name": "b"}\n'
        b"#\n"
        b'{"name": "c"}',  # no final newline
    )
    assert [(j.name, j.line) for j in only_jobs(path)] == [("a", 3), ("b", 6), ("c", 8)]
    assert validate(path).problem_count == 0


def test_bom_on_first_line_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", b'\xef\xbb\xbf{"name": "a"}\n{"name": "b"}\n')
    assert [j.name for j in only_jobs(path)] == ["a", "b"]


def test_empty_manifest_is_valid_with_no_jobs(tmp_path: Path) -> None:
    for name, text in [("e.jsonl", ""), ("c.jsonl", "# only\n\n"), ("e.csv", ""), ("e.yaml", "")]:
        v = validate(write(tmp_path, name, text))
        assert (v.jobs, v.problem_count) == (0, 0), name


# --- JSONL: each rule -------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"params": {}}, "name: required"),
        ({"name": None}, "name: required"),
        ({"name": ""}, "name: must not be empty"),
        ({"name": 7}, 'name: must be a string, got number 7; quote it: "7"'),
        ({"name": ["a"]}, "name: must be a string, got array"),
        ({"name": "a\nb"}, "name: must not contain control characters (U+000A at character 2)"),
        ({"name": "a\x00"}, "name: must not contain control characters (U+0000 at character 2)"),
        ({"name": "a\x7f"}, "name: must not contain control characters (U+007F at character 2)"),
        ({"name": "\x85a"}, "name: must not contain control characters (U+0085 at character 1)"),
        ({"name": "a\x9f"}, "name: must not contain control characters (U+009F at character 2)"),
    ],
)
def test_name_rules(tmp_path: Path, line: Any, expected: str) -> None:
    assert one_problem(tmp_path, line) == f"{tmp_path / 'm.jsonl'}:1: {expected}"


def test_name_may_hold_spaces_and_unicode(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", jsonl({"name": "日次 ジョブ #1 ‑ é"}))
    assert only_jobs(path)[0].name == "日次 ジョブ #1 ‑ é"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (20261128, 'params.date: must be a string, got number 20261128; quote it: "20261128"'),
        (1.5, 'params.date: must be a string, got number 1.5; quote it: "1.5"'),
        (True, 'params.date: must be a string, got boolean true; quote it: "true"'),
        (None, 'params.date: must be a string, got null; quote it: "null"'),
        ({"a": "b"}, "params.date: must be a string, got object"),
        ("x" * 1025, "params.date: value is 1025 characters, at most 1024 allowed"),
    ],
)
def test_param_value_rules(tmp_path: Path, value: Any, expected: str) -> None:
    message = one_problem(tmp_path, {"name": "a", "params": {"date": value}})
    assert message == f"{tmp_path / 'm.jsonl'}:1: {expected}"


def test_param_limits_are_inclusive(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", jsonl({"name": "a", "params": {"n" * 64: "v" * 1024}}))
    assert only_jobs(path)[0].params == (JobParam("n" * 64, "v" * 1024),)


def test_param_name_rules(tmp_path: Path) -> None:
    assert one_problem(tmp_path, {"name": "a", "params": {"": "v"}}).endswith(
        "params.: parameter name must not be empty"
    )
    assert one_problem(tmp_path, {"name": "a", "params": {"n" * 65: "v"}}).endswith(
        "parameter name is 65 characters, at most 64 allowed"
    )


def test_params_must_be_object_or_list(tmp_path: Path) -> None:
    assert one_problem(tmp_path, {"name": "a", "params": "date=1"}).endswith(
        ":1: params: must be an object or a list, got string"
    )


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([{"name": "d", "value": "1", "paramType": "var"}],
         'params[0].paramType: must be variable or constants, got "var"'),
        ([{"name": "d", "value": "1", "paramType": 1}],
         "params[0].paramType: must be variable or constants, got number 1"),
        ([{"name": "d", "value": "1", "type": "variable"}],
         "params[0].type: unknown key (expected name, value, paramType)"),
        ([{"name": "d", "value": "1", "valeu": "1"}],
         'params[0].valeu: unknown key; did you mean "value"?'),
        ([{"value": "1"}], "params[0].name: required"),
        ([{"name": "d"}], "params[0].value: required"),
        ([{"name": "", "value": "1"}], "params[0].name: must not be empty"),
        ([{"name": 5, "value": "1"}],
         'params[0].name: must be a string, got number 5; quote it: "5"'),
        ([{"name": "d", "value": 5}],
         'params[0].value: must be a string, got number 5; quote it: "5"'),
        (["d=1"], 'params[0]: expected an object with "name" and "value", got string'),
        ([{"name": "a", "value": "1"}, {"name": "b", "value": "2"}, {"name": "a", "value": "3"}],
         'params[2].name: duplicate parameter "a" (also params[0])'),
    ],
)  # fmt: skip
def test_param_list_rules(tmp_path: Path, entries: Any, expected: str) -> None:
    message = one_problem(tmp_path, {"name": "a", "params": entries})
    assert message == f"{tmp_path / 'm.jsonl'}:1: {expected}"


def test_param_types_and_order_are_kept(tmp_path: Path) -> None:
    entries = [
        {"name": "z", "value": "1", "paramType": "constants"},
        {"name": "a", "value": "", "paramType": None},
        {"name": "m", "value": "3", "paramType": "variable"},
    ]
    path = write(tmp_path, "m.jsonl", jsonl({"name": "a", "params": entries}))
    assert only_jobs(path)[0].params == (
        JobParam("z", "1", "constants"),
        JobParam("a", ""),
        JobParam("m", "3", "variable"),
    )


@pytest.mark.parametrize("field", ["workspace", "project_id"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "must not be empty"),
        ("ws 1", "must not contain whitespace or control characters (U+0020 at character 3)"),
        ("ws\t1", "must not contain whitespace or control characters (U+0009 at character 3)"),
        ("ws\u00a01", "must not contain whitespace or control characters (U+00A0 at character 3)"),
        ("ws\x7f", "must not contain whitespace or control characters (U+007F at character 3)"),
        (12, 'must be a string, got number 12; quote it: "12"'),
    ],
)
def test_workspace_and_project_rules(tmp_path: Path, field: str, value: Any, expected: str) -> None:
    message = one_problem(tmp_path, {"name": "a", field: value})
    assert message == f"{tmp_path / 'm.jsonl'}:1: {field}: {expected}"


def test_crlf_header_injection_in_workspace_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        jsonl({"name": "ok"}, {"name": "a", "workspace": "ws-1\r\nX-Auth-Token: stolen"}),
    )
    v = validate(path)
    assert v.jobs == 1
    assert [str(p) for p in v.problems] == [
        f"{path}:2: workspace: must not contain whitespace or control characters"
        " (U+000D at character 5)"
    ]
    with pytest.raises(ManifestInvalid):
        list(iter_jobs(path))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "id: must not be empty"),
        ("a\nb", "id: must not contain control characters (U+000A at character 2)"),
        (3, 'id: must be a string, got number 3; quote it: "3"'),
    ],
)
def test_id_rules(tmp_path: Path, value: Any, expected: str) -> None:
    assert one_problem(tmp_path, {"name": "a", "id": value}).endswith(f":1: {expected}")


def test_id_may_hold_spaces(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", jsonl({"name": "a", "id": "nightly run 1"}))
    assert only_jobs(path)[0].id == "nightly run 1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("launch", 'action: must be one of start, stop, run-immediate; got "launch"'),
        ("Start", 'action: must be one of start, stop, run-immediate; got "Start"'),
        (1, "action: must be one of start, stop, run-immediate; got number 1"),
    ],
)
def test_action_rules(tmp_path: Path, value: Any, expected: str) -> None:
    assert one_problem(tmp_path, {"name": "a", "action": value}).endswith(f":1: {expected}")


def test_unknown_field_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        jsonl(
            {"name": "a", "parmas": {"d": "1"}},
            {"name": "a", "worksapce": "w"},
            {"name": "a", "colour": "red"},
        ),
    )
    assert messages(path) == [
        f'{path}:1: parmas: unknown field; did you mean "params"?',
        f'{path}:2: worksapce: unknown field; did you mean "workspace"?',
        f"{path}:3: colour: unknown field (expected name, params, workspace, project_id, id,"
        " action, wave)",
    ]


def test_every_problem_of_a_line_is_reported(tmp_path: Path) -> None:
    line = {"name": "", "workspace": "a b", "action": "go", "parmas": {}, "params": {"d": 1}}
    found = messages(write(tmp_path, "m.jsonl", jsonl(line)))
    fields = [m.split(": ")[1] for m in found]
    assert sorted(fields) == ["action", "name", "params.d", "parmas", "workspace"]


def test_invalid_utf8_names_line_byte_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", b'{"name": "a"}\n{"name": "caf\xe9"}\n{"name": "b"}\n')
    v = validate(path)
    assert v.jobs == 2
    assert [str(p) for p in v.problems] == [
        f"{path}:2: line: invalid UTF-8 (byte 0xe9 at column 14)"
    ]


def test_invalid_json_and_non_objects(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", '{"name": "a",}\n["a"]\n"a"\n{"name": "a"} x\n')
    assert messages(path) == [
        f"{path}:1: json: invalid JSON: trailing comma is not allowed (column 13)",
        f"{path}:2: json: expected a JSON object (one per line), got array",
        f"{path}:3: json: expected a JSON object (one per line), got string",
        f"{path}:4: json: invalid JSON: unexpected content after document (column 15)",
    ]


def test_control_characters_in_field_names_are_escaped(tmp_path: Path) -> None:
    message = one_problem(tmp_path, {"name": "a", "x\ny": 1})
    assert "\n" not in message
    assert message.endswith(':1: "x\\ny": unknown field (expected name, params, workspace,'
                            " project_id, id, action, wave)")  # fmt: skip


def test_overlong_line_is_reported_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_lines, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(manifest_lines, "_CHUNK", 16)
    long_line = orjson.dumps({"name": "x" * 200})
    path = write(
        tmp_path, "m.jsonl", b'{"name": "a"}\n' + long_line + b'\n{"name": "b"}\n' + long_line
    )
    assert messages(path) == [
        f"{path}:2: line: longer than 100 bytes; not read",
        f"{path}:4: line: longer than 100 bytes; not read",
    ]
    assert [(j.name, j.line) for j in scanned(path) if isinstance(j, Job)] == [("a", 1), ("b", 3)]


# --- limits on what is listed, duplicates, hashing ------------------------------


def test_first_twenty_are_listed_and_all_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", jsonl(*[{"nme": "x"}] * 15, {"name": "ok"}))
    v = validate(path)
    # Two problems per bad line (unknown field, missing name): 30 in all.
    assert (v.jobs, v.problem_count, len(v.problems)) == (1, 30, 20)
    assert str(v.problems[0]) == f'{path}:1: nme: unknown field; did you mean "name"?'
    assert str(v.problems[19]) == f"{path}:10: name: required"
    with pytest.raises(ManifestInvalid) as caught:
        v.raise_if_invalid()
    assert caught.value.total == 30
    assert caught.value.messages == [str(p) for p in v.problems]
    assert str(caught.value).endswith("... and 10 more error(s)")
    assert len(validate(path, max_listed=3).problems) == 3


def test_duplicate_jobs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        jsonl(
            {"name": "a", "params": {"d": "1"}},
            {"name": "a", "params": {"d": "2"}},
            {"name": "a", "params": [{"name": "d", "value": "1"}]},  # same as line 1
            {"name": "a", "params": {"d": "1"}, "action": "stop"},  # the action is not identity
            {"name": "a", "params": {"d": "1"}, "workspace": "w"},  # another workspace
        ),
    )
    dup = "duplicate of the job on line 1 (same project, workspace, name and params)"
    assert messages(path) == [f"{path}:3: job: {dup}", f"{path}:4: job: {dup}"]
    v = validate(path, allow_duplicates=True)
    assert (v.jobs, v.problem_count) == (5, 0)
    assert validate(path).jobs == 3


def test_duplicates_compare_after_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        jsonl(
            {"name": "a"},
            {"name": "a", "workspace": "W", "project_id": "P"},
            {"name": "a", "workspace": "other"},
        ),
    )
    assert messages(path) == []  # no defaults: line 1 differs from line 2
    found = messages(path, Defaults(project_id="P", workspace="W"))
    assert found == [
        f"{path}:2: job: duplicate of the job on line 1 (same project, workspace, name and params)"
    ]


def test_param_order_makes_different_jobs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        jsonl(
            {"name": "a", "params": {"x": "1", "y": "2"}},
            {"name": "a", "params": {"y": "2", "x": "1"}},
        ),
    )
    jobs = only_jobs(path)
    assert jobs[0].id != jobs[1].id
    assert validate(path).problem_count == 0


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.jsonl",
        jsonl(
            {"name": "a", "id": "one"},
            {"name": "b", "id": "two"},
            {"name": "c", "id": "one"},
            {"name": "a", "id": "three"},  # same job as line 1 under another id
        ),
    )
    assert messages(path) == [
        f'{path}:3: id: duplicate id "one", first used on line 1',
        f"{path}:4: job: duplicate of the job on line 1 (same project, workspace, name and params)",
    ]
    # Allowing duplicate jobs never allows a repeated id: ids must stay keys.
    assert messages(path, allow_duplicates=True) == [
        f'{path}:3: id: duplicate id "one", first used on line 1'
    ]


def test_duplicate_check_is_exact_over_many_jobs(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines = [{"name": f"j{i}", "params": {"d": str(i % 97)}} for i in range(5000)]
    repeats = sorted(rng.sample(range(1000, 5000), 40))
    for i in repeats:
        lines[i] = lines[i % 1000]
    path = write(tmp_path, "m.jsonl", jsonl(*lines))
    v = validate(path, max_listed=100)
    assert v.problem_count == 40
    assert [p.line for p in v.problems] == [i + 1 for i in repeats]
    assert [p.message.split()[6] for p in v.problems] == [str(i % 1000 + 1) for i in repeats]


def test_validate_key_is_the_identity_prefix(tmp_path: Path) -> None:
    """validate's dedupe key hashes the same canonical form as `job_identity`."""
    path = write(
        tmp_path,
        "m.jsonl",
        jsonl({"name": "a", "params": [{"name": "d", "value": "1", "paramType": "variable"}]}),
    )
    (job,) = only_jobs(path, Defaults("p", "w"))
    canonical = orjson.dumps(("p", "w", "a", [("d", "1", "variable")]))
    assert hashlib.sha256(canonical).hexdigest()[:32] == job.id


def test_sha256_covers_the_raw_bytes(tmp_path: Path) -> None:
    for name, content in [
        ("a.jsonl", b'{"name": "a"}\n# c\n\xff\n'),
        ("a.csv", b"name,bogus\na,b\n" + b"x,y\n" * 5000),  # header error: rows unread
        ("a.yaml", b"- name: a\n"),
        ("big.jsonl", jsonl(*[{"name": f"j{i}"} for i in range(30000)]).encode()),
    ]:
        path = write(tmp_path, name, content)
        expected = hashlib.sha256(content).hexdigest()
        assert validate(path).sha256 == expected
        assert file_sha256(path) == expected


def test_validation_is_frozen_record() -> None:
    v = Validation("m", 1, (), 0, "00")
    v.raise_if_invalid()
    with pytest.raises(AttributeError):
        v.jobs = 2  # type: ignore[misc]


def test_problem_str() -> None:
    assert str(Problem("jobs.jsonl", 7, "params.date", "bad")) == "jobs.jsonl:7: params.date: bad"


# --- API edges ------------------------------------------------------------------


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    for call in (
        lambda: scan(missing),
        lambda: validate(missing),
        lambda: list(iter_jobs(missing)),
        lambda: file_sha256(missing),
    ):
        with pytest.raises(UsageError, match=r"nope\.jsonl: cannot read: No such file"):
            call()
    with pytest.raises(UsageError, match="cannot read: Is a directory"):
        validate(tmp_path)


def test_bad_format_and_defaults_are_usage_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", jsonl({"name": "a"}))
    with pytest.raises(UsageError, match="unknown manifest format 'xml'"):
        validate(path, fmt="xml")
    with pytest.raises(UsageError, match='default workspace "w\\\\r\\\\n": must not contain'):
        validate(path, Defaults(workspace="w\r\n"))
    with pytest.raises(UsageError, match="default project_id"):
        scan(path, Defaults(project_id="a b"))


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("m.jsonl", "jsonl"),
        ("m.ndjson", "jsonl"),
        ("m.json", "jsonl"),
        ("M.JSONL", "jsonl"),
        ("m.csv", "csv"),
        ("m.CSV", "csv"),
        ("m.yaml", "yaml"),
        ("m.yml", "yaml"),
        ("m.txt", "jsonl"),
        ("manifest", "jsonl"),
        ("dir.csv/m", "jsonl"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt
    assert detect_format(Path(name)) == fmt


def test_fmt_overrides_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "m.txt", "name,workspace\na,w\n")
    assert [j.name for j in only_jobs(path, fmt="csv")] == ["a"]
    yaml_path = write(tmp_path, "m.data", "- name: a\n")
    assert [j.name for j in only_jobs(yaml_path, fmt="yml")] == ["a"]
    assert validate(path).problem_count == 2  # as JSONL, both lines are bad JSON


def test_iter_jobs(tmp_path: Path) -> None:
    good = write(tmp_path, "g.jsonl", jsonl({"name": "a"}, {"name": "b"}))
    assert [j.name for j in iter_jobs(good)] == ["a", "b"]
    bad = write(tmp_path, "b.jsonl", jsonl({"name": "a"}, {"name": ""}))
    jobs = iter_jobs(bad)
    assert next(jobs).name == "a"
    with pytest.raises(ManifestInvalid, match=r"b\.jsonl:2: name: must not be empty"):
        next(jobs)


def test_scan_reports_no_cross_line_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", jsonl({"name": "a", "id": "x"}, {"name": "a", "id": "x"}))
    assert [j.line for j in only_jobs(path)] == [1, 2]


# --- CSV --------------------------------------------------------------------------


def test_csv_columns_and_param_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        "# exported 2026-11-28\n"
        "\n"
        "name,workspace,project_id,id,action,param:date,param:region\n"
        "a,ws-1,p1,,start,2026-11-28,eu\n"
        "b,,,b-1,,,eu\n"  # empty cells: absent / not sent
        "# a comment between rows\n"
        "c,,,,,2026-11-29,\n",
    )
    jobs = only_jobs(path, Defaults(project_id="P", workspace="W"))
    assert jobs == [
        expected_job(
            "a",
            (JobParam("date", "2026-11-28"), JobParam("region", "eu")),
            "ws-1",
            "p1",
            4,
            "start",
        ),
        expected_job("b", (JobParam("region", "eu"),), "W", "P", 5, jid="b-1"),
        expected_job("c", (JobParam("date", "2026-11-29"),), "W", "P", 7),
    ]


def test_csv_params_column_and_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        'param:first,params,name,param:last\n'
        '1,"[{""name"": ""mid"", ""value"": """", ""paramType"": ""constants""}]",a,9\n'
        '1,"{""odd name"": ""x""}",b,\n'
        ',,c,\n',
    )  # fmt: skip
    jobs = only_jobs(path)
    assert [j.params for j in jobs] == [
        (JobParam("first", "1"), JobParam("mid", "", "constants"), JobParam("last", "9")),
        (JobParam("first", "1"), JobParam("odd name", "x")),
        (),
    ]
    assert [j.line for j in jobs] == [2, 3, 4]


def test_csv_param_column_names_are_trimmed(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", " name , param: date \na,1\n")
    assert only_jobs(path)[0].params == (JobParam("date", "1"),)


def test_csv_same_param_twice_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        'name,param:date,params\na,1,"{""date"": ""2""}"\nb,,"{""date"": ""2""}"\n',
    )
    assert messages(path) == [
        f'{path}:2: params.date: duplicate parameter "date" (also column param:date)'
    ]


def test_csv_header_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        "name,parmas,param_date,Param date,param:,param:d,param: d,,workspace,workspace,nmae\n"
        "a,b,c,d,e,f,g,h,i,j,k\n",
    )
    assert messages(path) == [
        f'{path}:1: parmas: unknown column; did you mean "params"?',
        f'{path}:1: param_date: unknown column; did you mean "param:date"?',
        f'{path}:1: Param date: unknown column; did you mean "param:date"?',
        f"{path}:1: param:: parameter column without a name",
        f"{path}:1: param: d: duplicate column (also column 6)",
        f"{path}:1: column 8: empty column name",
        f"{path}:1: workspace: duplicate column (also column 9)",
        f'{path}:1: nmae: unknown column; did you mean "name"?',
    ]


def test_csv_header_needs_name_and_short_param_names(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "workspace,param:d\nw,1\n")
    assert messages(path) == [f'{path}:1: header: no "name" column']
    path = write(tmp_path, "b.csv", "name,param:" + "n" * 65 + "\n")
    assert messages(path) == [
        f"{path}:1: param:{'n' * 65}: parameter name is 65 characters, at most 64 allowed"
    ]


def test_csv_row_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        "name,workspace,action,id,param:d,params\n"
        ",w,,,,\n"  # 2: no name
        'a,"ws-1\r\nX-Evil: 1",,,,\n'  # 3-4: header injection in a quoted cell
        "b,w,launch,,,\n"  # 5
        "c,w\n"  # 6: short row
        "d,w,,,,,extra\n"  # 7: long row
        "e,w,,,,{bad\n"  # 8
        'f,w,,,,"{""d"": 1}"\n'  # 9: number in the JSON column
        "g,w,,,," + "x" * 1025 + "\n"  # 10
        ",,,,,\n"  # 11: all empty: skipped
        'h,w,,,"' + "y" * 1025 + '",\n',  # 12
    )
    assert messages(path) == [
        f"{path}:2: name: required",
        f"{path}:3: workspace: must not contain whitespace or control characters"
        " (U+000D at character 5)",
        f'{path}:5: action: must be one of start, stop, run-immediate; got "launch"',
        f"{path}:6: row: has 2 cells, the header has 6",
        f"{path}:7: row: has 7 cells, the header has 6",
        f"{path}:8: params: invalid JSON: unexpected character, expected a string key (column 2)",
        f'{path}:9: params.d: must be a string, got number 1; quote it: "1"',
        f"{path}:10: params: invalid JSON: unexpected character, expected a JSON value (column 1)",
        f"{path}:12: param:d: value is 1025 characters, at most 1024 allowed",
    ]


def test_csv_multiline_cells_keep_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        'name,param:note\na,"first\n# not a comment inside quotes\n\n"\nb,x\n',
    )
    jobs = only_jobs(path)
    assert [(j.name, j.line) for j in jobs] == [("a", 2), ("b", 6)]
    assert jobs[0].params[0].value == "first\n# not a comment inside quotes\n\n"


def test_csv_quoted_hash_name_is_a_job(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", 'name\n"#1 job"\n#comment\n')
    assert [j.name for j in only_jobs(path)] == ["#1 job"]


def test_csv_invalid_utf8_and_bad_quoting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        b'\xef\xbb\xbfname,param:d\na,1\nb\xff,2\n"c"x,3\nd,4\ne,"open\nf,6\n',
    )
    assert messages(path) == [
        f"{path}:3: line: invalid UTF-8 (byte 0xff at column 2)",
        f"{path}:4: csv: ',' expected after '\"'",
        f"{path}:6: csv: unexpected end of data (a quoted cell is not closed)",
    ]
    assert validate(path).jobs == 2


def test_csv_bad_header_line_stops(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", b"na\xffme\na\n")
    assert messages(path) == [f"{path}:1: line: invalid UTF-8 (byte 0xff at column 3)"]


def test_csv_duplicates_across_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", 'name,param:d,params\na,1,\nb,1,\na,,"{""d"": ""1""}"\n')
    assert messages(path) == [
        f"{path}:4: job: duplicate of the job on line 2 (same project, workspace, name and params)"
    ]


# --- YAML -------------------------------------------------------------------------


def test_yaml_list_and_jobs_mapping(tmp_path: Path) -> None:
    listed = write(
        tmp_path,
        "a.yaml",
        "# nightly\n"
        "- name: a\n"
        "  params: {date: '2026-11-28'}\n"
        "\n"
        "- name: b\n"
        "  workspace: ws-1\n"
        "  action: stop\n"
        "  id: b1\n"
        "  params:\n"
        "    - name: d\n"
        '      value: "1"\n'
        "      paramType: constants\n"
        "- {name: c}\n",
    )
    expected = [
        expected_job("a", (JobParam("date", "2026-11-28"),), "W", "P", 2),
        expected_job("b", (JobParam("d", "1", "constants"),), "ws-1", "P", 5, "stop", "b1"),
        expected_job("c", (), "W", "P", 13),
    ]
    assert only_jobs(listed, Defaults("P", "W")) == expected
    wrapped = write(
        tmp_path,
        "b.yml",
        "x-note: ignored\njobs:\n"
        + "".join("  " + line + "\n" for line in listed.read_text().splitlines()),
    )
    assert [(j.name, j.line) for j in only_jobs(wrapped)] == [("a", 4), ("b", 7), ("c", 15)]


def test_yaml_unquoted_scalars_must_be_quoted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "- name: a\n"
        "  params:\n"
        "    date: 2026-11-28\n"
        "    day: 20261128\n"
        "    flag: yes\n"
        "    empty:\n"
        "    ok: '2026-11-28'\n"
        "- name: 42\n"
        "  workspace: ~\n",  # null: the default
    )
    assert messages(path) == [
        f'{path}:3: params.date: must be a string, got date 2026-11-28; quote it: "2026-11-28"',
        f'{path}:4: params.day: must be a string, got number 20261128; quote it: "20261128"',
        f'{path}:5: params.flag: must be a string, got boolean yes; quote it: "yes"',
        f'{path}:6: params.empty: must be a string, got null; quote it: ""',
        f'{path}:8: name: must be a string, got number 42; quote it: "42"',
    ]


def test_yaml_rules_name_the_offending_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "jobs:\n"
        "  - name: a\n"
        "    parmas: {}\n"  # 3
        '    workspace: "w\\r\\nX: 1"\n'  # 4
        "  - name: b\n"
        "    params:\n"
        "      - name: d\n"
        "        value: '1'\n"
        "        paramType: var\n"  # 9
        "      - name: d\n"  # 10
        "        value: '2'\n"
        "  - name: c\n"
        "    name: c2\n"  # 13
        "  - just text\n"  # 14
        "  - name: d\n"
        "    action: start\n"
        "  - {name: d, action: stop}\n",  # 17: the same job as line 15
    )
    assert messages(path) == [
        f'{path}:3: parmas: unknown field; did you mean "params"?',
        f"{path}:4: workspace: must not contain whitespace or control characters"
        " (U+000D at character 2)",
        f'{path}:9: params[0].paramType: must be variable or constants, got "var"',
        f'{path}:10: params[1].name: duplicate parameter "d" (also params[0])',
        f"{path}:13: name: duplicate key (first on line 12)",
        f"{path}:14: job: expected a mapping, got string",
        f"{path}:17: job: duplicate of the job on line 15"
        " (same project, workspace, name and params)",
    ]


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "x-base: &base\n"
        "  workspace: ws-1\n"
        "  params: &p {date: '2026-11-28'}\n"
        "jobs:\n"
        "  - <<: *base\n"
        "    name: a\n"
        "  - <<: *base\n"
        "    name: b\n"
        "    workspace: ws-2\n"
        "  - name: c\n"
        "    params: *p\n",
    )
    jobs = only_jobs(path)
    assert [(j.name, j.workspace, j.params) for j in jobs] == [
        ("a", "ws-1", (JobParam("date", "2026-11-28"),)),
        ("b", "ws-2", (JobParam("date", "2026-11-28"),)),
        ("c", None, (JobParam("date", "2026-11-28"),)),
    ]
    assert [j.line for j in jobs] == [5, 7, 10]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jobs: 3\n", "1: jobs: expected a list of jobs, got number"),
        ("job:\n  - name: a\n", '1: job: unknown top-level key; did you mean "jobs"?'
                                " (anchors go under x-... keys)"),
        ("name: a\n", "1: name: unknown top-level key (expected jobs)"
                       " (anchors go under x-... keys)"),
        ("just text\n", "1: jobs: expected a list of jobs, got string"),
        ("- name: a\n  - b\n", "2: yaml: while parsing a block mapping;"
                                " expected <block end>, but found '-' (column 3)"),
        ("- name: 'a\n", "2: yaml: while scanning a quoted scalar; found unexpected end of stream"
                         " (column 1)"),
        ("- name: a\x07\n", "1: yaml: character U+0007 is not allowed"),
        ("- <<: 3\n  name: a\n", "1: job: << must merge a mapping (or a list of mappings)"),
        ("[" * 3000, "1: yaml: nested too deeply"),
    ],
)  # fmt: skip
def test_yaml_document_problems(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "m.yaml", text)
    found = messages(path)
    assert f"{path}:{expected}" in found, found


def test_yaml_jobs_key_may_be_empty_but_not_missing(tmp_path: Path) -> None:
    assert validate(write(tmp_path, "a.yaml", "jobs:\n")).problem_count == 0
    path = write(tmp_path, "b.yaml", "x-a: 1\n")
    assert messages(path) == [f"{path}:1: jobs: required: the list of jobs"]


def test_yaml_invalid_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", b"- name: a\n- name: b\xc3\n")
    assert messages(path) == [f"{path}:2: line: invalid UTF-8 (byte 0xc3 at column 10)"]


def test_yaml_lone_surrogate(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", '- name: "a\\ud800"\n')
    assert messages(path) == [f"{path}:1: name: contains a lone surrogate"]


# --- properties -------------------------------------------------------------------

_CONTROL = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}
_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
_names = _text.filter(lambda s: not (_CONTROL & set(s)))
_header_values = _names.filter(lambda s: not any(c.isspace() for c in s))
_param_names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64)
_param_values = st.text(st.characters(codec="utf-8"), max_size=1024)
_params = st.lists(
    st.tuples(_param_names, _param_values, st.sampled_from([None, "variable", "constants"])),
    max_size=5,
    unique_by=lambda p: p[0],
)


@st.composite
def job_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job as a JSON-able dict (fields absent at random)."""
    spec: dict[str, Any] = {"name": draw(_names)}
    params = draw(_params)
    with_params = bool(params) or draw(st.booleans())
    if with_params:
        if all(t is None for _, _, t in params) and draw(st.booleans()):
            spec["params"] = {n: v for n, v, _ in params}
        else:
            spec["params"] = [
                {"name": n, "value": v} | ({"paramType": t} if t else {}) for n, v, t in params
            ]
    for field, strategy in [
        ("workspace", _header_values),
        ("project_id", _header_values),
        ("id", _names),
        ("action", st.sampled_from(ACTIONS)),
    ]:
        value = draw(st.none() | strategy)
        if value is not None:
            spec[field] = value
    return spec


def job_of(spec: dict[str, Any], defaults: Defaults, line: int) -> Job:
    """The Job a spec must give: the oracle the scanner is compared with."""
    raw = spec.get("params", [])
    if isinstance(raw, dict):
        params = tuple(JobParam(n, v) for n, v in raw.items())
    else:
        params = tuple(JobParam(p["name"], p["value"], p.get("paramType")) for p in raw)
    workspace = spec.get("workspace", defaults.workspace)
    project_id = spec.get("project_id", defaults.project_id)
    return expected_job(
        spec["name"], params, workspace, project_id, line, spec.get("action"), spec.get("id")
    )


def to_csv(spec: dict[str, Any]) -> tuple[str, int]:
    """One job as a CSV file, and its line: column form when it can, else the params column."""
    raw = spec.get("params", [])
    entries = [{"name": n, "value": v} for n, v in raw.items()] if isinstance(raw, dict) else raw
    columnable = all(
        "paramType" not in e and e["value"] and e["name"] == e["name"].strip() for e in entries
    )
    header = list(manifest_csv._CSV_FIELDS)
    row = [spec.get(f, "") for f in header]
    if columnable:
        header += [f"param:{e['name']}" for e in entries]
        row += [e["value"] for e in entries]
    else:
        header.append("params")
        row.append(orjson.dumps(raw).decode())
    out = io.StringIO()
    # QUOTE_ALL: a name that starts with "#" must be quoted (see the docstring).
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    line = out.getvalue().count("\n") + 1  # a quoted header cell may span lines
    writer.writerow(row)
    return out.getvalue(), line


_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("manifest-props")


_defaults = st.builds(Defaults, st.none() | _header_values, st.none() | _header_values)


@_settings
@given(spec=job_specs(), defaults=_defaults)
def test_valid_jobs_round_trip_through_jsonl_and_csv(
    workdir: Path, spec: dict[str, Any], defaults: Defaults
) -> None:
    jsonl_path = write(workdir, "rt.jsonl", jsonl(spec))
    assert only_jobs(jsonl_path, defaults) == [job_of(spec, defaults, 1)]
    text, line = to_csv(spec)
    csv_path = write(workdir, "rt.csv", text)
    assert only_jobs(csv_path, defaults) == [job_of(spec, defaults, line)]
    v = validate(csv_path, defaults)
    assert (v.jobs, v.problem_count) == (1, 0)


@_settings
@given(specs=st.lists(job_specs(), max_size=8), blank=st.lists(st.booleans(), max_size=8))
def test_many_jobs_keep_their_lines(
    workdir: Path, specs: list[dict[str, Any]], blank: list[bool]
) -> None:
    lines: list[str] = []
    expected: list[Job] = []
    for i, spec in enumerate(specs):
        if i < len(blank) and blank[i]:
            lines.append("# note" if i % 2 else "")
        lines.append(orjson.dumps(spec).decode())
        expected.append(job_of(spec, Defaults(), len(lines)))
    path = write(workdir, "many.jsonl", "\n".join(lines))
    assert only_jobs(path) == expected
    v = validate(path, allow_duplicates=True, keep=len(expected) or 1)
    if not v.problem_count:  # (two specs may give the same id)
        assert v.kept == expected


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | _text
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_jobish = st.dictionaries(
    st.sampled_from([*manifest_rules._FIELDS, "parmas", "x"]) | _text,
    _json_values | _params.map(lambda ps: [{"name": n, "value": v} for n, v, _ in ps]),
    max_size=5,
).map(lambda d: orjson.dumps(d))
_lines = st.lists(
    st.binary(max_size=60) | _jobish | st.sampled_from([b"", b"#", b"\xff", b'"']), max_size=12
)


# One fault at a time, each near the edge of a rule the plain path tests itself.
_HEADER_FAULTS = (" a", "a b", "a\tb", "", 5)
_PARAMS_FAULTS = (5, "s", {"k": "x" * 1025}, {"k": 1}, {"": "v"}, {"k" * 65: "v"})
_FAULTS: list[tuple[str, Any]] = [
    *(("workspace", value) for value in _HEADER_FAULTS),
    *(("project_id", value) for value in _HEADER_FAULTS),
    *(("name", value) for value in ("", "a\x00", "a\x85", 5, None)),
    *(("id", value) for value in ("", "a\x00", 5)),
    *(("action", value) for value in ("bogus", 5, "")),
    *(("params", value) for value in _PARAMS_FAULTS),
    ("x", 1),
]


@st.composite
def _job_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job, its params often in object form, with at most one field gone wrong."""
    spec = draw(job_specs())
    if draw(st.integers(0, 3)):  # mostly the object form, the plain path's
        spec["params"] = draw(st.dictionaries(_param_names, _param_values, max_size=3))
    fault = draw(st.none() | st.sampled_from(_FAULTS))
    if fault is not None:
        field, value = fault
        spec[field] = value
    return spec


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=_job_objects(), defaults=_defaults)
def test_the_plain_job_path_agrees_with_the_full_rules(
    obj: dict[str, Any], defaults: Defaults
) -> None:
    check = manifest_rules._Checker("m.jsonl", defaults)
    full = check.job(obj, 1, at={})  # with `at` (YAML's), only the full rules apply
    plain = check._plain_job(obj, 1)
    if plain is not None:
        assert plain == full
    assert check.job(obj, 1) == full


@pytest.mark.parametrize(("field", "value"), _FAULTS)
def test_every_fault_leaves_the_plain_path_for_the_full_rules(field: str, value: Any) -> None:
    obj = {"name": "job-1", "params": {"d": "2026-11-28"}, "workspace": "ws", field: value}
    check = manifest_rules._Checker("m.jsonl", Defaults(project_id="p1"))
    assert check._plain_job(obj, 1) is None
    assert isinstance(check.job(obj, 1), list)  # and they name it
    fixed = {**obj, field: {"params": {}, "action": "start"}.get(field, "ok")}
    if field == "x":
        del fixed["x"]
    assert check._plain_job(fixed, 1) == check.job(fixed, 1, at={})  # the same job, plainly


def _check_items(items: Iterator[Job | Problem], n_lines: int) -> None:
    for item in items:
        assert isinstance(item, Job | Problem)
        assert 1 <= item.line <= max(n_lines, 1), item
        if isinstance(item, Problem):
            assert "\n" not in str(item)


@_settings
@given(lines=_lines, fmt=st.sampled_from(["jsonl", "csv", "yaml"]))
@example(lines=[b"\r!"], fmt="yaml")  # a lone CR is a YAML line break: the problem is on line 2
def test_arbitrary_bytes_never_crash_the_scanner(
    workdir: Path, lines: list[bytes], fmt: str
) -> None:
    content = b"\n".join(lines)
    if fmt == "csv":
        content = b"name,workspace,params,param:d\n" + content
    path = write(workdir, "fuzz.m", content)
    breaks = content.count(b"\n")
    if fmt == "yaml":  # YAML breaks lines at a lone CR too (\r, \r\n and \n), as editors do
        breaks = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n")
    _check_items(scan(path, fmt=fmt), breaks + 1)
    v = validate(path, fmt=fmt)
    assert v.sha256 == hashlib.sha256(content).hexdigest()
    assert v.jobs <= content.count(b"\n") + 1  # a job takes a line at least
    assert (v.problem_count == 0) == (v.problems == ())
    if v.problem_count == 0:  # a resume's count, from the bytes alone, is the validation's
        digest, _, counted = counted_digests(path, fmt)
        assert digest == v.sha256
        assert counted == (None if fmt == "yaml" else v.jobs)


@_settings
@given(
    lines=_lines,
    fmt=st.sampled_from(["jsonl", "csv", "yaml"]),
    allow_duplicates=st.booleans(),
    keep=st.integers(1, 12),
)
def test_kept_jobs_are_the_jobs_a_second_pass_reads(
    workdir: Path, lines: list[bytes], fmt: str, allow_duplicates: bool, keep: int
) -> None:
    content = b"\n".join(lines)
    if fmt == "csv":
        content = b"name,workspace,params,param:d\n" + content
    path = write(workdir, "kept.m", content)
    v = validate(path, fmt=fmt, allow_duplicates=allow_duplicates, keep=keep)
    if v.problem_count or v.jobs > keep:
        assert v.kept is None  # nothing to send, or too many to hold: streamed again
    else:
        assert v.kept is not None
        assert list(v.kept) == list(iter_jobs(path, fmt=fmt))
    assert validate(path, fmt=fmt, allow_duplicates=allow_duplicates).kept is None


@_settings
@given(data=st.binary(max_size=400))
def test_arbitrary_yaml_never_crashes(workdir: Path, data: bytes) -> None:
    path = write(workdir, "fuzz.yaml", data)
    # YAML breaks lines at CR, LF, CRLF, NEL, LS and PS: its line numbers count those.
    text = data.decode("utf-8", errors="replace")
    _check_items(scan(path), len(re.split("\r\n|[\r\n\x85\u2028\u2029]", text)))


@_settings
@given(spec=job_specs())
def test_identity_is_stable_and_param_order_sensitive(workdir: Path, spec: dict[str, Any]) -> None:
    spec.pop("id", None)
    path = write(workdir, "id.jsonl", jsonl(spec, spec))
    first, second = only_jobs(path)
    assert first.id == second.id == job_of(spec, Defaults(), 1).id
    params = first.params
    if len(params) >= 2:
        entries = [
            {"name": p.name, "value": p.value}
            | ({"paramType": p.param_type} if p.param_type else {})
            for p in reversed(params)
        ]
        flipped = dict(spec, params=entries)
        path = write(workdir, "id2.jsonl", jsonl(flipped))
        assert only_jobs(path)[0].id != first.id


def test_identity_is_pinned() -> None:
    """Resume and replay compare identities across versions: this value must never change."""
    job = job_of({"name": "myJob", "params": {"date": "2026-11-28"}}, Defaults("p", "ws-1"), 1)
    canonical = b'["p","ws-1","myJob",[["date","2026-11-28",null]]]'
    assert job.id == hashlib.sha256(canonical).hexdigest()[:32]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300)
    | st.lists(st.sampled_from([b"a", b"\n", b"bc", b"\r\n"]), max_size=80).map(b"".join),
    chunk=st.integers(1, 9),
)
def test_raw_lines_split_like_bytes_split(data: bytes, chunk: int) -> None:
    old = manifest_lines._CHUNK
    setattr(manifest_lines, "_CHUNK", chunk)  # noqa: B010 - a Final constant, patched for the test
    try:
        hasher = hashlib.sha256()
        got = list(manifest_lines._raw_lines(io.BytesIO(data), "x", hasher))
    finally:
        setattr(manifest_lines, "_CHUNK", old)  # noqa: B010
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert got == expected
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 50), max_size=3000))
def test_first_lines_table_matches_a_dict(keys: list[int]) -> None:
    table = manifest_dupes._FirstLines(bits=2)
    model: dict[int, int] = {}
    for line, key in enumerate(keys, 1):
        key = key or 1  # the table's one alias, applied to the model too
        assert table.add(key, line) == model.get(key, 0)
        model.setdefault(key, line)


def test_dedupe_memory_stays_small() -> None:
    """At most 48 bytes a key (50 MB a million), where a dict[int, int] takes ~110."""
    table = manifest_dupes._FirstLines()
    rng = random.Random(1)
    for n in range(1, 200_001):
        table.add(rng.getrandbits(64), n)
        if n % 20_000 == 0:
            size = table.keys.itemsize * len(table.keys) + table.lines.itemsize * len(table.lines)
            assert size <= 48 * n


def test_the_duplicate_table_is_sized_from_the_file(tmp_path: Path) -> None:
    lines = "".join(f'{{"name": "job-{n}"}}\n' for n in range(30_000))
    path = write(tmp_path, "m.jsonl", lines)
    with path.open("rb") as f:
        assert 27_000 <= manifest._expected_lines(f) <= 33_000
    read, written = os.pipe()
    with os.fdopen(read, "rb") as f:
        os.close(written)
        assert manifest._expected_lines(f) == 0  # no size to go by: the table grows
    assert validate(path).jobs == 30_000


TEXT = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=200)
@given(
    name=TEXT,
    params=st.lists(st.tuples(TEXT, TEXT, st.sampled_from([None, "variable", "constants"]))),
    workspace=st.none() | TEXT,
    project_id=st.none() | TEXT,
    jid=st.none() | TEXT.filter(bool),
)
def test_a_record_becomes_the_job_with_its_identity(
    name: str,
    params: list[tuple[str, str, str | None]],
    workspace: str | None,
    project_id: str | None,
    jid: str | None,
) -> None:
    """The send pass hashes the checker's tuples: the identity must stay `job_identity`'s."""
    job = _job((name, params, workspace, project_id, jid, None, 7, 3))
    job_params = tuple(JobParam(*param) for param in params)
    assert job == Job(
        jid or job_identity(project_id, workspace, name, job_params),
        name, job_params, workspace, project_id, 7, None, 3,
    )  # fmt: skip
    assert all(type(param) is JobParam for param in job.params)


# --- the wave field -------------------------------------------------------------


def test_wave_is_read_in_every_format_and_counted(tmp_path: Path) -> None:
    """`wave` in JSONL, CSV and YAML: the Job's wave, and the validation's count per wave."""
    sources = {
        "m.jsonl": jsonl({"name": "a"}, {"name": "b", "wave": 2}, {"name": "c", "wave": 0}),
        "m.csv": "name,wave\na,\nb,2\nc,0\n",
        "m.yaml": "- name: a\n- name: b\n  wave: 2\n- {name: c, wave: 0}\n",
    }
    for name, text in sources.items():
        path = write(tmp_path, name, text)
        assert [(job.name, job.wave) for job in only_jobs(path)] == [("a", 0), ("b", 2), ("c", 0)]
        result = validate(path)
        assert result.problem_count == 0, result.problems
        assert result.waves == {0: 2, 2: 1}


def test_wave_does_not_change_the_identity(tmp_path: Path) -> None:
    path = write(tmp_path, "m.jsonl", jsonl({"name": "a", "wave": 5}))
    assert only_jobs(path)[0].id == job_identity(None, None, "a", ())
    twice = write(tmp_path, "t.jsonl", jsonl({"name": "a", "wave": 1}, {"name": "a", "wave": 2}))
    assert messages(twice) == [
        f"{twice}:2: job: duplicate of the job on line 1 (same project, workspace, name and params)"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-1, "must be a whole number from 0 to 1000000, got number -1"),
        (1.5, "must be a whole number from 0 to 1000000, got number 1.5"),
        (True, "must be a whole number from 0 to 1000000, got boolean true"),
        (1_000_001, "must be a whole number from 0 to 1000000, got number 1000001"),
        ("2", 'must be a whole number from 0 to 1000000, got "2"; write it without quotes: 2'),
        ([1], "must be a whole number from 0 to 1000000, got array"),
    ],
)
def test_bad_waves_name_file_line_and_field(tmp_path: Path, value: Any, expected: str) -> None:
    message = one_problem(tmp_path, {"name": "a", "wave": value})
    assert message == f"{tmp_path / 'm.jsonl'}:1: wave: {expected}"


def test_bad_waves_in_csv_and_yaml(tmp_path: Path) -> None:
    csv_path = write(tmp_path, "m.csv", "name,wave\na,1\nb,first\nc,-2\n")
    assert messages(csv_path) == [
        f'{csv_path}:3: wave: must be a whole number from 0 to 1000000, got "first"',
        f'{csv_path}:4: wave: must be a whole number from 0 to 1000000, got "-2"',
    ]
    yaml_path = write(tmp_path, "m.yaml", "- name: a\n  wave: 1\n- name: b\n\n  wave: 1.5\n")
    assert messages(yaml_path) == [
        f"{yaml_path}:5: wave: must be a whole number from 0 to 1000000, got number 1.5"
    ]
