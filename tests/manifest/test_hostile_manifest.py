"""Hostile manifests: repeated JSON keys, and a file that changes between its validation and
its sending. Real files throughout; the run is the real CLI against the simulator."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from launch_helpers import ledger_events, report_json, sim_env

from launcher.errors import ManifestChanged, ManifestInvalid
from launcher.manifest.json_keys import duplicate_key
from launcher.manifest.rules import _show
from launcher.manifest.validate import iter_jobs, validate
from launcher.simulator.app import SimConfig, running

# --- repeated keys ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b'{"name": "a", "name": "b"}', "name"),
        (b'{"name" : "a" , "name" : "b"}', "name"),
        (b'{"name": "a", "params": {"d": "1", "d": "2"}}', "params.d"),
        (
            b'{"name": "a", "params": [{"name": "d", "value": "1", "value": "2"}]}',
            "params[0].value",
        ),
        (b'{"name": "a", "workspace": "w", "project_id": "p", "workspace": "x"}', "workspace"),
    ],
)
def test_repeated_json_key_is_an_error_naming_file_line_field(
    tmp_path: Path, line: bytes, field: str
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"name": "fine", "params": {"t": "10:00:00"}}\n' + line + b"\n")
    result = validate(path)
    assert result.jobs == 1
    assert [str(p) for p in result.problems] == [
        f"{path}:2: {field}: the same key twice in one object (JSON would keep only the last)"
    ]


def test_repeated_key_in_the_csv_params_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        'name,params\na,"{""x"":""1"",""x"":""2""}"\n'
        'b,"[{""name"":""y"",""name"":""z"",""value"":""1""}]"\nc,"{""x"":""1:2""}"\n'
    )
    result = validate(path)
    assert result.jobs == 1
    assert [f"{p.line}:{p.field}" for p in result.problems] == ["2:params.x", "3:params[0].name"]


def test_a_repeated_key_with_control_characters_is_shown_escaped(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"name": "a", "params": {"x\\u001b[2J": "1", "x\\u001b[2J": "2"}}\n')
    (problem,) = validate(path).problems
    assert "\x1b" not in str(problem)
    assert problem.field == '"params.x\\u001b[2J"'


def test_a_run_refuses_a_repeated_name(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(b'{"name": "safe-job", "name": "DROP-EVERYTHING"}\n')
    with pytest.raises(ManifestInvalid, match=r"m.json:1: name: the same key twice"):
        validate(path).raise_if_invalid()


_keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(_keys, _values), min_size=1, max_size=6),
    repeat=st.integers(0, 5),
    spaced=st.booleans(),
)
def test_duplicate_key_finds_every_repeat_and_only_repeats(
    pairs: list[tuple[str, str]], repeat: int, spaced: bool
) -> None:
    sep = " : " if spaced else ":"
    items = [orjson.dumps(k).decode() + sep + orjson.dumps(v).decode() for k, v in pairs]
    raw = ("{" + ",".join(items) + "}").encode()
    parsed = orjson.loads(raw)
    keys = [k for k, _ in pairs]
    expected = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    assert duplicate_key(raw, parsed) == expected
    # the same object nested as params, with a key repeated on purpose
    key = keys[repeat % len(keys)]
    doubled = raw[:-1] + b"," + orjson.dumps(key) + b':"x"}'
    nested = b'{"name":"n","params":' + doubled + b"}"
    assert duplicate_key(nested, orjson.loads(nested)) == "params." + (
        expected if expected is not None else key
    )


# --- what was checked is what is sent -----------------------------------------

_PAD = "x" * 900  # ~1 KB a job: 1,000 jobs a 1 MiB chunk


def _lines(count: int, prefix: str) -> bytes:
    return b"".join(
        orjson.dumps({"name": f"{prefix}-{n:05d}", "params": {"pad": _PAD}}) + b"\n"
        for n in range(count)
    )


def test_iter_jobs_stops_at_the_first_changed_chunk_before_any_of_its_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(_lines(5000, "old"))
    checked = validate(path, allow_duplicates=True)
    assert checked.chunks is not None
    assert len(checked.chunks) > 3
    jobs = iter_jobs(path, checked=checked)
    first = [next(jobs) for _ in range(10)]
    # Overwritten in place (same inode) from offset 2 MiB on: the attack of the issue.
    with path.open("r+b") as f:
        f.seek(2 << 20)
        f.write(_lines(3000, "new"))
    seen = [job.name for job in first]
    with pytest.raises(ManifestChanged, match="changed while it was being sent"):
        seen.extend(job.name for job in jobs)
    assert all(name.startswith("old-") for name in seen)
    assert len(seen) <= (2 << 20) // len(_lines(1, "old")) + 1  # the first two chunks' at most


@pytest.mark.parametrize("change", ["grow", "shrink", "same-size"])
def test_iter_jobs_notices_a_file_that_grew_shrank_or_was_rewritten(
    tmp_path: Path, change: str
) -> None:
    path = tmp_path / "m.jsonl"
    original = _lines(3000, "old")
    path.write_bytes(original)
    checked = validate(path)
    changed = {
        "grow": original + _lines(5, "extra"),
        "shrink": original[: len(original) // 2],
        "same-size": original.replace(b"old-00007", b"new-00007"),
    }[change]
    with path.open("r+b") as f:
        f.write(changed)
        f.truncate()
    caught: list[ManifestChanged] = []
    names = [job.name for job in iter_jobs(path, checked=checked, on_change=caught.append)]
    assert len(caught) == 1
    assert not any(name.startswith(("new", "extra")) for name in names)


def test_an_unchanged_file_streams_every_job_with_the_check(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(_lines(2500, "job"))
    checked = validate(path)
    assert [j.name for j in iter_jobs(path, checked=checked)] == [j.name for j in iter_jobs(path)]


@pytest.mark.anyio
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_streamed_manifest_overwritten_mid_run_stops_with_exit_3_and_resumes(
    tmp_path: Path, workers: str
) -> None:
    manifest = tmp_path / "big.jsonl"
    original = _lines(9000, "old")  # ~8.6 MB: over the 8 MiB kept in memory, so streamed
    assert len(original) > 8 << 20
    manifest.write_bytes(original)
    ledger = tmp_path / "l.jsonl"
    args = ["--endpoint", "URL", "--project-id", "p1", "--ledger", str(ledger),
            "--workers", workers, "--progress", "off"]  # fmt: skip
    async with running(SimConfig()) as (sim, url):
        args[1] = url
        err = tmp_path / "stderr"
        with err.open("wb") as sink:
            process = await anyio.open_process(
                [sys.executable, "-m", "launcher", "run", str(manifest), "--rate", "1500/s",
                 *args],
                env=sim_env(),
                stderr=sink,
            )  # fmt: skip
        async with process:
            with anyio.fail_after(60):
                while sum(sim.stats.starts.values()) < 200:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            with manifest.open("r+b") as f:  # in place: the open descriptor sees it
                f.write(_lines(9000, "new"))
            with anyio.fail_after(60):
                code = await process.wait()
        stderr = err.read_text()
        assert code == 3, stderr
        assert "changed while it was being sent" in stderr
        names = [key[-1] for key in sim.stats.starts]
        assert names
        assert all(name.startswith("old-") for name in names)
        assert len(names) < 9000
        reasons = {event.get("reason") for event in ledger_events(ledger)}
        assert "manifest_changed" in reasons

        manifest.write_bytes(original)  # the validated file back: resume finishes the run
        done = await anyio.run_process(
            [sys.executable, "-m", "launcher", "run", str(manifest), "--rate", "0", "--resume",
             *args],
            env=sim_env(),
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        for n in range(9000):
            assert sim.stats.took_effect("start", "p1", f"old-{n:05d}") == 1
    assert report_json(ledger)["outcomes"]["started"] == 9000


_names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=8
)
_texts = st.text(st.sampled_from(['"', "\\", ":", " ", "\t", "a", "é", "/"]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    params=st.dictionaries(_names, _texts, min_size=1, max_size=5),
    repeat=st.one_of(st.none(), st.integers(0, 4)),
    layout=st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : "), ("\t,", "\t:\t")]),
    name_twice=st.booleans(),
)
def test_a_manifest_line_is_refused_exactly_when_a_key_repeats(
    tmp_path_factory: pytest.TempPathFactory,
    params: dict[str, str],
    repeat: int | None,
    layout: tuple[str, str],
    name_twice: bool,
) -> None:
    comma, colon = layout

    def obj(pairs: list[tuple[str, str]]) -> str:
        return "{" + comma.join(f"{orjson.dumps(k).decode()}{colon}{v}" for k, v in pairs) + "}"

    pairs = [(k, orjson.dumps(v).decode()) for k, v in params.items()]
    if repeat is not None:
        key = list(params)[repeat % len(params)]
        pairs.append((key, '"again:\\" "'))
    top = [("name", '"job: one"'), ("params", obj(pairs))]
    if name_twice:
        top.append(("name", '"job: two"'))
    path = tmp_path_factory.mktemp("m") / "m.jsonl"
    path.write_text(obj(top) + "\n")
    result = validate(path)
    fields = {p.field for p in result.problems}
    expected = set()
    if name_twice:
        expected.add("name")
    elif repeat is not None:
        expected.add(_show(f"params.{list(params)[repeat % len(params)]}"))
    if expected:
        assert fields == expected, result.problems
    else:
        assert result.problem_count == 0, result.problems
