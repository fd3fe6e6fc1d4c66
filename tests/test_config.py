"""Option merging: flag > config file > environment > default, every value checked."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.config import (
    OPTIONS,
    Option,
    RunOptions,
    load_config_file,
    load_options,
    resolve_options,
)
from launcher.errors import UsageError


def test_defaults_are_the_documented_safe_ones() -> None:
    options = resolve_options({}, {}, {})
    assert options == RunOptions()
    assert options.rate == 30.0  # the DLF per-user limit
    assert options.concurrency == 64


def test_flag_beats_file_beats_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('project-id = "from-file"\nrate = "100/s"\nconcurrency = 8\n')
    env = {"HUAWEICLOUD_SDK_PROJECT_ID": "from-env", "HUAWEICLOUD_SDK_REGION": "cn-north-4"}
    file_values = load_config_file(config)
    options = resolve_options({"concurrency": 16}, file_values, env, config_path=str(config))
    assert options.concurrency == 16
    assert options.project_id == "from-file"
    assert options.rate == 100.0
    assert options.region == "cn-north-4"
    assert resolve_options({}, {}, env).project_id == "from-env"


def test_ledger_path_in_a_config_is_relative_to_the_config(tmp_path: Path) -> None:
    config = tmp_path / "sub" / "c.toml"
    config.parent.mkdir()
    config.write_text('ledger = "out/l.jsonl"\n')
    assert load_config_file(config)["ledger"] == str(tmp_path / "sub" / "out" / "l.jsonl")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"concurrency": 0}, "--concurrency: must be at least 1"),
        ({"rate": "fast"}, "--rate: invalid rate"),
        ({"timeout": "-1"}, "--timeout: must be more than 0"),
        ({"workspace": "ws 1"}, "--workspace: must not contain whitespace"),
        ({"project_id": "p\r\nX-Evil: 1"}, "--project-id: must not contain"),
        ({"action": "restart"}, "--action: must be one of"),
    ],
)
def test_bad_values_name_their_source(flags: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_options(flags, {}, {})


def test_unknown_config_keys_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("concurrancy = 4\n")
    with pytest.raises(UsageError, match="unknown option 'concurrancy'"):
        load_config_file(config)


def test_bad_toml_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("rate = \n")
    with pytest.raises(UsageError, match="invalid TOML"):
        load_config_file(config)


def test_sim_table_is_kept_for_the_embedded_simulator(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('endpoint = "sim"\n[sim]\nlatency = 0.01\n')
    options = resolve_options({}, load_config_file(config), {}, config_path=str(config))
    assert options.sim == {"latency": 0.01}
    assert "sim" not in options.public()


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("configs/*.toml")))
def test_every_shipped_config_is_valid(path: Path) -> None:
    """The configs the README points operators at must load and pass every check."""
    options = resolve_options({}, load_config_file(path), {}, config_path=str(path))
    assert options.rate >= 0


# --- the one table of options ---------------------------------------------------------------

# A valid value, as a flag's text and as a TOML value, for every option whose converter
# needs more than a word; the rest take the first value that differs from the default.
SAMPLES: dict[str, tuple[str, object]] = {
    "shard": ("1/2", "1/2"),
    "rate": ("7/s", "7/s"),
    "halt": ("fail=3", "fail=3"),
    "deadline": ("90s", "90s"),
    "wait_timeout": ("90s", "90s"),
    "settle": ("250ms", "250ms"),
    "workers": ("2", 2),
}


def sample(option: Option) -> tuple[str | None, object]:
    """(the flag's text or None for a bare flag, the TOML value) of a non-default value."""
    if option.name in SAMPLES:
        return SAMPLES[option.name]
    if option.kind == "flag":
        return None, not option.default
    if option.kind == "choice":
        value = next(choice for choice in option.choices if choice != option.default)
        return value, value
    if option.kind == "int":
        return "7", 7
    if option.kind == "float":
        return "2.5", 2.5
    return "x-1", "x-1"


def test_the_table_is_every_field_of_run_options() -> None:
    names = [option.name for option in OPTIONS]
    assert names == [f.name for f in fields(RunOptions) if f.name not in ("sim", "workspaces")]
    for option in OPTIONS:
        # Each declared default passes its own converter (None is "not given"; the
        # workers' 0 is what `auto` converts to).
        if option.default is not None and option.name != "workers":
            assert option.convert(option.default) == option.default, option.name


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_every_option_reaches_run_options_from_a_config_file(
    tmp_path: Path, option: Option
) -> None:
    """The TOML resolver is generated from the table: each key, dashed, sets its field."""
    _, value = sample(option)
    config = tmp_path / "c.toml"
    rendered = f'"{value}"' if isinstance(value, str) else str(value).lower()
    config.write_text(f"{option.key} = {rendered}\n")
    options = resolve_options({}, load_config_file(config), {}, config_path=str(config))
    assert getattr(options, option.name) != option.default


def test_every_documented_option_is_in_the_readme() -> None:
    """The README's option table covers every option of the table (by its flag)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [o.declaration for o in OPTIONS if f"`{o.declaration.split('/')[0]}" not in readme]
    assert missing == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concurancy = 4\n", "unknown option 'concurancy'; did you mean 'concurrency'?"),
        ("max_atempts = 4\n", "unknown option 'max_atempts'; did you mean 'max_attempts'?"),
        ("max-atempts = 4\n", "unknown option 'max-atempts'; did you mean 'max-attempts'?"),
        ('[workspacez."w"]\nrate = 1\n', "'workspacez'; did you mean 'workspaces'?"),
        ('[workspace."w"]\nrate = 1\n', "the option 'workspace'; did you mean 'workspaces'?"),
        ('[workspaces."w"]\nrat = 1\n', "\\[workspaces.\"w\"\\]: unknown option 'rat'; did you"),
        ("zzz = 1\n", "unknown option 'zzz'$"),
    ],
)
def test_config_typos_get_a_suggestion(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(UsageError, match=f"{config}: .*{message}"):
        load_config_file(config)


def test_every_config_problem_is_reported_at_once_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'concurancy = 4\nrate = "fast"\nproject-id = "p 1"\n'
        '[workspaces."w"]\nburst = 0\n[workspaces."v"]\nrate = "x"\n'
    )
    with pytest.raises(UsageError) as caught:
        load_config_file(config)
    lines = str(caught.value).splitlines()
    assert lines == [
        f"{config}: unknown option 'concurancy'; did you mean 'concurrency'?",
        f"{config}: rate: invalid rate 'fast': write it as 30/s, 120/m, 5000/h, or 0 for unlimited",
        f"{config}: project-id: must not contain whitespace or control characters",
        f'{config}: [workspaces."w"]: burst: must be at least 1',
        f"{config}: [workspaces.\"v\"]: rate: invalid rate 'x': write it as 30/s, 120/m, "
        "5000/h, or 0 for unlimited",
    ]


def test_load_options_reports_the_file_flags_and_environment_together(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("burst = 0\n")
    env = {"HUAWEICLOUD_SDK_REGION": "cn north"}
    with pytest.raises(UsageError) as caught:
        load_options({"concurrency": 0, "manifest_format": "xml"}, str(config), env)
    assert str(caught.value).splitlines() == [
        f"{config}: burst: must be at least 1",
        "HUAWEICLOUD_SDK_REGION: must not contain whitespace or control characters",
        "--concurrency: must be at least 1",
        "--format: must be one of jsonl, csv, yaml",
    ]


def test_a_bad_value_in_the_file_is_an_error_even_under_a_flag(tmp_path: Path) -> None:
    """The file is checked as a whole: a typo in it is found before the night it matters."""
    config = tmp_path / "c.toml"
    config.write_text("concurrency = 0\n")
    with pytest.raises(UsageError, match=f"{config}: concurrency: must be at least 1"):
        load_options({"concurrency": 8}, str(config), {})


def test_load_options_gives_the_file_values_with_its_tables(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('project-id = "p1"\n[workspaces."w"]\nrate = "2/s"\n[loadtest]\nrate = 1\n')
    options, values = load_options({"workspace": "w"}, str(config), {})
    assert (options.project_id, options.workspace) == ("p1", "w")
    assert options.workspaces == {"w": (0, 2.0, 1)}
    assert values["loadtest"] == {"rate": 1}


@given(data=st.data())
def test_a_value_means_the_same_from_a_flag_the_file_and_the_environment(
    data: st.DataObject,
) -> None:
    """One converter per option: where a value comes from changes only who wins."""
    option = data.draw(st.sampled_from([o for o in OPTIONS if o.kind != "flag"]))
    if option.kind == "choice":
        text = data.draw(st.sampled_from(option.choices))
    elif option.kind == "int":
        text = str(data.draw(st.integers(min_value=-5, max_value=10**6)))
    elif option.kind == "float":
        text = data.draw(st.sampled_from(["0", "0.5", "2", "1e3", "-1", "nan", "x"]))
    else:
        text = data.draw(st.sampled_from(["x", "a b", "7/s", "0", "1/2", "fail=3", "90s", ""]))

    def outcome(**sources: Any) -> object:
        try:
            return getattr(resolve_options(**sources), option.name)
        except UsageError as error:
            return str(error).rpartition(": ")[2]  # the problem, without its source

    from_flag = outcome(flags={option.name: text}, file_values={}, env={})
    from_file = outcome(flags={}, file_values={option.name: text}, env={}, config_path="c.toml")
    assert from_flag == from_file
    if option.env and text:  # an empty variable is an unset one
        assert outcome(flags={}, file_values={}, env={option.env: text}) == from_flag
