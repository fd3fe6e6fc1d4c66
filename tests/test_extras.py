"""The slim install: plotting and Redis are extras, and a missing extra stops at once (exit 2)."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from launcher.cli.main import cli
from launcher.errors import UsageError, require_extra

ROOT = Path(__file__).resolve().parent.parent


def without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    """Pretend the modules `missing` are not installed."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in missing else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_core_dependencies_leave_out_the_heavy_parts() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "matplotlib" not in core
    assert "redis" not in core
    extras = project["optional-dependencies"]
    assert extras["loadtest"] == ["matplotlib>=3.8"]
    assert extras["redis"] == ["redis>=5.0"]
    assert extras["all"] == ["launcher[loadtest,redis]"]


def test_require_extra_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    require_extra("orjson", "core", "anything")  # installed: nothing happens
    without(monkeypatch, "redis")
    with pytest.raises(UsageError) as raised:
        require_extra("redis", "redis", "--redis")
    assert raised.value.exit_code == 2
    assert "pip install 'launcher[redis]'" in str(raised.value)


def test_run_with_redis_but_no_redis_extra_exits_2_before_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"name": "a"}\n')
    without(monkeypatch, "redis")
    result = CliRunner().invoke(
        cli,
        ["run", str(manifest), "--endpoint", "sim", "--project-id", "p1",
         "--redis", "redis://127.0.0.1:1/0", "--ledger", str(tmp_path / "l.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "pip install 'launcher[redis]'" in result.output
    assert not (tmp_path / "l.jsonl").exists()


def test_loadtest_report_without_the_loadtest_extra_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"name": "a"}\n')
    without(monkeypatch, "matplotlib")
    result = CliRunner().invoke(
        cli,
        ["loadtest", str(manifest), "--endpoint", "sim", "--project-id", "p1",
         "--rate", "10/s", "--duration", "1s", "--report", str(tmp_path / "r.png")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "pip install 'launcher[loadtest]'" in result.output
