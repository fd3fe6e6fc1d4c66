"""What a ledger recorded about its run, taken back by `launcher resume`: the options
a header records come back as the same options, and a hostile header is an error."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.config import RunOptions, resolve_options
from launcher.errors import UsageError
from launcher.run.recorded import latest_header, recorded_options, resume_command


def resolved(header: dict[str, Any], **flags: Any) -> RunOptions:
    return resolve_options(flags, recorded_options(header), {}, config_path="L: recorded")


def test_recorded_options_come_back_as_they_were() -> None:
    options = RunOptions(
        endpoint="https://dlf.example",
        project_id="p1",
        workspace="ws1",
        rate=12.5,
        concurrency=7,
        per_workspace=2,
        action="stop",
        shard="1/3",
        halt="fail=5%",
        deadline=60.0,
        redis="redis://:secret@r:6379/0",
        workers=0,
        workspaces={"ws-warehouse": (2, 5.0, 1)},
        canary=False,
    )
    header = orjson.loads(orjson.dumps({"options": options.public()}))
    again = resolved(header)
    for name in ("endpoint", "project_id", "workspace", "rate", "concurrency", "per_workspace",
                 "action", "shard", "halt", "workers", "workspaces", "canary"):  # fmt: skip
        assert getattr(again, name) == getattr(options, name), name
    assert again.deadline is None  # that invocation's window
    assert again.redis is None  # recorded without its password


def test_a_flag_overrides_what_was_recorded() -> None:
    header = {"options": RunOptions(rate=10.0, concurrency=3).public()}
    assert resolved(header, rate="0").rate == 0.0
    assert resolved(header, rate="0").concurrency == 3


def test_a_fleet_worker_header_gives_the_run_options_not_its_share() -> None:
    header = {
        "options": RunOptions(rate=50.0, concurrency=16, workers=1).public(),
        "run_options": RunOptions(rate=200.0, concurrency=64, workers=4).public(),
    }
    again = resolved(header)
    assert (again.rate, again.concurrency, again.workers) == (200.0, 64, 4)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@given(
    st.dictionaries(
        st.sampled_from([*RunOptions.__dataclass_fields__, "bogus"]), _VALUES, max_size=8
    )
)
def test_a_hostile_header_is_a_usage_error_never_a_crash(options: dict[str, Any]) -> None:
    with contextlib.suppress(UsageError):
        resolved({"options": options})


def test_latest_header_is_the_last_run_line(tmp_path: Path) -> None:
    ledger = tmp_path / "l.jsonl"
    ledger.write_bytes(
        b'{"event":"run","segment":1}\n{"event":"intent","job":"a"}\n'
        b'{"event":"run","segment":2}\n{"event":"run","segm'  # a torn last line
    )
    assert latest_header(str(ledger))["segment"] == 2
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(UsageError, match="not a launcher ledger"):
        latest_header(str(tmp_path / "empty.jsonl"))


def test_the_resume_command_is_quoted_for_a_shell() -> None:
    assert resume_command("ledgers/a b.jsonl") == "launcher resume 'ledgers/a b.jsonl'"
    assert resume_command("l.jsonl", "c.toml") == "launcher resume l.jsonl --config c.toml"
