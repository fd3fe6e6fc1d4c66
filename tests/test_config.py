"""Option merging: flag > config file > environment > default, every value checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config import RunOptions, load_config_file, resolve_options
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
